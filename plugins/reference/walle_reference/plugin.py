"""Reference backend plugin: the core's numpy interpreter offered as a backend.

It runs every atomic kind, op by op in one arena per call; it is the fallback of every other
backend and the oracle of the conformance suite. The kernels live in the engine
(:mod:`walle_core.interpreter`), which folds constants with them even when this plugin is absent.
"""

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
from walle_core.hookspecs import hookimpl
from walle_core.interpreter import KERNELS, Interpreter

# numpy is far from peak: the search should prefer real backends whenever they exist.
_ALGORITHM = Algorithm("numpy", lambda op: Cost(op.flops(), op.bytes_moved(), 1, efficiency=0.05))

# The executable this backend compiles to (subclassed by tests that need a slow or timed device).
ReferenceExecutable = Interpreter


class ReferenceBackend(Backend):
    name = "reference"
    version = "1"
    oracle = True  # the search's fallback only: never an auto candidate where another backend runs the op

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
