"""Measure mode: time candidates on the real backends within a time budget and keep the results in
a tuning cache keyed by device set.

Two kinds of timing are kept:

* ops: the leading candidates of the costliest ops, each queued among ops like it (this refines
  the per-op costs the assignment works from);
* whole plans: the best single-backend plans and the best mixed plan, each compiled by the planner
  exactly as it would run and timed end to end with its transfers. The search returns the fastest
  plan it timed, never an untimed or slower one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Backend
from walle_core.files import atomic_write
from walle_core.plan.planner import build_stage, run_stage
from walle_core.search.assign import Candidate, Decision
from walle_core.search.calibrate import fingerprint
from walle_core.search.clock import clock_for
from walle_core.search.cost import op_signature
from walle_core.search.plans import Plan
from walle_core.search.timing import Timer, feeds_for, time_call

TURN_S = 0.02  # host seconds of timed runs per plan and round, beyond its first


class TuningCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, float]] = {}
        try:
            raw = json.loads(path.read_text())
            if isinstance(raw, dict):
                self.entries = {k: {a: float(s) for a, s in v.items()} for k, v in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self.entries = {}  # missing or corrupt: start over, it is only a cache

    @classmethod
    def for_backends(cls, backends: Sequence[Backend]) -> TuningCache:
        key = hashlib.sha256("|".join(sorted(fingerprint(b) for b in backends)).encode()).hexdigest()[:16]
        return cls(flags.cache_dir() / "tuning" / f"{key}.json")

    def measured(self) -> dict[tuple[str, str], float]:
        """Per-op timings: (op signature, "backend/algorithm") -> seconds."""
        return {(sig, label): s for sig, runs in self.entries.items() if not sig.startswith("plan:")
                for label, s in runs.items()}

    def record(self, sig: str, label: str, seconds: float) -> None:
        self.entries.setdefault(sig, {})[label] = seconds

    def plan_times(self, graph: str) -> dict[str, float]:
        return self.entries.get(f"plan:{graph}", {})

    def record_plan(self, graph: str, key: str, seconds: float) -> None:
        self.record(f"plan:{graph}", key, seconds)

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.entries, indent=1, sort_keys=True))


def graph_key(ops: Sequence[A.Op], keep: set[int]) -> str:
    """Names a graph at one input signature: its ops' signatures and which outputs are kept."""
    h = hashlib.sha256()
    index = {t.id: i for i, op in enumerate(ops) for t in op.outputs}
    for op in ops:
        h.update(op_signature(op).encode())
        h.update(repr([index.get(t.id, -1) for t in op.inputs]).encode())
    h.update(repr(sorted(index.get(t, -1) for t in keep)).encode())
    return h.hexdigest()[:20]


def measure(decisions: Sequence[Decision], cache: TuningCache, *, budget_s: float,
            top_k: int = 3) -> int:
    """Time up to ``top_k`` candidates of the costliest ops first, each queued among ops like it,
    until the budget is spent. Returns how many (op, candidate) timings were taken."""
    deadline = time.perf_counter() + budget_s
    taken = 0
    order = sorted(decisions, key=lambda d: d.chosen.seconds, reverse=True)
    for d in order:
        sig = op_signature(d.op)
        # Every algorithm of every candidate backend, the predicted-best first, at most top_k.
        labels: list[Candidate] = []
        for c in d.candidates:
            labels.append(c)
            labels += [Candidate(c.backend, alg, c.predicted_s)
                       for alg in c.backend.algorithms(d.op) if alg.name != c.algorithm.name]
        for c in labels[:top_k]:
            if time.perf_counter() > deadline:
                cache.save()
                return taken
            if c.label in cache.entries.get(sig, {}):
                continue
            timer = Timer(c.backend, clock_for([c.backend]), budget_s=0.2)
            # a lone op (an element-wise one fused into a chain is priced from calibration)
            cache.record(sig, c.label, timer.steady(d.op, c.algorithm, chain=False))
            taken += 1
    cache.save()
    return taken


class PlanRunner:
    """One plan compiled by the planner, with sampled inputs, ready to time on its clock."""

    def __init__(self, plan: Plan, keep: set[int], threads: int | None) -> None:
        assignment = plan.assignment
        backends = list(dict.fromkeys(b for _, b, _ in assignment))
        self.stage = build_stage(plan.ops, backends, keep, threads, lambda ops, k: list(assignment))
        produced = {t.id for op in plan.ops for t in op.outputs}
        inputs: dict[int, A.Tensor] = {}
        for op in plan.ops:
            for t in op.inputs:
                if t.value is None and t.id not in produced:
                    inputs.setdefault(t.id, t)
        values = feeds_for(plan.ops, list(inputs.values()))
        self.feeds: dict[int, np.ndarray] = dict(zip(inputs, values, strict=True))
        self.clock = clock_for(backends)

    def __call__(self) -> None:
        run_stage(self.stage, dict(self.feeds))


def measure_plans(plans: Sequence[Plan], keep: set[int], *, budget_s: float,
                  threads: int | None = None, cache: TuningCache | None = None,
                  graph: str = "", rounds: int = 5, within: float | None = None) -> None:
    """Set ``measured_s`` of each plan, in the given order, while the budget lasts: compiled
    exactly as the planner will run it, warm, best of ``rounds`` taken in turns so that load on
    a shared machine hits every plan alike (each turn warms its plan once more first: a large
    plan timed before it leaves the caches cold). With ``within``, a plan predicted slower than that
    many times the first plan's prediction is not timed (on a slow device one run can outlast
    the budget). A plan that fails to build or run gets a ``note``."""
    deadline = time.perf_counter() + budget_s
    known = cache.plan_times(graph) if cache is not None else {}
    runners: dict[int, PlanRunner] = {}
    for i, plan in enumerate(plans):
        if plan.key in known:
            plan.measured_s = known[plan.key]
            continue
        if time.perf_counter() > deadline and runners:
            plan.note = "not timed: measure budget spent"
            continue
        if within is not None and plan.predicted_s > within * plans[0].predicted_s:
            plan.note = f"not timed: predicted over {within:g}x the predicted choice"
            continue
        try:
            runners[i] = PlanRunner(plan, keep, threads)
            if not runners[i].clock.noiseless:
                runners[i]()  # warm: first-run allocations and kernel caches
        except Exception as exc:  # a plan that cannot run here is simply not a candidate
            runners.pop(i, None)
            plan.note = f"failed to run: {exc}"
    for _ in range(rounds):
        for i, runner in runners.items():
            # warm again in its turn (the plan before it evicted its weights from the caches),
            # then the best of a few runs while they stay short
            t = time_call(runner, runner.clock, repeat=3, budget_s=TURN_S)
            prev = plans[i].measured_s
            plans[i].measured_s = t if prev is None else min(prev, t)
        if time.perf_counter() > deadline or all(r.clock.noiseless for r in runners.values()):
            break
    if cache is not None:
        for i in runners:
            seconds = plans[i].measured_s
            if seconds is not None:
                cache.record_plan(graph, plans[i].key, seconds)
        cache.save()
