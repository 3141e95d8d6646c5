"""Sampling at run-time coordinates: GridSample, AffineGrid, RoiAlign, DeformConv.

Every sampler here reduces to one scheme. Per spatial axis, a run-time coordinate tensor gives
``T`` taps: integer source indices and weights (nearest: 1 tap, linear: 2, cubic: 4), computed
with ``Unary``/``Binary``/``Select`` ops. The taps of all axes are combined by broadcasting into
``K = prod(T)`` flat row numbers and weight products, the input is viewed channels-last as
``(N * spatial, C)`` rows, and one ``GatherScatter`` gathers the K rows of every output point;
a multiply by the weights and a ``Reduce`` sum over K finish the interpolation. Taps outside the
input either read a clamped row with weight zero (zero padding) or are moved inside first
(border: clamp, reflection: fold back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, contiguous
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]

_CUBIC_A = -0.75


def _opt(ins: Ins, i: int) -> A.Tensor | None:
    return ins[i] if len(ins) > i else None


def _c(b: Builder, value: float, like: A.Tensor) -> A.Tensor:
    return b.const(np.array(value, like.dtype))


def _clip(b: Builder, x: A.Tensor, lo: float, hi: float) -> A.Tensor:
    return b.binary("min", b.binary("max", x, _c(b, lo, x)), _c(b, hi, x))


def reflect(b: Builder, x: A.Tensor, lo: float, hi: float) -> A.Tensor:
    """Fold ``x`` back into ``[lo, hi]`` by repeated reflection at both borders."""
    span = hi - lo
    if span <= 0:
        return b.binary("add", b.binary("mul", x, _c(b, 0.0, x)), _c(b, lo, x))
    # Distance past the border, in whole spans (n) and the remainder (r); an even n reflects
    # off the near border, an odd one off the far border.
    below = b.binary("lt", x, _c(b, lo, x))
    d = b.select(below, b.binary("sub", _c(b, lo, x), x), b.binary("sub", x, _c(b, lo, x)))
    n = b.unary("floor", b.binary("div", d, _c(b, span, x)))
    r = b.binary("sub", d, b.binary("mul", n, _c(b, span, x)))
    half = b.unary("floor", b.binary("mul", n, _c(b, 0.5, x)))
    odd = b.binary("gt", b.binary("sub", n, b.binary("mul", half, _c(b, 2.0, x))), _c(b, 0.5, x))
    # Below lo (d measured down from lo) and above hi (d measured up from lo) alike: an even n
    # lands at lo + r, an odd one at hi - r; values inside [lo, hi] are kept as they are.
    near = b.binary("add", _c(b, lo, x), r)
    far = b.binary("sub", _c(b, hi, x), r)
    folded = b.select(odd, far, near)
    inside = b.binary("and", b.binary("ge", x, _c(b, lo, x)), b.binary("le", x, _c(b, hi, x)))
    return b.select(inside, x, folded)


@dataclass
class Taps:
    idx: A.Tensor  # (..., T) float, integral values inside [0, size - 1]
    weight: A.Tensor  # (..., T) float, zero for taps that read padding zeros


def _kernel_weights(b: Builder, frac: A.Tensor, offsets: Sequence[int], mode: str) -> A.Tensor:
    """Weights of taps at ``floor(x) + offsets`` for fractional parts ``frac`` (..., 1)."""
    dist = b.unary("abs", b.binary("sub", frac, b.const(np.array(offsets, frac.dtype))))
    one = _c(b, 1.0, dist)
    if mode == "linear":
        return b.binary("max", b.binary("sub", one, dist), _c(b, 0.0, dist))
    a = _CUBIC_A
    d2 = b.binary("mul", dist, dist)
    d3 = b.binary("mul", d2, dist)
    near = b.binary("add", b.binary("sub", b.binary("mul", d3, _c(b, a + 2, dist)),
                                    b.binary("mul", d2, _c(b, a + 3, dist))), one)
    far = b.binary("sub", b.binary("add", b.binary("sub", b.binary("mul", d3, _c(b, a, dist)),
                                                   b.binary("mul", d2, _c(b, 5 * a, dist))),
                                   b.binary("mul", dist, _c(b, 8 * a, dist))), _c(b, 4 * a, dist))
    w = b.select(b.binary("le", dist, one), near, far)
    return b.select(b.binary("lt", dist, _c(b, 2.0, dist)), w, _c(b, 0.0, dist))


def axis_taps(
    b: Builder, x: A.Tensor, size: int, mode: str, padding: str, align_corners: bool
) -> Taps:
    """Taps along one axis for pixel coordinates ``x`` (any shape; taps go on a new last axis).

    Nearest and linear sampling pad the *coordinate* (border: clamp, reflection: fold); cubic
    sampling pads each of its four tap indices. Zero padding masks taps outside the axis."""
    lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if mode != "cubic":
        if padding == "border":
            x = _clip(b, x, 0.0, size - 1.0)
        elif padding == "reflection":
            x = _clip(b, reflect(b, x, lo, hi), 0.0, size - 1.0)
    x = b.reshape(x, (*x.shape, 1))
    if mode == "nearest":
        idx = b.unary("round", x)
        weight = b.binary("add", b.binary("mul", x, _c(b, 0.0, x)), _c(b, 1.0, x))
    else:
        offsets = [0, 1] if mode == "linear" else [-1, 0, 1, 2]
        base = b.unary("floor", x)
        weight = _kernel_weights(b, b.binary("sub", x, base), offsets, mode)
        idx = b.binary("add", base, b.const(np.array(offsets, x.dtype)))
        if mode == "cubic" and padding == "border":
            idx = _clip(b, idx, 0.0, size - 1.0)
        elif mode == "cubic" and padding == "reflection":
            idx = _clip(b, reflect(b, idx, lo, hi), 0.0, size - 1.0)
    inside = b.binary("and", b.binary("ge", idx, _c(b, 0.0, idx)),
                      b.binary("le", idx, _c(b, size - 1.0, idx)))
    weight = b.select(inside, weight, _c(b, 0.0, weight))
    return Taps(_clip(b, idx, 0.0, size - 1.0), weight)


def gather_taps(
    b: Builder, x: A.Tensor, taps: Sequence[Taps], batch_rows: A.Tensor | None = None,
    combine: bool = True,
) -> A.Tensor:
    """Interpolate ``x`` (N, C, *S) at points given per spatial axis as taps of shape (N', P, T_d),
    returning (N', C, P). ``batch_rows`` (N', 1, 1) int64 says which image each row of points
    reads (RoiAlign); by default row n reads image n. Without ``combine`` the weighted taps are
    returned unsummed, as (N', P, K, C)."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    r = len(spatial)
    ct = taps[0].weight.dtype
    st = contiguous(spatial)
    flat: A.Tensor | None = None
    weight: A.Tensor | None = None
    lead = taps[0].idx.shape[:2]
    for d, tp in enumerate(taps):
        t = tp.idx.shape[2]
        shape = (*lead, *([1] * d), t, *([1] * (r - d - 1)))
        ix = b.binary("mul", b.cast(b.reshape(tp.idx, shape), np.int64), b.const(np.array(st[d], np.int64)))
        w = b.reshape(tp.weight, shape)
        flat = ix if flat is None else b.binary("add", flat, ix)
        weight = w if weight is None else b.binary("mul", weight, w)
    assert flat is not None and weight is not None
    k = math.prod(flat.shape[2:])
    flat = b.reshape(flat, (*lead, k))
    weight = b.reshape(weight, (*lead, k, 1))
    size = math.prod(spatial)
    if batch_rows is None:
        base = b.const((np.arange(n, dtype=np.int64) * size).reshape(n, 1, 1))
    else:
        base = b.binary("mul", batch_rows, b.const(np.array(size, np.int64)))
    flat = b.binary("add", flat, base)
    rows_src = b.reshape(b.transpose(b.cast(x, ct), (0, *range(2, r + 2), 1)), (x.shape[0] * size, c))
    g = b.gather_rows(rows_src, flat, x.shape[0] * size, c)
    g = b.binary("mul", b.reshape(g, (*lead, k, c)), weight)
    if not combine:
        return g
    y = b.reduce(g, [2], "sum", False)  # (N', P, C)
    return b.transpose(y, (0, 2, 1))


def unnormalize(b: Builder, g: A.Tensor, size: int, align_corners: bool) -> A.Tensor:
    """Grid value in [-1, 1] -> pixel coordinate."""
    if align_corners:
        return b.binary("mul", b.binary("add", g, _c(b, 1.0, g)), _c(b, (size - 1) / 2.0, g))
    return b.binary("mul", b.binary("sub", b.binary("mul", b.binary("add", g, _c(b, 1.0, g)),
                                                    _c(b, float(size), g)), _c(b, 1.0, g)), _c(b, 0.5, g))


def _compute_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


@register("GridSample")
def grid_sample(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, grid = req(ins[0], "X"), req(ins[1], "grid")
    mode = str(ctx.attr("mode", "linear" if ctx.opset >= 20 else "bilinear"))
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = str(ctx.attr("padding_mode", "zeros"))
    align = bool(ctx.attr("align_corners", 0))
    if mode not in ("linear", "nearest", "cubic"):
        raise ctx.unsupported(f"mode {mode!r}")
    if padding not in ("zeros", "border", "reflection"):
        raise ctx.unsupported(f"padding_mode {padding!r}")
    r = len(x.shape) - 2
    if r < 1 or len(grid.shape) != r + 2 or grid.shape[-1] != r or grid.shape[0] != x.shape[0]:
        raise DecomposeError(f"GridSample shapes {list(x.shape)} and grid {list(grid.shape)} disagree")
    if mode == "cubic" and r != 2:
        raise ctx.unsupported("cubic GridSample is defined for 2-D inputs only")
    n, c = x.shape[:2]
    out_sp = grid.shape[1:-1]
    npts = math.prod(out_sp)
    if n * c * npts == 0 or math.prod(x.shape[2:]) == 0:
        return [b.const(np.zeros((n, c, *out_sp), x.dtype))]
    ct = _compute_dtype(x.dtype)
    g = b.reshape(b.cast(grid, ct), (n, npts, r))
    taps = []
    for d in range(r):  # grid's last axis lists coordinates innermost-first: (x, y, z)
        comp = b.reshape(b.slice(g, [0, 0, r - 1 - d], [n, npts, 1], [1, 1, 1]), (n, npts))
        coord = unnormalize(b, comp, x.shape[2 + d], align)
        taps.append(axis_taps(b, coord, x.shape[2 + d], mode, padding, align))
    y = gather_taps(b, x, taps, None)
    return [b.cast(b.reshape(y, (n, c, *out_sp)), x.dtype)]


@register("AffineGrid")
def affine_grid(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    theta, size_t = req(ins[0], "theta"), req(ins[1], "size")
    size = [int(s) for s in np.asarray(b.value(size_t)).reshape(-1)]
    align = bool(ctx.attr("align_corners", 0))
    r = len(size) - 2
    if r not in (2, 3) or theta.shape != (size[0], r, r + 1):
        raise DecomposeError(f"AffineGrid theta {list(theta.shape)} does not match size {size}")
    spatial = size[2:]

    def axis(m: int) -> np.ndarray:
        if align:
            return np.linspace(-1.0, 1.0, m) if m > 1 else np.zeros(m)
        return (2.0 * np.arange(m) + 1.0) / m - 1.0

    mesh = np.meshgrid(*[axis(m) for m in spatial], indexing="ij")  # per spatial axis, outer first
    cols = [m.reshape(-1) for m in reversed(mesh)]  # x (innermost) first
    base = np.stack([*cols, np.ones(math.prod(spatial))], axis=1).astype(theta.dtype)
    grid = b.matmul(b.const(base), b.transpose(theta, (0, 2, 1)))  # (N, P, r)
    return [b.reshape(grid, (size[0], *spatial, r))]


# --------------------------------------------------------------------------- RoiAlign


def _roi_axis_taps(b: Builder, y: A.Tensor, size: int) -> Taps:
    """Bilinear taps of RoiAlign: samples beyond one pixel outside the map read zero; others are
    clamped at 0 below and fall onto the last pixel at the far end."""
    outside = b.binary("or", b.binary("lt", y, _c(b, -1.0, y)), b.binary("gt", y, _c(b, float(size), y)))
    y = b.binary("max", y, _c(b, 0.0, y))
    low = b.unary("floor", y)
    last = _c(b, size - 1.0, y)
    at_end = b.binary("ge", low, last)
    low = b.select(at_end, last, low)
    high = b.select(at_end, last, b.binary("add", low, _c(b, 1.0, y)))
    y = b.select(at_end, low, y)
    frac = b.binary("sub", y, low)
    zero = _c(b, 0.0, y)
    frac = b.select(outside, zero, frac)
    rest = b.select(outside, zero, b.binary("sub", _c(b, 1.0, y), frac))
    shape = (*y.shape, 1)
    idx = b.concat([b.reshape(low, shape), b.reshape(high, shape)], len(y.shape))
    weight = b.concat([b.reshape(rest, shape), b.reshape(frac, shape)], len(y.shape))
    return Taps(idx, weight)


@register("RoiAlign")
def roi_align(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, rois, bidx = req(ins[0], "X"), req(ins[1], "rois"), req(ins[2], "batch_indices")
    mode = str(ctx.attr("mode", "avg"))
    if mode not in ("avg", "max"):
        raise ctx.unsupported(f"mode {mode!r}")
    half = str(ctx.attr("coordinate_transformation_mode", "half_pixel")) == "half_pixel"
    oh, ow = int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1))
    ratio = int(ctx.attr("sampling_ratio", 0))
    scale = float(ctx.attr("spatial_scale", 1.0))
    if len(x.shape) != 4 or len(rois.shape) != 2 or rois.shape[1] != 4:
        raise DecomposeError(f"RoiAlign wants X (N, C, H, W) and rois (R, 4), got {list(x.shape)}, {list(rois.shape)}")
    _, c, h, w = x.shape
    nr = rois.shape[0]
    if nr * c * oh * ow == 0:
        return [b.const(np.zeros((nr, c, oh, ow), x.dtype))]
    ct = _compute_dtype(x.dtype)
    rf = b.binary("sub", b.binary("mul", b.cast(rois, ct), b.const(np.array(scale, ct))),
                  b.const(np.array(0.5 if half else 0.0, ct)))

    def col(i: int) -> A.Tensor:
        return b.reshape(b.slice(rf, [0, i], [nr, 1], [1, 1]), (nr, 1))

    x0, y0, x1, y1 = col(0), col(1), col(2), col(3)
    rw, rh = b.binary("sub", x1, x0), b.binary("sub", y1, y0)
    if not half:  # the legacy mode makes every RoI at least one pixel wide and high
        rw = b.binary("max", rw, b.const(np.array(1.0, ct)))
        rh = b.binary("max", rh, b.const(np.array(1.0, ct)))
    bin_w = b.binary("div", rw, b.const(np.array(float(ow), ct)))
    bin_h = b.binary("div", rh, b.const(np.array(float(oh), ct)))
    if ratio > 0:
        gh = gw = ratio
    else:  # adaptive: ceil(roi / output) samples per bin, which depends on the RoI values
        gh_t = b.reduce(b.unary("ceil", bin_h), [0, 1], "max", False)
        gw_t = b.reduce(b.unary("ceil", bin_w), [0, 1], "max", False)
        gh = max(int(np.asarray(b.value(gh_t))), 1)
        gw = max(int(np.asarray(b.value(gw_t))), 1)

    def samples(bin_: A.Tensor, grid: int) -> A.Tensor:
        """Samples per bin along one axis: (R, 1) when adaptive, else a scalar."""
        if ratio > 0:
            return b.const(np.array(float(grid), ct))
        return b.binary("max", b.unary("ceil", bin_), b.const(np.array(1.0, ct)))

    cnt_h, cnt_w = samples(bin_h, gh), samples(bin_w, gw)

    def positions(
        start: A.Tensor, bin_: A.Tensor, cnt: A.Tensor, bins: int, grid: int
    ) -> tuple[A.Tensor, A.Tensor]:
        """Sample coordinates (R, bins * grid) and which of them are in use (adaptive case)."""
        p = np.repeat(np.arange(bins, dtype=ct), grid).reshape(1, -1)
        i = np.tile(np.arange(grid, dtype=ct), bins).reshape(1, -1)
        frac = b.binary("div", b.binary("add", b.const(i), b.const(np.array(0.5, ct))), cnt)
        pos = b.binary("add", start, b.binary("mul", b.binary("add", b.const(p), frac), bin_))
        used = b.binary("lt", b.const(i), cnt)
        return pos, used

    ys, yused = positions(y0, bin_h, cnt_h, oh, gh)  # (R, oh*gh)
    xs, xused = positions(x0, bin_w, cnt_w, ow, gw)  # (R, ow*gw)
    full = (nr, oh, gh, ow, gw)
    yy = b.reshape(b.expand(b.reshape(ys, (nr, oh, gh, 1, 1)), full), (nr, oh * gh * ow * gw))
    xx = b.reshape(b.expand(b.reshape(xs, (nr, 1, 1, ow, gw)), full), (nr, oh * gh * ow * gw))
    taps = [_roi_axis_taps(b, yy, h), _roi_axis_taps(b, xx, w)]
    rows = b.reshape(b.cast(bidx, np.int64), (nr, 1, 1))
    vals = gather_taps(b, x, taps, rows, combine=False)  # (R, P, 4, C)
    used = b.binary("and", b.reshape(yused, (yused.shape[0], oh, gh, 1, 1)),
                    b.reshape(xused, (xused.shape[0], 1, 1, ow, gw)))  # (R or 1, ...)
    used = b.reshape(used, (*used.shape, 1, 1))
    vals = b.reshape(vals, (nr, oh, gh, ow, gw, 4, c))
    if mode == "avg":
        zero = b.const(np.array(0.0, ct))
        total = b.reduce(b.select(used, vals, zero), [2, 4, 5], "sum", False)  # (R, oh, ow, C)
        count = b.binary("mul", cnt_h, cnt_w)
        y = b.binary("div", total, b.reshape(count, (nr, 1, 1, 1) if count.size > 1 else ()))
    else:  # max over samples of the largest weighted corner (as onnxruntime and the reference do)
        ninf = b.const(np.array(-np.inf, ct))
        y = b.reduce(b.select(used, vals, ninf), [2, 4, 5], "max", False)
    return [b.cast(b.transpose(y, (0, 3, 1, 2)), x.dtype)]


# --------------------------------------------------------------------------- DeformConv


@register("DeformConv")
def deform_conv(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, wt, off = req(ins[0], "X"), req(ins[1], "W"), req(ins[2], "offset")
    bias, mask = _opt(ins, 3), _opt(ins, 4)
    r = len(x.shape) - 2
    if r < 1 or len(wt.shape) != r + 2:
        raise DecomposeError(f"DeformConv shapes {list(x.shape)}, {list(wt.shape)} disagree")
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    oc = wt.shape[0]
    kshape = list(ctx.attr("kernel_shape", wt.shape[2:]))
    strides = list(ctx.attr("strides", [1] * r))
    dil = list(ctx.attr("dilations", [1] * r))
    pads = list(ctx.attr("pads", [0] * (2 * r)))
    group = int(ctx.attr("group", 1))
    og = int(ctx.attr("offset_group", 1))
    if c % group or oc % group or c % og or wt.shape[1] != c // group:
        raise DecomposeError("DeformConv channel counts do not divide into the groups")
    out_sp = [(spatial[d] + pads[d] + pads[d + r] - (dil[d] * (kshape[d] - 1) + 1)) // strides[d] + 1
              for d in range(r)]
    k = math.prod(kshape)
    npos = math.prod(out_sp)
    if off.shape != (n, og * k * r, *out_sp):
        raise DecomposeError(f"DeformConv offset must be {[n, og * k * r, *out_sp]}, got {list(off.shape)}")
    ct = _compute_dtype(x.dtype)
    offs = b.reshape(b.cast(off, ct), (n * og, k, r, npos))
    # Undeformed sampling positions per axis: out * stride - pad_begin + kernel * dilation.
    kk = np.indices(kshape).reshape(r, k, 1)
    oo = np.indices(out_sp).reshape(r, 1, npos)
    taps = []
    for d in range(r):
        base = (oo[d] * strides[d] - pads[d] + kk[d] * dil[d]).astype(ct).reshape(1, k * npos)
        od = b.reshape(b.slice(offs, [0, 0, d, 0], [n * og, k, 1, npos], [1, 1, 1, 1]), (n * og, k * npos))
        coord = b.binary("add", od, b.const(base))
        taps.append(axis_taps(b, coord, spatial[d], "linear", "zeros", True))
    xg = b.reshape(b.cast(x, ct), (n * og, c // og, *spatial))
    cols = b.reshape(gather_taps(b, xg, taps), (n, og, c // og, k, npos))
    if mask is not None:
        m = b.reshape(b.cast(mask, ct), (n, og, 1, k, npos))
        cols = b.binary("mul", cols, m)
    cols = b.reshape(cols, (n, group, (c // group) * k, npos))
    wg = b.reshape(b.cast(wt, ct), (group, oc // group, (c // group) * k))
    y = b.reshape(b.matmul(wg, cols), (n, oc, *out_sp))
    if bias is not None:
        y = b.binary("add", y, b.reshape(b.cast(bias, ct), (1, oc, *([1] * r))))
    return [b.cast(y, x.dtype)]
