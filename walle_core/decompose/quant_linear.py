"""Quantized convolution and matrix product as claimable composites.

``qlinear_conv`` and ``qlinear_matmul`` accumulate ``(x - x_zero) * (w - w_zero)`` exactly in
int32 (plus an int32 bias) and, when they carry a :class:`Requant`, requantize the sum the way
onnxruntime's kernels do: ``clamp(round_half_even(float32(acc) * scale[c]) + zero, lo, hi)`` with
``scale = x_scale * w_scale[c] / y_scale`` computed in float32. A backend with int8 kernels claims
them (the weights are plan-time constants, so it packs them once); every other backend runs the
expansion, which is the same arithmetic in atomic ops (int32 Conv2D / MatMul, Cast, Binary,
Unary round and clip), so the integer results are identical on every backend.

Registered here: ``QLinearConv``, ``ConvInteger``, ``QLinearMatMul``, ``MatMulInteger`` and the
``walle``-domain ``QLinearConv`` / ``QLinearMatMul`` the QDQ rewrite
(``walle_core.plan.rewrite.qdq``) produces, which add an output clamp (``clamp = [lo, hi]`` in
quantized units: a fused ReLU or Clip) and, for MatMul, an int32 bias and ``trans_b``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.conv import _conv_attrs, conv_nd
from walle_core.decompose.elementwise import req
from walle_core.decompose.quant import saturate_round

Ins = list[A.Tensor | None]
WALLE = "walle"  # domain of the ops the QDQ rewrite emits


def int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class Requant:
    """int32 accumulator -> ``dtype``: ``clamp(rint(float32(acc) * scale[c]) + zero, lo, hi)``
    (``scale`` has one float32 per output channel, or one for all)."""

    scale: np.ndarray
    zero: int
    dtype: np.dtype
    lo: int
    hi: int

    @staticmethod
    def of(x_scale: np.ndarray, w_scale: np.ndarray, y_scale: np.ndarray, zero: int,
           dtype: np.dtype, clamp: Sequence[float] | None = None) -> Requant:
        f = np.float32
        scale = (f(x_scale.reshape(-1)[0]) * w_scale.astype(f).reshape(-1)) / f(y_scale.reshape(-1)[0])
        lo, hi = int_range(dtype)
        if clamp is not None:
            lo, hi = max(lo, int(clamp[0])), min(hi, int(clamp[1]))
        return Requant(np.ascontiguousarray(scale, f), int(zero), np.dtype(dtype), lo, hi)


def requantize(b: Builder, acc: A.Tensor, rq: Requant, channel_axis: int) -> A.Tensor:
    """The requantisation epilogue in atomic ops (``acc`` int32; scale per ``channel_axis``)."""
    rank = len(acc.shape)
    scale = rq.scale if rq.scale.size == 1 else rq.scale.reshape(
        [rq.scale.size if i == channel_axis % rank else 1 for i in range(rank)])
    y = b.binary("mul", b.cast(acc, np.float32), b.const(scale.reshape(()) if scale.size == 1 else scale))
    r = b.unary("round", y)
    r = b.binary("add", r, b.const(np.array(rq.zero, np.float32)))
    r = b.unary("clip", r, float(rq.lo), float(rq.hi))
    return b.cast(r, rq.dtype)


def _per_channel(value: np.ndarray | None, n: int, what: str) -> np.ndarray:
    """A scalar or (n,) integer parameter as int32 (n,)."""
    if value is None:
        return np.zeros(n, np.int32)
    flat = np.asarray(value).astype(np.int32).reshape(-1)
    if flat.size == 1:
        return np.full(n, flat[0], np.int32)
    if flat.size != n:
        raise DecomposeError(f"{what} has {flat.size} values for {n} channels")
    return flat


def composite(b: Builder, name: str, inputs: Sequence[A.Tensor], build: Callable[[], list[A.Tensor]],
              **attrs: object) -> A.Tensor:
    """``b.composite`` with one output that a real op produces: when the expansion ends with a
    copy (a reshape), the copy moves after the composite, so the planner's copy elimination
    never rewires a consumer to a tensor that exists only inside the expansion."""
    (out,) = b.composite(name, inputs, build, **attrs)
    op = b.ops[-1] if b.ops else None
    if isinstance(op, A.Composite) and op.name == name and op.outputs == [out] and op.expansion:
        last = op.expansion[-1]
        if isinstance(last, A.Raster) and last.view is not None and last.out is out \
                and len(last.inputs) == 1 and any(o.out is last.inputs[0] for o in op.expansion[:-1]):
            op.expansion.pop()
            op.outputs = [last.inputs[0]]
            b.ops.append(last)
    return out


def _attrs_of(rq: Requant | None, x_zero: int, w_zero: np.ndarray, bias: np.ndarray) -> dict[str, object]:
    """The composite attributes a backend's kernel needs (documented in docs/quantization.md)."""
    attrs: dict[str, object] = {"x_zero": x_zero, "w_zero": w_zero, "bias": bias}
    if rq is not None:
        attrs.update(scale=rq.scale, y_zero=rq.zero, lo=rq.lo, hi=rq.hi)
    return attrs


# --------------------------------------------------------------------------- convolution


def qconv(b: Builder, x: A.Tensor, w: np.ndarray, x_zero: int, w_zero: np.ndarray | None,
          bias: np.ndarray | None, rq: Requant | None, strides: Sequence[int], pads: Sequence[int],
          dilations: Sequence[int], groups: int) -> A.Tensor:
    """Quantized convolution of ``x`` (NC...) with constant weights ``w``. 2-D (and 1-D, as a
    unit-height 2-D) becomes a ``qlinear_conv`` composite; other ranks run the expansion."""
    o = w.shape[0]
    wz = _per_channel(w_zero, o, "weight zero point")
    bi = _per_channel(bias, o, "bias")
    if len(x.shape) == 3:  # 1-D: a unit height
        y = qconv(b, b.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2])),
                  w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]), x_zero, wz, bi, rq,
                  (1, strides[0]), (0, pads[0], 0, pads[1]), (1, dilations[0]), groups)
        return b.reshape(y, (y.shape[0], y.shape[1], y.shape[3]))

    def build() -> list[A.Tensor]:
        xi = b.binary("sub", b.cast(x, np.int32), b.const(np.array(x_zero, np.int32)))
        wc = w.astype(np.int32) - wz.reshape((o,) + (1,) * (w.ndim - 1))
        acc = conv_nd(b, xi, b.const(wc), None, strides, pads, dilations, groups)
        if bi.any():
            acc = b.binary("add", acc, b.const(bi.reshape((o,) + (1,) * (len(acc.shape) - 2))))
        return [acc if rq is None else requantize(b, acc, rq, 1)]

    if len(x.shape) != 4:
        return build()[0]
    attrs = _attrs_of(rq, x_zero, wz, bi)
    attrs.update(strides=tuple(strides), pads=tuple(pads), dilations=tuple(dilations), groups=groups)
    return composite(b, "qlinear_conv", [x, b.const(w)], build, **attrs)


def _const(b: Builder, t: A.Tensor | None) -> np.ndarray | None:
    return None if t is None else b.maybe_value(t)


def _scalar_int(v: np.ndarray | None) -> int | None:
    """A zero point that is one value, else None."""
    if v is None:
        return 0
    flat = np.asarray(v).reshape(-1)
    return int(flat[0]) if flat.size == 1 else None


def window_sums(wc: np.ndarray, spatial: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                dilations: Sequence[int]) -> np.ndarray:
    """Per output channel and position, the sum of the centred weights ``wc`` (O, I, k...) over
    the taps that land inside the input (padding is outside): int32 (O, *out). A convolution of
    ``x - z`` padded with zeros is the one of ``x`` padded with zeros minus ``z`` times this."""
    nd = len(spatial)
    taps = wc.astype(np.int64).sum(axis=1)  # (O, k...)
    masks = []
    for d in range(nd):
        k, s, dil, lo = wc.shape[2 + d], strides[d], dilations[d], pads[d]
        n_out = (spatial[d] + pads[d] + pads[d + nd] - dil * (k - 1) - 1) // s + 1
        pos = np.arange(n_out)[None, :] * s - lo + np.arange(k)[:, None] * dil  # (k, out)
        masks.append(((pos >= 0) & (pos < spatial[d])).astype(np.int64))
    letters = "abcdefgh"[:nd]
    spec = f"o{letters}," + ",".join(f"{c}{c.upper()}" for c in letters) + f"->o{letters.upper()}"
    return np.einsum(spec, taps, *masks).astype(np.int32)


def colsum_correction(b: Builder, acc: A.Tensor, a_zero: A.Tensor, w: np.ndarray,
                      w_zero: np.ndarray | None) -> A.Tensor:
    """``acc - a_zero * sum_k(w - w_zero)`` for a run-time zero point of A."""
    wc = w.astype(np.int64) - (0 if w_zero is None else np.asarray(w_zero).astype(np.int64).reshape(1, -1))
    col = wc.sum(axis=0).astype(np.int32)
    zp = b.reshape(b.cast(a_zero, np.int32), ())
    return b.binary("sub", acc, b.binary("mul", b.const(col), zp))


def _geometry(ctx: NodeContext, x: A.Tensor, wv: np.ndarray) -> tuple[list[int], list[int], list[int], int]:
    """A quantized conv's strides, resolved pads, dilations and groups (channels checked)."""
    from walle_core.decompose.conv import resolve_pads

    nd = len(x.shape) - 2
    strides = ctx.attr("strides") or [1] * nd
    dil = ctx.attr("dilations") or [1] * nd
    pads = resolve_pads(ctx, x.shape[2:], list(wv.shape[2:]), strides, dil)
    groups = int(ctx.attr("group", 1))
    if x.shape[1] != wv.shape[1] * groups:
        raise DecomposeError(f"channels {x.shape[1]} do not match weight {list(wv.shape)} "
                             f"with group={groups}")
    return strides, pads, dil, groups


def _runtime_zero_conv(b: Builder, x: A.Tensor, xz: A.Tensor, wv: np.ndarray, wzv: np.ndarray | None,
                       ctx: NodeContext) -> A.Tensor | None:
    """ConvInteger with a run-time zero point of x (DynamicQuantizeLinear's): the composite with
    zero point 0, minus the zero point times the window sums of the weights; None when it does
    not apply."""
    if xz.size != 1 or x.dtype.itemsize != 1 or x.dtype.kind not in "iu" or len(x.shape) not in (3, 4):
        return None
    strides, pads, dil, groups = _geometry(ctx, x, wv)
    o = wv.shape[0]
    wz = _per_channel(wzv, o, "weight zero point")
    acc = qconv(b, x, wv, 0, wz, None, None, strides, pads, dil, groups)
    sums = window_sums(wv.astype(np.int32) - wz.reshape((o,) + (1,) * (wv.ndim - 1)), x.shape[2:],
                       strides, pads, dil)
    zp = b.reshape(b.cast(xz, np.int32), ())
    return b.binary("sub", acc, b.binary("mul", b.const(sums.reshape(acc.shape[1:])), zp))


def _qlinear_conv(b: Builder, ins: Ins, ctx: NodeContext, requant: bool) -> A.Tensor | None:
    """The composite form of QLinearConv / ConvInteger when the parameters are constants (and
    for ConvInteger a run-time zero point of x); None otherwise (the caller then runs the plain
    expansion)."""

    x, w = req(ins[0]), req(ins[3 if requant else 1], "weight")
    xs: A.Tensor | None = None
    ws: A.Tensor | None = None
    ys: A.Tensor | None = None
    yz: A.Tensor | None = None
    bias: A.Tensor | None = None
    if requant:
        xs, xz, ws, wz, ys = req(ins[1]), ins[2], req(ins[4]), ins[5], req(ins[6])
        yz, bias = (ins[7] if len(ins) > 7 else None), (ins[8] if len(ins) > 8 else None)
    else:
        xz, wz = (ins[2] if len(ins) > 2 else None), (ins[3] if len(ins) > 3 else None)
    wv, xzv, wzv, bv = _const(b, w), _const(b, xz), _const(b, wz), _const(b, bias)
    if not requant and xz is not None and xzv is None and wv is not None and (wz is None or wzv is not None):
        return _runtime_zero_conv(b, x, xz, wv, wzv, ctx)
    x_zero = _scalar_int(xzv)
    if wv is None or x_zero is None or (wz is not None and wzv is None) \
            or (bias is not None and bv is None) or (xz is not None and xzv is None):
        return None
    if x.dtype.kind not in "iu" or wv.dtype.kind not in "iu" or x.dtype.itemsize != 1:
        raise ctx.unsupported(f"quantized convolution of {x.dtype} by {wv.dtype}")
    rq = None
    if requant:
        sv = [_const(b, t) for t in (xs, ws, ys, yz)]
        if any(v is None for v in sv[:3]) or (yz is not None and sv[3] is None):
            return None
        out = (yz if yz is not None else x).dtype
        rq = Requant.of(sv[0], sv[1], sv[2], _scalar_int(sv[3]) or 0, out,  # type: ignore[arg-type]
                        ctx.attr("clamp"))
    strides, pads, dil, groups = _geometry(ctx, x, wv)
    return qconv(b, x, wv, x_zero, wzv, bv, rq, strides, pads, dil, groups)


def _centered(b: Builder, t: A.Tensor, zp: A.Tensor | None, per_channel_axis: int | None) -> A.Tensor:
    """``int32(t) - int32(zp)``; a per-output-channel zero point broadcasts over axis 0."""
    ti = b.cast(t, np.int32)
    if zp is None:
        return ti
    zi = b.cast(zp, np.int32)
    if zi.size > 1 and per_channel_axis is not None:
        zi = b.reshape(zi, (zi.size,) + (1,) * (len(t.shape) - 1))
    elif zi.size == 1:
        zi = b.reshape(zi, ())
    return b.binary("sub", ti, zi)


@register("ConvInteger")
def conv_integer(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """Integer convolution with zero points, accumulated exactly in int32."""
    fast = _qlinear_conv(b, ins, ctx, requant=False)
    if fast is not None:
        return [fast]
    x, w = req(ins[0]), req(ins[1], "weight")
    xz = ins[2] if len(ins) > 2 else None
    wz = ins[3] if len(ins) > 3 else None
    strides, pads, dil, groups = _conv_attrs(ctx, x, w)
    return [conv_nd(b, _centered(b, x, xz, None), _centered(b, w, wz, 0), None, strides, pads,
                    dil, groups)]


@register("QLinearConv")
@register("QLinearConv", domain=WALLE)
def qlinear_conv(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """int32 convolution of the zero-point-centred inputs (+ int32 bias), rescaled by
    ``x_scale * w_scale / y_scale``, rounded half-to-even and saturated (run-time scales or
    weights: the same arithmetic without the composite)."""
    fast = _qlinear_conv(b, ins, ctx, requant=True)
    if fast is not None:
        return [fast]
    x, xs, xz, w, ws, wz, ys = (req(t) for t in ins[:7])
    yz = ins[7] if len(ins) > 7 else None
    bias = ins[8] if len(ins) > 8 else None
    strides, pads, dil, groups = _conv_attrs(ctx, x, w)
    acc = conv_nd(b, _centered(b, x, xz, None), _centered(b, w, wz, 0), None, strides, pads, dil, groups)
    rank = len(acc.shape)
    if bias is not None:
        acc = b.binary("add", acc, b.reshape(b.cast(bias, np.int32), (bias.size,) + (1,) * (rank - 2)))
    wsf = b.cast(ws, np.float32)
    wsf = b.reshape(wsf, (wsf.size,) + (1,) * (rank - 2)) if wsf.size > 1 else b.reshape(wsf, ())
    scale = b.binary("div", b.binary("mul", b.reshape(b.cast(xs, np.float32), ()), wsf),
                     b.reshape(b.cast(ys, np.float32), ()))
    y = b.binary("mul", b.cast(acc, np.float32), scale)
    out_dtype = (yz if yz is not None else x).dtype
    return [saturate_round(b, y, None if yz is None else b.reshape(yz, ()), out_dtype)]


# --------------------------------------------------------------------------- matrix product


def qmatmul(b: Builder, a: A.Tensor, w: np.ndarray, a_zero: int, w_zero: np.ndarray | None,
            bias: np.ndarray | None, rq: Requant | None) -> A.Tensor:
    """``a`` (..., M, K) times constant ``w`` (K, N) as a ``qlinear_matmul`` composite:
    int32 output (``rq`` None) or requantized per output column."""
    if len(w.shape) != 2 or not a.shape or a.shape[-1] != w.shape[0]:
        raise DecomposeError(f"quantized MatMul of {list(a.shape)} by {list(w.shape)}")
    n = w.shape[1]
    wz = _per_channel(w_zero, n, "B zero point")
    bi = _per_channel(bias, n, "bias")

    def build() -> list[A.Tensor]:
        ai = b.binary("sub", b.cast(a, np.int32), b.const(np.array(a_zero, np.int32)))
        acc = b.matmul(ai, b.const(w.astype(np.int32) - wz.reshape(1, n)))
        if bi.any():
            acc = b.binary("add", acc, b.const(bi))
        return [acc if rq is None else requantize(b, acc, rq, -1)]

    return composite(b, "qlinear_matmul", [a, b.const(w)], build, **_attrs_of(rq, a_zero, wz, bi))


def _matmul_consts(b: Builder, a: A.Tensor, w: A.Tensor, az: A.Tensor | None,
                   wz: A.Tensor | None, trans_b: bool) -> tuple[np.ndarray, int, np.ndarray | None] | None:
    """(B as (K, N), a's zero point, B's zero points) when the composite applies, else None."""
    wv, azv, wzv = _const(b, w), _const(b, az), _const(b, wz)
    a_zero = _scalar_int(azv)
    if wv is None or wv.ndim != 2 or a_zero is None or (az is not None and azv is None) \
            or (wz is not None and wzv is None) or a.dtype.itemsize != 1 or len(a.shape) < 2:
        return None
    return (np.ascontiguousarray(wv.T) if trans_b else wv), a_zero, wzv


def int_matmul(b: Builder, a: A.Tensor, a_zero: A.Tensor | None, w: A.Tensor,
               w_zero: A.Tensor | None) -> A.Tensor:
    """int32 ``sum((a - a_zero) * (w - w_zero))``. An 8-bit ``a`` times a constant 2-D ``w``
    (constant zero points) runs as the ``qlinear_matmul`` composite; a run-time zero point of
    ``a`` (DynamicQuantizeLinear's) then becomes a column-sum correction. Otherwise the int32
    expansion (a per-row zero point of ``a``, run-time weights)."""
    found = _matmul_consts(b, a, w, a_zero, w_zero, False)
    if found is not None:
        return qmatmul(b, a, found[0], found[1], found[2], None, None)
    wv, wzv = _const(b, w), _const(b, w_zero)
    if a_zero is not None and a_zero.size == 1 and _const(b, a_zero) is None and wv is not None \
            and wv.ndim == 2 and (w_zero is None or wzv is not None) and a.dtype.itemsize == 1 \
            and len(a.shape) >= 2:
        return colsum_correction(b, qmatmul(b, a, wv, 0, wzv, None, None), a_zero, wv, wzv)
    a32 = b.cast(a, np.int32)
    w32 = b.cast(w, np.int32)
    if a_zero is not None:
        zp = b.cast(a_zero, np.int32)
        if len(zp.shape) == 1 and zp.size > 1:  # per-row zero point of A (M,)
            zp = b.reshape(zp, (zp.size, 1))
        a32 = b.binary("sub", a32, zp)
    if w_zero is not None:
        zp = b.cast(w_zero, np.int32)
        if len(zp.shape) == 1 and len(w.shape) >= 2:
            zp = b.reshape(zp, (1, zp.shape[0]))
        w32 = b.binary("sub", w32, zp)
    return b.matmul(a32, w32)


@register("MatMulInteger")
def matmul_integer(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    a, w = req(ins[0]), req(ins[1])
    return [int_matmul(b, a, ins[2] if len(ins) > 2 else None, w, ins[3] if len(ins) > 3 else None)]


def _qbmm(b: Builder, a: A.Tensor, w: A.Tensor, a_zp: A.Tensor | None, w_zp: A.Tensor | None,
          y_zp: A.Tensor | None, scales: list[np.ndarray | None], out: np.dtype, bias: A.Tensor | None,
          trans_b: bool, clamp: Sequence[float] | None) -> A.Tensor | None:
    """Two 8-bit activations (attention's Q K^T, scores x V) with per-tensor constant
    parameters and the same batch dims: the ``qlinear_bmm`` composite (attributes ``x_zero``,
    ``w_zero``, ``trans_b`` and the requantisation's), expanded as int32 MatMul + requantisation."""
    azv, wzv = _const(b, a_zp), _const(b, w_zp)
    a_zero = None if a_zp is not None and azv is None else _scalar_int(azv)
    w_zero = None if w_zp is not None and wzv is None else _scalar_int(wzv)
    if a_zero is None or w_zero is None or bias is not None or (y_zp is not None and scales[3] is None) \
            or any(s is None or s.size != 1 for s in scales[:3]):
        return None
    if a.dtype.itemsize != 1 or w.dtype.itemsize != 1 or out.itemsize != 1 or len(a.shape) < 2 \
            or len(a.shape) != len(w.shape) or a.shape[:-2] != w.shape[:-2] \
            or a.shape[-1] != w.shape[-1 if trans_b else -2]:
        return None
    rq = Requant.of(scales[0], scales[1], scales[2], _scalar_int(scales[3]) or 0, out, clamp)  # type: ignore[arg-type]

    def build() -> list[A.Tensor]:
        ai = b.binary("sub", b.cast(a, np.int32), b.const(np.array(a_zero, np.int32)))
        wt = b.transpose(w, (*range(len(w.shape) - 2), len(w.shape) - 1, len(w.shape) - 2)) if trans_b else w
        wi = b.binary("sub", b.cast(wt, np.int32), b.const(np.array(w_zero, np.int32)))
        return [requantize(b, b.matmul(ai, wi), rq, -1)]

    return composite(b, "qlinear_bmm", [a, w], build, **_attrs_of(rq, a_zero, np.array(w_zero, np.int32),
                                                                   np.zeros(1, np.int32)),
                     trans_b=int(trans_b))


@register("QLinearMatMul")
@register("QLinearMatMul", domain=WALLE)
def qlinear_matmul(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """QLinearMatMul; the ``walle`` form adds an int32 ``bias`` input (9th), ``trans_b`` and
    ``clamp``. Constant B: the ``qlinear_matmul`` composite; else int32 MatMul + requantisation."""
    a, a_s, a_zp = req(ins[0]), req(ins[1]), ins[2] if len(ins) > 2 else None
    w, w_s, w_zp = req(ins[3]), req(ins[4]), ins[5] if len(ins) > 5 else None
    y_s, y_zp = req(ins[6]), ins[7] if len(ins) > 7 else None
    bias = ins[8] if len(ins) > 8 else None
    trans_b = bool(ctx.attr("trans_b", 0))
    out = y_zp.dtype if y_zp is not None else a.dtype
    found = _matmul_consts(b, a, w, a_zp, w_zp, trans_b)
    scales = [_const(b, t) for t in (a_s, w_s, y_s, y_zp)]
    bv = _const(b, bias)
    if found is not None and all(s is not None for s in scales[:3]) \
            and (y_zp is None or scales[3] is not None) and (bias is None or bv is not None):
        rq = Requant.of(scales[0], scales[1], scales[2], _scalar_int(scales[3]) or 0, out,  # type: ignore[arg-type]
                        ctx.attr("clamp"))
        return [qmatmul(b, a, found[0], found[1], found[2], bv, rq)]
    two = _qbmm(b, a, w, a_zp, w_zp, y_zp, scales, np.dtype(out), bias, trans_b, ctx.attr("clamp"))
    if two is not None:
        return [two]
    ai = b.cast(a, np.int32)
    if a_zp is not None:
        zp = b.cast(a_zp, np.int32)
        if zp.size > 1:  # per-row zero point of a (M,)
            zp = b.reshape(zp, (zp.size, 1))
        ai = b.binary("sub", ai, zp)
    if trans_b:
        w = b.transpose(w, (*range(len(w.shape) - 2), len(w.shape) - 1, len(w.shape) - 2))
    wi = b.cast(w, np.int32)
    if w_zp is not None:
        wi = b.binary("sub", wi, b.cast(w_zp, np.int32))
    acc = b.matmul(ai, wi)
    if bias is not None:
        acc = b.binary("add", acc, b.cast(bias, np.int32))
    f = np.float64 if y_s.dtype == np.float64 else np.float32
    mult = b.binary("div", b.binary("mul", b.cast(a_s, f), b.cast(w_s, f)), b.cast(y_s, f))
    if mult.size > 1:
        mult = b.reshape(mult, (mult.size,)) if len(w.shape) >= 2 else mult
    y = saturate_round(b, b.binary("mul", b.cast(acc, f), mult), y_zp, out)
    clamp = ctx.attr("clamp")
    if clamp is not None:
        y = b.cast(b.unary("clip", b.cast(y, np.float32), float(clamp[0]), float(clamp[1])), out)
    return [y]
