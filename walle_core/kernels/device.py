"""The device interface a GPU-style backend implements, and nothing more.

The split follows the usual three parts of a GPU runtime: an *allocator* (``allocate``, ``write``,
``read``), a *compiler* (``build``: a :class:`~walle_core.kernels.spec.KernelSpec` rendered to the
device's dialect and compiled, cached by the device) and *programs* (``record`` a run of dispatches
with the transfers around them once; ``execute`` it per run, returning device-clock timings). The
run loop itself (planning, buffers, parameter blocks, the status word, timing bookkeeping) is
:class:`walle_core.kernels.executor.GPUExecutable`, shared by every backend.

Handles are opaque to the executor: ``B`` a device buffer, ``K`` a compiled kernel, ``R`` a recorded
program. Host data crosses as one-dimensional ``uint8`` numpy views (whole-buffer copies through the
buffer protocol, never element by element).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from walle_core.backend import DeviceInfo
from walle_core.kernels.spec import Caps, KernelSpec

B = TypeVar("B")  # device buffer
K = TypeVar("K")  # compiled kernel
R = TypeVar("R")  # recorded program


@dataclass(frozen=True)
class Dispatch(Generic[B, K]):
    """One kernel launch: its buffers in binding order (the parameter block first) and the grid."""

    kernel: K
    buffers: tuple[B, ...]
    groups: tuple[int, int, int]
    local_size: tuple[int, int, int]
    label: str


@dataclass(frozen=True)
class Transfer(Generic[B]):
    """The first ``nbytes`` of a device buffer, moved between host and device on every run."""

    buffer: B
    nbytes: int


@dataclass
class RunTimings:
    """What one run cost on the device.

    ``dispatches``: device-clock seconds of each launch (profiling events, timestamp queries);
    ``span_s``: device-clock seconds from the first launch's start to the last one's end (the
    queued work including the gaps between launches); ``upload_s``/``download_s``: seconds the
    host->device and device->host moves of the run took (device copies plus the host-side copies
    into and out of staging memory). ``None`` where the device cannot tell.
    """

    dispatches: list[tuple[str, float]] = field(default_factory=list)
    span_s: float | None = None
    upload_s: float | None = None
    download_s: float | None = None
    upload_bytes: int = 0
    download_bytes: int = 0


class BufferPool(Generic[B]):
    """Device buffers recycled by power-of-two size class; a buffer lives as long as its device."""

    def __init__(self, allocate: Callable[[int], B]) -> None:
        self.allocate = allocate
        self.free: dict[int, list[B]] = {}
        self.lock = threading.Lock()
        self.allocated = 0
        self.reused = 0

    @staticmethod
    def size_class(nbytes: int) -> int:
        return max(64, 1 << (max(nbytes, 1) - 1).bit_length())

    def acquire(self, nbytes: int) -> B:
        cls = self.size_class(nbytes)
        with self.lock:
            bucket = self.free.get(cls)
            if bucket:
                self.reused += 1
                return bucket.pop()
            self.allocated += 1
        return self.allocate(cls)

    def release(self, held: Sequence[tuple[B, int]]) -> None:
        """Take back buffers with the sizes they were acquired for."""
        with self.lock:
            for buf, nbytes in held:
                self.free.setdefault(self.size_class(nbytes), []).append(buf)


class GPUDevice(ABC, Generic[B, K, R]):
    """A device that runs kernels rendered from the one kernel description."""

    caps: Caps
    half: bool = False  # runs float16 kernels (storage and math): the opt-in precision="fp16"

    def __init__(self) -> None:
        self.pool: BufferPool[B] = BufferPool(self.allocate)

    @abstractmethod
    def info(self) -> DeviceInfo:
        """Name, kind and details of the device for ``walle backends``."""

    # allocator
    @abstractmethod
    def allocate(self, nbytes: int) -> B:
        """A device buffer of at least ``nbytes`` (kept for the device's lifetime by the pool)."""

    def write(self, copies: Sequence[tuple[B, np.ndarray]]) -> None:
        """Copy each host ``uint8`` array to the start of its buffer; returns when done. By
        default a program of uploads only, through the same path as every run's inputs."""
        self._transfer_once([Transfer(b, h.nbytes) for b, h in copies], [], [h for _, h in copies], [])

    def read(self, copies: Sequence[tuple[B, np.ndarray]]) -> None:
        """Fill each host ``uint8`` array from the start of its buffer; returns when done."""
        self._transfer_once([], [Transfer(b, h.nbytes) for b, h in copies], [], [h for _, h in copies])

    def _transfer_once(self, uploads: Sequence[Transfer[B]], downloads: Sequence[Transfer[B]],
                       inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        program = self.record([], uploads, downloads)
        try:
            self.execute(program, inputs, outputs)
        finally:
            self.forget(program)

    # compiler
    @abstractmethod
    def build(self, spec: KernelSpec) -> K:
        """The kernel compiled for this device (cached by ``spec.key``)."""

    # programs
    @abstractmethod
    def record(self, dispatches: Sequence[Dispatch[B, K]], uploads: Sequence[Transfer[B]],
               downloads: Sequence[Transfer[B]]) -> R:
        """Prepare a program once: each run uploads, dispatches in order (each launch sees the
        writes of the ones before it), then downloads."""

    @abstractmethod
    def execute(self, program: R, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> RunTimings:
        """Run a recorded program: ``inputs``/``outputs`` are host ``uint8`` arrays matching its
        uploads/downloads. Several threads may execute different programs at once."""

    def forget(self, program: R) -> None:  # most devices keep nothing per program
        """Release what a recorded program holds on the device (its executable was freed)."""
