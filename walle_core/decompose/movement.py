"""Data-movement ONNX ops -> Raster (reshape, transpose, slice, concat, pad, tile, ...)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import (
    Builder,
    DecomposeError,
    _merge_dims,
    contiguous,
    normalize_axis,
    strided_regions,
)
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def compact_regions(src: int, soff: int, sst: Sequence[int], doff: int, dst: Sequence[int],
                    sizes: Sequence[int]) -> list[A.Region]:
    """Regions of an N-D strided copy with the innermost (merged) axis and the two largest
    others inside each region, so the copy is a few large regions, not one per row of an outer
    axis (a copy may run in any axis order: every destination element is written once)."""
    n, a, d = _merge_dims(list(sizes), list(sst), list(dst))
    if len(n) > 3:
        inner = [*sorted(sorted(range(len(n) - 1), key=lambda i: -n[i])[:2]), len(n) - 1]
        order = [i for i in range(len(n)) if i not in inner] + inner
        n, a, d = [n[i] for i in order], [a[i] for i in order], [d[i] for i in order]
    return strided_regions(src, soff, a, doff, d, n)


def ints(b: Builder, t: A.Tensor | None) -> list[int] | None:
    """An int vector input whose value the plan needs (a sync point when data-dependent)."""
    if t is None:
        return None
    return [int(v) for v in np.asarray(b.value(t)).reshape(-1)]


def axes_arg(b: Builder, ins: Ins, ctx: NodeContext, pos: int, rank: int) -> list[int] | None:
    """Axes given as an attribute (old opsets) or as input ``pos`` (newer opsets)."""
    raw = ints(b, ins[pos]) if len(ins) > pos else None
    if raw is None:
        raw = ctx.attr("axes")
    if raw is None:
        return None
    return [normalize_axis(a, rank) for a in raw]


def reshape_target(shape: Sequence[int], target: Sequence[int], allowzero: bool) -> list[int]:
    out = [int(t) for t in target]
    for i, t in enumerate(out):
        if t == 0 and not allowzero:
            if i >= len(shape):
                raise DecomposeError("Reshape copies a dimension that does not exist")
            out[i] = shape[i]
    if out.count(-1) > 1:
        raise DecomposeError("Reshape target has more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(shape)
        if known == 0 or total % known:
            raise DecomposeError(f"cannot reshape {list(shape)} to {list(target)}")
        out[out.index(-1)] = total // known
    return out


@register("Reshape")
def reshape(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    target = ints(b, ins[1]) if len(ins) > 1 else ctx.attr("shape")
    if target is None:
        raise DecomposeError("Reshape needs a shape")
    return [b.reshape(x, reshape_target(x.shape, target, bool(ctx.attr("allowzero", 0))))]


@register("Flatten")
def flatten(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise DecomposeError(f"Flatten axis {axis} out of range")
    return [b.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))]


@register("Squeeze")
def squeeze(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axes = axes_arg(b, ins, ctx, 1, len(x.shape))
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    if any(x.shape[a] != 1 for a in axes):
        raise DecomposeError(f"cannot squeeze axes {axes} of shape {list(x.shape)}")
    return [b.reshape(x, [d for i, d in enumerate(x.shape) if i not in axes])]


@register("Unsqueeze")
def unsqueeze(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    given = ints(b, ins[1]) if len(ins) > 1 and ins[1] is not None else None
    out_rank = len(x.shape) + len(given if given is not None else ctx.attr("axes", []))
    axes = axes_arg(b, ins, ctx, 1, out_rank) or []
    if len(set(axes)) != len(axes):
        raise DecomposeError("Unsqueeze axes repeat")
    dims = iter(x.shape)
    return [b.reshape(x, [1 if i in axes else next(dims) for i in range(out_rank)])]


@register("Transpose")
def transpose(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    perm = ctx.attr("perm") or list(range(len(x.shape)))[::-1]
    y = b.transpose(x, perm)
    return [y if y is not x else b.unary("identity", x)]


@register("Concat")
def concat(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    xs = [req(x) for x in ins]
    return [b.concat(xs, ctx.attr("axis", 0))]


def split_sizes(b: Builder, x: A.Tensor, axis: int, ins: Ins, ctx: NodeContext, n_out: int) -> list[int]:
    sizes = ints(b, ins[1]) if len(ins) > 1 and ins[1] is not None else ctx.attr("split")
    dim = x.shape[axis]
    if sizes is None:
        parts = ctx.attr("num_outputs", n_out)
        step = -(-dim // parts)
        sizes = [min(step, dim - i * step) for i in range(parts)]
    if sum(sizes) != dim:
        raise DecomposeError(f"split sizes {sizes} do not add up to {dim}")
    return sizes


@register("Split")
def split(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axis = normalize_axis(ctx.attr("axis", 0), len(x.shape))
    sizes = split_sizes(b, x, axis, ins, ctx, len(ctx.node.outputs))
    return split_along(b, x, axis, sizes)


def split_along(b: Builder, x: A.Tensor, axis: int, sizes: Sequence[int]) -> list[A.Tensor]:
    outs, pos = [], 0
    for s in sizes:
        starts = [0] * len(x.shape)
        starts[axis] = pos
        shape = list(x.shape)
        shape[axis] = s
        outs.append(b.slice(x, starts, shape, [1] * len(x.shape)))
        pos += s
    return outs


def slice_params(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """Normalised (start, size) for one axis under ONNX/numpy clamping rules."""
    if step == 0:
        raise DecomposeError("Slice step cannot be 0")
    start, stop, stride = slice(start, end, step).indices(dim)
    size = max(0, (stop - start + (stride - (1 if stride > 0 else -1))) // stride)
    return start, size


@register("Slice")
def slice_(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(b, ins[1]), ints(b, ins[2])
        axes = ints(b, ins[3] if len(ins) > 3 else None) or list(range(len(starts or [])))
        steps = ints(b, ins[4] if len(ins) > 4 else None) or [1] * len(axes)
    assert starts is not None and ends is not None
    st, sz, sp = [0] * rank, list(x.shape), [1] * rank
    for a, s, e, k in zip(axes, starts, ends, steps, strict=True):
        a = normalize_axis(a, rank)
        st[a], sz[a] = slice_params(x.shape[a], s, e, k)
        sp[a] = k
    return [b.slice(x, st, sz, sp)]


@register("Pad")
def pad(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads, value = ctx.attr("pads"), ctx.attr("value", 0.0)
        axes = list(range(rank))
    else:
        pads = ints(b, ins[1])
        cv = b.maybe_value(ins[2]) if len(ins) > 2 and ins[2] is not None else None
        if len(ins) > 2 and ins[2] is not None and cv is None:
            cv = b.value(ins[2])
        value = float(np.asarray(cv).reshape(-1)[0]) if cv is not None and np.asarray(cv).size else 0.0
        axes = axes_arg(b, ins, ctx, 3, rank) or list(range(rank))
    assert pads is not None
    if len(pads) != 2 * len(axes):
        raise DecomposeError(f"Pad expects {2 * len(axes)} pads, got {len(pads)}")
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    if mode == "constant":
        return [b.pad(x, before, after, value)]
    if mode in ("reflect", "edge", "wrap"):
        return [pad_indexed(b, x, before, after, mode)]
    raise ctx.unsupported(f"Pad mode {mode!r}")


def pad_indexed(b: Builder, x: A.Tensor, before: list[int], after: list[int], mode: str) -> A.Tensor:
    """Reflect/edge/wrap padding, one axis at a time, as slices of the source concatenated."""
    y = x
    for axis in range(len(x.shape)):
        lo, hi = before[axis], after[axis]
        if lo == 0 and hi == 0:
            continue
        n = y.shape[axis]
        idx = np.arange(-lo, n + hi)
        if mode == "edge":
            src = np.clip(idx, 0, n - 1)
        elif mode == "wrap":
            src = idx % n
        else:
            if n == 1:
                src = np.zeros_like(idx)
            else:
                period = 2 * (n - 1)
                m = np.mod(idx, period)
                src = np.where(m < n, m, period - m)
        y = take_constant(b, y, axis, src)
    return y


def take_constant(b: Builder, x: A.Tensor, axis: int, idx: np.ndarray) -> A.Tensor:
    """``np.take(x, idx, axis)`` for plan-time indices: contiguous runs become raster regions."""
    from walle_core.decompose.builder import strided_regions

    shape = list(x.shape)
    shape[axis] = len(idx)
    out = b.tensor(shape, x.dtype)
    if x.value is not None:
        out.value = np.ascontiguousarray(np.take(x.value, idx, axis=axis))
        return out
    src_st, dst_st = contiguous(x.shape), contiguous(shape)
    sub = list(x.shape)
    sub[axis] = 1
    regions: list[A.Region] = []
    for j, i in enumerate(idx):
        regions += strided_regions(0, int(i) * src_st[axis], src_st, j * dst_st[axis], dst_st, sub)
    b.emit(A.Raster([x], [out], regions=regions))
    return out


@register("Expand")
def expand(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    target = ints(b, ins[1]) or []
    try:
        shape = tuple(np.broadcast_shapes(x.shape, tuple(target)))
    except ValueError:
        raise DecomposeError(f"cannot expand {list(x.shape)} to {target}") from None
    y = b.expand(x, shape)
    return [y if y is not x else b.unary("identity", x)]


@register("Tile")
def tile(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    reps = ints(b, ins[1]) or []
    if len(reps) != len(x.shape):
        raise DecomposeError("Tile repeats must match the rank")
    # (r0, d0, r1, d1, ...) view with zero strides on the repeat axes, then flatten.
    st = contiguous(x.shape)
    shape, strides = [], []
    for r, d, s in zip(reps, x.shape, st, strict=True):
        shape += [r, d]
        strides += [0, s]
    y = b.strided(x, shape, strides)
    return [b.reshape(y, [r * d for r, d in zip(reps, x.shape, strict=True)])]


@register("DepthToSpace")
def depth_to_space(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    n, c, h, w = x.shape
    bs = ctx.attr("blocksize")
    if ctx.attr("mode", "DCR") == "DCR":
        y = b.reshape(x, (n, bs, bs, c // (bs * bs), h, w))
        y = b.transpose(y, (0, 3, 4, 1, 5, 2))
    else:
        y = b.reshape(x, (n, c // (bs * bs), bs, bs, h, w))
        y = b.transpose(y, (0, 1, 4, 2, 5, 3))
    return [b.reshape(y, (n, c // (bs * bs), h * bs, w * bs))]


@register("SpaceToDepth")
def space_to_depth(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    n, c, h, w = x.shape
    bs = ctx.attr("blocksize")
    y = b.reshape(x, (n, c, h // bs, bs, w // bs, bs))
    if ctx.attr("mode", "DCR") == "CRD":
        y = b.transpose(y, (0, 1, 3, 5, 2, 4))
    else:
        y = b.transpose(y, (0, 3, 5, 1, 2, 4))
    return [b.reshape(y, (n, c * bs * bs, h // bs, w // bs))]


@register("Shape")
def shape(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    dims = list(x.shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return [b.const(np.array(dims[slice(start, end)], np.int64))]


@register("Size")
def size(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [b.const(np.array(req(ins[0]).size, np.int64))]


@register("CenterCropPad")
def center_crop_pad(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    target = ints(b, req(ins[1], "shape")) or []
    axes = [normalize_axis(a, rank) for a in (ctx.attr("axes") or range(rank))]
    if len(axes) != len(target):
        raise DecomposeError(f"CenterCropPad shape {target} does not match axes {axes}")
    starts, sizes = [0] * rank, list(x.shape)
    before, after = [0] * rank, [0] * rank
    for a, t in zip(axes, target, strict=True):
        d = x.shape[a]
        if t < d:
            starts[a], sizes[a] = (d - t) // 2, t
        elif t > d:
            before[a] = (t - d) // 2
            after[a] = t - d - before[a]
    y = x
    if sizes != list(x.shape):
        y = b.slice(x, starts, sizes, [1] * rank)
    if any(before) or any(after):
        y = b.pad(y, before, after, 0.0)
    return [y if y is not x else b.unary("identity", x)]
