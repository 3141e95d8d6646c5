"""Element-wise ONNX ops -> Unary / Binary / Select / Cast."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core import dtypes
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError

Ins = list[A.Tensor | None]

_UNARY = {
    "Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
    "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan",
    "Sinh": "sinh", "Cosh": "cosh", "Tanh": "tanh", "Asinh": "asinh", "Acosh": "acosh",
    "Atanh": "atanh", "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf", "Floor": "floor",
    "Ceil": "ceil", "Round": "round", "Sign": "sign", "Not": "not", "IsNaN": "isnan",
    "Softplus": "softplus", "Softsign": "softsign", "HardSwish": "hardswish", "Mish": "mish",
    "BitwiseNot": "bitwise_not", "Identity": "identity",
}


def req(x: A.Tensor | None, what: str = "input") -> A.Tensor:
    if x is None:
        raise DecomposeError(f"missing required {what}")
    return x


@register(*_UNARY)
def unary(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    if ctx.node.op_type == "Identity":
        return [x]
    return [b.unary(_UNARY[ctx.node.op_type], x)]


@register("IsInf")
def isinf(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    pos, neg = ctx.attr("detect_positive", 1), ctx.attr("detect_negative", 1)
    fn = "isinf" if pos and neg else "isposinf" if pos else "isneginf" if neg else None
    x = req(ins[0])
    if fn is None:
        return [b.const(np.zeros(x.shape, bool))]
    return [b.unary(fn, x)]


_PARAM_UNARY = {
    "LeakyRelu": ("leaky_relu", (("alpha", 0.01),)),
    "Elu": ("elu", (("alpha", 1.0),)),
    "Selu": ("selu", (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875))),
    "Celu": ("celu", (("alpha", 1.0),)),
    "HardSigmoid": ("hardsigmoid", (("alpha", 0.2), ("beta", 0.5))),
    "ThresholdedRelu": ("thresholded_relu", (("alpha", 1.0),)),
}


@register(*_PARAM_UNARY)
def param_unary(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    fn, params = _PARAM_UNARY[ctx.node.op_type]
    return [b.unary(fn, req(ins[0]), *(ctx.attr(k, d) for k, d in params))]


@register("Gelu")
def gelu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    fn = "gelu_tanh" if ctx.attr("approximate", "none") == "tanh" else "gelu"
    return [b.unary(fn, req(ins[0]))]


@register("Clip")
def clip(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    if ctx.opset < 11:
        lo, hi = ctx.attr("min", -3.4028234663852886e38), ctx.attr("max", 3.4028234663852886e38)
        return [b.unary("clip", x, lo, hi)]
    lo_t = ins[1] if len(ins) > 1 else None
    hi_t = ins[2] if len(ins) > 2 else None
    y = x
    if lo_t is not None:
        y = b.binary("max", y, lo_t)
    if hi_t is not None:
        y = b.binary("min", y, hi_t)
    return [y if y is not x else b.unary("identity", x)]


@register("Shrink")
def shrink(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    lambd, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    lo = b.binary("lt", x, b.scalar(-lambd, x))
    hi = b.binary("gt", x, b.scalar(lambd, x))
    zero = b.scalar(0, x)
    y = b.select(hi, b.binary("sub", x, b.scalar(bias, x)), zero)
    return [b.select(lo, b.binary("add", x, b.scalar(bias, x)), y)]


@register("PRelu")
def prelu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, slope = req(ins[0]), req(ins[1], "slope")
    s = b.maybe_value(slope)
    if s is not None and s.size and dtypes.is_float(x.dtype) and np.all(np.isfinite(s) & (s != 0)):
        # Constant slopes: max(a*x, x) is PRelu where a <= 1 and min(a*x, x) where a >= 1 (both
        # give x on ties, so x's zero sign and NaNs survive); channels on both sides of 1 take
        # the max pass with a clipped to <= 1, then the min pass with a clipped to >= 1. Each
        # pass is a Mul and a Max/Min that fuse into one element-wise chain, where the compare,
        # Mul and Select were three full passes.
        if np.all(s <= 1):
            return [b.binary("max", b.binary("mul", x, slope), x)]
        if np.all(s >= 1):
            return [b.binary("min", b.binary("mul", x, slope), x)]
        lo, hi = b.const(np.minimum(s, 1).astype(s.dtype)), b.const(np.maximum(s, 1).astype(s.dtype))
        y = b.binary("max", b.binary("mul", x, lo), x)
        return [b.binary("min", b.binary("mul", y, hi), y)]
    neg = b.binary("lt", x, b.scalar(0, x))
    return [b.select(neg, b.binary("mul", x, slope), x)]


_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Equal": "eq",
    "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "And": "and",
    "Or": "or", "Xor": "xor", "BitwiseAnd": "bitand", "BitwiseOr": "bitor", "BitwiseXor": "bitxor",
}


@register(*_BINARY)
def binary(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, y = req(ins[0]), req(ins[1])
    fn = _BINARY[ctx.node.op_type]
    if fn != "pow" and x.dtype != y.dtype:
        raise DecomposeError(f"input dtypes differ: {x.dtype} vs {y.dtype}")
    return [b.binary(fn, x, y)]


@register("Mod")
def mod(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, y = req(ins[0]), req(ins[1])
    fmod = bool(ctx.attr("fmod", 0))
    return [b.binary("fmod" if fmod else "mod", x, y)]


@register("BitShift")
def bitshift(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    fn = "shl" if ctx.attr("direction", "LEFT") == "LEFT" else "shr"
    return [b.binary(fn, req(ins[0]), req(ins[1]))]


@register("Max", "Min", "Sum", "Mean")
def variadic(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    xs = [req(x) for x in ins]
    fn = {"Max": "max", "Min": "min", "Sum": "add", "Mean": "add"}[ctx.node.op_type]
    y = xs[0]
    for x in xs[1:]:
        y = b.binary(fn, y, x)
    if len(xs) == 1:
        y = b.unary("identity", y)
    if ctx.node.op_type == "Mean":
        y = b.binary("div", y, b.scalar(len(xs), y))
    return [y]


@register("Swish")
def swish(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    alpha = float(ctx.attr("alpha", 1.0))
    ax = x if alpha == 1.0 else b.binary("mul", x, b.scalar(alpha, x))
    return [b.binary("mul", x, b.unary("sigmoid", ax))]


@register("SwiGLU")
def swiglu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    gate, lin = req(ins[0]), req(ins[1])
    alpha = float(ctx.attr("alpha", 1.0))
    ax = gate if alpha == 1.0 else b.binary("mul", gate, b.scalar(alpha, gate))
    return [b.binary("mul", b.binary("mul", gate, b.unary("sigmoid", ax)), lin)]


@register("Where")
def where(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [b.select(req(ins[0]), req(ins[1]), req(ins[2]))]


@register("Cast")
def cast(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    to = dtypes.from_onnx(int(ctx.attr("to")))
    y = b.cast(x, to)
    return [y if y is not x else b.unary("identity", x)]


@register("CastLike")
def cast_like(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, like = req(ins[0]), req(ins[1])
    y = b.cast(x, like.dtype)
    return [y if y is not x else b.unary("identity", x)]


@register("Dropout")
def dropout(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    training = b.value(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    ratio = b.value(ins[1]) if len(ins) > 1 and ins[1] is not None else np.array(0.5)
    if training is not None and bool(np.asarray(training).reshape(-1)[0]) and float(
        np.asarray(ratio).reshape(-1)[0]
    ):
        raise ctx.unsupported("training-mode Dropout draws random masks (not supported)")
    return [b.unary("identity", x), b.const(np.ones(x.shape, bool))]
