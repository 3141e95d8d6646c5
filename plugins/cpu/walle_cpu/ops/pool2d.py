"""Pool2D on the cpu backend (``pool2d.c``): max, avg and lp on NCHW; max and avg on the
blocked layout too (``layout.BlockedPool``); max of int8 / uint8 tensors (``pool8.c``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu import layout
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel

_BYTES = frozenset({np.dtype(np.uint8), np.dtype(np.int8)})


def _supported(op: A.Op) -> bool:
    assert isinstance(op, A.Pool2D)
    if op.fn == "max" and op.inputs[0].dtype in _BYTES and op.out.dtype == op.inputs[0].dtype:
        return not isinstance(op, layout.BlockedPool)  # int8 models (pool8.c)
    return all(t.dtype == K.F32 for t in (*op.inputs, op.out)) and op.fn in K.POOL_FNS


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Pool2D)
    d.kind = LIB.WL_POOL
    d.fn = K.POOL_FNS[op.fn]
    d.dtype = K.DTYPES[op.inputs[0].dtype]  # float32, or the 8-bit max pool of int8 models
    b.bind(d, op)
    blocked = isinstance(op, layout.BlockedPool)
    p = d.pool
    p.n, p.c, p.h, p.w = op.plain_in if isinstance(op, layout.BlockedPool) else op.inputs[0].shape
    _, _, p.oh, p.ow = op.plain_out if isinstance(op, layout.BlockedPool) else op.out.shape
    p.kh, p.kw = op.kernel
    p.stride_h, p.stride_w = op.strides
    p.pad_top, p.pad_left, p.pad_bottom, p.pad_right = op.pads
    p.dilation_h, p.dilation_w = op.dilations
    p.count_include_pad, p.lp, p.blocked = int(op.count_include_pad), int(op.p), int(blocked)


POOL2D = OpKernel((A.Pool2D,), _supported, _encode)
