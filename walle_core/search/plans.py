"""Whole-plan candidates: one per backend (every op there, fallbacks only for what it lacks) and
the best mixed plan, and the rule that picks between them.

A mixed plan's extra costs (uploads, downloads, one program per run) are the least certain part
of any prediction, and a wrong split costs far more than it can save. So a mixed plan must beat
the best single-backend plan by its own predicted transfer and program costs once more, and by at
least MIXED_GAIN of it: the search cannot predict itself into a plan worse than running
everything on one backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend
from walle_core.search.assign import Decision, exact_cost, mixed_assignment, settle
from walle_core.search.cost import CostModel, PlanCost, added_cost

MIXED = "mixed"
MIXED_GAIN = 0.1  # ... and save at least this share of it: smaller gains are within prediction error


@dataclass
class Plan:
    label: str  # a backend name (single-backend plan) or "mixed"
    decisions: list[Decision]  # ``chosen`` is this plan's pick
    cost: PlanCost
    measured_s: float | None = None
    note: str = ""  # why the plan was not timed, or failed to run

    @property
    def ops(self) -> list[A.Op]:
        return [d.op for d in self.decisions]

    @property
    def where(self) -> list[str]:
        return [d.chosen.backend.name for d in self.decisions]

    @property
    def assignment(self) -> list[tuple[A.Op, Backend, Algorithm]]:
        return [(d.op, d.chosen.backend, d.chosen.algorithm) for d in self.decisions]

    @property
    def predicted_s(self) -> float:
        return self.cost.total_s

    @property
    def key(self) -> str:
        """Names this exact assignment (for the tuning cache): label and a digest of the picks."""
        picks = "|".join(f"{d.chosen.label}" for d in self.decisions)
        return f"{self.label}:{hashlib.sha256(picks.encode()).hexdigest()[:12]}"

    @property
    def fallbacks(self) -> int:
        return sum(d.chosen.backend.name != self.label for d in self.decisions) if self.label != MIXED else 0


@dataclass
class SearchResult:
    plans: list[Plan]  # single-backend plans in backend order, then the mixed one (if distinct)
    chosen: Plan
    why: str
    keep: set[int]  # ids the plans hand back to the host

    def plan(self, label: str) -> Plan | None:
        return next((p for p in self.plans if p.label == label), None)


def _plan(label: str, decisions: Sequence[Decision], where: list[str], keep: set[int],
          model: CostModel) -> Plan:
    own = [dataclasses.replace(d) for d in decisions]  # each plan picks its own ``chosen``
    settle(own, where, label)
    cost = exact_cost(own, where, keep, model)
    added = added_cost([(d.op, d.chosen.backend, d.chosen.algorithm) for d in own], keep, model)
    return Plan(label, own, dataclasses.replace(cost, compute_s=cost.compute_s + added))


def single_plan(backend: str, decisions: Sequence[Decision], keep: set[int],
                model: CostModel) -> Plan | None:
    """Every op on ``backend``; ops it cannot run on their cheapest other backend. None when the
    backend runs none of them."""
    where = [backend if d.on(backend) else d.candidates[0].backend.name for d in decisions]
    if backend not in where:
        return None
    return _plan(backend, decisions, where, keep, model)


def mixed_plan(decisions: Sequence[Decision], keep: set[int], model: CostModel) -> Plan:
    return _plan(MIXED, decisions, mixed_assignment(list(decisions), keep, model), keep, model)


def predicted_choice(plans: Sequence[Plan]) -> tuple[Plan, str]:
    """The best single-backend plan, unless the mixed plan beats it by its own transfer and
    program costs once more."""
    singles = [p for p in plans if p.label != MIXED]
    mixed = next((p for p in plans if p.label == MIXED), None)
    if not singles:
        assert mixed is not None
        return mixed, "no backend runs the whole graph"
    best = min(singles, key=lambda p: p.predicted_s)
    why = f"best single-backend plan ({best.label}, predicted {best.predicted_s * 1e6:.0f} µs)"
    if mixed is None:
        return best, why
    margin = max(mixed.cost.transfer_s + mixed.cost.program_s, MIXED_GAIN * best.predicted_s)
    if mixed.predicted_s + margin < best.predicted_s:
        return mixed, (f"mixed plan predicted {mixed.predicted_s * 1e6:.0f} µs beats {best.label} "
                       f"({best.predicted_s * 1e6:.0f} µs) by more than its transfers and programs "
                       f"({margin * 1e6:.0f} µs)")
    return best, why + (f"; mixed plan {mixed.predicted_s * 1e6:.0f} µs does not beat it by its "
                        f"transfers and programs or {MIXED_GAIN:.0%} ({margin * 1e6:.0f} µs)")


def distinct(plans: Sequence[Plan]) -> list[Plan]:
    """Drop a mixed plan that uses one backend: that backend's own plan is the candidate for
    running there (its composites as it claims them, its own algorithms)."""
    return [p for p in plans if p.label != MIXED or len(set(p.where)) > 1]
