"""The ``resize2d`` composite on the cpu backend: a separable two-tap 2-D resize (nearest or
linear, any scale and coordinate mode; ``walle_core.decompose.resize``) as one pass of the
pool kernel (``pool2d.c``, fn ``P_RESIZE``), on NCHW or, as :class:`BlockedResize` placed by
the layout pass, on the blocked NCHW16c layout (one 16-channel vector per output pixel)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.layout import BLK
from walle_cpu.ops.kernel import Binder, OpKernel, direct_cost

NAME = "resize2d"
# ~4 loads and 6 flops per output element, memory bound
RESIZE = Algorithm("direct", direct_cost(0.5))


@dataclasses.dataclass(eq=False)
class BlockedResize(A.Composite):
    """``resize2d`` from a blocked input to a blocked output; ``plain_in``/``plain_out`` are
    the logical NCHW shapes (no expansion: only the cpu layout pass makes one)."""

    plain_in: tuple[int, int, int, int] = (0, 0, 0, 0)
    plain_out: tuple[int, int, int, int] = (0, 0, 0, 0)


def blocked(op: A.Composite, x: A.Tensor, y: A.Tensor, plain_in: tuple[int, int, int, int],
            plain_out: tuple[int, int, int, int]) -> BlockedResize:
    return BlockedResize([x], [y], name=NAME, attrs=op.attrs, plain_in=plain_in, plain_out=plain_out)


def _supported(op: A.Op) -> bool:
    return isinstance(op, A.Composite) and op.name == NAME and len(op.inputs) == 1 and \
        all(t.dtype == K.F32 for t in (*op.inputs, op.out))


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Composite)
    d.kind = LIB.WL_POOL
    d.fn = LIB.P_RESIZE
    d.dtype = K.DTYPES[K.F32]
    b.bind(d, op)
    is_blocked = isinstance(op, BlockedResize)
    n, c, h, w = op.plain_in if isinstance(op, BlockedResize) else op.inputs[0].shape
    _, _, oh, ow = op.plain_out if isinstance(op, BlockedResize) else op.out.shape
    p = d.pool
    p.n, p.c, p.h, p.w, p.oh, p.ow = n, c, h, w, oh, ow
    p.kh = 1 if op.attrs["mode"] == "nearest" else 2
    p.blocked = int(is_blocked)
    lanes = BLK if is_blocked else 1
    rows = np.asarray(op.attrs["rows"], np.int64)
    cols = np.asarray(op.attrs["cols"], np.int64) * lanes  # float offsets in a row
    d.aux = b.aux(np.concatenate([rows, cols]))
    d.aux2 = b.aux(np.concatenate([np.asarray(op.attrs["row_frac"], np.float32),
                                   np.asarray(op.attrs["col_frac"], np.float32)]))


def _algorithms(op: A.Op) -> tuple[Algorithm, ...]:
    return (RESIZE,)


KERNEL = OpKernel((A.Composite,), _supported, _encode, _algorithms)
