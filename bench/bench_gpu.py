"""GEMM (and one conv layer) throughput of every available backend, GPU-style ones per algorithm.

    python bench/bench_gpu.py                 # sizes 128 256 512 1024
    python bench/bench_gpu.py --sizes 256 512 --repeat 5 --json out.json
    python bench/bench_gpu.py --sizes 1024 2048 --backends opencl vulkan --peak-tflops 67   # a GPU

Two figures per row: ``wall`` times ``Executable.run`` end to end (host->device copies, one
submit, device->host copy); ``device`` is the device clock's span of the kernels (OpenCL
profiling events, Vulkan timestamp queries: ``GPUExecutable.last_run_timings().span_s``), where
the backend has it, reported as TFLOP/s. A second table gives host->device and device->host
bandwidth at several sizes (``GPUBackend.time_transfers``), measured separately.
``--precision fp16`` opens the GPU backends with float16 storage (float32 math and sums);
``--peak-tflops`` (the device's fp32 peak, e.g. 67 for an H200 without tensor cores) adds the
share of it each kernel reaches on the device clock.

On machines without a GPU, OpenCL runs on PoCL and Vulkan on Mesa's lavapipe: both are CPU
drivers, so their figures are CPU numbers, not GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Backend, Executable, Program
from walle_core.kernels.executor import GPUBackend
from walle_core.plugins import registry


def _time(exe: Executable, feeds: list[np.ndarray], repeat: int) -> tuple[float, float | None]:
    exe.run(feeds)  # warm-up: first-run costs (page faults, lazy JIT) are not throughput
    walls, devs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        exe.run(feeds)
        walls.append(time.perf_counter() - t0)
        run_timings = getattr(exe, "last_run_timings", None)
        span = run_timings().span_s if run_timings is not None else None
        if span:
            devs.append(span)
    return min(walls), (min(devs) if devs else None)


def gemm_rows(backend: Backend, n: int, repeat: int) -> list[dict[str, object]]:
    f32 = np.dtype(np.float32)
    a, b, y = A.Tensor((n, n), f32, id=1), A.Tensor((n, n), f32, id=2), A.Tensor((1, n, n), f32, id=3)
    op = A.MatMul([a, b], [y], m=n, n=n, k=n)
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((n, n)).astype(np.float32) for _ in range(2)]
    rows: list[dict[str, object]] = []
    for algo in backend.algorithms(op):
        if backend.name == "reference" and n > 1024:
            continue
        exe = backend.compile(Program([(op, algo)], [a, b], [y]))
        wall, dev = _time(exe, feeds, repeat)
        flops = 2.0 * n**3
        rows.append({"backend": backend.name, "device": backend.device_info().name, "op": f"gemm {n}",
                     "algorithm": algo.name, "wall_ms": wall * 1e3, "gflops_wall": flops / wall / 1e9,
                     "tflops_device": (flops / dev / 1e12) if dev else None})
    return rows


def transfer_rows(backend: Backend, sizes: list[int]) -> list[dict[str, float]]:
    """Host->device and device->host GB/s of a GPU-style backend, each timed on its own."""
    time_transfers = getattr(backend, "time_transfers", None)
    if time_transfers is None:
        return []
    rows: list[dict[str, float]] = []
    for nbytes in sizes:
        t = time_transfers(nbytes)
        rows.append({"bytes": nbytes, "upload_gbps": nbytes / t.upload_s / 1e9,
                     "download_gbps": nbytes / t.download_s / 1e9})
    return rows


def conv_rows(backend: Backend, repeat: int) -> list[dict[str, object]]:
    x = A.Tensor((1, 64, 56, 56), np.dtype(np.float32), id=1)
    w = A.Tensor((64, 64, 3, 3), np.dtype(np.float32), id=2)
    y = A.Tensor((1, 64, 56, 56), np.dtype(np.float32), id=3)
    rng = np.random.default_rng(0)
    w.value = rng.standard_normal(w.shape).astype(np.float32)
    op = A.Conv2D([x, w], [y], pads=(1, 1, 1, 1), act=A.Activation("relu"))
    feeds = [rng.standard_normal(x.shape).astype(np.float32)]
    rows: list[dict[str, object]] = []
    for algo in backend.algorithms(op):
        exe = backend.compile(Program([(op, algo)], [x], [y]))
        wall, dev = _time(exe, feeds, repeat)
        rows.append({"backend": backend.name, "device": backend.device_info().name,
                     "op": "conv3x3 64->64 56x56", "algorithm": algo.name, "wall_ms": wall * 1e3,
                     "gflops_wall": op.flops() / wall / 1e9,
                     "tflops_device": (op.flops() / dev / 1e12) if dev else None})
    return rows


def _with_precision(backend: Backend, precision: str) -> Backend:
    """A GPU backend opened at ``precision``; other backends (no precision option) as they are."""
    if precision == "fp32" or not isinstance(backend, GPUBackend):
        return backend
    return type(backend)(precision=precision)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512, 1024])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", nargs="*", default=None, help="default: every available backend")
    ap.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                    help="fp16: GPU backends store float32 tensors as float16 (float32 math and sums)")
    ap.add_argument("--transfer-sizes", type=int, nargs="*", default=[1 << 16, 1 << 20, 1 << 24],
                    help="bytes per host<->device transfer timed on its own")
    ap.add_argument("--peak-tflops", type=float, default=None, help="fp32 peak: adds a %% of peak column")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    backends = [_with_precision(b, args.precision) for b in registry().available()
                if args.backends is None or b.name in args.backends]
    backends = [b for b in backends if b.availability().available]
    rows: list[dict[str, object]] = []
    for backend in backends:
        for n in args.sizes:
            rows += gemm_rows(backend, n, args.repeat)
        rows += conv_rows(backend, args.repeat)
    peak = args.peak_tflops
    print(f"{'backend':10} {'device':38} {'op':22} {'algorithm':14} {'wall ms':>9} {'GFLOP/s':>8} {'dev TFLOP/s':>11}"
          + (f" {'% of peak':>9}" if peak else ""))
    for r in rows:
        dev = r["tflops_device"]
        share = f" {100 * dev / peak:9.1f}" if peak and isinstance(dev, float) else ""
        print(f"{r['backend']!s:10} {str(r['device'])[:38]:38} {r['op']!s:22} {r['algorithm']!s:14} "
              f"{r['wall_ms']:9.2f} {r['gflops_wall']:8.2f} {'' if dev is None else f'{dev:11.4f}'}{share}")
    transfers = [{"backend": b.name, **t} for b in backends for t in transfer_rows(b, args.transfer_sizes)]
    if transfers:
        print(f"\n{'backend':10} {'bytes':>10} {'host->device GB/s':>18} {'device->host GB/s':>18}")
        for t in transfers:
            print(f"{t['backend']!s:10} {t['bytes']!s:>10} {t['upload_gbps']:18.2f} {t['download_gbps']:18.2f}")
    cpu_drivers = [f"{b.name} ({b.device_info().name})" for b in backends
                   if b.name in ("opencl", "vulkan") and b.device_info().kind == "cpu"]
    if cpu_drivers:
        print("\nnote: " + ", ".join(cpu_drivers) + " run on the CPU (PoCL / lavapipe): CPU numbers, not GPU.")
    if args.json:
        args.json.write_text(json.dumps({"kernels": rows, "transfers": transfers}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
