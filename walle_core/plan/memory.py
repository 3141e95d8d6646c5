"""Arena planning: give every intermediate tensor of a program an offset in one buffer, reusing
memory whose tensor is dead. Greedy by size over lifetimes (the classic first-fit scheme).

Also the engine's memory guard: every size the planner and the constant folder are about to
allocate is checked against :func:`memory_limit` first, so a tiny model file that asks for a
3.6 TiB tensor fails with a :class:`MemoryLimitError` naming the op, never with numpy's
``MemoryError`` (or a machine swapping itself to death first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.errors import MemoryLimitError

ALIGN = 64  # bytes; keeps SIMD and GPU kernels on aligned addresses


@dataclass
class ArenaPlan:
    offsets: dict[int, int]
    arena_bytes: int
    naive_bytes: int  # what one buffer per tensor would take


# (bytes, where the limit comes from) set for the current thread or task by :func:`limited`.
_LIMIT: ContextVar[tuple[int, str] | None] = ContextVar("walle_memory_limit", default=None)


def memory_limit() -> tuple[int, str]:
    """The limit in force here and where it comes from: the innermost :func:`limited` block, else
    ``WALLE_MAX_MEMORY`` (default half of physical memory)."""
    return _LIMIT.get() or (flags.max_memory(), "WALLE_MAX_MEMORY")


@contextmanager
def limited(nbytes: int, source: str) -> Iterator[None]:
    """Plan and fold under at most ``nbytes`` (never more than the limit already in force) while
    the block runs in this thread; the task VM passes a task's remaining memory quota this way."""
    outer = memory_limit()
    token = _LIMIT.set((max(nbytes, 0), source) if nbytes < outer[0] else outer)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def tensor_bytes(shape: Sequence[int], dtype: np.dtype | type) -> int:
    """Exact bytes of a dense tensor in Python integers (numpy's int64 products overflow)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def check_bytes(nbytes: int, what: str) -> None:
    """Refuse ``nbytes`` for ``what`` (say ``"Raster output float32[1000000, 1000000]"``) when it
    passes the limit; call it before allocating."""
    limit, source = memory_limit()
    if nbytes > limit:
        raise MemoryLimitError(what, nbytes, limit, source)


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
    check_plan(ops, external, top)
    return ArenaPlan(offsets, top, sum(size.values()))


def check_plan(ops: Sequence[A.Op], external: set[int], arena_bytes: int) -> None:
    """A program allocates its arena plus the outputs it hands out (``external`` tensors it
    writes); together they must fit the limit. The error names the biggest op."""
    outputs = {t.id: t for op in ops for t in op.outputs if t.id in external and t.value is None}
    total = arena_bytes + sum(tensor_bytes(t.shape, t.dtype) for t in outputs.values())
    limit, _ = memory_limit()
    if total <= limit or not ops:
        return
    big = max(ops, key=lambda op: max((tensor_bytes(t.shape, t.dtype) for t in op.outputs), default=0))
    shapes = ", ".join(describe(t) for t in big.outputs)
    check_bytes(total, f"a program's arena and outputs (largest op {big.kind.value} -> {shapes})")


def describe(t: A.Tensor) -> str:
    """``float32[1000000, 1000000]``: how errors name a tensor."""
    return f"{t.dtype}[{', '.join(str(d) for d in t.shape)}]"
