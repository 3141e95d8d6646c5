"""Arena planning: give every intermediate tensor of a program an offset in one buffer, reusing
memory whose tensor is dead. Greedy by size over lifetimes (the classic first-fit scheme)."""

from __future__ import annotations

from dataclasses import dataclass

from walle_core import atomic as A

ALIGN = 64  # bytes; keeps SIMD and GPU kernels on aligned addresses


@dataclass
class ArenaPlan:
    offsets: dict[int, int]
    arena_bytes: int
    naive_bytes: int  # what one buffer per tensor would take


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_arena(ops: list[A.Op], external: set[int]) -> ArenaPlan:
    """``external``: ids of tensors that live outside the arena (program inputs and outputs)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    size: dict[int, int] = {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            if t.value is None and t.id not in external:
                first.setdefault(t.id, i)
                last[t.id] = max(last.get(t.id, i), i)
                size[t.id] = _align(max(t.nbytes, 1))
        for t in op.inputs:
            if t.id in first:
                last[t.id] = i
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[int, int] = {}
    top = 0
    for tid in sorted(size, key=lambda k: (-size[k], first[k])):
        lo, hi, nbytes = first[tid], last[tid], size[tid]
        clashes = sorted((o, s) for o, s, f, la in placed if not (la < lo or f > hi))
        offset = 0
        for o, s in clashes:
            if offset + nbytes <= o:
                break
            offset = max(offset, o + s)
        offsets[tid] = offset
        placed.append((offset, nbytes, lo, hi))
        top = max(top, offset + nbytes)
    return ArenaPlan(offsets, top, sum(size.values()))
