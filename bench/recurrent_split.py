"""Small LSTM / GRU layers with their steps split by hidden units across threads, or not.

Every case is one ONNX LSTM or GRU node (batch-first input projected by the op itself, constant
weights) loaded twice on the cpu backend at ``--threads``: once with each step split into
``--chunks`` chunks of hidden units (``WALLE_RECURRENT_CHUNKS``), once whole; both run
interleaved with onnxruntime in the same process. Prints medians and the same-round ratios, so a split that costs more than it
gains on this machine shows as split/whole > 1, and each engine's best round (on a loaded
machine the best round is the one where every thread had a core).

    python bench/recurrent_split.py [--threads 2] [--chunks 2] [--rounds 15] [--inner 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import walle_core

CASES = [  # (cell, batch, input size, hidden, steps)
    ("LSTM", 1, 32, 32, 50), ("LSTM", 2, 32, 64, 20), ("LSTM", 1, 64, 64, 50),
    ("LSTM", 1, 96, 96, 50), ("GRU", 1, 64, 64, 50), ("GRU", 1, 40, 96, 50),
    ("LSTM", 4, 64, 64, 25),
]


def model_bytes(cell: str, batch: int, inp: int, hidden: int, seq: int) -> bytes:
    gates = 4 if cell == "LSTM" else 3
    rng = np.random.default_rng(hidden * 7 + batch)
    w = (rng.standard_normal((1, gates * hidden, inp)) * 0.2).astype(np.float32)
    r = (rng.standard_normal((1, gates * hidden, hidden)) * 0.2).astype(np.float32)
    b = (rng.standard_normal((1, 2 * gates * hidden)) * 0.1).astype(np.float32)
    node = helper.make_node(cell, ["x", "W", "R", "B"], ["y"], hidden_size=hidden)
    if cell == "GRU":
        node.attribute.append(helper.make_attribute("linear_before_reset", 1))
    g = helper.make_graph(
        [node], "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 1, batch, hidden])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def load(data: bytes, threads: int, chunks: str | None) -> walle_core.Model:
    saved = os.environ.pop("WALLE_RECURRENT_CHUNKS", None)
    if chunks is not None:
        os.environ["WALLE_RECURRENT_CHUNKS"] = chunks
    try:
        return walle_core.load(data, backend="cpu", threads=threads)
    finally:
        os.environ.pop("WALLE_RECURRENT_CHUNKS", None)
        if saved is not None:
            os.environ["WALLE_RECURRENT_CHUNKS"] = saved


def per_call_us(fn: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner * 1e6


def measure(case: tuple[str, int, int, int, int], threads: int, chunks: int, rounds: int, inner: int) -> str:
    cell, batch, inp, hidden, seq = case
    data = model_bytes(cell, batch, inp, hidden, seq)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    feeds = {"x": np.random.default_rng(1).standard_normal((seq, batch, inp)).astype(np.float32)}
    want = sess.run(None, feeds)[0]
    split, whole = load(data, threads, str(chunks)), load(data, threads, "1")
    engines: dict[str, Callable[[], object]] = {
        "ort": lambda: sess.run(None, feeds), "split": lambda: split.run(feeds),
        "whole": lambda: whole.run(feeds)}
    for m in (split, whole):
        np.testing.assert_allclose(m.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for fn in engines.values():
        per_call_us(fn, inner)
    for _ in range(rounds):
        for key, fn in engines.items():
            times[key].append(per_call_us(fn, inner))
    sw = statistics.median(a / b for a, b in zip(times["split"], times["whole"], strict=True))
    so_ = statistics.median(a / b for a, b in zip(times["split"], times["ort"], strict=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    name = f"{cell} b{batch} in{inp} h{hidden} t{seq}"
    return (f"{name:<28}{med['split']:>9.1f}{med['whole']:>9.1f}{med['ort']:>9.1f}{sw:>13.2f}{so_:>11.2f}"
            f"   best {best['split']:.1f} {best['whole']:.1f} {best['ort']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=40)
    args = ap.parse_args()
    print(f"threads={args.threads} rounds={args.rounds} x {args.inner} runs; medians in us")
    print(f"{'case':<28}{'split':>9}{'whole':>9}{'ort':>9}{'split/whole':>13}{'split/ort':>11}")
    for case in CASES:
        print(measure(case, args.threads, args.chunks, args.rounds, args.inner), flush=True)


if __name__ == "__main__":
    main()
