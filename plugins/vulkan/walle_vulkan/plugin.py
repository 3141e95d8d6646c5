"""Vulkan backend plugin on the ``vulkan`` cffi binding: the :class:`~walle_core.kernels.device.GPUDevice`
interface over one Vulkan device; kernels are the shared description rendered to GLSL compute and
compiled to SPIR-V by ``glslc`` (cached by source digest); the run loop is walle_core's executor.

* device selection: discrete > integrated > virtual > CPU device, or ``WALLE_VULKAN_DEVICE``
  (substring of the device name); 8/16-bit storage is enabled when the device has it;
* subgroups: where the device has subgroup arithmetic in compute shaders its subgroup width goes
  into ``Caps.subgroup`` and work-group reductions reduce in subgroups (lavapipe: 8 lanes);
* memory (:mod:`walle_vulkan.memory`): device-local buffers bound into large blocks; inputs go up
  through persistently mapped HOST_VISIBLE|HOST_COHERENT staging buffers and outputs come back
  through HOST_CACHED ones. Where one memory type is device-local, host-visible, coherent and
  cached (integrated GPUs, lavapipe) buffers are mapped directly instead, unless
  ``WALLE_VULKAN_STAGING=1``;
* one command buffer per program records the uploads, every dispatch with its barrier, the
  downloads and timestamp queries around each part; it is submitted once per run and reused.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import flags
from walle_core.backend import Backend, DeviceInfo
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl
from walle_core.kernels import Caps, KernelSpec, render
from walle_core.kernels.device import Dispatch, GPUDevice, RunTimings, Transfer
from walle_core.kernels.executor import GPUBackend
from walle_vulkan.commands import Queue, Recording
from walle_vulkan.memory import Buffer, Memory
from walle_vulkan.shaders import Pipeline, compile_glsl, make_pipeline

_DEVICE_TYPES = {0: "other", 1: "gpu", 2: "gpu", 3: "gpu", 4: "cpu"}
_PREFERENCE = {2: 0, 1: 1, 3: 2, 4: 3, 0: 4}  # discrete, integrated, virtual, cpu, other


class VulkanDevice(GPUDevice[Buffer, Pipeline, Recording]):
    def __init__(self, vk: Any) -> None:
        super().__init__()
        self.vk = vk
        app = vk.VkApplicationInfo(pApplicationName="walle", applicationVersion=1, pEngineName="walle",
                                   engineVersion=1, apiVersion=vk.VK_MAKE_VERSION(1, 2, 0))
        self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
        try:
            self._open()
        except BaseException:
            vk.vkDestroyInstance(self.instance, None)
            raise

    def _open(self) -> None:
        vk = self.vk
        candidates = []
        for pd in vk.vkEnumeratePhysicalDevices(self.instance):
            families = vk.vkGetPhysicalDeviceQueueFamilyProperties(pd)
            qf = next((i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT), None)
            if qf is not None:
                candidates.append((pd, vk.vkGetPhysicalDeviceProperties(pd), qf, families[qf]))
        if not candidates:
            raise BackendUnavailableError("no Vulkan device with a compute queue: install mesa-vulkan-drivers")
        forced = flags.vulkan_device()
        if forced:
            candidates = [c for c in candidates if forced.lower() in c[1].deviceName.lower()] or \
                self._none_match(forced, candidates)
        candidates.sort(key=lambda c: _PREFERENCE.get(c[1].deviceType, 9))
        self.physical, self.props, self.family, fam = candidates[0]
        api = self.props.apiVersion
        self.api = f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}"
        self.target = "vulkan1.2" if (api >> 22, (api >> 12) & 0x3FF) >= (1, 2) else "vulkan1.1"
        limits = self.props.limits
        feats = vk.vkGetPhysicalDeviceFeatures(self.physical)
        types = {"f32", "i32", "u32"} | ({"i64", "u64"} if feats.shaderInt64 else set())
        types |= {"f64"} if feats.shaderFloat64 else set()
        self.half = self._has_float16()
        if self._create_device(feats, small_types=True):
            types |= {"i8", "u8", "i16", "u16"}
        else:
            self.half = False
            self._create_device(feats, small_types=False)
        self.caps = Caps(frozenset(types), f64_math=False, max_local=int(limits.maxComputeWorkGroupInvocations),
                         local_mem=int(limits.maxComputeSharedMemorySize), subgroup=self._subgroup_size())
        self.memory = Memory(vk, self.physical, self.device, max(16, int(limits.minStorageBufferOffsetAlignment)))
        cmd_pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, queueFamilyIndex=self.family), None)
        self.queue = Queue(vk, self.device, vk.vkGetDeviceQueue(self.device, self.family, 0), cmd_pool, self.memory,
                           fam.timestampValidBits > 0, float(limits.timestampPeriod) * 1e-9)
        self.pipelines: dict[str, Pipeline] = {}
        self.lock = threading.Lock()  # the pipeline cache
        self.builds = 0

    @staticmethod
    def _none_match(forced: str, candidates: list[Any]) -> list[Any]:
        names = ", ".join(c[1].deviceName for c in candidates)
        raise BackendUnavailableError(f"WALLE_VULKAN_DEVICE={forced!r} matches none of: {names}")

    def _has_float16(self) -> bool:
        """float16 arithmetic and 16-bit storage (Vulkan 1.2 features; an older loader has none)."""
        vk = self.vk
        f12 = vk.VkPhysicalDeviceVulkan12Features()
        f11 = vk.VkPhysicalDeviceVulkan11Features(pNext=f12)
        try:
            vk.vkGetPhysicalDeviceFeatures2(self.physical, vk.VkPhysicalDeviceFeatures2(pNext=f11))
        except Exception:
            return False
        return bool(f12.shaderFloat16 and f11.storageBuffer16BitAccess)

    def _subgroup_size(self) -> int:
        """The subgroup width where compute shaders have subgroup arithmetic (Vulkan 1.1
        subgroup properties), else 0."""
        vk = self.vk
        if (self.props.apiVersion >> 22, (self.props.apiVersion >> 12) & 0x3FF) < (1, 1):
            return 0
        sub = vk.VkPhysicalDeviceSubgroupProperties()
        try:
            vk.vkGetPhysicalDeviceProperties2(self.physical, vk.VkPhysicalDeviceProperties2(pNext=sub))
        except Exception:
            return 0
        if not (sub.supportedStages & vk.VK_SHADER_STAGE_COMPUTE_BIT
                and sub.supportedOperations & vk.VK_SUBGROUP_FEATURE_ARITHMETIC_BIT):
            return 0
        return int(sub.subgroupSize)

    def _create_device(self, feats: Any, small_types: bool) -> bool:
        vk = self.vk
        if small_types and not feats.shaderInt16:
            return False
        enabled = vk.VkPhysicalDeviceFeatures(shaderInt64=feats.shaderInt64, shaderFloat64=feats.shaderFloat64,
                                              shaderInt16=feats.shaderInt16 if small_types else 0)
        queue = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])
        chain = vk.VkPhysicalDeviceVulkan11Features(
            pNext=vk.VkPhysicalDeviceVulkan12Features(storageBuffer8BitAccess=1, shaderInt8=1,
                                                      shaderFloat16=int(self.half)),
            storageBuffer16BitAccess=1) if small_types else None
        try:
            self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
                pNext=chain, queueCreateInfoCount=1, pQueueCreateInfos=[queue], pEnabledFeatures=enabled), None)
        except Exception:
            if small_types:
                return False
            raise
        return True

    def info(self) -> DeviceInfo:
        return DeviceInfo(name=self.props.deviceName, kind=_DEVICE_TYPES.get(self.props.deviceType, "other"),
                          details={"api": self.api, "timestamps": str(self.queue.timestamps).lower(),
                                   "types": ",".join(sorted(self.caps.types)), "memory": self.memory.describe()})

    def allocate(self, nbytes: int) -> Buffer:
        return self.memory.device.buffer(nbytes)

    def build(self, spec: KernelSpec) -> Pipeline:
        with self.lock:
            hit = self.pipelines.get(spec.key)
        if hit is None:
            hit = make_pipeline(self.vk, self.device, compile_glsl(render(spec, "glsl"), self.target),
                                len(spec.buffers))
            with self.lock:
                self.builds += 1
                hit = self.pipelines.setdefault(spec.key, hit)
        return hit

    def record(self, dispatches: Sequence[Dispatch[Buffer, Pipeline]], uploads: Sequence[Transfer[Buffer]],
               downloads: Sequence[Transfer[Buffer]]) -> Recording:
        return self.queue.record(dispatches, uploads, downloads)

    def execute(self, program: Recording, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> RunTimings:
        return self.queue.execute(program, inputs, outputs)

    def forget(self, program: Recording) -> None:
        self.queue.forget(program)


class VulkanBackend(GPUBackend):
    name = "vulkan"
    version = "1.1"
    no_device_hint = "no Vulkan device found ({exc}): install mesa-vulkan-drivers"

    @classmethod
    def open_device(cls) -> VulkanDevice:
        try:
            import vulkan
        except ImportError:
            raise BackendUnavailableError("the vulkan binding is not installed: pip install 'walle[vulkan]'") from None
        except OSError as exc:  # the binding is there but libvulkan.so.1 is not
            raise BackendUnavailableError(f"Vulkan loader missing ({exc}): install libvulkan1 mesa-vulkan-drivers") from None
        if shutil.which("glslc") is None:
            raise BackendUnavailableError("glslc not found (GLSL -> SPIR-V): install glslc")
        return VulkanDevice(vulkan)


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [VulkanBackend]
