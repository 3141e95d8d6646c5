"""Vision ops: LRN, Col2Im, NonMaxSuppression.

LRN sums squares over a channel window as shifted slices of a zero-padded tensor. Col2Im is a
scatter-add of every (block offset, block position) column entry into its pixel of the padded
image; the pixel table is plan-time shape arithmetic. NonMaxSuppression sorts scores per (batch,
class), builds the pairwise IoU matrix of the sorted boxes at run time, and unrolls the greedy
selection over the box count (a box is kept when valid and not yet suppressed; it then suppresses
every box overlapping it by more than the threshold). The number of selected boxes is
data-dependent: the planner syncs on it, like NonZero.
"""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, contiguous
from walle_core.decompose.elementwise import req
from walle_core.decompose.index import nonzero_positions, take_along

Ins = list[A.Tensor | None]


def _opt(ins: Ins, i: int) -> A.Tensor | None:
    return ins[i] if len(ins) > i else None


def _ints(b: Builder, t: A.Tensor) -> list[int]:
    return [int(v) for v in np.asarray(b.value(t)).reshape(-1)]


# --------------------------------------------------------------------------- LRN


@register("LRN")
def lrn(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0], "X")
    size = int(ctx.attr("size", 0))
    if size < 1:
        raise DecomposeError("LRN size must be a positive integer")
    alpha = float(ctx.attr("alpha", 1e-4))
    beta = float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    if len(x.shape) < 2:
        raise DecomposeError("LRN needs an input of rank >= 2 (N, C, ...)")
    ct = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    xf = b.cast(x, ct)
    sq = b.binary("mul", xf, xf)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    rank = len(x.shape)
    padded = b.pad(sq, [0, before] + [0] * (rank - 2), [0, after] + [0] * (rank - 2), 0.0)
    total: A.Tensor | None = None
    for j in range(size):
        starts = [0, j] + [0] * (rank - 2)
        part = b.slice(padded, starts, list(x.shape), [1] * rank)
        total = part if total is None else b.binary("add", total, part)
    assert total is not None
    denom = b.binary("add", b.binary("mul", total, b.const(np.array(alpha / size, ct))),
                     b.const(np.array(bias, ct)))
    y = b.binary("div", xf, b.binary("pow", denom, b.const(np.array(beta, ct))))
    return [b.cast(y, x.dtype)]


# --------------------------------------------------------------------------- Col2Im


@register("Col2Im")
def col2im(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0], "input")
    image = _ints(b, req(ins[1], "image_shape"))
    block = _ints(b, req(ins[2], "block_shape"))
    r = len(image)
    if len(block) != r or r < 1 or len(x.shape) != 3:
        raise DecomposeError("Col2Im wants a 3-D input and image/block shapes of one length")
    strides = list(ctx.attr("strides", [1] * r))
    dil = list(ctx.attr("dilations", [1] * r))
    pads = list(ctx.attr("pads", [0] * (2 * r)))
    n, ck, length = x.shape
    k = math.prod(block)
    if k == 0 or ck % k:
        raise DecomposeError(f"Col2Im channel axis {ck} is not a multiple of the block size {k}")
    c = ck // k
    padded = [image[d] + pads[d] + pads[d + r] for d in range(r)]
    counts = [(padded[d] - (dil[d] * (block[d] - 1) + 1)) // strides[d] + 1 for d in range(r)]
    if math.prod(counts) != length or any(v <= 0 for v in counts):
        raise DecomposeError(f"Col2Im input has {length} blocks, the shapes give {counts}")
    # Pixel (in the padded image) of block offset kk at block position ll: ll * stride + kk * dil.
    kk = np.indices(block).reshape(r, k, 1)
    ll = np.indices(counts).reshape(r, 1, length)
    pos = ll * np.array(strides).reshape(r, 1, 1) + kk * np.array(dil).reshape(r, 1, 1)
    pst = np.array(contiguous(padded)).reshape(r, 1, 1)
    rows = np.sum(pos * pst, axis=0).reshape(-1).astype(np.int64)  # (k * L,)
    npix = math.prod(padded)
    cols = b.transpose(b.reshape(x, (n, c, k, length)), (2, 3, 0, 1))  # (k, L, N, C)
    cols = b.reshape(cols, (k * length, n * c))
    zeros = b.const(np.zeros((npix, n * c), x.dtype))
    img = b.scatter_rows(zeros, b.const(rows), cols, npix, n * c, "add")
    img = b.reshape(b.transpose(img, (1, 0)), (n, c, *padded))
    if any(pads):
        img = b.slice(img, [0, 0, *pads[:r]], [n, c, *image], [1] * (r + 2))
    return [img]


# --------------------------------------------------------------------------- NonMaxSuppression


def _corners(b: Builder, boxes: A.Tensor, center: bool) -> tuple[A.Tensor, ...]:
    """(..., 4) boxes -> ymin, xmin, ymax, xmax, each (..., 1)."""
    lead = boxes.shape[:-1]
    rank = len(boxes.shape)

    def col(i: int) -> A.Tensor:
        return b.slice(boxes, [0] * (rank - 1) + [i], [*lead, 1], [1] * rank)

    if center:
        xc, yc, w, h = (col(i) for i in range(4))
        half = b.const(np.array(0.5, boxes.dtype))
        hw, hh = b.binary("mul", w, half), b.binary("mul", h, half)
        return (b.binary("sub", yc, hh), b.binary("sub", xc, hw),
                b.binary("add", yc, hh), b.binary("add", xc, hw))
    y1, x1, y2, x2 = (col(i) for i in range(4))
    return (b.binary("min", y1, y2), b.binary("min", x1, x2),
            b.binary("max", y1, y2), b.binary("max", x1, x2))


@register("NonMaxSuppression")
def non_max_suppression(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    boxes, scores = req(ins[0], "boxes"), req(ins[1], "scores")
    max_t, iou_t, score_t = _opt(ins, 2), _opt(ins, 3), _opt(ins, 4)
    empty = b.const(np.zeros((0, 3), np.int64))
    max_out = _ints(b, max_t)[0] if max_t is not None and max_t.size else 0
    if len(boxes.shape) != 3 or boxes.shape[2] != 4 or len(scores.shape) != 3 \
            or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise DecomposeError(f"NonMaxSuppression shapes {list(boxes.shape)}, {list(scores.shape)}")
    nb, nc, n = scores.shape
    if max_out <= 0 or nb * nc * n == 0:
        return [empty]
    ft = np.dtype(np.float32) if boxes.dtype == np.float16 else boxes.dtype
    bc = nb * nc
    s = b.reshape(b.cast(scores, ft), (bc, n))
    order = b.argsort(s, 1, descending=True)  # (BC, N), stable: ties keep the lower index first
    s_sorted = take_along(b, s, order, 1)
    batch_of = np.repeat(np.arange(nb, dtype=np.int64) * n, nc).reshape(bc, 1)
    box_rows = b.binary("add", order, b.const(batch_of))
    sb = b.reshape(b.gather_rows(b.cast(boxes, ft), box_rows, nb * n, 4), (bc, n, 4))
    y0, x0, y1, x1 = _corners(b, sb, bool(ctx.attr("center_point_box", 0)))  # (BC, N, 1)
    zero = b.const(np.array(0, ft))

    def pair(t: A.Tensor) -> tuple[A.Tensor, A.Tensor]:
        return t, b.reshape(t, (bc, 1, n))  # as (BC, N, 1) rows and (BC, 1, N) columns

    (ya, yb), (xa, xb), (ya1, yb1), (xa1, xb1) = pair(y0), pair(x0), pair(y1), pair(x1)
    ih = b.binary("max", b.binary("sub", b.binary("min", ya1, yb1), b.binary("max", ya, yb)), zero)
    iw = b.binary("max", b.binary("sub", b.binary("min", xa1, xb1), b.binary("max", xa, xb)), zero)
    inter = b.binary("mul", ih, iw)  # (BC, N, N)
    area = b.binary("mul", b.binary("sub", y1, y0), b.binary("sub", x1, x0))
    union = b.binary("sub", b.binary("add", area, b.reshape(area, (bc, 1, n))), inter)
    pos = b.binary("gt", union, zero)
    iou = b.select(pos, b.binary("div", inter, b.select(pos, union, b.const(np.array(1, ft)))), zero)
    thr = b.cast(b.reshape(iou_t, ()), ft) if iou_t is not None and iou_t.size else zero
    overlap = b.binary("gt", iou, thr)
    if score_t is not None and score_t.size:
        valid = b.binary("gt", s_sorted, b.cast(b.reshape(score_t, ()), ft))
    else:
        valid = b.const(np.ones((bc, n), bool))

    suppressed: A.Tensor = b.const(np.zeros((bc, n), bool))
    keeps = []
    for i in range(n):
        vi = b.slice(valid, [0, i], [bc, 1], [1, 1])
        si = b.slice(suppressed, [0, i], [bc, 1], [1, 1])
        ki = b.binary("and", vi, b.unary("not", si))
        keeps.append(ki)
        if i + 1 < n:
            row = b.reshape(b.slice(overlap, [0, i, 0], [bc, 1, n], [1, 1, 1]), (bc, n))
            suppressed = b.binary("or", suppressed, b.binary("and", ki, row))
    keep = b.concat(keeps, 1) if n > 1 else keeps[0]  # (BC, N) in score order
    if max_out < n:
        rank = b.reduce_axis(b.cast(keep, np.int64), 1, "cumsum")
        keep = b.binary("and", keep, b.binary("le", rank, b.const(np.array(max_out, np.int64))))
    sel = nonzero_positions(b, b.reshape(keep, (bc * n,)))
    m = sel.shape[0]
    if m == 0:
        return [empty]
    n64 = b.const(np.array(n, np.int64))
    group = b.binary("div", sel, n64)
    box = b.reshape(b.gather_rows(order, sel, bc * n, 1), (m,))
    c64 = b.const(np.array(nc, np.int64))
    batch = b.binary("div", group, c64)
    cls = b.binary("mod", group, c64)
    cols = [b.reshape(t, (m, 1)) for t in (batch, cls, box)]
    return [b.concat(cols, 1)]
