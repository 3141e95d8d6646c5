"""Metal backend plugin: the shared kernel description rendered to Metal Shading Language, run
through PyObjC's Metal framework (imported lazily, macOS only).

Off macOS the backend reports "Metal needs macOS" and is never chosen; its MSL rendering is still
tested everywhere (``tests/test_gpu_backends.py`` renders and syntax-checks every kernel).
Metal has no float64: ops on it fall back to another backend with explicit copies.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import atomic as A
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

METAL_CAPS = Caps(frozenset({"f32", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}), f64_math=False,
                  max_local=1024, local_mem=32768)


class MetalKernelError(WalleError):
    """A kernel reported bad data (e.g. an out-of-range gather index)."""


def render_msl(spec: KernelSpec) -> str:
    return render(spec, "msl")


class _Device:
    def __init__(self) -> None:
        import Metal  # PyObjC; only on macOS

        self.mt = Metal
        self.device = Metal.MTLCreateSystemDefaultDevice()
        if self.device is None:
            raise BackendUnavailableError("no Metal device")
        self.queue = self.device.newCommandQueue()
        self.pipelines: dict[str, Any] = {}
        self.lock = threading.Lock()

    def pipeline(self, spec: KernelSpec) -> Any:
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

    def buffer(self, nbytes: int) -> Any:
        return self.device.newBufferWithLength_options_(max(16, nbytes), self.mt.MTLResourceStorageModeShared)


def _view(buf: Any, nbytes: int) -> np.ndarray:
    return np.frombuffer(buf.contents().as_buffer(max(16, nbytes)), np.uint8)


class MetalExecutable(Executable):
    def __init__(self, dev: _Device, program: Program) -> None:
        self.dev, self.program = dev, program
        self.plan = plan_program(program, METAL_CAPS)
        self.lock = threading.Lock()
        self.buffers = {tid: dev.buffer(n) for tid, n in self.plan.sizes.items()}
        for tid, t in self.plan.constants.items():
            assert t.value is not None
            raw = np.ascontiguousarray(t.value, dtype=t.dtype).reshape(-1).view(np.uint8)
            _view(self.buffers[tid], raw.size)[: raw.size] = raw
        self.status = dev.buffer(4)
        self.steps = []
        for la in self.plan.launches:
            params = np.asarray(la.params or [0], np.int32)
            pbuf = dev.buffer(params.nbytes)
            _view(pbuf, params.nbytes)[: params.nbytes] = params.view(np.uint8)
            args = [pbuf] + [self.status if a == "status" else self.buffers[a.id]  # type: ignore[attr-defined]
                             for a in la.args]
            self.steps.append((dev.pipeline(la.spec), args, la.groups, la.spec.local_size))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        mt = self.dev.mt
        prog = self.program
        with self.lock:
            for t, arr in zip(prog.inputs, inputs, strict=True):
                raw = np.ascontiguousarray(arr, dtype=t.dtype).reshape(-1).view(np.uint8)
                _view(self.buffers[t.id], raw.size)[: raw.size] = raw
            _view(self.status, 4)[:4] = 0
            cmd = self.dev.queue.commandBuffer()
            enc = cmd.computeCommandEncoder()  # one encoder, serial dispatches: one submit per run
            for pso, args, groups, local in self.steps:
                enc.setComputePipelineState_(pso)
                for i, buf in enumerate(args):
                    enc.setBuffer_offset_atIndex_(buf, 0, i)
                enc.dispatchThreadgroups_threadsPerThreadgroup_(mt.MTLSizeMake(*groups), mt.MTLSizeMake(*local))
                enc.memoryBarrierWithScope_(mt.MTLBarrierScopeBuffers)
            enc.endEncoding()
            cmd.commit()
            cmd.waitUntilCompleted()
            outs = []
            for t in prog.outputs:
                data = _view(self.buffers[t.id], t.nbytes)[: t.nbytes].copy()
                outs.append(data.view(t.dtype).reshape(t.shape))
            if self.plan.uses_status and _view(self.status, 4)[:4].view(np.int32)[0]:
                raise MetalKernelError("index out of range in gather/scatter")
        return outs


class MetalBackend(Backend):
    name = "metal"
    version = "1.0"

    def __init__(self) -> None:
        self._dev: _Device | None = None
        self._problem = ""
        if platform.system() != "Darwin":
            self._problem = "Metal needs macOS"
            return
        try:
            self._dev = _Device()
        except ImportError:
            self._problem = "PyObjC's Metal framework is not installed: pip install pyobjc-framework-Metal"
        except Exception as exc:
            self._problem = f"no Metal device ({exc})"

    def availability(self) -> Availability:
        if self._dev is None:
            return Availability(False, self._problem)
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        if self._dev is None:
            raise BackendUnavailableError(self._problem)
        return DeviceInfo(name=str(self._dev.device.name()), kind="gpu")

    @property
    def caps(self) -> Caps:
        return METAL_CAPS

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        if self._dev is None:
            return ()
        return offered(op, METAL_CAPS)

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        if self._dev is None:
            raise BackendUnavailableError(self._problem)
        try:
            return MetalExecutable(self._dev, program)
        except Unsupported as exc:
            raise BackendUnavailableError(f"metal cannot run this program: {exc}") from exc


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [MetalBackend]
