"""Per-op profile of a model on the cpu backend (C-side timers around every op of wl_run).

    python -m bench.profile_cpu tests.models.NAME [--threads 2] [--runs 20] [--top 25]

(from the repository root, so that the test models are importable)

Prints the most expensive ops (mean wall time per run) and totals per op kind and algorithm;
steps that run on another backend (fallbacks) are timed as a whole.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _load(spec: str) -> tuple[Path, dict[str, np.ndarray]]:
    if spec.endswith(".onnx"):
        raise SystemExit("pass tests.models.NAME (feeds come from its build())")
    from tests.models.common import export

    return export(importlib.import_module(spec))  # type: ignore[no-any-return,unused-ignore]


def op_times(model: Any, feeds: dict[str, np.ndarray], runs: int) -> list[tuple[float, str]]:
    """(mean seconds, label) per op of the first stage's cpu programs, in plan order; a step
    on another backend (a fallback) is one row."""
    from walle_cpu.compiler import CpuExecutable

    node = model.plan_for(feeds)
    table = {tid: feeds[name] for name, tid in node.input_ids.items()}
    rows: list[tuple[float, str]] = []
    for step in node.stage.steps:
        ins = [table[i] for i in step.inputs]
        exe = step.executable
        if isinstance(exe, CpuExecutable):
            for label, sec in exe.profile(ins, runs):
                rows.append((sec, label))
        else:
            t0 = time.perf_counter()
            for _ in range(runs):
                exe.run(ins)
            rows.append(((time.perf_counter() - t0) / runs, f"[{step.backend} step, {step.ops} ops]"))
        for tid, arr in zip(step.outputs, exe.run(ins), strict=True):
            table[tid] = arr
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    import walle_core

    path, feeds = _load(args.model)
    model = walle_core.load(path, backend="cpu", threads=args.threads)
    model.run(feeds)
    node = model.plan_for(feeds)
    t0 = time.perf_counter()
    for _ in range(args.runs):
        model.run(feeds)
    total = (time.perf_counter() - t0) / args.runs
    rows = op_times(model, feeds, args.runs)
    busy = sum(r[0] for r in rows)
    print(f"model.run {total * 1e3:.3f} ms; ops {busy * 1e3:.3f} ms over {len(rows)} ops "
          f"({len(node.stage.steps)} steps)")
    by_kind: dict[str, list[float]] = defaultdict(list)
    for sec, label in rows:
        by_kind[" ".join(label.split(" ")[:2])].append(sec)
    print("\nby kind/algorithm:")
    for k, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))[:20]:
        print(f"  {sum(v) * 1e3:9.3f} ms {len(v):5d} ops  {k}")
    print(f"\ntop {args.top} ops:")
    for sec, label in sorted(rows, reverse=True)[: args.top]:
        print(f"  {sec * 1e6:9.1f} us  {label}")


if __name__ == "__main__":
    main()
