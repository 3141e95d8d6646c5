"""GatherScatter on the cpu backend (``gather.c``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel, start

_REDUCIBLE = (K.F32, K.F64, np.dtype(np.int32), K.I64)  # what scatter reduces


def _supported(op: A.Op) -> bool:
    assert isinstance(op, A.GatherScatter)
    data = op.inputs[0].dtype
    if op.inputs[1].dtype != K.I64 or data.itemsize not in (1, 2, 4, 8) or op.out.dtype != data:
        return False
    if op.mode == "gather":
        return True
    if op.inputs[2].dtype != data or op.reduction not in K.SCATTER_REDUCTIONS:
        return False
    return op.reduction == "none" or data in _REDUCIBLE


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.GatherScatter)
    start(d, b, LIB.WL_GATHER, op)
    g = d.gather
    g.scatter = int(op.mode != "gather")
    g.rows, g.block, g.k = op.rows, op.block, op.inputs[1].size
    g.esize = op.inputs[0].dtype.itemsize
    g.reduction = K.SCATTER_REDUCTIONS.get(op.reduction, 0)


GATHER = OpKernel((A.GatherScatter,), _supported, _encode)
