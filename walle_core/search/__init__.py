"""Semi-auto search: calibrated cost model, graph-wide backend assignment, measure mode.

``Searcher.choose`` is what the planner calls for ``backend="auto"``; ``walle search`` prints
the same decisions as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend
from walle_core.search.assign import Candidate, CostModel, Decision, assign, op_signature
from walle_core.search.calibrate import Calibration, calibration_for
from walle_core.search.tune import TuningCache, measure

__all__ = [
    "Calibration", "Candidate", "CostModel", "Decision", "Searcher", "TuningCache", "assign",
    "calibration_for", "op_signature",
]


class Searcher:
    """Chooses (backend, algorithm) per op for a list of backends; calibrates lazily."""

    def __init__(self, backends: Sequence[Backend], *, tune_budget_s: float = 0.0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.backends = list(backends)
        self.tune_budget_s = tune_budget_s
        self.progress = progress
        self.calibrations: dict[str, Calibration] = {}
        self.skipped: dict[str, str] = {}
        self.last: list[Decision] = []
        self.last_total_s = 0.0
        self._tuning: TuningCache | None = None

    def _calibrate(self) -> None:
        for b in self.backends:
            if b.name in self.calibrations or b.name in self.skipped:
                continue
            try:
                self.calibrations[b.name] = calibration_for(b, progress=self.progress)
            except Exception as exc:  # a backend that cannot be calibrated is not used
                self.skipped[b.name] = f"calibration failed: {exc}"

    def tuning(self) -> TuningCache:
        if self._tuning is None:
            self._tuning = TuningCache.for_backends(self.backends)
        return self._tuning

    def decide(self, ops: Sequence[A.Op], outputs: set[int]) -> list[Decision]:
        self._calibrate()
        usable = [b for b in self.backends if b.name in self.calibrations]
        model = CostModel(self.calibrations, self.tuning().measured())
        decisions, total = assign(ops, usable, model, outputs)
        if self.tune_budget_s > 0 and decisions and measure(
                decisions, self.tuning(), budget_s=self.tune_budget_s):
            model = CostModel(self.calibrations, self.tuning().measured())
            decisions, total = assign(ops, usable, model, outputs)
        for d in decisions:
            d.skipped.update(self.skipped)
        self.last, self.last_total_s = decisions, total
        return decisions

    def choose(self, ops: Sequence[A.Op], outputs: set[int]) -> list[tuple[Backend, Algorithm]]:
        # Nothing to search when every op has exactly one (backend, algorithm): skip calibration.
        options = [[(b, a) for b in self.backends for a in b.algorithms(op)] for op in ops]
        if all(len(o) == 1 for o in options):
            return [o[0] for o in options]
        return [(d.chosen.backend, d.chosen.algorithm) for d in self.decide(ops, outputs)]
