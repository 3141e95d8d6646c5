"""Raster ops that move whole 16-channel blocks (or runs of lanes), rewritten to run on blocked tensors.

A channel concat, a stride-2 interleave (ConvTranspose's phases), a spatial slice, a pad
(spatial, or of whole channel blocks: a residual widened with zero channels) or a nearest
upsampling (one region per pixel phase) of NCHW tensors moves every channel the same way,
shifted by a whole number of blocks, and fills the rest with one value. Such a raster runs on the NCHW16c tensors directly as copies of 16-float pixel vectors, so a run of blocked
convs does not leave the blocked layout around it. The test is exact: the raster is evaluated
on index codes and the element map is checked, not guessed from the regions' shapes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from walle_core import atomic as A

BLK = 16
_SHIFT = 40  # index code: input number << _SHIFT | flat element index


def _element_map(op: A.Raster) -> np.ndarray | None:
    """For every output element its source code, -1 where ``fill`` is written; None when some
    element is left undefined (no fill)."""
    out = np.full(op.out.size, -1, np.int64)
    for r in op.regions:
        src = op.inputs[r.src]
        codes = (np.int64(r.src) << _SHIFT) | np.arange(src.size, dtype=np.int64)
        view = as_strided(codes[r.src_offset:], r.size, [s * 8 for s in r.src_strides])
        dst = as_strided(out[r.dst_offset:], r.size, [s * 8 for s in r.dst_strides])
        dst[...] = view
    return None if op.fill is None and (out < 0).any() else out


def _lattice(vals: np.ndarray) -> tuple[int, int, int] | None:
    """(start, step, count) when the sorted distinct values form an arithmetic progression."""
    u = np.unique(vals)
    if u.size == 1:
        return int(u[0]), 1, 1
    step = int(u[1] - u[0])
    if not (np.diff(u) == step).all():
        return None
    return int(u[0]), step, int(u.size)


def blocked_regions(op: A.Raster, plains: Sequence[tuple[int, int, int, int]]
                    ) -> list[A.Region] | None:
    """Regions over blocked tensors (inputs and output NCHW16c, ``plains`` the inputs' NCHW
    shapes) doing what ``op`` does, or None when ``op`` does not move runs of channels.

    Each output block's lanes split into runs of adjacent channels that move alike (the same
    source, pixel map and channel shift, within one source block): a whole block when the
    shift is a whole number of blocks (one 16-float vector per pixel), else shorter runs (a
    concat of 8 + 8 channels: lanes 0-7 from one input, 8-15 from the other). Runs shorter
    than ``_MIN_RUN`` lanes (a channel shuffle's single lanes) are not taken."""
    if len(op.out.shape) != 4 or len(plains) != len(op.inputs):
        return None
    codes = _element_map(op)
    if codes is None:
        return None
    return regions_from_codes(codes, op.out.shape, plains)


def regions_from_codes(codes: np.ndarray, shape: Sequence[int], plains: Sequence[tuple[int, int, int, int]]
                       ) -> list[A.Region] | None:
    """:func:`blocked_regions` of a raster given by its element map (``codes``: per output
    element its input << _SHIFT | flat index, -1 for the fill) over the NCHW ``shape``."""
    n, c, h, w = shape
    k = (codes >> _SHIFT).reshape(n, c, h, w)
    flat = (codes & ((1 << _SHIFT) - 1)).reshape(n, c, h, w)
    cb_out = -(-c // BLK)
    # source coordinates, per input shape (0 where the fill is written: k == -1)
    sn, sc, sy, sx = (np.zeros_like(flat) for _ in range(4))
    for i, (_, pc, ph, pw) in enumerate(plains):
        m = k == i
        f = flat[m]
        sn[m], sc[m], sy[m], sx[m] = f // (pc * ph * pw), f // (ph * pw) % pc, f // pw % ph, f % pw
    chan = np.arange(c).reshape(1, c, 1, 1)
    delta = np.where(k < 0, 0, sc - chan)
    runs = _lane_runs(k, sn, sy, sx, delta, c)
    if runs is None:
        return None
    regions: list[A.Region] = []
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for img in range(n):
        for cb in range(cb_out):
            for ch, lanes in runs[cb]:
                kk, dd = k[img, ch], delta[img, ch]
                for src in np.unique(kk):
                    if src < 0:
                        continue  # filled pixels: the raster's fill writes them
                    _, pc, ph, pw = plains[int(src)]
                    m = kk == src
                    lane = np.unique(((ch + dd) % BLK)[m])
                    if lane.size != 1 or int(lane[0]) + lanes > BLK:
                        return None
                    # source pixel of every output pixel (block index times the plane, plus y, x)
                    spix = (sn[img, ch] * (-(-pc // BLK)) + (ch + dd) // BLK) * ph * pw + sy[img, ch] * pw + sx[img, ch]
                    for step_y, step_x in _PHASES:
                        got = _phase_regions(m, ys, xs, spix, step_y, step_x)
                        if got is not None:
                            break
                    else:
                        return None
                    dbase = (img * cb_out + cb) * h * w
                    for y0, sy_, ny, x0, sx_, nx, base, si, sj in got:
                        regions.append(A.Region(int(src), base * BLK + int(lane[0]), (si * BLK, sj * BLK, 1),
                                                (dbase + y0 * w + x0) * BLK + ch % BLK,
                                                (sy_ * w * BLK, sx_ * BLK, 1), (ny, nx, lanes)))
    return regions if math.prod(shape) else None


@dataclasses.dataclass
class Moved:
    """A raster as its element map: ``inputs`` and per output element its ``codes``."""

    inputs: list[A.Tensor]
    codes: np.ndarray


def element_map(op: A.Raster) -> Moved | None:
    codes = _element_map(op)
    return None if codes is None else Moved(list(op.inputs), codes)


def compose(op: Moved, producers: dict[int, Moved]) -> Moved:
    """``op`` reading, for every input in ``producers``, that raster's inputs directly (one
    pass where the two moved the data twice: a slice then an upsampling then a concat).
    A producer that writes a fill is not composed (its input stays)."""
    src, flat = op.codes >> _SHIFT, op.codes & ((1 << _SHIFT) - 1)
    inputs: list[A.Tensor] = []
    index: dict[int, int] = {}

    def slot(t: A.Tensor) -> int:
        if t.id not in index:
            index[t.id] = len(inputs)
            inputs.append(t)
        return index[t.id]

    out = np.full_like(op.codes, -1)
    for i, t in enumerate(op.inputs):
        m = src == i
        inner = producers.get(t.id)
        if inner is None or (inner.codes < 0).any():
            out[m] = (np.int64(slot(t)) << _SHIFT) | flat[m]
            continue
        got = inner.codes[flat[m]]
        remap = np.array([slot(u) for u in inner.inputs], np.int64)
        out[m] = (remap[got >> _SHIFT] << _SHIFT) | (got & ((1 << _SHIFT) - 1))
    return Moved(inputs, out)


_MIN_RUN = 4  # lanes: shorter runs copy a few floats per pixel and region (a shuffle: one)


def _lane_runs(k: np.ndarray, sn: np.ndarray, sy: np.ndarray, sx: np.ndarray, delta: np.ndarray,
               c: int) -> list[list[tuple[int, int]]] | None:
    """Per output block, its runs as (first channel, lanes copied): adjacent channels whose
    source, pixel maps and channel shift agree at every pixel, cut where a block starts on
    either side; a run that ends the real channels with its source lane equal to its own lane
    copies the whole rest of the block (the padding lanes' values never matter)."""
    joins = np.ones(c, bool)
    for arr in (k, sn, sy, sx, delta):
        joins[1:] &= (arr[:, 1:] == arr[:, :-1]).all(axis=(0, 2, 3))
    chan = np.arange(c)
    joins[chan % BLK == 0] = False
    src_lane0 = ((chan.reshape(1, c, 1, 1) + delta) % BLK == 0) & (k >= 0)
    joins &= ~src_lane0.any(axis=(0, 2, 3))
    starts = [int(i) for i in np.flatnonzero(~joins)] + [c]
    out: list[list[tuple[int, int]]] = [[] for _ in range(-(-c // BLK))]
    for a, b in itertools.pairwise(starts):
        real = min(c, (a // BLK + 1) * BLK) - a // BLK * BLK  # real lanes of the block
        if b - a < min(_MIN_RUN, real):
            return None
        lanes = b - a
        aligned = (np.where(k[:, a] < 0, a, a + delta[:, a]) % BLK == a % BLK).all()
        if b == c and aligned:
            lanes = BLK - a % BLK
        out[a // BLK].append((a, lanes))
    return out


# Pixel phases tried, fewest first: (1, 1) is the whole set as one lattice (a concat, slice,
# pad or interleave); (2, 2) splits it by (y % 2, x % 2) (nearest 2x upsampling, whose source
# pixel is y // 2, x // 2: linear on each phase's lattice, not on the whole set); up to 8 (an
# FPN's deepest map upsampled 8x to the finest; a plain upsampling between two layout changes
# cost three passes).
_STEPS = (1, 2, 3, 4, 8)
_PHASES = sorted(((a, c) for a in _STEPS for c in _STEPS), key=lambda t: (t[0] * t[1], t))


def _phase_regions(m: np.ndarray, ys: np.ndarray, xs: np.ndarray, spix: np.ndarray, step_y: int,
                   step_x: int) -> list[tuple[int, ...]] | None:
    """The output pixels ``m`` split by (y % step_y, x % step_x) into lattices whose source
    pixel is linear in the lattice indices, as (y0, y step, ny, x0, x step, nx, source pixel at
    (y0, x0), its step per lattice row, per lattice column); None when some part is not."""
    out: list[tuple[int, ...]] = []
    for py in range(step_y):
        for px in range(step_x):
            part = m & (ys % step_y == py) & (xs % step_x == px)
            if not part.any():
                continue
            py_, px_, sp = ys[part], xs[part], spix[part]
            ly, lx = _lattice(py_), _lattice(px_)
            if ly is None or lx is None or ly[2] * lx[2] != int(part.sum()):
                return None
            i_idx = (py_ - ly[0]) // ly[1]
            j_idx = (px_ - lx[0]) // lx[1]
            base = int(sp[(i_idx == 0) & (j_idx == 0)][0])
            si = int(sp[(i_idx == 1) & (j_idx == 0)][0]) - base if ly[2] > 1 else 0
            sj = int(sp[(i_idx == 0) & (j_idx == 1)][0]) - base if lx[2] > 1 else 0
            if not (sp == base + i_idx * si + j_idx * sj).all():
                return None
            out.append((ly[0], ly[1], ly[2], lx[0], lx[1], lx[2], base, si, sj))
    return out
