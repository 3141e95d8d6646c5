"""pytest-benchmark suite for the cpu backend's key kernels.

    python -m pytest bench/bench_kernels.py [--benchmark-columns=min,median,ops] [-k gemm]

Each benchmark runs one prepared single-op program (a ``wl_run`` call: the C kernel plus the
run's few microseconds of binding) with the backend's default thread count, and records in
``extra_info`` the throughput of its median: GFLOP/s and the fraction of the machine's peak for
GEMM and convolutions, GB/s for element-wise kernels. The table is printed at the end.

Peak fp32 FLOP/s is *modelled*, not measured: cores x clock x FMA pipes x lanes x 2 (an FMA is
two flops). Assumptions: two FMA pipes per core (true of AVX-512 server cores such as Zen 4/5
and Skylake-SP Gold/Platinum and later), 16 fp32 lanes with AVX-512 (8 with AVX2, 4 with NEON
or the portable build), the clock from ``/proc/cpuinfo`` "cpu MHz" (the nominal clock a VM
reports; turbo runs above it: on the 2-core AMD EPYC VM this was written on, GEMM measured up
to ~1.3x the modelled 332 GFLOP/s, i.e. an effective clock near 3.4 GHz), cores = the threads
the backend uses. Override the clock with WALLE_BENCH_GHZ.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Program
from walle_core.errors import BackendUnavailableError
from walle_core.plugins import registry

try:
    CPU = registry().get("cpu")
except BackendUnavailableError as exc:  # pragma: no cover - no compiler at install time
    pytest.skip(f"cpu backend unavailable: {exc}", allow_module_level=True)

from walle_cpu.plugin import default_threads, isa

THREADS = default_threads()
F32 = np.dtype(np.float32)
LANES = {"avx512": 16, "avx2": 8, "neon": 4, "scalar": 4}
_RESULTS: list[tuple[str, str]] = []


def clock_ghz() -> float:
    forced = flags.bench_ghz()
    if forced:
        return forced
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000.0
    except OSError:
        pass
    return 2.5


def peak_gflops() -> float:
    """cores x GHz x 2 FMA pipes x lanes x 2 flops (see the module docstring)."""
    return THREADS * clock_ghz() * 2 * LANES.get(isa(), 4) * 2


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def tensor(self, shape: tuple[int, ...], value: np.ndarray | None = None) -> A.Tensor:
        self.n += 1
        return A.Tensor(shape, F32, value=value, id=self.n)


def _prepare(op: A.Op, inputs: list[A.Tensor], algo: str | None = None) -> Any:
    algos = CPU.algorithms(op)
    pick = next((a for a in algos if a.name == algo), algos[0])
    return CPU.compile(Program([(op, pick)], inputs, list(op.outputs)), threads=THREADS)


def _measure(benchmark: Any, name: str, fn: Callable[[], object], *, flops: float = 0.0,
             nbytes: float = 0.0) -> None:
    benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)
    med = statistics.median(benchmark.stats.stats.data)
    if flops:
        gf = flops / med / 1e9
        frac = gf / peak_gflops()
        benchmark.extra_info.update(gflops=round(gf, 1), peak_gflops=round(peak_gflops(), 1),
                                    fraction_of_peak=round(frac, 3))
        _RESULTS.append((name, f"{med * 1e6:9.1f} us {gf:8.1f} GFLOP/s  {frac:6.1%} of peak"))
    if nbytes:
        gbs = nbytes / med / 1e9
        benchmark.extra_info.update(gb_per_s=round(gbs, 2))
        _RESULTS.append((name, f"{med * 1e6:9.1f} us {gbs:8.2f} GB/s"))


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Any:
    yield
    if _RESULTS:
        print(f"\ncpu kernels ({isa()}, {THREADS} threads); modelled peak {peak_gflops():.0f} GFLOP/s "
              f"= {THREADS} cores x {clock_ghz():.2f} GHz x 2 FMA pipes x {LANES.get(isa(), 4)} lanes x 2 "
              "(at the clock /proc/cpuinfo reports; boost clocks exceed it: set WALLE_BENCH_GHZ)")
        for name, line in _RESULTS:
            print(f"  {name:<34}{line}")


# --------------------------------------------------------------------------- GEMM


@pytest.mark.parametrize("m,n,k", [(256, 256, 256), (512, 512, 512), (128, 1024, 256), (128, 256, 1024),
                                   (2, 256, 64)])
def test_gemm(benchmark: Any, m: int, n: int, k: int) -> None:
    ids = _Ids()
    rng = np.random.default_rng(0)
    a = ids.tensor((m, k))
    b = ids.tensor((k, n), rng.standard_normal((k, n)).astype(F32))
    y = ids.tensor((m, n))
    exe = _prepare(A.MatMul([a, b], [y], batch=1, m=m, n=n, k=k), [a])
    av = rng.standard_normal((m, k)).astype(F32)
    _measure(benchmark, f"gemm {m}x{n}x{k}", lambda: exe.run([av]), flops=2.0 * m * n * k)


# --------------------------------------------------------------------------- convolution


def _conv(c: int, hw: int, o: int, k: int, stride: int, groups: int, algo: str) -> tuple[Any, np.ndarray, float]:
    ids = _Ids()
    rng = np.random.default_rng(0)
    x = ids.tensor((1, c, hw, hw))
    w = ids.tensor((o, c // groups, k, k), rng.standard_normal((o, c // groups, k, k)).astype(F32))
    bias = ids.tensor((o,), rng.standard_normal(o).astype(F32))
    pad = k // 2
    out = (hw + 2 * pad - k) // stride + 1
    y = ids.tensor((1, o, out, out))
    op = A.Conv2D([x, w, bias], [y], strides=(stride, stride), pads=(pad, pad, pad, pad), groups=groups,
                  act=A.Activation("relu"))
    exe = _prepare(op, [x], algo)
    return exe, rng.standard_normal((1, c, hw, hw)).astype(F32), op.flops()


@pytest.mark.parametrize("c,hw,o,k,stride,algo", [
    (64, 56, 64, 3, 1, "im2col+gemm"), (256, 14, 256, 3, 1, "im2col+gemm"),
    (64, 56, 64, 3, 1, "winograd-f23"), (3, 224, 64, 7, 2, "im2col+gemm"),
    (144, 56, 24, 1, 1, "1x1-gemm"), (320, 7, 1280, 1, 1, "1x1-gemm"),
])
def test_conv(benchmark: Any, c: int, hw: int, o: int, k: int, stride: int, algo: str) -> None:
    exe, xv, flops = _conv(c, hw, o, k, stride, 1, algo)
    _measure(benchmark, f"conv {algo} {c}x{hw}^2->{o} k{k}s{stride}", lambda: exe.run([xv]), flops=flops)


@pytest.mark.parametrize("c,hw,k,groups", [(64, 56, 3, 1), (256, 14, 3, 1), (512, 7, 3, 1),
                                            (144, 56, 1, 1), (144, 56, 3, 144)])
def test_conv_blocked(benchmark: Any, c: int, hw: int, k: int, groups: int) -> None:
    """The NCHW16c kernels: a chain of four convs stays blocked (two layout changes, at its
    ends, are part of the time); GFLOP/s over the four convs."""
    ids = _Ids()
    rng = np.random.default_rng(0)
    x = ids.tensor((1, c, hw, hw))
    h, ops, flops = x, [], 0.0
    for _ in range(4):
        w = ids.tensor((c, c // groups, k, k),
                       (rng.standard_normal((c, c // groups, k, k)) * 0.05).astype(F32))
        y = ids.tensor((1, c, hw, hw))
        op = A.Conv2D([h, w], [y], pads=(k // 2,) * 4, groups=groups, act=A.Activation("relu"))
        ops.append(op)
        flops += op.flops()
        h = y
    items = [(op, next(a for a in CPU.algorithms(op) if a.name == "nchwc")) for op in ops]
    exe = CPU.compile(Program(items, [x], [h]), threads=THREADS)
    xv = rng.standard_normal((1, c, hw, hw)).astype(F32)
    label = "depthwise" if groups > 1 else f"conv k{k}"
    _measure(benchmark, f"nchwc {label} {c}x{hw}^2 x4", lambda: exe.run([xv]), flops=flops)


@pytest.mark.parametrize("c,hw,stride", [(32, 112, 1), (96, 112, 2), (144, 56, 1), (576, 14, 1)])
def test_depthwise(benchmark: Any, c: int, hw: int, stride: int) -> None:
    exe, xv, flops = _conv(c, hw, c, 3, stride, c, "depthwise-direct")
    _measure(benchmark, f"depthwise {c}x{hw}^2 3x3 s{stride}", lambda: exe.run([xv]), flops=flops)


# --------------------------------------------------------------------------- element-wise


@pytest.mark.parametrize("size", [1 << 16, 1 << 20, 1 << 22])
def test_binary_add(benchmark: Any, size: int) -> None:
    ids = _Ids()
    a, b, y = ids.tensor((size,)), ids.tensor((size,)), ids.tensor((size,))
    exe = _prepare(A.Binary([a, b], [y], fn="add", strides=[(1,), (1,)]), [a, b])
    av, bv = np.ones(size, F32), np.ones(size, F32)
    _measure(benchmark, f"add {size}", lambda: exe.run([av, bv]), nbytes=3.0 * 4 * size)


@pytest.mark.parametrize("fn", ["relu", "sigmoid", "tanh", "exp"])
def test_unary(benchmark: Any, fn: str) -> None:
    size = 1 << 20
    ids = _Ids()
    x, y = ids.tensor((size,)), ids.tensor((size,))
    exe = _prepare(A.Unary([x], [y], fn=fn), [x])
    xv = np.linspace(-4, 4, size, dtype=F32)
    _measure(benchmark, f"unary {fn} {size}", lambda: exe.run([xv]), nbytes=2.0 * 4 * size)
