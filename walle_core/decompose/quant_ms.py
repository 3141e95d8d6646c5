"""The ``com.microsoft`` quantized ops onnxruntime's quantizer emits, and table lookups.

* Element-wise maps of one int8 tensor (QLinearSigmoid, QLinearLeakyRelu, the requantisation of
  a QLinearConcat input, and any ``DequantizeLinear -> f -> QuantizeLinear`` the QDQ rewrite
  finds) are 256-entry tables computed at plan time by the engine's own decomposition of the
  float op, applied with one row gather: exact integer results on every backend.
* QLinearAdd / QLinearMul / QLinearAveragePool / QLinearSoftmax compute in float32 between the
  integer tensors; QLinearGlobalAveragePool sums in int32 and requantizes like a convolution.
* QGemm, MatMulIntegerToFloat and DynamicQuantizeMatMul use the ``qlinear_matmul`` composite
  (a run-time zero point of A becomes a column-sum correction); DynamicQuantizeLSTM dequantizes
  its constant weights and runs the float LSTM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, lookup, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req
from walle_core.decompose.quant import dequantize_linear, dynamic_quantize_linear, quantize_linear
from walle_core.decompose.quant_linear import (
    Requant,
    composite,
    int_matmul,
    int_range,
    qmatmul,
    requantize,
)
from walle_core.ir.graph import Node

Ins = list[A.Tensor | None]
MS = "com.microsoft"
WALLE = "walle"

register("QuantizeLinear", domain=MS)(quantize_linear)
register("DequantizeLinear", domain=MS)(dequantize_linear)
register("DynamicQuantizeLinear", domain=MS)(dynamic_quantize_linear)


def _opt(ins: Ins, i: int) -> A.Tensor | None:
    return ins[i] if len(ins) > i else None


def _scalar(b: Builder, t: A.Tensor | None, default: float = 0.0) -> float:
    """A per-tensor quantisation parameter's value (they are initializers in practice)."""
    if t is None:
        return default
    v = b.value(t).reshape(-1)
    if v.size != 1:
        raise DecomposeError(f"expected one value, got a parameter of shape {list(t.shape)}")
    return float(v[0])


def float_op(b: Builder, ctx: NodeContext, op_type: str, ins: Ins, opset: int | None = None,
             drop: tuple[str, ...] = ("channels_last", "opset")) -> list[A.Tensor]:
    """Run the default-domain ``op_type`` with this node's attributes on float tensors."""
    attrs = {k: v for k, v in ctx.node.attrs.items() if k not in drop}
    node = Node(op_type, [f"in{i}" for i in range(len(ins))], list(ctx.node.outputs), attrs,
                ctx.node.name)
    opset = opset or ctx.opset
    return lookup(node, opset)(b, ins, NodeContext(node, opset, ctx.run_subgraph))


def dequant(b: Builder, x: A.Tensor, scale: float, zero: float) -> A.Tensor:
    """``(x - zero) * scale`` in float32."""
    xf = b.binary("sub", b.cast(x, np.float32), b.const(np.array(zero, np.float32)))
    return b.binary("mul", xf, b.const(np.array(scale, np.float32)))


def quant(b: Builder, y: A.Tensor, scale: float, zero: float, dtype: np.dtype) -> A.Tensor:
    """``saturate(rint(y / scale) + zero)`` as ``dtype``."""
    lo, hi = int_range(dtype)
    r = b.unary("round", b.binary("div", y, b.const(np.array(scale, np.float32))))
    r = b.binary("add", r, b.const(np.array(zero, np.float32)))
    return b.cast(b.unary("clip", r, float(lo), float(hi)), dtype)


# --------------------------------------------------------------------------- table lookups


def lookup_table(b: Builder, x: A.Tensor, table: np.ndarray) -> A.Tensor:
    """``table[x - min(dtype)]`` for an 8-bit ``x``: a ``qlinear_lookup`` composite (attribute
    ``table``) whose expansion is one gather of 256 one-element rows."""
    if x.dtype.itemsize != 1 or table.size != 256:
        raise DecomposeError(f"a lookup table maps 8-bit tensors, not {x.dtype}")
    table = np.ascontiguousarray(table).reshape(256)

    def build() -> list[A.Tensor]:
        idx = b.cast(x, np.int64)
        if x.dtype == np.int8:
            idx = b.binary("add", idx, b.const(np.array(128, np.int64)))
        rows = b.gather_rows(b.const(table.reshape(256, 1)), idx, 256, 1)
        return [b.reshape(rows, x.shape)]

    return composite(b, "qlinear_lookup", [x], build, table=table)


def domain_values(dtype: np.dtype) -> np.ndarray:
    """Every value of an 8-bit type, in table order."""
    lo, _ = int_range(dtype)
    return np.arange(lo, lo + 256).astype(dtype)


def table_of(fn: object, dtype: np.dtype, x_scale: float, x_zero: float, y_scale: float,
             y_zero: float, out: np.dtype) -> np.ndarray:
    """The 256-entry table of ``quant(fn(dequant(v)))``, evaluated by the engine's decomposition
    (``fn`` takes a Builder and a float tensor and returns one) folded at plan time."""
    tb = Builder()
    xf = dequant(tb, tb.const(domain_values(dtype)), x_scale, x_zero)
    y = fn(tb, xf)  # type: ignore[operator]
    table = quant(tb, tb.cast(y, np.float32), y_scale, y_zero, out)
    return tb.value(table)


def _unary_lut(b: Builder, ins: Ins, ctx: NodeContext, op_type: str) -> list[A.Tensor]:
    x = req(ins[0])
    xs, xz = _scalar(b, req(ins[1])), _scalar(b, _opt(ins, 2))
    ys, yz = _scalar(b, req(ins[3])), _scalar(b, _opt(ins, 4))
    out = ins[4].dtype if _opt(ins, 4) is not None else x.dtype  # type: ignore[union-attr]
    table = table_of(lambda tb, t: float_op(tb, ctx, op_type, [t])[0], x.dtype, xs, xz, ys, yz, out)
    return [lookup_table(b, x, table)]


@register("QLinearSigmoid", domain=MS)
def qlinear_sigmoid(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return _unary_lut(b, ins, ctx, "Sigmoid")


@register("QLinearLeakyRelu", domain=MS)
def qlinear_leaky_relu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return _unary_lut(b, ins, ctx, "LeakyRelu")


@register("QLinearLookup", domain=WALLE)
def walle_lookup(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """``table[x]`` (the QDQ rewrite's form of ``DequantizeLinear -> f -> QuantizeLinear``)."""
    return [lookup_table(b, req(ins[0]), b.value(req(ins[1], "table")))]


# --------------------------------------------------------------------------- element-wise


def _binary(b: Builder, ins: Ins, fn: str) -> A.Tensor:
    """QLinearAdd: ``rint((a - az) * (as / cs) + (b - bz) * (bs / cs)) + cz`` (onnxruntime's
    form); QLinearMul: ``rint((a - az) * ((b - bz) * (as * bs / cs))) + cz``; float32, saturated.
    Same-shape operands, or one broadcast along the other's trailing axes, form a
    ``qlinear_binary`` composite (attributes ``fn``, the zero points, the two float32 factors
    ``ra``, ``rb``, and ``inner``: elements of the first input per element of the second)."""
    a, bb = req(ins[0]), req(ins[3])
    a_s, a_z = _scalar(b, req(ins[1])), _scalar(b, _opt(ins, 2))
    b_s, b_z = _scalar(b, req(ins[4])), _scalar(b, _opt(ins, 5))
    c_s, c_z = _scalar(b, req(ins[6])), _scalar(b, _opt(ins, 7))
    out = ins[7].dtype if _opt(ins, 7) is not None else a.dtype  # type: ignore[union-attr]
    f = np.float32
    if fn == "add":  # each side rescaled to C's scale
        ra, rb = float(f(a_s) / f(c_s)), float(f(b_s) / f(c_s))
    else:
        ra, rb = 1.0, float(f(a_s) * f(b_s) / f(c_s))

    def build() -> list[A.Tensor]:
        y = b.binary(fn, dequant(b, a, ra, a_z), dequant(b, bb, rb, b_z))
        return [quant(b, y, 1.0, c_z, out)]

    if a.dtype.itemsize != 1 or bb.dtype.itemsize != 1:
        return build()[0]
    inner = _inner(a.shape, bb.shape)
    if inner is not None:
        return composite(b, "qlinear_binary", [a, bb], build, fn=fn, a_zero=int(a_z), b_zero=int(b_z),
                         c_zero=int(c_z), ra=ra, rb=rb, inner=inner)
    inner = _inner(bb.shape, a.shape)
    if inner is not None:  # a broadcasts: the operands swap (f is commutative in float32)
        return composite(b, "qlinear_binary", [bb, a], build, fn=fn, a_zero=int(b_z), b_zero=int(a_z),
                         c_zero=int(c_z), ra=rb, rb=ra, inner=inner)
    return build()[0]


def _inner(full: Sequence[int], part: Sequence[int]) -> int | None:
    """How many consecutive elements of ``full`` share one element of ``part`` when ``part``
    broadcasts to ``full`` as ``part[(i // inner) % part.size]`` (``part`` holds some of
    ``full``'s middle axes, 1s around them: a squeeze-excitation scale (N, C, 1, 1) or a
    per-channel (C, 1, 1) against (N, C, H, W)); 1 for the same shape; None otherwise."""
    if len(part) > len(full):
        return None
    p = (1,) * (len(full) - len(part)) + tuple(part)
    if any(f == 1 and q != 1 for f, q in zip(full, p, strict=True)):
        return None
    pairs = [(f, q) for f, q in zip(full, p, strict=True) if f != 1]  # axes of 1 do not matter
    k = len(pairs)
    while k > 0 and pairs[k - 1][1] == 1:
        k -= 1
    j = 0  # leading axes it repeats along (a per-channel (C, 1, 1) against (N, C, H, W))
    while j < k and pairs[j][1] == 1:
        j += 1
    if any(f != q for f, q in pairs[j:k]):
        return None
    return math.prod(f for f, _ in pairs[k:])


@register("QLinearAdd", domain=MS)
def qlinear_add(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [_binary(b, ins, "add")]


@register("QLinearMul", domain=MS)
def qlinear_mul(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [_binary(b, ins, "mul")]


@register("QLinearConcat", domain=MS)
def qlinear_concat(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """Inputs (Y_scale, Y_zero, then (X, X_scale, X_zero) per input): each input requantized to
    the output's parameters (a table unless they already match), then one concat."""
    ys, yz = _scalar(b, req(ins[0])), _scalar(b, _opt(ins, 1))
    if (len(ins) - 2) % 3 or len(ins) < 5:
        raise DecomposeError("QLinearConcat takes (Y_scale, Y_zero, (X, X_scale, X_zero)...)")
    out = req(ins[1]).dtype
    parts: list[A.Tensor] = []
    for i in range(2, len(ins), 3):
        x = req(ins[i])
        xs, xz = _scalar(b, req(ins[i + 1])), _scalar(b, ins[i + 2])
        if xs == ys and xz == yz and x.dtype == out:
            parts.append(x)
        else:
            parts.append(lookup_table(b, x, table_of(lambda tb, t: t, x.dtype, xs, xz, ys, yz, out)))
    return [b.concat(parts, int(ctx.attr("axis", 0)))]


# --------------------------------------------------------------------------- pooling, softmax


def _to_channels_first(b: Builder, x: A.Tensor, ctx: NodeContext) -> A.Tensor:
    if not ctx.attr("channels_last", 0):
        return x
    r = len(x.shape)
    return b.transpose(x, (0, r - 1, *range(1, r - 1)))


def _from_channels_first(b: Builder, y: A.Tensor, ctx: NodeContext) -> A.Tensor:
    if not ctx.attr("channels_last", 0):
        return y
    r = len(y.shape)
    return b.transpose(y, (0, *range(2, r), 1))


@register("QLinearGlobalAveragePool", domain=MS)
def qlinear_global_average_pool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """int32 sum of each plane minus ``n * x_zero``, requantized by ``x_scale / (y_scale * n)``
    (onnxruntime's arithmetic): the planes as the rows of a ``qlinear_matmul`` by a column of
    ones (an 8-bit input; the same int32 sums and requantisation, on the int8 kernels)."""
    x = _to_channels_first(b, req(ins[0]), ctx)
    return [_from_channels_first(b, _qmean(b, x, ins, list(range(2, len(x.shape)))), ctx)]


@register("QLinearReduceMean", domain=WALLE)
def walle_reduce_mean(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """The QDQ rewrite's ``DequantizeLinear -> ReduceMean -> QuantizeLinear`` (attributes
    ``axes``, ``keepdims``): QLinearGlobalAveragePool's int32 sum and requantisation over those
    axes (trailing axes, squeeze-excitation's or a classifier's pool, run on the int8 kernels)."""
    x = req(ins[0])
    r = len(x.shape)
    axes = sorted({int(a) % r for a in ctx.attr("axes")}) if r else []
    y = _qmean(b, x, ins, axes)
    if ctx.attr("keepdims", 1):
        return [y]
    return [b.reshape(y, tuple(d for a, d in enumerate(x.shape) if a not in axes))]


def _qmean(b: Builder, x: A.Tensor, ins: Ins, axes: list[int]) -> A.Tensor:
    """``rint((sum(x) - n * x_zero) * (x_scale / (y_scale * n))) + y_zero`` over ``axes``
    (kept), saturated: ins = (x, x_scale, x_zero, y_scale, y_zero)."""
    xs, xz = _scalar(b, req(ins[1])), _scalar(b, _opt(ins, 2))
    ys, yz = _scalar(b, req(ins[3])), _scalar(b, _opt(ins, 4))
    out = ins[4].dtype if _opt(ins, 4) is not None else x.dtype  # type: ignore[union-attr]
    n = int(np.prod([x.shape[a] for a in axes]))
    f = np.float32
    lo, hi = int_range(out)
    rq = Requant(np.array([f(xs) / (f(ys) * f(n))], f), int(yz), np.dtype(out), lo, hi)
    r = len(x.shape)
    kept = tuple(1 if a in axes else d for a, d in enumerate(x.shape))
    if x.dtype.itemsize == 1 and n > 0 and axes and axes == list(range(r - len(axes), r)):
        rows = b.reshape(x, (int(np.prod(x.shape[:r - len(axes)])), n))  # trailing axes: rows
        y = qmatmul(b, rows, np.ones((n, 1), np.int8), int(xz), None, None, rq)
        return b.reshape(y, kept)
    acc = b.reduce(b.cast(x, np.int32), axes, "sum", True)
    acc = b.binary("sub", acc, b.const(np.array(int(xz) * n, np.int32)))
    return requantize(b, acc, rq, 1)


def _float_between(b: Builder, ins: Ins, ctx: NodeContext, op_type: str, opset: int | None = None) -> A.Tensor:
    """dequantize -> float op -> quantize, for (X, X_scale, X_zero, Y_scale, Y_zero) ops."""
    x = req(ins[0])
    xs, xz = _scalar(b, req(ins[1])), _scalar(b, _opt(ins, 2))
    ys, yz = _scalar(b, req(ins[3])), _scalar(b, _opt(ins, 4))
    out = ins[4].dtype if _opt(ins, 4) is not None else x.dtype  # type: ignore[union-attr]
    (y,) = float_op(b, ctx, op_type, [dequant(b, x, xs, xz)], opset)
    return quant(b, y, ys, yz, out)


@register("QLinearAveragePool", domain=MS)
def qlinear_average_pool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = _to_channels_first(b, req(ins[0]), ctx)
    y = _float_between(b, [x, *ins[1:]], ctx, "AveragePool")
    return [_from_channels_first(b, y, ctx)]


@register("QLinearSoftmax", domain=MS)
def qlinear_softmax(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [_float_between(b, ins, ctx, "Softmax", int(ctx.attr("opset", ctx.opset)))]


# --------------------------------------------------------------------------- matrix products


def int_matmul_to_float(b: Builder, a: A.Tensor, a_zero: A.Tensor | None, w: A.Tensor,
                        w_zero: A.Tensor | None, scale: A.Tensor, bias: A.Tensor | None) -> A.Tensor:
    """``float32(sum((a - a_zero) * (w - w_zero))) * scale (+ bias)`` (``quant_linear.int_matmul``)."""
    acc = int_matmul(b, a, a_zero, w, w_zero)
    y = b.binary("mul", b.cast(acc, np.float32), b.cast(scale, np.float32))
    return y if bias is None else b.binary("add", y, b.cast(bias, np.float32))


@register("MatMulIntegerToFloat", domain=MS)
def matmul_integer_to_float(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    a, w = req(ins[0]), req(ins[1])
    scale = b.binary("mul", b.cast(req(ins[2]), np.float32), b.cast(req(ins[3]), np.float32))
    return [int_matmul_to_float(b, a, _opt(ins, 4), w, _opt(ins, 5), scale, _opt(ins, 6))]


@register("DynamicQuantizeMatMul", domain=MS)
def dynamic_quantize_matmul(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """A quantized to uint8 at run time (DynamicQuantizeLinear), then MatMulIntegerToFloat."""
    a, w = req(ins[0]), req(ins[1])
    aq, a_s, a_z = dynamic_quantize_linear(b, [a], ctx)
    scale = b.binary("mul", b.reshape(a_s, ()), b.cast(req(ins[2], "b_scale"), np.float32))
    return [int_matmul_to_float(b, aq, a_z, w, _opt(ins, 3), scale, _opt(ins, 4))]


@register("QGemm", domain=MS)
def qgemm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """(A, A_scale, A_zero, B, B_scale, B_zero, C int32, Y_scale, Y_zero): quantized output with
    Y_scale, float output without."""
    a, w = req(ins[0]), req(ins[3])
    if ctx.attr("transA", 0):
        a = b.transpose(a, (1, 0))
    wv = b.maybe_value(w)
    trans_b = bool(ctx.attr("transB", 0))
    if wv is None:
        raise ctx.unsupported("QGemm with a run-time B")
    wv = np.ascontiguousarray(wv.T) if trans_b else wv
    alpha = np.float32(ctx.attr("alpha", 1.0))
    a_s, b_s = b.value(req(ins[1])), b.value(req(ins[4]))
    a_zero = int(_scalar(b, _opt(ins, 2)))
    w_zero = b.maybe_value(_opt(ins, 5))
    bias = b.maybe_value(_opt(ins, 6))
    y_s = _opt(ins, 7)
    if y_s is None:
        acc = qmatmul(b, a, wv, a_zero, w_zero, bias, None)
        scale = (alpha * np.float32(a_s.reshape(-1)[0]) * b_s.astype(np.float32)).reshape(-1)
        return [b.binary("mul", b.cast(acc, np.float32), b.const(scale if scale.size > 1 else scale.reshape(())))]
    y_z = _opt(ins, 8)
    out = y_z.dtype if y_z is not None else a.dtype
    rq = Requant.of(alpha * a_s.astype(np.float32), b_s, b.value(y_s), int(_scalar(b, y_z)), out)
    return [qmatmul(b, a, wv, a_zero, w_zero, bias, rq)]


# --------------------------------------------------------------------------- recurrent


def _dequantized_weights(w: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """[D, in, 4H] int8 with per-direction (or per-direction, per-column) parameters ->
    ONNX LSTM's float [D, 4H, in]."""
    d = w.shape[0]
    s = scale.astype(np.float32).reshape(d, 1, -1)
    z = zero.astype(np.int32).reshape(d, 1, -1)
    return np.ascontiguousarray(np.swapaxes((w.astype(np.int32) - z).astype(np.float32) * s, 1, 2))


@register("DynamicQuantizeLSTM", domain=MS)
def dynamic_quantize_lstm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """The float LSTM on dequantized (constant) weights; onnxruntime's kernel quantizes X and
    H per step, which agrees to the quantisation noise of those steps."""
    if len(ins) < 12:
        raise DecomposeError("DynamicQuantizeLSTM needs W/R scales and zero points (inputs 8-11)")
    w, r = b.maybe_value(req(ins[1])), b.maybe_value(req(ins[2]))
    params = [b.maybe_value(req(t)) for t in ins[8:12]]
    if w is None or r is None or any(p is None for p in params):
        raise ctx.unsupported("DynamicQuantizeLSTM with run-time weights")
    wf = b.const(_dequantized_weights(w, params[0], params[1]))  # type: ignore[arg-type]
    rf = b.const(_dequantized_weights(r, params[2], params[3]))  # type: ignore[arg-type]
    return float_op(b, ctx, "LSTM", [ins[0], wf, rf, *ins[3:8]], drop=())
