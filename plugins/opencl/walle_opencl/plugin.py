"""OpenCL backend plugin: probes the OpenCL driver honestly; kernels are not implemented yet."""

from __future__ import annotations

from collections.abc import Sequence

from walle_core.atomic import Op
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl


def _probe_device() -> tuple[DeviceInfo | None, str]:
    try:
        import pyopencl as cl
    except ImportError:
        return None, "pyopencl is not installed: pip install 'walle[opencl]'"
    try:
        platforms = cl.get_platforms()
    except Exception as exc:  # pyopencl raises LogicError/RuntimeError when no ICD is present
        return None, f"no OpenCL platform found ({exc}): install pocl-opencl-icd"
    for platform in platforms:
        try:
            devices = platform.get_devices()
        except Exception:
            continue
        if devices:
            dev = devices[0]
            info = DeviceInfo(
                name=dev.name.strip(),
                kind="gpu" if dev.type & cl.device_type.GPU else "cpu",
                details={"platform": platform.name, "version": dev.version,
                         "compute_units": str(dev.max_compute_units)},
            )
            return info, ""
    return None, "no OpenCL platform found: install pocl-opencl-icd"


class OpenCLBackend(Backend):
    name = "opencl"
    version = "0.1"

    def __init__(self) -> None:
        self._device, self._problem = _probe_device()

    def availability(self) -> Availability:
        if self._device is None:
            return Availability(False, self._problem)
        return Availability(False, "not implemented yet: OpenCL kernels are not written")

    def device_info(self) -> DeviceInfo:
        if self._device is None:
            raise BackendUnavailableError(self._problem)
        return self._device

    def algorithms(self, op: Op) -> Sequence[Algorithm]:
        return ()

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        raise BackendUnavailableError("OpenCL kernels are not implemented yet")


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [OpenCLBackend]
