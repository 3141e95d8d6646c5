"""Load-time folds that remove TFLite operators the IR expresses more directly.

TensorFlow writes "same" padding of strided convolutions as an explicit zero PAD of height and
width followed by a VALID convolution. A conv's own pads cost nothing, while a PAD is a full copy
(a Raster) of the activation: such a PAD is folded into every convolution that reads it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from walle_core.frontend.tflite.convert import Emitter

CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")
VALID = 1  # TFLite Padding enum


def fold_spatial_pads(em: Emitter) -> None:
    """Record in ``em.folded_pads`` each PAD output -> (source tensor, [top, left, bottom,
    right]) that only VALID convolutions read, and skip the PAD."""
    readers: dict[int, list[int]] = defaultdict(list)
    for op in em.sub.operators:
        for t in op.inputs:
            readers[t].append(op.index)
    ops = em.sub.operators
    outputs = set(em.sub.outputs)
    for op in ops:
        if op.name not in ("PAD", "PADV2") or op.index in em.skipped or len(op.inputs) < 2:
            continue
        src, out = op.inputs[0], op.outputs[0]
        pads = em.consts.get(op.inputs[1])
        if pads is None or src < 0 or src in em.consts or out in outputs or len(em.tensor(src).shape) != 4:
            continue
        p = np.asarray(pads.raw, np.int64).reshape(-1, 2)
        if p.shape != (4, 2) or p[0].any() or p[3].any() or (p < 0).any():
            continue
        if op.name == "PADV2" and len(op.inputs) > 2 and not _is_real_zero(em, op.inputs[2]):
            continue
        if not _same_numbers(em, src, out):
            continue
        users = [ops[i] for i in readers[out]]
        if not users or any(u.name not in CONVS or u.inputs[0] != out or (u.options or {}).get("Padding") != VALID
                            or out in u.inputs[1:] for u in users):
            continue
        em.folded_pads[out] = (src, [int(p[1, 0]), int(p[2, 0]), int(p[1, 1]), int(p[2, 1])])
        em.skipped.add(op.index)


def _is_real_zero(em: Emitter, t: int) -> bool:
    c = em.consts.get(t)
    if c is None:
        return False
    zero = c.quant.zero_point[0] if c.quant is not None else 0
    return bool(np.all(np.asarray(c.raw).reshape(-1) == zero))


def _same_numbers(em: Emitter, a: int, b: int) -> bool:
    """The PAD's input and output mean the same reals (same type and quantisation)."""
    if em.tensor(a).dtype != em.tensor(b).dtype or em.is_quantized(a) != em.is_quantized(b):
        return False
    if not em.is_quantized(a):
        return True
    qa, qb = em.quant_of(a), em.quant_of(b)
    return np.array_equal(qa.scale, qb.scale) and np.array_equal(qa.zero_point, qb.zero_point)
