"""Raster on the cpu backend (``raster.c``): regions as an int64 table, an optional fill."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel


def _supported(op: A.Op) -> bool:
    return op.out.dtype.itemsize in (1, 2, 4, 8) and all(t.dtype == op.out.dtype for t in op.inputs)


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Raster)
    d.kind = LIB.WL_RASTER
    b.bind(d, op)
    dt = op.out.dtype
    regs = np.array(
        [[r.src, r.src_offset, *r.src_strides, r.dst_offset, *r.dst_strides, *r.size]
         for r in op.regions if math.prod(r.size) > 0],
        dtype=np.int64,
    ).reshape(-1, 12)
    d.raster.n_regions = regs.shape[0]
    d.raster.esize = dt.itemsize
    d.raster.total = op.out.size
    if op.fill is not None:
        with np.errstate(all="ignore"):
            fill = np.array(op.fill).astype(dt) if dt != K.BOOL else np.array(bool(op.fill))
        raw = fill.tobytes() + b"\0" * (8 - dt.itemsize)
        d.raster.has_fill = 1
        d.raster.fill = int(np.frombuffer(raw, dtype="<i8")[0])
    d.aux = b.aux(regs)


def encode_empty(d: Any, op: A.Op, b: Binder) -> None:
    """An op with nothing to write runs as an empty raster."""
    d.kind = LIB.WL_RASTER
    b.bind(d, op)
    d.raster.n_regions = 0
    d.raster.esize = max(1, op.out.dtype.itemsize)


RASTER = OpKernel((A.Raster,), _supported, _encode)
