"""The model zoo (``tests/zoo/``) on Walle (cpu and auto) against onnxruntime and MNN.

    python bench/zoo.py [--threads 2] [--runs 20] [--models yolov8,crnn,...] [--peers onnxruntime,mnn]
                        [--profile 3] [--profile-runs 20] [--profile-models yolov8,ssdlite]

(from the repository root or anywhere: the zoo is imported from this checkout.)

Per model, in one process with the same thread count: Walle on the ``cpu`` backend, Walle with
``backend="auto"`` (the search), onnxruntime and MNN (PyPI ``mnn``, where its converter takes
the model; otherwise the reason is listed) each get a warm-up, then ``--runs`` timed runs
interleaved in blocks across all engines (``walle_bench.compare.interleaved_medians``). The
table gives medians at the zoo's example sizes, Walle/peer ratios and the largest output
difference from onnxruntime relative to its scale (a fast wrong answer cannot hide); the
summary gives each ratio's geometric mean and the worst model.

``--profile K`` then profiles the K models with the worst cpu/onnxruntime ratio (or the ones
``--profile-models`` names; ``--models x --runs 1`` skips most of the timing): Walle's per-op
C timers (``bench/profile_cpu.op_times``) against onnxruntime's own profiler, both summed into
the same op classes (convolution, GEMM, element-wise, data movement, ...), so it shows which
kinds of op lose the time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WALLE = {"walle cpu": "cpu", "walle auto": "auto"}

# onnxruntime op types (including its fused ones) -> the op class both profiles are summed into
ORT_CLASSES = {
    "conv": ("Conv", "ConvTranspose", "FusedConv", "NhwcFusedConv", "QLinearConv"),
    "gemm": ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Attention", "MultiHeadAttention"),
    "recurrent": ("LSTM", "GRU", "RNN"),
    "norm/softmax": ("Softmax", "LogSoftmax", "LayerNormalization", "SkipLayerNormalization",
                     "SimplifiedLayerNormalization", "BatchNormalization", "InstanceNormalization",
                     "GroupNormalization", "BiasSoftmax"),
    "reduce": ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
               "ArgMax", "ArgMin", "CumSum"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"),
    "movement": ("Transpose", "Reshape", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze",
                 "Flatten", "Resize", "Upsample", "Pad", "Expand", "Tile", "DepthToSpace",
                 "SpaceToDepth", "Identity", "Shape", "ConstantOfShape", "Range", "Trilu"),
    "gather": ("Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements"),
}
ORT_CLASS = {op: cls for cls, ops in ORT_CLASSES.items() for op in ops}
# Walle atomic kinds -> op class (a claimed composite is an LSTM cell, softmax or layer norm,
# which the cpu profile's labels do not tell apart)
WALLE_CLASSES = {"Conv2D": "conv", "MatMul": "gemm", "Raster": "movement", "Pool2D": "pool",
                 "Reduce": "reduce", "GatherScatter": "gather", "Sort": "other",
                 "Composite": "composite"}


@dataclass
class Row:
    model: str
    ms: dict[str, float] = field(default_factory=dict)          # engine -> median ms
    error: dict[str, float] = field(default_factory=dict)       # engine -> max |diff| / ort scale
    skipped: dict[str, str] = field(default_factory=dict)       # engine -> reason

    def ratio(self, engine: str, peer: str) -> float | None:
        if engine in self.ms and peer in self.ms:
            return self.ms[engine] / self.ms[peer]
        return None


def scaled_error(got: Any, want: Any) -> float:
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        g64, w64 = np.asarray(g, np.float64).reshape(-1), np.asarray(w, np.float64).reshape(-1)
        if g64.size != w64.size:
            return float("inf")
        if w64.size:
            scale = max(float(np.max(np.abs(w64))), 1e-6)
            worst = max(worst, float(np.max(np.abs(g64 - w64))) / scale)
    return worst


def bench_model(name: str, threads: int, runs: int, peers: list[str]) -> Row:
    from tests.zoo.export import export, inputs
    from walle_bench.compare import interleaved_medians, mnn_runner, ort_runner, walle_runner, warm_up

    path, feeds = export(name), inputs(name)
    row = Row(name)
    engines: dict[str, Any] = {}
    for label, backend in WALLE.items():
        try:
            engines[label] = walle_runner(path, feeds, threads, backend)
        except Exception as exc:  # an engine bug is reported in the table, not fatal to the run
            row.skipped[label] = f"load failed: {type(exc).__name__}: {exc}".splitlines()[0][:160]
    makers = {"onnxruntime": lambda: ort_runner(path, feeds, threads),
              "mnn": lambda: mnn_runner(path, feeds, threads, list(outputs_of(path)))}
    for peer in peers:
        try:
            engines[peer] = makers[peer]()
        except Exception as exc:
            row.skipped[peer] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    first = warm_up(engines, 3, row.skipped)
    if engines:
        row.ms = interleaved_medians(engines, runs)
    if "onnxruntime" in first:
        for key, outs in first.items():
            row.error[key] = scaled_error(outs, first["onnxruntime"])
    return row


def outputs_of(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def columns(peers: list[str]) -> list[tuple[str, str]]:
    """The (engine, peer) ratios reported."""
    return [(w, p) for p in peers for w in WALLE]


def table(rows: list[Row], peers: list[str]) -> list[str]:
    engines = [*WALLE, *peers]
    head = f"{'model':<18}" + "".join(f"{e + ' ms':>15}" for e in engines)
    head += "".join(f"{w.split()[1] + '/' + p[:4]:>11}" for w, p in columns(peers)) + f"{'err/scale':>11}"
    lines = [head]
    for r in rows:
        line = f"{r.model:<18}" + "".join(f"{r.ms[e]:>15.3f}" if e in r.ms else f"{'-':>15}" for e in engines)
        for w, p in columns(peers):
            q = r.ratio(w, p)
            line += f"{q:>11.2f}" if q is not None else f"{'-':>11}"
        errs = [v for k, v in r.error.items() if k in WALLE]
        line += f"{max(errs):>11.1e}" if errs else f"{'-':>11}"
        lines.append(line)
    return lines


def summary(rows: list[Row], peers: list[str]) -> list[str]:
    lines = []
    for w, p in columns(peers):
        got = [(q, r.model) for r in rows if (q := r.ratio(w, p)) is not None]
        if got:
            geo = float(np.exp(np.mean(np.log([q for q, _ in got]))))
            worst = max(got)
            lines.append(f"{w}/{p}: geometric mean {geo:.2f}, worst {worst[0]:.2f} ({worst[1]}), "
                         f"{sum(q > 1.3 for q, _ in got)} above 1.3, over {len(got)} models")
    for r in rows:
        lines += [f"{r.model}: {engine} skipped: {why}" for engine, why in r.skipped.items()]
    return lines


def classify_walle(label: str) -> str:
    head = label.split(" ")[0]
    if head.startswith("chain[") or head.split("/")[0].split("+")[0] in ("Unary", "Binary", "Select", "Cast"):
        return "elementwise"
    if head.startswith("["):
        return "fallback step"
    return WALLE_CLASSES.get(head.split("+")[0].split("/")[0], "other")


def ort_profile(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int,
                warmup: int = 3) -> list[tuple[float, str]]:
    """(mean seconds, "OpType node") per node from onnxruntime's profiler; each node's first
    ``warmup`` runs are dropped."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "walle-zoo-ort")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(warmup + runs):
        sess.run(None, feeds)
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink(missing_ok=True)
    per_node: dict[str, list[float]] = defaultdict(list)
    for ev in events:
        name = str(ev.get("name", ""))
        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
            per_node[f"{ev['args'].get('op_name', '?')} {name[: -len('_kernel_time')]}"].append(ev["dur"] * 1e-6)
    return [(float(np.median(d[warmup:] or d)), label) for label, d in per_node.items()]


def walle_profile(model: Any, feeds: dict[str, np.ndarray], runs: int) -> list[tuple[float, str]]:
    """(median seconds, label) per op of Walle's cpu plan over ``runs`` single profiled runs
    (a median, not a mean: other processes share this machine)."""
    from profile_cpu import op_times

    samples = [op_times(model, feeds, 1) for _ in range(runs)]
    return [(float(np.median([s[i][0] for s in samples])), label) for i, (_, label) in enumerate(samples[0])]


def profile(name: str, threads: int, runs: int, top: int = 6) -> list[str]:
    """Walle's cpu backend against onnxruntime per op class, then each side's costliest ops.

    Walle's C timers cost nothing measurable, so its op times are shown as measured, and what a
    whole run takes beyond their sum (dispatch, thread hand-offs, copies in and out) is its own
    row. onnxruntime's profiler adds a few microseconds to every node, so its node times are
    scaled to sum to its whole-run median: the "ort ms" column estimates a real run."""
    import walle_core
    from tests.zoo.export import export, inputs
    from walle_bench.compare import interleaved_medians, ort_runner

    path, feeds = export(name), inputs(name)
    model = walle_core.load(path, backend="cpu", threads=threads)
    for _ in range(3):
        model.run(feeds)
    run_ms = interleaved_medians({"walle": lambda: list(model.run(feeds).values()),
                                  "ort": ort_runner(path, feeds, threads)}, runs)
    walle = walle_profile(model, feeds, runs)
    ort = ort_profile(path, feeds, threads, runs)
    ort_scale = run_ms["ort"] / max(sum(sec for sec, _ in ort) * 1e3, 1e-9)
    by_class: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0])
    for sec, label in walle:
        c = by_class[classify_walle(label)]
        c[0] += sec * 1e3
        c[2] += 1
    for sec, label in ort:
        c = by_class[ORT_CLASS.get(label.split(" ")[0], "elementwise")]
        c[1] += sec * 1e3 * ort_scale
        c[3] += 1
    ops_ms = sum(sec for sec, _ in walle) * 1e3
    by_class["outside ops"][0] = run_ms["walle"] - ops_ms
    lines = [f"== {name}: whole run walle cpu {run_ms['walle']:.3f} ms (ops {ops_ms:.3f} ms over {len(walle)}"
             f" ops), onnxruntime {run_ms['ort']:.3f} ms ({len(ort)} nodes)",
             *(f"   walle dropped backend {b}: {why}" for b, why in model.dropped.items()),
             f"   {'op class':<16}{'walle ms':>10}{'ops':>6}{'ort ms':>10}{'nodes':>7}{'walle-ort':>11}"]
    for cls, (w, o, nw, no) in sorted(by_class.items(), key=lambda kv: kv[1][1] - kv[1][0]):
        lines.append(f"   {cls:<16}{w:>10.3f}{int(nw):>6}{o:>10.3f}{int(no):>7}{w - o:>+11.3f}")
    lines.append(f"   walle's costliest ops (of {len(walle)}):")
    lines += [f"     {sec * 1e6:9.1f} us  {label}" for sec, label in sorted(walle, reverse=True)[:top]]
    lines.append(f"   onnxruntime's costliest nodes (of {len(ort)}, profiler times):")
    lines += [f"     {sec * 1e6:9.1f} us  {label}" for sec, label in sorted(ort, reverse=True)[:top]]
    return lines


def main() -> None:
    from tests.zoo import ZOO

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--peers", default="onnxruntime,mnn")
    ap.add_argument("--profile", type=int, default=3, help="profile the K worst models (cpu/onnxruntime)")
    ap.add_argument("--profile-runs", type=int, default=20)
    ap.add_argument("--profile-models", default="", help="profile these models (comma-separated) instead")
    args = ap.parse_args()
    from walle_bench.compare import header

    peers = [p for p in args.peers.split(",") if p]
    for line in header(args.threads, args.runs):
        print(line)
    rows: list[Row] = []
    for name in args.models.split(","):
        rows.append(bench_model(name, args.threads, args.runs, peers))
        head, line = table(rows[-1:], peers)
        print(f"{head}\n{line}" if len(rows) == 1 else line, flush=True)
    print()
    for line in table(rows, peers) + summary(rows, peers):
        print(line)
    ranked = sorted((q, r.model) for r in rows if (q := r.ratio("walle cpu", "onnxruntime")) is not None)
    chosen = [n for n in args.profile_models.split(",") if n] or [n for _, n in ranked[::-1][: args.profile]]
    for name in chosen:
        print()
        for line in profile(name, args.threads, args.profile_runs):
            print(line, flush=True)


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the zoo and profile_cpu live in this checkout
    main()
