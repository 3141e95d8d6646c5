"""OpenCL backend plugin on pyopencl: the shared kernel description rendered to OpenCL C.

* device selection: every platform is probed (a broken ICD is skipped, not fatal); a GPU is
  preferred, then an accelerator, then a CPU device; ``WALLE_OPENCL_DEVICE`` (substring of the
  device or platform name) forces one;
* program cache: built programs are kept per kernel digest in memory, and their device binaries
  on disk under ``walle_core.flags.cache_dir()/opencl`` (keyed by device, driver and source);
* buffer pool: device buffers are recycled by size class across executables;
* events: the queue profiles; ``OpenCLExecutable.last_timings()`` gives each launch's seconds
  (the search's calibration and measure mode time whole runs through ``Executable.run``);
* work-group size: each kernel fixes its group shape (``reqd_work_group_size``); algorithms with
  different shapes (tiled vs naive GEMM, implicit-GEMM vs direct conv, work-group vs serial
  reduce) are offered side by side, so the search's measure mode picks per op and keeps the
  winner in its tuning cache.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
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

_TYPE_PREFERENCE = ("GPU", "ACCELERATOR", "CPU")


class OpenCLKernelError(WalleError):
    """A kernel reported bad data (e.g. an out-of-range gather index)."""


def select_device(cl: Any, forced: str = "") -> tuple[Any, Any, list[str]]:
    """(platform, device, notes): skip platforms that fail to enumerate; prefer GPUs."""
    notes: list[str] = []
    found: list[tuple[Any, Any]] = []
    for platform in cl.get_platforms():
        try:
            devices = platform.get_devices()
        except Exception as exc:  # a broken ICD must not hide the working ones
            notes.append(f"skipped platform {platform.name!r}: {exc}")
            continue
        found += [(platform, d) for d in devices]
    if not found:
        raise BackendUnavailableError("no OpenCL device found: install pocl-opencl-icd")
    if forced:
        want = forced.lower()
        for p, d in found:
            if want in d.name.lower() or want in p.name.lower():
                return p, d, notes
        names = ", ".join(d.name.strip() for _, d in found)
        raise BackendUnavailableError(f"WALLE_OPENCL_DEVICE={forced!r} matches none of: {names}")
    for kind in _TYPE_PREFERENCE:
        for p, d in found:
            if d.type & getattr(cl.device_type, kind):
                return p, d, notes
    return found[0][0], found[0][1], notes


class BufferPool:
    """Device buffers recycled by power-of-two size class."""

    def __init__(self, cl: Any, ctx: Any) -> None:
        self.cl, self.ctx = cl, ctx
        self.free: dict[int, list[Any]] = {}
        self.lock = threading.Lock()
        self.allocated = 0
        self.reused = 0

    @staticmethod
    def size_class(nbytes: int) -> int:
        return max(64, 1 << (max(nbytes, 1) - 1).bit_length())

    def acquire(self, nbytes: int) -> Any:
        cls = self.size_class(nbytes)
        with self.lock:
            bucket = self.free.get(cls)
            if bucket:
                self.reused += 1
                return bucket.pop()
            self.allocated += 1
        return self.cl.Buffer(self.ctx, self.cl.mem_flags.READ_WRITE, cls)

    def release(self, buf: Any) -> None:
        with self.lock:
            self.free.setdefault(int(buf.size), []).append(buf)


class _Device:
    """Context, queue, program cache and buffer pool of the chosen device."""

    def __init__(self) -> None:
        import pyopencl as cl

        self.cl = cl
        self.platform, self.device, self.notes = select_device(cl, flags.opencl_device())
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.pool = BufferPool(cl, self.ctx)
        self.programs: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.builds = 0
        self.binary_hits = 0
        types = {"f32", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}
        if "cl_khr_fp64" in self.device.extensions:
            types.add("f64")
        self.caps = Caps(frozenset(types), f64_math=True,
                         max_local=int(self.device.max_work_group_size),
                         local_mem=int(self.device.local_mem_size))
        self.cache = flags.cache_dir() / "opencl"
        self.cache.mkdir(parents=True, exist_ok=True)

    def _binary_path(self, src: str) -> Path:
        d = self.device
        ident = f"{self.platform.name}|{d.name}|{d.version}|{d.driver_version}|{src}"
        return self.cache / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.bin"

    def _build(self, src: str) -> Any:
        cl = self.cl
        path = self._binary_path(src)
        if path.exists():
            try:
                prog = cl.Program(self.ctx, [self.device], [path.read_bytes()]).build()
                self.binary_hits += 1
                return prog
            except Exception:  # stale or foreign binary: rebuild from source
                path.unlink(missing_ok=True)
        with warnings.catch_warnings():  # driver chatter (e.g. "comparison is always false")
            warnings.simplefilter("ignore", cl.CompilerWarning)
            prog = cl.Program(self.ctx, src).build(options=["-cl-std=CL1.2"])
        self.builds += 1
        try:
            (binary,) = prog.get_info(cl.program_info.BINARIES)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(bytes(binary))
            tmp.replace(path)
        except Exception:  # a driver without program binaries: memory cache only
            pass
        return prog

    def kernel(self, spec: KernelSpec) -> Any:
        key = spec.key
        with self.lock:
            prog = self.programs.get(key)
            if prog is None:
                prog = self._build(render(spec, "opencl"))
                self.programs[key] = prog
        return self.cl.Kernel(prog, spec.name)  # a fresh kernel object: its args are its own


def _release_all(pool: BufferPool, bufs: list[Any]) -> None:
    for b in bufs:
        pool.release(b)


class OpenCLExecutable(Executable):
    def __init__(self, dev: _Device, program: Program) -> None:
        cl = dev.cl
        self.dev = dev
        self.program = program
        self.plan = plan_program(program, dev.caps)
        self.lock = threading.Lock()
        self.buffers: dict[int, Any] = {}
        for tid, nbytes in self.plan.sizes.items():
            self.buffers[tid] = dev.pool.acquire(nbytes)
        for tid, t in self.plan.constants.items():
            assert t.value is not None
            data = np.ascontiguousarray(t.value, dtype=t.dtype)
            if data.nbytes:
                cl.enqueue_copy(dev.queue, self.buffers[tid], data)
        self.status = dev.pool.acquire(4)
        self.steps: list[tuple[Any, tuple[int, int, int], tuple[int, int, int], list[Any], str]] = []
        self._params: list[Any] = []
        for la in self.plan.launches:
            kern = dev.kernel(la.spec)
            pbuf = cl.Buffer(dev.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                             hostbuf=np.asarray(la.params or [0], np.int32))
            self._params.append(pbuf)
            args = [pbuf] + [self.status if a == "status" else self.buffers[a.id]  # type: ignore[attr-defined]
                             for a in la.args]
            lsize = la.spec.local_size
            gsize = (la.groups[0] * lsize[0], la.groups[1] * lsize[1], la.groups[2] * lsize[2])
            kern.set_args(*args)
            self.steps.append((kern, gsize, lsize, args, la.label or la.spec.name))
        dev.queue.finish()
        self._events: list[tuple[str, Any]] = []
        pool, bufs = dev.pool, [*self.buffers.values(), self.status]
        weakref.finalize(self, _release_all, pool, bufs)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        cl, q = self.dev.cl, self.dev.queue
        prog = self.program
        if len(inputs) != len(prog.inputs):
            raise WalleError(f"program takes {len(prog.inputs)} inputs, got {len(inputs)}")
        with self.lock:
            if self.plan.uses_status:
                cl.enqueue_copy(q, self.status, np.zeros(1, np.int32))
            for t, arr in zip(prog.inputs, inputs, strict=True):
                data = np.ascontiguousarray(arr, dtype=t.dtype)
                if data.nbytes:
                    cl.enqueue_copy(q, self.buffers[t.id], data)
            events = []
            for kern, gsize, lsize, _args, label in self.steps:
                events.append((label, cl.enqueue_nd_range_kernel(q, kern, gsize, lsize)))
            outs = []
            for t in prog.outputs:
                host = np.empty(t.shape, t.dtype)
                if host.nbytes:
                    cl.enqueue_copy(q, host, self.buffers[t.id])
                outs.append(host)
            q.finish()
            self._events = events
            if self.plan.uses_status:
                flag = np.zeros(1, np.int32)
                cl.enqueue_copy(q, flag, self.status)
                if flag[0]:
                    raise OpenCLKernelError("index out of range in gather/scatter")
        return outs

    def last_timings(self) -> list[tuple[str, float]]:
        """Seconds each launch of the last run took on the device (profiling events)."""
        return [(label, (ev.profile.end - ev.profile.start) * 1e-9) for label, ev in self._events]


def _probe() -> tuple[_Device | None, str]:
    try:
        import pyopencl  # noqa: F401
    except ImportError:
        return None, "pyopencl is not installed: pip install 'walle[opencl]'"
    try:
        return _Device(), ""
    except BackendUnavailableError as exc:
        return None, str(exc)
    except Exception as exc:  # pyopencl raises LogicError/RuntimeError when no ICD is present
        return None, f"no OpenCL platform found ({exc}): install pocl-opencl-icd"


class OpenCLBackend(Backend):
    name = "opencl"
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
        d, cl = self._dev.device, self._dev.cl
        return DeviceInfo(
            name=d.name.strip(),
            kind="gpu" if d.type & cl.device_type.GPU else "cpu",
            details={"platform": self._dev.platform.name.strip(), "version": d.version.strip(),
                     "compute_units": str(d.max_compute_units),
                     "fp64": str("f64" in self._dev.caps.types).lower()},
        )

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
            return OpenCLExecutable(self._dev, program)
        except Unsupported as exc:
            raise BackendUnavailableError(f"opencl cannot run this program: {exc}") from exc


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [OpenCLBackend]
