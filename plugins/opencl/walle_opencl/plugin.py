"""OpenCL backend plugin on pyopencl: the :class:`~walle_core.kernels.device.GPUDevice` interface
over one OpenCL device; the run loop is walle_core's shared GPU executor.

* device selection: every platform is probed (a broken ICD is skipped, not fatal); a GPU is
  preferred, then an accelerator, then a CPU device; ``WALLE_OPENCL_DEVICE`` (substring of the
  device or platform name) forces one;
* program cache: built programs are kept per kernel digest in memory, and their device binaries
  on disk under ``walle_core.flags.cache_dir()/opencl`` (keyed by device, driver and source);
* timing: the queue profiles; every run reports each launch's device seconds, its span and the
  upload and download copies' seconds (OpenCL profiling events);
* work-group size: each kernel fixes its group shape (``reqd_work_group_size``);
* subgroups: a device naming ``cl_khr_subgroups`` or ``cl_intel_subgroups``, or an OpenCL 3.0
  device with the ``__opencl_c_subgroups`` feature (2.1/2.2: core), is probed once with a small
  kernel built the way subgroup kernels are built; where it builds and runs, its subgroup width
  goes into ``Caps.subgroup`` and work-group reductions reduce in subgroups. PoCL's CPU device
  names none of these, so there they keep the local-memory tree.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from walle_core import flags
from walle_core.backend import Backend, DeviceInfo
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl
from walle_core.kernels import Caps, KernelSpec, render
from walle_core.kernels.binaries import BinaryCache
from walle_core.kernels.device import Dispatch, GPUDevice, RunTimings, Transfer
from walle_core.kernels.executor import GPUBackend
from walle_core.kernels.lower.common import WG

_TYPE_PREFERENCE = ("GPU", "ACCELERATOR", "CPU")
_STD = "-cl-std=CL1.2"  # every kernel but those using subgroups (see subgroup_stds)
_SUBGROUP_PROBE = """#ifdef cl_khr_subgroups
#pragma OPENCL EXTENSION cl_khr_subgroups : enable
#endif
__kernel void probe(__global int* out) {
  int total = sub_group_reduce_add(1);
  if (get_local_id(0) == 0) { out[0] = (int)get_max_sub_group_size(); out[1] = total; }
}
"""


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


def subgroup_stds(device: Any) -> list[str]:
    """The language versions to try subgroup kernels with, most likely first: OpenCL C 1.2 where
    an extension provides them, else the version they are core in (2.1/2.2's OpenCL C 2.0, or
    3.0 with the ``__opencl_c_subgroups`` feature); none where the device has no subgroups."""
    stds = []
    extensions = device.extensions.split()
    if "cl_khr_subgroups" in extensions or "cl_intel_subgroups" in extensions:
        stds.append("CL1.2")
    major, minor = (int(v) for v in device.version.split()[1].split(".")[:2])  # "OpenCL 3.0 <vendor>"
    if major == 2 and minor >= 1:
        stds.append("CL2.0")
    elif major >= 3:
        try:
            features = {f.name for f in device.opencl_c_features}
        except Exception:  # a binding or driver without the 3.0 queries
            features = set()
        if "__opencl_c_subgroups" in features:
            stds.append("CL3.0")
    return stds


@dataclass
class _Recording:
    steps: list[tuple[Any, tuple[int, ...], tuple[int, int, int], str]]  # kernel, global, local, label
    uploads: Sequence[Transfer[Any]]
    downloads: Sequence[Transfer[Any]]


def _seconds(events: Sequence[Any]) -> float:
    return sum((ev.profile.end - ev.profile.start) * 1e-9 for ev in events)


class OpenCLDevice(GPUDevice[Any, tuple[Any, str], _Recording]):
    """Context, profiling queue and program cache of the chosen device."""

    def __init__(self, cl: Any) -> None:
        super().__init__()
        self.cl = cl
        self.platform, self.device, self.notes = select_device(cl, flags.opencl_device())
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.programs: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.builds = 0
        self.binary_hits = 0
        types = {"f32", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}
        if "cl_khr_fp64" in self.device.extensions:
            types.add("f64")
        self.half = "cl_khr_fp16" in self.device.extensions
        self.subgroup_std, subgroup = self._probe_subgroups()
        self.caps = Caps(frozenset(types), f64_math=True, max_local=int(self.device.max_work_group_size),
                         local_mem=int(self.device.local_mem_size), subgroup=subgroup)
        self.binaries = BinaryCache("opencl", ".bin")

    def _probe_subgroups(self) -> tuple[str, int]:
        """(the -cl-std option subgroup kernels build with, the subgroup width) where a probe
        kernel using them builds and runs right at the reductions' group size, else ("", 0)."""
        cl = self.cl
        local = min(WG, int(self.device.max_work_group_size))
        for std in subgroup_stds(self.device):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", cl.CompilerWarning)
                    prog = cl.Program(self.ctx, _SUBGROUP_PROBE).build(options=[f"-cl-std={std}"])
                out = np.zeros(2, np.int32)
                buf = cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, out.nbytes)
                prog.probe(self.queue, (local,), (local,), buf)
                cl.enqueue_copy(self.queue, out, buf)
                self.queue.finish()
            except Exception:  # the compiler or the runtime disagrees with what the device says
                continue
            width, total = int(out[0]), int(out[1])
            if 0 < width <= local and total == width:
                return f"-cl-std={std}", width
        return "", 0

    def info(self) -> DeviceInfo:
        d = self.device
        return DeviceInfo(
            name=d.name.strip(), kind="gpu" if d.type & self.cl.device_type.GPU else "cpu",
            details={"platform": self.platform.name.strip(), "version": d.version.strip(),
                     "compute_units": str(d.max_compute_units), "fp64": str("f64" in self.caps.types).lower()})

    def allocate(self, nbytes: int) -> Any:
        return self.cl.Buffer(self.ctx, self.cl.mem_flags.READ_WRITE, nbytes)

    def write(self, copies: Sequence[tuple[Any, np.ndarray]]) -> None:
        for buf, host in copies:
            self.cl.enqueue_copy(self.queue, buf, host, is_blocking=False)
        self.queue.finish()

    def read(self, copies: Sequence[tuple[Any, np.ndarray]]) -> None:
        for buf, host in copies:
            self.cl.enqueue_copy(self.queue, host, buf, is_blocking=False)
        self.queue.finish()

    def _compile(self, src: str, std: str = _STD) -> Any:
        cl, d = self.cl, self.device
        built = "" if std == _STD else f"{std}|"  # (kept out of the usual key: old binaries still hit)
        ident = f"{self.platform.name}|{d.name}|{d.version}|{d.driver_version}|{built}{src}"
        binary = self.binaries.get(ident)
        if binary is not None:
            try:
                prog = cl.Program(self.ctx, [d], [binary]).build()
                self.binary_hits += 1
                return prog
            except Exception:  # stale or foreign binary: rebuild from source
                self.binaries.drop(ident)
        with warnings.catch_warnings():  # driver chatter (e.g. "comparison is always false")
            warnings.simplefilter("ignore", cl.CompilerWarning)
            prog = cl.Program(self.ctx, src).build(options=[std])
        self.builds += 1
        try:
            (binary,) = prog.get_info(cl.program_info.BINARIES)
            self.binaries.put(ident, bytes(binary))
        except Exception:  # a driver without program binaries: memory cache only
            pass
        return prog

    def build(self, spec: KernelSpec) -> tuple[Any, str]:
        with self.lock:
            prog = self.programs.get(spec.key)
            if prog is None:
                std = (self.subgroup_std or _STD) if spec.subgroups else _STD
                prog = self.programs[spec.key] = self._compile(render(spec, "opencl"), std)
        return prog, spec.name  # kernels are made per dispatch in record(): each binds its own arguments

    def record(self, dispatches: Sequence[Dispatch[Any, tuple[Any, str]]], uploads: Sequence[Transfer[Any]],
               downloads: Sequence[Transfer[Any]]) -> _Recording:
        steps = []
        for d in dispatches:
            kern = self.cl.Kernel(*d.kernel)
            kern.set_args(*d.buffers)
            gsize = tuple(g * lsz for g, lsz in zip(d.groups, d.local_size, strict=True))
            steps.append((kern, gsize, d.local_size, d.label))
        return _Recording(steps, uploads, downloads)

    def execute(self, program: _Recording, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> RunTimings:
        cl, q = self.cl, self.queue
        ups = [cl.enqueue_copy(q, t.buffer, host, is_blocking=False)
               for t, host in zip(program.uploads, inputs, strict=True) if t.nbytes]
        runs = [(label, cl.enqueue_nd_range_kernel(q, kern, gsize, lsize))
                for kern, gsize, lsize, label in program.steps]
        downs = [cl.enqueue_copy(q, host, t.buffer, is_blocking=False)
                 for t, host in zip(program.downloads, outputs, strict=True) if t.nbytes]
        q.finish()
        span = (runs[-1][1].profile.end - runs[0][1].profile.start) * 1e-9 if runs else 0.0
        return RunTimings([(label, _seconds([ev])) for label, ev in runs], span, _seconds(ups), _seconds(downs),
                          sum(t.nbytes for t in program.uploads), sum(t.nbytes for t in program.downloads))


class OpenCLBackend(GPUBackend):
    name = "opencl"
    version = "1.1"
    no_device_hint = "no OpenCL platform found ({exc}): install pocl-opencl-icd"

    @classmethod
    def open_device(cls) -> OpenCLDevice:
        try:
            import pyopencl
        except ImportError:
            raise BackendUnavailableError("pyopencl is not installed: pip install 'walle[opencl]'") from None
        return OpenCLDevice(pyopencl)


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [OpenCLBackend]
