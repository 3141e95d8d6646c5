"""Whole models exported from PyTorch, run by Walle's reference backend and by onnxruntime.

The architectures live in ``tests/models/`` (written with ``torch.nn``); exported ONNX files are
cached outside the repository (``$WALLE_CACHE_DIR/models`` or ``~/.cache/walle/models``) under a
hash of the builder source, so only the first run pays for the export.

Error measure: ``rel = max|walle - ort| / max(max|ort|, 1e-6)``, the worst absolute error
relative to the output's scale (robust where individual elements are near zero); asserted
``<= 1e-4`` for every output.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import walle_core  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
common: Any = importlib.import_module("models.common")

MODELS = ["mobilenet_v2", "resnet18", "bert", "lstm", "unet"]
TOL = 1e-4


def builder(name: str) -> ModuleType:
    return importlib.import_module(f"models.{name}")


_EXPORTED: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
_LOADED: dict[str, Any] = {}


def exported(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    if name not in _EXPORTED:
        _EXPORTED[name] = common.export(builder(name))
    return _EXPORTED[name]


def walle_model(name: str) -> Any:
    if name not in _LOADED:
        _LOADED[name] = walle_core.load(str(exported(name)[0]), backend="reference")
    return _LOADED[name]


def oracle(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def errors(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, float]:
    worst_abs, worst_rel = 0.0, 0.0
    for name, r in ref.items():
        g = got[name]
        assert g.shape == r.shape, f"{name}: shape {g.shape} != {r.shape}"
        assert np.all(np.isfinite(g)), f"{name}: non-finite values"
        err = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)), initial=0.0))
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-6)
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, err / scale)
    return worst_abs, worst_rel


def with_batch(feeds: dict[str, np.ndarray], batch: int, seed: int) -> dict[str, np.ndarray]:
    """The example inputs with another batch size (fresh random floats, tiled integers)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in feeds.items():
        if v.dtype.kind == "f":
            out[name] = rng.standard_normal((batch, *v.shape[1:])).astype(v.dtype)
        else:
            reps = -(-batch // v.shape[0])
            out[name] = np.ascontiguousarray(np.concatenate([v] * reps)[:batch])
    return out


@pytest.mark.parametrize("name", MODELS)
def test_model_matches_onnxruntime(name: str) -> None:
    path, feeds = exported(name)
    ref = oracle(path, feeds)
    model = walle_model(name)
    start = time.perf_counter()
    got = model.run(feeds)
    elapsed = time.perf_counter() - start
    abs_err, rel_err = errors(got, ref)
    print(f"\n{name}: max abs err {abs_err:.3e}, max rel err {rel_err:.3e}, "
          f"first run (plan + execute) {elapsed:.2f}s, peak arena {model.peak_bytes / 2**20:.1f} MiB")
    assert rel_err <= TOL


@pytest.mark.parametrize("name", ["resnet18", "bert", "lstm", "unet"])
def test_dynamic_batch_replans(name: str) -> None:
    path, feeds = exported(name)
    model = walle_model(name)
    for batch in (2, 1, 3):
        f = with_batch(feeds, batch, seed=batch)
        got = model.run(f)
        abs_err, rel_err = errors(got, oracle(path, f))
        print(f"\n{name} batch {batch}: max abs err {abs_err:.3e}, max rel err {rel_err:.3e}")
        assert rel_err <= TOL
        assert next(iter(got.values())).shape[0] == batch


@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_threaded_runs_share_one_model(name: str) -> None:
    path, feeds = exported(name)
    model = walle_core.load(str(path), backend="reference")  # fresh: plans built under races
    jobs = [with_batch(feeds, 1 + i % 2, seed=100 + i) for i in range(6)]
    expected = [oracle(path, f) for f in jobs]
    results: list[dict[str, np.ndarray] | None] = [None] * len(jobs)
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = model.run(jobs[i])
        except BaseException as exc:  # reported below, in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for got, ref in zip(results, expected, strict=True):
        assert got is not None
        assert errors(got, ref)[1] <= TOL
