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
After the timing tables, an accuracy table: for every output of every model, Walle's
max |difference| from LiteRT relative to the output's scale (max |LiteRT|), next to LiteRT's own
spread (same relative measure) between its kernel sets (XNNPACK, builtin, reference) and how far
LiteRT's output moves when each float input is nudged by about one float32 ulp. Where the two are alike, a difference is the model's
conditioning, not an error (pose_landmark_full's segmentation logits, |x| ~ 1400, move by ~1
under a 1-ulp input change; see docs/tflite.md). ``--no-accuracy`` leaves it out.
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


def accuracy_rows(name: str, path: Path, feeds: dict[str, Any], threads: int, backend: str,
                  nudges: int = 3) -> list[str]:
    """Per output: Walle's max |diff| from LiteRT / max |LiteRT|, the spread between LiteRT's
    kernel sets, and LiteRT's own change under ~1-ulp relative input nudges (the largest over
    ``nudges`` draws), same measure."""
    import numpy as np

    import walle_core
    from walle_bench.compare import litert_runner, walle_runner

    outputs = walle_core.load(path, backend="reference").output_names
    ref = [np.asarray(v, np.float64) for v in litert_runner(path, feeds, threads, outputs)()]
    got = [np.asarray(v, np.float64) for v in walle_runner(path, feeds, threads, backend)()]
    rng = np.random.default_rng(1)
    moved = [0.0] * len(outputs)
    floats = {k: v for k, v in feeds.items() if np.asarray(v).dtype.kind == "f"}
    for _ in range(nudges if floats else 0):
        eps = np.finfo(np.float32).eps
        nudged = {k: (v * (1 + rng.uniform(-eps, eps, v.shape))).astype(v.dtype) if k in floats else v
                  for k, v in feeds.items()}
        again = litert_runner(path, nudged, threads, outputs)()
        for j, (a, r) in enumerate(zip(again, ref, strict=True)):
            moved[j] = max(moved[j], float(np.max(np.abs(np.asarray(a, np.float64) - r), initial=0.0)))
    from tflite_testlib import interpreter, litert_kernel_spread

    data = path.read_bytes()
    order = [d["name"] for d in interpreter(data).get_input_details()]
    spread = litert_kernel_spread(data, [feeds[k] for k in order] if set(order) == set(feeds) else list(feeds.values()))
    rows = []
    for j, (n, g, r) in enumerate(zip(outputs, got, ref, strict=True)):
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-30)
        diff = float(np.max(np.abs(g - r), initial=0.0)) if g.shape == r.shape else float("nan")
        sens = f"{moved[j] / scale:>12.1e}" if floats else f"{'-':>12}"
        rows.append(f"{name[:28]:<28} {n[:22]:<22} {scale:>9.3g} {diff:>10.2e} {diff / scale:>10.1e}"
                    f"{spread[j]:>15.1e}{sens}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--int8", action="store_true", help="also the models' full-int8 versions")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeat", type=int, default=1, help="comparisons per model; the median ratio's is kept")
    ap.add_argument("--cpu-time", action="store_true", help="time by process CPU time, not the wall clock")
    ap.add_argument("--no-accuracy", action="store_true", help="leave out the per-output accuracy table")
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
    feeds_of = {name: random_feeds(path) for name, path in jobs}
    for name, path in jobs:
        tries = []
        for _ in range(max(1, args.repeat)):
            if args.cpu_time:
                r = cpu_time_compare(name, path, feeds_of[name], args.threads, args.runs, args.backend)
            else:
                r = compare(name, path, feeds_of[name], threads=args.threads, runs=args.runs,
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
    if not args.no_accuracy:
        print()
        print(f"{'model':<28} {'output':<22} {'max|ref|':>9} {'max|diff|':>10} {'rel diff':>10}"
              f"{'litert kernels':>15}{'litert 1ulp':>12}")
        for name, path in jobs:
            print("\n".join(accuracy_rows(name, path, feeds_of[name], args.threads, args.backend)), flush=True)

if __name__ == "__main__":
    main()
