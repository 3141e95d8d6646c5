"""Unary, Binary, Select and Cast on the cpu backend (``unary.c``, ``binary.c``, ``cast.c``).

Binary and Select run one N-D loop over the output with per-operand strides (``wl_nd_params``);
axes that stay linear for every operand are merged first, so most broadcasts run as one or two
dimensions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.errors import WalleError
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel, start

MAX_DIMS = int(LIB.WL_MAX_DIMS) if LIB is not None else 0  # axes an N-D loop takes (wl.h)


def collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 axes and merge neighbours that stay linear for every operand."""
    dims: list[int] = []
    st: list[list[int]] = [[] for _ in strides]
    for ax, n in enumerate(shape):
        if n == 1:
            continue
        if dims and all(s[-1] == t[ax] * n for s, t in zip(st, strides, strict=True)):
            dims[-1] *= n
            for s, t in zip(st, strides, strict=True):
                s[-1] = t[ax]
        else:
            dims.append(n)
            for s, t in zip(st, strides, strict=True):
                s.append(t[ax])
    if not dims:
        dims = [1]
        st = [[0] for _ in strides]
    return dims, st


def set_nd(nd: Any, shape: Sequence[int], strides: Sequence[Sequence[int]]) -> None:
    """``wl_nd_params`` for a loop over ``shape`` with one stride list per operand."""
    dims, st = collapse(shape, strides)
    if len(dims) > MAX_DIMS:
        raise WalleError("too many dimensions after collapsing")  # supports() prevents this
    nd.ndim = len(dims)
    for i, n in enumerate(dims):
        nd.shape[i] = n
    for k, s in enumerate(st):
        for i, v in enumerate(s):
            nd.strides[k][i] = v
    nd.rows = math.prod(dims[:-1])


def _unary_supported(op: A.Op) -> bool:
    assert isinstance(op, A.Unary)
    x, y = op.inputs[0].dtype, op.out.dtype
    if op.fn in K.PREDICATES:
        return x in K.FLOATS and y == K.BOOL
    if x != y:
        return False
    if x in K.FLOATS:
        return op.fn in K.FLOAT_UNARY
    if x in K.INTS:
        return op.fn in K.INT_UNARY
    return x == K.BOOL and op.fn in ("not", "identity")


def _encode_unary(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Unary)
    start(d, b, LIB.WL_UNARY, op, fn=K.UNARY_FNS[op.fn])
    d.unary.n = op.out.size
    d.unary.esize_in = op.inputs[0].dtype.itemsize
    d.unary.esize_out = op.out.dtype.itemsize
    for i, v in enumerate(op.params[:8]):
        d.unary.prm[i] = v


def _binary_supported(op: A.Op) -> bool:
    if isinstance(op, A.Select):
        c, a, b = (t.dtype for t in op.inputs)
        return c == K.BOOL and a == b == op.out.dtype and a.itemsize in (1, 2, 4, 8)
    assert isinstance(op, A.Binary)
    a, b = op.inputs[0].dtype, op.inputs[1].dtype
    if a != b or len(op.out.shape) > 16:
        return False
    want = K.BOOL if op.fn in K.COMPARE else a
    if op.out.dtype != want:
        return False
    if a in K.FLOATS:
        return op.fn in K.FLOAT_BINARY
    if a in K.INTS:
        return op.fn in K.INT_BINARY
    return a == K.BOOL and op.fn in K.BOOL_BINARY


def _encode_binary(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    if isinstance(op, A.Binary):
        value = op.inputs[0]
        start(d, b, LIB.WL_BINARY, op, fn=K.BINARY_FNS[op.fn])
    else:
        assert isinstance(op, A.Select)
        value = op.inputs[1]
        start(d, b, LIB.WL_SELECT, op, value.dtype)
    set_nd(d.nd, op.out.shape, op.strides)
    d.nd.esize_in = value.dtype.itemsize
    d.nd.esize_out = op.out.dtype.itemsize


def _cast_supported(op: A.Op) -> bool:
    allowed = K.NUMERIC | {K.BOOL}
    return op.inputs[0].dtype in allowed and op.out.dtype in allowed


def _encode_cast(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    start(d, b, LIB.WL_CAST, op)
    d.dtype2 = K.DTYPES[op.out.dtype]
    d.cast.n = op.out.size


UNARY = OpKernel((A.Unary,), _unary_supported, _encode_unary)
BINARY = OpKernel((A.Binary, A.Select), _binary_supported, _encode_binary)
CAST = OpKernel((A.Cast,), _cast_supported, _encode_cast)
