"""Pooling: 2-D -> Pool2D (1-D via a unit axis); other ranks -> padded strided view + Reduce."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, contiguous
from walle_core.decompose.conv import conv_out, resolve_pads
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def pool_out(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil: bool) -> int:
    out = conv_out(size, k, s, d, p0, p1, ceil)
    if ceil and (out - 1) * s >= size + p0:
        out -= 1  # the last window would start in the end padding only
    return out


def pool(b: Builder, ins: Ins, ctx: NodeContext, fn: str) -> list[A.Tensor]:
    x = req(ins[0])
    nd = len(x.shape) - 2
    if nd < 1:
        raise DecomposeError("pooling needs at least one spatial axis")
    kernel = list(ctx.attr("kernel_shape"))
    strides = ctx.attr("strides") or [1] * nd
    dil = ctx.attr("dilations") or [1] * nd
    pads = resolve_pads(ctx, x.shape[2:], kernel, strides, dil)
    ceil = bool(ctx.attr("ceil_mode", 0))
    if ctx.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        ceil = False
    outs = [pool_out(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nd + i], ceil)
            for i in range(nd)]
    include = bool(ctx.attr("count_include_pad", 0))
    p = int(ctx.attr("p", 2))
    extra: list[A.Tensor] = []
    if fn == "max" and len(ctx.node.outputs) > 1 and ctx.node.outputs[1]:
        order = int(ctx.attr("storage_order", 0))
        extra.append(max_pool_indices(b, x, kernel, strides, pads, dil, outs, order))
    if nd == 1:
        x2 = b.reshape(x, (*x.shape[:2], 1, x.shape[2]))
        y = pool2d(b, x2, fn, (1, kernel[0]), (1, strides[0]), (0, pads[0], 0, pads[1]),
                   (1, dil[0]), include, p, (1, outs[0]))
        return [b.reshape(y, (*x.shape[:2], outs[0])), *extra]
    if nd == 2:
        return [pool2d(b, x, fn, tuple(kernel), tuple(strides), tuple(pads), tuple(dil), include, p,
                       tuple(outs)), *extra]
    return [pool_generic(b, x, fn, kernel, strides, pads, dil, include, p, outs), *extra]


def _windows(b: Builder, x: A.Tensor, kernel: list[int], strides: list[int], pads: list[int],
             dil: list[int], outs: list[int], fill: float) -> tuple[A.Tensor, list[int]]:
    """(N, C, *outs, *kernel) windows of ``x`` padded with ``fill``; also the end pads used
    (ceil mode may read past the declared end pads)."""
    nd = len(kernel)
    spatial = x.shape[2:]
    ends = [max(pads[nd + i], (outs[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1
                - spatial[i] - pads[i]) for i in range(nd)]
    xp = b.pad(x, [0, 0, *pads[:nd]], [0, 0, *ends], fill)
    st = contiguous(xp.shape)
    shape = [*x.shape[:2], *outs, *kernel]
    view_st = st[:2] + [st[2 + i] * strides[i] for i in range(nd)] + [
        st[2 + i] * dil[i] for i in range(nd)]
    return b.strided(xp, shape, view_st), ends


def max_pool_indices(b: Builder, x: A.Tensor, kernel: list[int], strides: list[int],
                     pads: list[int], dil: list[int], outs: list[int], storage_order: int
                     ) -> A.Tensor:
    """MaxPool's Indices output: flat indices into ``x`` (row-major, or column-major over the
    spatial axes with ``storage_order=1``) of each window's first maximum."""
    nd = len(kernel)
    n, c = x.shape[:2]
    spatial = list(x.shape[2:])
    fill = float(np.iinfo(x.dtype).min) if x.dtype.kind in "iu" else -np.inf
    win, ends = _windows(b, x, kernel, strides, pads, dil, outs, fill)
    npos, nk = math.prod(outs), math.prod(kernel)
    arg = b.reduce_axis(b.reshape(win, (n * c, npos, nk)), 2, "argmax")  # (NC, P, 1)
    # Plan-time table: window position p, tap k -> flat spatial index in x (-1: padding).
    coords = np.indices(spatial).reshape(nd, -1)
    if storage_order:
        flat = sum(coords[i] * math.prod(spatial[:i]) for i in range(nd))
    else:
        flat = sum(coords[i] * math.prod(spatial[i + 1:]) for i in range(nd))
    grid = np.pad(np.asarray(flat, np.int64).reshape(spatial), [(pads[i], ends[i]) for i in range(nd)],
                  constant_values=-1)
    gs = [s // grid.itemsize for s in grid.strides]
    table = np.lib.stride_tricks.as_strided(
        grid, [*outs, *kernel], [gs[i] * strides[i] * grid.itemsize for i in range(nd)]
        + [gs[i] * dil[i] * grid.itemsize for i in range(nd)]).reshape(-1)
    pick = b.binary("add", b.reshape(arg, (n * c, npos)),
                    b.const(np.arange(npos, dtype=np.int64) * nk))
    idx = b.reshape(b.gather_rows(b.const(np.ascontiguousarray(table)), pick, npos * nk, 1),
                    (n * c, npos))
    base = b.const((np.arange(n * c, dtype=np.int64) * math.prod(spatial)).reshape(n * c, 1))
    return b.reshape(b.binary("add", idx, base), (n, c, *outs))


def pool2d(b: Builder, x: A.Tensor, fn: str, kernel: tuple[int, ...], strides: tuple[int, ...],
           pads: tuple[int, ...], dil: tuple[int, ...], include: bool, p: int,
           outs: tuple[int, ...]) -> A.Tensor:
    y = b.tensor((*x.shape[:2], *outs), x.dtype)
    b.emit(A.Pool2D([x], [y], fn=fn, kernel=(kernel[0], kernel[1]), strides=(strides[0], strides[1]),
                    pads=(pads[0], pads[1], pads[2], pads[3]), dilations=(dil[0], dil[1]),
                    count_include_pad=include, p=p))
    return y


def pool_generic(b: Builder, x: A.Tensor, fn: str, kernel: list[int], strides: list[int],
                 pads: list[int], dil: list[int], include: bool, p: int, outs: list[int]) -> A.Tensor:
    nd = len(kernel)
    spatial = x.shape[2:]
    # Pad far enough for every window (ceil mode may read past the declared end pads).
    ends = [max(pads[nd + i], (outs[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1
                - spatial[i] - pads[i]) for i in range(nd)]
    fill = -np.inf if fn == "max" else 0.0
    if fn == "max" and x.dtype.kind in "iu":
        fill = float(np.iinfo(x.dtype).min)
    src = b.unary("abs", x) if fn == "lp" else x
    if fn == "lp" and p != 1:
        src = b.binary("pow", src, b.scalar(p, x))
    xp = b.pad(src, [0, 0, *pads[:nd]], [0, 0, *ends], fill)
    st = contiguous(xp.shape)
    shape = [*x.shape[:2], *outs, *kernel]
    view_st = st[:2] + [st[2 + i] * strides[i] for i in range(nd)] + [st[2 + i] * dil[i] for i in range(nd)]
    win = b.reshape(b.strided(xp, shape, view_st), (*x.shape[:2], *outs, math.prod(kernel)))
    red = b.reduce_axis(win, len(win.shape) - 1, "max" if fn == "max" else "sum")
    red = b.reshape(red, (*x.shape[:2], *outs))
    if fn == "max":
        return red
    if fn == "lp":
        return b.binary("pow", red, b.scalar(1.0 / p, x)) if p != 1 else red
    mask = np.pad(np.ones(spatial), [(pads[i], ends[i]) for i in range(nd)])
    if include:
        mask = np.pad(np.ones([spatial[i] + pads[i] + pads[nd + i] for i in range(nd)]),
                      [(0, ends[i] - pads[nd + i]) for i in range(nd)])
    mst = [s // mask.itemsize for s in mask.strides]
    counts = np.lib.stride_tricks.as_strided(
        mask, [*outs, *kernel], [mst[i] * strides[i] * mask.itemsize for i in range(nd)]
        + [mst[i] * dil[i] * mask.itemsize for i in range(nd)]).reshape(*outs, -1).sum(-1)
    return b.binary("div", red, b.const(np.maximum(counts, 1).astype(x.dtype)))


@register("MaxPool")
def max_pool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return pool(b, ins, ctx, "max")


@register("AveragePool")
def avg_pool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return pool(b, ins, ctx, "avg")


@register("LpPool")
def lp_pool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return pool(b, ins, ctx, "lp")


@register("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axes = list(range(2, len(x.shape)))
    op = ctx.node.op_type
    if op == "GlobalMaxPool":
        return [b.reduce(x, axes, "max", True)]
    if op == "GlobalAveragePool":
        s = b.reduce(x, axes, "sum", True)
        return [b.binary("div", s, b.scalar(math.prod(x.shape[2:]), x))]
    p = int(ctx.attr("p", 2))
    s = b.reduce(b.binary("pow", b.unary("abs", x), b.scalar(p, x)), axes, "sum", True)
    return [b.binary("pow", s, b.scalar(1.0 / p, x))]


@register("MaxUnpool")
def max_unpool(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """Scatter the pooled values to their flat indices in a zero tensor."""
    x, idx = req(ins[0]), req(ins[1], "indices")
    nd = len(x.shape) - 2
    kernel = list(ctx.attr("kernel_shape"))
    strides = ctx.attr("strides") or [1] * nd
    pads = ctx.attr("pads") or [0] * 2 * nd
    shape_t = ins[2] if len(ins) > 2 else None
    if shape_t is not None:
        shape = [int(v) for v in np.asarray(b.value(shape_t)).reshape(-1)]
    else:
        shape = [*x.shape[:2]] + [(x.shape[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[nd + i]
                                  for i in range(nd)]
    total = math.prod(shape)
    zeros = b.const(np.zeros((total, 1), x.dtype))
    out = b.scatter_rows(zeros, idx, b.reshape(x, (x.size, 1)), total, 1, "none")
    return [b.reshape(out, shape)]
