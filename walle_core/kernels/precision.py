"""Opt-in half precision on GPU backends: every float32 tensor of a program is stored as float16
on the device (half the memory and half the transfer bytes); element-wise math runs in float16,
GEMM, conv, reduction and pooling sums accumulate in float32 (``ACC`` in the kernels). The host
still sees float32: inputs are rounded to float16 on upload and outputs widened on download."""

from __future__ import annotations

import dataclasses

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Program
from walle_core.errors import WalleError
from walle_core.kernels.spec import Caps

PRECISIONS = ("fp32", "fp16")
F32, F16 = np.dtype(np.float32), np.dtype(np.float16)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise WalleError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def half_tensor(t: A.Tensor) -> A.Tensor:
    """The tensor as stored under half precision (the same id: same buffer, same aliases)."""
    if t.dtype != F32:
        return t
    value = None if t.value is None else np.asarray(t.value).astype(F16)
    return A.Tensor(t.shape, F16, value=value, name=t.name, id=t.id)


def half_op(op: A.Op) -> A.Op:
    return dataclasses.replace(op, inputs=[half_tensor(t) for t in op.inputs],
                               outputs=[half_tensor(t) for t in op.outputs])


def half_program(program: Program) -> Program:
    return dataclasses.replace(program, ops=[(half_op(op), algo) for op, algo in program.ops],
                               inputs=[half_tensor(t) for t in program.inputs],
                               outputs=[half_tensor(t) for t in program.outputs])


def half_caps(caps: Caps) -> Caps:
    return dataclasses.replace(caps, types=caps.types | {"f16"})
