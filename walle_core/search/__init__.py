"""Semi-auto search: calibrated cost model, whole-plan candidates, measure mode.

``Searcher.choose`` is what the planner calls for ``backend="auto"``; ``walle search`` prints
the same decisions as a table, with the predicted (and measured) time of every candidate plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from walle_core import atomic as A
from walle_core.backend import Backend
from walle_core.plan.planner import Assignment, prepare
from walle_core.search.assign import Candidate, Decision, assign, candidates
from walle_core.search.calibrate import Calibration, calibration_for
from walle_core.search.cost import CostModel, PlanCost, op_signature
from walle_core.search.plans import (
    MIXED,
    Plan,
    SearchResult,
    distinct,
    mixed_plan,
    predicted_choice,
    single_plan,
)
from walle_core.search.tune import TuningCache, graph_key, measure, measure_plans

__all__ = [
    "MIXED", "Calibration", "Candidate", "CostModel", "Decision", "Plan", "PlanCost", "SearchResult",
    "Searcher", "TuningCache", "assign", "calibration_for", "op_signature",
]

OP_TUNING_SHARE = 0.3  # of the measure budget, for per-op timings; the rest times whole plans
PLANS_TIMED = 4  # whole plans measure mode times at most (predicted-best first)
TIMED_WITHIN = 4.0  # ... each predicted within this factor of the predicted choice


class Searcher:
    """Chooses the plan (backend and algorithm per op) for a list of backends; calibrates lazily."""

    def __init__(self, backends: Sequence[Backend], *, tune_budget_s: float = 0.0,
                 progress: Callable[[str], None] | None = None, threads: int | None = None) -> None:
        self.backends = list(backends)
        self.tune_budget_s = tune_budget_s
        self.progress = progress
        self.threads = threads
        self.calibrations: dict[str, Calibration] = {}
        self.skipped: dict[str, str] = {}
        self.last: list[Decision] = []
        self.last_total_s = 0.0
        self.last_result: SearchResult | None = None
        self._tuning: TuningCache | None = None

    def _calibrate(self, *, oracles: bool = False) -> None:
        """Calibrate the backends not yet calibrated; an oracle (``Backend.oracle``) only with
        ``oracles`` (when an op needs it) or when there is no other backend."""
        oracles = oracles or all(b.oracle for b in self.backends)
        for b in self.backends:
            if b.name in self.calibrations or b.name in self.skipped or (b.oracle and not oracles):
                continue
            try:
                self.calibrations[b.name] = calibration_for(b, progress=self.progress)
            except Exception as exc:  # a backend that cannot be calibrated is not used
                self.skipped[b.name] = f"calibration failed: {exc}"

    def tuning(self) -> TuningCache:
        if self._tuning is None:
            self._tuning = TuningCache.for_backends(self.backends)
        return self._tuning

    def usable(self, *, oracles: bool = False) -> list[Backend]:
        self._calibrate(oracles=oracles)
        return [b for b in self.backends if b.name in self.calibrations]

    def _plans(self, ops: Sequence[A.Op], keep: set[int], model: CostModel) -> list[Plan]:
        """One plan per backend over the ops as that backend would run them (composites it does
        not claim expanded), and the best mixed plan over each distinct op list. An oracle
        backend has no plan of its own beside another backend: it only runs (and is only
        calibrated for) the ops no other backend runs."""
        usable = self.usable()
        base = prepare(ops, self.backends[0], keep)
        lists: dict[tuple[int, ...], list[A.Op]] = {}
        per_backend: dict[str, list[A.Op]] = {}
        for b in usable:
            own = prepare(base, b, keep)
            per_backend[b.name] = lists.setdefault(tuple(id(op) for op in own), own)
        if not usable or any(not any(b.algorithms(op) for b in usable)
                             for op_list in lists.values() for op in op_list):
            usable = self.usable(oracles=True)  # ``model`` reads self.calibrations
        if not usable:
            raise ValueError("no backend could be calibrated: " + "; ".join(
                f"{k}: {v}" for k, v in self.skipped.items()))
        if not per_backend:  # only oracles: their op lists
            for b in usable:
                own = prepare(base, b, keep)
                per_backend[b.name] = lists.setdefault(tuple(id(op) for op in own), own)
        decided: dict[int, Decision] = {}

        def decisions(op_list: list[A.Op]) -> list[Decision]:
            for op in op_list:
                if id(op) not in decided:
                    decided[id(op)] = candidates(op, usable, model)
            return [decided[id(op)] for op in op_list]

        plans = [p for b in usable if b.name in per_backend
                 and (p := single_plan(b.name, decisions(per_backend[b.name]), keep, model)) is not None]
        mixed = [mixed_plan(decisions(op_list), keep, model) for op_list in lists.values()]
        if mixed:
            plans.append(min(mixed, key=lambda p: p.predicted_s))
        return distinct(plans)

    def search(self, ops: Sequence[A.Op], keep: set[int]) -> SearchResult:
        """All candidate plans with their predicted (and in measure mode, measured) times, and
        the chosen one."""
        self._calibrate()
        model = CostModel(self.calibrations, self.tuning().measured())
        plans = self._plans(ops, keep, model)
        if self.tune_budget_s > 0:
            chosen, _ = predicted_choice(plans)
            if measure(chosen.decisions, self.tuning(), budget_s=self.tune_budget_s * OP_TUNING_SHARE):
                model = CostModel(self.calibrations, self.tuning().measured())
                plans = self._plans(ops, keep, model)
            self.measure(plans, keep, budget_s=self.tune_budget_s * (1 - OP_TUNING_SHARE))
        else:  # whole-plan times an earlier measure mode kept for this graph outrank predictions
            known = self.tuning().plan_times(graph_key(plans[0].ops, keep))
            for plan in plans:
                plan.measured_s = known.get(plan.key)
        result = self.pick(plans, keep)
        for plan in plans:
            for d in plan.decisions:
                d.skipped.update(self.skipped)
        self.last, self.last_total_s, self.last_result = (result.chosen.decisions,
                                                          result.chosen.predicted_s, result)
        return result

    def measure(self, plans: Sequence[Plan], keep: set[int], *, budget_s: float) -> None:
        """Time the predicted choice, then the other plans by predicted time, as whole plans."""
        first, _ = predicted_choice(plans)
        order = [first, *sorted((p for p in plans if p is not first), key=lambda p: p.predicted_s)]
        measure_plans(order[:PLANS_TIMED], keep, budget_s=budget_s, threads=self.threads,
                      cache=self.tuning(), graph=graph_key(plans[0].ops, keep), within=TIMED_WITHIN)

    @staticmethod
    def pick(plans: list[Plan], keep: set[int]) -> SearchResult:
        """The fastest measured plan when any was timed, else the predicted choice."""
        timed = [p for p in plans if p.measured_s is not None]
        if timed:
            best = min(timed, key=lambda p: p.measured_s or 0.0)
            return SearchResult(plans, best, f"fastest of {len(timed)} timed plans "
                                             f"({best.label}, {(best.measured_s or 0) * 1e6:.0f} µs)", keep)
        chosen, why = predicted_choice(plans)
        return SearchResult(plans, chosen, why, keep)

    def time_plans(self, result: SearchResult, *, budget_s: float = 10.0) -> None:
        """Time every plan of ``result`` whole (for ``walle search --measure``), without changing
        the choice; plans measure mode already timed keep their times."""
        measure_plans([p for p in result.plans if p.measured_s is None], result.keep,
                      budget_s=budget_s, threads=self.threads)

    def decide(self, ops: Sequence[A.Op], outputs: set[int]) -> list[Decision]:
        """The chosen plan's decision for every op (its op list may expand composites of
        ``ops`` that the chosen backend does not claim)."""
        return self.search(ops, outputs).chosen.decisions

    def choose(self, ops: Sequence[A.Op], outputs: set[int]) -> Assignment:
        # Nothing to search when every op has exactly one (backend, algorithm): skip calibration.
        flat = prepare(ops, self.backends[0], outputs)
        fast = [b for b in self.backends if not b.oracle]
        options = [[(b, a) for b in fast for a in b.algorithms(op)]
                   or [(b, a) for b in self.backends for a in b.algorithms(op)] for op in flat]
        if all(len(o) == 1 for o in options):
            return [(op, *o[0]) for op, o in zip(flat, options, strict=True)]
        return self.search(flat, outputs).chosen.assignment

