"""The task VM: guard, facade, quotas, crash boundary, scheduler, process and subinterpreter modes,
and the data library (against Pillow / OpenCV references)."""

from __future__ import annotations

import glob
import io
import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from walle_bench import machine
from walle_core.plugins import registry
from walle_core.task import Quotas
from walle_core.vm import Scheduler, TaskSpec, ThreadVM, run_once, run_task, subinterp
from walle_core.vm import data as cv
from walle_core.vm.models import ModelCache

# Tasks run under wall-time quotas (a runaway is stopped within 1 s of its 0.5 s quota, model tasks
# within 10 s): run after the parallel pass, alone (scripts/test.sh), not beside another worker.
pytestmark = pytest.mark.serial

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((16, 32)).astype(np.float32)
W2 = RNG.standard_normal((32, 4)).astype(np.float32)


def mlp_bytes() -> bytes:
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W1, 0) @ W2


def make_task(root: Path, source: str, name: str = "t", *, files: dict[str, str] | None = None,
              model: bool = False, **quotas: float) -> TaskSpec:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(textwrap.dedent(source))
    for rel, text in (files or {}).items():
        (root / rel).write_text(textwrap.dedent(text))
    if model:
        (root / "model.onnx").write_bytes(mlp_bytes())
    return TaskSpec(name=name, root=root, entry="main.py", model="model.onnx" if model else None,
                    quotas=Quotas(**quotas))  # type: ignore[arg-type]


GOOD = """
import numpy as np
import walle
feats = np.array([e["v"] for e in walle.events()], np.float32).reshape(-1, 16)
walle.output("y", walle.infer({"x": feats})["y"])
walle.log("done", len(walle.events()))
"""


def events(seed: int) -> list[dict[str, object]]:
    vals = np.random.default_rng(seed).standard_normal((2, 16)).astype(np.float32)
    return [{"id": "click", "v": row.tolist()} for row in vals]


def test_task_runs_its_model_on_its_events(tmp_path: Path) -> None:
    spec = make_task(tmp_path / "a", GOOD, "good", model=True)
    ev = events(1)
    result = run_task(spec, ev)
    assert result.ok, result.error
    x = np.array([e["v"] for e in ev], np.float32)
    np.testing.assert_allclose(result.outputs["y"], reference(x), rtol=1e-5, atol=1e-5)
    assert result.logs == ["done 2"] and result.memory_peak > 0


FORBIDDEN = {
    "import os": "import of 'os'",
    "import subprocess": "import of 'subprocess'",
    "import socket": "import of 'socket'",
    "import ctypes": "import of 'ctypes'",
    "import importlib": "import of 'importlib'",
    "from numpy import ctypeslib": "'ctypeslib'",
    "import numpy.ctypeslib": "'ctypeslib'",
    "open('/etc/passwd').read()": "outside the task folder",
    "open('../outside.txt').read()": "outside the task folder",
    "open('main.py', 'w')": "may only write under scratch/",
    "eval('1 + 1')": "builtin eval()",
    "exec('x = 1')": "builtin exec()",
    "compile('1', 'f', 'eval')": "builtin compile()",
    "().__class__": "attribute '__class__'",
    "getattr((), '__class__')": "attribute '__class__'",
    "__import__('os')": "name '__import__'",
    "import numpy as np\nnp.load('x.npy')": "attribute 'load'",
    "import numpy as np\nnp.zeros(3).tofile('x')": "attribute 'tofile'",
    "import random\nrandom._os": "attribute '_os'",
}


@pytest.mark.parametrize("code", FORBIDDEN)
def test_each_forbidden_capability_raises_task_security_error(
    tmp_path: Path, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = make_task(tmp_path / "bad", code, "sneaky-task")
    with caplog.at_level(logging.WARNING, logger="walle.vm"):
        result = run_task(spec)
    assert result.status == "security", result.error
    assert result.error is not None and result.error.startswith("TaskSecurityError")
    assert FORBIDDEN[code] in result.error
    assert any("sneaky-task" in r.getMessage() and "security" in r.getMessage() for r in caplog.records)


def test_swallowed_security_error_still_fails_the_run(tmp_path: Path) -> None:
    spec = make_task(tmp_path / "s", """
        try:
            import socket
        except Exception:
            pass
        import walle
        walle.output("ok", 1)
    """)
    result = run_task(spec)
    assert result.status == "security" and "socket" in result.violations[0]


def test_sandbox_files_private_modules_and_scratch(tmp_path: Path) -> None:
    files = {"helper.py": "VALUE = 'A'\ndef double(x):\n    return 2 * x\n", "labels.txt": "cat\ndog\n"}
    spec_a = make_task(tmp_path / "a", """
        import helper, walle
        with open("labels.txt") as fh:
            labels = fh.read().split()
        with open("scratch/state.json", "w") as fh:
            fh.write("{}")
        walle.output("r", [helper.VALUE, helper.double(21), labels, walle.resource("labels.txt").decode()])
    """, "a", files=files)
    spec_b = make_task(tmp_path / "b", "import helper, walle\nwalle.output('r', helper.VALUE)\n", "b",
                       files={"helper.py": "VALUE = 'B'\n"})
    ra, rb = run_task(spec_a), run_task(spec_b)
    assert ra.ok and rb.ok, (ra.error, rb.error)
    assert ra.outputs["r"] == ["A", 42, ["cat", "dog"], "cat\ndog\n"] and rb.outputs["r"] == "B"
    assert "helper" not in sys.modules  # private namespaces, never the interpreter's module table
    assert (tmp_path / "a" / "scratch" / "state.json").exists()


def test_crash_boundary_reports_the_exception(tmp_path: Path) -> None:
    result = run_task(make_task(tmp_path / "c", "def main():\n    raise ValueError('boom')\n"))
    assert result.status == "failed" and "ValueError: boom" in (result.error or "")
    result = run_task(make_task(tmp_path / "d", "raise SystemExit(3)\n"))
    assert result.status == "failed"


def test_output_quota(tmp_path: Path) -> None:
    spec = make_task(tmp_path / "o", "import numpy as np, walle\nwalle.output('big', np.zeros(1000))\n",
                     output_bytes=1000)
    result = run_task(spec)
    assert result.status == "output_quota" and "OutputQuotaError" in (result.error or "")


RUNAWAY = """
while True:
    try:
        while True:
            pass
    except BaseException:
        pass  # a runaway that swallows the stop, too
"""

HOG = """
import numpy as np
import walle
keep = []
x = np.ones((4096, 16), np.float32)
while True:
    keep.append(walle.infer({"x": x}))
    keep.append(walle.cv.to_nchw(np.zeros((256, 256, 3), np.uint8)))
"""


def test_runaway_and_memory_hog_are_stopped_while_four_tasks_finish(tmp_path: Path) -> None:
    runaway = make_task(tmp_path / "runaway", RUNAWAY, "runaway", wall_time_s=0.5)
    hog = make_task(tmp_path / "hog", HOG, "hog", model=True, memory_bytes=32 << 20, wall_time_s=30)
    good = [make_task(tmp_path / f"g{i}", GOOD, f"good{i}", model=True) for i in range(4)]
    with Scheduler(workers=2) as sched:
        t0 = time.perf_counter()
        f_run, f_hog = sched.submit(runaway), sched.submit(hog)
        f_good = [sched.submit(spec, events(10 + i)) for i, spec in enumerate(good)]
        r_run, r_hog = f_run.result(timeout=30), f_hog.result(timeout=30)
        r_good = [f.result(timeout=60) for f in f_good]
        elapsed = time.perf_counter() - t0
    assert r_run.status == "timeout" and r_run.wall_s < 0.5 + 1.0, (r_run.status, r_run.wall_s)
    assert r_hog.status == "memory" and "memory quota" in (r_hog.error or "")
    assert r_hog.memory_peak <= 32 << 20
    for i, r in enumerate(r_good):
        assert r.ok, r.error
        x = np.array([e["v"] for e in events(10 + i)], np.float32)
        np.testing.assert_allclose(r.outputs["y"], reference(x), rtol=1e-5, atol=1e-5)
    assert elapsed < 30


def test_worker_thread_is_reusable_after_a_timeout(tmp_path: Path) -> None:
    with Scheduler(workers=1) as sched:
        first = sched.submit(make_task(tmp_path / "r", "while True:\n    pass\n", "r", wall_time_s=0.2))
        second = sched.submit(make_task(tmp_path / "n", "import walle\nx = 0\nfor i in range(100000):\n"
                                        "    x += i\nwalle.output('x', x)\n", "n"))
        assert first.result(10).status == "timeout"
        ok = second.result(10)
    assert ok.ok and ok.outputs["x"] == sum(range(100000)), ok.error


def test_scheduler_runs_higher_priority_first(tmp_path: Path) -> None:
    src = "import time, walle\nwalle.output('t', time.perf_counter())\n"
    with Scheduler(workers=1) as sched:
        blocker = sched.submit(make_task(tmp_path / "b", "import time\nt = time.perf_counter()\n"
                                         "while time.perf_counter() - t < 0.3:\n    pass\n", "b"))
        time.sleep(0.05)
        low = sched.submit(make_task(tmp_path / "low", src, "low"), priority=0)
        high = sched.submit(make_task(tmp_path / "high", src, "high"), priority=10)
        assert blocker.result(10).ok
        assert high.result(10).outputs["t"] < low.result(10).outputs["t"]


# ---------------------------------------------------------------------------------- reuse between runs


def test_refused_source_is_refused_on_every_run(tmp_path: Path) -> None:
    spec = make_task(tmp_path / "bad", "import os\n", "again")
    assert [run_task(spec).status for _ in range(3)] == ["security"] * 3


def test_runs_on_one_worker_do_not_see_each_others_globals(tmp_path: Path) -> None:
    files = {"helper.py": "state = []\n"}
    writer = make_task(tmp_path / "w", """
        import walle, helper
        secret = 42
        helper.state.append("w")
        walle.output("state", list(helper.state))
    """, "writer", files=files)
    reader = make_task(tmp_path / "r", """
        import walle, helper
        try:
            secret
            walle.output("leak", True)
        except NameError:
            walle.output("leak", False)
        walle.output("state", list(helper.state))
    """, "reader", files=files)
    with Scheduler(workers=1) as sched:
        results = [f.result(30) for f in [sched.submit(s) for s in (writer, reader, writer, reader)]]
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.outputs for r in results] == [{"state": ["w"]}, {"leak": False, "state": []}] * 2


MODEL_VIEW = """
import numpy as np
import walle
m = walle.model()
walle.output("names", [m.input_names, m.output_names, m.backend_names[:1]])
walle.output("y", m.run({"x": np.ones((1, 16), np.float32)})["y"])
"""


def test_model_is_loaded_once_and_reused_across_runs(tmp_path: Path) -> None:
    cache = ModelCache()
    spec = make_task(tmp_path / "m", MODEL_VIEW, "viewer", model=True)
    first, second = (ThreadVM(spec, models=cache).run() for _ in range(2))
    assert first.ok and second.ok, (first.error, second.error)
    assert cache.stats.loads == 1 and cache.stats.hits == 1 and cache.idle() == 1
    np.testing.assert_allclose(second.outputs["y"], reference(np.ones((1, 16), np.float32)), rtol=1e-5)
    names = second.outputs["names"]
    assert names[:2] == [["x"], ["y"]] and names[2][0] in {e.name for e in registry().entries()}
    # Each run is charged for the engine's buffers, cached model or not.
    assert second.memory_peak >= first.memory_peak > 0
    assert 0 < second.engine_s < second.wall_s


def test_tasks_get_a_view_of_the_model_not_the_engine_object(tmp_path: Path) -> None:
    cache = ModelCache()
    poke = make_task(tmp_path / "p", "import walle\nwalle.model().backends = []\n", "poke", model=True)
    private = make_task(tmp_path / "q", "import walle\nwalle.model()._infer\n", "private", model=True)
    assert ThreadVM(poke, models=cache).run().status == "failed"
    assert ThreadVM(private, models=cache).run().status == "security"


def test_a_failed_run_drops_its_model_instance(tmp_path: Path) -> None:
    cache = ModelCache()
    bad = make_task(tmp_path / "b", GOOD + "raise RuntimeError('after infer')\n", "bad", model=True)
    slow = make_task(tmp_path / "s", GOOD + "while True:\n    pass\n", "slow", model=True, wall_time_s=0.3)
    assert ThreadVM(bad, events(1), models=cache).run().status == "failed"
    assert ThreadVM(slow, events(1), models=cache).run().status == "timeout"
    assert cache.stats.loads == 2 and cache.stats.dropped == 2 and cache.idle() == 0


def test_concurrent_runs_hold_separate_instances(tmp_path: Path) -> None:
    cache = ModelCache()
    spec = make_task(tmp_path / "c", GOOD, "conc", model=True)
    key, one = cache.checkout(spec.root / "model.onnx", "reference", 1)
    _, two = cache.checkout(spec.root / "model.onnx", "reference", 1)
    assert one is not two
    cache.checkin(key, one)
    cache.checkin(key, two)
    _, again = cache.checkout(spec.root / "model.onnx", "reference", 1)
    assert again is two and cache.stats.loads == 2 and cache.stats.hits == 1
    (spec.root / "model.onnx").write_bytes(b"reinstalled")  # another file on disk: another key
    assert cache.key(spec.root / "model.onnx", "reference", 1) != key


def test_models_load_concurrently_in_a_fresh_process(tmp_path: Path) -> None:
    # The first loads of a process fill the op registry; threads loading at once must all see it whole.
    (tmp_path / "m.onnx").write_bytes(mlp_bytes())
    script = textwrap.dedent("""
        import threading, walle_core
        from walle_bench import vm as bench
        models, errors = [bench.convnet(i, 32) for i in range(4)], []
        def load(b):
            try:
                walle_core.load(b, backend="reference")
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=load, args=(m,)) for m in models]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_load_meter_reports_cores() -> None:
    assert machine.cpus()
    with machine.LoadMeter() as meter:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.05:
            pass
    assert meter.wall_s >= 0.05 and 0 <= meter.own_cores <= len(machine.cpus()) + 0.5
    assert machine.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "all": [3.0, 1.0, 2.0]}


# ---------------------------------------------------------------------------------- process mode


def test_process_mode_runs_model_and_enforces_rlimit_as(tmp_path: Path) -> None:
    ev = events(3)
    good = run_once(make_task(tmp_path / "g", GOOD, "pgood", model=True), ev, mode="process")
    assert good.ok and good.mode == "process", good.error
    x = np.array([e["v"] for e in ev], np.float32)
    np.testing.assert_allclose(good.outputs["y"], reference(x), rtol=1e-5, atol=1e-5)
    # Plain numpy, which thread mode cannot account for, meets a real address-space limit here.
    hog = run_once(make_task(tmp_path / "h", "import numpy as np\nx = np.ones(1 << 28)\n", "phog",
                             memory_bytes=64 << 20), mode="process")
    assert hog.status == "memory", hog.error
    sock = run_once(make_task(tmp_path / "s", "import socket\n", "psock"), mode="process")
    assert sock.status == "security"
    runaway = run_once(make_task(tmp_path / "r", "while True:\n    pass\n", "prun", wall_time_s=0.5),
                       mode="process")
    assert runaway.status == "timeout"


# ---------------------------------------------------------------------------------- subinterpreters


def newer_pythons() -> list[str]:
    found = sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"))
    return found[-1:]


SI_DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("si", sys.argv[1])
si = importlib.util.module_from_spec(spec); spec.loader.exec_module(si)
root = sys.argv[2]
out = {}
for name in ("good", "runaway", "sneaky"):
    out[name] = si.run(name, root + "/" + name, "main.py", [{"id": "e", "v": 2}], wall_time_s=0.5,
                       output_bytes=1000)
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.version_info < (3, 12) and not newer_pythons(), reason="no Python 3.12+ here")
def test_subinterpreter_mode_guard_timeout_and_outputs(tmp_path: Path) -> None:
    make_task(tmp_path / "good", "import walle, math\nwalle.output('r', [e['v'] ** 2 for e in walle.events()])\n")
    make_task(tmp_path / "runaway", "while True:\n    pass\n")
    make_task(tmp_path / "sneaky", "import os\n")
    python = sys.executable if sys.version_info >= (3, 12) else newer_pythons()[0]
    proc = subprocess.run([python, "-c", SI_DRIVER, subinterp.__file__, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["good"]["status"] == "ok" and out["good"]["outputs"] == {"r": [4]}
    assert out["runaway"]["status"] == "timeout" and out["runaway"]["wall_s"] < 2.0
    assert out["sneaky"]["status"] == "security" and "import of 'os'" in out["sneaky"]["error"]


def test_scheduler_gives_each_worker_a_pooled_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The pooling contract of the Scheduler, checked on any Python with a stand-in pool.
    import threading

    class FakePool:
        def __init__(self) -> None:
            self.runs: list[tuple[str, int]] = []
            self.closed: list[int] = []

        def run(self, name: str, root: str, entry: str, events: list[dict[str, object]], *,
                wall_time_s: float, output_bytes: int) -> dict[str, object]:
            self.runs.append((name, threading.get_ident()))
            return {"status": "ok", "outputs": {"e": events}, "logs": [], "error": None,
                    "violations": [], "wall_s": 0.001}

        def close_current(self) -> None:
            self.closed.append(threading.get_ident())

    monkeypatch.setattr(subinterp, "available", lambda: True)
    monkeypatch.setattr(subinterp, "InterpreterPool", FakePool)
    spec = make_task(tmp_path / "si", "import walle\n", "si")
    with Scheduler(workers=2, mode="subinterpreter") as sched:
        results = [f.result(10) for f in [sched.submit(spec, [{"i": i}]) for i in range(6)]]
        pool = sched.interpreters
    assert [r.outputs for r in results] == [{"e": [{"i": i}]} for i in range(6)]
    assert all(r.ok and r.mode == "subinterpreter" for r in results)
    assert isinstance(pool, FakePool) and len(pool.runs) == 6
    workers = {t for _, t in pool.runs}
    assert workers <= set(pool.closed) and len(pool.closed) == 2  # every worker closed its own


POOL_DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("si", sys.argv[1])
si = importlib.util.module_from_spec(spec); spec.loader.exec_module(si)
root = sys.argv[2]
pool = si.InterpreterPool()
def run(name, wall=5.0):
    return pool.run(name, root + "/" + name, "main.py", [{"id": "e", "v": 3}], wall_time_s=wall,
                    output_bytes=1000)
out = {"a1": run("a"), "b1": run("b"), "a2": run("a"), "created_before_timeout": pool.created,
       "swallow": run("swallow", 0.3), "b2": run("b"), "created": pool.created}
pool.close_current()
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.version_info < (3, 12) and not newer_pythons(), reason="no Python 3.12+ here")
@pytest.mark.parametrize("python", [sys.executable] if sys.version_info >= (3, 12) else
                         sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3")))
def test_pooled_subinterpreter_runs_are_isolated(tmp_path: Path, python: str) -> None:
    helper = {"helper.py": "state = []\n"}
    make_task(tmp_path / "a", """
        import walle, helper
        secret = 42
        helper.state.append(1)
        walle.output("state", list(helper.state))
        walle.log("a ran")
    """, files=helper)
    make_task(tmp_path / "b", """
        import walle, helper
        try:
            secret
            walle.output("leak", True)
        except NameError:
            walle.output("leak", False)
        walle.output("state", list(helper.state))
        walle.output("events", walle.events())
    """, files=helper)
    make_task(tmp_path / "swallow", "while True:\n    try:\n        while True:\n            pass\n"
              "    except BaseException:\n        pass\n")
    proc = subprocess.run([python, "-c", POOL_DRIVER, subinterp.__file__, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # One interpreter served a, b, a: each run saw only its own globals, modules, outputs and logs.
    assert out["created_before_timeout"] == 1
    assert out["a1"]["outputs"] == out["a2"]["outputs"] == {"state": [1]}
    assert out["a1"]["logs"] == ["a ran"] and out["b1"]["logs"] == []
    assert out["b1"]["outputs"] == {"leak": False, "state": [], "events": [{"id": "e", "v": 3}]}
    # A run that swallows its stop is still stopped; its interpreter is retired, the next is new.
    assert out["swallow"]["status"] == "timeout" and out["swallow"]["wall_s"] < 2.0
    assert out["b2"]["status"] == "ok" and out["b2"]["outputs"] == out["b1"]["outputs"]
    assert out["created"] == 2


# ---------------------------------------------------------------------------------- data library

cv2 = pytest.importorskip("cv2")


def image(h: int = 37, w: int = 53) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_decode_matches_pillow_and_opencv() -> None:
    from PIL import Image

    img = image()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    rgb = cv.decode(buf.getvalue())
    np.testing.assert_array_equal(rgb, img)
    bgr = cv.decode(buf.getvalue(), "BGR")
    np.testing.assert_array_equal(bgr, cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR))
    assert cv.decode(buf.getvalue(), "GRAY").shape == img.shape[:2]


@pytest.mark.parametrize("size", [(80, 60), (20, 15), (53, 37), (31, 90)])
def test_resize_matches_opencv(size: tuple[int, int]) -> None:
    img = image()
    near = cv.resize(img, size, "nearest")
    np.testing.assert_array_equal(near, cv2.resize(img, size, interpolation=cv2.INTER_NEAREST))
    lin = cv.resize(img, size, "bilinear")
    ref = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    assert lin.shape == ref.shape and np.abs(lin.astype(int) - ref).max() <= 1  # OpenCV rounds in fixed point
    f = img.astype(np.float32)
    np.testing.assert_allclose(cv.resize(f, size), cv2.resize(f, size, interpolation=cv2.INTER_LINEAR),
                               rtol=1e-4, atol=1e-3)


def test_colour_crop_and_nchw_match_references() -> None:
    img = image()
    np.testing.assert_array_equal(cv.cvt_color(img, "RGB2BGR"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    for code, ref in (("RGB2GRAY", cv2.COLOR_RGB2GRAY), ("BGR2GRAY", cv2.COLOR_BGR2GRAY)):
        assert np.abs(cv.cvt_color(img, code).astype(int) - cv2.cvtColor(img, ref)).max() <= 1
    np.testing.assert_array_equal(cv.crop(img, 3, 4, 10, 7), img[4:11, 3:13])
    assert cv.center_crop(img, 21, 11).shape == (11, 21, 3)
    with pytest.raises(ValueError):
        cv.crop(img, 50, 0, 10, 10)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    blob = cv.to_nchw(img, mean, std)
    ref = cv2.dnn.blobFromImage(img, 1 / 255, mean=None, swapRB=False) if hasattr(cv2, "dnn") else None
    expect = ((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_allclose(blob, expect, rtol=1e-5, atol=1e-5)
    if ref is not None:
        np.testing.assert_allclose(cv.to_nchw(img), ref, rtol=1e-6, atol=1e-6)


def test_engine_path_matches_numpy_path() -> None:
    img = image(24, 32)
    np.testing.assert_allclose(cv.to_nchw(img, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), backend="reference"),
                               cv.to_nchw(img, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)), rtol=1e-5, atol=1e-5)
    f = img.astype(np.float32)
    for size in ((48, 40), (16, 12)):
        for mode in ("bilinear", "nearest"):
            np.testing.assert_allclose(cv.resize(f, size, mode, backend="reference"), cv.resize(f, size, mode),
                                       rtol=1e-4, atol=1e-3)
    logits = np.random.default_rng(2).standard_normal((3, 10)).astype(np.float32)
    np.testing.assert_allclose(cv.softmax(logits, backend="reference"), cv.softmax(logits), rtol=1e-5, atol=1e-6)


def test_tensor_math() -> None:
    x = np.array([[1.0, 3.0, 2.0, 3.0]], np.float32)
    vals, idx = cv.topk(x, 2)
    assert idx.tolist() == [[1, 3]] and vals.tolist() == [[3.0, 3.0]]
    np.testing.assert_allclose(cv.softmax(x).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(cv.l2_normalize(x)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cv.sigmoid(np.zeros(2)), [0.5, 0.5])
