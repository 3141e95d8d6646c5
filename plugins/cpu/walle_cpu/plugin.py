"""CPU backend plugin: reports the host CPU and its SIMD features; kernels are not written yet."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

from walle_core.atomic import Op
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl

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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuBackend(Backend):
    name = "cpu"
    version = "0.1"

    def availability(self) -> Availability:
        return Availability(False, "not implemented yet: the C SIMD kernels are not written")

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(
            name=cpu_name(),
            kind="cpu",
            details={"cores": str(os.cpu_count()), "arch": platform.machine(),
                     "simd": ",".join(cpu_features())},
        )

    def algorithms(self, op: Op) -> Sequence[Algorithm]:
        return ()

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        raise BackendUnavailableError("CPU kernels are not implemented yet")


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [CpuBackend]
