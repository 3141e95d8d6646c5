"""Fitted cost curves: seconds as a function of work, from a sweep of measured sizes.

A GPU (and a many-core CPU) runs small work at a tiny share of its peak: efficiency grows with
occupancy over orders of magnitude, so one throughput per op kind is wrong at one end or the
other. A :class:`Curve` keeps the measured points of a sweep and interpolates in log-log space;
below the smallest size the time stays at the smallest point's (a floor: launch and scheduling
costs dominate there); above the largest it grows linearly at the largest point's throughput.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    points: tuple[tuple[float, float], ...]  # (work, seconds), work strictly increasing

    @classmethod
    def fit(cls, samples: Sequence[tuple[float, float]]) -> Curve:
        """A monotone curve through ``samples``: equal work is averaged, and time never falls as
        work grows (a larger op measured faster than a smaller one is noise)."""
        by_work: dict[float, list[float]] = {}
        for w, t in samples:
            if w > 0 and t > 0 and math.isfinite(w) and math.isfinite(t):
                by_work.setdefault(w, []).append(t)
        if not by_work:
            raise ValueError("a curve needs at least one positive (work, seconds) sample")
        pts: list[tuple[float, float]] = []
        for w in sorted(by_work):
            t = float(np.median(by_work[w]))
            pts.append((w, max(t, pts[-1][1]) if pts else t))
        return cls(tuple(pts))

    def __call__(self, work: float) -> float:
        pts = self.points
        w0, t0 = pts[0]
        if work <= w0:
            return t0
        wn, tn = pts[-1]
        if work >= wn:
            return tn * work / wn
        i = bisect.bisect_right([w for w, _ in pts], work)
        (wa, ta), (wb, tb) = pts[i - 1], pts[i]
        f = (math.log(work) - math.log(wa)) / (math.log(wb) - math.log(wa))
        return math.exp(math.log(ta) + f * (math.log(tb) - math.log(ta)))

    def throughput(self) -> float:
        """Work per second at the largest measured size (the sustained rate)."""
        w, t = self.points[-1]
        return w / t


@dataclass(frozen=True)
class Linear:
    """``latency + bytes / bandwidth``: host<->device copies fitted over several sizes."""

    latency_s: float
    Bps: float

    @classmethod
    def fit(cls, samples: Sequence[tuple[float, float]]) -> Linear:
        """Least squares over (bytes, seconds); latency and bandwidth are kept positive."""
        if len(samples) < 2:
            raise ValueError("a transfer fit needs at least two sizes")
        x = np.array([s for s, _ in samples], float)
        y = np.array([t for _, t in samples], float)
        slope, icept = np.polyfit(x, y, 1)
        if slope <= 0:  # noise swamped the size effect: charge the mean over the largest size
            slope = max(float(y.max()) / float(x.max()), 1e-13)
            icept = 0.0
        return cls(max(float(icept), 0.0), 1.0 / float(slope))

    def __call__(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.Bps
