"""The fused ``com.microsoft`` ops onnxruntime's graph optimizer writes into a model it saves
(``SessionOptions.optimized_model_filepath``, basic and extended levels), so such a model runs
as onnxruntime runs it: FusedConv, FusedGemm, FusedMatMul, Gelu, BiasGelu, FastGelu, QuickGelu.
Each is its default-domain pattern again (conv or GEMM with a fused activation, the GELU forms).
"""

from __future__ import annotations

from collections.abc import Sequence

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder
from walle_core.decompose.conv import conv_nd, resolve_pads
from walle_core.decompose.elementwise import req
from walle_core.decompose.linalg import gemm

Ins = list[A.Tensor | None]
MS = "com.microsoft"

# onnxruntime's fused activation names -> (Walle unary kind, default params)
_ACTIVATIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "Relu": ("relu", ()), "Tanh": ("tanh", ()), "Sigmoid": ("sigmoid", ()),
    "LeakyRelu": ("leaky_relu", (0.01,)), "HardSigmoid": ("hardsigmoid", (0.2, 0.5)),
    "Clip": ("clip", (-3.4028234663852886e38, 3.4028234663852886e38)),
}


def activation(ctx: NodeContext, params: Sequence[float]) -> A.Activation:
    """The node's ``activation`` attribute as a fused activation (identity when absent)."""
    name = ctx.attr("activation")
    if not name:
        return A.Activation()
    if name not in _ACTIVATIONS:
        raise ctx.unsupported(f"fused activation {name!r} (known: {', '.join(_ACTIVATIONS)})")
    fn, defaults = _ACTIVATIONS[name]
    given = [float(p) for p in params][: len(defaults)]
    return A.Activation(fn, tuple(given) + defaults[len(given):])


def _apply(b: Builder, y: A.Tensor, act: A.Activation) -> A.Tensor:
    return y if act.fn == "identity" else b.unary(act.fn, y, *act.params)


@register("FusedConv", domain=MS)
def fused_conv(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """``act(Conv(X, W, B) + Z)``; Z (a fused residual) is optional."""
    x, w = req(ins[0]), req(ins[1], "weight")
    bias = ins[2] if len(ins) > 2 else None
    z = ins[3] if len(ins) > 3 else None
    nd = len(x.shape) - 2
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    strides = ctx.attr("strides") or [1] * nd
    dilations = ctx.attr("dilations") or [1] * nd
    pads = resolve_pads(ctx, x.shape[2:], kernel, strides, dilations)
    act = activation(ctx, ctx.attr("activation_params", []))
    if z is None:
        return [conv_nd(b, x, w, bias, strides, pads, dilations, int(ctx.attr("group", 1)), act)]
    y = conv_nd(b, x, w, bias, strides, pads, dilations, int(ctx.attr("group", 1)))
    return [_apply(b, b.binary("add", y, z), act)]


@register("FusedGemm", domain=MS)
def fused_gemm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    act = activation(ctx, [ctx.attr(f"activation_{p}") for p in ("alpha", "beta")
                           if ctx.attr(f"activation_{p}") is not None])
    return [_apply(b, gemm(b, ins, ctx)[0], act)]


@register("FusedMatMul", domain=MS)
def fused_matmul(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """``alpha * op(A) @ op(B)`` where ``op`` swaps the last two axes when transA / transB."""
    if ctx.attr("transBatchA", 0) or ctx.attr("transBatchB", 0):
        raise ctx.unsupported("transBatchA / transBatchB")
    a, w = req(ins[0]), req(ins[1])
    if ctx.attr("transA", 0):
        a = _swap_last(b, a)
    if ctx.attr("transB", 0):
        w = _swap_last(b, w)
    y = b.matmul(a, w)
    alpha = float(ctx.attr("alpha", 1.0))
    return [y if alpha == 1.0 else b.binary("mul", y, b.scalar(alpha, y))]


def _swap_last(b: Builder, x: A.Tensor) -> A.Tensor:
    r = len(x.shape)
    return x if r < 2 else b.transpose(x, (*range(r - 2), r - 1, r - 2))


def _biased(b: Builder, ins: Ins) -> A.Tensor:
    x = req(ins[0])
    bias = ins[1] if len(ins) > 1 else None
    return x if bias is None else b.binary("add", x, bias)


@register("Gelu", "BiasGelu", domain=MS)
def gelu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """The exact (erf) GELU of ``X`` (+ ``bias``)."""
    return [b.unary("gelu", _biased(b, ins))]


@register("FastGelu", domain=MS)
def fast_gelu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """The tanh approximation of GELU of ``X`` (+ ``bias``)."""
    return [b.unary("gelu_tanh", _biased(b, ins))]


@register("QuickGelu", domain=MS)
def quick_gelu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """``x * sigmoid(alpha * x)`` (alpha 1 is SiLU, which is how onnxruntime fuses it)."""
    x = req(ins[0])
    alpha = float(ctx.attr("alpha", 1.702))
    scaled = x if alpha == 1.0 else b.binary("mul", x, b.scalar(alpha, x))
    return [b.binary("mul", x, b.unary("sigmoid", scaled))]
