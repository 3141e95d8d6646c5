"""Walle (cpu backend) against onnxruntime on whole models, same process, same thread count.

    python bench/peers.py [--threads 2] [--runs 30] [--models mobilenet_v2,resnet18,bert,lstm,unet]

Models come from ``tests/models/*`` (torch builders exported to ONNX and cached). Each engine
gets a warm-up, then the median of ``--runs`` timed runs (batch 1, fp32). Outputs are compared
(max abs difference) so a fast wrong answer cannot hide. The OpenBLAS kernel numpy uses is
reported through threadpoolctl when that package is installed (Walle's cpu backend does not use
BLAS; the reference fallback does). MNN is not compared here yet.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["mobilenet_v2", "resnet18", "bert", "lstm", "unet"]


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "threadpoolctl not installed"
    parts = [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
             f"threads={i.get('num_threads')}" for i in threadpool_info()]
    return "; ".join(parts) or "no BLAS loaded"


def timed(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnxruntime as ort

    import walle_core
    from tests.models.common import export

    print(f"threads={args.threads} runs={args.runs} (median) cpu_count={os.cpu_count()}")
    print(f"numpy BLAS: {blas_info()}")
    try:
        from walle_cpu.plugin import isa

        print(f"walle cpu kernels: {isa()}")
    except ImportError:
        pass
    print(f"{'model':<14}{'walle ms':>10}{'ort ms':>10}{'walle/ort':>11}{'max |diff|':>12}")
    ratios = []
    for name in args.models.split(","):
        try:
            mod = importlib.import_module(f"tests.models.{name}")
        except ImportError as exc:
            print(f"{name:<14} skipped: {exc}")
            continue
        path, feeds = export(mod)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        model = walle_core.load(path, backend="cpu", threads=args.threads)
        want = sess.run(None, feeds)
        got = model.run(feeds)
        diff = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64))))
                   if np.size(w) else 0.0 for g, w in zip(got.values(), want, strict=False))
        t_w = timed(lambda m=model, f=feeds: m.run(f), args.runs)
        t_o = timed(lambda s=sess, f=feeds: s.run(None, f), args.runs)
        ratios.append(t_w / t_o)
        print(f"{name:<14}{t_w * 1e3:>10.2f}{t_o * 1e3:>10.2f}{t_w / t_o:>11.2f}{diff:>12.2e}", flush=True)
    if ratios:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"geometric mean walle/ort: {geo:.2f}  worst: {max(ratios):.2f}")


if __name__ == "__main__":
    main()
