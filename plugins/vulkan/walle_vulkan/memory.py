"""Vulkan memory: buffers bound into large blocks of one memory type, and the choice of types.

Drivers cap the number of memory allocations (often 4096), so buffers are bound at aligned
offsets into blocks of 64 MiB (or one block per larger buffer). Three heaps: device buffers
(device-local), upload staging (host-visible and coherent: the host writes, the GPU reads once)
and readback staging (host-visible and *cached*: reading write-combined memory from the CPU is what
made readback 100x slow on discrete GPUs). Host-visible blocks stay mapped for their lifetime.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from walle_core.errors import BackendUnavailableError
from walle_core.kernels.device import BufferPool

log = logging.getLogger(__name__)

DEVICE_LOCAL, HOST_VISIBLE, HOST_COHERENT, HOST_CACHED = 1, 2, 4, 8
_BLOCK = 64 << 20


@dataclass
class Buffer:
    handle: Any  # VkBuffer
    size: int
    heap: Heap
    host: np.ndarray | None  # the mapped bytes, where the heap is host-visible

    def put(self, data: np.ndarray) -> None:
        assert self.host is not None
        self.host[: data.size] = data

    def get(self, out: np.ndarray) -> None:
        assert self.host is not None
        if not self.heap.coherent:
            self.heap.invalidate()
        out[:] = self.host[: out.size]


class Heap:
    """Buffers of one memory type, bound into blocks."""

    def __init__(self, vk: Any, device: Any, type_index: int, flags: int, align: int, usage: int) -> None:
        self.vk, self.device, self.type_index, self.flags = vk, device, type_index, flags
        self.align, self.usage = align, usage
        self.mapped = bool(flags & HOST_VISIBLE)
        self.coherent = bool(flags & HOST_COHERENT)
        self.blocks: list[tuple[Any, np.ndarray | None, int]] = []  # memory, mapped bytes, size
        self.used = 0  # bytes used in the last block
        self.lock = threading.Lock()

    def _block(self, size: int) -> None:
        vk = self.vk
        memory = vk.vkAllocateMemory(self.device, vk.VkMemoryAllocateInfo(
            allocationSize=size, memoryTypeIndex=self.type_index), None)
        view = None
        if self.mapped:
            view = np.frombuffer(vk.vkMapMemory(self.device, memory, 0, size, 0), np.uint8)
        self.blocks.append((memory, view, size))
        self.used = 0

    def buffer(self, nbytes: int) -> Buffer:
        vk = self.vk
        size = max(16, (nbytes + 3) // 4 * 4)
        handle = vk.vkCreateBuffer(self.device, vk.VkBufferCreateInfo(
            size=size, usage=self.usage, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(self.device, handle)
        align = max(int(req.alignment), self.align)
        with self.lock:
            offset = (self.used + align - 1) // align * align
            if not self.blocks or offset + int(req.size) > self.blocks[-1][2]:
                self._block(max(_BLOCK, int(req.size)))
                offset = 0
            self.used = offset + int(req.size)
            memory, view, _ = self.blocks[-1]
        vk.vkBindBufferMemory(self.device, handle, memory, offset)
        return Buffer(handle, size, self, None if view is None else view[offset:offset + size])

    def invalidate(self) -> None:
        vk = self.vk
        ranges = [vk.VkMappedMemoryRange(memory=m, offset=0, size=vk.VK_WHOLE_SIZE) for m, _, _ in self.blocks]
        vk.vkInvalidateMappedMemoryRanges(self.device, len(ranges), ranges)


@dataclass(frozen=True)
class MemoryPlan:
    device: int  # memory type index of device buffers
    upload: int  # ... of upload staging
    readback: int  # ... of readback staging
    note: str = ""  # why a preferred type was not available


def choose_memory_types(types: list[tuple[int, int]]) -> MemoryPlan:
    """Memory types (index, property flags) for device buffers and both staging directions.

    Device buffers: a type that is device-local *and* host-visible, coherent and cached where one
    exists (unified memory: mapped directly, no staging), else device-local. Upload staging:
    host-visible and coherent, preferably not device-local (system memory the GPU reads once).
    Readback staging: host-visible and cached (coherent if possible), else the upload type.
    """

    def find(want: int, avoid: int = 0) -> int | None:
        matches = [i for i, f in types if f & want == want]
        preferred = [i for i, f in types if f & want == want and not f & avoid]
        return (preferred or matches)[0] if matches else None

    device = find(DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT | HOST_CACHED)
    if device is None:
        device = find(DEVICE_LOCAL)
    upload = find(HOST_VISIBLE | HOST_COHERENT, avoid=DEVICE_LOCAL)
    readback = find(HOST_VISIBLE | HOST_COHERENT | HOST_CACHED)
    if readback is None:
        readback = find(HOST_VISIBLE | HOST_CACHED)
    if device is None or upload is None:
        raise BackendUnavailableError("Vulkan device lacks device-local or host-visible coherent memory")
    if readback is None:
        return MemoryPlan(device, upload, upload, "no HOST_CACHED memory type: readback goes through "
                                                  "uncached host-visible memory (slow CPU reads)")
    return MemoryPlan(device, upload, readback)


class Memory:
    """The device heap and the two staging pools of one device."""

    def __init__(self, vk: Any, physical: Any, device: Any, align: int) -> None:
        usage = (vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT
                 | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT)
        probe = vk.vkCreateBuffer(device, vk.VkBufferCreateInfo(
            size=16, usage=usage, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        allowed = int(vk.vkGetBufferMemoryRequirements(device, probe).memoryTypeBits)
        vk.vkDestroyBuffer(device, probe, None)
        props = vk.vkGetPhysicalDeviceMemoryProperties(physical)
        self.types = [(i, int(props.memoryTypes[i].propertyFlags)) for i in range(props.memoryTypeCount)
                      if allowed & (1 << i)]

        plan = choose_memory_types(self.types)
        if plan.note:
            log.warning("vulkan: %s", plan.note)
        flags = dict(self.types)
        heaps = {i: Heap(vk, device, i, flags[i], align, usage) for i in {plan.device, plan.upload, plan.readback}}
        self.device: Heap = heaps[plan.device]
        self.upload: BufferPool[Buffer] = BufferPool(heaps[plan.upload].buffer)
        self.readback: BufferPool[Buffer] = BufferPool(heaps[plan.readback].buffer)
        self.readback_cached = bool(flags[plan.readback] & HOST_CACHED)

    def describe(self) -> str:
        if self.device.mapped:
            return "unified (device memory mapped directly)"
        return f"staged (readback {'cached' if self.readback_cached else 'uncached'})"
