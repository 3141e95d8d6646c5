"""Metal backend plugin: unavailable off macOS; kernels are not implemented yet."""

from __future__ import annotations

import platform
from collections.abc import Sequence

from walle_core.atomic import Op
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl


class MetalBackend(Backend):
    name = "metal"
    version = "0.1"

    def availability(self) -> Availability:
        if platform.system() != "Darwin":
            return Availability(False, "Metal needs macOS")
        return Availability(False, "not implemented yet: Metal kernels are not written")

    def device_info(self) -> DeviceInfo:
        if platform.system() != "Darwin":
            raise BackendUnavailableError("Metal needs macOS")
        return DeviceInfo(name="Metal default device", kind="gpu")

    def algorithms(self, op: Op) -> Sequence[Algorithm]:
        return ()

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        raise BackendUnavailableError("Metal kernels are not implemented yet")


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [MetalBackend]
