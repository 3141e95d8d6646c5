"""Conv2D on the cpu backend (``conv.c`` picks the kernel): the algorithms offered for a conv
with their modelled costs, and the descriptor of each (weights prepared here when an algorithm
wants them transformed: Winograd's, or packed into blocks for the blocked layout)."""

from __future__ import annotations

from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_core.plan.rewrite.fused import ConvRes
from walle_cpu import codes as K
from walle_cpu import layout
from walle_cpu._native import FFI, LIB
from walle_cpu.ops.kernel import Binder, OpKernel, set_act

# algorithm name -> its enum wl_conv_algo constant
_CODES = {"im2col+gemm": "C_IM2COL", "1x1-gemm": "C_1X1", "depthwise-direct": "C_DEPTHWISE",
          "winograd-f23": "C_WINOGRAD", layout.NCHWC: "C_NCHWC"}


def _supported(op: A.Op) -> bool:
    assert isinstance(op, A.Conv2D)
    return all(t.dtype == K.F32 for t in (*op.inputs, op.out)) and op.act.fn in K.FLOAT_UNARY \
        and len(op.inputs[0].shape) == 4


def conv_algorithms(op: A.Conv2D) -> list[str]:
    x, w = op.inputs[0], op.inputs[1]
    c = x.shape[1]
    o, cg, kh, kw = w.shape
    algos = ["im2col+gemm"]
    if op.groups == c == o and cg == 1:
        algos.append("depthwise-direct")
    if kh == kw == 1 and op.strides == (1, 1) and op.pads == (0, 0, 0, 0):
        algos.append("1x1-gemm")
    if (kh, kw) == (3, 3) and op.strides == (1, 1) and op.dilations == (1, 1) and op.groups == 1 \
            and w.value is not None:
        algos.append("winograd-f23")
    if layout.offers_blocked(op):
        algos.append(layout.NCHWC)
    return algos


def plain_algorithm(op: A.Conv2D) -> Algorithm:
    """The NCHW algorithm a conv runs with when its blocked one does not pay."""
    offered = conv_algorithms(op)
    name = next(n for n in ("1x1-gemm", "depthwise-direct", "im2col+gemm") if n in offered)
    return Algorithm(name)


# --------------------------------------------------------------------------- costs


def _im2col_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    _o, cg, kh, kw = op.inputs[1].shape
    cols = cg * kh * kw * op.out.shape[2] * op.out.shape[3] * op.out.shape[0] * op.groups * 4
    # One GEMM per group: a short reduction (cg*kh*kw) or few rows per group (o/groups) leave
    # the register tiles mostly empty, so efficiency falls with both.
    og = op.out.shape[1] // op.groups
    eff = 0.6 * min(1.0, cg * kh * kw / 64) * min(1.0, og / 8)
    return Cost(op.flops(), op.bytes_moved() + 2 * cols, 1, max(eff, 0.01))


def _winograd_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    c, o = op.inputs[0].shape[1], op.out.shape[1]
    # 2.25x fewer multiplies, but the transforms are scalar gathers/scatters over 16 planes and
    # the 16 GEMMs are short: measured on AVX-512 (2 threads) it runs 3-10x slower than
    # im2col+gemm on every 3x3 shape of the test models (ResNet-18, U-Net), so its modelled
    # efficiency is that low; it stays an algorithm for the search's measure mode.
    eff = 0.05 if min(c, o) >= 32 else 0.02
    return Cost(op.flops() / 2.25, op.bytes_moved() * 3, 1, eff)


def _depthwise_cost(op: A.Op) -> Cost:
    return Cost(op.flops(), op.bytes_moved(), 1, 0.5)


def _one_by_one_cost(op: A.Op) -> Cost:
    # measured (AVX-512, 2 threads) at ~0.6x the blocked kernel's rate on the same convs
    return Cost(op.flops(), op.bytes_moved() * 2, 1, 0.55)


def _blocked_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    # Direct conv over 16-channel vectors (no packing pass); depthwise is bandwidth-bound.
    # Output channels are computed in whole blocks: 8 outputs cost what 16 do. (Input padding
    # costs nothing: the kernels stop at the real channel count.)
    o = op.out.shape[1]
    padded = layout.blocks(o) * layout.BLK / max(o, 1)
    eff = 0.64 if layout.is_depthwise(op) else 0.95
    return Cost(op.flops() * padded, layout.blocked_cost_bytes(op), 1, eff)


_COSTS = {
    "im2col+gemm": _im2col_cost,
    "1x1-gemm": _one_by_one_cost,
    "depthwise-direct": _depthwise_cost,
    "winograd-f23": _winograd_cost,
    layout.NCHWC: _blocked_cost,
}


def _algorithms(op: A.Op) -> list[Algorithm]:
    assert isinstance(op, A.Conv2D)
    return [Algorithm(n, _COSTS[n]) for n in conv_algorithms(op)]


# --------------------------------------------------------------------------- descriptors


def _geometry(p: Any, op: A.Conv2D, plain_in: tuple[int, ...], plain_out: tuple[int, ...]) -> None:
    p.n, p.c, p.h, p.w = plain_in
    p.o, _cg, p.kh, p.kw = op.inputs[1].shape
    _, _, p.oh, p.ow = plain_out
    p.stride_h, p.stride_w = op.strides
    p.pad_top, p.pad_left = op.pads[0], op.pads[1]
    p.dilation_h, p.dilation_w = op.dilations
    p.groups = op.groups
    set_act(p.act, op.act)


def _encode_blocked(d: Any, op: layout.BlockedConv, b: Binder) -> None:
    p = d.conv
    _geometry(p, op, op.plain_in, op.plain_out)
    p.has_bias = 1  # aux2: the bias padded to whole blocks (zeros when the conv has none)
    if op.residual:
        p.residual = len(op.inputs) - 1
    p.blocked_input = int(op.blocked_input)
    wv = np.asarray(op.inputs[1].value, dtype=np.float32)
    if op.groups > 1:  # blocked convs are depthwise or have one group
        packed = layout.pack_depthwise(wv)
    else:
        p.filter_blocks = fb = int(LIB.wl_nchwc_fb())
        packed = layout.pack_weights(wv, fb, plain_input=not op.blocked_input)
    d.aux = b.aux(packed)
    has_bias = len(op.inputs) - op.residual > 2
    d.aux2 = b.aux(layout.pad_bias(op.inputs[2].value if has_bias else None, p.o))


def _winograd_weights(w: np.ndarray, o: int, c: int) -> np.ndarray:
    wv = np.ascontiguousarray(w, dtype=np.float32)
    u = np.zeros(16 * o * c, np.float32)
    LIB.wl_winograd_weights(FFI.cast("float*", FFI.from_buffer(wv)), o, c,
                            FFI.cast("float*", FFI.from_buffer(u)))
    return u


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Conv2D)
    d.kind = LIB.WL_CONV
    if isinstance(op, layout.BlockedConv):
        d.algo = getattr(LIB, _CODES[layout.NCHWC])
        b.bind(d, op)
        _encode_blocked(d, op, b)
        return
    name = algo.name if algo.name in conv_algorithms(op) else "im2col+gemm"
    d.algo = getattr(LIB, _CODES[name])
    b.bind(d, op)
    p = d.conv
    _geometry(p, op, op.inputs[0].shape, op.out.shape)
    res = isinstance(op, ConvRes)
    p.has_bias = int(len(op.inputs) - res > 2)
    if res:
        b.apart(op.inputs[-1], op.out)
        p.residual = len(op.inputs) - 1
    if name == "winograd-f23":  # offered for constant weights only
        assert op.inputs[1].value is not None
        d.aux = b.aux(_winograd_weights(op.inputs[1].value, p.o, p.c))
        p.packed_nr = int(LIB.wl_gemm_nr())


CONV = OpKernel((A.Conv2D,), _supported, _encode, _algorithms)
