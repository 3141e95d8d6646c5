"""Shape, data-movement and reduction TFLite operators.

Ops that only move values (reshape, transpose, concat, slice, pad, gather, ...) copy stored
values when input and output share their quantisation, so an int8 model's data moves stay int8.
Axis-carrying ops run in NCHW when their input already lives there, with their axes remapped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from walle_core import dtypes
from walle_core.frontend.tflite.context import OpContext, maps
from walle_core.frontend.tflite.convert import NATIVE, NCHW, TO_NCHW

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def _layout(c: OpContext, i: int = 0) -> str:
    """NCHW when input ``i`` is rank 4 and already there (and the output stays rank 4)."""
    if c.rank(i) == 4 and c.has_nchw(i) and all(len(c.out_t(j).shape) == 4 for j in range(len(c.op.outputs))):
        return NCHW
    return NATIVE


def _keeps_order(kept: Sequence[int]) -> bool:
    """Whether the native axes ``kept`` appear in NCHW in their native order."""
    order = [a for a in TO_NCHW if a in kept]
    return order == sorted(order)


def _per_axis(values: Sequence[int], layout: str) -> list[int]:
    return [values[a] for a in TO_NCHW] if layout == NCHW else list(values)


def _shape_input(c: OpContext, i: int) -> str:
    v = c.const(i)
    if v is not None:
        return c.ints_init([int(d) for d in v.reshape(-1)])
    return c.one("Cast", [c.x(i)], to=7)


@maps("RESHAPE")
def reshape(c: OpContext) -> None:
    stored = c.same_quant(0)
    if c.has(1) and c.rank(1) >= 1:
        shape = _shape_input(c, 1)
    else:
        new = c.opt("NewShape", [])
        shape = c.ints_init([int(d) for d in new] if new else list(c.out_t().shape))
    c.out(c.one("Reshape", [c.data(0, NATIVE, stored), shape], allowzero=1), stored=stored)


@maps("SQUEEZE")
def squeeze(c: OpContext) -> None:
    stored = c.same_quant(0)
    dims = [int(d) for d in c.opt("SqueezeDims", [])]
    if not dims:
        dims = [a for a, d in enumerate(c.t(0).shape) if d == 1 and a not in c.t(0).dynamic_axes()]
    c.out(c.one("Squeeze", [c.data(0, NATIVE, stored), c.ints_init(dims)]), stored=stored)


@maps("EXPAND_DIMS")
def expand_dims(c: OpContext) -> None:
    stored = c.same_quant(0)
    axis = c.ints(1, "axis")[0]
    axis = axis + c.rank(0) + 1 if axis < 0 else axis
    c.out(c.one("Unsqueeze", [c.data(0, NATIVE, stored), c.ints_init([axis])]), stored=stored)


@maps("TRANSPOSE")
def transpose(c: OpContext) -> None:
    stored = c.same_quant(0)
    perm = c.ints(1, "perm")
    if c.rank(0) == 4 and c.has_nchw(0):
        # Read the NCHW form directly: one transpose instead of a pair.
        composed = [TO_NCHW.index(p) for p in perm]
        c.out(c.one("Transpose", [c.data(0, NCHW, stored)], perm=composed), stored=stored)
        return
    c.out(c.one("Transpose", [c.data(0, NATIVE, stored)], perm=perm), stored=stored)


@maps("CONCATENATION")
def concatenation(c: OpContext) -> None:
    n = len(c.op.inputs)
    layout = c.pick_layout(range(n))
    if int(c.opt("FusedActivationFunction", 0)):
        # TFLite's own kernel refuses this at prepare (only some delegates ignore it).
        raise c.fail("a fused activation on CONCATENATION is not supported (TFLite rejects it too)")
    stored = all(c.same_quant(i) for i in range(n))
    axis = c.nchw_axis(int(c.opt("Axis", 0)), len(c.out_t().shape), layout)
    c.out(c.one("Concat", [c.data(i, layout, stored) for i in range(n)], axis=axis), layout, stored=stored)


def _split(c: OpContext, x_index: int, axis: int, sizes: list[int] | None) -> None:
    layout = _layout(c, x_index)
    stored = all(c.same_quant(x_index, j) for j in range(len(c.op.outputs)))
    a = c.nchw_axis(axis, c.rank(x_index), layout)
    ins = [c.data(x_index, layout, stored)] + ([c.ints_init(sizes)] if sizes is not None else [])
    extra = {} if sizes is not None else {"num_outputs": len(c.op.outputs)}
    outs = c.node("Split", ins, len(c.op.outputs), axis=a, **extra)
    for j, name in enumerate(outs):
        c.out(name, layout, j, stored=stored)


@maps("SPLIT")
def split(c: OpContext) -> None:
    _split(c, 1, c.ints(0, "axis")[0], None)


@maps("SPLIT_V")
def split_v(c: OpContext) -> None:
    axis = c.ints(2, "axis")[0]
    sizes = c.ints(1, "size_splits")
    if -1 in sizes:
        dim = c.t(0).shape[axis]
        if (axis % c.rank(0)) in c.t(0).dynamic_axes():
            raise c.fail("size_splits with -1 along a dynamic axis")
        sizes[sizes.index(-1)] = dim - (sum(sizes) + 1)
    _split(c, 0, axis, sizes)


@maps("SLICE")
def slice_(c: OpContext) -> None:
    begin, size = c.ints(1, "begin"), c.ints(2, "size")
    layout = _layout(c)
    stored = c.same_quant(0)
    end = [INT64_MAX if s < 0 else b + s for b, s in zip(begin, size, strict=True)]
    y = c.one("Slice", [c.data(0, layout, stored), c.ints_init(_per_axis(begin, layout)),
                        c.ints_init(_per_axis(end, layout))])
    c.out(y, layout, stored=stored)


def _dense_slice(c: OpContext, rank: int) -> tuple[list[tuple[int, int, int]], list[int], list[int]]:
    """STRIDED_SLICE's sparse spec (begin/end/strides with masks, possibly shorter than the rank,
    one ellipsis, new axes) as TensorFlow expands it: (start, end, step) for every input axis,
    the input axes removed (shrink) and the output positions of new size-1 axes."""
    begin, end, strides = c.ints(1, "begin"), c.ints(2, "end"), c.ints(3, "strides")
    if not len(begin) == len(end) == len(strides):
        raise c.fail(f"begin, end and strides have {len(begin)}, {len(end)} and {len(strides)} values")
    bm, em = int(c.opt("BeginMask", 0)), int(c.opt("EndMask", 0))
    ellipsis, new_axis, shrink = int(c.opt("EllipsisMask", 0)), int(c.opt("NewAxisMask", 0)), int(c.opt("ShrinkAxisMask", 0))
    if c.opt("Offset", False):
        end = [b + e for b, e in zip(begin, end, strict=True)]
    n = len(begin)
    dots = [i for i in range(n) if ellipsis >> i & 1]
    if len(dots) > 1:
        raise c.fail(f"ellipsis_mask {ellipsis} marks {len(dots)} ellipses")
    new = [i not in dots and bool(new_axis >> i & 1) for i in range(n)]
    consumed = sum(1 for i in range(n) if i not in dots and not new[i])
    if consumed > rank:
        raise c.fail(f"{consumed} sliced axes for an input of rank {rank}")
    full = (0, INT64_MAX, 1)
    spec: list[tuple[int, int, int]] = []
    removed: list[int] = []
    added: list[int] = []
    out_pos = 0
    for i in range(n):
        if i in dots:  # the ellipsis takes every axis the entries after it do not name
            spec += [full] * (rank - consumed)
            out_pos += rank - consumed
            continue
        if new[i]:
            added.append(out_pos)
            out_pos += 1
            continue
        lo, hi, step = begin[i], end[i], strides[i]
        if step == 0:
            raise c.fail(f"stride 0 at entry {i}")
        if shrink >> i & 1:
            hi, step = (INT64_MAX if lo == -1 else lo + 1), 1
            removed.append(len(spec))
        else:
            if bm >> i & 1:
                lo = 0 if step > 0 else INT64_MAX
            if em >> i & 1:
                hi = INT64_MAX if step > 0 else INT64_MIN
            out_pos += 1
        spec.append((lo, hi, step))
    spec += [full] * (rank - len(spec))  # without an ellipsis, the axes after the last entry stay whole
    return spec, removed, added


@maps("STRIDED_SLICE")
def strided_slice(c: OpContext) -> None:
    rank = c.rank(0)
    spec, removed, added = _dense_slice(c, rank)
    layout = _layout(c) if not removed and not added else NATIVE
    stored = c.same_quant(0)
    starts, ends, steps = ([e[k] for e in spec] for k in range(3))
    y = c.one("Slice", [c.data(0, layout, stored), c.ints_init(_per_axis(starts, layout)),
                        c.ints_init(_per_axis(ends, layout)), c.ints_init(list(range(rank))),
                        c.ints_init(_per_axis(steps, layout))])
    if removed:
        y = c.one("Squeeze", [y, c.ints_init(removed)])
    if added:
        y = c.one("Unsqueeze", [y, c.ints_init(added)])
    c.out(y, layout, stored=stored)


def _pads(c: OpContext, layout: str) -> list[int]:
    p = c.const(1)
    if p is None:
        raise c.fail("paddings (input 1) must be a constant")
    p = np.asarray(p, np.int64).reshape(-1, 2)
    before, after = [int(v) for v in p[:, 0]], [int(v) for v in p[:, 1]]
    return _per_axis(before, layout) + _per_axis(after, layout)


@maps("PAD", "PADV2")
def pad(c: OpContext) -> None:
    layout = _layout(c)
    stored = c.same_quant(0)
    ins = [c.data(0, layout, stored), c.ints_init(_pads(c, layout))]
    if c.op.name == "PADV2" and c.has(2):
        ins.append(c.em.value(c.t(2).index, NATIVE, real=not stored))
    else:
        ins.extend(_zero_fill(c, stored))
    c.out(c.one("Pad", ins, mode="constant"), layout, stored=stored)


def _zero_fill(c: OpContext, stored: bool) -> list[str]:
    """Pad's value input for a real 0: none (Pad fills 0), or the zero point of stored int8."""
    if not (stored and c.em.is_quantized(c.t(0).index)):
        return []
    dt = c.t(0).dtype
    assert dt is not None
    return [c.scalar(float(c.em.quant_of(c.t(0).index).zero_point[0]), dt)]


@maps("MIRROR_PAD")
def mirror_pad(c: OpContext) -> None:
    layout = _layout(c)
    stored = c.same_quant(0)
    x = c.data(0, layout, stored)
    pads = _pads(c, layout)
    rank = c.rank(0)
    if int(c.opt("Mode", 0)) == 0:  # REFLECT: the edge is not repeated, as ONNX's reflect
        c.out(c.one("Pad", [x, c.ints_init(pads)], mode="reflect"), layout, stored=stored)
        return
    # SYMMETRIC repeats the edge: per axis, the reversed first / last slices around the input.
    for a in range(rank):
        before, after = pads[a], pads[rank + a]
        parts = []
        if before:
            parts.append(c.one("Slice", [x, c.ints_init([before - 1]), c.ints_init([INT64_MIN]),
                                         c.ints_init([a]), c.ints_init([-1])]))
        parts.append(x)
        if after:
            parts.append(c.one("Slice", [x, c.ints_init([-1]), c.ints_init([-after - 1]),
                                         c.ints_init([a]), c.ints_init([-1])]))
        if len(parts) > 1:
            x = c.one("Concat", parts, axis=a)
    c.out(x, layout, stored=stored)


def _batched_gather(c: OpContext, axis: int, batch: int, stored: bool) -> None:
    """GATHER with batch_dims: params [B, M, A, R] and indices [B, J] give [B, M, J, R]. The
    gathered axis moves next to the batch axes, GatherND (batch_dims) takes one index per entry,
    and the index axes move back behind M."""
    rank, irank = c.rank(0), c.rank(1)
    if not 0 <= batch <= min(axis, irank) or not batch <= axis < rank:
        raise c.fail(f"batch_dims {batch} with axis {axis}, params of rank {rank}, indices of rank {irank}")
    params = c.data(0, NATIVE, stored)
    middle = list(range(batch, axis))
    if middle:
        params = c.one("Transpose", [params], perm=[*range(batch), axis, *middle, *range(axis + 1, rank)])
    idx = c.one("Unsqueeze", [c.one("Cast", [c.stored(1)], to=7), c.ints_init([irank])])
    y = c.one("GatherND", [params, idx], batch_dims=batch)
    if middle:
        j = irank - batch  # index axes, now right after the batch axes
        rest = list(range(batch + j + len(middle), rank - 1 + j))
        y = c.one("Transpose", [y], perm=[*range(batch), *range(batch + j, batch + j + len(middle)),
                                         *range(batch, batch + j), *rest])
    c.out(y, stored=stored)


@maps("GATHER")
def gather(c: OpContext) -> None:
    axis = int(c.opt("Axis", 0))
    stored = c.same_quant(0)
    batch = int(c.opt("BatchDims", 0))
    if batch:
        rank, irank = c.rank(0), c.rank(1)
        _batched_gather(c, axis + rank if axis < 0 else axis, batch + irank if batch < 0 else batch, stored)
        return
    layout = _layout(c) if c.rank(1) == 1 else NATIVE
    a = c.nchw_axis(axis, c.rank(0), layout)
    c.out(c.one("Gather", [c.data(0, layout, stored), c.stored(1)], axis=a), layout, stored=stored)


@maps("GATHER_ND")
def gather_nd(c: OpContext) -> None:
    stored = c.same_quant(0)
    idx = c.one("Cast", [c.stored(1)], to=7)
    c.out(c.one("GatherND", [c.data(0, NATIVE, stored), idx]), stored=stored)


REDUCERS = {"MEAN": "ReduceMean", "SUM": "ReduceSum", "REDUCE_MAX": "ReduceMax",
            "REDUCE_MIN": "ReduceMin", "REDUCE_PROD": "ReduceProd", "REDUCE_ANY": "ReduceMax",
            "REDUCE_ALL": "ReduceMin"}
LOGICAL_REDUCERS = ("REDUCE_ANY", "REDUCE_ALL")


@maps(*REDUCERS)
def reduce(c: OpContext) -> None:
    rank = c.rank(0)
    axes = sorted({a % rank for a in c.ints(1, "axes")}) if rank else []
    keep = bool(c.opt("KeepDims", False))
    kept = [a for a in range(rank) if a not in axes]
    layout = NCHW if rank == 4 and c.has_nchw(0) and (keep or _keeps_order(kept)) else NATIVE
    mapped = sorted(c.nchw_axis(a, rank, layout) for a in axes)
    x = c.x(0, layout)
    if c.op.name in LOGICAL_REDUCERS:  # any / all of booleans: max / min of 0/1 integers
        x = c.one("Cast", [x], to=dtypes.to_onnx(np.dtype(np.int32)))
    y = c.one(REDUCERS[c.op.name], [x, c.ints_init(mapped)], keepdims=int(keep))
    if c.op.name in LOGICAL_REDUCERS:
        y = c.one("Cast", [y], to=dtypes.to_onnx(np.dtype(np.bool_)))
    c.out(y, layout if keep else NATIVE)


@maps("CUMSUM")
def cumsum(c: OpContext) -> None:
    (axis,) = c.ints(1, "axis")
    layout = c.pick_layout([0])
    a = c.nchw_axis(axis, c.rank(0), layout)
    y = c.one("CumSum", [c.x(0, layout), c.ints_init([a])], exclusive=int(bool(c.opt("Exclusive", False))),
              reverse=int(bool(c.opt("Reverse", False))))
    c.out(y, layout)


@maps("REVERSE_V2")
def reverse_v2(c: OpContext) -> None:
    rank = c.rank(0)
    axes = sorted({a % rank for a in c.ints(1, "axes")})
    layout = _layout(c)
    stored = c.same_quant(0)
    mapped = [c.nchw_axis(a, rank, layout) for a in axes]
    big = INT64_MAX
    y = c.one("Slice", [c.data(0, layout, stored), c.ints_init([-1] * len(axes)), c.ints_init([-big] * len(axes)),
                        c.ints_init(mapped), c.ints_init([-1] * len(axes))])
    c.out(y, layout, stored=stored)


@maps("RANGE")
def range_(c: OpContext) -> None:
    c.out(c.one("Range", [c.one("Reshape", [c.stored(i), c.ints_init([])]) for i in range(3)]), stored=True)


@maps("ONE_HOT")
def one_hot(c: OpContext) -> None:
    values = c.one("Concat", [c.one("Reshape", [c.stored(i), c.ints_init([1])]) for i in (3, 2)], axis=0)
    y = c.one("OneHot", [c.stored(0), c.one("Reshape", [c.stored(1), c.ints_init([])]), values],
              axis=int(c.opt("Axis", -1)))
    c.out(y, stored=True)


SEGMENT_REDUCTIONS = {"SEGMENT_SUM": "add", "UNSORTED_SEGMENT_SUM": "add", "UNSORTED_SEGMENT_PROD": "mul",
                      "UNSORTED_SEGMENT_MAX": "max", "UNSORTED_SEGMENT_MIN": "min"}


@maps(*SEGMENT_REDUCTIONS)
def segment_reduce(c: OpContext) -> None:
    """Rows of the data reduced into their segment's row: ScatterND with the reduction over a
    tensor holding its identity (TFLite's empty segments: 0, 1, the lowest or highest value)."""
    reduction = SEGMENT_REDUCTIONS[c.op.name]
    if c.op.name == "SEGMENT_SUM":
        segments = max(c.ints(1, "segment_ids"), default=-1) + 1
    else:
        (segments,) = c.ints(2, "num_segments")
    data, out = c.t(0), c.out_t().dtype
    if out is None or data.dtype != out:
        raise c.fail(f"segment reduction of {data.type_name} into {c.out_t().type_name}")
    info = np.finfo(out) if out.kind == "f" else np.iinfo(out)
    identity = {"add": 0, "mul": 1, "max": info.min, "min": info.max}[reduction]
    rows = len(c.t(1).shape)
    shape = c.one("Concat", [c.ints_init([segments]),
                             c.one("Slice", [c.one("Shape", [c.x(0)]), c.ints_init([rows]), c.ints_init([INT64_MAX])])],
                  axis=0)
    base = c.one("ConstantOfShape", [shape], value=np.full(1, identity, out))
    idx = c.one("Unsqueeze", [c.one("Cast", [c.stored(1)], to=7), c.ints_init([rows])])
    c.out(c.one("ScatterND", [base, idx, c.x(0)], reduction=reduction))


@maps("WHERE")
def where(c: OpContext) -> None:
    """The coordinates of the true elements, one row each (ONNX NonZero gives one column each)."""
    if len(c.op.inputs) != 1:
        raise c.fail("WHERE with x and y (use SELECT_V2)")
    cond = c.stored(0)
    if c.t(0).dtype != np.bool_:
        cond = c.one("Cast", [cond], to=dtypes.to_onnx(np.dtype(np.bool_)))
    y = c.one("Transpose", [c.one("NonZero", [cond])], perm=[1, 0])
    out = c.out_t().dtype
    if out is not None and out != np.int64:
        y = c.one("Cast", [y], to=dtypes.to_onnx(out))
    c.out(y, stored=True)


@maps("SCATTER_ND")
def scatter_nd(c: OpContext) -> None:
    """Updates summed into zeros of the given shape (TFLite adds duplicate indices)."""
    shape = c.one("Cast", [c.stored(2)], to=7)
    out = c.out_t().dtype
    assert out is not None
    zeros = c.one("ConstantOfShape", [shape], value=np.zeros(1, out))
    idx = c.one("Cast", [c.stored(0)], to=7)
    c.out(c.one("ScatterND", [zeros, idx, c.stored(1)], reduction="add"), stored=True)


@maps("ARG_MAX", "ARG_MIN")
def arg_max(c: OpContext) -> None:
    rank = c.rank(0)
    axis = c.ints(1, "axis")[0] % rank
    layout = NCHW if rank == 4 and c.has_nchw(0) and _keeps_order([a for a in range(4) if a != axis]) else NATIVE
    op = "ArgMax" if c.op.name == "ARG_MAX" else "ArgMin"
    c.out(_as_out_type(c, c.one(op, [c.x(0, layout)], axis=c.nchw_axis(axis, rank, layout), keepdims=0)),
          stored=True)


@maps("SHAPE")
def shape(c: OpContext) -> None:
    if c.rank(0) == 4 and c.has_nchw(0):
        s = c.one("Gather", [c.one("Shape", [c.stored(0, NCHW)]), c.ints_init(list(TO_NCHW.index(a) for a in range(4)))],
                  axis=0)
    else:
        s = c.one("Shape", [c.stored(0)])
    c.out(_as_out_type(c, s), stored=True)


def _as_out_type(c: OpContext, y: str, j: int = 0) -> str:
    """An int64 index result in output ``j``'s integer type (int32 unless the model asks)."""
    out = c.out_t(j).dtype
    return y if out is None or out == np.int64 else c.one("Cast", [y], to=dtypes.to_onnx(out))


@maps("PACK")
def pack(c: OpContext) -> None:
    n = len(c.op.inputs)
    stored = all(c.same_quant(i) for i in range(n))
    rank = len(c.out_t().shape)
    axis = int(c.opt("Axis", 0)) % rank
    parts = [c.one("Unsqueeze", [c.data(i, NATIVE, stored), c.ints_init([axis])]) for i in range(n)]
    c.out(c.one("Concat", parts, axis=axis), stored=stored)


@maps("UNPACK")
def unpack(c: OpContext) -> None:
    n = len(c.op.outputs)
    stored = all(c.same_quant(0, j) for j in range(n))
    axis = int(c.opt("Axis", 0)) % c.rank(0)
    parts = c.node("Split", [c.data(0, NATIVE, stored)], n, axis=axis, num_outputs=n)
    for j, p in enumerate(parts):
        c.out(c.one("Squeeze", [p, c.ints_init([axis])]), j=j, stored=stored)


@maps("TILE")
def tile(c: OpContext) -> None:
    stored = c.same_quant(0)
    c.out(c.one("Tile", [c.data(0, NATIVE, stored), _shape_input(c, 1)]), stored=stored)


@maps("BROADCAST_TO")
def broadcast_to(c: OpContext) -> None:
    stored = c.same_quant(0)
    c.out(c.one("Expand", [c.data(0, NATIVE, stored), _shape_input(c, 1)]), stored=stored)


def _static_nhwc(c: OpContext, i: int) -> list[int]:
    t = c.t(i)
    if len(t.shape) != 4 or t.dynamic_axes():
        raise c.fail(f"needs a static 4-D input, got {list(t.shape)} (dynamic axes {t.dynamic_axes()})")
    return list(t.shape)


@maps("SPACE_TO_BATCH_ND")
def space_to_batch_nd(c: OpContext) -> None:
    """Pad H and W, cut them into blocks, move the block offsets in front of the batch."""
    n, h, w, ch = _static_nhwc(c, 0)
    bh, bw = c.ints(1, "block_shape")
    p = c.ints(2, "paddings")
    stored = c.same_quant(0)
    x = c.data(0, NATIVE, stored)
    if any(p):
        x = c.one("Pad", [x, c.ints_init([0, p[0], p[2], 0, 0, p[1], p[3], 0]), *_zero_fill(c, stored)])
    hp, wp = h + p[0] + p[1], w + p[2] + p[3]
    if hp % bh or wp % bw:
        raise c.fail(f"padded size {hp}x{wp} does not split into {bh}x{bw} blocks")
    x = c.one("Reshape", [x, c.ints_init([n, hp // bh, bh, wp // bw, bw, ch])])
    x = c.one("Transpose", [x], perm=[2, 4, 0, 1, 3, 5])
    c.out(c.one("Reshape", [x, c.ints_init([bh * bw * n, hp // bh, wp // bw, ch])]), stored=stored)


@maps("BATCH_TO_SPACE_ND")
def batch_to_space_nd(c: OpContext) -> None:
    """The inverse: block offsets from the batch back into H and W, then the crops."""
    b, h, w, ch = _static_nhwc(c, 0)
    bh, bw = c.ints(1, "block_shape")
    crops = c.ints(2, "crops")
    if b % (bh * bw):
        raise c.fail(f"batch {b} does not split into {bh}x{bw} blocks")
    stored = c.same_quant(0)
    x = c.one("Reshape", [c.data(0, NATIVE, stored), c.ints_init([bh, bw, b // (bh * bw), h, w, ch])])
    x = c.one("Transpose", [x], perm=[2, 3, 0, 4, 1, 5])
    x = c.one("Reshape", [x, c.ints_init([b // (bh * bw), h * bh, w * bw, ch])])
    if any(crops):
        x = c.one("Slice", [x, c.ints_init([crops[0], crops[2]]),
                            c.ints_init([h * bh - crops[1], w * bw - crops[3]]), c.ints_init([1, 2])])
    c.out(x, stored=stored)


@maps("EMBEDDING_LOOKUP")
def embedding_lookup(c: OpContext) -> None:
    # inputs: (ids, table); rows of the table by id
    stored = c.same_quant(1)
    c.out(c.one("Gather", [c.data(1, NATIVE, stored), c.stored(0)], axis=0), stored=stored)


@maps("FILL")
def fill(c: OpContext) -> None:
    c.out(c.one("Expand", [c.stored(1), _shape_input(c, 0)]), stored=True)


@maps("ZEROS_LIKE")
def zeros_like(c: OpContext) -> None:
    dt = c.t(0).dtype
    assert dt is not None
    c.out(c.one("Expand", [c.scalar(0.0, dt), c.one("Shape", [c.stored(0)])]), stored=True)


@maps("TOPK_V2")
def topk_v2(c: OpContext) -> None:
    stored = c.same_quant(0)
    values, indices = c.node("TopK", [c.data(0, NATIVE, stored), c.ints_init(c.ints(1, "k")[:1])], 2,
                             axis=-1, largest=1, sorted=1)
    c.out(values, j=0, stored=stored)
    c.out(_as_out_type(c, indices, 1), j=1, stored=True)
