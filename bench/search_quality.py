"""How good is the semi-auto search? Prints, in one run on this machine:

* rank correlation (Spearman) of predicted vs measured per-op time, over every candidate
  (backend, algorithm) of every op of the engine-issue models and of random synthetic graphs;
* regret per model: searched plan time vs the best plan found by measurement (each op on its
  measured-fastest candidate, and every single-backend plan), and the searched plan's predicted
  time against its measured time;
* regret on small graphs where every backend assignment is enumerated and timed;
* search cost of a 1,000-node graph with a warm calibration cache.

``--zoo`` instead checks the cost model on whole plans: for every zoo model (``tests/zoo``, or
the ones ``--zoo`` names) the cpu plan's predicted time (what the search charges for it) next to
the plan's measured time (``Model.run``, the best of interleaved rounds: load only adds time),
and how many are within 25%; beside them the sum of the plan's ops each at its best of 30 runs
(the cpu's per-op C timers), a run without the machine's load, and the prediction against it. ``--recalibrate`` times a fresh calibration first.

Usage: python bench/search_quality.py [--models mobilenet_v2,resnet18,...] [--json]
       python bench/search_quality.py --zoo [yolov5,swin,...] [--rounds 5] [--recalibrate] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import walle_core
from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend
from walle_core.decompose.builder import Builder
from walle_core.plan.planner import Assignment, prepare
from walle_core.search import CostModel, Searcher, assign
from walle_core.search.timing import time_ops

Pick = tuple[Backend, Algorithm]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def forced_model(path: Path, picks: list[Pick], feeds: dict[str, np.ndarray]) -> walle_core.Model:
    """A model that plans with exactly these (backend, algorithm) picks, in prepared-op order."""
    m = walle_core.load(path, backend="auto")
    assert m.searcher is not None

    def choose(ops: Sequence[A.Op], keep: set[int]) -> Assignment:
        flat = prepare(ops, m.backends[0], keep)
        assert len(flat) == len(picks), "prepared op list changed between explain and plan"
        return [(op, b, a) for op, (b, a) in zip(flat, picks, strict=True)]

    m.searcher.choose = choose  # type: ignore[method-assign,assignment]
    m.run(feeds)
    return m


def interleaved(fns: Mapping[str, Callable[[], object]], rounds: int = 7, per_round: int = 3) -> dict[str, float]:
    """Best time per function, taking turns so that machine load hits every plan alike. Each
    sample repeats the call until it lasts about 2 ms, so microsecond plans are not all noise."""
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, min(1000, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                for _ in range(reps[name]):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / reps[name])
    return best


def all_candidates(decision: Any) -> list[Pick]:
    return [(c.backend, a) for c in decision.candidates for a in c.backend.algorithms(decision.op)]


def model_report(name: str, path: Path, feeds: dict[str, np.ndarray],
                 pairs: list[tuple[float, float]]) -> dict[str, Any]:
    m = walle_core.load(path, backend="auto")
    decisions = m.explain(feeds)
    m.run(feeds)
    assert m.searcher is not None
    cal = CostModel(m.searcher.calibrations)
    best_picks: list[Pick] = []
    for d in decisions:
        timed = []
        for backend, algo in all_candidates(d):
            t = time_ops(backend, [(d.op, algo)], repeat=5, budget_s=0.2)
            pairs.append((cal.predict(d.op, backend.name, algo), t))
            timed.append((t, backend, algo))
        t, backend, algo = min(timed, key=lambda x: x[0])
        best_picks.append((backend, algo))
    variants: dict[str, walle_core.Model] = {"searched": m,
                                             "per-op measured best": forced_model(path, best_picks, feeds)}
    searched = same_plan_key(m, feeds)
    same: list[str] = []  # forced backends whose plan is the searched plan, op for op
    for backend in m.backends:  # each backend named, as a user would force it
        if all(backend.algorithms(d.op) for d in decisions):
            forced = walle_core.load(path, backend=backend.name)
            forced.run(feeds)
            variants[f"all {backend.name}"] = forced
            if same_plan_key(forced, feeds) == searched:
                same.append(f"all {backend.name}")
    # Slow single-backend plans get one turn: they cannot be the best anyway.
    quick = {k: v for k, v in variants.items() if k in ("searched", "per-op measured best", "all cpu")}
    plans = interleaved({k: runner(v, feeds) for k, v in quick.items()})
    plans |= interleaved({k: runner(v, feeds) for k, v in variants.items() if k not in quick},
                         rounds=1, per_round=1)
    for k in same:  # one plan timed twice: its best time is both rows' (the rest is noise)
        plans[k] = plans["searched"] = min(plans[k], plans["searched"])
    best = min(plans.values())
    result = m.searcher.last_result
    predicted = result.chosen.predicted_s if result is not None else float("nan")
    return {"model": name, "ops": len(decisions), "plans_ms": {k: v * 1e3 for k, v in plans.items()},
            "regret": plans["searched"] / best - 1.0, "predicted_ms": predicted * 1e3,
            "prediction_error": predicted / plans["searched"] - 1.0,
            "backends": sorted({d.chosen.backend.name for d in decisions}), "same_as": same}


def runner(m: walle_core.Model, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: m.run(feeds)


def same_plan_key(m: walle_core.Model, feeds: dict[str, np.ndarray]) -> list[tuple[int, str, str]]:
    """What ``m`` runs for ``feeds``: (op position, backend, algorithm) of its first stage."""
    from walle_core.plan.planner import fixed_preference

    ops, keep = m.atomic_ops(feeds)
    if m.searcher is not None:
        assignment = m.searcher.choose(ops, keep)
    else:
        assignment = fixed_preference(m.backends)(ops, keep)
    return [(i, b.name, a.name) for i, (_, b, a) in enumerate(assignment)]


def synthetic_graph(rng: np.random.Generator) -> tuple[list[A.Op], list[A.Tensor]]:
    b = Builder(lambda op: None)
    c = int(rng.choice([4, 8, 16, 32]))
    hw = int(rng.choice([8, 16, 28]))
    x = b.tensor((1, c, hw, hw), np.float32)
    inputs = [x]
    for _ in range(int(rng.integers(2, 5))):
        kind = rng.choice(["conv3", "conv1", "dw", "relu", "add", "pool"])
        if kind.startswith("conv") or kind == "dw":
            k = 3 if kind != "conv1" else 1
            groups = c if kind == "dw" else 1
            w = b.const(rng.standard_normal((c, c // groups, k, k)).astype(np.float32))
            out = b.tensor((1, c, hw, hw), np.float32)
            b.emit(A.Conv2D([x, w], [out], pads=(k // 2,) * 4, groups=groups))
            x = out
        elif kind == "relu":
            x = b.unary("relu", x)
        elif kind == "add":
            x = b.binary("add", x, b.const(rng.standard_normal((1, c, 1, 1)).astype(np.float32)))
        else:
            out = b.tensor((1, c, hw, hw), np.float32)
            b.emit(A.Pool2D([x], [out], fn="max", kernel=(3, 3), pads=(1, 1, 1, 1)))
            x = out
    return b.ops, inputs


def run_plan(picks: Sequence[Pick], ops: list[A.Op], inputs: list[A.Tensor]) -> Callable[[], None]:
    from walle_core.plan.planner import build_stage, run_stage

    keep = {ops[-1].out.id}
    backends = list(dict.fromkeys(b for b, _ in picks))
    stage = build_stage(ops, backends, keep, None,
                        lambda o, k: [(op, b, a) for op, (b, a) in zip(o, picks, strict=True)])
    rng = np.random.default_rng(0)
    feeds = {t.id: rng.standard_normal(t.shape).astype(t.dtype) for t in inputs}
    return lambda: run_stage(stage, dict(feeds))


def synthetic_report(searcher: Searcher, n_graphs: int, pairs: list[tuple[float, float]]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    rows = []
    for g in range(n_graphs):
        ops, inputs = synthetic_graph(rng)
        keep = {ops[-1].out.id}
        decisions = searcher.decide(ops, keep)
        cal = CostModel(searcher.calibrations)
        for d in decisions:
            for backend, algo in all_candidates(d):
                pairs.append((cal.predict(d.op, backend.name, algo),
                              time_ops(backend, [(d.op, algo)], repeat=5, budget_s=0.2)))
        options = [all_candidates(d) for d in decisions]
        space = list(itertools.product(*options))
        if len(space) > 200:
            continue
        chosen = tuple((d.chosen.backend, d.chosen.algorithm) for d in decisions)
        runs = {str(i): run_plan(list(p), ops, inputs) for i, p in enumerate(space)}
        runs["searched"] = run_plan(list(chosen), ops, inputs)
        # Screen every plan, then time the searched plan against the five best in turns.
        screen = interleaved(runs, rounds=1, per_round=3)
        finalists = [*sorted((k for k in screen if k != "searched"), key=screen.__getitem__)[:5], "searched"]
        final = interleaved({k: runs[k] for k in finalists}, rounds=5, per_round=3)
        rows.append({"graph": g, "ops": len(ops), "plans": len(space),
                     "regret": final["searched"] / min(final.values()) - 1.0})
    return rows


def search_cost(searcher: Searcher) -> float:
    b = Builder(lambda op: None)
    x = b.tensor((1, 64), np.float32)
    w = b.const(np.ones((64, 64), np.float32))
    while len(b.ops) < 1000:
        x = b.unary("relu", b.matmul(x, w))
    ops = b.ops[:1000]
    searcher.decide(ops, {ops[-1].out.id})  # warm caches
    t0 = time.perf_counter()
    model = CostModel(searcher.calibrations)
    assign(ops, [bk for bk in searcher.backends if bk.name in searcher.calibrations], model, {ops[-1].out.id})
    return time.perf_counter() - t0


ZOO_WITHIN = 0.25  # issue #16's target: every whole plan predicted within this share


def op_sum(model: walle_core.Model, feeds: dict[str, np.ndarray], runs: int = 30) -> float:
    """Seconds of the plan's ops, each at its best over ``runs`` runs (the cpu backend's per-op
    C timers): what a run takes when no op meets the machine's load, which a shared machine's
    whole runs rarely show; NaN where a step is not a cpu program."""
    from walle_cpu.compiler import CpuExecutable

    node = model.plan_for(feeds)
    table = {tid: feeds[name] for name, tid in node.input_ids.items()}
    total = 0.0
    for step in node.stage.steps:
        ins = [table[i] for i in step.inputs]
        if not isinstance(step.executable, CpuExecutable):
            return float("nan")
        best = [s for _, s in step.executable.profile(ins, 1)]
        for _ in range(runs - 1):
            best = [min(a, s) for a, (_, s) in zip(best, step.executable.profile(ins, 1), strict=True)]
        total += sum(best)
        for tid, arr in zip(step.outputs, step.executable.run(ins), strict=True):
            table[tid] = arr
    return total


def zoo_report(names: Sequence[str], rounds: int, recalibrate: bool) -> dict[str, Any]:
    """Predicted vs measured whole cpu plan of each zoo model, measured in interleaved rounds,
    and the sum of the plan's ops each at its best (:func:`op_sum`)."""
    from tests.zoo.export import export, inputs
    from walle_core.search.calibrate import calibration_for

    reg = walle_core.plugins.registry()
    backends = [reg.get("cpu"), reg.get("reference")]
    if recalibrate:
        calibration_for(backends[0], refresh=True)
    searcher = Searcher(backends)
    predicted: dict[str, float] = {}
    runs: dict[str, Callable[[], object]] = {}
    models: dict[str, tuple[walle_core.Model, dict[str, np.ndarray]]] = {}
    for name in names:
        feeds = inputs(name)
        model = walle_core.load(export(name), backend="cpu")
        ops, keep = model.atomic_ops(feeds)
        predicted[name] = searcher.search(ops, keep).chosen.predicted_s
        runs[name] = runner(model, feeds)
        models[name] = (model, feeds)
    measured = interleaved(runs, rounds=rounds)
    sums = {n: op_sum(*models[n]) for n in names}
    errors = [predicted[n] / measured[n] - 1.0 for n in names]
    rows: list[dict[str, Any]] = [{"model": n, "predicted_ms": predicted[n] * 1e3, "measured_ms": measured[n] * 1e3,
                                   "error": e, "op_sum_ms": sums[n] * 1e3}
                                  for n, e in zip(names, errors, strict=True)]
    cal = searcher.calibrations["cpu"]
    return {"models": rows, "within": sum(abs(e) <= ZOO_WITHIN for e in errors),
            "median_error": float(np.median(errors)), "worst": max(rows, key=lambda r: abs(r["error"])),
            "program_factor": cal.program_factor, "run_overhead_us": cal.run_overhead_s * 1e6,
            "unary_weights": cal.unary_weights}


def print_zoo(result: dict[str, Any]) -> None:
    print(f"{'model':>17} {'predicted ms':>12} {'measured ms':>12} {'error':>7}   {'best ops ms':>11} {'error':>7}")
    for r in result["models"]:
        flag = "" if abs(r["error"]) <= ZOO_WITHIN else " *"
        print(f"{r['model']:>17} {r['predicted_ms']:12.3f} {r['measured_ms']:12.3f} "
              f"{r['error'] * 100:+6.0f}%{flag:2} {r['op_sum_ms']:11.3f} "
              f"{(r['predicted_ms'] / r['op_sum_ms'] - 1) * 100:+6.0f}%")
    n = len(result["models"])
    print(f"within {ZOO_WITHIN:.0%}: {result['within']}/{n}; median error {result['median_error'] * 100:+.0f}%; "
          f"worst {result['worst']['model']} {result['worst']['error'] * 100:+.0f}%; "
          f"cpu program factor {result['program_factor']:.2f}, run overhead {result['run_overhead_us']:.1f} µs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2,resnet18,bert,lstm,unet")
    ap.add_argument("--synthetic", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--zoo", nargs="?", const="all", default=None,
                    help="predicted vs measured whole cpu plan per zoo model (all, or a comma list)")
    ap.add_argument("--rounds", type=int, default=10, help="--zoo: interleaved timing rounds")
    ap.add_argument("--recalibrate", action="store_true", help="--zoo: a fresh cpu calibration first")
    args = ap.parse_args()
    if args.zoo is not None:
        from tests.zoo import ZOO

        names = ZOO if args.zoo == "all" else [n for n in args.zoo.split(",") if n]
        zoo = zoo_report(names, args.rounds, args.recalibrate)
        if args.json:
            print(json.dumps(zoo, indent=1))
        else:
            print_zoo(zoo)
        return
    from importlib import import_module

    from tests.models.common import export

    pairs: list[tuple[float, float]] = []
    models = []
    for name in [n for n in args.models.split(",") if n]:
        path, feeds = export(import_module(f"tests.models.{name}"))
        models.append(model_report(name, path, feeds, pairs))
    model_pairs = len(pairs)
    searcher = Searcher(walle_core.plugins.registry().available())
    synthetic = synthetic_report(searcher, args.synthetic, pairs)
    result: dict[str, Any] = {
        "backends": [b.name for b in searcher.backends],
        "spearman_all": spearman([p for p, _ in pairs], [m for _, m in pairs]),
        "spearman_models": spearman([p for p, _ in pairs[:model_pairs]], [m for _, m in pairs[:model_pairs]])
        if model_pairs > 2 else None,
        "pairs": len(pairs), "models": models, "synthetic": synthetic,
        "search_1000_ops_ms": search_cost(searcher) * 1e3,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"backends: {', '.join(result['backends'])}")
    print(f"Spearman predicted vs measured per-op time: {result['spearman_all']:.3f} over {len(pairs)} "
          f"(op, candidate) pairs; models only: {result['spearman_models']:.3f}")
    for r in models:
        plans = ", ".join(f"{k} {v:.2f} ms" for k, v in r["plans_ms"].items())
        print(f"{r['model']:>13}: regret {r['regret'] * 100:+.1f}%  uses {'+'.join(r['backends'])}  "
              f"predicted {r['predicted_ms']:.2f} ms ({r['prediction_error'] * 100:+.0f}% of measured)  [{plans}]"
              + (f"  (searched plan = {', '.join(r['same_as'])}, op for op)" if r["same_as"] else ""))
    for r in synthetic:
        print(f"  synthetic #{r['graph']}: {r['ops']} ops, {r['plans']} plans enumerated, "
              f"regret {r['regret'] * 100:+.1f}%")
    print(f"search of a 1,000-op graph (warm calibration): {result['search_1000_ops_ms']:.1f} ms")


if __name__ == "__main__":
    main()
