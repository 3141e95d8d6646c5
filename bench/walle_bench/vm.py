"""VM benchmarks, measured in one run: start latency, inference throughput, subinterpreters.

Run as ``python -m walle_bench.vm`` (``walle bench vm --json`` does that): BLAS must be
single-threaded before numpy loads, so that 1-vs-2 worker figures measure the VM's parallelism and
not OpenBLAS's.

Worker-scaling figures are only meaningful with the machine's load next to them, so every timed
phase records how many cores other processes kept busy (:mod:`walle_bench.machine`), and the
1- and 2-worker phases alternate over several rounds (1,2 then 2,1, ...) so that a load change
hits both sides; the reported ratio is the median over rounds, with its spread.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from walle_bench import machine

FEATURE_CODE = """
import walle
counts = {}
for i in range(200000):
    key = (i * 7919) % 97
    counts[key] = counts.get(key, 0) + i % 13
walle.output("n", len(counts))
"""

IMAGE = 160  # the conv net's input side
INFERENCES_PER_RUN = 3
INFER_CODE = f"""
import numpy as np
import walle
x = np.full((1, 3, {IMAGE}, {IMAGE}), 0.5, np.float32)
for _ in range({INFERENCES_PER_RUN}):
    y = walle.infer({{"x": x}})["y"]
walle.output("top", int(y.argmax()))
walle.output("score", float(y.max()))
"""
CONV_CHANNELS = (3, 32, 64, 64, 128)


def conv_flops(size: int = IMAGE) -> int:
    """Multiply-adds x 2 of :func:`convnet` at batch 1 (convolutions and the classifier)."""
    flops, hw = 0, size
    for i in range(4):
        flops += 2 * hw * hw * CONV_CHANNELS[i + 1] * CONV_CHANNELS[i] * 9
        if i < 3:
            hw //= 2
    return flops + 2 * CONV_CHANNELS[-1] * 10


def convnet(seed: int = 0, size: int = IMAGE) -> bytes:
    """A small image classifier at batch 1: four 3x3 convolutions (ReLU, 2x2 max pools), global
    average pool, linear layer. ~0.46 GFLOP at 160x160: kernel time dominates a task's run."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i in range(4):
        cin, cout = CONV_CHANNELS[i], CONV_CHANNELS[i + 1]
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
        if i < 3:
            nodes.append(helper.make_node("MaxPool", [prev], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            prev = f"p{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    wf = (rng.standard_normal((CONV_CHANNELS[-1], 10)) / 12).astype(np.float32)
    inits.append(numpy_helper.from_array(wf, "wf"))
    nodes.append(helper.make_node("MatMul", ["f", "wf"], ["y"]))
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model: bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return model


def _task(root: Path, source: str, model: bytes | None = None) -> Any:
    from walle_core.task import Quotas
    from walle_core.vm import TaskSpec

    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(textwrap.dedent(source))
    if model is not None:
        (root / "model.onnx").write_bytes(model)
    return TaskSpec(name=root.name, root=root, entry="main.py", model="model.onnx" if model else None,
                    quotas=Quotas(wall_time_s=120, memory_bytes=1 << 30))


def start_latency(tmp: Path) -> dict[str, float]:
    from walle_core.vm import run_once

    spec = _task(tmp / "tiny", "import walle\nwalle.output('ok', 1)\n")
    run_once(spec)  # warm the import of the facade's modules
    thread = [run_once(spec).wall_s for _ in range(30)]
    process = [run_once(spec, mode="process").wall_s for _ in range(3)]
    t_ms, p_ms = statistics.median(thread) * 1e3, statistics.median(process) * 1e3
    return {"thread_vm_ms": t_ms, "fresh_process_ms": p_ms, "ratio": p_ms / t_ms}


def _engine_ms(model: bytes, backend: str, repeat: int = 20) -> float:
    """Milliseconds per inference of the bare engine, one kernel thread, no VM."""
    import numpy as np

    import walle_core

    m = walle_core.load(model, backend=backend, threads=1)
    x = np.full((1, 3, IMAGE, IMAGE), 0.5, np.float32)
    m.run({"x": x})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        m.run({"x": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def inference_throughput(tmp: Path, n_tasks: int = 4, runs_per_task: int = 10,
                         rounds: int = 5) -> dict[str, Any]:
    """Runs of 4 distinct conv-net tasks (batch 1) on a 1-worker vs a 2-worker scheduler."""
    from walle_core.vm import Scheduler
    from walle_core.vm.models import MODELS

    models = [convnet(seed=i) for i in range(n_tasks)]
    specs = [_task(tmp / f"infer{i}", INFER_CODE, models[i]) for i in range(n_tasks)]
    jobs = [s for _ in range(runs_per_task) for s in specs]
    # Warm-up: every task twice at once on two workers, so both workers' model instances are
    # loaded and planned (the model cache keeps them) before anything is timed.
    with Scheduler(workers=2) as sched:
        for spec in specs:
            pair = [sched.submit(spec), sched.submit(spec)]
            assert all(f.result().ok for f in pair), [f.result().error for f in pair]
    loads_before = MODELS.stats.loads
    reference: dict[str, Any] = {}
    rates: dict[int, list[float]] = {1: [], 2: []}
    others: dict[int, list[float]] = {1: [], 2: []}
    own: dict[int, list[float]] = {1: [], 2: []}
    run_ms: list[float] = []
    engine_s = {1: 0.0, 2: 0.0}
    wall_s = {1: 0.0, 2: 0.0}
    for r in range(rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            with Scheduler(workers=workers) as sched, machine.LoadMeter() as meter:
                results = [f.result() for f in [sched.submit(s) for s in jobs]]
            assert all(x.ok for x in results), [x.error for x in results if not x.ok]
            for x in results:  # same task, same answer, whichever worker ran it
                reference.setdefault(x.name, x.outputs)
                assert x.outputs == reference[x.name], (x.name, x.outputs, reference[x.name])
            if workers == 1:
                run_ms += [x.wall_s * 1e3 for x in results]
            engine_s[workers] += sum(x.engine_s for x in results)
            wall_s[workers] += sum(x.wall_s for x in results)
            rates[workers].append(len(jobs) / meter.wall_s)
            others[workers].append(meter.others_cores if meter.others_cores is not None else float("nan"))
            own[workers].append(meter.own_cores)
    speedups = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
    backend = "auto"
    engine = _engine_ms(models[0], backend)
    run_median = statistics.median(run_ms)
    return {
        "model": (f"conv net, batch 1, 1x3x{IMAGE}x{IMAGE}, 4 conv3x3 {list(CONV_CHANNELS[1:])} + linear, "
                  f"{conv_flops() / 1e9:.2f} GFLOP"),
        "backend": backend,
        "kernel_threads_per_task": 1,
        "tasks": n_tasks,
        "runs_per_phase": len(jobs),
        "inferences_per_run": INFERENCES_PER_RUN,
        "rounds": rounds,
        "engine_ms_per_inference": round(engine, 3),
        "vm_run_ms_median_1_worker": round(run_median, 3),
        "engine_share_of_run_1_worker": round(engine_s[1] / wall_s[1], 3),
        "engine_share_of_run_2_workers": round(engine_s[2] / wall_s[2], 3),
        "tasks_per_s_1_workers": round(statistics.median(rates[1]), 2),
        "tasks_per_s_2_workers": round(statistics.median(rates[2]), 2),
        "speedup": machine.spread(speedups)["median"],
        "speedup_rounds": machine.spread(speedups),
        "own_busy_cores_1_worker": machine.spread(own[1]),
        "own_busy_cores_2_workers": machine.spread(own[2]),
        "others_busy_cores_1_worker": machine.spread(others[1]),
        "others_busy_cores_2_workers": machine.spread(others[2]),
        "model_loads_while_timed": MODELS.stats.loads - loads_before,
    }


_SI_DRIVER = r"""
import importlib.util, json, queue, sys, threading, time, types
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
si, guard, machine = load("si", sys.argv[1]), load("guard", sys.argv[2]), load("machine", sys.argv[3])
root, n, rounds, tiny = sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]

class SecurityError(Exception):
    pass

def thread_vm(_worker):
    # Thread mode's work for a pure-Python task (guard, private module, facade), without numpy.
    def run():
        outputs = {}
        facade = types.ModuleType("walle")
        facade.output = outputs.__setitem__
        g = guard.Guard("feature", root, error=SecurityError, on_violation=print, facade=facade)
        module = g.new_module("__main__")
        with open(root + "/main.py", encoding="utf-8") as fh:
            exec(g.check_source(fh.read(), "feature/main.py"), vars(module))
        assert outputs["n"] == 97
    return run

def pooled(pool):
    def make(_worker):
        def run():
            r = pool.run("feature", root, "main.py", [], wall_time_s=120, output_bytes=1000)
            assert r["status"] == "ok" and r["outputs"]["n"] == 97, r
        return run
    return make

def fresh(_worker):
    def run():
        r = si.run("feature", root, "main.py", [], wall_time_s=120, output_bytes=1000)
        assert r["status"] == "ok", r
    return run

def phase(make, workers, pool=None):
    # Each worker warms up (a pooled worker creates its interpreter) before the clock starts.
    jobs = queue.SimpleQueue()
    for i in range(n):
        jobs.put(i)
    ready = threading.Barrier(workers + 1)
    def work():
        run = make(None)
        run()
        ready.wait()
        while True:
            try:
                jobs.get_nowait()
            except queue.Empty:
                break
            run()
        if pool is not None:
            pool.close_current()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    ready.wait()
    with machine.LoadMeter() as meter:
        for t in threads:
            t.join()
    return n / meter.wall_s, meter.others_cores, meter.own_cores

def start_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = fn("tiny", tiny, "main.py", [], wall_time_s=10, output_bytes=1000)
        times.append(time.perf_counter() - t0)
        assert r["status"] == "ok", r
    return machine.spread([t * 1e3 for t in times])["median"]

pool = si.InterpreterPool()
start = {"pooled_ms": start_ms(pool.run, 30), "fresh_ms": start_ms(si.run, 10)}
pool.close_current()
kinds = {"threads": thread_vm, "subinterpreters": pooled(pool), "subinterpreters_fresh": fresh}
rates = {(k, w): [] for k in kinds for w in (1, 2)}
own = {(k, w): [] for k in kinds for w in (1, 2)}
others = []
for r in range(rounds):
    order = [(k, w) for k in kinds for w in (1, 2)]
    for k, w in (order if r % 2 == 0 else order[::-1]):
        rate, busy, mine = phase(kinds[k], w, pool if k == "subinterpreters" else None)
        rates[(k, w)].append(rate)
        own[(k, w)].append(mine)
        others.append(busy if busy is not None else float("nan"))
med = {key: machine.spread(v)["median"] for key, v in rates.items()}
out = {"python": sys.version.split()[0], "tasks_per_phase": n, "rounds": rounds,
       "interpreters_created": pool.created, "tiny_task_run": start}
for (k, w), v in med.items():
    out[f"{k}_tasks_per_s_{w}_workers"] = v
out["threads_speedup"] = round(med[("threads", 2)] / med[("threads", 1)], 3)
out["subinterpreters_speedup"] = round(med[("subinterpreters", 2)] / med[("subinterpreters", 1)], 3)
ratio = [b / a for a, b in zip(rates[("threads", 2)], rates[("subinterpreters", 2)])]
out["subinterpreters_vs_threads_2_workers"] = machine.spread(ratio)["median"]
out["subinterpreters_vs_threads_2_workers_rounds"] = machine.spread(ratio)
fresh_ratio = [b / a for a, b in zip(rates[("threads", 2)], rates[("subinterpreters_fresh", 2)])]
out["fresh_subinterpreters_vs_threads_2_workers"] = machine.spread(fresh_ratio)["median"]
out["own_busy_cores_2_workers"] = {k: machine.spread(own[(k, 2)])["median"] for k in kinds}
out["others_busy_cores"] = machine.spread(others)
print(json.dumps(out))
"""


def newer_python() -> str | None:
    if sys.version_info >= (3, 12):
        return sys.executable
    found = sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"))
    return found[-1] if found else None


def pure_python(tmp: Path, n_tasks: int = 16, rounds: int = 3, python: str | None = None) -> dict[str, Any]:
    python = python or newer_python()
    if python is None:
        return {"skipped": "no Python 3.12+ with subinterpreters found"}
    root = tmp / "feature"
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(textwrap.dedent(FEATURE_CODE))
    tiny = tmp / "tiny_si"
    tiny.mkdir(parents=True, exist_ok=True)
    (tiny / "main.py").write_text("import walle\nwalle.output('ok', 1)\n")
    from walle_core.vm import guard, subinterp

    proc = subprocess.run([python, "-c", _SI_DRIVER, subinterp.__file__, guard.__file__, machine.__file__,
                           str(root), str(n_tasks), str(rounds), str(tiny)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-3:]}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_all() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="walle-bench-") as tmp:
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "cpus_in_affinity": machine.cpus(),
                        "loadavg_before": machine.loadavg()},
            "start_latency": start_latency(Path(tmp)),
            "inference": inference_throughput(Path(tmp)),
            "pure_python": pure_python(Path(tmp)),
        }
        report["machine"]["loadavg_after"] = machine.loadavg()
        return report


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    print(json.dumps(run_all(), indent=2))
