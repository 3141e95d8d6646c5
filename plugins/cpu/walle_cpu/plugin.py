"""CPU backend plugin: C SIMD kernels (AVX-512 / AVX2+FMA / NEON / portable) through cffi.

A prepared program runs as one C call that walks pre-bound op descriptors; kernels run on a
persistent pthread pool with the GIL released. Kinds or dtypes the C side does not implement get
no algorithm, so the planner runs them on the reference backend with explicit copies.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

from walle_core import atomic as A
from walle_core.backend import Algorithm, Availability, Backend, Cost, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl
from walle_core.hostinfo import cpu_model
from walle_cpu import _native, layout
from walle_cpu.codes import COMPOSITES
from walle_cpu.compiler import CpuExecutable, conv_algorithms, supports

_INTERESTING = ("avx512f", "avx512_vnni", "avx512_bf16", "avx2", "fma", "neon", "asimd", "sse4_2")


def cpu_features() -> list[str]:
    """SIMD features of this CPU as the kernel announces them (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in _INTERESTING if f in flags]
    return []


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def isa() -> str:
    """The kernel variant in use ("avx512", "avx2", "neon" or "scalar"); "" when not built."""
    if _native.LIB is None:
        return ""
    return str(_native.FFI.string(_native.LIB.wl_isa_name()).decode())


def set_isa(name: str) -> None:
    """Force a kernel variant (tests, benchmarks); "auto" picks the best this CPU supports.
    Programs compiled before the switch keep weights packed for the old variant: recompile."""
    if _native.LIB is None:
        raise BackendUnavailableError(_native.LOAD_ERROR)
    if _native.LIB.wl_set_isa(name.encode()) != 0:
        raise BackendUnavailableError(f"kernel variant {name!r} is not supported by this CPU")


# --------------------------------------------------------------------------- costs


def _cost(efficiency: float, extra_bytes: float = 0.0, flop_scale: float = 1.0):  # type: ignore[no-untyped-def]
    def cost(op: A.Op) -> Cost:
        return Cost(op.flops() * flop_scale, op.bytes_moved() + extra_bytes, 1, efficiency)

    return cost


def _im2col_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    _o, cg, kh, kw = op.inputs[1].shape
    cols = cg * kh * kw * op.out.shape[2] * op.out.shape[3] * op.out.shape[0] * op.groups * 4
    # One GEMM per group: a short reduction (cg*kh*kw) or few rows per group (o/groups) leave
    # the register tiles mostly empty, so efficiency falls with both.
    og = op.out.shape[1] // op.groups
    eff = 0.6 * min(1.0, cg * kh * kw / 64) * min(1.0, og / 8)
    return Cost(op.flops(), op.bytes_moved() + 2 * cols, 1, max(eff, 0.01))


def _winograd_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    c, o = op.inputs[0].shape[1], op.out.shape[1]
    # 2.25x fewer multiplies, but the transforms are scalar gathers/scatters over 16 planes and
    # the 16 GEMMs are short: measured on AVX-512 (2 threads) it runs 3-10x slower than
    # im2col+gemm on every 3x3 shape of the test models (ResNet-18, U-Net), so its modelled
    # efficiency is that low; it stays an algorithm for the search's measure mode.
    eff = 0.05 if min(c, o) >= 32 else 0.02
    return Cost(op.flops() / 2.25, op.bytes_moved() * 3, 1, eff)


def _depthwise_cost(op: A.Op) -> Cost:
    return Cost(op.flops(), op.bytes_moved(), 1, 0.5)


def _one_by_one_cost(op: A.Op) -> Cost:
    # measured (AVX-512, 2 threads) at ~0.6x the blocked kernel's rate on the same convs
    return Cost(op.flops(), op.bytes_moved() * 2, 1, 0.55)


def _blocked_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    # Direct conv over 16-channel vectors (no packing pass); depthwise is bandwidth-bound.
    # Output channels are computed in whole blocks: 8 outputs cost what 16 do. (Input padding
    # costs nothing: the kernels stop at the real channel count.)
    o = op.out.shape[1]
    padded = layout.blocks(o) * layout.BLK / max(o, 1)
    eff = 0.64 if layout.is_depthwise(op) else 0.95
    return Cost(op.flops() * padded, layout.blocked_cost_bytes(op), 1, eff)


_CONV_COSTS = {
    "im2col+gemm": _im2col_cost,
    "1x1-gemm": _one_by_one_cost,
    "depthwise-direct": _depthwise_cost,
    "winograd-f23": _winograd_cost,
    layout.NCHWC: _blocked_cost,
}
_GEMM = Algorithm("packed-gemm", _cost(0.7))
_FUSED = Algorithm("fused", _cost(0.3, flop_scale=12.0))  # composites: ~12 flops per element (exp)
_DIRECT = Algorithm("direct", _cost(0.5))


class CpuBackend(Backend):
    name = "cpu"
    version = "0.2"

    def availability(self) -> Availability:
        if _native.LIB is None:
            return Availability(False, _native.LOAD_ERROR)
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(
            name=cpu_model(),
            kind="cpu",
            details={"cores": str(os.cpu_count()), "arch": platform.machine(),
                     "simd": ",".join(cpu_features()), "kernels": isa() or "not built",
                     "threads": str(default_threads())},
        )

    def claims(self, composite: str) -> bool:
        return _native.LIB is not None and composite in COMPOSITES

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        if _native.LIB is None or not supports(op):
            return ()
        if isinstance(op, A.Composite):
            return (_FUSED,)
        if isinstance(op, A.MatMul):
            return (_GEMM,)
        if isinstance(op, A.Conv2D):
            return tuple(Algorithm(n, _CONV_COSTS[n]) for n in conv_algorithms(op))
        return (_DIRECT,)

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        if _native.LIB is None:
            raise BackendUnavailableError(f"cpu backend is unavailable: {_native.LOAD_ERROR}")
        return CpuExecutable(program, threads or default_threads())


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [CpuBackend]
