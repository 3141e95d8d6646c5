"""int8 inference: Walle against onnxruntime on the same quantized models, and against Walle fp32.

    python bench/quant.py [--threads 2] [--runs 20] [--repeat 1] [--cpu-time] [--models resnet18,...] [--calib 8]

Every model (CNNs from ``tests/models`` and ``tests/zoo``, and a transformer) is quantized three
ways: by onnxruntime's ``quantize_static`` in the QDQ and the QOperator formats (uint8
activations, per-channel int8 weights) and by ``walle quantize``'s engine (``--per-channel``,
min/max). For each quantized model, in one process at the same thread count, Walle (cpu
backend) and onnxruntime run it and Walle runs the float model, interleaved in blocks
(``walle_bench.compare.interleaved_medians``; with ``--repeat R`` that whole interleaved timing
runs R times and each engine keeps its lowest median: on a shared, loaded machine a burst of
load that lands on one engine's blocks would otherwise decide a row). ``--cpu-time`` times the
process's CPU time per run instead of wall time, at one thread: the work each engine does,
whatever else the machine runs (a check of the wall-clock table on a busy machine, not a
replacement: it leaves out multithreading). Columns: medians, Walle int8 / onnxruntime int8,
Walle fp32 / Walle int8 (the speed-up of quantizing), and the largest difference between
Walle's and onnxruntime's int8 outputs in units of the output's quantisation step. The summary
gives the geometric means (targets: int8 ratio <= 1.0; fp32/int8 >= 1.8 on the CNNs).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CNNS = ["resnet18", "mobilenet_v2", "yolov8", "mobilenetv3", "efficientnet_lite", "regnet"]
TRANSFORMERS = ["minilm"]
TEST_MODELS = {"resnet18", "mobilenet_v2"}  # tests/models; the others come from tests/zoo


def model_and_inputs(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    if name in TEST_MODELS:
        import importlib

        from tests.models.common import export

        return export(importlib.import_module(f"tests.models.{name}"))
    from tests.zoo.export import export as zoo_export
    from tests.zoo.export import inputs

    return zoo_export(name), inputs(name)


def calibration(feeds: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """``n`` inputs like ``feeds``: float inputs redrawn, integer ones (token ids) kept."""
    rng = np.random.default_rng(3)
    return [{k: rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in feeds.items()} for _ in range(n)]


def ort_quantized(src: Path, dst: Path, fmt: str, batches: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def walle_quantized(src: Path, dst: Path, batches: list[dict[str, np.ndarray]]) -> Path:
    import onnx

    from walle_core.tools.quantize import QuantizeOptions, quantize

    onnx.save(quantize(onnx.load(str(src)), batches, QuantizeOptions("minmax", True), "cpu").model, str(dst))
    return dst


def output_step(path: Path) -> float:
    """The quantisation step of the first output (1.0 when it is not dequantized)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    first = m.graph.output[0].name
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and first in n.output:
            return float(inits[n.input[1]].reshape(-1)[0])
    return 1.0


@dataclass
class Row:
    model: str
    variant: str
    ms: dict[str, float]
    steps: float  # max |walle int8 - ort int8| / output step

    def ratio(self, a: str, b: str) -> float:
        return self.ms[a] / self.ms[b]


def cpu_medians(engines: Mapping[str, Callable[[], object]], runs: int, block: int = 5) -> dict[str, float]:
    """Median milliseconds of process CPU time per run, the engines taking turns in blocks."""
    import statistics
    import time

    times: dict[str, list[float]] = {k: [] for k in engines}
    while min(len(v) for v in times.values()) < runs:
        for key, fn in engines.items():
            fn()  # untimed: caches and the engine's state warm again after the other's turn
            for _ in range(min(block, runs - len(times[key]))):
                t0 = time.process_time()
                fn()
                times[key].append(time.process_time() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def bench(name: str, threads: int, runs: int, n_calib: int, repeat: int = 1, cpu_time: bool = False) -> list[Row]:
    from walle_bench.compare import interleaved_medians, max_diff, ort_runner, walle_runner, warm_up

    src, feeds = model_and_inputs(name)
    batches = calibration(feeds, n_calib)
    work = Path(tempfile.mkdtemp(prefix=f"walle-quant-{name}-"))
    makers: dict[str, Callable[[], Path]] = {
        "ort qdq": lambda: ort_quantized(src, work / "qdq.onnx", "qdq", batches),
        "ort qop": lambda: ort_quantized(src, work / "qop.onnx", "qop", batches),
        "walle qdq": lambda: walle_quantized(src, work / "walle.onnx", batches),
    }
    rows = []
    for variant, make in makers.items():
        try:
            q = make()
        except Exception as exc:  # a model a quantizer cannot take is reported, not fatal
            print(f"  {name} {variant}: not quantized ({type(exc).__name__}: {exc})".splitlines()[0][:160])
            continue
        engines = {"walle int8": walle_runner(q, feeds, threads, "cpu"),
                   "ort int8": ort_runner(q, feeds, threads),
                   "walle fp32": walle_runner(src, feeds, threads, "cpu")}
        skipped: dict[str, str] = {}
        first = warm_up(engines, 3, skipped)
        if skipped:
            print(f"  {name} {variant}: {skipped}")
            continue
        timing = cpu_medians if cpu_time else interleaved_medians
        rounds = [timing(engines, runs) for _ in range(max(1, repeat))]
        ms = {k: min(r[k] for r in rounds) for k in engines}
        steps = max_diff(first["walle int8"], first["ort int8"]) / output_step(q)
        rows.append(Row(name, variant, ms, steps))
        print(f"  {name:18} {variant:10} " + "  ".join(f"{k} {v:8.2f} ms" for k, v in ms.items()), flush=True)
    return rows


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def report(rows: list[Row]) -> list[str]:
    lines = ["| model | quantized by | walle int8 ms | ort int8 ms | walle fp32 ms | int8 walle/ort "
             "| walle fp32/int8 | max diff (steps) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.model} | {r.variant} | {r.ms['walle int8']:.2f} | {r.ms['ort int8']:.2f} | "
                     f"{r.ms['walle fp32']:.2f} | {r.ratio('walle int8', 'ort int8'):.2f} | "
                     f"{r.ratio('walle fp32', 'walle int8'):.2f} | {r.steps:.1f} |")
    cnn = [r for r in rows if r.model in CNNS]
    lines += ["",
              f"geomean walle int8 / onnxruntime int8: {geomean([r.ratio('walle int8', 'ort int8') for r in rows]):.2f}"
              " (target <= 1.0)",
              f"geomean walle fp32 / walle int8 on CNNs: {geomean([r.ratio('walle fp32', 'walle int8') for r in cnn]):.2f}"
              " (target >= 1.8)"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--calib", type=int, default=8, help="calibration inputs per model")
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time per run at one thread instead of wall time")
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved timings per model; each engine keeps its lowest median")
    ap.add_argument("--models", default=",".join(CNNS + TRANSFORMERS))
    args = ap.parse_args()
    if args.cpu_time:
        args.threads = 1
    from walle_bench.compare import header

    print("\n".join(header(args.threads, args.runs)))
    from walle_cpu import _native

    if _native.LIB is not None and hasattr(_native.LIB, "wl_q_isa_name"):
        print(f"walle int8 kernels: {_native.FFI.string(_native.LIB.wl_q_isa_name()).decode()}")
    rows: list[Row] = []
    for name in args.models.split(","):
        rows += bench(name.strip(), args.threads, args.runs, args.calib, args.repeat, args.cpu_time)
    print("\n".join(report(rows)))


if __name__ == "__main__":
    main()
