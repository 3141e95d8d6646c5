"""Fitted cost curves from a sweep of measured sizes.

A GPU (and a many-core CPU) runs small work at a tiny share of its peak: efficiency grows with
occupancy over orders of magnitude, so one throughput per op kind is wrong at one end or the
other. A :class:`Curve` keeps the measured points of a sweep (throughput over parallel items) and
interpolates in log-log space, flat beyond both ends. The curve rises to a peak and may fall after
it (a CPU's caches overflowing).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Squared log error a falling tail must save before it replaces a rising fit (a factor of
# ~1.5 at one point): noise of 10-30% between neighbouring sizes is not a cache cliff.
FALL_EVIDENCE = math.log(1.5) ** 2


def _rising(logs: Sequence[float]) -> list[float]:
    """The non-decreasing sequence nearest ``logs`` (least squares: pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count] per pooled run of points
    for y in logs:
        blocks.append([y, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    return [total / n for total, n in blocks for _ in range(int(n))]


def _sse(fit: Sequence[float], logs: Sequence[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(fit, logs, strict=True))


@dataclass(frozen=True)
class Curve:
    points: tuple[tuple[float, float], ...]  # (x, y), x strictly increasing

    @classmethod
    def fit(cls, samples: Sequence[tuple[float, float]], *, falls: bool = True) -> Curve:
        """The unimodal curve (non-decreasing, then non-increasing) nearest ``samples`` (x, y)
        in log y, least squares. Equal x is averaged. Throughput rises with parallel work as a
        device fills up, so a point above a later one on the rise is noise, and so may the later
        one be: both are pooled to their geometric mean (pool adjacent violators; a running
        maximum carried every high outlier to all larger sizes). Past its peak it may fall: a
        CPU's working set leaving its caches (a Winograd conv at 400K outputs ran at 30 GFLOP/s
        after 200 at 12K-100K here, and a curve forced to rise pooled that fall into every size:
        the small ones priced 1.6x over). The fall is taken only where it fits better than the
        rise by more than noise would; ``falls=False``: the rising fit only."""
        by_x: dict[float, list[float]] = {}
        for x, y in samples:
            if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y):
                by_x.setdefault(x, []).append(y)
        if not by_x:
            raise ValueError("a curve needs at least one positive sample")
        xs = sorted(by_x)
        logs = [math.log(float(np.median(by_x[x]))) for x in xs]
        best = _rising(logs)
        misfit = _sse(best, logs)
        for peak in range(len(logs) - 1, 0, -1) if falls else ():  # rising up to ``peak``, falling after it
            fall = _rising(logs[peak:][::-1])[::-1]
            trial = _rising(logs[:peak]) + fall
            err = _sse(trial, logs)
            if err < misfit - FALL_EVIDENCE:
                best, misfit = trial, err
        return cls(tuple(zip(xs, (math.exp(y) for y in best), strict=True)))

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
