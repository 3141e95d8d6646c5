"""Per-op candidates and the mixed (several-backend) assignment of one op list.

Method (documented in docs/architecture.md):
1. Candidates: one per available backend that runs the op: the backend's own algorithm (the one
   the planner runs when that backend is named), with a predicted time from the calibrated cost
   model, or another algorithm of the backend once measure mode has timed both and it measured
   faster. An oracle backend (``Backend.oracle``: the reference interpreter) is a candidate only
   for an op no other backend runs: it is correct, never fast, and its probes' times do not
   carry to other shapes (its conv loops over kernel taps in Python).
2. Dynamic programming over the topological order with the backend of the previous op as state,
   charging each op's cost, a program's fixed cost when the backend changes, and uploads and
   downloads on the edge from the previous op and from graph inputs.
3. The DP cannot see edges that skip ops, so a local search moves single ops to other backends
   while the exact total (every producer->consumer transfer counted once per tensor and consumer
   backend) decreases; each move is evaluated from the op's own edges.
4. Whole runs of ops are then moved onto a neighbouring run's backend while the planner-exact
   plan cost (:func:`~walle_core.search.cost.plan_cost`) decreases: no ping-pong that a single
   move cannot undo.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend
from walle_core.search.cost import CostModel, PlanCost, op_signature, plan_cost, programs_of

HOST = "host"


@dataclass
class Candidate:
    backend: Backend
    algorithm: Algorithm
    predicted_s: float
    measured_s: float | None = None
    chained_s: float = math.inf  # predicted when fed by its producer's pass (element-wise ops)

    @property
    def seconds(self) -> float:
        return self.measured_s if self.measured_s is not None else self.predicted_s

    @property
    def chained_seconds(self) -> float:
        return min(self.seconds, self.chained_s)

    @property
    def label(self) -> str:
        return f"{self.backend.name}/{self.algorithm.name}"


@dataclass
class Decision:
    op: A.Op
    chosen: Candidate
    candidates: list[Candidate]  # best per backend, cheapest first
    reason: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why not a candidate

    @property
    def runner_up(self) -> Candidate | None:
        others = [c for c in self.candidates if c is not self.chosen]
        return others[0] if others else None

    def on(self, backend: str) -> Candidate | None:
        return next((c for c in self.candidates if c.backend.name == backend), None)


def candidates(op: A.Op, backends: Sequence[Backend], model: CostModel) -> Decision:
    found: list[Candidate] = []
    skipped: dict[str, str] = {}
    sig = op_signature(op) if model.measured else ""
    for backend in backends:
        if backend.name not in model.cal:
            skipped[backend.name] = "not calibrated"
            continue
        algos = backend.algorithms(op)
        if not algos:
            skipped[backend.name] = f"no algorithm for {op.kind.value}"
            continue
        found.append(_backend_candidate(op, backend, algos, model, sig))
    if not found:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ValueError(f"no backend can run {op.kind.value} {op.outputs}: {why}")
    fast = [c for c in found if not c.backend.oracle]
    if fast:  # an oracle is a fallback: its calibrated probes say little of its other ops
        skipped.update((c.backend.name, "a conformance oracle: runs only what no other backend "
                        "runs") for c in found if c.backend.oracle)
        found = fast
    found.sort(key=lambda c: c.seconds)
    return Decision(op, found[0], found, skipped=skipped)


def _backend_candidate(op: A.Op, backend: Backend, algos: Sequence[Algorithm], model: CostModel,
                       sig: str) -> Candidate:
    """The backend's own algorithm for ``op`` (what the planner runs when the backend is named:
    :func:`~walle_core.plan.planner.choose`'s pick among ``algos``),
    unless measure mode timed it and another algorithm of the backend measured faster.

    A backend's preference sees what an op timed alone cannot: the layout a run of its ops keeps
    (the cpu's blocked convs), the epilogues it fuses. Calibrated per-op predictions of the other
    algorithms would split that run for gains that vanish once it is compiled."""
    def candidate(algo: Algorithm) -> Candidate:
        return Candidate(backend, algo, model.predict(op, backend.name, algo),
                         model.measured.get((sig, f"{backend.name}/{algo.name}")),
                         model.predict(op, backend.name, algo, chained=True))

    own = candidate(min(algos, key=lambda a: (a.cost(op).flops / a.cost(op).efficiency, a.name)))
    if own.measured_s is None:
        return own
    for algo in algos:
        t = model.measured.get((sig, f"{backend.name}/{algo.name}"))
        if t is not None and t < own.seconds:
            own = candidate(algo)
    return own


class _Graph:
    """Producer/consumer structure of the op list, by tensor id."""

    def __init__(self, ops: Sequence[A.Op], outputs: set[int]) -> None:
        self.producer: dict[int, int] = {}
        self.consumers: dict[int, list[int]] = {}
        self.nbytes: dict[int, int] = {}
        for i, op in enumerate(ops):
            for t in op.outputs:
                self.producer[t.id] = i
                self.nbytes[t.id] = t.nbytes
            for t in op.inputs:
                if t.value is None:
                    self.consumers.setdefault(t.id, []).append(i)
                    self.nbytes[t.id] = t.nbytes
        self.outputs = outputs
        self.touch: list[set[int]] = [
            {t.id for t in op.inputs if t.value is None} | {t.id for t in op.outputs} for op in ops
        ]


def _tensor_cost(tid: int, g: _Graph, where: list[str], model: CostModel) -> float:
    src = where[g.producer[tid]] if tid in g.producer else HOST
    dests = {where[c] for c in g.consumers.get(tid, ())}
    if tid in g.outputs:
        dests.add(HOST)
    dests.discard(src)
    if not dests:
        return 0.0
    nb = g.nbytes.get(tid, 0)
    return (0.0 if src == HOST else model.download(src, nb)) + sum(
        model.upload(d, nb) for d in dests if d != HOST)


def _switch_cost(i: int, where: list[str], model: CostModel) -> float:
    if i == 0 or where[i] != where[i - 1]:
        return model.program(where[i])
    return 0.0


def _cost_on(d: Decision, backend: str, *, chained: bool = False) -> float:
    c = d.on(backend)
    return math.inf if c is None else c.chained_seconds if chained else c.seconds


def exact_cost(decisions: Sequence[Decision], where: Sequence[str], keep: set[int],
               model: CostModel) -> PlanCost:
    pairs = list(zip(decisions, where, strict=True))
    return plan_cost([d.op for d in decisions], where, [_cost_on(d, b) for d, b in pairs], keep, model,
                     [_cost_on(d, b, chained=True) for d, b in pairs])


def _dynamic_programme(decisions: list[Decision], g: _Graph, model: CostModel) -> list[str]:
    best: list[dict[str, tuple[float, str]]] = []
    for i, d in enumerate(decisions):
        row: dict[str, tuple[float, str]] = {}
        for c in d.candidates:
            b = c.backend.name
            from_host = sum(model.upload(b, g.nbytes[t.id]) for t in d.op.inputs
                            if t.value is None and t.id not in g.producer)
            if i == 0:
                row[b] = (c.seconds + model.program(b) + from_host, "")
                continue
            edge = sum(g.nbytes[t.id] for t in d.op.inputs if g.producer.get(t.id) == i - 1)
            options = []
            for prev, (acc, _) in best[i - 1].items():
                hop = 0.0 if prev == b else (model.program(b) + model.download(prev, edge)
                                             + model.upload(b, edge))
                options.append((acc + hop + c.seconds + from_host, prev))
            row[b] = min(options)
        best.append(row)
    where = [""] * len(decisions)
    where[-1] = min(best[-1], key=lambda b: best[-1][b][0])
    for i in range(len(decisions) - 1, 0, -1):
        where[i - 1] = best[i][where[i]][1]
    return where


def _single_moves(decisions: list[Decision], g: _Graph, where: list[str], model: CostModel,
                  names: list[str]) -> None:
    for _ in range(4):
        improved = False
        for i, d in enumerate(decisions):
            if len(d.candidates) < 2:
                continue
            local = [j for j in (i, i + 1) if j < len(where)]

            def around(idx: int = i, near: list[int] = local) -> float:
                return (_cost_on(decisions[idx], where[idx])
                        + sum(_tensor_cost(t, g, where, model) for t in g.touch[idx])
                        + sum(_switch_cost(j, where, model) for j in near))

            current = where[i]
            base = around()
            for name in names:
                if name == current or math.isinf(_cost_on(d, name)):
                    continue
                where[i] = name
                if around() < base - 1e-12:
                    base, current, improved = around(), name, True
                else:
                    where[i] = current
            where[i] = current
        if not improved:
            return


def _merge_runs(decisions: list[Decision], where: list[str], keep: set[int], model: CostModel) -> None:
    """Move whole runs onto a neighbouring run's backend while the exact plan cost drops."""
    total = exact_cost(decisions, where, keep, model).total_s
    for _ in range(4 * len(where) + 4):
        runs = programs_of(where)
        if len(runs) < 2:
            return
        best: tuple[float, int, int, str] | None = None
        for r, (s, e) in enumerate(runs):
            for nb in {where[runs[r - 1][0]] if r > 0 else "", where[runs[r + 1][0]] if r + 1 < len(runs) else ""}:
                if not nb or any(decisions[i].on(nb) is None for i in range(s, e)):
                    continue
                trial = where[:s] + [nb] * (e - s) + where[e:]
                cost = exact_cost(decisions, trial, keep, model).total_s
                if cost < total - 1e-12 and (best is None or cost < best[0]):
                    best = (cost, s, e, nb)
        if best is None:
            return
        total, s, e, nb = best
        where[s:e] = [nb] * (e - s)


def mixed_assignment(decisions: list[Decision], keep: set[int], model: CostModel) -> list[str]:
    """The backend of every op for the cheapest plan the DP, single moves and run merges find."""
    if not decisions:
        return []
    g = _Graph([d.op for d in decisions], keep)
    names = sorted({c.backend.name for d in decisions for c in d.candidates})
    where = _dynamic_programme(decisions, g, model)
    _single_moves(decisions, g, where, model, names)
    _merge_runs(decisions, where, keep, model)
    return where


def assign(ops: Sequence[A.Op], backends: Sequence[Backend], model: CostModel,
           outputs: set[int]) -> tuple[list[Decision], float]:
    """Choose (backend, algorithm) per op of this op list for the cheapest mixed plan. Returns
    the decisions (``chosen`` set) and the predicted plan total."""
    decisions = [candidates(op, backends, model) for op in ops]
    if not decisions:
        return [], 0.0
    where = mixed_assignment(decisions, outputs, model)
    settle(decisions, where, "mixed")
    return decisions, exact_cost(decisions, where, outputs, model).total_s


def settle(decisions: Sequence[Decision], where: Sequence[str], plan: str) -> None:
    """Set each decision's ``chosen`` to its candidate on ``where`` and say why."""
    for d, b in zip(decisions, where, strict=True):
        chosen = d.on(b)
        assert chosen is not None, f"{b} cannot run {d.op.kind.value}"
        if chosen is d.candidates[0]:
            d.reason = "measured fastest" if chosen.measured_s is not None else "cheapest predicted"
        elif plan != "mixed" and b != plan:
            d.reason = f"{plan} cannot run it (fallback)"
        else:
            d.reason = (f"{plan} plan (own cost {chosen.seconds / d.candidates[0].seconds:.2f}x "
                        f"the cheapest)" if plan != "mixed" else
                        f"avoids transfers/switches (own cost {chosen.seconds / d.candidates[0].seconds:.2f}x"
                        f" the cheapest)")
        d.chosen = chosen


def counts(decisions: Sequence[Decision]) -> Counter[str]:
    return Counter(d.chosen.backend.name for d in decisions)
