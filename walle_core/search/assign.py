"""The semi-auto search: algorithm per op, then backend per op for the whole graph.

Method (documented in docs/architecture.md):
1. Candidates: every available backend offers algorithms for an op; each (backend, algorithm)
   gets a predicted time from the calibrated cost model, or its measured time from the tuning
   cache when measure mode has timed it. Per backend only the best algorithm survives.
2. Assignment, phase 1: dynamic programming over the topological order with the backend of the
   previous op as state, charging each op's cost, a program-switch overhead when the backend
   changes, and host<->device transfers on the edge from the previous op and from graph inputs.
3. Phase 2: the DP cannot see edges that skip ops, so a local search moves single ops to other
   backends while the exact total (every producer->consumer transfer counted once per tensor and
   consumer backend) decreases. Each move is evaluated incrementally from the op's own edges.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend
from walle_core.search.calibrate import Calibration, op_key

HOST = "host"


@dataclass
class Candidate:
    backend: Backend
    algorithm: Algorithm
    predicted_s: float
    measured_s: float | None = None

    @property
    def seconds(self) -> float:
        return self.measured_s if self.measured_s is not None else self.predicted_s

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


class CostModel:
    def __init__(self, calibrations: dict[str, Calibration],
                 measured: dict[tuple[str, str], float] | None = None) -> None:
        self.cal = calibrations
        self.measured = measured or {}  # (op signature, "backend/algo") -> seconds

    def predict(self, op: A.Op, backend: str, algo: Algorithm) -> float:
        cal = self.cal[backend]
        cost = algo.cost(op)
        key = op_key(op, algo.name)
        return (cal.fixed_cost(key) * max(cost.launches, 1) + cost.flops / max(cal.rate(key), 1.0)
                + cost.bytes / cal.bandwidth_Bps)

    def per_byte(self, backend: str) -> float:
        """Seconds per byte to move data between this backend and the host."""
        return 0.0 if backend == HOST else 1.0 / self.cal[backend].io_Bps

    def switch(self, backend: str) -> float:
        return self.cal[backend].program_overhead_s


def op_signature(op: A.Op) -> str:
    """What makes two ops time the same: kind, parameters and tensor shapes/dtypes/const-ness."""
    skip = {"inputs", "outputs", "expansion", "regions", "view"}
    params = {k: v for k, v in vars(op).items() if k not in skip}
    ins = [(t.shape, t.dtype.str, t.value is not None) for t in op.inputs]
    outs = [(t.shape, t.dtype.str) for t in op.outputs]
    regions = len(op.regions) if isinstance(op, A.Raster) else None
    return repr((op.kind.value, sorted(params.items()), ins, outs, regions))


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
        best: Candidate | None = None
        for algo in algos:
            c = Candidate(backend, algo, model.predict(op, backend.name, algo),
                          model.measured.get((sig, f"{backend.name}/{algo.name}")))
            if best is None or c.seconds < best.seconds:
                best = c
        assert best is not None
        found.append(best)
    if not found:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ValueError(f"no backend can run {op.kind.value} {op.outputs}: {why}")
    found.sort(key=lambda c: c.seconds)
    return Decision(op, found[0], found, skipped=skipped)


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
    nb = g.nbytes.get(tid, 0)
    return sum(nb * (model.per_byte(src) + model.per_byte(d)) for d in dests)


def _switch_cost(i: int, where: list[str], model: CostModel) -> float:
    if i == 0 or where[i] != where[i - 1]:
        return model.switch(where[i])
    return 0.0


def total_cost(decisions: Sequence[Decision], g: _Graph, where: list[str], model: CostModel) -> float:
    own = sum(_cost_on(d, b) for d, b in zip(decisions, where, strict=True))
    moves = sum(_tensor_cost(t, g, where, model) for t in g.nbytes)
    return own + moves + sum(_switch_cost(i, where, model) for i in range(len(where)))


def _cost_on(d: Decision, backend: str) -> float:
    for c in d.candidates:
        if c.backend.name == backend:
            return c.seconds
    return math.inf


def assign(ops: Sequence[A.Op], backends: Sequence[Backend], model: CostModel,
           outputs: set[int]) -> tuple[list[Decision], float]:
    """Choose (backend, algorithm) per op. Returns the decisions and the predicted total."""
    decisions = [candidates(op, backends, model) for op in ops]
    if not decisions:
        return [], 0.0
    g = _Graph(ops, outputs)
    names = sorted({c.backend.name for d in decisions for c in d.candidates})
    # Phase 1: DP over the order, state = backend of the previous op.
    best: list[dict[str, tuple[float, str]]] = []
    for i, d in enumerate(decisions):
        row: dict[str, tuple[float, str]] = {}
        for c in d.candidates:
            b = c.backend.name
            from_host = sum(g.nbytes[t.id] * model.per_byte(b) for t in d.op.inputs
                            if t.value is None and t.id not in g.producer)
            if i == 0:
                row[b] = (c.seconds + model.switch(b) + from_host, "")
                continue
            edge = sum(g.nbytes[t.id] for t in d.op.inputs if g.producer.get(t.id) == i - 1)
            options = []
            for prev, (acc, _) in best[i - 1].items():
                hop = 0.0 if prev == b else model.switch(b) + edge * (model.per_byte(prev) + model.per_byte(b))
                options.append((acc + hop + c.seconds + from_host, prev))
            row[b] = min(options)
        best.append(row)
    where = [""] * len(decisions)
    where[-1] = min(best[-1], key=lambda b: best[-1][b][0])
    for i in range(len(decisions) - 1, 0, -1):
        where[i - 1] = best[i][where[i]][1]
    # Phase 2: single-op moves, evaluated on the op's own tensors and neighbours.
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
            break
    for d, b in zip(decisions, where, strict=True):
        chosen = next(c for c in d.candidates if c.backend.name == b)
        if chosen is d.candidates[0]:
            d.reason = "measured fastest" if chosen.measured_s is not None else "cheapest predicted"
        else:
            d.reason = f"avoids transfers/switches (own cost {chosen.seconds / d.candidates[0].seconds:.2f}x the cheapest)"
        d.chosen = chosen
    return decisions, total_cost(decisions, g, where, model)


def counts(decisions: Sequence[Decision]) -> Counter[str]:
    return Counter(d.chosen.backend.name for d in decisions)
