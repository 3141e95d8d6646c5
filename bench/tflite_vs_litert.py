"""Walle on .tflite files against the LiteRT interpreter (PyPI ``ai-edge-litert``), same process,
same thread count: the TFLite column of the peer comparison.

    python bench/tflite_vs_litert.py [--threads 2] [--runs 20] [--models face_landmark,...] [--int8]
                                     [--backend cpu] [--repeat 1] [--cpu-time]

Models: the ``.tflite`` files MediaPipe's wheel ships (found or fetched by
``tests/tflite_testlib.mediapipe_models``); ``--int8`` adds their full-int8 versions, made by
LiteRT's own calibrator (Walle runs those as QDQ over float kernels). Walle loads the file itself
(``walle_core.load(path)``); LiteRT runs it with its default delegate (XNNPACK). Timing and the
table are :func:`walle_bench.compare.compare` with the ``litert`` peer (the same as
``walle bench model FILE.tflite --vs litert``), float and int8 models in separate tables.
``--repeat K`` compares each model K times (each an interleaved comparison of its own) and keeps
the comparison with the median ratio: on a shared machine one comparison's ratio can swing 2x
when the load changes under it. ``--cpu-time`` times each run by the process's CPU time (all
threads) instead of the wall clock, same interleaving: what each engine computes, which other
jobs on the machine do not inflate (idle threads that spin count as work).
(Not named ``tflite.py``: run as a script, that name would shadow the ``tflite`` package.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["face_detection_short_range", "face_landmark", "hand_landmark_lite", "iris_landmark",
          "palm_detection_lite", "pose_landmark_full", "selfie_segmentation"]


def cpu_time_compare(name: str, path: Path, feeds: dict[str, Any], threads: int, runs: int,
                     backend: str) -> Any:
    """As ``walle_bench.compare.compare`` with the ``litert`` peer (warm-up, blocks of 5 runs per
    engine after a pause and 20 ms of untimed runs), timed by ``time.process_time``."""
    import walle_core
    from walle_bench.compare import Result, litert_runner, max_diff, walle_runner, warm_up

    outputs = walle_core.load(path, backend="reference").output_names
    engines = {"walle": walle_runner(path, feeds, threads, backend)}
    skipped: dict[str, str] = {}
    try:
        engines["litert"] = litert_runner(path, feeds, threads, outputs)
    except Exception as exc:  # reported, as compare() does
        skipped["litert"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
    first = warm_up(engines, 3, skipped, required=("walle",))
    times: dict[str, list[float]] = {k: [] for k in engines}
    while min(len(v) for v in times.values()) < runs:
        for key, fn in engines.items():
            time.sleep(0.25)  # the other engine's idle threads park
            t_end = time.perf_counter() + 0.02
            while time.perf_counter() < t_end:
                fn()
            for _ in range(min(5, runs - len(times[key]))):
                c0 = time.process_time()
                fn()
                times[key].append(time.process_time() - c0)
    res = Result(name, statistics.median(times["walle"]) * 1e3, skipped=skipped)
    if "litert" in times:
        res.peers["litert"] = statistics.median(times["litert"]) * 1e3
        res.diffs["litert"] = max_diff(first["walle"], first["litert"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--int8", action="store_true", help="also the models' full-int8 versions")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeat", type=int, default=1, help="comparisons per model; the median ratio's is kept")
    ap.add_argument("--cpu-time", action="store_true", help="time by process CPU time, not the wall clock")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))  # a repository script: the TFLite test helpers
    from tflite_testlib import builtin_transpose_conv, fold_fp16_weights, mediapipe_models, quantize

    from walle_bench.compare import compare, header, random_feeds, table_rows
    from walle_core import flags

    zoo = mediapipe_models()
    if zoo is None:
        sys.exit("MediaPipe's .tflite models are not available (pip could not fetch the wheel)")
    for line in header(args.threads, args.runs):
        print(line)
    if args.cpu_time:
        print("times: process CPU time per run (all threads), not wall clock")
    work = flags.cache_dir() / "tflite" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path]] = []
    for name in args.models.split(","):
        path = zoo / f"{name}.tflite"
        if name.startswith("selfie_segmentation"):
            # LiteRT lacks MediaPipe's custom transposed conv: both engines run the builtin version.
            path = work / f"{name}.tflite"
            path.write_bytes(builtin_transpose_conv((zoo / f"{name}.tflite").read_bytes()))
        jobs.append((name, path))
        if args.int8:
            q = work / f"{name}-int8.tflite"
            if not q.is_file():
                q.write_bytes(quantize(fold_fp16_weights(path.read_bytes()), samples=4))
            jobs.append((f"{name} (int8)", q))
    results = []
    for name, path in jobs:
        tries = []
        for _ in range(max(1, args.repeat)):
            if args.cpu_time:
                r = cpu_time_compare(name, path, random_feeds(path), args.threads, args.runs, args.backend)
            else:
                r = compare(name, path, random_feeds(path), threads=args.threads, runs=args.runs,
                            peers=("litert",), backend=args.backend)
            tries.append(r)
            print(f"  {name}: walle {r.walle_ms:.2f} ms, litert {r.peers.get('litert', float('nan')):.2f} ms",
                  flush=True)
        timed = sorted((t for t in tries if "litert" in t.peers), key=lambda t: t.ratio("litert"))
        results.append(timed[len(timed) // 2] if timed else tries[0])
    for int8 in (False, True):
        group = [r for r in results if ("(int8)" in r.model) == int8]
        if group:
            print()
            print("\n".join(table_rows(group, ["litert"])))

if __name__ == "__main__":
    main()
