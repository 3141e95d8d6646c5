"""The toolkit every decomposition uses to emit atomic ops with concrete shapes.

A :class:`Builder` collects ops in order. Ops whose inputs are all plan-time constants are
evaluated at once (constant folding) through the ``fold`` callback, by default the engine's own
numpy interpreter (no plugin needed), so shape arithmetic (``Shape -> Gather -> Concat ->
Reshape``) never reaches a backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.errors import WalleError
from walle_core.interpreter import fold as fold_with_numpy
from walle_core.plan.memory import check_bytes, describe, tensor_bytes

FoldFn = Callable[[A.Op], None]  # evaluates a constant op, filling its outputs' ``value``


class NeedValue(Exception):  # control flow, not an error
    """A decomposition needs a tensor's run-time value to know shapes: the planner syncs."""

    def __init__(self, tensors: Sequence[A.Tensor]) -> None:
        super().__init__(f"need values of {list(tensors)}")
        self.tensors = list(tensors)


class DecomposeError(WalleError):
    """Inputs are inconsistent with the op (bad shapes, out-of-range attributes)."""


def _merge_dims(
    sizes: list[int], sstr: list[int], dstr: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """Drop size-1 axes and fuse neighbours that are contiguous in both source and destination."""
    out_s: list[int] = []
    out_a: list[int] = []
    out_b: list[int] = []
    for n, a, b in zip(sizes, sstr, dstr, strict=True):
        if n == 1:
            continue
        if out_s and out_a[-1] == a * n and out_b[-1] == b * n:
            out_s[-1] *= n
            out_a[-1] = a
            out_b[-1] = b
        else:
            out_s.append(n)
            out_a.append(a)
            out_b.append(b)
    return out_s, out_a, out_b


def strided_regions(
    src: int, src_offset: int, src_strides: Sequence[int], dst_offset: int,
    dst_strides: Sequence[int], sizes: Sequence[int],
) -> list[A.Region]:
    """Regions for an N-D strided copy: axes beyond three become a loop of 3-D regions."""
    if any(s == 0 for s in sizes):
        return []
    n, a, b = _merge_dims(list(sizes), list(src_strides), list(dst_strides))
    while len(n) < 3:
        n.insert(0, 1)
        a.insert(0, 0)
        b.insert(0, 0)
    outer_n, inner_n = n[:-3], n[-3:]
    regions = []
    for idx in np.ndindex(*outer_n) if outer_n else [()]:
        so = src_offset + sum(i * s for i, s in zip(idx, a, strict=False))
        do = dst_offset + sum(i * s for i, s in zip(idx, b, strict=False))
        regions.append(A.Region(src, so, tuple(a[-3:]), do, tuple(b[-3:]), tuple(inner_n)))  # type: ignore[arg-type]
    return regions


def contiguous(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return list(reversed(strides))


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a tensor of ``shape`` read as ``out`` under numpy broadcasting."""
    pad = (1,) * (len(out) - len(shape)) + shape
    base = contiguous(pad)
    return tuple(0 if d == 1 and o != 1 else s for d, o, s in zip(pad, out, base, strict=True))


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise DecomposeError(f"{what} {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


# A constant op whose result is this much and more than twice its inputs runs at run time instead
# of being folded: a broadcast (ConstantOfShape, Expand, Tile of a constant) would otherwise be
# materialised while planning, by ``walle inspect`` too, for a value a Raster writes in one pass.
FOLD_EXPANSION_BYTES = 16 << 20


class Builder:
    def __init__(self, fold: FoldFn = fold_with_numpy, known: dict[int, np.ndarray] | None = None) -> None:
        self.ops: list[A.Op] = []
        self._fold = fold
        # Run-time values observed at sync points, by tensor id. Ids are handed out in creation
        # order, so lowering the same graph again reproduces them (see plan.lower).
        self.known = known or {}
        self._next_id = 0
        self.folded_bytes = 0  # constants this builder computed (checked against the memory limit)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ------------------------------------------------------------------ tensors and values

    def tensor(self, shape: Sequence[int], dtype: np.dtype | type) -> A.Tensor:
        t = A.Tensor(tuple(int(d) for d in shape), np.dtype(dtype), id=self._id())
        check_bytes(tensor_bytes(t.shape, t.dtype), f"a {describe(t)} tensor")
        return t

    def _fold_ok(self, inputs: Sequence[A.Tensor], outputs: Sequence[A.Tensor]) -> bool:
        """Whether to compute ``outputs`` from the constant ``inputs`` now (see
        FOLD_EXPANSION_BYTES); when so, the folded total must fit the memory limit."""
        out_bytes = sum(tensor_bytes(t.shape, t.dtype) for t in outputs)
        in_bytes = sum(tensor_bytes(t.shape, t.dtype) for t in inputs)
        if out_bytes > FOLD_EXPANSION_BYTES and out_bytes > 2 * in_bytes:
            return False
        shapes = ", ".join(describe(t) for t in outputs)
        check_bytes(self.folded_bytes + out_bytes, f"constants folded at plan time (up to {shapes})")
        self.folded_bytes += out_bytes
        return True

    def const(self, value: np.ndarray | float | int | bool, dtype: np.dtype | type | None = None) -> A.Tensor:
        arr = np.asarray(value, dtype=dtype)
        arr = np.asarray(arr, order="C")  # not ascontiguousarray: that makes 0-d arrays 1-d
        arr.setflags(write=False)
        return A.Tensor(arr.shape, arr.dtype, value=arr, id=self._id())

    def value(self, t: A.Tensor) -> np.ndarray:
        """The tensor's value; at plan time this may need a run-time sync (NeedValue)."""
        if t.value is not None:
            return t.value
        if t.id in self.known:
            return self.known[t.id]
        raise NeedValue([t])

    def maybe_value(self, t: A.Tensor | None) -> np.ndarray | None:
        if t is None:
            return None
        return t.value if t.value is not None else self.known.get(t.id)

    def emit(self, op: A.Op) -> A.Op:
        if all(t.value is not None for t in op.inputs) and op.inputs and self._fold_ok(op.inputs, op.outputs):
            self._fold(op)
            for t in op.outputs:
                if t.value is not None:
                    t.value.setflags(write=False)
        else:
            self.ops.append(op)
        return op

    # ------------------------------------------------------------------ data movement

    def strided(
        self, x: A.Tensor, shape: Sequence[int], strides: Sequence[int], offset: int = 0
    ) -> A.Tensor:
        """A copy of an arbitrary strided view of ``x`` (every movement op ends here)."""
        shape = tuple(int(s) for s in shape)
        out = self.tensor(shape, x.dtype)
        if out.size == 0:
            out.value = np.zeros(shape, x.dtype)
            return out
        if x.value is not None and self._fold_ok([x], [out]):
            view = np.lib.stride_tricks.as_strided(
                x.value.reshape(-1)[offset:], shape, [s * x.dtype.itemsize for s in strides]
            )
            out.value = np.asarray(view, order="C")
            out.value.setflags(write=False)
            return out
        regions = strided_regions(0, offset, strides, 0, contiguous(shape), shape)
        self.emit(A.Raster([x], [out], regions=regions, view=(shape, tuple(strides), offset)))
        return out

    def reshape(self, x: A.Tensor, shape: Sequence[int]) -> A.Tensor:
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != x.size:
            raise DecomposeError(f"cannot reshape {list(x.shape)} to {list(shape)}")
        if shape == x.shape:
            return x
        return self.strided(x, shape, contiguous(shape))

    def transpose(self, x: A.Tensor, perm: Sequence[int]) -> A.Tensor:
        perm = [normalize_axis(p, len(x.shape)) for p in perm]
        if sorted(perm) != list(range(len(x.shape))):
            raise DecomposeError(f"bad permutation {perm} for rank {len(x.shape)}")
        if perm == sorted(perm):
            return x
        st = contiguous(x.shape)
        return self.strided(x, [x.shape[p] for p in perm], [st[p] for p in perm])

    def expand(self, x: A.Tensor, shape: Sequence[int]) -> A.Tensor:
        shape = tuple(shape)
        if x.shape == shape:
            return x
        return self.strided(x, shape, broadcast_strides(x.shape, shape))

    def slice(
        self, x: A.Tensor, starts: Sequence[int], sizes: Sequence[int], steps: Sequence[int]
    ) -> A.Tensor:
        """Per-axis (start, size, step) with normalised, in-range starts."""
        st = contiguous(x.shape)
        offset = sum(s * t for s, t in zip(starts, st, strict=True))
        return self.strided(x, sizes, [t * k for t, k in zip(st, steps, strict=True)], offset)

    def concat(self, xs: Sequence[A.Tensor], axis: int) -> A.Tensor:
        ref = xs[0]
        axis = normalize_axis(axis, len(ref.shape))
        for t in xs:
            if len(t.shape) != len(ref.shape) or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, ref.shape, strict=True)) if i != axis
            ):
                raise DecomposeError(f"concat shapes differ: {[list(t.shape) for t in xs]}")
        shape = list(ref.shape)
        shape[axis] = sum(t.shape[axis] for t in xs)
        out = self.tensor(shape, ref.dtype)
        if all(t.value is not None for t in xs) and self._fold_ok(xs, [out]):
            out.value = np.concatenate([self.value(t) for t in xs], axis=axis)
            return out
        dst = contiguous(shape)
        regions: list[A.Region] = []
        pos = 0
        inputs = [t for t in xs if t.size]
        for i, t in enumerate(inputs):
            regions += strided_regions(i, 0, contiguous(t.shape), pos * dst[axis], dst, t.shape)
            pos += t.shape[axis]
        if out.size:
            self.emit(A.Raster(list(inputs), [out], regions=regions))
        else:
            out.value = np.zeros(shape, ref.dtype)
        return out

    def pad(self, x: A.Tensor, before: Sequence[int], after: Sequence[int], value: float) -> A.Tensor:
        """Constant padding (negative pads crop)."""
        crop_start = [max(-b, 0) for b in before]
        crop_size = [d - max(-b, 0) - max(-a, 0) for d, b, a in zip(x.shape, before, after, strict=True)]
        if any(c < 0 for c in crop_size):
            raise DecomposeError("pads crop more than the tensor holds")
        if any(crop_start) or any(a < 0 for a in after):
            x = self.slice(x, crop_start, crop_size, [1] * len(x.shape))
        b = [max(v, 0) for v in before]
        a = [max(v, 0) for v in after]
        shape = [d + p + q for d, p, q in zip(x.shape, b, a, strict=True)]
        out = self.tensor(shape, x.dtype)
        dst = contiguous(shape)
        off = sum(p * s for p, s in zip(b, dst, strict=True))
        regions = strided_regions(0, 0, contiguous(x.shape), off, dst, x.shape)
        self.emit(A.Raster([x], [out], regions=regions, fill=float(value)))
        return out

    # ------------------------------------------------------------------ element-wise

    def unary(self, fn: str, x: A.Tensor, *params: float, dtype: np.dtype | None = None) -> A.Tensor:
        out_dtype = np.dtype(bool) if fn in ("isnan", "isinf", "isposinf", "isneginf") else x.dtype
        out = self.tensor(x.shape, dtype or out_dtype)
        self.emit(A.Unary([x], [out], fn=fn, params=tuple(float(p) for p in params)))
        return out

    def binary(self, fn: str, a: A.Tensor, b: A.Tensor) -> A.Tensor:
        try:
            shape = tuple(np.broadcast_shapes(a.shape, b.shape))
        except ValueError:
            raise DecomposeError(f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast") from None
        compare = fn in ("eq", "lt", "le", "gt", "ge")
        dtype = np.dtype(bool) if compare else a.dtype
        out = self.tensor(shape, dtype)
        strides = [broadcast_strides(a.shape, shape), broadcast_strides(b.shape, shape)]
        self.emit(A.Binary([a, b], [out], fn=fn, strides=strides))
        return out

    def select(self, cond: A.Tensor, a: A.Tensor, b: A.Tensor) -> A.Tensor:
        try:
            shape = tuple(np.broadcast_shapes(cond.shape, a.shape, b.shape))
        except ValueError:
            raise DecomposeError("Where inputs do not broadcast") from None
        out = self.tensor(shape, a.dtype)
        strides = [broadcast_strides(t.shape, shape) for t in (cond, a, b)]
        self.emit(A.Select([cond, a, b], [out], strides=strides))
        return out

    def cast(self, x: A.Tensor, dtype: np.dtype | type) -> A.Tensor:
        dtype = np.dtype(dtype)
        if x.dtype == dtype:
            return x
        out = self.tensor(x.shape, dtype)
        self.emit(A.Cast([x], [out]))
        return out

    def scalar(self, value: float | int | bool, like: A.Tensor) -> A.Tensor:
        return self.const(np.array(value, dtype=like.dtype))

    # ------------------------------------------------------------------ reductions

    def reduce_axis(self, x: A.Tensor, axis: int, fn: str, last_index: bool = False) -> A.Tensor:
        """Reduce one axis, keeping it with size 1 (scans keep the full size)."""
        axis = normalize_axis(axis, len(x.shape))
        outer = math.prod(x.shape[:axis])
        n = x.shape[axis]
        inner = math.prod(x.shape[axis + 1 :])
        scan = fn in ("cumsum", "cumprod")
        shape = list(x.shape)
        if not scan:
            shape[axis] = 1
        dtype = np.dtype(np.int64) if fn in ("argmax", "argmin") else x.dtype
        out = self.tensor(shape, dtype)
        if n == 0 and not scan:
            if fn in ("argmax", "argmin", "max", "min"):
                raise DecomposeError(f"{fn} over an empty axis")
            out.value = np.full(shape, 0 if fn == "sum" else 1, dtype)
            return out
        self.emit(A.Reduce([x], [out], fn=fn, outer=outer, n=n, inner=inner, last_index=last_index))
        return out

    def reduce(self, x: A.Tensor, axes: Sequence[int], fn: str, keepdims: bool) -> A.Tensor:
        """``fn`` (sum, prod, max, min) over ``axes``: each run of adjacent axes is one Reduce
        over their product (a contiguous reshape is free), and a run of size 1 is no Reduce, so
        a reduction over every axis (DynamicQuantizeLinear's min and max) is one pass."""
        rank = len(x.shape)
        axes = sorted({normalize_axis(a, rank) for a in axes})
        runs: list[list[int]] = []  # [first, last + 1] of each run of adjacent axes
        for a in axes:
            if runs and runs[-1][1] == a:
                runs[-1][1] = a + 1
            else:
                runs.append([a, a + 1])
        merged: list[int] = []
        reduced: list[int] = []  # axes of ``merged`` to reduce
        i = 0
        for lo, hi in runs:
            merged += x.shape[i:lo]
            size = math.prod(x.shape[lo:hi])
            if size != 1:
                reduced.append(len(merged))
            merged.append(size)
            i = hi
        merged += x.shape[i:]
        y = self.reshape(x, merged) if tuple(merged) != tuple(x.shape) else x
        for a in reduced:
            y = self.reduce_axis(y, a, fn)
        out = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdims \
            else [d for i, d in enumerate(x.shape) if i not in axes]
        return self.reshape(y, out) if tuple(out) != tuple(y.shape) else y

    # ------------------------------------------------------------------ linear algebra

    def matmul(self, a: A.Tensor, b: A.Tensor, bias: A.Tensor | None = None) -> A.Tensor:
        """numpy ``matmul`` semantics (1-D promotion, broadcast batch dims)."""
        a_shape, b_shape = a.shape, b.shape
        if len(a_shape) == 0 or len(b_shape) == 0:
            raise DecomposeError("MatMul inputs must have rank >= 1")
        a2 = self.reshape(a, (1, *a_shape)) if len(a_shape) == 1 else a
        b2 = self.reshape(b, (*b_shape, 1)) if len(b_shape) == 1 else b
        m, k = a2.shape[-2:]
        k2, n = b2.shape[-2:]
        if k != k2:
            raise DecomposeError(f"MatMul inner dims differ: {list(a_shape)} x {list(b_shape)}")
        try:
            batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
        except ValueError:
            raise DecomposeError(f"MatMul batch dims do not broadcast: {list(a_shape)} x {list(b_shape)}") from None
        a3 = self._batched(a2, batch)
        b3 = self._batched(b2, batch)
        nb = math.prod(batch)
        out = self.tensor((nb, m, n), np.result_type(a.dtype, b.dtype))
        ins = [a3, b3] + ([bias] if bias is not None else [])
        self.emit(A.MatMul(ins, [out], batch=nb, m=m, n=n, k=k,
                           a_batch_stride=0 if a3.shape[0] == 1 and nb > 1 else m * k,
                           b_batch_stride=0 if b3.shape[0] == 1 and nb > 1 else k * n))
        shape = (*batch, m, n)
        if len(a_shape) == 1:
            shape = (*batch, n)
        if len(b_shape) == 1:
            shape = shape[:-1]
        return self.reshape(out, shape)

    def _batched(self, x: A.Tensor, batch: tuple[int, ...]) -> A.Tensor:
        """(…, r, c) as (B, r, c): shared when it does not vary over the batch, else expanded."""
        r, c = x.shape[-2:]
        if math.prod(x.shape[:-2]) == 1:
            return self.reshape(x, (1, r, c))
        if x.shape[:-2] != batch:
            pad = (1,) * (len(batch) - len(x.shape[:-2])) + x.shape[:-2]
            x = self.expand(self.reshape(x, (*pad, r, c)), (*batch, r, c))
        return self.reshape(x, (math.prod(batch), r, c))

    # ------------------------------------------------------------------ index-driven

    def gather_rows(self, data: A.Tensor, idx: A.Tensor, rows: int, block: int) -> A.Tensor:
        """``out[i, :] = data.view(rows, block)[idx[i], :]`` with idx flattened to int64."""
        flat = self.reshape(self.cast(idx, np.int64), (idx.size,))
        out = self.tensor((idx.size, block), data.dtype)
        self.emit(A.GatherScatter([data, flat], [out], mode="gather", rows=rows, block=block))
        return out

    def scatter_rows(
        self, data: A.Tensor, idx: A.Tensor, updates: A.Tensor, rows: int, block: int, reduction: str
    ) -> A.Tensor:
        flat = self.reshape(self.cast(idx, np.int64), (idx.size,))
        out = self.tensor(data.shape, data.dtype)
        self.emit(A.GatherScatter([data, flat, updates], [out], mode="scatter", rows=rows,
                                  block=block, reduction=reduction))
        return out

    def argsort(self, x: A.Tensor, axis: int, descending: bool) -> A.Tensor:
        axis = normalize_axis(axis, len(x.shape))
        out = self.tensor(x.shape, np.int64)
        self.emit(A.Sort([x], [out], outer=math.prod(x.shape[:axis]), n=x.shape[axis],
                         inner=math.prod(x.shape[axis + 1 :]), descending=descending))
        return out

    # ------------------------------------------------------------------ composites

    def composite(
        self, name: str, inputs: Sequence[A.Tensor], build: Callable[[], list[A.Tensor]],
        **attrs: object,
    ) -> list[A.Tensor]:
        """Run ``build`` (which emits the decomposition) and wrap what it emitted in a
        ``Composite`` that a backend may claim as one fused kernel."""
        start = len(self.ops)
        outs = build()
        body = self.ops[start:]
        if body:
            del self.ops[start:]
            self.ops.append(A.Composite(list(inputs), outs, name=name, attrs=dict(attrs), expansion=body))
        return outs
