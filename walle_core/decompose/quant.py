"""Linear quantization -> Binary / Unary / Cast / Reduce: QuantizeLinear, DequantizeLinear and
DynamicQuantizeLinear (integer types; float8/int4 are not Walle dtypes). The quantized
convolution and matrix product live in ``quant_linear``, the com.microsoft ops in ``quant_ms``."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core import dtypes
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, normalize_axis
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]

_INT_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
               for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32)}


def _opt(ins: Ins, i: int) -> A.Tensor | None:
    return ins[i] if len(ins) > i else None


def per_axis(b: Builder, p: A.Tensor, x: A.Tensor, axis: int, block: int) -> A.Tensor:
    """A scale / zero point laid out to broadcast over ``x`` (scalar, per-axis or blocked)."""
    rank = len(x.shape)
    if p.size == 1 and block <= 0:
        return b.reshape(p, ())
    axis = normalize_axis(axis, rank)
    if block > 0:
        if len(p.shape) != rank:
            raise DecomposeError("blocked quantization parameters need the input's rank")
        shape = list(p.shape)
        e = b.reshape(p, (*shape[: axis + 1], 1, *shape[axis + 1 :]))
        full = (*shape[: axis + 1], block, *shape[axis + 1 :])
        e = b.expand(e, full)
        shape[axis] *= block
        e = b.reshape(e, shape)
        if shape[axis] != x.shape[axis]:
            starts = [0] * rank
            sizes = list(shape)
            sizes[axis] = x.shape[axis]
            e = b.slice(e, starts, sizes, [1] * rank)
        return e
    if len(p.shape) != 1 or p.shape[0] != x.shape[axis]:
        raise DecomposeError(f"per-axis parameter of shape {list(p.shape)} does not fit axis {axis}")
    return b.reshape(p, [x.shape[axis] if i == axis else 1 for i in range(rank)])


def saturate_round(b: Builder, y: A.Tensor, zp: A.Tensor | None, out: np.dtype) -> A.Tensor:
    """round-half-even(y) + zp, clipped to ``out``'s range, cast to ``out``."""
    if out not in _INT_RANGES:
        raise DecomposeError(f"unsupported quantized type {out}")
    r = b.unary("round", y)
    if zp is not None:
        r = b.binary("add", r, b.cast(zp, r.dtype))
    lo, hi = _INT_RANGES[out]
    r = b.unary("clip", r, float(lo), float(hi))
    return b.cast(r, out)


@register("QuantizeLinear")
def quantize_linear(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale = req(ins[0]), req(ins[1], "y_scale")
    zp = _opt(ins, 2)
    code = ctx.attr("output_dtype", 0)
    out = zp.dtype if zp is not None else dtypes.from_onnx(int(code)) if code else np.dtype(np.uint8)
    if out not in _INT_RANGES:
        raise ctx.unsupported(f"quantizing to {out}")
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0))
    precision = ctx.attr("precision")
    work = dtypes.from_onnx(int(precision)) if precision else np.dtype(np.float32)
    if not precision and x.dtype == np.float64:
        work = x.dtype
    sv, zv = _per_tensor(b, scale), _per_tensor(b, zp)
    if x.dtype == np.float32 and work == np.float32 and out.itemsize == 1 and block <= 0 \
            and x.value is None and sv is not None and (zp is None or zv is not None):
        return [_quantize_composite(b, x, np.float32(sv), int(zv or 0), out)]
    s = per_axis(b, b.cast(scale, work), x, axis, block)
    y = b.binary("div", b.cast(x, work), s)
    z = per_axis(b, zp, x, axis, block) if zp is not None else None
    return [saturate_round(b, y, z, out)]


def _per_tensor(b: Builder, t: A.Tensor | None) -> float | None:
    """A constant one-element quantisation parameter's value, else None."""
    v = b.maybe_value(t)
    return float(np.asarray(v).reshape(-1)[0]) if v is not None and np.asarray(v).size == 1 else None


def _quantize_composite(b: Builder, x: A.Tensor, scale: np.float32, zero: int, out: np.dtype) -> A.Tensor:
    """Per-tensor QuantizeLinear of a float32 tensor to 8 bits: a ``quantize_linear`` composite
    (attributes ``scale``, ``zero``) whose expansion is the arithmetic above."""
    from walle_core.decompose.quant_linear import composite

    def build() -> list[A.Tensor]:
        y = b.binary("div", x, b.const(np.array(scale, np.float32)))
        return [saturate_round(b, y, b.const(np.array(zero, out)), out)]

    return composite(b, "quantize_linear", [x], build, scale=scale, zero=zero)


def _dequantize_composite(b: Builder, x: A.Tensor, scale: np.float32, zero: int) -> A.Tensor:
    """Per-tensor DequantizeLinear of an 8-bit tensor to float32: a ``dequantize_linear``
    composite (attributes ``scale``, ``zero``) whose expansion is the arithmetic below."""
    from walle_core.decompose.quant_linear import composite

    def build() -> list[A.Tensor]:
        xi = b.binary("sub", b.cast(x, np.int32), b.const(np.array(zero, np.int32)))
        return [b.binary("mul", b.cast(xi, np.float32), b.const(np.array(scale, np.float32)))]

    return composite(b, "dequantize_linear", [x], build, scale=scale, zero=zero)


@register("DequantizeLinear")
def dequantize_linear(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, scale = req(ins[0]), req(ins[1], "x_scale")
    zp = _opt(ins, 2)
    if x.dtype.kind not in "iu":
        raise ctx.unsupported(f"dequantizing {x.dtype}")
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0))
    code = ctx.attr("output_dtype", 0)
    out = dtypes.from_onnx(int(code)) if code else scale.dtype
    sv, zv = _per_tensor(b, scale), _per_tensor(b, zp)
    if x.dtype.itemsize == 1 and out == np.float32 and scale.dtype == np.float32 and block <= 0 \
            and x.value is None and sv is not None and (zp is None or zv is not None):
        return [_dequantize_composite(b, x, np.float32(sv), int(zv or 0))]
    xi = b.cast(x, np.int32)
    if zp is not None:
        xi = b.binary("sub", xi, b.cast(per_axis(b, zp, x, axis, block), np.int32))
    s = per_axis(b, scale, x, axis, block)
    y = b.binary("mul", b.cast(xi, np.float32), b.cast(s, np.float32))
    return [b.cast(y, out)]


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = b.cast(req(ins[0]), np.float32)
    axes = list(range(len(x.shape)))
    zero = b.const(np.array(0, np.float32))
    lo = b.binary("min", b.reduce(x, axes, "min", False), zero)
    hi = b.binary("max", b.reduce(x, axes, "max", False), zero)
    scale = b.binary("div", b.binary("sub", hi, lo), b.const(np.array(255, np.float32)))
    zp_f = b.unary("clip", b.unary("round", b.binary("sub", zero, b.binary("div", lo, scale))),
                   0.0, 255.0)
    zp = b.cast(zp_f, np.uint8)
    y = saturate_round(b, b.binary("div", x, scale), zp_f, np.dtype(np.uint8))
    return [y, scale, zp]
