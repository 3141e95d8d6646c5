"""Index-driven ops -> GatherScatter / Sort, with index arithmetic as Binary ops."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core import dtypes
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, contiguous, normalize_axis
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def take(b: Builder, data: A.Tensor, idx: A.Tensor, axis: int) -> A.Tensor:
    """``np.take(data, idx, axis)`` with negative indices, as a row gather."""
    axis = normalize_axis(axis, len(data.shape))
    outer = math.prod(data.shape[:axis])
    n = data.shape[axis]
    inner = math.prod(data.shape[axis + 1 :])
    out_shape = (*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])
    if outer == 1:
        rows = b.gather_rows(data, idx, n, inner)
        return b.reshape(rows, out_shape)
    # Gather (outer, n, inner) rows as one flat row index: o * n + idx.
    i64 = b.cast(idx, np.int64)
    i64 = b.select(b.binary("lt", i64, b.scalar(0, i64)), b.binary("add", i64, b.scalar(n, i64)), i64)
    flat = b.reshape(i64, (1, idx.size))
    base = b.const((np.arange(outer, dtype=np.int64) * n).reshape(outer, 1))
    rows = b.gather_rows(data, b.binary("add", flat, base), outer * n, inner)
    return b.reshape(rows, out_shape)


@register("Gather")
def gather(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [take(b, req(ins[0]), req(ins[1], "indices"), int(ctx.attr("axis", 0)))]


# --------------------------------------------------------------------------- index arithmetic


def i64(b: Builder, t: A.Tensor) -> A.Tensor:
    return b.cast(t, np.int64)


def wrap_negative(b: Builder, idx: A.Tensor, dim: int | A.Tensor) -> A.Tensor:
    """``idx + dim`` where ``idx < 0`` (int64); ``dim`` may broadcast over ``idx``."""
    idx = i64(b, idx)
    d = dim if isinstance(dim, A.Tensor) else b.const(np.array(dim, np.int64))
    return b.select(b.binary("lt", idx, b.scalar(0, idx)), b.binary("add", idx, d), idx)


def along_axis_rows(b: Builder, shape: tuple[int, ...], idx: A.Tensor, axis: int) -> A.Tensor:
    """Flat element offsets into a C-contiguous tensor of ``shape`` for every position of
    ``idx`` (same rank), where ``idx`` replaces the coordinate on ``axis``."""
    strides = contiguous(shape)
    coords = np.indices(idx.shape, dtype=np.int64) if idx.size else np.zeros((len(shape), *idx.shape), np.int64)
    base = sum((coords[d] * strides[d] for d in range(len(shape)) if d != axis),
               np.zeros(idx.shape, np.int64))
    local = wrap_negative(b, idx, shape[axis])
    if strides[axis] != 1:
        local = b.binary("mul", local, b.const(np.array(strides[axis], np.int64)))
    return b.binary("add", local, b.const(np.asarray(base, np.int64)))


@register("GatherElements")
def gather_elements(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    data, idx = req(ins[0]), req(ins[1], "indices")
    return [gather_elements_along(b, data, idx, int(ctx.attr("axis", 0)))]


def gather_elements_along(b: Builder, data: A.Tensor, idx: A.Tensor, axis: int) -> A.Tensor:
    """ONNX GatherElements (negative indices wrap)."""
    axis = normalize_axis(axis, len(data.shape))
    if len(idx.shape) != len(data.shape):
        raise DecomposeError("GatherElements indices must have the rank of data")
    if idx.size == 0:
        return b.const(np.zeros(idx.shape, data.dtype))
    flat = along_axis_rows(b, data.shape, idx, axis)
    rows = b.gather_rows(data, flat, data.size, 1)
    return b.reshape(rows, idx.shape)


def scatter_elements_impl(
    b: Builder, data: A.Tensor, idx: A.Tensor, upd: A.Tensor, axis: int, reduction: str
) -> A.Tensor:
    axis = normalize_axis(axis, len(data.shape))
    if idx.shape != upd.shape or len(idx.shape) != len(data.shape):
        raise DecomposeError("ScatterElements indices and updates must match, with data's rank")
    if idx.size == 0:
        return b.unary("identity", data)
    flat = along_axis_rows(b, data.shape, idx, axis)
    return b.scatter_rows(data, flat, b.reshape(upd, (upd.size, 1)), data.size, 1, reduction)


@register("ScatterElements", "Scatter")
def scatter_elements(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    data, idx, upd = req(ins[0]), req(ins[1], "indices"), req(ins[2], "updates")
    reduction = str(ctx.attr("reduction", "none"))
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise ctx.unsupported(f"reduction {reduction!r}")
    return [scatter_elements_impl(b, data, idx, upd, int(ctx.attr("axis", 0)), reduction)]


def nd_rows(b: Builder, lead: tuple[int, ...], idx: A.Tensor) -> A.Tensor:
    """Flat row numbers over the leading dims ``lead`` from index tuples ``idx[..., k]``."""
    k = idx.shape[-1]
    dims = b.const(np.array(lead[:k], np.int64))
    local = wrap_negative(b, idx, dims)
    strides = b.const(np.array(contiguous(lead[:k]), np.int64))
    return b.reduce(b.binary("mul", local, strides), [len(idx.shape) - 1], "sum", False)


@register("GatherND")
def gather_nd(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    data, idx = req(ins[0]), req(ins[1], "indices")
    bd = int(ctx.attr("batch_dims", 0))
    k = idx.shape[-1]
    if k + bd > len(data.shape):
        raise DecomposeError("GatherND index tuples are longer than data's rank")
    out_shape = (*idx.shape[:-1], *data.shape[bd + k :])
    if math.prod(idx.shape[:-1]) == 0:
        return [b.const(np.zeros(out_shape, data.dtype))]
    block = math.prod(data.shape[bd + k :])
    if k == 0:
        local: A.Tensor = b.const(np.zeros(idx.shape[:-1], np.int64))
    else:
        local = nd_rows(b, data.shape[bd : bd + k], idx)
    if bd:
        nb = math.prod(data.shape[bd : bd + k])
        batch = np.indices(idx.shape[:bd], dtype=np.int64).reshape(bd, -1)
        bflat = np.ravel_multi_index(tuple(batch), idx.shape[:bd]).reshape(
            idx.shape[:bd] + (1,) * (len(idx.shape) - 1 - bd))
        local = b.binary("add", local, b.const(np.asarray(bflat * nb, np.int64)))
    rows = b.gather_rows(data, local, data.size // max(block, 1), block)
    return [b.reshape(rows, out_shape)]


@register("ScatterND")
def scatter_nd(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    data, idx, upd = req(ins[0]), req(ins[1], "indices"), req(ins[2], "updates")
    reduction = str(ctx.attr("reduction", "none"))
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise ctx.unsupported(f"reduction {reduction!r}")
    k = idx.shape[-1]
    block = math.prod(data.shape[k:])
    n = math.prod(idx.shape[:-1])
    if n == 0:
        return [b.unary("identity", data)]
    rows = nd_rows(b, data.shape, idx)
    upd2 = b.reshape(upd, (n, block))
    return [b.scatter_rows(data, rows, upd2, data.size // max(block, 1), block, reduction)]


# --------------------------------------------------------------------------- masks and one-hot


@register("Trilu")
def trilu(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    k = 0
    if len(ins) > 1 and ins[1] is not None:
        k = int(np.asarray(b.value(ins[1])).reshape(-1)[0])
    if len(x.shape) < 2:
        raise DecomposeError("Trilu needs rank >= 2")
    n, m = x.shape[-2:]
    diff = np.arange(m)[None, :] - np.arange(n)[:, None]
    keep = diff >= k if ctx.attr("upper", 1) else diff <= k
    if x.size == 0:
        return [b.unary("identity", x)]
    return [b.select(b.const(keep), x, b.scalar(0, x))]


@register("EyeLike")
def eye_like(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    code = ctx.attr("dtype")
    dtype = dtypes.from_onnx(int(code)) if code is not None else x.dtype
    if len(x.shape) != 2:
        raise DecomposeError("EyeLike needs a 2-D input")
    return [b.const(np.eye(x.shape[0], x.shape[1], k=int(ctx.attr("k", 0)), dtype=dtype))]


@register("OneHot")
def one_hot(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    idx, depth_t, values = req(ins[0]), req(ins[1], "depth"), req(ins[2], "values")
    depth = int(np.asarray(b.value(depth_t)).reshape(-1)[0])
    rank = len(idx.shape) + 1
    axis = normalize_axis(int(ctx.attr("axis", -1)), rank)
    if idx.dtype.kind == "f":
        idx = b.unary("floor", idx)  # fractional indices truncate toward the class below
    ix = wrap_negative(b, idx, depth)
    ix = b.reshape(ix, (*idx.shape[:axis], 1, *idx.shape[axis:]))
    classes = np.arange(depth, dtype=np.int64).reshape((depth,) + (1,) * (rank - axis - 1))
    hit = b.binary("eq", ix, b.const(classes))
    vals = b.reshape(values, (2,))
    off = b.reshape(b.slice(vals, [0], [1], [1]), ())
    on = b.reshape(b.slice(vals, [1], [1], [1]), ())
    return [b.select(hit, on, off)]


# --------------------------------------------------------------------------- sorting


def take_along(b: Builder, x: A.Tensor, idx: A.Tensor, axis: int) -> A.Tensor:
    """``np.take_along_axis`` with non-negative int64 ``idx``."""
    flat = along_axis_rows(b, x.shape, idx, axis)
    return b.reshape(b.gather_rows(x, flat, x.size, 1), idx.shape)


@register("TopK")
def topk(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    axis = normalize_axis(int(ctx.attr("axis", -1)), len(x.shape))
    if ctx.opset < 10:
        k = int(ctx.attr("k"))
    else:
        k = int(np.asarray(b.value(req(ins[1], "k"))).reshape(-1)[0])
    if not 0 <= k <= x.shape[axis]:
        raise DecomposeError(f"TopK k={k} is out of range for axis of size {x.shape[axis]}")
    shape = list(x.shape)
    shape[axis] = k
    if math.prod(shape) == 0:
        return [b.const(np.zeros(shape, x.dtype)), b.const(np.zeros(shape, np.int64))]
    order = b.argsort(x, axis, descending=bool(ctx.attr("largest", 1)))
    order = b.slice(order, [0] * len(shape), shape, [1] * len(shape))
    return [take_along(b, x, order, axis), order]


def nonzero_positions(b: Builder, flag: A.Tensor) -> A.Tensor:
    """Flat positions (int64, ascending) where the 1-D bool ``flag`` is set; syncs on the count."""
    count = int(np.asarray(b.value(b.reduce(b.cast(flag, np.int64), [0], "sum", False))))
    if count == 0:
        return b.const(np.zeros((0,), np.int64))
    order = b.argsort(b.unary("not", flag), 0, descending=False)
    return b.slice(order, [0], [count], [1])


@register("NonZero")
def nonzero(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    if x.size == 0:
        return [b.const(np.zeros((rank, 0), np.int64))]
    flag = b.unary("not", b.binary("eq", x, b.scalar(0, x)))
    pos = nonzero_positions(b, b.reshape(flag, (x.size,)))
    if rank == 0:
        return [b.const(np.zeros((0, pos.shape[0]), np.int64))]
    n = pos.shape[0]
    if n == 0:
        return [b.const(np.zeros((rank, 0), np.int64))]
    st = contiguous(x.shape)
    rows = []
    for d in range(rank):
        c = b.binary("div", pos, b.const(np.array(st[d], np.int64)))
        if d:
            c = b.binary("mod", c, b.const(np.array(x.shape[d], np.int64)))
        rows.append(b.reshape(c, (1, n)))
    return [b.concat(rows, 0) if rank > 1 else rows[0]]


@register("Compress")
def compress(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, cond = req(ins[0]), req(ins[1], "condition")
    axis_attr = ctx.attr("axis")
    if axis_attr is None:
        x = b.reshape(x, (x.size,))
        axis = 0
    else:
        axis = normalize_axis(int(axis_attr), len(x.shape))
    n = x.shape[axis]
    c = b.reshape(cond, (cond.size,))
    if c.size > n:
        c = b.slice(c, [0], [n], [1])
    pos = nonzero_positions(b, b.cast(c, np.bool_))
    if pos.shape[0] == 0:
        shape = list(x.shape)
        shape[axis] = 0
        return [b.const(np.zeros(shape, x.dtype))]
    return [take(b, x, pos, axis)]


@register("ReverseSequence")
def reverse_sequence(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, lens = req(ins[0]), req(ins[1], "sequence_lens")
    t_axis = int(ctx.attr("time_axis", 0))
    b_axis = int(ctx.attr("batch_axis", 1))
    rank = len(x.shape)
    t = np.arange(x.shape[t_axis], dtype=np.int64)
    tshape = [1] * rank
    tshape[t_axis] = x.shape[t_axis]
    lshape = [1] * rank
    lshape[b_axis] = x.shape[b_axis]
    tt = b.const(t.reshape(tshape))
    ll = b.reshape(i64(b, lens), lshape)
    rev = b.binary("sub", b.binary("sub", ll, b.const(np.array(1, np.int64))), tt)
    src = b.select(b.binary("lt", tt, ll), rev, tt)
    src = b.expand(src, x.shape)
    return [take_along(b, x, src, t_axis)]


@register("TensorScatter")
def tensor_scatter(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    cache, upd = req(ins[0], "past_cache"), req(ins[1], "update")
    wi = ins[2] if len(ins) > 2 else None
    rank = len(cache.shape)
    axis = normalize_axis(int(ctx.attr("axis", -2)), rank)
    mode = str(ctx.attr("mode", "linear"))
    if mode not in ("linear", "circular"):
        raise ctx.unsupported(f"mode {mode!r}")
    if axis == 0:
        raise DecomposeError("TensorScatter axis cannot be the batch axis")
    m, s = cache.shape[axis], upd.shape[axis]
    prefix = math.prod(cache.shape[:axis])
    per_batch = prefix // cache.shape[0]
    block = math.prod(cache.shape[axis + 1 :])
    if prefix * s == 0:
        return [b.unary("identity", cache)]
    if wi is None:
        start: A.Tensor = b.const(np.zeros((prefix, 1), np.int64))
    else:
        w = b.reshape(i64(b, wi), (cache.shape[0], 1, 1))
        start = b.reshape(b.expand(w, (cache.shape[0], per_batch, 1)), (prefix, 1))
    pos = b.binary("add", start, b.const(np.arange(s, dtype=np.int64).reshape(1, s)))
    if mode == "circular":
        pos = b.binary("mod", pos, b.const(np.array(m, np.int64)))
    base = b.const((np.arange(prefix, dtype=np.int64) * m).reshape(prefix, 1))
    rows = b.binary("add", pos, base)
    return [b.scatter_rows(cache, rows, b.reshape(upd, (prefix * s, block)), prefix * m, block,
                           "none")]


@register("Unique")
def unique(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """Sort rows lexicographically (stable argsorts from the last column), flag where a row
    differs from its predecessor, sync on the number of groups, then scatter per group."""
    x = req(ins[0])
    axis_attr = ctx.attr("axis")
    if axis_attr is None:
        rest: tuple[int, ...] = ()
        xr = b.reshape(x, (x.size, 1))
        axis = 0
    else:
        axis = normalize_axis(int(axis_attr), len(x.shape))
        moved = b.transpose(x, [axis] + [i for i in range(len(x.shape)) if i != axis])
        rest = moved.shape[1:]
        xr = b.reshape(moved, (moved.shape[0], math.prod(rest)))
    n, k = xr.shape
    if n == 0:
        raise ctx.unsupported("Unique of an empty tensor")
    perm: A.Tensor = b.const(np.arange(n, dtype=np.int64))
    for c in reversed(range(k)):
        col = b.reshape(b.slice(xr, [0, c], [n, 1], [1, 1]), (n,))
        key = b.reshape(b.gather_rows(col, perm, n, 1), (n,))
        perm = b.reshape(b.gather_rows(perm, b.argsort(key, 0, False), n, 1), (n,))
    sx = b.gather_rows(xr, perm, n, k)  # (n, k) sorted rows
    one = b.const(np.ones((1,), np.int64))
    if n > 1:
        a_ = b.slice(sx, [1, 0], [n - 1, k], [1, 1])
        p_ = b.slice(sx, [0, 0], [n - 1, k], [1, 1])
        ne = b.cast(b.unary("not", b.binary("eq", a_, p_)), np.int64)
        flag = b.concat([one, b.reshape(b.reduce(ne, [1], "max", False), (n - 1,))], 0)
    else:
        flag = one
    gid = b.binary("sub", b.reduce_axis(flag, 0, "cumsum"), b.const(np.array(1, np.int64)))
    u = int(np.asarray(b.value(b.reduce(flag, [0], "sum", False))))
    ys = b.scatter_rows(b.const(np.zeros((u, k), x.dtype)), gid, sx, u, k, "none")
    first = b.scatter_rows(b.const(np.full((u,), n, np.int64)), gid, perm, u, 1, "min")
    counts = b.scatter_rows(b.const(np.zeros((u,), np.int64)), gid,
                            b.const(np.ones((n,), np.int64)), u, 1, "add")
    inverse = b.scatter_rows(b.const(np.zeros((n,), np.int64)), perm, gid, n, 1, "none")
    if not ctx.attr("sorted", 1):
        order = b.argsort(first, 0, False)
        ys = b.gather_rows(ys, order, u, k)
        first = b.reshape(b.gather_rows(first, order, u, 1), (u,))
        counts = b.reshape(b.gather_rows(counts, order, u, 1), (u,))
        rank = b.scatter_rows(b.const(np.zeros((u,), np.int64)), order,
                              b.const(np.arange(u, dtype=np.int64)), u, 1, "none")
        inverse = b.reshape(b.gather_rows(rank, inverse, u, 1), (n,))
    if axis_attr is None:
        y = b.reshape(ys, (u,))
    else:
        y = b.reshape(ys, (u, *rest))
        back = [*range(1, axis + 1), 0, *range(axis + 1, len(x.shape))]
        y = b.transpose(y, [back.index(i) for i in range(len(back))]) if axis else y
    return [y, first, inverse, counts]
