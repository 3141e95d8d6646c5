"""Resize and Upsample, separable: one axis at a time.

For each resized axis the source coordinate of every output position is computed at plan time
in numpy, and turned into a tap table: ``idx[out, K]`` source indices (clamped: edge padding)
and ``w[out, K]`` weights. An index column that cuts into a few strided runs (integer-factor
up/down-sampling, edges clamped) is taken by one Raster; linear interpolation's two taps then
combine as ``g0 + w1 * (g1 - g0)`` (one fused element-wise pass). Other tables resize the axis
by one row gather of the K taps, a multiply by the weights and a sum over the taps
(``GatherScatter`` + ``Binary`` + ``Reduce``).
``tf_crop_and_resize`` positions outside the input take ``extrapolation_value`` via ``Select``.

A float32 image resized along H and W by tables of at most two taps (nearest, or linear
without antialiasing: any scale, any coordinate mode) is a ``resize2d`` composite over that
decomposition, which a backend may run as one pass (the cpu backend, on NCHW or its blocked
NCHW16c layout); nearest sampling that is a few strided block moves stays a plain Raster.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, contiguous, normalize_axis, strided_regions
from walle_core.decompose.elementwise import req
from walle_core.decompose.movement import compact_regions

Ins = list[A.Tensor | None]

# Gathers along an inner axis use a flat (outer * out * K) index table up to this many entries;
# beyond it the axis is moved to the front instead (two Rasters, a tiny table).
_FLAT_INDEX_LIMIT = 1 << 16
# A constant index column cut into at most this many strided runs is taken by one Raster.
_MAX_SEGMENTS = 8


@dataclass
class AxisSpec:
    size_in: int
    size_out: int
    scale: float
    roi: tuple[float, float]


@dataclass
class Options:
    mode: str
    coord: str
    nearest: str
    cubic_a: float
    exclude_outside: bool
    extrapolation: float
    antialias: bool


def source_coords(spec: AxisSpec, coord: str) -> np.ndarray:
    """Output index -> source coordinate, per ``coordinate_transformation_mode``.

    Computed in float32 in the same operation order as onnxruntime, so that nearest-neighbour
    rounding ties (e.g. 1.5 / 0.6) fall the same way."""
    f = np.float32
    n_in, n_out, s = f(spec.size_in), f(spec.size_out), f(spec.scale)
    y = np.arange(spec.size_out, dtype=f)
    half = f(0.5)
    if coord == "half_pixel":
        x = (y + half) / s - half
    elif coord == "pytorch_half_pixel":
        x = (y + half) / s - half if spec.size_out > 1 else np.zeros_like(y)
    elif coord == "align_corners":
        x = y * (n_in - 1) / (n_out - 1) if spec.size_out > 1 else np.zeros_like(y)
    elif coord == "asymmetric":
        x = y / s
    elif coord == "half_pixel_symmetric":
        adjustment = n_out / (s * n_in)
        offset = n_in / f(2) * (f(1) - adjustment)
        x = offset + (y + half) / s - half
    elif coord == "tf_crop_and_resize":
        r0, r1 = f(spec.roi[0]), f(spec.roi[1])
        if spec.size_out > 1:
            x = r0 * (n_in - 1) + y * (r1 - r0) * (n_in - 1) / (n_out - 1)
        else:
            x = np.full_like(y, half * (r0 + r1) * (n_in - 1))
    else:
        raise DecomposeError(f"unknown coordinate_transformation_mode {coord!r}")
    return np.asarray(x, np.float32).astype(np.float64)


def _nearest_index(x: np.ndarray, mode: str, downsample: bool) -> np.ndarray:
    fl = np.floor(x)
    if mode == "round_prefer_floor":
        r = np.where(x - fl == 0.5, fl, np.floor(x + 0.5))
    elif mode == "round_prefer_ceil":
        r = np.floor(x + 0.5)
    elif mode == "floor":
        r = fl
    elif mode == "ceil":
        r = np.ceil(x)
    elif mode == "simple":  # Upsample and Resize-10: truncate, or ceil when downsampling
        r = np.ceil(x) if downsample else np.trunc(x)
    else:
        raise DecomposeError(f"unknown nearest_mode {mode!r}")
    return r.astype(np.int64)


def _linear_kernel(t: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(t), 0.0, 1.0)


def _cubic_kernel(a: float) -> Callable[[np.ndarray], np.ndarray]:
    def k(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        t2, t3 = t * t, t * t * t
        near = (a + 2) * t3 - (a + 3) * t2 + 1
        far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
        return np.where(t <= 1, near, np.where(t < 2, far, 0.0))

    return k


def tap_table(spec: AxisSpec, opt: Options) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(idx[out, K] clamped source indices, w[out, K] weights, out-of-range mask or None)."""
    x = source_coords(spec, opt.coord)
    n_in = spec.size_in
    outside = None
    if opt.coord == "tf_crop_and_resize":
        outside = (x < 0) | (x > n_in - 1)
        if not outside.any():
            outside = None
    if opt.mode == "nearest":
        idx = _nearest_index(x, opt.nearest, spec.scale < 1)[:, None]
        return np.clip(idx, 0, n_in - 1), np.ones(idx.shape), outside
    kernel: Callable[[np.ndarray], np.ndarray]
    if opt.mode == "linear":
        radius, kernel = 1, _linear_kernel
    elif opt.mode == "cubic":
        radius, kernel = 2, _cubic_kernel(opt.cubic_a)
    else:
        raise DecomposeError(f"unknown Resize mode {opt.mode!r}")
    s = min(spec.scale, 1.0) if opt.antialias else 1.0
    start = math.floor(-radius / s) + 1
    taps = np.arange(start, 2 - start)  # offsets from base; 2 * (1 - start) taps
    base = np.ceil(x) - 1  # so that the fraction lies in (0, 1]
    ratio = x - base
    idx = base.astype(np.int64)[:, None] + taps[None, :]
    w = kernel((taps[None, :] - ratio[:, None]) * s)
    if opt.antialias:
        w = w / w.sum(axis=1, keepdims=True)
    if opt.exclude_outside:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    idx = np.clip(idx, 0, n_in - 1)
    keep = np.any(w != 0, axis=0)
    if keep.any() and not keep.all():  # drop taps that never contribute
        idx, w = idx[:, keep], w[:, keep]
    return idx, w, outside


def _strided_pattern(idx: np.ndarray, n_in: int) -> tuple[list[int], list[int], int] | None:
    """A 1-tap index column as (sizes, index strides, offset) of a strided view, if it is one:
    ``idx[j] = off + j*step`` or ``idx[j] = off + j // r`` (integer nearest resampling)."""
    col = idx[:, 0]
    n = col.size
    if n == 1:
        return [1], [0], int(col[0])
    d = np.diff(col)
    if np.all(d == d[0]) and d[0] >= 0:
        return [n], [int(d[0])], int(col[0])
    for r in range(2, n + 1):
        if n % r:
            continue
        m = n // r
        if np.array_equal(col, col[0] + np.arange(n) // r) and col[0] + m - 1 < n_in:
            return [m, r], [1, 0], int(col[0])
    return None


def _segments(col: np.ndarray) -> list[tuple[int, list[int], list[int]]]:
    """An index column cut into the fewest runs that are strided views, as (start, sizes, index
    strides): ``col[s + j] = col[s] + j * step`` (step >= 0) or ``col[s] + j // r`` (whole groups
    of r equal values). Half-pixel 2x upsampling's taps are 3 runs: an edge, pairs, an edge."""
    n = col.size
    vals = [int(v) for v in col]
    arith = [1] * n  # longest arithmetic run from s
    equal = [1] * n  # equal values from s
    for s in range(n - 2, -1, -1):
        if vals[s + 1] == vals[s]:
            equal[s] = equal[s + 1] + 1
        step = vals[s + 1] - vals[s]
        if step >= 0:
            arith[s] = 2 if s + 2 >= n or vals[s + 2] - vals[s + 1] != step else arith[s + 1] + 1
    cost = [0] * (n + 1)
    pick: list[tuple[list[int], list[int], int]] = [([], [], 0)] * n
    for s in range(n - 1, -1, -1):
        best: tuple[int, list[int], list[int], int] = (cost[s + 1] + 1, [1], [0], 1)
        a = arith[s]
        if a > 1 and cost[s + a] + 1 < best[0]:
            best = (cost[s + a] + 1, [a], [vals[s + 1] - vals[s]], a)
        r, g = equal[s], 0
        if r > 1:
            while s + (g + 1) * r <= n and vals[s + g * r] == vals[s] + g and equal[s + g * r] >= r:
                g += 1
            if g > 1 and cost[s + g * r] + 1 < best[0]:
                best = (cost[s + g * r] + 1, [g, r], [1, 0], g * r)
        cost[s], pick[s] = best[0], (best[1], best[2], best[3])
    out: list[tuple[int, list[int], list[int]]] = []
    s = 0
    while s < n:
        sizes, steps, length = pick[s]
        out.append((s, sizes, steps))
        s += length
    return out


def _take(b: Builder, x: A.Tensor, axis: int, col: np.ndarray) -> A.Tensor | None:
    """``x`` indexed along ``axis`` by the constant column ``col`` as one Raster of a few
    strided regions (a gather by a constant index table is a data move), or None when the
    column does not cut into a few strided runs."""
    shape = x.shape
    n_in, n_out = shape[axis], col.size
    if n_out == n_in and np.array_equal(col, np.arange(n_in)):
        return x
    segs = _segments(col)
    if len(segs) > _MAX_SEGMENTS:
        return None
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    out_shape = (*shape[:axis], n_out, *shape[axis + 1 :])
    if len(segs) == 1:
        _, sizes, steps = segs[0]
        view = b.strided(x, [outer, *sizes, inner], [n_in * inner, *(t * inner for t in steps), 1],
                         int(col[0]) * inner)
        return b.reshape(view, out_shape)
    out = b.tensor(out_shape, x.dtype)
    regions: list[A.Region] = []
    for start, sizes, steps in segs:
        dst = contiguous([outer, *sizes, inner])
        dst[0] = n_out * inner
        regions += strided_regions(0, int(col[start]) * inner, [n_in * inner, *(t * inner for t in steps), 1],
                                   start * inner, dst, [outer, *sizes, inner])
    b.emit(A.Raster([x], [out], regions=regions))
    return out


# A joint take over several axes emits at most this many regions (segment combinations).
_MAX_JOINT = 64


def take_all(b: Builder, x: A.Tensor, cols: dict[int, np.ndarray]) -> A.Tensor | None:
    """``x`` indexed along several axes at once by constant columns, as ONE Raster: nearest
    resampling of H and W in one pass over the output (not a pass per axis), with a 4-D
    NCHW output a backend's channel-blocked layout can run on directly. None when a column
    does not cut into a few strided runs."""
    axes = sorted(cols)
    segs = {a: _segments(cols[a]) for a in axes}
    if any(len(sg) > _MAX_SEGMENTS for sg in segs.values()) or math.prod(len(sg) for sg in segs.values()) > _MAX_JOINT:
        return None
    shape = list(x.shape)
    out_shape = [cols[i].size if i in cols else n for i, n in enumerate(shape)]
    xs, os = contiguous(shape), contiguous(out_shape)
    out = b.tensor(tuple(out_shape), x.dtype)
    regions: list[A.Region] = []
    for combo in itertools.product(*(segs[a] for a in axes)):
        pick = dict(zip(axes, combo, strict=True))
        sizes: list[int] = []
        sst: list[int] = []
        dst: list[int] = []
        soff = doff = 0
        for i, n in enumerate(shape):
            if i not in pick:
                sizes.append(n)
                sst.append(xs[i])
                dst.append(os[i])
                continue
            start, szs, steps = pick[i]
            soff += int(cols[i][start]) * xs[i]
            doff += start * os[i]
            sizes += szs
            sst += [t * xs[i] for t in steps]
            dst += [szs[1] * os[i], os[i]] if len(szs) == 2 else [os[i]]
        regions += compact_regions(0, soff, sst, doff, dst, sizes)
    b.emit(A.Raster([x], [out], regions=regions))
    return out


def _lerp_axis(b: Builder, x: A.Tensor, axis: int, idx: np.ndarray, w: np.ndarray) -> A.Tensor | None:
    """Two taps whose weights sum to 1 (linear interpolation): ``g0 + w1 * (g1 - g0)`` over the
    two taps taken as Rasters, three float ops that fuse into one element-wise pass (the gather
    of both taps, a multiply and a sum over the taps moved twice the output)."""
    if idx.shape[1] != 2 or not np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-9) or x.dtype.kind != "f":
        return None
    g0 = _take(b, x, axis, idx[:, 0])
    if g0 is None:
        return None
    w1 = w[:, 1]
    if not w1.any():
        return g0
    g1 = _take(b, x, axis, idx[:, 1])
    if g1 is None:
        return None
    wt = b.const(w1.astype(x.dtype).reshape((-1,) + (1,) * (len(x.shape) - axis - 1)))
    return b.binary("add", b.binary("mul", b.binary("sub", g1, g0), wt), g0)


def resize_axis(b: Builder, x: A.Tensor, axis: int, idx: np.ndarray, w: np.ndarray) -> A.Tensor:
    shape = x.shape
    n_in = shape[axis]
    n_out, k = idx.shape
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    out_shape = (*shape[:axis], n_out, *shape[axis + 1 :])
    if k == 1 and np.all(w == 1):
        taken = _take(b, x, axis, idx[:, 0])
        if taken is not None:
            return taken
    elif k == 2:
        lerp = _lerp_axis(b, x, axis, idx, w)
        if lerp is not None:
            return lerp
    flat_idx = idx.reshape(-1)
    if outer == 1:
        rows = b.gather_rows(x, b.const(flat_idx), n_in, inner)
        g = b.reshape(rows, (n_out, k, inner))
    elif outer * flat_idx.size <= _FLAT_INDEX_LIMIT:
        table = (np.arange(outer, dtype=np.int64)[:, None] * n_in + flat_idx[None, :]).reshape(-1)
        rows = b.gather_rows(x, b.const(table), outer * n_in, inner)
        g = b.reshape(rows, (outer, n_out, k, inner))
    else:
        rank = len(shape)
        perm = [axis] + [i for i in range(rank) if i != axis]
        xt = b.transpose(x, perm)
        rest = outer * inner
        rows = b.gather_rows(xt, b.const(flat_idx), n_in, rest)
        if k == 1 and np.all(w == 1):
            y = b.reshape(rows, (n_out, *[shape[i] for i in perm[1:]]))
        else:
            g = b.reshape(rows, (n_out, k, rest))
            wt = b.const(w.astype(x.dtype).reshape(n_out, k, 1))
            y = b.reduce_axis(b.binary("mul", g, wt), 1, "sum")
            y = b.reshape(y, (n_out, *[shape[i] for i in perm[1:]]))
        inv = [perm.index(i) for i in range(rank)]
        return b.transpose(y, inv)
    if k == 1 and np.all(w == 1):
        return b.reshape(g, out_shape)
    wt = b.const(w.astype(x.dtype).reshape(n_out, k, 1))
    y = b.reduce_axis(b.binary("mul", g, wt), len(g.shape) - 2, "sum")
    return b.reshape(y, out_shape)


# A pass along an axis moves runs of the product of the later axes' sizes; a run this short
# costs about as much again per element (a single-element gather along the last axis, a copy
# that cannot vectorise), so shorter runs count (1 + _SHORT_RUN / run) per element written.
_SHORT_RUN = 8


def axis_order(shape: Sequence[int], specs: dict[int, AxisSpec], opt: Options) -> list[int]:
    """The order to resize the axes in (separable: any order gives the same values up to
    rounding). Interpolating modes take the order that writes the fewest (run-weighted)
    elements: upsampling the last axis first, on the small input, leaves the large final pass
    copying whole rows (16x bilinear: 9x96x8 -> 9x96x128 gathered single floats twice, 4x slower
    than the same size moved as 128-float rows). Nearest keeps axis order (its passes are often
    strided views that cost nothing)."""
    axes = sorted(specs)
    if opt.mode == "nearest" or len(axes) < 2 or len(axes) > 4:
        return axes

    def cost(order: list[int]) -> float:
        cur, total = list(shape), 0.0
        for a in order:
            cur[a] = specs[a].size_out
            run = math.prod(cur[a + 1:])
            total += math.prod(cur) * (1.0 + _SHORT_RUN / max(run, 1))
        return total

    return min((list(p) for p in itertools.permutations(axes)), key=cost)


def two_tap_tables(x: A.Tensor, specs: dict[int, AxisSpec], opt: Options
                   ) -> dict[str, object] | None:
    """The ``resize2d`` composite's attributes, when resizing ``x`` is one: a float32 NCHW
    tensor resized along H and/or W, nearest or linear with at most two taps per output whose
    weights sum to 1 (no antialiased downsampling, no extrapolated crop). ``rows``/``cols``: per
    output row / column its two source indices (the same one twice for one tap) flattened;
    ``row_frac``/``col_frac``: the second tap's weight (value = a + f * (b - a) per axis).
    Every coordinate mode and scale gives such tables; a backend runs them in one pass."""
    if len(x.shape) != 4 or x.dtype != np.float32 or not specs or any(a not in (2, 3) for a in specs) \
            or opt.mode not in ("nearest", "linear") or any(sp.size_out == 0 for sp in specs.values()):
        return None
    tabs: list[tuple[np.ndarray, np.ndarray]] = []
    for axis in (2, 3):
        n = x.shape[axis]
        if axis not in specs:
            tabs.append((np.repeat(np.arange(n, dtype=np.int64), 2), np.zeros(n)))
            continue
        idx, w, outside = tap_table(specs[axis], opt)
        if outside is not None or idx.shape[1] > 2 or not np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-9):
            return None
        if idx.shape[1] == 1:
            idx, frac = np.concatenate([idx, idx], axis=1), np.zeros(idx.shape[0])
        else:
            frac = w[:, 1]
        tabs.append((idx.reshape(-1), frac))
    return {"mode": opt.mode,
            "rows": tuple(int(v) for v in tabs[0][0]), "row_frac": tuple(float(v) for v in tabs[0][1]),
            "cols": tuple(int(v) for v in tabs[1][0]), "col_frac": tuple(float(v) for v in tabs[1][1])}


def resize(b: Builder, x: A.Tensor, specs: dict[int, AxisSpec], opt: Options) -> A.Tensor:
    """``x`` resized along the axes of ``specs``; a 2-D image resize with two-tap tables (see
    :func:`two_tap_tables`) is wrapped in a ``resize2d`` composite; nearest upsampling by
    whole factors stays the one Raster of its decomposition (a blocked layout runs it as
    block moves, one region per pixel phase)."""
    attrs = two_tap_tables(x, specs, opt)
    if attrs is None:
        return _resize(b, x, specs, opt)
    start = len(b.ops)
    y = b.composite("resize2d", [x], lambda: [_resize(b, x, specs, opt)], **attrs)[0]
    comp = b.ops[-1] if len(b.ops) == start + 1 else None
    whole = all(sp.size_out % sp.size_in == 0 for sp in specs.values())
    if opt.mode == "nearest" and whole and isinstance(comp, A.Composite) and len(comp.expansion) == 1 \
            and isinstance(comp.expansion[0], A.Raster):
        b.ops[-1:] = comp.expansion  # one pass of block moves already: no composite
    return y


def _joint_nearest(b: Builder, x: A.Tensor, specs: dict[int, AxisSpec], opt: Options) -> A.Tensor | None:
    """Nearest upsampling of several axes as one Raster (:func:`take_all`), or None."""
    tables = {axis: tap_table(specs[axis], opt) for axis in specs}
    if opt.mode == "nearest" and len(specs) > 1 and all(t[2] is None for t in tables.values()) \
            and any(sp.size_out > sp.size_in for sp in specs.values()) and all(sp.size_out for sp in specs.values()):
        return take_all(b, x, {axis: t[0][:, 0] for axis, t in tables.items()})
    return None


def _resize(b: Builder, x: A.Tensor, specs: dict[int, AxisSpec], opt: Options) -> A.Tensor:
    rank = len(x.shape)
    src = x
    integer = x.dtype.kind in "iub"
    if integer and opt.mode != "nearest":
        src = b.cast(x, np.float32)
    y = src
    masks: list[tuple[int, np.ndarray]] = []
    tables = {axis: tap_table(specs[axis], opt) for axis in specs}
    joint = _joint_nearest(b, y, specs, opt)
    if joint is not None:
        return joint
    for axis in axis_order(x.shape, specs, opt):
        spec = specs[axis]
        if spec.size_out == 0:
            return b.const(np.zeros((*y.shape[:axis], 0, *y.shape[axis + 1:]), x.dtype))
        idx, w, outside = tables[axis]
        y = resize_axis(b, y, axis, idx, w)
        if outside is not None:
            masks.append((axis, outside))
    for axis, outside in masks:
        m = b.const(outside.reshape((-1,) + (1,) * (rank - axis - 1)))
        y = b.select(m, b.const(np.array(opt.extrapolation, y.dtype)), y)
    if integer and opt.mode != "nearest":
        y = b.unary("round", y)
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            y = b.unary("clip", y, float(info.min), float(info.max))
        y = b.cast(y, x.dtype)
    return y


def _floats(b: Builder, t: A.Tensor | None) -> list[float] | None:
    if t is None or t.size == 0:
        return None
    return [float(v) for v in np.asarray(b.value(t)).reshape(-1)]


@register("Resize")
def resize_op(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    if ctx.opset < 11:
        scales = _floats(b, req(ins[1] if len(ins) > 1 else None, "scales"))
        mode = str(ctx.attr("mode", "nearest"))
        opt = Options(mode, "asymmetric", "simple", -0.75, False, 0.0, False)
        return [_by_scales(b, x, list(range(rank)), scales or [1.0] * rank, opt)]
    roi = _floats(b, ins[1] if len(ins) > 1 else None)
    scales = _floats(b, ins[2] if len(ins) > 2 else None)
    sizes_f = _floats(b, ins[3] if len(ins) > 3 else None)
    axes = [normalize_axis(a, rank) for a in (ctx.attr("axes") or range(rank))]
    if len(set(axes)) != len(axes):
        raise DecomposeError(f"repeated axes {axes}")
    opt = Options(
        mode=str(ctx.attr("mode", "nearest")),
        coord=str(ctx.attr("coordinate_transformation_mode", "half_pixel")),
        nearest=str(ctx.attr("nearest_mode", "round_prefer_floor")),
        cubic_a=float(ctx.attr("cubic_coeff_a", -0.75)),
        exclude_outside=bool(ctx.attr("exclude_outside", 0)),
        extrapolation=float(ctx.attr("extrapolation_value", 0.0)),
        antialias=bool(ctx.attr("antialias", 0)) and ctx.attr("mode", "nearest") != "nearest",
    )
    if opt.mode not in ("nearest", "linear", "cubic"):
        raise ctx.unsupported(f"mode {opt.mode!r}")
    rois = [(0.0, 1.0)] * len(axes)
    if opt.coord == "tf_crop_and_resize":
        if roi is None or len(roi) != 2 * len(axes):
            raise DecomposeError(f"roi must hold {2 * len(axes)} values for tf_crop_and_resize")
        rois = [(roi[i], roi[len(axes) + i]) for i in range(len(axes))]
    if (scales is None) == (sizes_f is None):
        raise DecomposeError("exactly one of scales and sizes must be given")
    specs: dict[int, AxisSpec] = {}
    if scales is not None:
        if len(scales) != len(axes):
            raise DecomposeError(f"{len(scales)} scales for {len(axes)} axes")
        for a, s, r in zip(axes, scales, rois, strict=True):
            if s <= 0:
                raise DecomposeError(f"scale {s} must be positive")
            specs[a] = AxisSpec(x.shape[a], math.floor(x.shape[a] * s), s, r)
    else:
        sizes = [int(v) for v in sizes_f or []]
        if len(sizes) != len(axes):
            raise DecomposeError(f"{len(sizes)} sizes for {len(axes)} axes")
        policy = str(ctx.attr("keep_aspect_ratio_policy", "stretch"))
        ratios = [sz / x.shape[a] for a, sz in zip(axes, sizes, strict=True)]
        if policy != "stretch":
            if policy == "not_larger":
                common = min(ratios)
            elif policy == "not_smaller":
                common = max(ratios)
            else:
                raise DecomposeError(f"unknown keep_aspect_ratio_policy {policy!r}")
            ratios = [common] * len(axes)
            sizes = [int(common * x.shape[a] + 0.5) for a in axes]
        for a, sz, s, r in zip(axes, sizes, ratios, rois, strict=True):
            specs[a] = AxisSpec(x.shape[a], sz, s, r)
    specs = {a: sp for a, sp in specs.items() if not _identity(sp, opt)}
    return [resize(b, x, specs, opt)]


def _identity(spec: AxisSpec, opt: Options) -> bool:
    if spec.size_in != spec.size_out:
        return False
    idx, w, outside = tap_table(spec, opt)
    return bool(outside is None and idx.shape[1] == 1 and np.all(w == 1)
                and np.array_equal(idx[:, 0], np.arange(spec.size_in)))


def _by_scales(b: Builder, x: A.Tensor, axes: Sequence[int], scales: Sequence[float],
               opt: Options) -> A.Tensor:
    if len(scales) != len(x.shape):
        raise DecomposeError(f"{len(scales)} scales for rank {len(x.shape)}")
    if opt.mode == "bilinear":
        opt.mode = "linear"
    if opt.mode not in ("nearest", "linear"):
        raise DecomposeError(f"unknown Upsample mode {opt.mode!r}")
    specs = {}
    for a in axes:
        s = float(scales[a])
        sp = AxisSpec(x.shape[a], math.floor(x.shape[a] * s), s, (0.0, 1.0))
        if not _identity(sp, opt):
            specs[a] = sp
    return resize(b, x, specs, opt)


@register("Upsample")
def upsample(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    if len(ins) > 1 and ins[1] is not None:
        scales = _floats(b, ins[1])
    else:
        scales = [float(v) for v in ctx.attr("scales") or []]
    opt = Options(str(ctx.attr("mode", "nearest")), "asymmetric", "simple", -0.75, False, 0.0,
                  False)
    rank = len(x.shape)
    return [_by_scales(b, x, list(range(rank)), scales or [1.0] * rank, opt)]
