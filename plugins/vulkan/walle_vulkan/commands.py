"""Programs on a Vulkan queue: one command buffer per program, recorded once and submitted once per
run. It holds the upload copies (staging -> device), every dispatch with a barrier after it, the
download copies (device -> readback staging) and timestamp queries around each part, so a run
reports each launch's device time, the span of the dispatches and both transfers' times."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from walle_core import flags
from walle_core.kernels.device import Dispatch, RunTimings, Transfer
from walle_vulkan.memory import Buffer, Memory
from walle_vulkan.shaders import Pipeline


@dataclass
class Recording:
    staged: bool
    uploads: list[tuple[Transfer[Buffer], Buffer]]  # (device side, host side) per upload
    downloads: list[tuple[Transfer[Buffer], Buffer]]
    labels: list[str]
    cmd: Any
    fence: Any
    queries: Any  # timestamp query pool (None where the queue has no timestamps)
    pools: list[Any] = field(default_factory=list)  # descriptor pools


@dataclass
class Queue:
    vk: Any
    device: Any
    queue: Any
    cmd_pool: Any
    memory: Memory
    timestamps: bool
    period: float  # seconds per timestamp tick
    lock: threading.RLock = field(default_factory=threading.RLock)  # command pool, queue submission

    def _descriptor_sets(self, dispatches: Sequence[Dispatch[Buffer, Pipeline]], rec: Recording) -> list[Any]:
        vk = self.vk
        if not dispatches:
            return []
        pool = vk.vkCreateDescriptorPool(self.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=len(dispatches), poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=sum(len(d.buffers) for d in dispatches))]),
            None)
        rec.pools.append(pool)
        sets = vk.vkAllocateDescriptorSets(self.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=pool, descriptorSetCount=len(dispatches),
            pSetLayouts=[d.kernel.set_layout for d in dispatches]))
        writes = [vk.VkWriteDescriptorSet(
            dstSet=ds, dstBinding=b, descriptorCount=1, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=buf.handle, offset=0, range=buf.size)])
            for d, ds in zip(dispatches, sets, strict=True) for b, buf in enumerate(d.buffers)]
        vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        return list(sets)

    def record(self, dispatches: Sequence[Dispatch[Buffer, Pipeline]], uploads: Sequence[Transfer[Buffer]],
               downloads: Sequence[Transfer[Buffer]]) -> Recording:
        vk, mem = self.vk, self.memory
        staged = flags.vulkan_staging() or not mem.device.mapped
        with self.lock:
            cmd = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
                commandPool=self.cmd_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        queries = None
        if self.timestamps:
            queries = vk.vkCreateQueryPool(self.device, vk.VkQueryPoolCreateInfo(
                queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=len(dispatches) + 3), None)
        rec = Recording(staged, [(t, mem.upload.acquire(t.nbytes) if staged else t.buffer) for t in uploads],
                         [(t, mem.readback.acquire(t.nbytes) if staged else t.buffer) for t in downloads],
                         [d.label for d in dispatches], cmd, vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None),
                         queries)
        sets = self._descriptor_sets(dispatches, rec)
        mark = (lambda q: vk.vkCmdWriteTimestamp(cmd, vk.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, queries, q)) \
            if queries is not None else (lambda q: None)
        stages = vk.VK_PIPELINE_STAGE_TRANSFER_BIT | vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT
        writes = vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_TRANSFER_WRITE_BIT
        reads = vk.VK_ACCESS_SHADER_READ_BIT | vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_TRANSFER_READ_BIT

        def barrier(dst_stage: int = stages, dst: int = reads) -> None:
            vk.vkCmdPipelineBarrier(cmd, stages, dst_stage, 0, 1, [vk.VkMemoryBarrier(srcAccessMask=writes,
                                                                                       dstAccessMask=dst)], 0, None, 0, None)

        def copy(src: Buffer, dst: Buffer, nbytes: int) -> None:
            if staged and nbytes:
                vk.vkCmdCopyBuffer(cmd, src.handle, dst.handle, 1, [vk.VkBufferCopy(0, 0, nbytes)])

        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo())
        if queries is not None:
            vk.vkCmdResetQueryPool(cmd, queries, 0, len(dispatches) + 3)
            vk.vkCmdWriteTimestamp(cmd, vk.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, queries, 0)
        for t, host in rec.uploads:
            copy(host, t.buffer, t.nbytes)
        barrier()
        mark(1)
        for i, (d, ds) in enumerate(zip(dispatches, sets, strict=True)):
            vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, d.kernel.pipeline)
            vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, d.kernel.layout, 0, 1, [ds], 0, None)
            vk.vkCmdDispatch(cmd, *d.groups)
            barrier()
            mark(i + 2)
        for t, host in rec.downloads:
            copy(t.buffer, host, t.nbytes)
        mark(len(dispatches) + 2)
        barrier(vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_HOST_READ_BIT)
        vk.vkEndCommandBuffer(cmd)
        return rec

    def execute(self, program: Recording, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> RunTimings:
        vk = self.vk
        t0 = time.perf_counter()
        for (_, host), data in zip(program.uploads, inputs, strict=True):
            host.put(data)
        t1 = time.perf_counter()
        with self.lock:
            vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[program.cmd])],
                             program.fence)
        vk.vkWaitForFences(self.device, 1, [program.fence], vk.VK_TRUE, 600 * 10**9)
        vk.vkResetFences(self.device, 1, [program.fence])
        t2 = time.perf_counter()
        for (_, host), out in zip(program.downloads, outputs, strict=True):
            host.get(out)
        t3 = time.perf_counter()
        timings = RunTimings(upload_bytes=sum(t.nbytes for t, _ in program.uploads),
                             download_bytes=sum(t.nbytes for t, _ in program.downloads))
        if program.queries is None:
            timings.upload_s, timings.download_s = t1 - t0, t3 - t2
            return timings
        n = len(program.labels) + 3
        data = vk.ffi.new("uint64_t[]", n)
        vk.vkGetQueryPoolResults(self.device, program.queries, 0, n, 8 * n, data, 8,
                                 vk.VK_QUERY_RESULT_64_BIT | vk.VK_QUERY_RESULT_WAIT_BIT)
        ticks = [int(tick) for tick in np.frombuffer(vk.ffi.buffer(data), np.uint64)]

        def seconds(a: int, b: int) -> float:  # integer tick differences: no rounding of large counters
            return (ticks[b] - ticks[a]) * self.period

        timings.dispatches = [(label, seconds(i + 1, i + 2)) for i, label in enumerate(program.labels)]
        timings.span_s = seconds(1, n - 2)
        timings.upload_s = seconds(0, 1) + t1 - t0
        timings.download_s = seconds(n - 2, n - 1) + t3 - t2
        return timings

    def forget(self, program: Recording) -> None:
        vk = self.vk
        with self.lock:
            vk.vkFreeCommandBuffers(self.device, self.cmd_pool, 1, [program.cmd])
        for pool in program.pools:
            vk.vkDestroyDescriptorPool(self.device, pool, None)
        if program.queries is not None:
            vk.vkDestroyQueryPool(self.device, program.queries, None)
        vk.vkDestroyFence(self.device, program.fence, None)
        if program.staged:
            self.memory.upload.release([(h, t.nbytes) for t, h in program.uploads])
            self.memory.readback.release([(h, t.nbytes) for t, h in program.downloads])
