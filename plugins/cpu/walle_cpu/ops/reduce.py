"""Reduce on the cpu backend (``reduce.c``)."""

from __future__ import annotations

from typing import Any

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel, start


def _supported(op: A.Op) -> bool:
    assert isinstance(op, A.Reduce)
    x = op.inputs[0].dtype
    want = K.I64 if op.fn in ("argmax", "argmin") else x
    return x in K.NUMERIC and op.fn in K.REDUCE_FNS and op.out.dtype == want


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Reduce)
    start(d, b, LIB.WL_REDUCE, op, fn=K.REDUCE_FNS[op.fn])
    r = d.reduce
    r.outer, r.n, r.inner, r.last_index = op.outer, op.n, op.inner, int(op.last_index)


REDUCE = OpKernel((A.Reduce,), _supported, _encode)
