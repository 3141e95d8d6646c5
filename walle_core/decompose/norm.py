"""Normalisations and softmax. Softmax and LayerNorm are composites (a backend may fuse them);
their expansion is the usual max/exp/sum and mean/variance arithmetic."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, normalize_axis
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def channel_view(b: Builder, t: A.Tensor, rank: int) -> A.Tensor:
    """A per-channel (C,) vector as (C, 1, ..., 1) to broadcast against (N, C, ...)."""
    return b.reshape(t, (t.size,) + (1,) * (rank - 2))


@register("BatchNormalization")
def batch_norm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale, bias, mean, var = (req(t) for t in ins[:5])
    eps = float(ctx.attr("epsilon", 1e-5))
    rank = len(x.shape)
    if ctx.attr("training_mode", 0):
        return batch_norm_training(b, x, scale, bias, mean, var, eps,
                                   float(ctx.attr("momentum", 0.9)))
    sv, bv, mv, vv = (b.maybe_value(t) for t in (scale, bias, mean, var))
    if sv is not None and bv is not None and mv is not None and vv is not None:
        # Fold into one multiply-add: the statistics are constants.
        k = (sv / np.sqrt(vv.astype(np.float64) + eps)).astype(x.dtype)
        c = (bv - mv * k).astype(x.dtype)
        y = b.binary("mul", x, channel_view(b, b.const(k), rank))
        return [b.binary("add", y, channel_view(b, b.const(c), rank))]
    denom = b.unary("sqrt", b.binary("add", var, b.scalar(eps, var)))
    k_t = b.binary("div", scale, denom)
    y = b.binary("mul", b.binary("sub", x, channel_view(b, mean, rank)), channel_view(b, k_t, rank))
    return [b.binary("add", y, channel_view(b, bias, rank))]


def batch_norm_training(b: Builder, x: A.Tensor, scale: A.Tensor, bias: A.Tensor,
                        mean: A.Tensor, var: A.Tensor, eps: float, momentum: float
                        ) -> list[A.Tensor]:
    """Normalise with the batch statistics; also the updated running mean and variance
    (``running * momentum + batch * (1 - momentum)``, population variance)."""
    rank = len(x.shape)
    axes = [0, *range(2, rank)]
    y, bmean, _ = normalize(b, x, axes, eps)
    y = b.binary("mul", y, channel_view(b, scale, rank))
    y = b.binary("add", y, channel_view(b, bias, rank))
    c = x.shape[1]
    bm = b.reshape(bmean, (c,))
    d = b.binary("sub", x, bmean)
    count = b.scalar(math.prod(x.shape) // max(c, 1), x)
    bv = b.reshape(b.binary("div", b.reduce(b.binary("mul", d, d), axes, "sum", True), count), (c,))
    mom = b.scalar(momentum, mean)
    rest = b.scalar(1.0 - momentum, mean)
    run_mean = b.binary("add", b.binary("mul", mean, mom), b.binary("mul", b.cast(bm, mean.dtype), rest))
    run_var = b.binary("add", b.binary("mul", var, mom), b.binary("mul", b.cast(bv, var.dtype), rest))
    return [y, run_mean, run_var]


@register("RMSNormalization")
def rms_norm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale = req(ins[0]), req(ins[1], "scale")
    axis = normalize_axis(ctx.attr("axis", -1), len(x.shape))
    eps = float(ctx.attr("epsilon", 1e-5))
    axes = list(range(axis, len(x.shape)))
    xs = b.cast(x, np.float32) if x.dtype != np.float64 else x
    count = b.scalar(math.prod(x.shape[a] for a in axes), xs)
    ms = b.binary("div", b.reduce(b.binary("mul", xs, xs), axes, "sum", True), count)
    y = b.binary("mul", xs, b.unary("rsqrt", b.binary("add", ms, b.scalar(eps, ms))))
    return [b.binary("mul", b.cast(y, x.dtype), scale)]


def normalize(b: Builder, x: A.Tensor, axes: list[int], eps: float) -> tuple[A.Tensor, A.Tensor, A.Tensor]:
    """(x - mean) / sqrt(var + eps) over ``axes``; also returns mean and 1/std (kept dims)."""
    count = math.prod(x.shape[a] for a in axes)
    n = b.scalar(count, x)
    mean = b.binary("div", b.reduce(x, axes, "sum", True), n)
    d = b.binary("sub", x, mean)
    var = b.binary("div", b.reduce(b.binary("mul", d, d), axes, "sum", True), n)
    inv = b.unary("rsqrt", b.binary("add", var, b.scalar(eps, var)))
    return b.binary("mul", d, inv), mean, inv


@register("LayerNormalization")
def layer_norm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale = req(ins[0]), req(ins[1], "scale")
    bias = ins[2] if len(ins) > 2 else None
    axis = normalize_axis(ctx.attr("axis", -1), len(x.shape))
    eps = float(ctx.attr("epsilon", 1e-5))
    axes = list(range(axis, len(x.shape)))
    stats: list[A.Tensor] = []

    def build() -> list[A.Tensor]:
        xs = b.cast(x, np.float32) if x.dtype != np.float32 else x
        y, mean, inv = normalize(b, xs, axes, eps)
        y = b.cast(y, x.dtype)
        y = b.binary("mul", y, scale)
        if bias is not None:
            y = b.binary("add", y, bias)
        stats.extend([mean, inv])
        return [y]

    if any(ctx.node.outputs[1:]):  # Mean / InvStdDev are read: they exist only expanded
        return [*build(), *stats]
    inputs = [x, scale] + ([bias] if bias is not None else [])
    (y,) = b.composite("layer_norm", inputs, build, axis=axis, epsilon=eps)
    return [y, *stats]


@register("InstanceNormalization")
def instance_norm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale, bias = req(ins[0]), req(ins[1]), req(ins[2])
    rank = len(x.shape)
    y, _, _ = normalize(b, x, list(range(2, rank)), float(ctx.attr("epsilon", 1e-5)))
    y = b.binary("mul", y, channel_view(b, scale, rank))
    return [b.binary("add", y, channel_view(b, bias, rank))]


@register("GroupNormalization")
def group_norm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale, bias = req(ins[0]), req(ins[1]), req(ins[2])
    g = int(ctx.attr("num_groups"))
    n, c = x.shape[:2]
    if c % g:
        raise DecomposeError(f"{c} channels do not split into {g} groups")
    rest = x.shape[2:]
    xg = b.reshape(x, (n, g, (c // g) * math.prod(rest)))
    y, _, _ = normalize(b, xg, [2], float(ctx.attr("epsilon", 1e-5)))
    y = b.reshape(y, x.shape)
    rank = len(x.shape)
    if scale.size == g and c != g:  # opset 18 form: one scale per group
        scale = b.reshape(b.expand(b.reshape(scale, (g, 1)), (g, c // g)), (c,))
        bias = b.reshape(b.expand(b.reshape(bias, (g, 1)), (g, c // g)), (c,))
    y = b.binary("mul", y, channel_view(b, scale, rank))
    return [b.binary("add", y, channel_view(b, bias, rank))]


@register("LpNormalization")
def lp_norm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axis = normalize_axis(ctx.attr("axis", -1), len(x.shape))
    p = int(ctx.attr("p", 2))
    if p == 1:
        norm = b.reduce_axis(b.unary("abs", x), axis, "sum")
    else:
        norm = b.unary("sqrt", b.reduce_axis(b.binary("mul", x, x), axis, "sum"))
    # An all-zero slice has norm 0: divide by 1 instead (0, not NaN, like onnxruntime).
    norm = b.select(b.binary("eq", norm, b.scalar(0, norm)), b.scalar(1, norm), norm)
    return [b.binary("div", x, norm)]


@register("MeanVarianceNormalization")
def mvn(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axes = [normalize_axis(a, len(x.shape)) for a in ctx.attr("axes", [0, 2, 3])]
    y, _, _ = normalize(b, x, axes, 1e-9)
    return [y]


def softmax_axis(b: Builder, x: A.Tensor, axis: int, log: bool) -> A.Tensor:
    def build() -> list[A.Tensor]:
        m = b.reduce_axis(x, axis, "max")
        d = b.binary("sub", x, m)
        e = b.unary("exp", d)
        s = b.reduce_axis(e, axis, "sum")
        if log:
            return [b.binary("sub", d, b.unary("log", s))]
        return [b.binary("div", e, s)]

    return b.composite("log_softmax" if log else "softmax", [x], build, axis=axis)[0]


@register("Softmax", "LogSoftmax", "Hardmax")
def softmax(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    legacy = ctx.opset < 13
    axis = normalize_axis(ctx.attr("axis", 1 if legacy else -1), max(rank, 1))
    src = x
    if legacy:  # coerced to 2-D at ``axis``
        src = b.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))
        axis = 1
    if ctx.node.op_type == "Hardmax":
        idx = b.reduce_axis(src, axis, "argmax")
        iota_shape = [1] * len(src.shape)
        iota_shape[axis] = src.shape[axis]
        iota = b.const(np.arange(src.shape[axis], dtype=np.int64).reshape(iota_shape))
        y = b.cast(b.binary("eq", idx, iota), x.dtype)
    else:
        y = softmax_axis(b, src, axis, ctx.node.op_type == "LogSoftmax")
    return [b.reshape(y, x.shape)]
