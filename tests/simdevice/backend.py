"""Simulated backends: real results from the engine's numpy interpreter, times from a profile.

Each :class:`~tests.simdevice.profile.Device` of a profile becomes a backend class that a test
registers through the plugin registry (``Registry.register``), as a notebook would. Every run of
a compiled program advances the profile's :class:`VirtualClock` by the time the profile gives it;
the search reads that clock (``Backend.clock()``, see ``walle_core.search.clock``) for calibration,
measure mode and whole-plan timing, so searches against a simulated device are deterministic.
Executables also report each launch's kernel time, as device timers would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from tests.simdevice.profile import Device, Profile
from walle_core import atomic as A
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program
from walle_core.interpreter import KERNELS, Interpreter


class VirtualClock:
    """Seconds of simulated device time; only simulated runs move it."""

    noiseless = True

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def _flat(ops: Sequence[tuple[A.Op, Algorithm]]) -> list[tuple[A.Op, Algorithm]]:
    """Composites the device claims run as one kernel; numerically, through their expansion."""
    out: list[tuple[A.Op, Algorithm]] = []
    for op, alg in ops:
        if isinstance(op, A.Composite):
            out.extend(_flat([(inner, alg) for inner in op.expansion]))
        else:
            out.append((op, alg))
    return out


class SimExecutable(Executable):
    def __init__(self, program: Program, device: Device, clock: VirtualClock) -> None:
        flat = Program(_flat(program.ops), program.inputs, program.outputs, program.offsets,
                       program.arena_bytes)
        self.numerics = Interpreter(flat)
        self.seconds, self.kernels = device.program_seconds(
            [op for op, _ in program.ops], program.inputs, program.outputs)
        self.names = [op.kind.value for op, _ in program.ops]
        self.clock = clock

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        results = self.numerics.run(inputs)
        self.clock.advance(self.seconds)
        return results

    def last_timings(self) -> list[tuple[str, float]]:
        return list(zip(self.names, self.kernels, strict=True))


class SimBackend(Backend):
    """Base of the generated classes; ``device`` and ``_clock`` are set per profile device."""

    device: Device
    _clock: VirtualClock
    profile_name: str

    def availability(self) -> Availability:
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(name=f"simulated {self.device.kind} ({self.profile_name} profile)",
                          kind=self.device.kind, details={"profile": self.profile_name})

    def clock(self) -> VirtualClock:
        return self._clock

    def claims(self, composite: str) -> bool:
        return composite in self.device.claims

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        if isinstance(op, A.Composite):
            return (Algorithm("fused"),) if op.name in self.device.claims else ()
        return (Algorithm("kernel"),) if op.kind in KERNELS else ()

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        return SimExecutable(program, self.device, self._clock)


def sim_backends(profile: Profile) -> list[type[SimBackend]]:
    """One backend class per device of ``profile``, sharing one virtual clock."""
    clock = VirtualClock()
    classes: list[type[SimBackend]] = []
    for device in profile.devices:
        cls = type(f"Sim_{device.backend}", (SimBackend,), {
            "name": device.backend, "version": f"sim-{profile.name}", "device": device,
            "_clock": clock, "profile_name": profile.name})
        classes.append(cls)
    return classes
