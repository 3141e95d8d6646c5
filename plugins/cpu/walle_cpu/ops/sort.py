"""Sort (stable, indices out) on the cpu backend (``sort.c``)."""

from __future__ import annotations

from typing import Any

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel, start


def _supported(op: A.Op) -> bool:
    return op.inputs[0].dtype in (K.NUMERIC | {K.BOOL}) and op.out.dtype == K.I64


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Sort)
    start(d, b, LIB.WL_SORT, op)
    s = d.sort
    s.outer, s.n, s.inner, s.descending = op.outer, op.n, op.inner, int(op.descending)


SORT = OpKernel((A.Sort,), _supported, _encode)
