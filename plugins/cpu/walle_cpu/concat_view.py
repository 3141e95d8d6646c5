"""Concatenations as views: a Raster that only places whole inputs, each as one contiguous run
of the output (a channel concat of batch-1 tensors, plain or of whole 16-channel blocks), is
not run: every such input is written by its producer straight into its place in the output.

The compiler binds an aliased tensor to its target's memory plus a byte offset, and plans the
arena on ops where every aliased tensor is renamed to its target, so that the target lives from
the first of its parts' producers to the last reader of it or of any part.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Sequence

from walle_core import atomic as A
from walle_core.backend import Algorithm

# byte offsets of the parts stay on cache lines (kernels keep vector stores aligned)
_ALIGN = 64


@dataclasses.dataclass(frozen=True)
class Alias:
    """Tensor lives in ``target``'s memory from byte ``offset``."""

    target: A.Tensor
    offset: int


def _placements(op: A.Raster) -> list[int] | None:
    """Per input the element offset of its contiguous copy in the output, or None when ``op``
    is not a concat of whole inputs (each element copied to its own index plus one shift per
    input, every output element written once)."""
    shift: dict[int, int] = {}
    count = [0] * len(op.inputs)
    for r in op.regions:
        n = math.prod(r.size)
        if n == 0:
            continue
        if any(s != d for s, d, k in zip(r.src_strides, r.dst_strides, r.size, strict=True) if k > 1):
            return None
        if shift.setdefault(r.src, r.dst_offset - r.src_offset) != r.dst_offset - r.src_offset:
            return None
        count[r.src] += n
    if sorted(shift) != list(range(len(op.inputs))) or any(c != t.size for c, t in zip(count, op.inputs, strict=True)):
        return None
    # each input's regions cover as many elements as it has: with one shift, its copy is its
    # whole range [shift, shift + size) when the regions do not overlap, which the ranges'
    # adding up to the output without overlapping each other implies
    spans = sorted((shift[i], shift[i] + t.size) for i, t in enumerate(op.inputs))
    if spans[0][0] != 0 or spans[-1][1] != op.out.size or any(
            a[1] != b[0] for a, b in itertools.pairwise(spans)):
        return None
    return [shift[i] for i in range(len(op.inputs))]


def elide(ops: Sequence[tuple[A.Op, Algorithm]], fixed: set[int]) -> tuple[list[tuple[A.Op, Algorithm]], dict[int, Alias]]:
    """``ops`` without the concats that become views, and the aliases they leave. ``fixed``:
    tensors with memory of their own (program inputs and outputs); a part must be an
    intermediate produced here, read by the concat once, and not already a part elsewhere."""
    produced = {t.id for op, _ in ops for t in op.outputs}
    alias: dict[int, Alias] = {}
    keep: list[tuple[A.Op, Algorithm]] = []
    for op, algo in ops:
        places = _placements(op) if isinstance(op, A.Raster) and op.regions else None
        ids = [t.id for t in op.inputs]
        es = op.out.dtype.itemsize
        if places is None or len(set(ids)) != len(ids) or op.out.value is not None or any(
                t.id in fixed or t.id in alias or t.id not in produced or t.value is not None
                or t.dtype != op.out.dtype or (p * es) % _ALIGN for t, p in zip(op.inputs, places, strict=True)):
            keep.append((op, algo))
            continue
        for t, p in zip(op.inputs, places, strict=True):
            alias[t.id] = Alias(op.out, p * es)
    return keep, alias


def resolve(tid: int, alias: dict[int, Alias]) -> tuple[A.Tensor | None, int]:
    """The tensor whose memory ``tid`` lives in (None: its own) and the byte offset there,
    through nested concats."""
    target: A.Tensor | None = None
    off = 0
    while tid in alias:
        a = alias[tid]
        target, off, tid = a.target, off + a.offset, a.target.id
    return target, off


def planning_ops(ops: Sequence[A.Op], alias: dict[int, Alias]) -> list[A.Op]:
    """Shallow copies of ``ops`` with every aliased tensor replaced by its final target (what
    the arena is planned on)."""
    if not alias:
        return list(ops)

    def sub(t: A.Tensor) -> A.Tensor:
        target, _ = resolve(t.id, alias)
        return t if target is None else target

    out = []
    for op in ops:
        c = copy.copy(op)
        c.inputs = [sub(t) for t in op.inputs]
        c.outputs = [sub(t) for t in op.outputs]
        out.append(c)
    return out
