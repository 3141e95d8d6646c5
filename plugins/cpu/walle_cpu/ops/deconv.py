"""The ``conv_transpose2d`` composite on the cpu backend (``deconv.c``): a strided transposed
conv of one group on the blocked layout NCHW16c, every output pixel gathered from its taps and
written once with its bias (and a ReLU / clip), instead of per-phase convs and an interleave.
The layout pass always runs it blocked (:class:`BlockedDeconv`), changing the layout around it
where its neighbours are plain."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.layout import BLK, blocks
from walle_cpu.ops.kernel import Binder, OpKernel, set_act

NAME = "conv_transpose2d"


def _cost(op: A.Op) -> Cost:
    """Multiply-adds of the real taps, with channels padded to whole blocks."""
    x, w = op.inputs[0], op.inputs[1]
    n, c, h, wd = x.shape
    o = w.shape[1]
    kh, kw = w.shape[2:]
    flops = 2.0 * n * h * wd * kh * kw * c * blocks(o) * BLK
    return Cost(flops, op.bytes_moved(), 1, 0.5)


DECONV = Algorithm("nchwc", _cost)


@dataclasses.dataclass(eq=False)
class BlockedDeconv(A.Composite):
    """``conv_transpose2d`` from a blocked input to a blocked output (the logical NCHW shapes in
    ``plain_in``/``plain_out``), with an epilogue activation (ReLU or clip); made only by the
    cpu layout pass (no expansion)."""

    plain_in: tuple[int, int, int, int] = (0, 0, 0, 0)
    plain_out: tuple[int, int, int, int] = (0, 0, 0, 0)
    act: A.Activation = dataclasses.field(default_factory=A.Activation)


def blocked(op: A.Composite, x: A.Tensor, y: A.Tensor, plain_in: tuple[int, int, int, int],
            plain_out: tuple[int, int, int, int]) -> BlockedDeconv:
    return BlockedDeconv([x, *op.inputs[1:]], [y], name=NAME, attrs=op.attrs, plain_in=plain_in,
                         plain_out=plain_out)


def _supported(op: A.Op) -> bool:
    return isinstance(op, A.Composite) and op.name == NAME and len(op.inputs[0].shape) == 4 and \
        all(t.dtype == K.F32 for t in (*op.inputs, op.out)) and \
        all(t.value is not None for t in op.inputs[1:])


def pack(w: np.ndarray) -> np.ndarray:
    """(C, O, KH, KW) -> (ob, kh, kw, cb, 16 ci, 16 co), zero padding channels."""
    c, o, kh, kw = w.shape
    full = np.zeros((blocks(c) * BLK, blocks(o) * BLK, kh, kw), np.float32)
    full[:c, :o] = w
    full = full.reshape(blocks(c), BLK, blocks(o), BLK, kh, kw)
    return np.ascontiguousarray(full.transpose(2, 4, 5, 0, 1, 3))


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    if not isinstance(op, BlockedDeconv):
        raise TypeError("conv_transpose2d runs only on blocked tensors (the cpu layout pass places it)")
    d.kind = LIB.WL_DECONV
    d.dtype = K.DTYPES[K.F32]
    b.bind(d, op, [op.inputs[0]])
    w = np.asarray(op.inputs[1].value, np.float32)
    p = d.conv
    p.n, p.c, p.h, p.w = op.plain_in
    _, p.o, p.oh, p.ow = op.plain_out
    p.kh, p.kw = w.shape[2], w.shape[3]
    p.stride_h, p.stride_w = op.attrs["strides"]  # type: ignore[misc]
    p.pad_top, p.pad_left = op.attrs["pads"]  # type: ignore[misc]
    p.dilation_h = p.dilation_w = p.groups = 1
    p.has_bias = int(len(op.inputs) > 2)
    set_act(p.act, op.act)
    bias = np.zeros(blocks(p.o) * BLK, np.float32)
    if len(op.inputs) > 2:
        bias[:p.o] = np.asarray(op.inputs[2].value, np.float32).reshape(-1)
    d.aux = b.aux(pack(w))
    d.aux2 = b.aux(bias)


def _algorithms(op: A.Op) -> tuple[Algorithm, ...]:
    return (DECONV,)


KERNEL = OpKernel((A.Composite,), _supported, _encode, _algorithms)
