"""Walle (cpu backend) against onnxruntime and MNN on whole models, same process, same threads.

    python bench/peers.py [--threads 2] [--runs 30] [--models mobilenet_v2,resnet18,bert,lstm,unet]
                          [--peers onnxruntime,mnn] [--tflite PATH.tflite,...]

Models come from ``tests/models/*`` (torch builders exported to ONNX and cached). Every engine
gets a warm-up, then ``--runs`` timed runs interleaved across engines (so that load from other
processes on a shared machine hits all of them alike); medians are reported (batch 1, fp32)
with the ratio Walle/peer and the largest output difference, so a fast wrong answer cannot hide.
MNN (PyPI ``mnn``) converts the ONNX file with ``_tools.mnnconvert`` from its compiled module;
a model it cannot convert or run is listed as skipped with the reason. The OpenBLAS kernel numpy
loaded is printed through threadpoolctl (Walle's cpu backend does not use BLAS; the reference
fallback does). The engine is :mod:`walle_bench.compare`, also behind ``walle bench model FILE.onnx``.

``--tflite`` adds ``.tflite`` files, compared with the LiteRT interpreter (the ``litert`` column;
random inputs of the declared shapes); ``bench/tflite_vs_litert.py`` runs MediaPipe's models so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["mobilenet_v2", "resnet18", "bert", "lstm", "unet"]


def test_model(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    """``tests/models/NAME.py`` exported through torch (cached), with its own inputs."""
    from tests.models.common import export

    return export(importlib.import_module(f"tests.models.{name}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--peers", default="onnxruntime,mnn")
    ap.add_argument("--tflite", default="", help=".tflite files to compare with LiteRT (the litert column)")
    args = ap.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))  # a repository script: the test models are importable from here
    from walle_bench.compare import compare, header, random_feeds, table_rows

    peers = [p for p in args.peers.split(",") if p]
    for line in header(args.threads, args.runs):
        print(line)
    results = []
    for name in args.models.split(","):
        try:
            path, feeds = test_model(name)
        except Exception as exc:  # torch missing, export failure
            print(f"{name:<14} skipped: {exc}")
            continue
        results.append(compare(name, path, feeds, threads=args.threads, runs=args.runs, peers=peers))
        print(table_rows(results[-1:], peers)[1], flush=True)
    for file in (Path(f) for f in args.tflite.split(",") if f):
        results.append(compare(file.stem, file, random_feeds(file), threads=args.threads, runs=args.runs,
                               peers=("litert",)))
        print(table_rows(results[-1:], ["litert"])[1], flush=True)
    if args.tflite and "litert" not in peers:
        peers.append("litert")
    print()
    for line in table_rows(results, peers):
        print(line)


if __name__ == "__main__":
    main()
