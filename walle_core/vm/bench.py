"""VM benchmarks, measured in one run: start latency, inference throughput, subinterpreters.

Run as ``python -m walle_core.vm.bench`` (``walle bench vm --json`` does that): BLAS must be
single-threaded before numpy loads, so that 1-vs-2 worker figures measure the VM's parallelism and
not OpenBLAS's.
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

FEATURE_CODE = """
import walle
counts = {}
for i in range(200000):
    key = (i * 7919) % 97
    counts[key] = counts.get(key, 0) + i % 13
walle.output("n", len(counts))
"""

INFER_CODE = """
import numpy as np
import walle
x = np.ones((64, 512), np.float32)
for _ in range(12):
    y = walle.infer({"x": x})["y"]
walle.output("s", float(y.sum()))
"""


def _model(path: Path) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32) / 32
    nodes, prev = [], "x"
    for i in range(6):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        nodes.append(helper.make_node("Tanh", [f"h{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 512])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 512])],
                          [numpy_helper.from_array(w, "w")])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _task(root: Path, source: str, model: bool = False) -> Any:
    from walle_core.task import Quotas
    from walle_core.vm import TaskSpec

    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(textwrap.dedent(source))
    if model:
        _model(root / "model.onnx")
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


def inference_throughput(tmp: Path, n_tasks: int = 8) -> dict[str, float]:
    from walle_core.vm import Scheduler, run_once

    specs = [_task(tmp / f"infer{i}", INFER_CODE, model=True) for i in range(n_tasks)]
    assert run_once(specs[0]).ok  # warm caches (calibration, imports)
    out: dict[str, float] = {}
    for workers in (1, 2):
        with Scheduler(workers=workers) as sched:
            t0 = time.perf_counter()
            results = [f.result() for f in [sched.submit(s) for s in specs]]
            elapsed = time.perf_counter() - t0
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        out[f"tasks_per_s_{workers}_workers"] = n_tasks / elapsed
    out["speedup"] = out["tasks_per_s_2_workers"] / out["tasks_per_s_1_workers"]
    return out


_SI_DRIVER = r"""
import importlib.util, json, sys, time
from concurrent.futures import ThreadPoolExecutor
spec = importlib.util.spec_from_file_location("si", sys.argv[1])
si = importlib.util.module_from_spec(spec); spec.loader.exec_module(si)
root, n = sys.argv[2], int(sys.argv[3])
source = open(root + "/main.py").read().replace("import walle\n", "").replace('walle.output("n", len(counts))', "")
def thread_task(_):
    exec(compile(source, "feature", "exec"), {})
def si_task(_):
    r = si.run("feature", root, "main.py", [], wall_time_s=120, output_bytes=1000)
    assert r["status"] == "ok", r
out = {"python": sys.version.split()[0]}
for label, fn in (("threads", thread_task), ("subinterpreters", si_task)):
    fn(0)
    for workers in (1, 2):
        with ThreadPoolExecutor(workers) as pool:
            t0 = time.perf_counter(); list(pool.map(fn, range(n))); dt = time.perf_counter() - t0
        out[f"{label}_tasks_per_s_{workers}_workers"] = n / dt
out["threads_speedup"] = out["threads_tasks_per_s_2_workers"] / out["threads_tasks_per_s_1_workers"]
out["subinterpreters_speedup"] = (out["subinterpreters_tasks_per_s_2_workers"]
                                  / out["subinterpreters_tasks_per_s_1_workers"])
out["subinterpreters_vs_threads_2_workers"] = (out["subinterpreters_tasks_per_s_2_workers"]
                                               / out["threads_tasks_per_s_2_workers"])
print(json.dumps(out))
"""


def newer_python() -> str | None:
    if sys.version_info >= (3, 12):
        return sys.executable
    found = sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"))
    return found[-1] if found else None


def pure_python(tmp: Path, n_tasks: int = 8) -> dict[str, Any]:
    python = newer_python()
    if python is None:
        return {"skipped": "no Python 3.12+ with subinterpreters found"}
    root = tmp / "feature"
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(textwrap.dedent(FEATURE_CODE))
    from walle_core.vm import subinterp

    proc = subprocess.run([python, "-c", _SI_DRIVER, subinterp.__file__, str(root), str(n_tasks)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_all() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="walle-bench-") as tmp:
        return {
            "cpus": os.cpu_count(),
            "start_latency": start_latency(Path(tmp)),
            "inference": inference_throughput(Path(tmp)),
            "pure_python": pure_python(Path(tmp)),
        }


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    print(json.dumps(run_all(), indent=2))
