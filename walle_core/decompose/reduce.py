"""Reductions and scans -> Reduce (plus element-wise pre/post steps)."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, normalize_axis
from walle_core.decompose.elementwise import req
from walle_core.decompose.movement import ints

Ins = list[A.Tensor | None]


def reduce_axes(b: Builder, ins: Ins, ctx: NodeContext, rank: int) -> list[int] | None:
    """The axes to reduce, or None for a no-op (``noop_with_empty_axes``)."""
    if len(ins) > 1 and ins[1] is not None:
        axes = ints(b, ins[1]) or []
    else:
        axes = ctx.attr("axes", [])
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        return list(range(rank))
    return [normalize_axis(a, rank) for a in axes]


def reduce_with(b: Builder, x: A.Tensor, ins: Ins, ctx: NodeContext, fn: str) -> A.Tensor:
    axes = reduce_axes(b, ins, ctx, len(x.shape))
    if axes is None:
        return b.unary("identity", x)
    keep = bool(ctx.attr("keepdims", 1))
    if x.size == 0 and fn in ("max", "min"):
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else [
            d for i, d in enumerate(x.shape) if i not in axes]
        fill = -np.inf if fn == "max" else np.inf
        if x.dtype == np.bool_:
            fill = fn == "min"
        elif x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            fill = info.min if fn == "max" else info.max
        return b.const(np.full(shape, fill, x.dtype))
    return b.reduce(x, axes, fn, keep)


@register("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")
def simple(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    fn = {"ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}[ctx.node.op_type]
    return [reduce_with(b, req(ins[0]), ins, ctx, fn)]


@register("ReduceMean")
def mean(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    s = reduce_with(b, x, ins, ctx, "sum")
    count = max(x.size // max(s.size, 1), 1) if s.size else 1
    if x.size == 0:
        return [b.binary("div", s, b.scalar(0, s))]
    return [b.binary("div", s, b.scalar(count, s))]


@register("ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSum", "ReduceLogSumExp")
def composed(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    op = ctx.node.op_type
    if op in ("ReduceSumSquare", "ReduceL2"):
        y = reduce_with(b, b.binary("mul", x, x), ins, ctx, "sum")
        return [b.unary("sqrt", y) if op == "ReduceL2" else y]
    if op == "ReduceL1":
        return [reduce_with(b, b.unary("abs", x), ins, ctx, "sum")]
    if op == "ReduceLogSum":
        return [b.unary("log", reduce_with(b, x, ins, ctx, "sum"))]
    # LogSumExp, stabilised by the max.
    axes = reduce_axes(b, ins, ctx, len(x.shape))
    if axes is None:
        return [b.unary("identity", x)]
    if x.size == 0:
        return [b.unary("log", reduce_with(b, x, ins, ctx, "sum"))]
    m = b.reduce(x, axes, "max", True)
    m = b.select(b.unary("isinf", m), b.scalar(0, m), m)
    e = b.reduce(b.unary("exp", b.binary("sub", x, m)), axes, "sum", True)
    y = b.binary("add", b.unary("log", e), m)
    if not ctx.attr("keepdims", 1):
        y = b.reshape(y, [d for i, d in enumerate(x.shape) if i not in axes])
    return [y]


@register("ArgMax", "ArgMin")
def arg(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axis = normalize_axis(ctx.attr("axis", 0), len(x.shape))
    fn = "argmax" if ctx.node.op_type == "ArgMax" else "argmin"
    y = b.reduce_axis(x, axis, fn, last_index=bool(ctx.attr("select_last_index", 0)))
    if not ctx.attr("keepdims", 1):
        y = b.reshape(y, [d for i, d in enumerate(x.shape) if i != axis])
    return [y]


@register("CumSum", "CumProd")
def cumsum(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axis = normalize_axis(int(np.asarray(b.value(req(ins[1], "axis"))).reshape(-1)[0]), len(x.shape))
    exclusive, reverse = ctx.attr("exclusive", 0), ctx.attr("reverse", 0)
    n = x.shape[axis]
    full = [0] * len(x.shape)
    steps = [1] * len(x.shape)
    if reverse:
        full[axis], steps[axis] = n - 1, -1
        x = b.slice(x, full, list(x.shape), steps)
    prod = ctx.node.op_type == "CumProd"
    y = b.reduce_axis(x, axis, "cumprod" if prod else "cumsum")
    if exclusive:
        before = [0] * len(x.shape)
        after = [0] * len(x.shape)
        before[axis], after[axis] = 1, -1
        y = b.pad(y, before, after, 1.0 if prod else 0.0)
    if reverse:
        y = b.slice(y, full, list(y.shape), steps)
    return [y]
