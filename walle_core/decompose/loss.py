"""Loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss -> Reduce / GatherScatter."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req
from walle_core.decompose.index import gather_elements_along, take

Ins = list[A.Tensor | None]


def nll(
    b: Builder, x: A.Tensor, target: A.Tensor, weight: A.Tensor | None, ctx: NodeContext
) -> A.Tensor:
    """``-x[n, target[n, ...], ...]`` weighted, with ignore_index and the reduction."""
    if len(x.shape) < 2:
        raise DecomposeError("loss input needs rank >= 2 (N, C, ...)")
    if target.shape != (x.shape[0], *x.shape[2:]):
        raise DecomposeError(f"target shape {list(target.shape)} does not match {list(x.shape)}")
    reduction = str(ctx.attr("reduction", "mean"))
    if reduction not in ("none", "sum", "mean"):
        raise ctx.unsupported(f"reduction {reduction!r}")
    t = b.cast(target, np.int64)
    ignore = ctx.attr("ignore_index")
    ignored: A.Tensor | None = None
    if ignore is not None:
        ignored = b.binary("eq", t, b.const(np.array(int(ignore), np.int64)))
        t = b.select(ignored, b.const(np.array(0, np.int64)), t)
    idx = b.reshape(t, (x.shape[0], 1, *x.shape[2:]))
    picked = b.reshape(gather_elements_along(b, x, idx, 1), t.shape)
    loss = b.unary("neg", picked)
    w: A.Tensor | None = None
    if weight is not None:
        w = take(b, weight, t, 0)
    if ignored is not None:
        w = b.select(ignored, b.scalar(0, x), w if w is not None else b.scalar(1, x))
    if w is not None:
        w = b.expand(w, t.shape)
        loss = b.binary("mul", loss, w)
    if reduction == "none":
        return loss
    axes = list(range(len(loss.shape)))
    total = b.reduce(loss, axes, "sum", False)
    if reduction == "sum":
        return total
    if w is not None:
        return b.binary("div", total, b.reduce(w, axes, "sum", False))
    return b.binary("div", total, b.scalar(max(loss.size, 1), total))


@register("NegativeLogLikelihoodLoss")
def nll_loss(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    weight = ins[2] if len(ins) > 2 else None
    return [nll(b, req(ins[0]), req(ins[1], "target"), weight, ctx)]


def log_softmax(b: Builder, x: A.Tensor, axis: int) -> A.Tensor:
    m = b.reduce_axis(x, axis, "max")
    z = b.binary("sub", x, m)
    s = b.reduce_axis(b.unary("exp", z), axis, "sum")
    return b.binary("sub", z, b.unary("log", s))


@register("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    weight = ins[2] if len(ins) > 2 else None
    if len(x.shape) < 2:
        raise DecomposeError("SoftmaxCrossEntropyLoss scores need rank >= 2 (N, C, ...)")
    logp = log_softmax(b, x, 1)
    return [nll(b, logp, req(ins[1], "labels"), weight, ctx), logp]
