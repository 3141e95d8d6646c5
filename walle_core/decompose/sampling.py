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


def gather_taps(b: Builder, x: A.Tensor, taps: Sequence[Taps], batch_rows: A.Tensor | None) -> A.Tensor:
    """Interpolate ``x`` (N, C, *S) at points given per spatial axis as taps of shape (N, P, T_d),
    returning (N, C, P). ``batch_rows`` (N, P, 1) int64 overrides which batch image each point
    reads (RoiAlign); by default point (n, p) reads image n."""
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
    g = b.reshape(g, (*lead, k, c))
    y = b.reduce(b.binary("mul", g, weight), [2], "sum", False)  # (N', P, C)
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
