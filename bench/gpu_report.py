"""One report of Walle on this machine's devices: every test model at batch 1 and 16 on every
available backend, on ``auto`` and on ``auto`` in measure mode, each output checked against
onnxruntime; then each backend's calibration (dispatch costs, bandwidths, upload and download).

Prints a markdown table like the evidence file's (``/work/shared/evidence/gpu-h200-*.md``): warm
median milliseconds, the error against onnxruntime (max |diff| / max(|ort|, 1e-2)) and, for
``auto``, the backends the plan uses.

Usage: python bench/gpu_report.py [--models mobilenet_v2,bert,...] [--batches 1,16]
       [--backends cpu,opencl,...] [--budget 20] [--cell-seconds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import walle_core
from tests.models.common import export
from tests.zoo.check import TOL, onnxruntime_outputs, worst_error
from walle_core.plugins import registry
from walle_core.search import calibration_for

MODELS = "mobilenet_v2,resnet18,bert,lstm,unet"


def warm_median_ms(fn: Callable[[], object], cell_s: float, runs: int = 10, *, warm: bool = False) -> float:
    """Median of up to ``runs`` timed calls after one untimed call (unless ``warm``: the caller
    ran it already), stopping after ``cell_s``."""
    if not warm:
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (not times or time.perf_counter() - start < cell_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def batched(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.concatenate([v] * batch)) for k, v in feeds.items()}


def cell(path: Path, feeds: dict[str, np.ndarray], want: dict[str, np.ndarray], backend: str,
         budget: float, cell_s: float) -> dict[str, Any]:
    try:
        m = walle_core.load(path, backend="auto" if backend.startswith("auto") else backend,
                            tune_budget_s=budget if backend == "auto+measure" else 0.0)
        got = m.run(feeds)  # the warm-up run (minutes per run for batch 16 on lavapipe)
        ms = warm_median_ms(lambda: m.run(feeds), cell_s, warm=True)
    except Exception as exc:  # a backend that cannot run a model is a finding, not a crash
        return {"ms": None, "error": None, "note": f"{type(exc).__name__}: {exc}"[:120]}
    steps = m.plan_for(feeds).stage.steps
    uses = "+".join(dict.fromkeys(s.backend for s in steps))
    err = worst_error(got, want)
    return {"ms": ms, "error": err, "ok": err <= TOL, "uses": uses, "programs": len(steps), "note": ""}


def calibration_rows(names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        cal = calibration_for(registry().get(name))
        rows.append({"backend": name, "op_us": cal.op_overhead_s * 1e6, "program_us": cal.program_overhead_s * 1e6,
                     "memory_GBps": cal.bandwidth_Bps / 1e9, "upload_GBps": cal.h2d_Bps / 1e9,
                     "upload_latency_us": cal.h2d_latency_s * 1e6, "download_GBps": cal.d2h_Bps / 1e9,
                     "download_latency_us": cal.d2h_latency_s * 1e6, "device_timed": cal.device_timed,
                     "gemm_GFLOPs": max((r for k, r in cal.rates.items() if k.startswith("MatMul/")),
                                        default=0.0) / 1e9})
    return rows


def fmt(c: dict[str, Any], auto: bool) -> str:
    if c["ms"] is None:
        return f"- ({c['note']})"
    text = f"{c['ms']:.2f}" + ("" if c["ok"] else f" (error {c['error']:.1e})")
    return text + (f" [{c['uses']}, {c['programs']} programs]" if auto else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--backends", default="", help="default: every available backend but reference")
    ap.add_argument("--budget", type=float, default=20.0, help="measure-mode budget per model (s)")
    ap.add_argument("--cell-seconds", type=float, default=3.0, help="timing time per cell (s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    available = [b.name for b in registry().available()]
    forced = [b for b in args.backends.split(",") if b] or [b for b in available if b != "reference"]
    columns = [*forced, "auto", "auto+measure"]
    rows = []
    for name in [n for n in args.models.split(",") if n]:
        path, example = export(import_module(f"tests.models.{name}"))
        for batch in [int(b) for b in args.batches.split(",") if b]:
            feeds = batched(example, batch)
            want = onnxruntime_outputs(path, feeds)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            ort = warm_median_ms(partial(session.run, None, feeds), args.cell_seconds)
            row: dict[str, Any] = {"model": f"{name} b{batch}", "onnxruntime_ms": ort}
            for col in columns:
                row[col] = cell(path, feeds, want, col, args.budget, args.cell_seconds)
                print(f"  {row['model']} {col}: {fmt(row[col], col.startswith('auto'))}", file=sys.stderr)
            rows.append(row)
    cal = calibration_rows(forced)
    if args.json:
        print(json.dumps({"available": available, "models": rows, "calibration": cal}, indent=1))
        return
    print(f"backends available: {', '.join(available)}\n")
    print("| model | onnxruntime cpu | " + " | ".join(f"walle {c}" for c in columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for r in rows:
        print(f"| {r['model']} | {r['onnxruntime_ms']:.2f} | "
              + " | ".join(fmt(r[c], c.startswith("auto")) for c in columns) + " |")
    print("\n(ms, warm median; [backends the plan uses, programs]; error shown where over the tolerance)\n")
    print("| backend | op µs | program µs | memory GB/s | upload GB/s (+µs) | download GB/s (+µs) "
          "| GEMM GFLOP/s | device timers |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cal:
        print(f"| {c['backend']} | {c['op_us']:.2f} | {c['program_us']:.1f} | {c['memory_GBps']:.1f} | "
              f"{c['upload_GBps']:.2f} (+{c['upload_latency_us']:.1f}) | {c['download_GBps']:.2f} "
              f"(+{c['download_latency_us']:.1f}) | {c['gemm_GFLOPs']:.1f} | {c['device_timed']} |")


if __name__ == "__main__":
    main()
