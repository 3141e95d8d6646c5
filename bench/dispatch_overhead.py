"""Per-op dispatch overhead of a compiled program: a chain of 1,000 tiny ops.

Builds 1,000 alternating ``add``/``mul`` ops on 4-element float32 tensors (each op reads the
previous result, so nothing can be skipped) and times ``Executable.run`` on every available
backend. Fusion is defeated by reading every intermediate twice (``x_i`` feeds ``x_{i+1}`` and
``x_{i+2}``), so the figure is the executor's per-op cost, not the fused kernel's.

    python bench/dispatch_overhead.py [--ops 1000] [--repeat 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Backend, Program
from walle_core.decompose.builder import Builder
from walle_core.plugins import registry


def build(n_ops: int) -> tuple[Builder, A.Tensor, A.Tensor]:
    b = Builder(fold=lambda op: None)
    x = b.tensor((4,), np.float32)
    prev2, prev = x, b.binary("add", x, x)
    for i in range(n_ops - 1):  # values stay bounded: x_{i+1} = x_i - x_{i-1} or x_i * x_{i-1}
        prev2, prev = prev, b.binary("mul" if i % 2 else "sub", prev, prev2)
    return b, x, prev


def measure(backend: Backend, n_ops: int, repeat: int, threads: int) -> tuple[float, float]:
    b, x, y = build(n_ops)
    prog = Program([(op, backend.algorithms(op)[0]) for op in b.ops], [x], [y])
    exe = backend.compile(prog, threads=threads)
    feed = [np.full(4, 0.5, np.float32)]
    got = exe.run(feed)[0]
    ref = registry().get("reference")
    want = ref.compile(Program([(op, ref.algorithms(op)[0]) for op in b.ops], [x], [y])).run(feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5)  # the timed program really computes
    for _ in range(10):
        exe.run(feed)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        exe.run(feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"{'backend':<12}{'ops':>6}{'median run':>14}{'per op':>12}{'best per op':>14}")
    for backend in registry().available():
        rep = args.repeat if backend.name != "reference" else max(5, args.repeat // 20)
        med, best = measure(backend, args.ops, rep, args.threads)
        print(f"{backend.name:<12}{args.ops:>6}{med * 1e6:>12.1f}us{med / args.ops * 1e6:>10.3f}us"
              f"{best / args.ops * 1e6:>12.3f}us")


if __name__ == "__main__":
    main()
