"""Graph clean-ups on lowered ops before backend assignment.

Reshape-like copies (a Raster whose every element lands at the same linear offset it came
from) are dropped: consumers read the source buffer directly, so a reshape costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from walle_core import atomic as A
from walle_core.decompose.builder import contiguous, strided_regions


def is_identity_copy(op: A.Op) -> bool:
    if not isinstance(op, A.Raster) or op.fill is not None or len(op.inputs) != 1:
        return False
    src, dst = op.inputs[0], op.out
    if src.size != dst.size or src.dtype != dst.dtype:
        return False
    covered = 0
    for r in op.regions:
        if r.src_offset != r.dst_offset or r.src_strides != r.dst_strides:
            return False
        covered += r.size[0] * r.size[1] * r.size[2]
    return covered == dst.size


def _as_shape(src: A.Tensor, want: A.Tensor) -> A.Tensor:
    """The source buffer under the consumer's declared shape (kernels such as Conv2D read
    their input's shape): same id, so it binds to the same memory."""
    if src.shape == want.shape:
        return src
    value = None if src.value is None else src.value.reshape(want.shape)
    return A.Tensor(want.shape, src.dtype, value, src.name, src.id)


def eliminate_copies(ops: Sequence[A.Op], keep: set[int]) -> list[A.Op]:
    """Drop identity copies whose result need not exist on its own (not in ``keep``)."""
    alias: dict[int, A.Tensor] = {}
    out: list[A.Op] = []
    for op in ops:
        op.inputs = [_as_shape(alias[t.id], t) if t.id in alias else t for t in op.inputs]
        if is_identity_copy(op) and op.out.id not in keep:
            alias[op.out.id] = op.inputs[0]
            continue
        out.append(op)
    return out


def compose_views(
    a: tuple[tuple[int, ...], tuple[int, ...], int], b: tuple[tuple[int, ...], tuple[int, ...], int]
) -> tuple[tuple[int, ...], int] | None:
    """``b`` is a strided view over the dense result of view ``a``; return ``b``'s strides and
    offset over ``a``'s source, or None when an axis of ``b`` would carry across axes of ``a``."""
    a_shape, a_strides, a_off = a
    b_shape, b_strides, b_off = b
    dense = contiguous(a_shape)
    base = [(b_off // d) % n if n else 0 for d, n in zip(dense, a_shape, strict=True)]
    lo, hi = list(base), list(base)
    strides = []
    for n, s in zip(b_shape, b_strides, strict=True):
        if n == 1 or s == 0:
            strides.append(0)
            continue
        for j, d in enumerate(dense):
            if abs(s) % d == 0 and (j == 0 or abs(s) < dense[j - 1]) and a_shape[j] > 1:
                c = s // d
                lo[j] += min(0, c * (n - 1))
                hi[j] += max(0, c * (n - 1))
                strides.append(c * a_strides[j])
                break
        else:
            return None
    if any(x < 0 for x in lo) or any(h >= n for h, n in zip(hi, a_shape, strict=True)):
        return None
    return tuple(strides), a_off + sum(c * s for c, s in zip(base, a_strides, strict=True))


def merge_rasters(ops: Sequence[A.Op], keep: set[int]) -> list[A.Op]:
    """Fold a strided-view Raster into the strided-view Raster that alone consumes its output."""
    uses: dict[int, int] = {}
    for op in ops:
        for t in op.inputs:
            uses[t.id] = uses.get(t.id, 0) + 1
    producer: dict[int, A.Raster] = {}
    dead: set[int] = set()
    for op in ops:
        if not isinstance(op, A.Raster) or op.view is None:
            continue
        t = op.inputs[0]
        a = producer.get(t.id)
        if a is not None and a.view is not None and uses.get(t.id) == 1 and t.id not in keep:
            merged = compose_views(a.view, op.view)
            if merged is not None:
                strides, off = merged
                shape = op.view[0]
                op.view = (shape, strides, off)
                op.inputs = [a.inputs[0]]
                op.regions = strided_regions(0, off, strides, 0, contiguous(shape), shape)
                dead.add(id(a))
        producer[op.out.id] = op
    return [op for op in ops if id(op) not in dead]
