"""Vulkan backend plugin: probes the Vulkan loader and devices; kernels are not implemented yet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from walle_core.atomic import Op
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl

_DEVICE_TYPES = {0: "other", 1: "gpu", 2: "gpu", 3: "gpu", 4: "cpu"}


def _probe_device() -> tuple[DeviceInfo | None, str]:
    try:
        import vulkan as vk
    except ImportError:
        return None, "the vulkan binding is not installed: pip install 'walle[vulkan]'"
    except OSError as exc:  # the binding is there but libvulkan.so.1 is not
        return None, f"Vulkan loader missing ({exc}): install libvulkan1 mesa-vulkan-drivers"
    instance: Any = None
    try:
        app = vk.VkApplicationInfo(pApplicationName="walle", apiVersion=vk.VK_MAKE_VERSION(1, 1, 0))
        instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
        devices = vk.vkEnumeratePhysicalDevices(instance)
        if not devices:
            return None, "no Vulkan device found: install mesa-vulkan-drivers (lavapipe)"
        props = vk.vkGetPhysicalDeviceProperties(devices[0])
        api = props.apiVersion
        return DeviceInfo(
            name=props.deviceName,
            kind=_DEVICE_TYPES.get(props.deviceType, "other"),
            details={"api": f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}"},
        ), ""
    except Exception as exc:
        return None, f"no Vulkan device found ({exc}): install mesa-vulkan-drivers"
    finally:
        if instance is not None:
            vk.vkDestroyInstance(instance, None)


class VulkanBackend(Backend):
    name = "vulkan"
    version = "0.1"

    def __init__(self) -> None:
        self._device, self._problem = _probe_device()

    def availability(self) -> Availability:
        if self._device is None:
            return Availability(False, self._problem)
        return Availability(False, "not implemented yet: Vulkan compute kernels are not written")

    def device_info(self) -> DeviceInfo:
        if self._device is None:
            raise BackendUnavailableError(self._problem)
        return self._device

    def algorithms(self, op: Op) -> Sequence[Algorithm]:
        return ()

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        raise BackendUnavailableError("Vulkan kernels are not implemented yet")


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [VulkanBackend]
