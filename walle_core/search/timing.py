"""Timing single ops and small programs on a backend, with inputs that are valid for the op."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend, Executable, Program


def sample_input(t: A.Tensor, op: A.Op, rng: np.random.Generator) -> np.ndarray:
    """Random data of ``t``'s shape and dtype that ``op`` accepts (indices stay in range)."""
    if isinstance(op, A.GatherScatter) and len(op.inputs) > 1 and t is op.inputs[1]:
        return rng.integers(0, max(op.rows, 1), t.shape, dtype=np.int64)
    if t.dtype.kind == "b":
        return rng.random(t.shape) < 0.5
    if t.dtype.kind in "iu":
        return rng.integers(0, 8, t.shape).astype(t.dtype)
    return rng.standard_normal(t.shape).astype(t.dtype)


def program_for(ops: Sequence[tuple[A.Op, Algorithm]]) -> Program:
    produced = {t.id for op, _ in ops for t in op.outputs}
    inputs: dict[int, A.Tensor] = {}
    for op, _ in ops:
        for t in op.inputs:
            if t.value is None and t.id not in produced:
                inputs.setdefault(t.id, t)
    last = ops[-1][0]
    return Program(list(ops), list(inputs.values()), list(last.outputs))


def time_executable(exe: Executable, feeds: list[np.ndarray], *, repeat: int = 5,
                    budget_s: float = 0.5, best: bool = False) -> float:
    """Median (or with ``best``, minimum) seconds per run after one warm-up, stopping early when
    over ``budget_s``. The minimum is the better estimate of an op's own cost on a shared
    machine: noise only ever adds time."""
    exe.run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        exe.run(feeds)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return min(times) if best else statistics.median(times)


def _prepared(backend: Backend, ops: Sequence[tuple[A.Op, Algorithm]],
              seed: int) -> tuple[Executable, list[np.ndarray]]:
    program = program_for(ops)
    rng = np.random.default_rng(seed)
    owner = {t.id: op for op, _ in ops for t in op.inputs}
    return backend.compile(program), [sample_input(t, owner[t.id], rng) for t in program.inputs]


def time_ops(backend: Backend, ops: Sequence[tuple[A.Op, Algorithm]], *, repeat: int = 5,
             budget_s: float = 0.5, seed: int = 0, best: bool = False) -> float:
    exe, feeds = _prepared(backend, ops, seed)
    return time_executable(exe, feeds, repeat=repeat, budget_s=budget_s, best=best)


def chained(op: A.Op, n: int) -> list[A.Op] | None:
    """``n`` copies of ``op``, each reading the previous one's output, or None when the output
    cannot feed the first input (shape or dtype differ, or the op is a composite)."""
    x, y = op.inputs[0], op.out
    if n < 1 or x.shape != y.shape or x.dtype != y.dtype or len(op.outputs) != 1 \
            or isinstance(op, A.Composite):
        return None
    next_id = max(t.id for t in (*op.inputs, *op.outputs)) + 1
    ops, prev = [op], y
    for i in range(n - 1):
        t = A.Tensor(y.shape, y.dtype, name=f"{y.name}:chain{i}", id=next_id + i)
        ops.append(dataclasses.replace(op, inputs=[prev, *op.inputs[1:]], outputs=[t]))
        prev = t
    return ops


def time_in_chain(backend: Backend, op: A.Op, alg: Algorithm, *, repeat: int = 5,
                  seed: int = 0) -> float | None:
    """Seconds of one ``op`` between ops like it: (chain of 4 - chain of 2) / 2. What a backend
    does at a program's edges (copies, layout changes, or running a lone op another way)
    cancels out, as it does for an op in the middle of a model. None when the op cannot be
    chained."""
    two, four = chained(op, 2), chained(op, 4)
    if two is None or four is None:
        return None
    t2 = time_ops(backend, [(o, alg) for o in two], repeat=repeat, seed=seed, best=True)
    t4 = time_ops(backend, [(o, alg) for o in four], repeat=repeat, seed=seed, best=True)
    return (t4 - t2) / 2 if t4 > t2 else None


def time_ops_on_device(backend: Backend, ops: Sequence[tuple[A.Op, Algorithm]], *,
                       repeat: int = 5, seed: int = 0) -> tuple[float, float | None]:
    """Best wall-clock seconds, and best device-side kernel seconds when the backend's
    executable reports them (``Executable.last_timings``), else None."""
    exe, feeds = _prepared(backend, ops, seed)
    wall = time_executable(exe, feeds, repeat=repeat, best=True)
    device: float | None = None
    for _ in range(repeat):
        exe.run(feeds)
        launches = exe.last_timings()
        if not launches:
            return wall, None
        spent = sum(s for _, s in launches)
        device = spent if device is None else min(device, spent)
    return wall, device
