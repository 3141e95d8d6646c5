"""A recorded device profile and the time it gives a program: the simulated device's physics.

The model is deliberately not the search's own cost model (a curve over work per bucket): a kernel
takes the longer of its arithmetic and its memory traffic at the device's peak rates, scaled by an
occupancy term ``items / (items + half_items)`` over the parallel items it has (output elements),
and never less than ``min_kernel_s``. A program pays its fixed cost, uploads every input, enqueues
its launches (on an asynchronous device the host's launch costs overlap the kernels, as on a GPU
queue; on a synchronous one they add up) and downloads every output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walle_core import atomic as A

PROFILES = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class Link:
    """One direction of host<->device copies."""

    latency_s: float
    Bps: float

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.Bps


@dataclass(frozen=True)
class KernelClass:
    flops_per_s: float  # arithmetic peak this class of kernel reaches when the device is full
    Bps: float  # memory traffic rate when full
    half_items: float  # parallel items at which the kernel reaches half of its peak


@dataclass(frozen=True)
class Device:
    backend: str  # the simulated backend's name
    kind: str  # "gpu" or "cpu", as DeviceInfo.kind
    program_s: float
    launch_s: float
    min_kernel_s: float
    asynchronous: bool
    h2d: Link
    d2h: Link
    kernels: dict[str, KernelClass]
    claims: frozenset[str] = frozenset()

    def kernel_class(self, op: A.Op) -> KernelClass:
        name = op.kind.value
        if isinstance(op, A.Conv2D) and op.groups > 1 and op.inputs[1].shape[1] == 1:
            name = "Conv2D:dw"
        return self.kernels.get(name) or self.kernels["default"]

    def kernel_seconds(self, op: A.Op) -> float:
        k = self.kernel_class(op)
        items = max(sum(t.size for t in op.outputs), 1)
        occupancy = items / (items + k.half_items)
        # A raster touches only what its regions copy, however large its source.
        traffic = 2.0 * op.out.nbytes if isinstance(op, A.Raster) else op.bytes_moved()
        busy = max(op.flops() / k.flops_per_s, traffic / k.Bps) / occupancy
        return max(busy, self.min_kernel_s)

    def program_seconds(self, ops: list[A.Op], inputs: list[A.Tensor], outputs: list[A.Tensor]) -> tuple[float, list[float]]:
        """Seconds of one run of the program, and each launch's kernel seconds."""
        host = self.program_s + sum(self.h2d.seconds(t.nbytes) for t in inputs)
        device_free = host
        kernels = []
        for op in ops:
            host += self.launch_s
            k = self.kernel_seconds(op)
            kernels.append(k)
            start = max(host, device_free) if self.asynchronous else host
            device_free = start + k
            if not self.asynchronous:
                host = device_free
        done = max(host, device_free)
        return done + sum(self.d2h.seconds(t.nbytes) for t in outputs), kernels


@dataclass(frozen=True)
class Profile:
    name: str
    source: str  # where the figures come from
    devices: list[Device] = field(default_factory=list)

    def device(self, backend: str) -> Device:
        return next(d for d in self.devices if d.backend == backend)


def _device(raw: dict[str, Any]) -> Device:
    return Device(
        backend=raw["backend"], kind=raw["kind"], program_s=raw["program_s"], launch_s=raw["launch_s"],
        min_kernel_s=raw["min_kernel_s"], asynchronous=raw["asynchronous"], h2d=Link(**raw["h2d"]),
        d2h=Link(**raw["d2h"]), kernels={k: KernelClass(**v) for k, v in raw["kernels"].items()},
        claims=frozenset(raw.get("claims", ())))


def load_profile(name: str) -> Profile:
    """A profile shipped in ``profiles/<name>.json``."""
    raw = json.loads((PROFILES / f"{name}.json").read_text())
    return Profile(raw["name"], raw["source"], [_device(d) for d in raw["devices"]])
