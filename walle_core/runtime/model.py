"""The user-facing runtime: ``load`` a model, ``Model.run`` it on numpy arrays.

Plans are cached per input signature (names, shapes, dtypes). A plan is a tree of stages: a
static model has one stage; a model with data-dependent shapes or control flow has sync points
whose observed values pick (or build) the next stage.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Backend
from walle_core.decompose import lookup
from walle_core.errors import BackendUnavailableError, InputError, WalleError
from walle_core.frontend.shapes import bind_dims
from walle_core.interpreter import fold
from walle_core.ir.graph import Graph, subgraphs
from walle_core.plan.lower import Lowering
from walle_core.plan.planner import CompileFailed, Stage, build_stage, prepare, run_stage
from walle_core.plugins import registry
from walle_core.runtime.describe import ModelInfo, PlanInfo, StepInfo, describe_graph, example_feeds
from walle_core.search import Decision, Searcher
from walle_core.search.timing import time_ops

Signature = tuple[tuple[str, tuple[int, ...], str], ...]


@dataclass
class PlanNode:
    stage: Stage
    lowered_ops: int  # ops of the lowering consumed up to the end of this stage
    complete: bool
    outputs: list[A.Tensor]
    need: list[int]
    known: dict[int, np.ndarray]
    input_ids: dict[str, int]
    children: dict[tuple[object, ...], PlanNode] = field(default_factory=dict)


def check_supported(graph: Graph) -> None:
    """Fail at load, not at first run, when a node (or a subgraph node) has no decomposition."""
    for node in graph.nodes:
        lookup(node, graph.opset)
        for sub in subgraphs(node):
            check_supported(sub)


def resolve_backends(backend: str) -> list[Backend]:
    reg = registry()
    if backend == "auto":
        found = reg.available()
        if not found:
            raise BackendUnavailableError("no backend is available (is the reference plugin installed?)")
        return found
    chosen = [reg.get(backend)]
    # Ops the chosen backend lacks fall back to the reference backend, with explicit copies.
    if backend != "reference":
        with contextlib.suppress(BackendUnavailableError):
            chosen.append(reg.get("reference"))
    return chosen


class Model:
    def __init__(self, graph: Graph, *, backend: str = "auto", threads: int | None = None,
                 tune_budget_s: float = 0.0) -> None:
        self.graph = graph
        check_supported(graph)
        self.backends = resolve_backends(backend)
        self.threads = threads
        # "auto" searches across every available backend; a named backend keeps its order
        # (reference only as the fallback for what it lacks).
        self.searcher = (Searcher(self.backends, tune_budget_s=tune_budget_s, threads=threads)
                         if backend == "auto" else None)
        self.dropped: dict[str, str] = {}  # backends that failed to prepare kernels, and why
        self._roots: dict[Signature, PlanNode] = {}
        self._conflicts: dict[Signature, list[str]] = {}  # dim names a signature binds to two sizes
        # (feed names in order, their shapes) -> the run of that signature's plan
        self._fast: dict[tuple[tuple[str, ...], tuple[tuple[int, ...], ...]],
                         Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray] | None]] = {}
        self._lock = threading.Lock()
        self.peak_bytes = 0
        self._defaults = {
            vi.name for vi in graph.inputs if vi.name in graph.initializers
        }
        # read on every run: built once (run's per-call Python cost shows on small models)
        self._declared = {vi.name: vi for vi in graph.inputs}
        self._input_names = [vi.name for vi in graph.inputs if vi.name not in self._defaults]
        self._output_names = [vi.name for vi in graph.outputs]

    # ------------------------------------------------------------------ introspection

    @property
    def input_names(self) -> list[str]:
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    @property
    def inputs(self) -> dict[str, str]:
        """Input name -> declared type, e.g. ``float32[batch,3,224,224]``."""
        return {vi.name: vi.type.describe() for vi in self.graph.inputs if vi.name not in self._defaults}

    @property
    def backend_names(self) -> list[str]:
        return [b.name for b in self.backends]

    # ------------------------------------------------------------------ running

    def _signature(self, feeds: Mapping[str, np.ndarray]) -> tuple[Signature, dict[str, np.ndarray]]:
        declared = self._declared
        if any(name not in declared for name in feeds):
            unknown = sorted(set(feeds) - set(declared))
            raise InputError(f"unknown input(s) {unknown}; the model takes {self.input_names}")
        missing = [n for n in self._input_names if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        arrays: dict[str, np.ndarray] = {}
        for name, value in feeds.items():
            vi = declared[name]
            arr = np.asarray(value, order="C")  # ascontiguousarray makes 0-d arrays 1-d
            if arr.dtype != vi.type.dtype:
                raise InputError(f"input {name!r} has dtype {arr.dtype}, the model expects {vi.type.dtype}")
            arrays[name] = arr
        sig = tuple(sorted((n, a.shape, a.dtype.str) for n, a in arrays.items()))
        if sig not in self._roots:  # a planned signature passed this check when it was first fed
            _, conflicts = bind_dims([(vi.name, vi.type) for vi in self.graph.inputs],
                                     {n: a.shape for n, a in arrays.items()})
            if conflicts:
                self._conflicts[sig] = conflicts
        return sig, arrays

    def _build(self, sig: Signature, known: dict[int, np.ndarray], start: int) -> PlanNode:
        try:
            return self._build_plan(sig, known, start)
        except WalleError as exc:
            conflicts = self._conflicts.get(sig)
            if not conflicts:
                raise
            # Names bound to two sizes are legal (onnxruntime runs such feeds); when the model
            # then fails on them, that is the likely cause, so say it.
            raise InputError(f"{exc}; the feeds bind a dim name of the declared inputs to two sizes: "
                             + "; ".join(conflicts)) from exc

    def _build_plan(self, sig: Signature, known: dict[int, np.ndarray], start: int) -> PlanNode:
        shapes = {n: (shape, np.dtype(dt)) for n, shape, dt in sig}
        lowered = Lowering(self.graph, fold, known).run(shapes)
        ops = lowered.ops[start:]
        if lowered.complete:
            keep = {t.id for t in lowered.outputs}
        else:  # later stages may read anything produced so far
            keep = {t.id for op in ops for t in op.outputs}
        while True:
            chooser = self.searcher.choose if self.searcher is not None else None
            try:
                stage = build_stage(ops, self.backends, keep, self.threads, chooser)
                break
            except CompileFailed as exc:
                if len(self.backends) == 1:
                    raise
                self._drop_backend(exc.backend, str(exc))
        stage.guards = [t.id for t in lowered.need]
        self.peak_bytes = max(self.peak_bytes, stage.peak_bytes)
        return PlanNode(stage, len(lowered.ops), lowered.complete, lowered.outputs,
                        stage.guards, dict(known),
                        {name: t.id for name, t in lowered.inputs.items()})

    def _drop_backend(self, name: str, reason: str) -> None:
        """Plan without a backend from now on, keeping the reason for ``walle search``."""
        self.backends = [b for b in self.backends if b.name != name]
        self.dropped[name] = reason
        if self.searcher is not None:
            self.searcher = Searcher(self.backends, tune_budget_s=self.searcher.tune_budget_s,
                                     threads=self.threads)
            self.searcher.skipped.update(self.dropped)

    def atomic_ops(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[A.Op], set[int]]:
        """The first stage's atomic ops after the planner's clean-ups, and the ids that must
        reach the host: what the search and ``walle inspect`` look at."""
        sig, _ = self._signature(feeds)
        shapes = {n: (shape, np.dtype(dt)) for n, shape, dt in sig}
        lowered = Lowering(self.graph, fold, {}).run(shapes)
        keep = ({t.id for t in lowered.outputs} if lowered.complete
                else {t.id for op in lowered.ops for t in op.outputs})
        return prepare(lowered.ops, self.backends[0], keep), keep

    def explain(self, feeds: Mapping[str, np.ndarray]) -> list[Decision]:
        """The search's decision for every op of the first stage (see ``walle search``)."""
        ops, keep = self.atomic_ops(feeds)
        searcher = self.searcher or Searcher(self.backends)
        with self._lock:
            return searcher.decide(ops, keep)

    def plan_for(self, feeds: Mapping[str, np.ndarray]) -> PlanNode:
        sig, _ = self._signature(feeds)
        with self._lock:
            if sig not in self._roots:
                self._roots[sig] = self._build(sig, {}, 0)
            return self._roots[sig]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A feed seen before (same names in the same order, same shapes) goes straight to its
        # plan: the full check below (names, dtypes, declared dims) passed when it was first
        # fed, and the runner re-checks only the dtypes. On a 0.1 ms model the checks, the
        # signature and the dicts of the full path were several percent of the run.
        try:
            key = (tuple(feeds), tuple([a.shape for a in feeds.values()]))
            fast = self._fast.get(key)
        except (AttributeError, TypeError):  # a value that is not an array: converted below
            key, fast = None, None
        if fast is not None:
            out = fast(feeds)
            if out is not None:
                return out
        sig, arrays = self._signature(feeds)
        with self._lock:
            node = self._roots.get(sig)
            if node is None:
                node = self._roots[sig] = self._build(sig, {}, 0)
            if key is not None and key not in self._fast:
                self._fast[key] = self._runner(node, sig)
        return self._execute(node, sig, arrays)

    def _execute(self, node: PlanNode, sig: Signature, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        table = {tid: arrays[name] for name, tid in node.input_ids.items()}
        while True:
            run_stage(node.stage, table)
            if node.complete:
                break
            values = {tid: table[tid] for tid in node.need}
            key = tuple((tid, v.dtype.str, v.shape, v.tobytes()) for tid, v in values.items())
            with self._lock:
                child = node.children.get(key)
                if child is None:
                    child = self._build(sig, {**node.known, **values}, node.lowered_ops)
                    node.children[key] = child
            node = child
        inputs = node.input_ids.values()
        return {
            # Never hand back a caller's own array or a plan constant: callers may mutate results.
            name: (t.value.copy() if t.value is not None
                   else np.array(table[t.id]) if t.id in inputs else table[t.id])
            for name, t in zip(self._output_names, node.outputs, strict=True)
        }

    def _runner(self, root: PlanNode, sig: Signature) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray] | None]:
        """The run of a known feed signature: None when a dtype differs (the full path reports
        it). A one-program plan whose outputs are all that program's own is a single call."""
        dtypes = [(name, np.dtype(dt)) for name, _, dt in sig]

        def same_dtypes(feeds: Mapping[str, np.ndarray]) -> bool:
            for name, dt in dtypes:  # a loop, not all(): this is on every run's path
                d = feeds[name].dtype
                if d is not dt and d != dt:
                    return False
            return True

        step = root.stage.steps[0] if len(root.stage.steps) == 1 else None
        name_of = {tid: name for name, tid in root.input_ids.items()}
        if (root.complete and step is not None and all(tid in name_of for tid in step.inputs)
                and all(t.value is None and t.id in step.outputs and t.id not in name_of
                        for t in root.outputs)):
            run = step.executable.run
            arg_names = [name_of[tid] for tid in step.inputs]
            picks = [(name, step.outputs.index(t.id))
                     for name, t in zip(self._output_names, root.outputs, strict=True)]

            def single(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
                if not same_dtypes(feeds):
                    return None
                outs = run([feeds[n] for n in arg_names])
                return {name: outs[i] for name, i in picks}

            return single

        def staged(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
            return self._execute(root, sig, feeds) if same_dtypes(feeds) else None

        return staged

    # ------------------------------------------------------------------ describing and timing

    def describe(self) -> ModelInfo:
        """The graph's op types, parameters, inputs and outputs (see :func:`walle_core.describe`)."""
        return describe_graph(self.graph)

    def example_feeds(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
        """Zero arrays for the inputs to feed: declared shapes, symbolic dims 1, ``shapes`` overriding."""
        wanted = set(self.input_names)
        return example_feeds([vi for vi in self.graph.inputs if vi.name in wanted], shapes)

    def describe_plan(self, feeds: Mapping[str, np.ndarray] | None = None) -> PlanInfo:
        """The plan for ``feeds`` (default :meth:`example_feeds`): programs per backend, atomic op
        kinds and FLOPs of its first stage."""
        feeds = self.example_feeds() if feeds is None else feeds
        node = self.plan_for(feeds)
        ops, _ = self.atomic_ops(feeds)
        return PlanInfo(
            shapes={n: tuple(np.shape(a)) for n, a in sorted(feeds.items())}, complete=node.complete,
            n_ops=node.stage.n_ops, peak_bytes=node.stage.peak_bytes,
            steps=[StepInfo(s.backend, s.ops, s.arena_bytes) for s in node.stage.steps],
            kinds=dict(Counter(op.kind.value for op in ops).most_common()),
            flops=float(sum(op.flops() for op in ops)))

    def time_run(self, feeds: Mapping[str, np.ndarray], *, repeat: int = 5) -> float:
        """Median wall seconds of :meth:`run` over ``repeat`` runs, after one untimed run."""
        self.run(feeds)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.run(feeds)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def time_decisions(self, decisions: Sequence[Decision], *, repeat: int = 5,
                       budget_s: float = 0.2) -> list[float]:
        """Seconds of each decision's op alone on its chosen backend and algorithm (best of
        ``repeat`` within ``budget_s``): the measured column of ``walle search --measure``."""
        return [time_ops(d.chosen.backend, [(d.op, d.chosen.algorithm)], repeat=repeat, budget_s=budget_s)
                for d in decisions]



def load(
    model: str | Path | bytes, *, backend: str = "auto", threads: int | None = None,
    tune_budget_s: float = 0.0,
) -> Model:
    """Load an ONNX or TFLite model from a path or bytes and prepare it for ``backend``.

    ``backend="auto"`` lets the search pick a backend and algorithm per op; ``tune_budget_s``
    > 0 also times the leading candidates on this machine (measure mode, cached)."""
    from walle_core.frontend import import_graph

    return Model(import_graph(model), backend=backend, threads=threads, tune_budget_s=tune_budget_s)
