"""The time base the search measures with.

Calibration, measure mode and whole-plan timing read one clock. It is the host's
``time.perf_counter`` unless every backend involved exposes the same device clock through a
``clock()`` method (see :class:`Clocked`): a simulated device advances a virtual clock by the time
its profile says each run takes, so searches against it are deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from walle_core.backend import Backend


class Clock(Protocol):
    """Seconds since an arbitrary origin; ``noiseless`` when two runs of the same work always
    read the same duration (one sample is then enough)."""

    noiseless: bool

    def now(self) -> float: ...


@runtime_checkable
class Clocked(Protocol):
    """A backend whose work is timed on its own clock instead of the host's."""

    def clock(self) -> Clock: ...


@dataclass
class HostClock:
    noiseless: bool = False

    def now(self) -> float:
        return time.perf_counter()


HOST_CLOCK = HostClock()


def clock_for(backends: Iterable[Backend]) -> Clock:
    """The clock that times work spread over ``backends``: their shared device clock when all of
    them have the same one, else the host clock."""
    clocks = [b.clock() if isinstance(b, Clocked) else HOST_CLOCK for b in backends]
    if clocks and all(c is clocks[0] for c in clocks):
        return clocks[0]
    return HOST_CLOCK
