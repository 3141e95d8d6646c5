"""The search against a simulated heterogeneous device (tests/simdevice): a GPU-like and a CPU-like
backend whose times follow a recorded profile on a virtual clock, so every decision is
deterministic. Profiles: ``h200`` (fitted to the H200 evidence) and ``phone`` (a slow GPU next
to a small CPU)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import walle_core
from tests.simdevice import SimBackend, VirtualClock, load_profile, sim_backends
from walle_core import plugins
from walle_core.plugins import Registry
from walle_core.search import MIXED, CostModel, Searcher, calibration_for
from walle_core.search.cost import PlanCost
from walle_core.search.plans import Plan, predicted_choice

F = TensorProto.FLOAT
rng = np.random.default_rng(0)


def _model(nodes: list, inputs: list, output: str, inits: list, out_shape: list) -> bytes:
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, F, out_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _w(name: str, *shape: int) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)


@functools.cache
def mlp(width: int = 1024, depth: int = 4) -> bytes:
    nodes, inits, src = [], [], "x"
    for i in range(depth):
        inits += [_w(f"w{i}", width, width), _w(f"b{i}", width)]
        nodes += [helper.make_node("MatMul", [src, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        src = f"r{i}"
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", width])], src, inits, ["n", width])


@functools.cache
def convnet() -> bytes:
    inits = [_w("c1", 32, 16, 3, 3), _w("c2", 32, 32, 3, 3), _w("dw", 32, 1, 3, 3), _w("fc", 32, 10)]
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Conv", ["r2", "dw"], ["h3"], pads=[1, 1, 1, 1], group=32),
        helper.make_node("MaxPool", ["h3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", 16, 32, 32])], "y", inits, ["n", 10])


@functools.cache
def attention(seq: int = 64, dim: int = 128) -> bytes:
    """One attention block with a softmax, which only the CPU-like device claims as a fused kernel."""
    inits = [_w(n, dim, dim) for n in ("wq", "wk", "wv", "wo")]
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "scale"))
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]]) for w in ("wq", "wk", "wv")]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("MatMul", ["a", "wo"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["y"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", seq, dim])], "y", inits,
                  ["n", seq, dim])


@functools.cache
def tiny_chain(length: int = 24) -> bytes:
    """Many element-wise ops on a few numbers (like a recurrent cell's gates): launch-bound."""
    nodes, src = [], "x"
    inits = [numpy_helper.from_array(np.float32(0.5), "h")]
    for i in range(length):
        op = ("Sigmoid", "Tanh", "Mul")[i % 3]
        ins = [src, "h"] if op == "Mul" else [src]
        nodes.append(helper.make_node(op, ins, [f"t{i}"]))
        src = f"t{i}"
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", 16])], src, inits, ["n", 16])


MODELS: dict[str, tuple[Callable[[], bytes], tuple[int, ...]]] = {
    "mlp": (mlp, (1024,)), "convnet": (convnet, (16, 32, 32)), "attention": (attention, (64, 128)),
    "tiny_chain": (tiny_chain, (16,)),
}


BATCHES = (1, 16, 64)


def feeds(model: str, batch: int) -> dict[str, np.ndarray]:
    shape = MODELS[model][1]
    return {"x": np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)}


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], list[SimBackend]]]:
    """``use(profile)``: auto-mode models see only that profile's simulated backends (registered
    through the plugin registry), calibrated once per module on the virtual clock."""
    registries: dict[str, Registry] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WALLE_CACHE_DIR", str(tmp_path_factory.mktemp("sim-cache")))
        mp.setenv("WALLE_BACKENDS", "simcpu,simgpu")

        def use(name: str) -> list[SimBackend]:
            if name not in registries:
                reg = registries[name] = Registry()
                for cls in sim_backends(load_profile(name)):
                    reg.register(cls)
            mp.setattr(plugins, "_registry", registries[name])
            found = registries[name].available()
            assert [b.name for b in found] == ["simcpu", "simgpu"]
            return [b for b in found if isinstance(b, SimBackend)]

        yield use


def load(model: str, **kw: float) -> walle_core.Model:
    return walle_core.load(MODELS[model][0](), **kw)


def run_steps(m: walle_core.Model, f: dict[str, np.ndarray]) -> list[str]:
    m.run(f)
    return [s.backend for s in m.plan_for(f).stage.steps]


def clock_of(m: walle_core.Model) -> VirtualClock:
    b = m.backends[0]
    assert isinstance(b, SimBackend)
    return b.clock()


# ----------------------------------------------------------------------------- placement


def test_large_batches_run_the_whole_graph_on_the_gpu(profiles):
    profiles("h200")
    for model, batch in (("mlp", 256), ("convnet", 64), ("attention", 64)):
        m = load(model)
        assert run_steps(m, feeds(model, batch)) == ["simgpu"], model


def test_tiny_graphs_stay_on_the_cpu(profiles):
    profiles("h200")
    for model, batch in (("mlp", 1), ("tiny_chain", 1), ("tiny_chain", 64), ("attention", 1)):
        m = load(model)
        assert run_steps(m, feeds(model, batch)) == ["simcpu"], (model, batch)


def test_the_choice_depends_on_the_input_signature(profiles):
    profiles("h200")
    m = load("mlp")
    assert run_steps(m, feeds("mlp", 1)) == ["simcpu"]
    assert run_steps(m, feeds("mlp", 256)) == ["simgpu"]
    assert run_steps(m, feeds("mlp", 1)) == ["simcpu"]  # the batch-1 plan is still cached


def test_a_gpu_plan_expands_composites_only_the_cpu_claims(profiles):
    """The CPU-like device claims softmax; the whole-graph GPU plan runs its expansion instead of
    bouncing to the CPU for one op."""
    profiles("h200")
    m = load("attention")
    f = feeds("attention", 64)
    steps = run_steps(m, f)
    assert steps == ["simgpu"]
    assert m.searcher is not None and m.searcher.last_result is not None
    cpu_plan = m.searcher.last_result.plan("simcpu")
    assert cpu_plan is not None and any(d.op.kind.value == "Composite" for d in cpu_plan.decisions)
    assert not any(d.op.kind.value == "Composite" for d in m.searcher.last_result.chosen.decisions)
    y = m.run(f)["y"]
    ref = walle_core.load(attention(), backend="reference").run(f)["y"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("profile", ["h200", "phone"])
def test_no_ping_pong_between_backends(profiles, profile):
    profiles(profile)
    for model in MODELS:
        for batch in BATCHES:
            steps = run_steps(load(model), feeds(model, batch))
            assert len(steps) == len(set(steps)), (model, batch, steps)


@pytest.mark.parametrize("profile", ["h200", "phone"])
def test_never_loses_to_a_single_backend_and_predicts_whole_plans_within_25_percent(profiles, profile):
    """The predicted choice against every single-backend plan, all timed whole on the device; and
    every candidate plan's predicted time against its measured time."""
    profiles(profile)
    for model in MODELS:
        for batch in BATCHES:
            m = load(model)
            m.run(feeds(model, batch))
            assert m.searcher is not None and m.searcher.last_result is not None
            result = m.searcher.last_result
            m.searcher.time_plans(result)
            table = [(p.label, p.predicted_s, p.measured_s) for p in result.plans]
            singles = [p.measured_s for p in result.plans if p.label != MIXED]
            assert result.chosen.measured_s is not None and all(s is not None for s in singles)
            # predicted choice: near ties may go either way within the prediction error
            assert result.chosen.measured_s <= 1.15 * min(s for s in singles if s is not None), \
                (model, batch, table)
            for p in result.plans:
                assert p.measured_s is not None
                assert abs(p.predicted_s / p.measured_s - 1) <= 0.25, (model, batch, table)


def test_calibration_recovers_the_profile(profiles):
    """Transfers, launch and kernel costs come back from the micro-benchmarks on the device's
    clock, with the device's own kernel timers."""
    gpu = next(b for b in profiles("h200") if b.name == "simgpu")
    cal = calibration_for(gpu)
    dev = gpu.device
    assert cal.device_timed
    assert cal.h2d_Bps == pytest.approx(dev.h2d.Bps, rel=0.05)
    assert cal.d2h_Bps == pytest.approx(dev.d2h.Bps, rel=0.05)
    assert cal.h2d_latency_s == pytest.approx(dev.h2d.latency_s, rel=0.05)
    assert cal.d2h_latency_s == pytest.approx(dev.d2h.latency_s, rel=0.05)
    assert cal.op_overhead_s == pytest.approx(dev.launch_s, rel=0.05)
    # Occupancy: a large GEMM runs at many times the throughput of a small one.
    fit = cal.curve("MatMul/kernel")
    assert fit is not None
    assert fit.rate.points[-1][1] / fit.rate.points[0][1] > 20


# ----------------------------------------------------------------------------- measure mode


@pytest.mark.parametrize("profile", ["h200", "phone"])
def test_measure_mode_returns_the_fastest_plan_it_timed(profiles, profile):
    profiles(profile)
    for model, batch in (("convnet", 1), ("mlp", 256), ("attention", 64), ("tiny_chain", 16)):
        m = load(model, tune_budget_s=120.0)
        f = feeds(model, batch)
        m.run(f)
        assert m.searcher is not None and m.searcher.last_result is not None
        result = m.searcher.last_result
        timed = [p for p in result.plans if p.measured_s is not None]
        first = min(p.predicted_s for p in result.plans)
        # Every plan predicted within 4x of the best is timed whole, and the fastest timed wins.
        assert {p.label for p in timed} >= {p.label for p in result.plans if p.predicted_s <= 3.5 * first}
        assert result.chosen.measured_s == min(p.measured_s for p in timed if p.measured_s is not None)
        clock = clock_of(m)
        t0 = clock.now()
        m.run(f)  # the plan that runs is the plan that was timed
        assert clock.now() - t0 == pytest.approx(result.chosen.measured_s, rel=1e-9)


def test_measure_mode_times_whole_plans_from_its_cache(profiles):
    """A second model over the same graph reuses the plan timings instead of running them again."""
    profiles("h200")
    f = feeds("convnet", 16)
    first = load("convnet", tune_budget_s=120.0)
    first.run(f)
    clock = clock_of(first)
    t0 = clock.now()
    second = load("convnet", tune_budget_s=120.0)
    second.plan_for(f)
    assert clock.now() == t0  # nothing ran on the device: calibration and plan times were cached
    assert first.searcher is not None and second.searcher is not None
    assert first.searcher.last_result is not None and second.searcher.last_result is not None
    assert second.searcher.last_result.chosen.key == first.searcher.last_result.chosen.key


# ----------------------------------------------------------------------------- the rule


def _plan(label: str, compute: float, transfer: float, program: float) -> Plan:
    return Plan(label, [], PlanCost(compute, transfer, program, 1, (label,)))


def test_a_mixed_plan_must_beat_the_best_single_plan_by_its_own_transfers_and_10_percent():
    single = _plan("gpu", 100e-6, 10e-6, 40e-6)  # 150 µs
    close = _plan(MIXED, 90e-6, 25e-6, 30e-6)  # 145 µs, but 145 + 55 > 150
    clear = _plan(MIXED, 40e-6, 10e-6, 20e-6)  # 70 µs, 70 + 30 < 150
    cheap_split = _plan(MIXED, 138e-6, 1e-6, 1e-6)  # 140 µs: saves under 10% of 150
    assert predicted_choice([single, close])[0] is single
    assert predicted_choice([single, clear])[0] is clear
    assert predicted_choice([single, cheap_split])[0] is single


@pytest.mark.slow
def test_h200_profile_follows_the_evidence():
    """The GPU-like profile prices whole single-backend plans of the test models like the H200
    measurements (evidence/gpu-h200-2026-12-04.md): same winner where the evidence has a clear one
    (over 25% apart), the GPU/CPU ratio within a factor of 2.5, and each time within 40%."""
    from importlib import import_module

    from tests.models.common import export

    evidence = {("mobilenet_v2", 1): (2.11, 3.78), ("mobilenet_v2", 16): (17.0, 7.82),
                ("bert", 1): (3.36, 3.27), ("bert", 16): (35.6, 7.62), ("unet", 1): (1.29, 1.34)}
    profile = load_profile("h200")
    cpu, gpu = profile.device("simcpu"), profile.device("simgpu")
    for (name, batch), (cpu_ms, gpu_ms) in evidence.items():
        path, example = export(import_module(f"tests.models.{name}"))
        m = walle_core.load(path, backend="reference")
        f = {k: np.concatenate([v] * batch) for k, v in example.items()}
        ops, keep = m.atomic_ops(f)
        produced = {t.id for op in ops for t in op.outputs}
        ins = list({t.id: t for op in ops for t in op.inputs if t.value is None and t.id not in produced}.values())
        outs = [t for op in ops for t in op.outputs if t.id in keep]
        sim_cpu = cpu.program_seconds(ops, ins, outs)[0]
        sim_gpu = gpu.program_seconds(ops, ins, outs)[0]
        ratio, want = sim_gpu / sim_cpu, gpu_ms / cpu_ms
        assert 1 / 2.5 < ratio / want < 2.5, (name, batch, ratio, want)
        # each figure itself within 40% (the profile is fitted to all ten: 9-36% off; the
        # evidence's own cpu and auto runs of one plan differ by up to 23%)
        for sim_s, ms in ((sim_cpu, cpu_ms), (sim_gpu, gpu_ms)):
            assert abs(sim_s * 1e3 / ms - 1) < 0.4, (name, batch, sim_s * 1e3, ms)
        if abs(want - 1) > 0.25:
            assert (ratio < 1) == (want < 1), (name, batch, ratio, want)


def test_searcher_reports_every_candidate_plan(profiles):
    backends = profiles("phone")
    s = Searcher(backends)
    m = load("convnet")
    ops, keep = m.atomic_ops(feeds("convnet", 4))
    result = s.search(ops, keep)
    labels = [p.label for p in result.plans]
    assert labels[:2] == ["simcpu", "simgpu"]
    assert result.chosen in result.plans and result.why
    model = CostModel(s.calibrations)
    for p in result.plans:
        assert p.predicted_s == pytest.approx(p.cost.compute_s + p.cost.transfer_s + p.cost.program_s
                                              + p.cost.run_s)
        assert all(d.chosen.backend.name == p.label for d in p.decisions) or p.label == MIXED
    assert model.program("simgpu") > model.program("simcpu")


def test_walle_search_shows_every_candidate_plan(profiles, tmp_path):
    """``walle search --measure --json`` lists each single-backend plan and the chosen one with
    predicted and measured whole-plan times."""
    import json

    from typer.testing import CliRunner

    from walle_cli.app import app

    profiles("h200")
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp())
    result = CliRunner().invoke(app, ["search", str(path), "--shape", "x=256,1024", "--measure", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    plans = {p["plan"]: p for p in report["plans"]}
    assert {"simcpu", "simgpu"} <= set(plans)
    assert [p["plan"] for p in report["plans"] if p["chosen"]] == ["simgpu"]
    assert all(p["predicted_us"] > 0 and p["measured_us"] > 0 for p in plans.values())
    assert report["summary"]["why"]


EVIDENCE_CASES = (("mobilenet_v2", 1, "simcpu"), ("mobilenet_v2", 16, "simgpu"), ("bert", 16, "simgpu"))


@pytest.mark.parametrize("name,batch,winner", EVIDENCE_CASES)
def test_h200_evidence_models_are_predicted_whole_and_placed_as_measured(profiles, name, batch, winner):
    """On the H200-like profile the search places the evidence's models where the H200
    measurements say forcing a backend wins (opencl at batch 16, the cpu for batch-1
    MobileNetV2), and predicts every candidate plan within 25% of the simulated time of the
    programs the planner builds for it (no numerics: the profile's time of each program)."""
    from importlib import import_module

    from tests.models.common import export
    from walle_core.plan.planner import program_groups

    backends = profiles("h200")
    devices = {b.name: b.device for b in backends}
    path, example = export(import_module(f"tests.models.{name}"))
    ops, keep = walle_core.load(path, backend="reference").atomic_ops(
        {k: np.concatenate([v] * batch) for k, v in example.items()})
    result = Searcher(backends).search(ops, keep)
    table = []
    for p in result.plans:
        simulated = sum(devices[b.name].program_seconds([op for op, _ in picks], ins, outs)[0]
                        for b, picks, ins, outs in program_groups(p.assignment, keep))
        table.append((p.label, p.predicted_s, simulated))
    assert all(abs(pred / sim - 1) <= 0.25 for _, pred, sim in table), table
    assert result.chosen.label == winner, table
