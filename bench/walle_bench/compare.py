"""Whole-model latency of Walle against peer engines (``walle bench model``, ``bench/peers.py``).

Walle and each peer engine (onnxruntime; MNN from PyPI ``mnn`` when it can convert the model)
run in one process with the same thread count, batch 1, fp32. After a warm-up the timed runs
are *interleaved* in blocks (5 Walle runs, 5 peer runs, ..., each block after a 20 ms
pause and an untimed run, so that one engine's spinning idle threads do not tax the next), so that load from other
processes on a shared machine hits every engine alike; each engine's median is reported with the ratio
Walle/peer and the largest absolute output difference (a fast wrong answer cannot hide).

Models are ONNX or TFLite files here (peer ``litert``: the LiteRT interpreter on a .tflite file);
``bench/peers.py`` adds the repository's test models by name.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from walle_core import WalleError

PEERS = ("onnxruntime", "mnn", "litert")


class BenchError(WalleError):
    """A benchmark was asked for something it cannot measure (a missing or non-ONNX model)."""


Runner = Callable[[], Sequence[np.ndarray]]


def blas_info() -> str:
    """Which BLAS numpy loaded and its kernel (threadpoolctl), for the benchmark header."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return "threadpoolctl not installed"
    parts = [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
             f"threads={i.get('num_threads')} ({Path(str(i.get('filepath', ''))).name})"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(parts) or "no BLAS loaded"


# --------------------------------------------------------------------------- models and feeds


def random_feeds(path: Path, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Inputs for an ONNX file: ``shapes`` where given, else the declared shapes (unknown dims
    = 1), small random values (integers in [0, 10) so that ids and masks stay valid)."""
    import walle_core

    model = walle_core.load(path, backend="reference")
    unknown = sorted(set(shapes or {}) - set(model.input_names))
    if unknown:
        raise BenchError(f"no input named {', '.join(map(repr, unknown))}; the model takes {model.inputs}")
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for name, zeros in model.example_feeds(dict(shapes or {})).items():
        shape, dt = zeros.shape, zeros.dtype
        if dt.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[name] = np.ones(shape, dt)
        else:
            feeds[name] = rng.integers(0, 10, shape).astype(dt)
    return feeds


def resolve_model(spec: str, shapes: Mapping[str, tuple[int, ...]] | None = None
                  ) -> tuple[str, Path, dict[str, np.ndarray]]:
    """An ONNX or TFLite file: its name, path and random inputs (:func:`random_feeds`)."""
    p = Path(spec)
    if p.suffix not in (".onnx", ".tflite") and not p.is_file():
        raise BenchError(
            f"{spec!r} is not an .onnx or .tflite file; the repository's test models (tests/models/NAME.py) are "
            "benchmarked with `python bench/peers.py --models NAME` from the repository root")
    if not p.is_file():
        raise BenchError(f"no such file: {spec}")
    return p.stem, p, random_feeds(p, shapes)


# --------------------------------------------------------------------------- engines


def walle_runner(path: Path, feeds: dict[str, np.ndarray], threads: int, backend: str) -> Runner:
    import walle_core

    model = walle_core.load(path, backend=backend, threads=threads)
    names = model.output_names

    def run() -> list[np.ndarray]:
        out = model.run(feeds)  # once per call, whatever the number of outputs
        return [out[n] for n in names]

    return run


def ort_runner(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def litert_runner(path: Path, feeds: dict[str, np.ndarray], threads: int, outputs: list[str]) -> Runner:
    """The LiteRT interpreter (PyPI ``ai-edge-litert``, default XNNPACK delegate) on a .tflite
    file. Walle names inputs and outputs after the model's signature when it has one (else after
    the tensors), and so does this runner, so both return ``outputs`` in the same order."""
    from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped,unused-ignore]

    it = Interpreter(model_path=str(path), num_threads=threads)
    if it.get_signature_list():
        run = it.get_signature_runner()
        return lambda: [run(**feeds)[n] for n in outputs]
    it.allocate_tensors()
    ins = {d["name"]: d["index"] for d in it.get_input_details()}
    outs = {d["name"]: d["index"] for d in it.get_output_details()}

    def invoke() -> list[np.ndarray]:
        for name, value in feeds.items():
            it.set_tensor(ins[name], value)
        it.invoke()
        return [it.get_tensor(outs[n]) for n in outputs]

    return invoke


@contextlib.contextmanager
def _quiet_fds():  # type: ignore[no-untyped-def]
    """Silence C-level stdout/stderr (MNN prints banners from C++)."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def mnn_runner(path: Path, feeds: dict[str, np.ndarray], threads: int, outputs: list[str]) -> Runner:
    """MNN through PyPI ``mnn``: the model is converted with ``_tools.mnnconvert`` of the
    compiled module (never ``MNN.tools.mnnconvert``, whose import runs pip and phones home)."""
    with _quiet_fds(), contextlib.redirect_stdout(io.StringIO()):
        import _tools  # type: ignore[import-not-found,import-untyped,unused-ignore]
        import MNN  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
        import MNN.expr as F  # type: ignore[import-not-found,import-untyped,unused-ignore]
        import MNN.nn as nn  # type: ignore[import-not-found,import-untyped,unused-ignore]

        dst = Path(tempfile.mkdtemp(prefix="walle-mnn-")) / (path.stem + ".mnn")
        ok = _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(path),
                                "--MNNModel", str(dst), "--bizCode", "walle"])
        if not ok or not dst.exists():
            raise RuntimeError("mnnconvert could not convert the model")
        rt = nn.create_runtime_manager(({"backend": "CPU", "numThread": threads, "precision": "high"},))
        module = nn.load_module_from_file(str(dst), list(feeds), outputs, runtime_manager=rt)

    def run() -> list[np.ndarray]:
        vs = []
        for arr in feeds.values():
            if arr.dtype.kind == "f":
                vs.append(F.const(arr.astype(np.float32), list(arr.shape), F.NCHW))
            else:
                vs.append(F.const(arr.astype(np.int32), list(arr.shape), F.NCHW, F.int))
        return [np.array(o.read(), copy=True) for o in module.forward(vs)]

    return run


# --------------------------------------------------------------------------- comparison


@dataclass
class Result:
    model: str
    walle_ms: float
    peers: dict[str, float] = field(default_factory=dict)       # peer -> median ms
    diffs: dict[str, float] = field(default_factory=dict)       # peer -> max |walle - peer|
    skipped: dict[str, str] = field(default_factory=dict)       # peer -> reason

    def ratio(self, peer: str) -> float:
        return self.walle_ms / self.peers[peer]


def max_diff(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    worst = 0.0
    for g, w in zip(got, want, strict=False):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g64.size and g64.size == w64.size:
            worst = max(worst, float(np.max(np.abs(g64.reshape(-1) - w64.reshape(-1)))))
    return worst


def warm_up(engines: dict[str, Runner], warmup: int, skipped: dict[str, str],
            required: Sequence[str] = ()) -> dict[str, Sequence[np.ndarray]]:
    """Run every engine ``warmup`` times and return its last outputs. An engine that fails is
    removed from ``engines`` with the reason in ``skipped``; a ``required`` one re-raises."""
    first: dict[str, Sequence[np.ndarray]] = {}
    for key, fn in list(engines.items()):
        try:
            for _ in range(warmup):
                first[key] = fn()
        except Exception as exc:
            if key in required:
                raise
            skipped[key] = f"run failed: {type(exc).__name__}: {exc}".splitlines()[0][:120]
            del engines[key]
    return first


def interleaved_medians(engines: dict[str, Runner], runs: int, block: int = 5) -> dict[str, float]:
    """Median milliseconds of ``runs`` timed runs per engine; the engines take turns in blocks of
    ``block`` runs, each block after a pause and 20 ms of untimed runs."""
    times: dict[str, list[float]] = {k: [] for k in engines}
    # the objects alive now (torch, onnx, the models) are never garbage: keep the collector
    # from walking them during the timed runs of either engine
    gc.collect()
    gc.freeze()
    while min(len(v) for v in times.values()) < runs:
        for key, fn in engines.items():
            # let the previous engine's idle threads park: onnxruntime's spin for tens of ms
            # after a run (measured: 20 ms is not enough), which would steal this engine's cores
            time.sleep(0.25)
            # untimed, for at least 20 ms: wakes this engine's threads and brings the cores and
            # caches back from the idle pause (one run of a 1 ms model is not enough)
            t_end = time.perf_counter() + 0.02
            while True:
                fn()
                if time.perf_counter() >= t_end:
                    break
            for _ in range(min(block, runs - len(times[key]))):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    gc.unfreeze()
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def compare(name: str, path: Path, feeds: dict[str, np.ndarray], *, threads: int = 2,
            runs: int = 30, warmup: int = 3, peers: Sequence[str] = ("onnxruntime",),
            backend: str = "cpu", block: int = 5) -> Result:
    """Median latency of Walle and each peer; timed runs go in blocks of ``block`` per engine,
    engines taking turns, each block after 20 ms of untimed runs."""
    import walle_core

    outputs = walle_core.load(path, backend="reference").output_names
    engines: dict[str, Runner] = {"walle": walle_runner(path, feeds, threads, backend)}
    skipped: dict[str, str] = {}
    for peer in peers:
        try:
            if peer == "onnxruntime":
                engines[peer] = ort_runner(path, feeds, threads)
            elif peer == "mnn":
                engines[peer] = mnn_runner(path, feeds, threads, outputs)
            elif peer == "litert":
                engines[peer] = litert_runner(path, feeds, threads, outputs)
            else:
                skipped[peer] = f"unknown peer (known: {', '.join(PEERS)})"
        except Exception as exc:  # a peer that cannot load the model is reported, not fatal
            skipped[peer] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
    first = warm_up(engines, warmup, skipped, required=("walle",))
    med = interleaved_medians(engines, runs, block)
    res = Result(name, med.pop("walle"), skipped=skipped)
    for peer, ms in med.items():
        res.peers[peer] = ms
        res.diffs[peer] = max_diff(first["walle"], first[peer])
    return res


def header(threads: int, runs: int) -> list[str]:
    lines = [f"threads={threads} runs={runs} (median, interleaved in blocks of 5) cpu_count={os.cpu_count()}",
             f"numpy BLAS: {blas_info()}"]
    with contextlib.suppress(ImportError):
        from walle_cpu.plugin import isa

        lines.append(f"walle cpu kernels: {isa()}")
    return lines


def table_rows(results: Sequence[Result], peers: Sequence[str]) -> list[str]:
    cols = "".join(f"{p[:8] + ' ms':>12}{'walle/' + p[:4]:>12}{'max|diff|':>11}" for p in peers)
    width = max([14, *(len(r.model) + 2 for r in results)])
    rows = [f"{'model':<{width}}{'walle ms':>10}{cols}"]
    for r in results:
        line = f"{r.model:<{width}}{r.walle_ms:>10.2f}"
        for p in peers:
            if p in r.peers:
                line += f"{r.peers[p]:>12.2f}{r.ratio(p):>12.2f}{r.diffs[p]:>11.1e}"
            else:
                line += f"{'-':>12}{'-':>12}{'-':>11}"
        rows.append(line)
    for p in peers:
        ratios = [r.ratio(p) for r in results if p in r.peers]
        if ratios:
            geo = float(np.exp(np.mean(np.log(ratios))))
            rows.append(f"{p}: geometric mean walle/{p} {geo:.2f}, worst {max(ratios):.2f} "
                        f"over {len(ratios)} model(s)")
        for r in results:
            if p in r.skipped:
                rows.append(f"{p} skipped {r.model}: {r.skipped[p]}")
    return rows
