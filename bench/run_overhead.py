"""Per-run overhead of ``Model.run`` against onnxruntime's ``InferenceSession.run``.

A one-op model (``Relu`` on a ``[1, 16]`` float32 input, or a chain of ``--ops`` tiny ops) runs
in a few microseconds on either engine, so what is timed is the cost of a run itself: feed
checks, plan lookup, binding, output allocation, the call into the executor and its threads.
Both engines run in this process at the same thread count, interleaved in rounds of
``--inner`` calls (load from other processes hits both alike); the best and the median round
are printed per call, with the same-round ratio Walle/onnxruntime.

    python bench/run_overhead.py [--threads 2] [--ops 1] [--rounds 15] [--inner 5000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import walle_core


def model_bytes(n_ops: int) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    nodes, prev = [], "x"
    for i in range(n_ops):  # Relu, then Add(prev, x) and Relu alternately: nothing folds away
        out = "y" if i == n_ops - 1 else f"t{i}"
        nodes.append(helper.make_node("Relu", [prev], [out]) if i % 2 == 0
                     else helper.make_node("Add", [prev, "x"], [out]))
        prev = out
    g = helper.make_graph(nodes, "overhead", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def per_call_us(fn: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=5000)
    args = ap.parse_args()
    data = model_bytes(args.ops)
    model = walle_core.load(data, backend="cpu", threads=args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    feeds = {"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)}
    got, want = model.run(feeds)["y"], sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)  # the timed runs compute the same thing
    engines: dict[str, Callable[[], object]] = {
        "walle": lambda: model.run(feeds), "onnxruntime": lambda: sess.run(None, feeds)}
    times: dict[str, list[float]] = {k: [] for k in engines}
    ratios = []
    for fn in engines.values():
        per_call_us(fn, args.inner // 5)  # warm-up
    for _ in range(args.rounds):
        for key, fn in engines.items():
            times[key].append(per_call_us(fn, args.inner))
        ratios.append(times["walle"][-1] / times["onnxruntime"][-1])
    print(f"threads={args.threads} ops={args.ops} rounds={args.rounds} x {args.inner} calls")
    for key, v in times.items():
        print(f"{key:<12} best {min(v):7.2f} us  median {statistics.median(v):7.2f} us per run")
    print(f"walle/onnxruntime: median of same-round ratios {statistics.median(ratios):.2f}, "
          f"best/best {min(times['walle']) / min(times['onnxruntime']):.2f}")


if __name__ == "__main__":
    main()
