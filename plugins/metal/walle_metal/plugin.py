"""Metal backend plugin: the :class:`~walle_core.kernels.device.GPUDevice` interface over PyObjC's
Metal framework (imported lazily, macOS only); kernels are the shared description rendered to
Metal Shading Language; the run loop is walle_core's shared GPU executor.

Off macOS the backend reports "Metal needs macOS" and is never chosen; its MSL rendering is still
tested everywhere (``tests/test_gpu_backends.py`` renders and syntax-checks every kernel).
Metal has no float64: ops on it fall back to another backend with explicit copies. Buffers use
shared storage (Apple GPUs share memory with the CPU), so transfers are copies into the mapped
buffer contents; one command buffer with one encoder runs the whole program per run. Work-group
reductions reduce in SIMD groups (``simd_sum`` & co.).
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from walle_core.backend import Backend, DeviceInfo
from walle_core.errors import BackendUnavailableError, WalleError
from walle_core.hookspecs import hookimpl
from walle_core.kernels import Caps, KernelSpec, render
from walle_core.kernels.device import Dispatch, GPUDevice, RunTimings, Transfer
from walle_core.kernels.executor import GPUBackend

# Apple GPUs run 32-wide SIMD groups, and MSL's simd_sum/simd_max/simd_min are always there
METAL_CAPS = Caps(frozenset({"f32", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}), f64_math=False,
                  max_local=1024, local_mem=32768, subgroup=32)


def render_msl(spec: KernelSpec) -> str:
    return render(spec, "msl")


def _view(buf: Any, nbytes: int) -> np.ndarray:
    return np.frombuffer(buf.contents().as_buffer(max(16, nbytes)), np.uint8)


@dataclass
class _Recording:
    dispatches: Sequence[Dispatch[Any, Any]]
    uploads: Sequence[Transfer[Any]]
    downloads: Sequence[Transfer[Any]]


class MetalDevice(GPUDevice[Any, Any, _Recording]):
    def __init__(self, mt: Any) -> None:
        super().__init__()
        self.mt = mt
        self.device = mt.MTLCreateSystemDefaultDevice()
        if self.device is None:
            raise BackendUnavailableError("no Metal device")
        self.queue = self.device.newCommandQueue()
        self.pipelines: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.caps = METAL_CAPS
        self.half = True  # half is native in MSL

    def info(self) -> DeviceInfo:
        return DeviceInfo(name=str(self.device.name()), kind="gpu")

    def allocate(self, nbytes: int) -> Any:
        return self.device.newBufferWithLength_options_(max(16, nbytes), self.mt.MTLResourceStorageModeShared)

    def write(self, copies: Sequence[tuple[Any, np.ndarray]]) -> None:
        for buf, host in copies:
            _view(buf, host.size)[: host.size] = host

    def read(self, copies: Sequence[tuple[Any, np.ndarray]]) -> None:
        for buf, host in copies:
            host[:] = _view(buf, host.size)[: host.size]

    def build(self, spec: KernelSpec) -> Any:
        with self.lock:
            hit = self.pipelines.get(spec.key)
            if hit is not None:
                return hit
            opts = self.mt.MTLCompileOptions.new()
            opts.setFastMathEnabled_(False)  # NaN/inf semantics and exact-rounding tricks must hold
            lib, err = self.device.newLibraryWithSource_options_error_(render_msl(spec), opts, None)
            if lib is None:
                raise WalleError(f"MSL compile failed for {spec.name}: {err}")
            fn = lib.newFunctionWithName_(spec.name)
            pso, err = self.device.newComputePipelineStateWithFunction_error_(fn, None)
            if pso is None:
                raise WalleError(f"Metal pipeline failed for {spec.name}: {err}")
            self.pipelines[spec.key] = pso
            return pso

    def record(self, dispatches: Sequence[Dispatch[Any, Any]], uploads: Sequence[Transfer[Any]],
               downloads: Sequence[Transfer[Any]]) -> _Recording:
        return _Recording(dispatches, uploads, downloads)  # Metal command buffers are one-shot

    def execute(self, program: _Recording, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> RunTimings:
        mt = self.mt
        t0 = time.perf_counter()
        self.write([(t.buffer, host) for t, host in zip(program.uploads, inputs, strict=True)])
        t1 = time.perf_counter()
        cmd = self.queue.commandBuffer()
        enc = cmd.computeCommandEncoder()  # one encoder, serial dispatches: one submit per run
        for d in program.dispatches:
            enc.setComputePipelineState_(d.kernel)
            for i, buf in enumerate(d.buffers):
                enc.setBuffer_offset_atIndex_(buf, 0, i)
            enc.dispatchThreadgroups_threadsPerThreadgroup_(mt.MTLSizeMake(*d.groups), mt.MTLSizeMake(*d.local_size))
            enc.memoryBarrierWithScope_(mt.MTLBarrierScopeBuffers)
        enc.endEncoding()
        cmd.commit()
        cmd.waitUntilCompleted()
        t2 = time.perf_counter()
        self.read([(t.buffer, host) for t, host in zip(program.downloads, outputs, strict=True)])
        return RunTimings([], float(cmd.GPUEndTime() - cmd.GPUStartTime()), t1 - t0, time.perf_counter() - t2,
                          sum(t.nbytes for t in program.uploads), sum(t.nbytes for t in program.downloads))


class MetalBackend(GPUBackend):
    name = "metal"
    version = "1.1"
    no_device_hint = "no Metal device ({exc})"

    @classmethod
    def open_device(cls) -> MetalDevice:
        if platform.system() != "Darwin":
            raise BackendUnavailableError("Metal needs macOS")
        try:
            import Metal  # PyObjC; only on macOS
        except ImportError:
            raise BackendUnavailableError(
                "PyObjC's Metal framework is not installed: pip install pyobjc-framework-Metal") from None
        return MetalDevice(Metal)


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [MetalBackend]
