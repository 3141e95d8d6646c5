"""How busy the machine was while a benchmark ran (Linux ``/proc``; standard library only).

Worker-scaling figures mean little without the load they were measured under: on a shared
2-core machine another process using one core caps any 1-vs-2-worker ratio near 1. The
benchmarks therefore record, for every timed phase, how many cores *other* processes kept busy
(all CPU time on the cores this process may use, minus this process's own CPU time). The
subinterpreter benchmark loads this file by path into a Python without numpy.
"""

from __future__ import annotations

import os
import time
from typing import Any


def cpus() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0))


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _busy_ticks(cores: list[int]) -> int | None:
    """Busy clock ticks (everything but idle and iowait) summed over ``cores``."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name in wanted:
            f = [int(v) for v in rest.split()]
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            total += f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
    return total


class LoadMeter:
    """Measures one timed window: wall time, this process's CPU, other processes' busy cores."""

    def __init__(self) -> None:
        self.cores = cpus()
        self._hz = os.sysconf("SC_CLK_TCK")
        self.wall_s = self.own_cores = 0.0
        self.others_cores: float | None = None

    def __enter__(self) -> LoadMeter:
        self._ticks = _busy_ticks(self.cores)
        self._cpu = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        own = time.process_time() - self._cpu
        ticks = _busy_ticks(self.cores)
        self.own_cores = own / self.wall_s if self.wall_s else 0.0
        if ticks is not None and self._ticks is not None and self.wall_s:
            # Tick counters are coarse (1/HZ per core): clamp the rounding below zero away.
            self.others_cores = max(0.0, (ticks - self._ticks) / self._hz - own) / self.wall_s


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value (rounded), for reporting repeated measurements."""
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"median": round(median, 3), "min": round(ordered[0], 3), "max": round(ordered[-1], 3),
            "all": [round(v, 3) for v in values]}
