"""The one run loop of every GPU-style backend (OpenCL, Vulkan, Metal).

:class:`GPUExecutable` lowers a :class:`~walle_core.backend.Program` to kernel launches, takes
buffers from the device's pool, uploads constants and one int32 parameter block per launch once,
records the program on the device, and per run moves the inputs up, the outputs down and checks
the status word that gather/scatter kernels raise on a bad index. :class:`GPUBackend` is the
shared :class:`~walle_core.backend.Backend` half: a plugin names itself and opens its
:class:`~walle_core.kernels.device.GPUDevice`, nothing else.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError, WalleError
from walle_core.kernels.device import Dispatch, GPUDevice, RunTimings, Transfer
from walle_core.kernels.lower import Unsupported, offered
from walle_core.kernels.precision import check_precision, half_caps, half_op, half_program
from walle_core.kernels.program import plan_program
from walle_core.kernels.spec import Caps

AnyDevice = GPUDevice[Any, Any, Any]


class KernelDataError(WalleError):
    """A kernel reported bad data (e.g. an out-of-range gather index)."""


def host_bytes(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes as a flat ``uint8`` view (no copy)."""
    return arr.reshape(-1).view(np.uint8)


def _release(device: AnyDevice, held: list[tuple[Any, int]], recording: Any) -> None:
    device.forget(recording)
    device.pool.release(held)


class GPUExecutable(Executable):
    def __init__(self, device: AnyDevice, program: Program, precision: str = "fp32") -> None:
        self.out_dtypes = [t.dtype for t in program.outputs]
        caps = device.caps
        if precision == "fp16":
            program, caps = half_program(program), half_caps(caps)
        self.device, self.program = device, program
        self.plan = plan = plan_program(program, caps)
        self.lock = threading.Lock()
        pool = device.pool
        self.buffers = {tid: pool.acquire(n) for tid, n in plan.sizes.items()}
        held = [(self.buffers[tid], n) for tid, n in plan.sizes.items()]
        self.status = pool.acquire(4)
        params = [np.asarray(la.params or [0], np.int32) for la in plan.launches]
        param_bufs = [pool.acquire(p.nbytes) for p in params]
        held += [(self.status, 4), *((b, p.nbytes) for b, p in zip(param_bufs, params, strict=True))]
        once = [(b, host_bytes(p)) for b, p in zip(param_bufs, params, strict=True)]
        for tid, t in plan.constants.items():
            assert t.value is not None
            data = np.ascontiguousarray(t.value, dtype=t.dtype)
            if data.nbytes:
                once.append((self.buffers[tid], host_bytes(data)))
        device.write(once)
        dispatches = [
            Dispatch(device.build(la.spec), (pbuf, *(self.status if a == "status" else self.buffers[a.id]  # type: ignore[attr-defined]
                                                     for a in la.args)),
                     la.groups, la.spec.local_size, la.label or la.spec.name)
            for la, pbuf in zip(plan.launches, param_bufs, strict=True)]
        status = [Transfer(self.status, 4)] if plan.uses_status else []
        uploads = [Transfer(self.buffers[t.id], t.nbytes) for t in program.inputs] + status
        downloads = [Transfer(self.buffers[t.id], t.nbytes) for t in program.outputs] + status
        self.recording = device.record(dispatches, uploads, downloads)
        self._timings = RunTimings()
        weakref.finalize(self, _release, device, held, self.recording)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        prog = self.program
        if len(inputs) != len(prog.inputs):
            raise WalleError(f"program takes {len(prog.inputs)} inputs, got {len(inputs)}")
        ins = [host_bytes(np.ascontiguousarray(arr, dtype=t.dtype)) for t, arr in zip(prog.inputs, inputs, strict=True)]
        outs = [np.empty(t.shape, t.dtype) for t in prog.outputs]
        downs = [host_bytes(o) for o in outs]
        flag = np.zeros(1, np.int32)
        if self.plan.uses_status:
            ins.append(host_bytes(np.zeros(1, np.int32)))
            downs.append(host_bytes(flag))
        with self.lock:
            self._timings = self.device.execute(self.recording, ins, downs)
        if flag[0]:
            raise KernelDataError("index out of range in gather/scatter")
        return [o.astype(dt, copy=False) for o, dt in zip(outs, self.out_dtypes, strict=True)]

    def last_timings(self) -> list[tuple[str, float]]:
        """Device seconds of each launch of the last run (events or timestamp queries)."""
        return list(self._timings.dispatches)

    def last_run_timings(self) -> RunTimings:
        """The last run's device span and its host->device and device->host transfer times."""
        return self._timings


@dataclass(frozen=True)
class TransferTiming:
    nbytes: int
    upload_s: float  # host -> device
    download_s: float  # device -> host


class GPUBackend(Backend):
    """The :class:`Backend` of a GPU-style plugin: everything but opening the device.

    A subclass sets ``name``/``version``, ``no_device_hint`` (the reason shown when opening fails
    with an unexpected driver error, ``{exc}`` is the error) and implements :meth:`open_device`,
    which raises :class:`BackendUnavailableError` with an actionable reason when it cannot.
    """

    no_device_hint: ClassVar[str] = "no device found ({exc})"

    def __init__(self, precision: str | None = None) -> None:
        """``precision="fp16"`` (or ``WALLE_GPU_PRECISION=fp16``) opts in to float16 storage and
        math with float32 accumulation (:mod:`walle_core.kernels.precision`)."""
        self.precision = check_precision(precision or flags.gpu_precision())
        self._dev: AnyDevice | None = None
        self._problem = ""
        try:
            self._dev = self.open_device()
        except BackendUnavailableError as exc:
            self._problem = str(exc)
        except Exception as exc:  # driver loaders fail in many ways; none may break the registry
            self._problem = self.no_device_hint.format(exc=exc)
        if self._dev is not None and self.precision == "fp16" and not self._dev.half:
            self._dev, self._problem = None, f"precision='fp16' needs float16 kernels, which {self.name} lacks here"

    @classmethod
    @abstractmethod
    def open_device(cls) -> AnyDevice:
        """The device this backend runs on, or :class:`BackendUnavailableError` saying why not."""

    def device(self) -> AnyDevice:
        if self._dev is None:
            raise BackendUnavailableError(self._problem)
        return self._dev

    def availability(self) -> Availability:
        return Availability(self._dev is not None, self._problem)

    def device_info(self) -> DeviceInfo:
        """The device's description plus the precision (calibrations are kept per description)."""
        info = self.device().info()
        return dataclasses.replace(info, details={**info.details, "precision": self.precision})

    @property
    def caps(self) -> Caps:
        return self.device().caps

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        if self._dev is None:
            return ()
        if self.precision == "fp16":
            return offered(half_op(op), half_caps(self._dev.caps))
        return offered(op, self._dev.caps)

    def compile(self, program: Program, *, threads: int | None = None) -> GPUExecutable:
        try:
            return GPUExecutable(self.device(), program, self.precision)
        except Unsupported as exc:
            raise BackendUnavailableError(f"{self.name} cannot run this program: {exc}") from exc

    def time_transfers(self, nbytes: int, repeat: int = 3) -> TransferTiming:
        """Best of ``repeat`` host->device and device->host moves of ``nbytes`` through the same
        path a program's inputs and outputs take."""
        dev = self.device()
        buf = dev.pool.acquire(nbytes)
        rec = dev.record([], [Transfer(buf, nbytes)], [Transfer(buf, nbytes)])
        try:
            src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
            best = (float("inf"), float("inf"))
            for _ in range(repeat):
                t0 = time.perf_counter()
                t = dev.execute(rec, [src], [dst])
                wall = time.perf_counter() - t0
                up = t.upload_s if t.upload_s is not None else wall / 2
                down = t.download_s if t.download_s is not None else wall / 2
                best = (min(best[0], up), min(best[1], down))
        finally:
            dev.forget(rec)
            dev.pool.release([(buf, nbytes)])
        return TransferTiming(nbytes, *best)
