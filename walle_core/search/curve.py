"""Fitted cost curves from a sweep of measured sizes.

A GPU (and a many-core CPU) runs small work at a tiny share of its peak: efficiency grows with
occupancy over orders of magnitude, so one throughput per op kind is wrong at one end or the
other. A :class:`Curve` keeps the measured points of a sweep (throughput over parallel items) and
interpolates in log-log space, flat beyond both ends.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    points: tuple[tuple[float, float], ...]  # (x, y), x strictly increasing

    @classmethod
    def fit(cls, samples: Sequence[tuple[float, float]]) -> Curve:
        """The non-decreasing curve nearest ``samples`` (x, y) in log y (least squares: the
        pool-adjacent-violators fit). Equal x is averaged; more parallel work never lowers
        throughput, so a point above a later one is noise, and so may the later one be: both
        are pooled to their geometric mean. (Keeping a running maximum instead carried every
        high outlier, a difference of two timings that noise made small, to all larger sizes.)"""
        by_x: dict[float, list[float]] = {}
        for x, y in samples:
            if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y):
                by_x.setdefault(x, []).append(y)
        if not by_x:
            raise ValueError("a curve needs at least one positive sample")
        xs = sorted(by_x)
        blocks: list[list[float]] = []  # [sum of log y, count] per pooled run of points
        for x in xs:
            blocks.append([math.log(float(np.median(by_x[x]))), 1.0])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, n = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += n
        ys = [math.exp(total / n) for total, n in blocks for _ in range(int(n))]
        return cls(tuple(zip(xs, ys, strict=True)))

    def __call__(self, x: float) -> float:
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        i = bisect.bisect_right([p for p, _ in pts], x)
        (xa, ya), (xb, yb) = pts[i - 1], pts[i]
        f = (math.log(x) - math.log(xa)) / (math.log(xb) - math.log(xa))
        return math.exp(math.log(ya) + f * (math.log(yb) - math.log(ya)))


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
