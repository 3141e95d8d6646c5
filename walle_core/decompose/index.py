"""Index-driven ops -> GatherScatter / Sort, with index arithmetic as Binary ops."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, normalize_axis
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def take(b: Builder, data: A.Tensor, idx: A.Tensor, axis: int) -> A.Tensor:
    """``np.take(data, idx, axis)`` with negative indices, as a row gather."""
    axis = normalize_axis(axis, len(data.shape))
    outer = math.prod(data.shape[:axis])
    n = data.shape[axis]
    inner = math.prod(data.shape[axis + 1 :])
    out_shape = (*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])
    if outer == 1:
        rows = b.gather_rows(data, idx, n, inner)
        return b.reshape(rows, out_shape)
    # Gather (outer, n, inner) rows as one flat row index: o * n + idx.
    i64 = b.cast(idx, np.int64)
    i64 = b.select(b.binary("lt", i64, b.scalar(0, i64)), b.binary("add", i64, b.scalar(n, i64)), i64)
    flat = b.reshape(i64, (1, idx.size))
    base = b.const((np.arange(outer, dtype=np.int64) * n).reshape(outer, 1))
    rows = b.gather_rows(data, b.binary("add", flat, base), outer * n, inner)
    return b.reshape(rows, out_shape)


@register("Gather")
def gather(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [take(b, req(ins[0]), req(ins[1], "indices"), int(ctx.attr("axis", 0)))]
