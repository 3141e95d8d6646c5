"""Runs atomic ops on numpy: a whole program (one arena per call) or one constant op (folding).

The engine needs this without any plugin: decomposition folds ops whose inputs are all plan-time
constants (shape arithmetic such as ``Shape -> Gather -> Concat``) before a backend is chosen.
The ``reference`` plugin offers the same :class:`Interpreter` as a backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Executable, Program
from walle_core.errors import InputError
from walle_core.interpreter.kernels import KERNELS, Kernel, KernelError
from walle_core.plan.memory import check_bytes, describe, tensor_bytes


class Interpreter(Executable):
    """A program's ops run one by one with the numpy kernels; intermediates live in one arena."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.steps: list[tuple[Kernel, A.Op]] = [(kernel_for(op), op) for op, _ in program.ops]

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


def kernel_for(op: A.Op) -> Kernel:
    kernel = KERNELS.get(op.kind)
    if kernel is None:
        raise KernelError(f"the numpy interpreter has no kernel for {op.kind.value}")
    return kernel


def fold(op: A.Op) -> None:
    """Evaluate ``op``, whose inputs all have plan-time values, and set its outputs' values.

    A composite is folded through its expansion (each inner op's inputs are constants by then)."""
    if isinstance(op, A.Composite):
        for inner in op.expansion:
            fold(inner)
        return
    ins = [t.value for t in op.inputs]
    if any(v is None for v in ins):
        raise KernelError(f"cannot fold {op.kind.value}: an input has no plan-time value")
    for t in op.outputs:  # folding allocates: the memory limit holds here too
        check_bytes(tensor_bytes(t.shape, t.dtype), f"folding {op.kind.value} into {describe(t)}")
    outs = [np.empty(t.shape, t.dtype) for t in op.outputs]
    kernel_for(op)(op, [v for v in ins if v is not None], outs)
    for t, value in zip(op.outputs, outs, strict=True):
        t.value = value
