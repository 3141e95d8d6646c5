"""The cost model: seconds of an op on a backend, and of a whole plan.

A plan is what the planner will build from an assignment: consecutive ops on one backend form one
program; a program pays its fixed cost, each of its ops (queued: a launch never costs less than
the backend's per-launch overhead), an upload per input and a download per output that another
program or the host reads. :func:`plan_cost` follows the planner's partition exactly, so the
prediction is of the plan that will run, not a sum of ops timed alone: an element-wise op that
reads what only it reads from an earlier op of its program costs what calibration measured for
it chained (a fraction of a lone op's pass on a backend that fuses such chains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend, Program
from walle_core.plan import rewrite
from walle_core.plan.planner import program_groups
from walle_core.search.calibrate import Calibration, chain_followers, lowering_seconds, rewrite_seconds


def op_signature(op: A.Op) -> str:
    """What makes two ops time the same: kind, parameters and tensor shapes/dtypes/const-ness."""
    skip = {"inputs", "outputs", "expansion", "regions", "view"}
    params = {k: v for k, v in vars(op).items() if k not in skip}
    ins = [(t.shape, t.dtype.str, t.value is not None) for t in op.inputs]
    outs = [(t.shape, t.dtype.str) for t in op.outputs]
    regions = len(op.regions) if isinstance(op, A.Raster) else None
    return repr((op.kind.value, sorted(params.items()), ins, outs, regions))


class CostModel:
    def __init__(self, calibrations: dict[str, Calibration],
                 measured: dict[tuple[str, str], float] | None = None) -> None:
        self.cal = calibrations
        self.measured = measured or {}  # (op signature, "backend/algo") -> seconds

    def predict(self, op: A.Op, backend: str, algo: Algorithm, *, chained: bool = False) -> float:
        """Seconds of ``op`` queued in a program of ``backend``: its bucket's fit, scaled by what
        a whole program measured over its ops' predictions at calibration; ``chained``: fed by
        its producer's pass (:func:`~walle_core.search.calibrate.chain_followers`)."""
        cal = self.cal[backend]
        return cal.op_seconds(op, algo, chained=chained) * cal.program_factor

    def upload(self, backend: str, nbytes: float) -> float:
        return self.cal[backend].upload(nbytes)

    def download(self, backend: str, nbytes: float) -> float:
        return self.cal[backend].download(nbytes)

    def program(self, backend: str) -> float:
        return self.cal[backend].program_overhead_s

    def run(self, backend: str) -> float:
        """Host seconds of a model's run beyond its programs, as calibrated with ``backend``."""
        return self.cal[backend].run_overhead_s


@dataclass(frozen=True)
class PlanCost:
    """Predicted seconds of a plan, split so that a mixed plan's extra costs are visible."""

    compute_s: float
    transfer_s: float
    program_s: float
    programs: int
    backends: tuple[str, ...]
    run_s: float = 0.0  # the run's own host cost (feeds, outputs): the same for every plan

    @property
    def total_s(self) -> float:
        return self.compute_s + self.transfer_s + self.program_s + self.run_s


def programs_of(where: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive ops on one backend: the planner's programs."""
    runs: list[tuple[int, int]] = []
    for i, b in enumerate(where):
        if runs and where[runs[-1][0]] == b:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def plan_cost(ops: Sequence[A.Op], where: Sequence[str], own_s: Sequence[float], keep: set[int],
              model: CostModel, chained_s: Sequence[float] | None = None) -> PlanCost:
    """The cost of running ``ops[i]`` on backend ``where[i]`` (taking ``own_s[i]``, or
    ``chained_s[i]`` where the op follows its producer's pass inside its program), partitioned
    as the planner does: a program's inputs are what it reads and does not produce; its outputs
    are what it produces and the host (``keep``) or another program reads."""
    runs = programs_of(where)
    group = [0] * len(ops)
    for g, (s, e) in enumerate(runs):
        group[s:e] = [g] * (e - s)
    read_by: dict[int, set[int]] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            if t.value is None:
                read_by.setdefault(t.id, set()).add(group[i])
    transfer = 0.0
    compute = 0.0
    for g, (s, e) in enumerate(runs):
        b = where[s]
        produced: dict[int, float] = {}
        for op in ops[s:e]:
            for t in op.outputs:
                produced[t.id] = t.nbytes
        handed_out = {tid for tid in produced if tid in keep or any(r != g for r in read_by.get(tid, ()))}
        fused = chain_followers(ops[s:e], handed_out) if chained_s is not None else set()
        compute += sum(min(own_s[i], chained_s[i]) if chained_s is not None and i - s in fused
                       else own_s[i] for i in range(s, e))
        seen: set[int] = set()
        for op in ops[s:e]:
            for t in op.inputs:
                if t.value is None and t.id not in produced and t.id not in seen:
                    seen.add(t.id)
                    transfer += model.upload(b, t.nbytes)
        for tid in handed_out:
            transfer += model.download(b, produced[tid])
    overhead = sum(model.program(where[s]) for s, _ in runs)
    run = max((model.run(b) for b in set(where)), default=0.0)
    return PlanCost(compute, transfer, overhead, len(runs), tuple(dict.fromkeys(where)), run)


def added_cost(assignment: Sequence[tuple[A.Op, Backend, Algorithm]], keep: set[int],
               model: CostModel) -> float:
    """Seconds each program's backend adds when it compiles the program, at the buckets'
    rates: what the planner's rewrites the backend takes change (:func:`rewrite_seconds`),
    then (:func:`~walle_core.search.calibrate.lowering_seconds`, of the rewritten program) the
    ops it adds (layout changes between its kernels), and what the ops it runs otherwise than
    picked (a conv on another algorithm, a pool on a blocked tensor) cost beyond their picks.
    The planner's programs, with the inputs and outputs it gives them."""
    total = 0.0
    for backend, picks, inputs, outputs in program_groups(assignment, keep):
        def price(op: A.Op, algo: Algorithm, chained: bool = False, name: str = backend.name) -> float:
            return model.predict(op, name, algo, chained=chained)

        external = {t.id for t in outputs}
        rewritten = rewrite.apply(picks, external, backend.rewrites)
        total += rewrite_seconds(picks, rewritten, external, price)
        total += lowering_seconds(backend, Program(rewritten, inputs, outputs), price)
    return total
