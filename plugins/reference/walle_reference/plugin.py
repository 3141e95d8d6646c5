"""Reference backend plugin: numpy kernels, run op by op in one arena per call."""

from __future__ import annotations

import platform
from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import (
    Algorithm,
    Availability,
    Backend,
    Cost,
    DeviceInfo,
    Executable,
    Program,
)
from walle_core.errors import InputError
from walle_core.hookspecs import hookimpl
from walle_reference.kernels import KERNELS, Kernel

# numpy is far from peak: the search should prefer real backends whenever they exist.
_ALGORITHM = Algorithm("numpy", lambda op: Cost(op.flops(), op.bytes_moved(), 1, efficiency=0.05))


class ReferenceExecutable(Executable):
    def __init__(self, program: Program) -> None:
        self.program = program
        self.steps: list[tuple[Kernel, A.Op]] = [(KERNELS[op.kind], op) for op, _ in program.ops]

    def _bind(self, t: A.Tensor, arena: np.ndarray, table: dict[int, np.ndarray]) -> np.ndarray:
        arr = table.get(t.id)
        if arr is None:
            if t.value is not None:
                arr = t.value
            elif t.id in self.program.offsets:
                off = self.program.offsets[t.id]
                arr = arena[off : off + t.nbytes].view(t.dtype).reshape(t.shape)
            else:
                arr = np.empty(t.shape, t.dtype)
            table[t.id] = arr
        return arr

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        prog = self.program
        if len(inputs) != len(prog.inputs):
            raise InputError(f"program takes {len(prog.inputs)} inputs, got {len(inputs)}")
        arena = np.empty(prog.arena_bytes, np.uint8)
        table: dict[int, np.ndarray] = {}
        for t, arr in zip(prog.inputs, inputs, strict=True):
            table[t.id] = np.ascontiguousarray(arr, dtype=t.dtype).reshape(t.shape)
        for t in prog.outputs:  # outputs get their own memory: the arena dies with this call
            table[t.id] = np.empty(t.shape, t.dtype)
        for kernel, op in self.steps:
            ins = [self._bind(t, arena, table) for t in op.inputs]
            outs = [self._bind(t, arena, table) for t in op.outputs]
            kernel(op, ins, outs)
        return [table[t.id] for t in prog.outputs]


class ReferenceBackend(Backend):
    name = "reference"
    version = "1"

    def availability(self) -> Availability:
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(
            name=f"numpy {np.__version__} on {platform.machine()}",
            kind="cpu",
            details={"role": "correctness oracle"},
        )

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        return (_ALGORITHM,) if op.kind in KERNELS else ()

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        return ReferenceExecutable(program)


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [ReferenceBackend]
