"""Walle on .tflite files against the LiteRT interpreter (PyPI ``ai-edge-litert``), same process,
same thread count: the TFLite column of the peer comparison.

    python bench/tflite_vs_litert.py [--threads 2] [--runs 20] [--models face_landmark,...] [--int8]
                           [--backend cpu]

Models: the ``.tflite`` files MediaPipe's wheel ships (found or fetched by
``tests/tflite_testlib.mediapipe_models``); ``--int8`` adds their full-int8 versions, made by
LiteRT's own calibrator (Walle runs those as QDQ over float kernels). Walle loads the file itself
(``walle_core.load(path)``); LiteRT runs it with its default delegate (XNNPACK). Timing is
:func:`walle_bench.compare.interleaved_medians` (blocks of runs, engines taking turns), with the
ratio Walle/LiteRT, the geometric mean of the ratios and the largest output difference.
(Not named ``tflite.py``: run as a script, that name would shadow the ``tflite`` package.)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["face_detection_short_range", "face_landmark", "hand_landmark_lite", "iris_landmark",
          "palm_detection_lite", "pose_landmark_full"]


def litert_runner(model: bytes, feeds: Sequence[np.ndarray], threads: int):  # type: ignore[no-untyped-def]
    from tflite_testlib import interpreter

    it = interpreter(model, threads)
    ins, outs = it.get_input_details(), it.get_output_details()

    def run() -> list[np.ndarray]:
        for d, f in zip(ins, feeds, strict=True):
            it.set_tensor(d["index"], f)
        it.invoke()
        return [it.get_tensor(d["index"]) for d in outs]

    return run


def bench_one(name: str, path: Path, threads: int, runs: int, backend: str) -> tuple[float, float, float]:
    """(walle ms, litert ms, max |difference|) for one model file."""
    from tflite_testlib import random_feeds

    import walle_core
    from walle_bench.compare import interleaved_medians, max_diff, walle_runner, warm_up

    data = path.read_bytes()
    feeds = random_feeds(data)
    names = walle_core.load(path, backend="reference").input_names
    engines = {"walle": walle_runner(path, dict(zip(names, feeds, strict=True)), threads, backend),
               "litert": litert_runner(data, feeds, threads)}
    first = warm_up(engines, 3, {}, required=("walle", "litert"))
    medians = interleaved_medians(engines, runs)
    diff = max_diff([np.asarray(v, np.float64) for v in first["walle"]],
                    [np.asarray(v, np.float64) for v in first["litert"]])
    return medians["walle"], medians["litert"], diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--int8", action="store_true", help="also the models' full-int8 versions")
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))  # a repository script: the TFLite test helpers
    from tflite_testlib import fold_fp16_weights, mediapipe_models, quantize

    from walle_bench.compare import header
    from walle_core import flags

    zoo = mediapipe_models()
    if zoo is None:
        sys.exit("MediaPipe's .tflite models are not available (pip could not fetch the wheel)")
    for line in header(args.threads, args.runs):
        print(line)
    print(f"{'model':<34} {'walle ms':>9} {'litert ms':>10} {'ratio':>6} {'max diff':>9}")
    jobs: list[tuple[str, Path]] = []
    int8_dir = flags.cache_dir() / "tflite" / "int8"
    for name in args.models.split(","):
        path = zoo / f"{name}.tflite"
        jobs.append((name, path))
        if args.int8:
            q = int8_dir / f"{name}.tflite"
            if not q.is_file():
                int8_dir.mkdir(parents=True, exist_ok=True)
                q.write_bytes(quantize(fold_fp16_weights(path.read_bytes()), samples=4))
            jobs.append((f"{name} (int8)", q))
    ratios: dict[bool, list[float]] = {False: [], True: []}
    for name, path in jobs:
        walle_ms, litert_ms, diff = bench_one(name, path, args.threads, args.runs, args.backend)
        ratios["int8" in name].append(walle_ms / litert_ms)
        print(f"{name:<34} {walle_ms:>9.2f} {litert_ms:>10.2f} {walle_ms / litert_ms:>6.2f} {diff:>9.2e}",
              flush=True)
    for int8, values in ratios.items():
        if values:
            geo = math.exp(sum(math.log(r) for r in values) / len(values))
            print(f"geometric mean walle/litert ({'int8' if int8 else 'float'}): {geo:.2f}")


if __name__ == "__main__":
    main()
