"""From lowered ops to executables: composite expansion, backend assignment, partition into
per-backend programs with explicit host copies between them, the backend-neutral rewrites each
backend opted into (``walle_core.plan.rewrite``), and arena planning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend, Executable, Program
from walle_core.errors import BackendUnavailableError, WalleError
from walle_core.plan import rewrite
from walle_core.plan.fuse import eliminate_copies, merge_rasters
from walle_core.plan.memory import plan_arena


def expand_composites(ops: Sequence[A.Op], backend: Backend) -> list[A.Op]:
    out: list[A.Op] = []
    for op in ops:
        # a claimed pattern the backend cannot run here (say, another dtype) is expanded too
        if isinstance(op, A.Composite) and not (backend.claims(op.name) and backend.algorithms(op)):
            out.extend(expand_composites(op.expansion, backend))
        else:
            out.append(op)
    return out


def choose(op: A.Op, backends: Sequence[Backend]) -> tuple[Backend, Algorithm]:
    """The first backend (in preference order) that offers an algorithm; its cheapest one."""
    for backend in backends:
        algos = backend.algorithms(op)
        if algos:
            best = min(algos, key=lambda a: (a.cost(op).flops / a.cost(op).efficiency, a.name))
            return backend, best
    names = ", ".join(b.name for b in backends)
    raise BackendUnavailableError(f"no backend among [{names}] can run {op.kind.value} {op.outputs}")


class CompileFailed(BackendUnavailableError):
    """A backend could not prepare a program; the runtime re-plans without that backend."""

    def __init__(self, backend: str, exc: BaseException) -> None:
        self.backend = backend
        super().__init__(f"backend {backend!r} failed to prepare its kernels: {exc!r}")


@dataclass
class Step:
    """One compiled program and where its inputs and outputs live in the run's tensor table."""

    backend: str
    executable: Executable
    inputs: list[int]
    outputs: list[int]
    ops: int
    arena_bytes: int


@dataclass
class Stage:
    steps: list[Step]
    peak_bytes: int
    n_ops: int
    guards: list[int] = field(default_factory=list)  # ids read at the end (sync point)


Assignment = list[tuple[A.Op, Backend, Algorithm]]
# Gets the lowered ops and the ids to keep; returns the ops to run (after ``prepare``, whose
# composite expansion depends on the backend a chooser has in mind) with a backend and algorithm.
Chooser = Callable[[Sequence[A.Op], set[int]], Assignment]


def fixed_preference(backends: Sequence[Backend]) -> Chooser:
    def chooser(ops: Sequence[A.Op], keep: set[int]) -> Assignment:
        return [(op, *choose(op, backends)) for op in prepare(ops, backends[0], keep)]

    return chooser


def prepare(ops: Sequence[A.Op], primary: Backend, keep: set[int]) -> list[A.Op]:
    """Planner clean-ups before backend choice: composite expansion, copy elimination,
    raster composition."""
    return merge_rasters(eliminate_copies(expand_composites(ops, primary), keep), keep)


# one program of a stage: its backend, its ops, what it reads from outside, what it hands out
ProgramGroup = tuple[Backend, list[tuple[A.Op, Algorithm]], list[A.Tensor], list[A.Tensor]]


def program_groups(assigned: Sequence[tuple[A.Op, Backend, Algorithm]],
                   keep: set[int]) -> list[ProgramGroup]:
    """Each run of consecutive ops on one backend as one program: its backend, its ops, the
    tensors it reads from outside, and the outputs the host (``keep``) or a later program reads."""
    groups: list[tuple[Backend, list[tuple[A.Op, Algorithm]]]] = []
    for op, backend, algo in assigned:
        if groups and groups[-1][0] is backend:
            groups[-1][1].append((op, algo))
        else:
            groups.append((backend, [(op, algo)]))
    consumers: dict[int, set[int]] = {}
    for gi, (_, items) in enumerate(groups):
        for op, _algo in items:
            for t in op.inputs:
                consumers.setdefault(t.id, set()).add(gi)
    out: list[ProgramGroup] = []
    for gi, (backend, items) in enumerate(groups):
        produced = {t.id: t for op, _ in items for t in op.outputs}
        ins: dict[int, A.Tensor] = {}
        for op, _ in items:
            for t in op.inputs:
                if t.value is None and t.id not in produced:
                    ins.setdefault(t.id, t)
        outs = [t for tid, t in produced.items()
                if tid in keep or any(c != gi for c in consumers.get(tid, ()))]
        out.append((backend, items, list(ins.values()), outs))
    return out


def build_stage(
    ops: Sequence[A.Op],
    backends: Sequence[Backend],
    keep: set[int],
    threads: int | None,
    chooser: Chooser | None = None,
) -> Stage:
    """``keep``: ids that must reach the host table (graph outputs, guards, later stages).
    ``chooser`` prepares the ops and picks (backend, algorithm) per op: the search, or the fixed
    preference."""
    assigned = (chooser or fixed_preference(backends))(ops, keep)
    steps: list[Step] = []
    peak = 0
    for backend, items, ins, outs in program_groups(assigned, keep):
        in_ids = [t.id for t in ins]
        # the backend-neutral rewrites the backend opted into, before its memory is planned
        rewritten = rewrite.apply(items, {t.id for t in outs}, backend.rewrites)
        arena = plan_arena([op for op, _ in rewritten], set(in_ids) | {t.id for t in outs})
        program = Program(rewritten, ins, outs, arena.offsets, arena.arena_bytes)
        try:
            exe = backend.compile(program, threads=threads)
        except WalleError:
            raise
        except Exception as exc:  # a backend bug must cost a fallback, not the whole model
            raise CompileFailed(backend.name, exc) from exc
        steps.append(Step(backend.name, exe, in_ids, [t.id for t in outs], len(items),
                          arena.arena_bytes))
        peak = max(peak, arena.arena_bytes)
    return Stage(steps, peak, len(assigned))


def run_stage(stage: Stage, table: dict[int, np.ndarray]) -> None:
    for step in stage.steps:
        results = step.executable.run([table[i] for i in step.inputs])
        for tid, arr in zip(step.outputs, results, strict=True):
            table[tid] = arr
