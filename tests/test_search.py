"""The semi-auto search: calibration cache, routing around slow backends, mixed assignments."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost, Executable, Program, Rewrites
from walle_core.decompose.builder import Builder
from walle_core.plugins import Registry
from walle_core.search import Searcher, calibration_for
from walle_core.search.calibrate import cache_path, load_cached
from walle_reference.plugin import ReferenceBackend, ReferenceExecutable

F = TensorProto.FLOAT


class _Sleepy(ReferenceExecutable):
    """Reference kernels plus a real delay per op of the listed kinds: a genuinely slow device."""

    def __init__(self, program: Program, slow: frozenset[A.Kind], delay_s: float) -> None:
        super().__init__(program)
        self.n_slow = sum(op.kind in slow for op, _ in program.ops)
        self.delay_s = delay_s

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        time.sleep(self.delay_s * self.n_slow)
        return super().run(inputs)


def sleepy_backend(name: str, slow: set[A.Kind], delay_s: float = 0.002,
                   lacks: frozenset[A.Kind] = frozenset()) -> type[ReferenceBackend]:
    """A backend class (not an oracle) that claims peak efficiency for everything (so a fixed
    preference or an uncalibrated model would pick it) but is slow on ``slow`` kinds and cannot
    run ``lacks``."""
    kinds = frozenset(slow)

    class Sleepy(ReferenceBackend):
        version = "test"
        oracle = False

        def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
            if not super().algorithms(op) or op.kind in lacks:
                return ()
            return (Algorithm("claims-fast", lambda o: Cost(o.flops(), o.bytes_moved(), 1, 1.0)),)

        def compile(self, program: Program, *, threads: int | None = None) -> Executable:
            return _Sleepy(program, kinds, delay_s)

    Sleepy.name = name
    return Sleepy


def mlp() -> bytes:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}")
             for i in range(3)]
    nodes = []
    src = "x"
    for i in range(3):
        nodes += [helper.make_node("MatMul", [src, f"w{i}"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        src = f"r{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, [8, 64])],
                          [helper.make_tensor_value_info(src, F, [8, 64])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def registry_with(monkeypatch):
    """A fresh registry (real entry points) plus backends registered through the plugin API."""
    reg = Registry()
    monkeypatch.setattr("walle_core.runtime.model.registry", lambda: reg)

    def add(*classes: type[ReferenceBackend], only: str) -> Registry:
        for cls in classes:
            reg.register(cls)
        monkeypatch.setenv("WALLE_BACKENDS", only)
        return reg

    return add


def test_search_routes_around_a_slow_backend(cache, registry_with):
    registry_with(sleepy_backend("sluggish", set(A.Kind)), sleepy_backend("brisk", set()),
                  only="sluggish,brisk")
    m = walle_core.load(mlp())
    assert m.backend_names == ["sluggish", "brisk"]
    x = np.ones((8, 64), np.float32)
    m.run({"x": x})
    steps = m.plan_for({"x": x}).stage.steps
    assert {s.backend for s in steps} == {"brisk"}
    decisions = m.searcher.last if m.searcher else []
    assert decisions and all(d.runner_up and d.runner_up.backend.name == "sluggish" for d in decisions)


def test_the_oracle_runs_only_what_no_other_backend_runs(cache, registry_with):
    """The reference interpreter is the conformance oracle: under ``auto`` it runs only the ops
    no other backend runs, however its calibrated probes price the rest (it priced yolov5's
    6x6 stride-2 stem at 105 µs; it ran 1.5 ms and auto lost to the cpu alone by 2-3x), and it
    has no whole plan of its own."""
    assert ReferenceBackend.oracle
    registry_with(sleepy_backend("noreduce", {A.Kind.MATMUL}, lacks=frozenset({A.Kind.REDUCE})),
                  only="noreduce,reference")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                           helper.make_node("ReduceMax", ["h"], ["y"], axes=[1])], "mm_reduce",
                          [helper.make_tensor_value_info("x", F, [8, 64])],
                          [helper.make_tensor_value_info("y", F, [8, 1])], [w])
    onnx_model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    m = walle_core.load(onnx_model)
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"],
                               walle_core.load(onnx_model, backend="reference").run({"x": x})["y"], rtol=1e-5)
    # one (backend, algorithm) per op once the oracle is only a fallback: nothing to calibrate
    assert {s.backend for s in m.plan_for({"x": x}).stage.steps} == {"noreduce", "reference"}
    assert m.searcher is not None and m.searcher.last_result is None
    decisions = m.explain({"x": x})  # the search itself
    where = {(d.op.kind, d.chosen.backend.name) for d in decisions}
    assert where == {(A.Kind.MATMUL, "noreduce"), (A.Kind.REDUCE, "reference")}
    matmuls = [d for d in decisions if d.op.kind == A.Kind.MATMUL]
    assert all(len(d.candidates) == 1 and "oracle" in d.skipped["reference"] for d in matmuls)
    assert m.searcher.last_result is not None and m.searcher.last_result.plan("reference") is None


def test_search_finds_a_mix_of_backends(cache, registry_with):
    # "mm" is slow at everything but MatMul, "ew" only at MatMul: the best plan uses both. The
    # mixed plan pays five more programs and their transfers, each calibrated from a few short
    # timings that a loaded machine (load average 12 on 2 cores) can delay by a few ms; a slow
    # op's delay is kept well above that.
    delay = 0.006
    registry_with(sleepy_backend("mm", set(A.Kind) - {A.Kind.MATMUL}, delay),
                  sleepy_backend("ew", {A.Kind.MATMUL}, delay), only="mm,ew")
    m = walle_core.load(mlp())
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    y = m.run({"x": x})
    ref = walle_core.load(mlp(), backend="reference").run({"x": x})
    np.testing.assert_allclose(next(iter(y.values())), next(iter(ref.values())), rtol=1e-5)
    assert m.searcher is not None
    by_kind = {(d.op.kind, d.chosen.backend.name) for d in m.searcher.last}
    assert by_kind == {(A.Kind.MATMUL, "mm"), (A.Kind.UNARY, "ew")}


def test_calibration_is_cached_and_rebuilt_when_corrupt_or_stale(cache):
    backend = ReferenceBackend()
    first = calibration_for(backend)
    path = cache_path(backend)
    assert path.is_file() and load_cached(backend) == first
    assert first.op_overhead_s > 0 and first.bandwidth_Bps > 0 and first.rates
    path.write_text("{ not json")
    assert load_cached(backend) is None
    rebuilt = calibration_for(backend)
    assert load_cached(backend) == rebuilt
    stale = json.loads(path.read_text())
    stale["version"] = "an older backend"
    path.write_text(json.dumps(stale))
    assert load_cached(backend) is None


def test_unavailable_or_uncalibratable_backends_are_skipped_with_reason(cache):
    class Broken(ReferenceBackend):
        name = "broken"
        oracle = False  # a real backend that fails: the oracle (calibrated then) runs everything

        def compile(self, program: Program, *, threads: int | None = None) -> Executable:
            raise RuntimeError("kernel compiler crashed")

    s = Searcher([Broken(), ReferenceBackend()])
    b = walle_core.decompose.builder.Builder(lambda op: None)
    x = b.tensor((4,), np.float32)
    b.unary("relu", x)
    b.matmul(b.tensor((2, 2), np.float32), b.tensor((2, 2), np.float32))
    decisions = s.decide(b.ops, set())
    assert all(d.chosen.backend.name == "reference" for d in decisions)
    assert "kernel compiler crashed" in decisions[0].skipped["broken"]


def test_a_backend_that_fails_to_prepare_kernels_is_dropped_with_reason(cache, registry_with):
    fast = sleepy_backend("flaky", set(), 0.0)

    class Flaky(fast):  # type: ignore[misc, valid-type]
        def compile(self, program: Program, *, threads: int | None = None) -> Executable:
            if any(t.shape == (8, 64) for op, _ in program.ops for t in op.outputs):
                raise RuntimeError("kernel for 8x64 failed to build")
            return super().compile(program, threads=threads)

    Flaky.name = "flaky"
    registry_with(Flaky, sleepy_backend("sluggish", set(A.Kind)), only="flaky,sluggish")
    m = walle_core.load(mlp())
    x = np.ones((8, 64), np.float32)
    y = m.run({"x": x})
    ref = walle_core.load(mlp(), backend="reference").run({"x": x})
    np.testing.assert_allclose(next(iter(y.values())), next(iter(ref.values())), rtol=1e-5)
    assert m.backend_names == ["sluggish"]
    assert "kernel for 8x64 failed to build" in m.dropped["flaky"]


def test_calibration_prefers_device_timings_when_the_backend_reports_them(cache):
    """A backend whose executables report kernel times (profiling events, timestamp queries)
    is calibrated from those, not from host wall-clock time."""

    class Timed(ReferenceExecutable):
        def last_timings(self) -> list[tuple[str, float]]:
            # 1 ns per flop of every op: a device that the host clock would not see.
            return [(op.kind.value, max(op.flops(), 1.0) * 1e-9) for op, _ in self.program.ops]

    class TimedBackend(ReferenceBackend):
        name = "timed"

        def compile(self, program: Program, *, threads: int | None = None) -> Executable:
            return Timed(program)

    cal = calibration_for(TimedBackend())
    assert cal.rates and all(abs(r - 1e9) / 1e9 < 1e-6 for r in cal.rates.values()), cal.rates


@pytest.mark.parametrize("zoo_model", ["efficientnet_lite", "regnet", "gru_speech"])
def test_a_single_backend_plan_is_the_named_backends_plan(zoo_model):
    """Where the search keeps a graph on one backend, it runs exactly what naming that backend
    runs: same ops, same algorithms (the cpu's blocked convs keep their layout run)."""
    from tests.zoo.export import export, inputs
    from walle_core.plan.planner import fixed_preference

    reg = walle_core.plugins.registry()
    backends = [reg.get("cpu"), reg.get("reference")]
    model = walle_core.load(export(zoo_model), backend="cpu")
    ops, keep = model.atomic_ops(inputs(zoo_model))
    result = Searcher(backends).search(ops, keep)
    cpu_plan = result.plan("cpu")
    assert cpu_plan is not None and result.chosen is cpu_plan, result.why
    forced = fixed_preference(backends)(ops, keep)
    assert [(id(op), b.name, a.name) for op, b, a in forced] == \
        [(id(op), b.name, a.name) for op, b, a in cpu_plan.assignment]


def test_auto_on_the_zoo_keeps_off_the_oracle_and_under_its_best_single_backend_plan():
    """On every zoo model, with the cpu and the reference interpreter: no op runs on the oracle
    where the cpu runs it, the oracle has no plan of its own, and the chosen plan is predicted
    at most as long as the best single-backend plan (a mixed plan only where it beats it). With
    the oracle a candidate, yolov5's stem went to it and auto ran 2-3x the cpu alone."""
    from tests.zoo import ZOO
    from tests.zoo.export import export, inputs
    from walle_core.search import MIXED

    reg = walle_core.plugins.registry()
    cpu = reg.get("cpu")
    searcher = Searcher([cpu, reg.get("reference")])
    for name in ZOO:
        model = walle_core.load(export(name), backend="cpu")
        ops, keep = model.atomic_ops(inputs(name))
        result = searcher.search(ops, keep)
        assert result.plan("reference") is None, name
        best = min(p.predicted_s for p in result.plans if p.label != MIXED)
        assert result.chosen.predicted_s <= best, (name, result.why)
        oracle = [d.op.kind.value for d in result.chosen.decisions
                  if d.chosen.backend.name == "reference" and cpu.algorithms(d.op)]
        assert not oracle, (name, oracle)


@pytest.mark.serial  # compares measured run times: scripts/test.sh runs it alone
@pytest.mark.parametrize("zoo_model", ["yolov5", "mobilenetv3", "gpt2"])
def test_auto_runs_no_slower_than_the_cpu_alone(zoo_model, monkeypatch):
    """``backend="auto"`` with the cpu and the oracle against ``backend="cpu"``, best of
    interleaved runs: within 1.5x (load moves single runs; the oracle stem ran 2-3x)."""
    from tests.zoo.export import export, inputs

    monkeypatch.setenv("WALLE_BACKENDS", "cpu,reference")
    feeds = inputs(zoo_model)
    models = {b: walle_core.load(export(zoo_model), backend=b) for b in ("cpu", "auto")}
    best = dict.fromkeys(models, float("inf"))
    for m in models.values():
        m.run(feeds)
    for _ in range(10):
        for b, m in models.items():
            t0 = time.perf_counter()
            m.run(feeds)
            best[b] = min(best[b], time.perf_counter() - t0)
    assert best["auto"] < 1.5 * best["cpu"], best


@pytest.mark.serial  # compares measured run times: scripts/test.sh runs it alone
@pytest.mark.parametrize("zoo_model", ["mobilenetv3", "vit_tiny", "gru_speech", "ctr"])
def test_the_cpu_plan_is_predicted_within_a_loose_bound_of_its_run(zoo_model):
    """The calibrated cost of the whole chosen plan against the plan run on this machine's cpu.
    The bound is loose (3x): a shared CI machine's load moves both sides; the simulated devices
    (tests/test_search_sim.py) hold every plan to 25%."""
    from tests.zoo.export import export, inputs

    reg = walle_core.plugins.registry()
    feeds = inputs(zoo_model)
    model = walle_core.load(export(zoo_model), backend="cpu")
    ops, keep = model.atomic_ops(feeds)
    predicted = Searcher([reg.get("cpu"), reg.get("reference")]).search(ops, keep).chosen.predicted_s
    measured = min(model.time_run(feeds, repeat=1) for _ in range(30))  # load only adds time
    assert measured / 3 < predicted < measured * 3, (predicted, measured)


@pytest.mark.serial  # compares measured run times: scripts/test.sh runs it alone
def test_whole_cpu_plans_of_the_zoo_are_predicted_without_bias():
    """Every zoo model's cpu plan, predicted against its run (best of interleaved rounds).
    Bias is a model priced off the others: three models in four lie within 2x of the zoo's
    median ratio. The median itself is held to 3x only, like one plan's: a shared CI machine's
    load between calibration and the runs moves every model alike (CI once read a median of 0.57,
    every model between 0.35 and 1.04), which changes no choice among one machine's plans.
    ``bench/search_quality.py --zoo`` prints the table; on a quiet machine the target is 25%."""
    from tests.zoo import ZOO
    from tests.zoo.export import export, inputs

    reg = walle_core.plugins.registry()
    searcher = Searcher([reg.get("cpu"), reg.get("reference")])
    predicted, runs = {}, {}
    for name in ZOO:
        feeds = inputs(name)
        model = walle_core.load(export(name), backend="cpu")
        ops, keep = model.atomic_ops(feeds)
        predicted[name] = searcher.search(ops, keep).chosen.predicted_s
        model.run(feeds)
        runs[name] = (model, feeds)
    best = dict.fromkeys(ZOO, float("inf"))
    for _ in range(5):  # in turns: load that comes and goes hits every model alike
        for name, (model, feeds) in runs.items():
            for _ in range(3):
                t0 = time.perf_counter()
                model.run(feeds)
                best[name] = min(best[name], time.perf_counter() - t0)
    ratios = {n: predicted[n] / best[n] for n in ZOO}
    median = float(np.median(list(ratios.values())))
    assert 1 / 3 <= median <= 3, ratios
    assert sum(0.5 <= r / median <= 2.0 for r in ratios.values()) >= 0.75 * len(ZOO), ratios


def test_every_calibration_probe_is_a_valid_op_for_every_backend():
    """A malformed probe (a conv with no groups) made GPU backends' lowering raise, so their
    whole calibration failed and auto dropped them."""
    from walle_core.search.calibrate import LEVELS, _probes

    backends = walle_core.plugins.registry().available()
    for level in range(LEVELS):
        for op in _probes(level):
            if isinstance(op, A.Conv2D):
                x, w = op.inputs[0], op.inputs[1]
                assert op.groups >= 1 and w.shape[1] * op.groups == x.shape[1], (level, op.groups)
            for backend in backends:
                backend.algorithms(op)  # lists without raising


def _conv(b: Builder, x: A.Tensor, out_ch: int, k: int, stride: int = 1, groups: int = 1) -> A.Tensor:
    n, c, h, w = x.shape
    weights = np.random.default_rng(0).standard_normal((out_ch, c // groups, k, k)).astype(np.float32)
    y = b.tensor((n, out_ch, (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1),
                 np.float32)
    b.emit(A.Conv2D([x, b.const(weights)], [y], strides=(stride, stride), pads=(k // 2,) * 4,
                    groups=groups))
    return y


def test_buckets_tell_strided_grouped_convs_and_pools_on_blocked_tensors_apart() -> None:
    """A grouped conv with stride 2 runs about twice as long per output as with stride 1 (the
    regnet and ghostnet convs were priced at half their time), and a pool over a channel-blocked
    tensor is another kernel than one over NCHW (3-4x faster on the cpu)."""
    from walle_core.search.calibrate import _builder, op_key

    b = _builder()
    x = b.tensor((1, 32, 8, 8), np.float32)
    one, two = _conv(b, x, 32, 3, 1, groups=4), _conv(b, x, 32, 3, 2, groups=4)
    assert op_key(b.ops[0], "im2col+gemm") == "Conv2D:grp/im2col+gemm"
    assert op_key(b.ops[1], "im2col+gemm") == "Conv2D:grp:s2/im2col+gemm"
    assert one.shape != two.shape
    plain = A.Pool2D([x], [b.tensor((1, 32, 4, 4), np.float32)], fn="max", kernel=(2, 2), strides=(2, 2))
    blocked = A.Pool2D([b.tensor((1, 2, 8, 8, 16), np.float32)], [b.tensor((1, 2, 4, 4, 16), np.float32)],
                       fn="max", kernel=(2, 2), strides=(2, 2))
    assert op_key(plain, "direct") == "Pool2D/direct"
    assert op_key(blocked, "direct") == "Pool2D:blocked/direct"


def test_a_bucket_takes_the_work_measure_its_sweep_fits() -> None:
    """A sweep whose declared traffic, weighed at the device's balance, makes throughput fall
    by 10x with size (a Winograd kernel's transform tiles, which stay in cache) is fitted on
    its arithmetic: the monotone fit had pooled it into one rate and priced its large sizes at
    half their time. A sweep whose arithmetic and traffic grow together keeps the balance."""
    from walle_core.search.calibrate import BucketFit

    balance = 10.0
    # seconds follow the arithmetic at 50 GFLOP/s; the declared bytes stay large at small sizes
    skewed = [[f, b, n, f / 50e9] for f, b, n in
              ((1e5, 2e5, 128), (4e5, 3e5, 1568), (1.5e6, 5e5, 6272), (4.5e6, 1.3e6, 25088))]
    fit = BucketFit.fit(skewed, balance, 0.0)
    assert fit.balance < balance
    for f, b, n, t in skewed:
        assert fit(f, b, n) == pytest.approx(t, rel=0.05)
    even = [[f, f / 4, n, f / 50e9] for f, n in ((1e5, 128), (4e5, 1568), (1.6e6, 6272))]
    assert BucketFit.fit(even, balance, 0.0).balance == balance


def test_the_cpu_reports_what_its_layout_pass_runs() -> None:
    """runs_as: a pool after a blocked conv runs on the blocked tensor (its own bucket); a conv
    picked blocked whose layout change would not pay runs its plain algorithm; the search's plan
    cost prices the rewritten ops as they run and the layout changes (lowering_seconds)."""
    from walle_core.plan.planner import choose
    from walle_core.search.calibrate import _builder, lowering_seconds, op_key

    cpu = walle_core.plugins.registry().get("cpu")
    if not cpu.availability().available:
        pytest.skip("cpu kernels are not built")
    b = _builder()
    x = b.tensor((1, 3, 16, 16), np.float32)  # narrow: the blocked stem conv reads it directly
    y = _conv(b, x, 32, 3)
    pooled = b.tensor((1, 32, 8, 8), np.float32)
    b.emit(A.Pool2D([y], [pooled], fn="max", kernel=(2, 2), strides=(2, 2)))
    picks = [(op, choose(op, [cpu])[1]) for op in b.ops]
    assert picks[0][1].name == "nchwc"
    runs = cpu.runs_as(Program(picks, [x], [pooled]))
    assert runs is not None and len(runs) == 2
    assert runs[0] == picks[0]
    assert len(runs[1][0].inputs[0].shape) == 5 and op_key(runs[1][0], "direct") == "Pool2D:blocked/direct"

    b = _builder()
    wide = b.tensor((1, 32, 8, 8), np.float32)  # a plain input: changing its layout does not pay
    out = _conv(b, wide, 32, 3)
    lone = b.ops[0]
    nchwc = next(a for a in cpu.algorithms(lone) if a.name == "nchwc")
    ran = cpu.runs_as(Program([(lone, nchwc)], [wide], [out]))
    assert ran is not None and ran[0][0] is lone and ran[0][1].name != "nchwc"
    # an algorithm the backend substitutes keeps the pick's price; a rewritten op is priced as
    # it runs (here: a pool at 1 on a blocked tensor, 3 on a plain one; layout changes at 0.5)
    assert lowering_seconds(cpu, Program([(lone, nchwc)], [wide], [out]),
                            lambda op, algo: 1.0 if algo.name == "nchwc" else 3.0) == 0.0

    def price(op: A.Op, algo: Algorithm) -> float:
        if isinstance(op, A.Pool2D):
            return 1.0 if len(op.inputs[0].shape) == 5 else 3.0
        return 0.5 if isinstance(op, A.Raster) else 0.0

    changes = len(cpu.added_ops(Program(picks, [x], [pooled])))
    assert lowering_seconds(cpu, Program(picks, [x], [pooled]), price) == pytest.approx(
        0.5 * changes - 2.0)


def test_a_rate_curve_rises_and_falls_only_past_a_clear_cliff() -> None:
    """Throughput rises with parallel items; past a peak it may fall (a working set leaving a
    CPU's caches), and then the fall stays at the large sizes instead of being pooled into the
    small ones. A dip of noise on the rise is pooled, not taken for a fall."""
    from walle_core.search.curve import Curve

    cliff = Curve.fit([(1.25e4, 205.0), (2.5e4, 217.0), (1e5, 194.0), (4e5, 29.8)])
    assert cliff(1.25e4) == pytest.approx(205.0, rel=0.05)  # the rising fit priced it at 127
    assert cliff(4e5) == pytest.approx(29.8, rel=0.05)
    assert Curve.fit([(1.25e4, 205.0), (4e5, 29.8)], falls=False)(1.25e4) < 100
    noisy = Curve.fit([(1.0, 10.0), (2.0, 30.0), (4.0, 24.0), (8.0, 40.0)])
    ys = [y for _, y in noisy.points]
    assert ys == sorted(ys) and ys[-1] == pytest.approx(40.0)


def test_a_reduction_depth_between_two_probed_depths_is_priced_between_them() -> None:
    """A 1x1 conv is probed shallow and deep (256 channels); a dense kxk conv likewise; a
    constant product square (reducing over sqrt(outputs)) and shallow (32). An op reducing over
    a depth between is priced between its bucket's two fits, geometrically in the depth, the
    probes' depths read from their points at the op's size: at the step between two buckets,
    64-127 channels ran at 0.7x of their shallow price and 128-255 at 1.4x of their deep one;
    products over 33-127 values at 1.6-2.8x their square probe's price; 1-D convs over 324-432
    values at 1.4-1.6x the price of a shallow kxk probe that reduced over 72 at their size."""
    from walle_core.search.calibrate import Calibration, _builder

    def pts(rate: float, depth: Callable[[float], float]) -> list[list[float]]:
        # [flops, bytes, items, seconds] of a flat rate, the probe reducing over depth(items)
        return [[2 * depth(n) * n, 0.0, n, 2 * depth(n) * n / rate] for n in (1024.0, 4096.0, 65536.0)]

    cal = Calibration("t", "1", "f", 1e-6, 1e-6, 1e11, 0.0, 1e12, 0.0, 1e12, curves={
        "Conv2D:1x1/a": pts(1e10, lambda n: 32), "Conv2D:1x1:deep/a": pts(1e11, lambda n: 256),
        # the shallow kxk probe deepens with its size: 72 values at 1024 outputs, 288 at 65536
        "Conv2D:kxk/a": pts(1e10, lambda n: 72 if n < 65536 else 288),
        "Conv2D:kxk:deep/a": pts(1e11, lambda n: 576),
        "MatMul:shallow/a": pts(1e10, lambda n: 32), "MatMul/a": pts(1e11, math.sqrt)})
    b = _builder()
    algo = Algorithm("a")

    def conv_s(channels: int, k: int = 1, hw: int = 32) -> float:
        _conv(b, b.tensor((1, channels, hw, hw), np.float32), 64, k)
        op = next(o for o in reversed(b.ops) if isinstance(o, A.Conv2D))
        return cal.op_seconds(op, algo) / op.flops()

    assert conv_s(16) == pytest.approx(conv_s(32)) == pytest.approx(1e-10, rel=0.05)
    assert conv_s(256) == pytest.approx(conv_s(512)) == pytest.approx(1e-11, rel=0.05)
    assert conv_s(90) == pytest.approx(np.sqrt(1e-10 * 1e-11), rel=0.05)  # 90 = sqrt(32 * 256)
    # 3x3 over 24 channels (216 values) on 1024 outputs: between the probes' 72 and 576 there;
    # on 65536 outputs the shallow probe reduced over 288: its own price
    assert conv_s(24, 3, 4) == pytest.approx(1e-10 ** (1 - math.log(3) / math.log(8))
                                             * 1e-11 ** (math.log(3) / math.log(8)), rel=0.05)
    assert conv_s(24, 3, 32) == pytest.approx(1e-10, rel=0.05)

    def matmul_s(k: int) -> float:
        b.matmul(b.tensor((256, k), np.float32), b.const(np.ones((k, 256), np.float32)))
        op = next(o for o in reversed(b.ops) if isinstance(o, A.MatMul))
        return cal.op_seconds(op, algo) / op.flops()

    assert matmul_s(32) == pytest.approx(1e-10, rel=0.05)  # its own (shallow) bucket
    assert matmul_s(256) == pytest.approx(matmul_s(1024)) == pytest.approx(1e-11, rel=0.05)
    assert 1e-11 < matmul_s(64) < matmul_s(40) < 1e-10


def test_a_rewritten_program_is_priced_as_it_runs() -> None:
    """An activation folded into its conv's epilogue keeps the price it had chained to the
    conv (a GELU's erf is not free in an epilogue); the fused op replaces the conv's price."""
    from walle_core.plan.rewrite import apply
    from walle_core.search.calibrate import rewrite_seconds

    cpu_like = Rewrites(activations=frozenset({"relu", "tanh"}))
    b = Builder(lambda op: None)
    x = b.tensor((1, 8, 8, 8), np.float32)
    y = b.unary("tanh", _conv(b, x, 8, 3))
    algo = Algorithm("a")
    picks = [(op, algo) for op in b.ops]
    rewritten = apply(picks, {y.id}, cpu_like)
    assert len(rewritten) == 1 and rewritten[0][0] is not picks[0][0]

    def price(op: A.Op, _algo: Algorithm, chained: bool) -> float:
        return 5.0 if isinstance(op, A.Conv2D) else 0.5 if chained else 2.0

    # the tanh was charged chained (0.5) and still costs that much in the epilogue
    assert rewrite_seconds(picks, rewritten, {y.id}, price) == pytest.approx(0.0)
    assert rewrite_seconds(picks, picks, {y.id}, price) == 0.0


def test_a_binary_function_pays_its_arithmetic_per_element_beyond_an_addition() -> None:
    """``Binary`` is swept with add; a general pow is a powf per element, charged its calibrated
    seconds per element on top, lone or fused into its producer's pass alike. A constant
    exponent 2 or 3 is its own function (products on the cpu)."""
    from walle_core.search.calibrate import Calibration, _builder, binary_fn

    pts = [[n, 12.0 * n, n, 1e-7 + n * 1e-11] for n in (256.0, 4096.0, 65536.0)]
    cal = Calibration("t", "1", "f", 1e-6, 1e-6, 1e11, 0.0, 1e12, 0.0, 1e12,
                      curves={"Binary/a": pts, "Binary/a~chained": pts},
                      binary_extra_s={"pow": 4e-9, "pow:2": 0.0, "pow:3": 1e-10})
    b = _builder()
    algo = Algorithm("a")
    x = b.tensor((2560,), np.float32)

    def emit(fn: str, operand: float) -> A.Binary:
        b.binary(fn, x, b.const(operand, np.float32))
        op = b.ops[-1]
        assert isinstance(op, A.Binary)
        return op

    add, general, cube, square = emit("add", 3.0), emit("pow", 1.5), emit("pow", 3.0), emit("pow", 2.0)
    assert [binary_fn(op) for op in (general, cube, square)] == ["pow", "pow:3", "pow:2"]
    for chained in (False, True):
        base = cal.op_seconds(add, algo, chained=chained)
        assert cal.op_seconds(general, algo, chained=chained) == pytest.approx(base + 2560 * 4e-9)
        assert cal.op_seconds(cube, algo, chained=chained) == pytest.approx(base + 2560 * 1e-10)
        assert cal.op_seconds(square, algo, chained=chained) == pytest.approx(base)
