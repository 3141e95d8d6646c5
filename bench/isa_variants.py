"""The cpu backend's kernel variants (AVX-512, AVX2, portable) against each other on whole models.

    python bench/isa_variants.py [--threads 1] [--runs 20] [--rounds 3]
                                 [--models mobilenet_v2,resnet18,bert,lstm,unet,zoo:regnet,...]

Every variant this CPU runs is forced in turn (``WALLE_CPU_ISA``) in a process of its own, in
rounds (load that comes and goes hits every variant alike); each cell is the best of the rounds'
medians, in ms, with its ratio to the fastest variant. A variant much slower than its vector
width explains is a code-generation bug the AVX-512 machine a project is tuned on never shows:
on AVX2, GCC kept 64-byte block vectors on the stack and lowered their compares element by
element (MobileNetV2, 1 thread: 29 ms against 6.5 on AVX-512; 7.4 after the fix). On a CPU whose
AVX-512 runs at the AVX2 rate (AMD Zen 4) the two should be within about 1.3x; elsewhere 2x.
Models: ``tests/models`` names, or ``zoo:NAME`` for ``tests/zoo``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["avx512", "avx2", "scalar"]
MODELS = ["mobilenet_v2", "resnet18", "bert", "lstm", "unet"]


def _load(spec: str) -> tuple[Path, dict[str, np.ndarray]]:
    sys.path.insert(0, str(ROOT))
    if spec.startswith("zoo:"):
        from tests.zoo.export import export, inputs

        return export(spec[4:]), inputs(spec[4:])
    import importlib

    from tests.models.common import export as export_model

    return export_model(importlib.import_module(f"tests.models.{spec}"))  # type: ignore[no-any-return,unused-ignore]


def child(models: list[str], threads: int, runs: int) -> None:
    """Median ms per model on the variant WALLE_CPU_ISA forces, as one JSON line."""
    import walle_core

    out: dict[str, float] = {}
    for spec in models:
        path, feeds = _load(spec)
        model = walle_core.load(path, backend="cpu", threads=threads)
        for _ in range(2):  # (time_run adds a third untimed run)
            model.run(feeds)
        out[spec] = model.time_run(feeds, repeat=runs) * 1e3
    print(json.dumps(out))


def run_variant(isa: str, models: list[str], threads: int, runs: int) -> dict[str, float] | None:
    """The child's times, or None when this CPU lacks the variant."""
    res = subprocess.run([sys.executable, __file__, "--child", "--models", ",".join(models),
                          "--threads", str(threads), "--runs", str(runs)],
                         capture_output=True, text=True, env={**os.environ, "WALLE_CPU_ISA": isa}, cwd=ROOT)
    if res.returncode != 0:
        if "names a kernel variant" in res.stderr + res.stdout:
            return None
        raise SystemExit(f"{isa}: {res.stderr[-2000:]}")
    times: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.child:
        child(models, args.threads, args.runs)
        return
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for isa in args.variants.split(","):
            got = run_variant(isa, models, args.threads, args.runs)
            if got is None:
                continue
            cell = best.setdefault(isa, {})
            for m, ms in got.items():
                cell[m] = min(cell.get(m, float("inf")), ms)
    isas = list(best)
    print(f"{'model':<22}" + "".join(f"{isa + ' ms':>14}{'x best':>8}" for isa in isas))
    for m in models:
        fastest = min(best[isa][m] for isa in isas)
        print(f"{m:<22}" + "".join(f"{best[isa][m]:>14.3f}{best[isa][m] / fastest:>8.2f}" for isa in isas))


if __name__ == "__main__":
    main()
