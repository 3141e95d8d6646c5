"""Activation ranges for post-training quantization: min/max, percentile and entropy (KL).

A :class:`RangeObserver` sees every calibration batch of every observed tensor. ``minmax`` needs
one pass; ``percentile`` and ``entropy`` need a second pass that fills a histogram over the
range the first pass found (:meth:`RangeObserver.needs_histograms`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from walle_core.errors import WalleError

METHODS = ("minmax", "percentile", "entropy")
BINS = 2048
PERCENTILE = 99.999
LEVELS = 128  # quantisation levels of one sign (uint8 activations: 256 over both)


class CalibrationError(WalleError):
    """Calibration cannot proceed (unknown method, no data, a tensor never seen)."""


@dataclass
class _Stats:
    lo: float = np.inf
    hi: float = -np.inf
    hist: np.ndarray | None = None  # histogram of |x| over [0, max(|lo|, |hi|)]


@dataclass
class RangeObserver:
    method: str = "minmax"
    stats: dict[str, _Stats] = field(default_factory=dict)
    histograms: bool = False  # second pass running

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"unknown calibration method {self.method!r}; use one of {METHODS}")

    @property
    def needs_histograms(self) -> bool:
        return self.method != "minmax"

    def start_histograms(self) -> None:
        self.histograms = True
        for s in self.stats.values():
            s.hist = np.zeros(BINS, np.float64)

    def observe(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        if x.size == 0:
            return
        s = self.stats.setdefault(name, _Stats())
        if not self.histograms:
            s.lo = min(s.lo, float(np.nanmin(x)))
            s.hi = max(s.hi, float(np.nanmax(x)))
            return
        top = max(abs(s.lo), abs(s.hi))
        if s.hist is not None and top > 0:
            h, _ = np.histogram(np.abs(x), bins=BINS, range=(0.0, top))
            s.hist += h

    def range(self, name: str) -> tuple[float, float]:
        """The calibrated (lo, hi), always containing 0 (so that 0 is exact)."""
        s = self.stats.get(name)
        if s is None or not np.isfinite(s.lo):
            raise CalibrationError(f"tensor {name!r} was never observed during calibration")
        lo, hi = min(s.lo, 0.0), max(s.hi, 0.0)
        if self.method == "minmax" or s.hist is None or s.hist.sum() == 0:
            return lo, hi
        top = max(abs(s.lo), abs(s.hi))
        width = top / BINS
        if self.method == "percentile":
            cdf = np.cumsum(s.hist) / s.hist.sum()
            t = (int(np.searchsorted(cdf, PERCENTILE / 100.0)) + 1) * width
        else:
            t = _entropy_threshold(s.hist) * width
        return max(lo, -t), min(hi, t)


def _entropy_threshold(hist: np.ndarray) -> int:
    """The bin count whose clipped distribution, quantized to LEVELS levels, loses the least
    information (KL divergence; TensorRT's calibration)."""
    best, best_kl = len(hist), np.inf
    total = hist.sum()
    for i in range(LEVELS, len(hist) + 1, 16):
        clipped = hist[:i].astype(np.float64)
        p = clipped.copy()
        p[-1] += hist[i:].sum()  # the reference keeps the clipped mass at the edge ...
        nonzero = clipped > 0
        # ... the candidate merges the i bins into LEVELS levels (without it), then spreads each
        # level evenly over its nonzero bins
        edges = np.linspace(0, i, LEVELS + 1).astype(int)
        q = np.zeros(i, np.float64)
        for a, b in itertools.pairwise(edges):
            nz = nonzero[a:b]
            count = nz.sum()
            if count:
                q[a:b][nz] = clipped[a:b].sum() / count
        pn, qn = p / total, q / max(q.sum(), 1e-30)
        mask = (pn > 0) & (qn > 0)
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask])))
        if np.any((pn > 0) & (qn == 0)):
            kl = np.inf
        if kl < best_kl:
            best, best_kl = i, kl
    return best


def uint8_params(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """Asymmetric uint8 (scale, zero point) for [lo, hi] (which contains 0)."""
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zero = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zero


def int8_weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales (zero point 0): one for the tensor, or one per slice of ``axis``."""
    a = np.abs(w.astype(np.float32))
    top = a.max() if axis is None else a.max(axis=tuple(i for i in range(w.ndim) if i != axis))
    top = np.where(np.asarray(top) > 0, top, 1.0)
    return (np.asarray(top, np.float32) / np.float32(127.0)).astype(np.float32)
