"""Vulkan backend plugin on the ``vulkan`` cffi binding: the shared kernel description rendered to
GLSL compute, compiled to SPIR-V by ``glslc`` and cached by source digest.

* instance/device selection: discrete > integrated > virtual > CPU device, or
  ``WALLE_VULKAN_DEVICE`` (substring of the device name); 8/16-bit storage is enabled when the
  device has it, otherwise ops on those types fall back to another backend;
* compute pipelines from SPIR-V, one per kernel description, kept for the device's lifetime;
* descriptor sets: one per launch, written once when a program is compiled;
* memory: each executable sub-allocates its buffers from one device allocation (aligned
  offsets); when device memory is not host-visible (discrete GPUs, or ``WALLE_VULKAN_STAGING=1``)
  inputs and outputs move through a host-visible staging allocation with copy commands;
* one command buffer per executable records the whole program (uploads, every dispatch with its
  barrier, downloads) and is submitted once per run;
* timestamp queries around every dispatch: ``VulkanExecutable.last_timings()``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import (
    Algorithm,
    Availability,
    Backend,
    DeviceInfo,
    Executable,
    Program,
)
from walle_core.errors import BackendUnavailableError, WalleError
from walle_core.hookspecs import hookimpl
from walle_core.kernels import Caps, KernelSpec, Unsupported, offered, plan_program, render

_DEVICE_TYPES = {0: "other", 1: "gpu", 2: "gpu", 3: "gpu", 4: "cpu"}
_PREFERENCE = {2: 0, 1: 1, 3: 2, 4: 3, 0: 4}  # discrete, integrated, virtual, cpu, other


class VulkanKernelError(WalleError):
    """A kernel reported bad data (e.g. an out-of-range gather index)."""


class ShaderCompileError(WalleError):
    """glslc rejected a rendered shader (a bug in a kernel description)."""


def compile_glsl(source: str, target: str = "vulkan1.1") -> bytes:
    """GLSL -> SPIR-V with glslc, cached under ``cache_dir()/vulkan/spv`` by source digest."""
    digest = hashlib.sha256((target + "\n" + source).encode()).hexdigest()
    cache = flags.cache_dir() / "vulkan" / "spv"
    path = cache / f"{digest}.spv"
    if path.exists():
        return path.read_bytes()
    glslc = shutil.which("glslc")
    if glslc is None:
        raise BackendUnavailableError("glslc not found: install glslc (Debian package glslc / shaderc)")
    proc = subprocess.run([glslc, "-fshader-stage=compute", f"--target-env={target}", "-O", "-", "-o", "-"],
                          input=source.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise ShaderCompileError(proc.stderr.decode(errors="replace")[:2000])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{threading.get_ident()}")
    tmp.write_bytes(proc.stdout)
    tmp.replace(path)
    return proc.stdout


@dataclass
class _Pipeline:
    pipeline: Any
    layout: Any
    set_layout: Any
    bindings: int


class _Device:
    def __init__(self) -> None:
        import vulkan as vk

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
            props = vk.vkGetPhysicalDeviceProperties(pd)
            families = vk.vkGetPhysicalDeviceQueueFamilyProperties(pd)
            qf = next((i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT), None)
            if qf is not None:
                candidates.append((pd, props, qf, families[qf]))
        if not candidates:
            raise BackendUnavailableError("no Vulkan device with a compute queue: install mesa-vulkan-drivers")
        forced = flags.vulkan_device()
        if forced:
            match = [c for c in candidates if forced.lower() in c[1].deviceName.lower()]
            if not match:
                names = ", ".join(c[1].deviceName for c in candidates)
                raise BackendUnavailableError(f"WALLE_VULKAN_DEVICE={forced!r} matches none of: {names}")
            candidates = match
        candidates.sort(key=lambda c: _PREFERENCE.get(c[1].deviceType, 9))
        self.physical, self.props, self.family, fam = candidates[0]
        self.name = self.props.deviceName
        api = self.props.apiVersion
        self.api = f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}"
        self.target = "vulkan1.2" if (api >> 22, (api >> 12) & 0x3FF) >= (1, 2) else "vulkan1.1"
        limits = self.props.limits
        self.timestamp_period = float(limits.timestampPeriod)
        self.timestamps = fam.timestampValidBits > 0
        self.align = max(16, int(limits.minStorageBufferOffsetAlignment))
        feats = vk.vkGetPhysicalDeviceFeatures(self.physical)
        types = {"f32", "i32", "u32"}
        if feats.shaderInt64:
            types |= {"i64", "u64"}
        if feats.shaderFloat64:
            types.add("f64")
        small = self._create_device(feats, small_types=True)
        if small:
            types |= {"i8", "u8", "i16", "u16"}
        else:
            self._create_device(feats, small_types=False)
        self.caps = Caps(frozenset(types), f64_math=False,
                         max_local=int(limits.maxComputeWorkGroupInvocations),
                         local_mem=int(limits.maxComputeSharedMemorySize))
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.cmd_pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, queueFamilyIndex=self.family), None)
        mem = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        self.memory_types = [(mem.memoryTypes[i].propertyFlags) for i in range(mem.memoryTypeCount)]
        self.pipelines: dict[str, _Pipeline] = {}
        self.lock = threading.RLock()  # pipeline cache, command pool, queue submission
        self.builds = 0

    def _create_device(self, feats: Any, small_types: bool) -> bool:
        vk = self.vk
        enabled = vk.VkPhysicalDeviceFeatures(shaderInt64=feats.shaderInt64, shaderFloat64=feats.shaderFloat64,
                                              shaderInt16=feats.shaderInt16 if small_types else 0)
        queue = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])
        chain: Any = None
        if small_types:
            if not feats.shaderInt16:
                return False
            f12 = vk.VkPhysicalDeviceVulkan12Features(storageBuffer8BitAccess=1, shaderInt8=1)
            chain = vk.VkPhysicalDeviceVulkan11Features(pNext=f12, storageBuffer16BitAccess=1)
        info = vk.VkDeviceCreateInfo(pNext=chain, queueCreateInfoCount=1, pQueueCreateInfos=[queue],
                                     pEnabledFeatures=enabled)
        try:
            self.device = vk.vkCreateDevice(self.physical, info, None)
        except Exception:
            if small_types:
                return False
            raise
        return True

    def memory_type(self, bits: int, want: int) -> int:
        for i, flags_ in enumerate(self.memory_types):
            if bits & (1 << i) and (flags_ & want) == want:
                return i
        raise BackendUnavailableError(f"no Vulkan memory type with flags {want:#x}")

    def pipeline(self, spec: KernelSpec) -> _Pipeline:
        vk = self.vk
        with self.lock:
            hit = self.pipelines.get(spec.key)
            if hit is not None:
                return hit
        spv = compile_glsl(render(spec, "glsl"), self.target)
        n = len(spec.buffers)
        binds = [vk.VkDescriptorSetLayoutBinding(binding=i, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                 descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT)
                 for i in range(n)]
        set_layout = vk.vkCreateDescriptorSetLayout(
            self.device, vk.VkDescriptorSetLayoutCreateInfo(bindingCount=n, pBindings=binds), None)
        layout = vk.vkCreatePipelineLayout(
            self.device, vk.VkPipelineLayoutCreateInfo(setLayoutCount=1, pSetLayouts=[set_layout]), None)
        module = vk.vkCreateShaderModule(self.device, vk.VkShaderModuleCreateInfo(codeSize=len(spv), pCode=spv), None)
        stage = vk.VkPipelineShaderStageCreateInfo(stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName="main")
        pipe = vk.vkCreateComputePipelines(self.device, vk.VK_NULL_HANDLE, 1,
                                           [vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)], None)[0]
        vk.vkDestroyShaderModule(self.device, module, None)
        entry = _Pipeline(pipe, layout, set_layout, n)
        with self.lock:
            self.builds += 1
            return self.pipelines.setdefault(spec.key, entry)


class _Arena:
    """Buffers sub-allocated from one device memory allocation, persistently mapped if host-visible."""

    def __init__(self, dev: _Device, sizes: list[int], usage: int, props: int) -> None:
        vk = dev.vk
        self.dev = dev
        self.buffers: list[Any] = []
        self.offsets: list[int] = []
        self.sizes = [max(16, (s + 3) // 4 * 4) for s in sizes]
        total, bits = 0, ~0
        reqs = []
        for size in self.sizes:
            buf = vk.vkCreateBuffer(dev.device, vk.VkBufferCreateInfo(
                size=size, usage=usage, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
            req = vk.vkGetBufferMemoryRequirements(dev.device, buf)
            align = max(int(req.alignment), dev.align)
            total = (total + align - 1) // align * align
            self.buffers.append(buf)
            self.offsets.append(total)
            total += int(req.size)
            bits &= int(req.memoryTypeBits)
            reqs.append(req)
        self.total = max(total, 16)
        type_index = dev.memory_type(bits, props)
        self.memory = vk.vkAllocateMemory(dev.device, vk.VkMemoryAllocateInfo(
            allocationSize=self.total, memoryTypeIndex=type_index), None)
        for buf, off in zip(self.buffers, self.offsets, strict=True):
            vk.vkBindBufferMemory(dev.device, buf, self.memory, off)
        self.host: np.ndarray | None = None
        if props & vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT:
            mapped = vk.vkMapMemory(dev.device, self.memory, 0, self.total, 0)
            self.host = np.frombuffer(mapped, np.uint8)

    def write(self, i: int, data: np.ndarray) -> None:
        assert self.host is not None
        raw = data.reshape(-1).view(np.uint8)
        self.host[self.offsets[i]:self.offsets[i] + raw.size] = raw

    def read(self, i: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        assert self.host is not None
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.host[self.offsets[i]:self.offsets[i] + n].copy().view(dtype).reshape(shape)


def _destroy(vk: Any, dev: _Device, handles: dict[str, list[Any]]) -> None:
    device = dev.device
    with dev.lock:
        for cmd in handles["commands"]:
            vk.vkFreeCommandBuffers(device, dev.cmd_pool, 1, [cmd])
    for buf in handles["buffers"]:
        vk.vkDestroyBuffer(device, buf, None)
    for mem in handles["memories"]:
        vk.vkFreeMemory(device, mem, None)
    for pool in handles["descriptor_pools"]:
        vk.vkDestroyDescriptorPool(device, pool, None)
    for qp in handles["query_pools"]:
        vk.vkDestroyQueryPool(device, qp, None)
    for fence in handles["fences"]:
        vk.vkDestroyFence(device, fence, None)


class VulkanExecutable(Executable):
    def __init__(self, dev: _Device, program: Program) -> None:
        vk = dev.vk
        self.dev, self.program = dev, program
        self.plan = plan = plan_program(program, dev.caps)
        self.lock = threading.Lock()
        ids = list(plan.sizes)
        self.slot = {tid: i for i, tid in enumerate(ids)}
        host_flags = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        local = vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT
        usage = (vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT
                 | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT)
        sizes = [plan.sizes[t] for t in ids]
        self.staged = flags.vulkan_staging()
        if not self.staged:
            try:
                self.arena = _Arena(dev, sizes, usage, local | host_flags)
            except BackendUnavailableError:
                self.staged = True
        if self.staged:
            self.arena = _Arena(dev, sizes, usage, local)
        # host-visible side: parameter blocks, status word, and (when staged) the staging copies
        self.moved = [t.id for t in program.inputs] + [t.id for t in program.outputs]
        self.moved += [tid for tid in plan.constants if tid not in self.moved]
        params = [np.asarray(la.params or [0], np.int32) for la in plan.launches]
        host_sizes = [p.nbytes for p in params] + [4]
        if self.staged:
            host_sizes += [plan.sizes[t] for t in self.moved]
        self.host = _Arena(dev, host_sizes, usage, host_flags)
        for i, p in enumerate(params):
            self.host.write(i, p)
        self.status_slot = len(params)
        self.host.write(self.status_slot, np.zeros(1, np.int32))
        self.stage_slot = {tid: len(params) + 1 + i for i, tid in enumerate(self.moved)}
        handles: dict[str, list[Any]] = {"buffers": [*self.arena.buffers, *self.host.buffers],
                                         "memories": [self.arena.memory, self.host.memory],
                                         "descriptor_pools": [], "query_pools": [], "fences": [],
                                         "commands": []}
        n = len(plan.launches)
        pipes = [dev.pipeline(la.spec) for la in plan.launches]
        self.sets: list[Any] = []
        if n:
            nbind = sum(p.bindings for p in pipes)
            pool = vk.vkCreateDescriptorPool(dev.device, vk.VkDescriptorPoolCreateInfo(
                maxSets=n, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                    type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=nbind)]), None)
            handles["descriptor_pools"].append(pool)
            self.sets = vk.vkAllocateDescriptorSets(dev.device, vk.VkDescriptorSetAllocateInfo(
                descriptorPool=pool, descriptorSetCount=n, pSetLayouts=[p.set_layout for p in pipes]))
            writes = []
            for i, (la, ds) in enumerate(zip(plan.launches, self.sets, strict=True)):
                bufs = [(self.host.buffers[i], self.host.sizes[i])]
                for a in la.args:
                    if a == "status":
                        bufs.append((self.host.buffers[self.status_slot], self.host.sizes[self.status_slot]))
                    else:
                        k = self.slot[a.id]  # type: ignore[attr-defined]
                        bufs.append((self.arena.buffers[k], self.arena.sizes[k]))
                for b, (buf, size) in enumerate(bufs):
                    writes.append(vk.VkWriteDescriptorSet(
                        dstSet=ds, dstBinding=b, descriptorCount=1,
                        descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                        pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=buf, offset=0, range=size)]))
            vk.vkUpdateDescriptorSets(dev.device, len(writes), writes, 0, None)
        self.queries = n + 1 if dev.timestamps else 0
        self.query_pool = None
        if self.queries:
            self.query_pool = vk.vkCreateQueryPool(dev.device, vk.VkQueryPoolCreateInfo(
                queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=self.queries), None)
            handles["query_pools"].append(self.query_pool)
        self.fence = vk.vkCreateFence(dev.device, vk.VkFenceCreateInfo(), None)
        handles["fences"].append(self.fence)
        with dev.lock:
            self.cmd = vk.vkAllocateCommandBuffers(dev.device, vk.VkCommandBufferAllocateInfo(
                commandPool=dev.cmd_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        handles["commands"].append(self.cmd)
        self._record(pipes)
        weakref.finalize(self, _destroy, vk, dev, handles)
        # constants go up once
        for tid, t in plan.constants.items():
            assert t.value is not None
            self._put(tid, np.ascontiguousarray(t.value, dtype=t.dtype))
        if self.staged and plan.constants:
            once = self._one_shot_upload(list(plan.constants))
            self._submit(once)
            with dev.lock:
                vk.vkFreeCommandBuffers(dev.device, dev.cmd_pool, 1, [once])
        self._labels = [la.label or la.spec.name for la in plan.launches]
        self._last: list[tuple[str, float]] = []

    def _barrier(self, cmd: Any, src_stage: int, dst_stage: int, src: int, dst: int) -> None:
        vk = self.dev.vk
        vk.vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1,
                                [vk.VkMemoryBarrier(srcAccessMask=src, dstAccessMask=dst)], 0, None, 0, None)

    def _copies(self, cmd: Any, ids: list[int], upload: bool) -> None:
        vk = self.dev.vk
        for tid in ids:
            size = self.arena.sizes[self.slot[tid]]
            host_buf = self.host.buffers[self.stage_slot[tid]]
            dev_buf = self.arena.buffers[self.slot[tid]]
            src, dst = (host_buf, dev_buf) if upload else (dev_buf, host_buf)
            vk.vkCmdCopyBuffer(cmd, src, dst, 1, [vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=size)])

    def _one_shot_upload(self, ids: list[int]) -> Any:
        vk, dev = self.dev.vk, self.dev
        with dev.lock:
            cmd = vk.vkAllocateCommandBuffers(dev.device, vk.VkCommandBufferAllocateInfo(
                commandPool=dev.cmd_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
        self._copies(cmd, ids, upload=True)
        vk.vkEndCommandBuffer(cmd)
        return cmd

    def _record(self, pipes: list[_Pipeline]) -> None:
        vk = self.dev.vk
        cmd = self.cmd
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo())
        compute = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT
        transfer = vk.VK_PIPELINE_STAGE_TRANSFER_BIT
        rw = vk.VK_ACCESS_SHADER_READ_BIT | vk.VK_ACCESS_SHADER_WRITE_BIT
        if self.query_pool is not None:
            vk.vkCmdResetQueryPool(cmd, self.query_pool, 0, self.queries)
        if self.staged:
            ins = [t.id for t in self.program.inputs]
            self._copies(cmd, ins, upload=True)
            self._barrier(cmd, transfer, compute, vk.VK_ACCESS_TRANSFER_WRITE_BIT, rw)
        if self.query_pool is not None:
            vk.vkCmdWriteTimestamp(cmd, vk.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, self.query_pool, 0)
        for i, (la, pipe, ds) in enumerate(zip(self.plan.launches, pipes, self.sets, strict=True)):
            vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline)
            vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe.layout, 0, 1, [ds], 0, None)
            vk.vkCmdDispatch(cmd, *la.groups)
            self._barrier(cmd, compute, compute, vk.VK_ACCESS_SHADER_WRITE_BIT, rw)
            if self.query_pool is not None:
                vk.vkCmdWriteTimestamp(cmd, vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, self.query_pool, i + 1)
        if self.staged:
            self._barrier(cmd, compute, transfer, vk.VK_ACCESS_SHADER_WRITE_BIT, vk.VK_ACCESS_TRANSFER_READ_BIT)
            self._copies(cmd, [t.id for t in self.program.outputs], upload=False)
            self._barrier(cmd, transfer, vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_TRANSFER_WRITE_BIT,
                          vk.VK_ACCESS_HOST_READ_BIT)
        else:
            self._barrier(cmd, compute, vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_SHADER_WRITE_BIT,
                          vk.VK_ACCESS_HOST_READ_BIT)
        vk.vkEndCommandBuffer(cmd)

    def _submit(self, cmd: Any) -> None:
        vk, dev = self.dev.vk, self.dev
        with dev.lock:
            vk.vkQueueSubmit(dev.queue, 1, [vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[cmd])],
                             self.fence)
        vk.vkWaitForFences(dev.device, 1, [self.fence], vk.VK_TRUE, 60 * 10**9)
        vk.vkResetFences(dev.device, 1, [self.fence])

    def _put(self, tid: int, data: np.ndarray) -> None:
        if self.staged:
            self.host.write(self.stage_slot[tid], data)
        else:
            self.arena.write(self.slot[tid], data)

    def _get(self, t: A.Tensor) -> np.ndarray:
        if self.staged:
            return self.host.read(self.stage_slot[t.id], t.shape, t.dtype)
        return self.arena.read(self.slot[t.id], t.shape, t.dtype)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        prog = self.program
        if len(inputs) != len(prog.inputs):
            raise WalleError(f"program takes {len(prog.inputs)} inputs, got {len(inputs)}")
        with self.lock:
            for t, arr in zip(prog.inputs, inputs, strict=True):
                self._put(t.id, np.ascontiguousarray(arr, dtype=t.dtype))
            if self.plan.uses_status:
                self.host.write(self.status_slot, np.zeros(1, np.int32))
            self._submit(self.cmd)
            outs = [self._get(t) for t in prog.outputs]
            self._last = self._read_timestamps()
            if self.plan.uses_status and self.host.read(self.status_slot, (1,), np.dtype(np.int32))[0]:
                raise VulkanKernelError("index out of range in gather/scatter")
        return outs

    def _read_timestamps(self) -> list[tuple[str, float]]:
        if self.query_pool is None or self.queries < 2:
            return []
        vk = self.dev.vk
        data = vk.ffi.new("uint64_t[]", self.queries)
        vk.vkGetQueryPoolResults(self.dev.device, self.query_pool, 0, self.queries, 8 * self.queries, data, 8,
                                 vk.VK_QUERY_RESULT_64_BIT | vk.VK_QUERY_RESULT_WAIT_BIT)
        ticks = [int(data[i]) for i in range(self.queries)]
        scale = self.dev.timestamp_period * 1e-9
        return [(label, (ticks[i + 1] - ticks[i]) * scale) for i, label in enumerate(self._labels)]

    def last_timings(self) -> list[tuple[str, float]]:
        """Seconds between the timestamps around each dispatch of the last run."""
        return list(self._last)


def _probe() -> tuple[_Device | None, str]:
    try:
        import vulkan  # noqa: F401
    except ImportError:
        return None, "the vulkan binding is not installed: pip install 'walle[vulkan]'"
    except OSError as exc:  # the binding is there but libvulkan.so.1 is not
        return None, f"Vulkan loader missing ({exc}): install libvulkan1 mesa-vulkan-drivers"
    if shutil.which("glslc") is None:
        return None, "glslc not found (GLSL -> SPIR-V): install glslc"
    try:
        return _Device(), ""
    except BackendUnavailableError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"no Vulkan device found ({exc}): install mesa-vulkan-drivers"


class VulkanBackend(Backend):
    name = "vulkan"
    version = "1.0"

    def __init__(self) -> None:
        self._dev, self._problem = _probe()

    def availability(self) -> Availability:
        if self._dev is None:
            return Availability(False, self._problem)
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        if self._dev is None:
            raise BackendUnavailableError(self._problem)
        d = self._dev
        return DeviceInfo(name=d.name, kind=_DEVICE_TYPES.get(d.props.deviceType, "other"),
                          details={"api": d.api, "timestamps": str(d.timestamps).lower(),
                                   "types": ",".join(sorted(d.caps.types))})

    @property
    def caps(self) -> Caps:
        if self._dev is None:
            raise BackendUnavailableError(self._problem)
        return self._dev.caps

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        if self._dev is None:
            return ()
        return offered(op, self._dev.caps)

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        if self._dev is None:
            raise BackendUnavailableError(self._problem)
        try:
            return VulkanExecutable(self._dev, program)
        except Unsupported as exc:
            raise BackendUnavailableError(f"vulkan cannot run this program: {exc}") from exc


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [VulkanBackend]
