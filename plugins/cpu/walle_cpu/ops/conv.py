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
          "winograd-f23": "C_WINOGRAD", layout.NCHWC: "C_NCHWC",
          layout.WINOGRAD_NCHWC: "C_WINOGRAD_NCHWC"}

# Winograd F(m x m, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A over (m + 2)^2 points; m = 4 with
# points 0, 1, -1, 2, -2 and infinity, m = 2 with 0, 1, -1 and infinity. The cpu kernels apply
# B^T and A^T (isa/winograd.inc); G is applied here, once, to the weights.
_WINO_G = {4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
           2: np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]])}


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
        if winograd_blocked_fits(op):
            algos.append(layout.WINOGRAD_NCHWC)
    return algos


def winograd_blocked_fits(op: A.Conv2D) -> bool:
    """3x3, stride 1, dilation 1, one group, constant weights (``offers_blocked``), and at
    least one whole block of input channels: on fewer (a stem's 3 to 12) the transforms of 16
    lanes outweigh the products saved, and where such a conv won on its own cost by a little it
    drew the narrow convs after it into the blocked layout (yolox's stem: +87 us on 1 ms)."""
    w = op.inputs[1].shape
    channels = w[1]  # (a blocked conv's input is 5-D: its weights give the channels)
    return (w[2], w[3]) == (3, 3) and op.strides == (1, 1) and op.dilations == (1, 1) \
        and op.groups == 1 and channels >= layout.BLK


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
    if layout.is_blockdiag(op):  # dense 16 x 16 blocks, one filter block a register tile
        return Cost(op.flops() * padded * layout.BLK / op.inputs[1].shape[1],
                    layout.blocked_cost_bytes(op), 1, 0.6)
    eff = 0.64 if layout.is_depthwise(op) else 0.95
    return Cost(op.flops() * padded, layout.blocked_cost_bytes(op), 1, eff)


# Winograd on the blocked layout, in flops of the blocked direct conv's rate (the planner picks
# a backend's algorithm by flops / efficiency alone, so the traffic that decides where it pays
# is priced here as flop-equivalents). Fitted to same-run timings against the direct conv
# (AVX-512, 2 threads; docs/performance.md, "Winograd on the blocked layout"):
# per point of a tile and channel (input and output): both transforms and the traffic of the
# transformed tiles and sums through the L2 cache (24 fits convs timed alone; in a model,
# where other ops' data evict the strips, 40: U-Net's 16-channel 64x64 convs)
WINO_TRANSFORM = 40.0
# per transformed weight, read once per strip of tiles: in a model the other layers' weights
# evict them between runs (a 1-tile 4x4 map of 64 channels ran 20 us against the direct
# conv's 12 us there, 0.7x of it alone); WINO_WEIGHT_FAR more as they grow to WINO_FAR_BYTES,
# beyond the caches (7x7 maps of 512 channels: 3x the direct conv in ResNet-18)
WINO_WEIGHT = 10.0
WINO_WEIGHT_FAR = 20.0
WINO_FAR_BYTES = 16 << 20
WINO_STRIP_BYTES = 512 * 1024  # a strip's transformed tiles and sums (winograd_blocked.c)


def _winograd_tile_cost(op: A.Conv2D, m: int) -> Cost:
    # Products: (m + 2)^2 points per m x m output tile (tiles cover the map rounded up to m)
    # over the real input channels and whole output blocks, on the direct conv's micro-kernel.
    # The transforms are vector adds over tiles that pass through the L2 cache. The transformed
    # weights ((m + 2)^2 / 9 times the direct conv's) are read once per strip of tiles: with few
    # tiles (a 7x7 map) their traffic outweighs the products saved, and the direct conv wins.
    if isinstance(op, layout.BlockedConv):  # (encoding: its tensors are 5-D)
        (n, c, h, w), (_, o, oh, ow) = op.plain_in, op.plain_out
    else:
        (n, c, h, w), (_, o, oh, ow) = op.inputs[0].shape, op.out.shape
    points = (m + 2) ** 2
    tiles = n * -(-oh // m) * -(-ow // m)
    cp, opad = layout.blocks(c) * layout.BLK, layout.blocks(o) * layout.BLK
    per_tile = points * 4 * (cp + opad)
    strips = -(-tiles // min(max(WINO_STRIP_BYTES // per_tile, 24), tiles))
    weights = points * cp * opad
    per_weight = WINO_WEIGHT + WINO_WEIGHT_FAR * min(1.0, 4 * weights / WINO_FAR_BYTES)
    flops = (2.0 * points * tiles * c * opad + WINO_TRANSFORM * points * tiles * (cp + opad)
             + per_weight * weights * strips)
    operands = 4.0 * (n * cp * h * w + n * opad * oh * ow + 9 * c * o)  # layout.blocked_cost_bytes
    nbytes = operands + 2 * per_tile * tiles + 4 * weights * strips
    return Cost(flops, nbytes, 1, 0.95)


def winograd_tile(op: A.Conv2D) -> int:
    """The output tile (4: F(4x4, 3x3), or 2) whose modelled cost is lower: F(2, 3) reads 16
    transformed weights per channel pair instead of 36, which pays on small maps."""
    return min((4, 2), key=lambda m: _winograd_tile_cost(op, m).flops)


def _winograd_blocked_cost(op: A.Op) -> Cost:
    assert isinstance(op, A.Conv2D)
    return _winograd_tile_cost(op, winograd_tile(op))


_COSTS = {
    "im2col+gemm": _im2col_cost,
    "1x1-gemm": _one_by_one_cost,
    "depthwise-direct": _depthwise_cost,
    "winograd-f23": _winograd_cost,
    layout.NCHWC: _blocked_cost,
    layout.WINOGRAD_NCHWC: _winograd_blocked_cost,
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
    if layout.is_blockdiag(op):
        p.filter_blocks, p.blockdiag = 1, 1
        packed = layout.pack_blockdiag(wv)
    elif op.groups > 1:  # the other grouped blocked convs are depthwise
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


def _winograd_blocked_weights(w: Any, fb: int, m: int) -> np.ndarray:
    """(O, C, 3, 3) -> per point of the (m + 2)^2 transformed tile, G g G^T packed as a blocked
    1x1 conv's weights (``layout.pack_weights``): the Winograd kernel's products are such convs."""
    g, gm = np.asarray(w, dtype=np.float64), _WINO_G[m]
    u = np.einsum("ik,ockl,jl->ijoc", gm, g, gm).astype(np.float32)  # (T, T, O, C)
    o, c, t = g.shape[0], g.shape[1], m + 2
    return np.concatenate([layout.pack_weights(u[i, j].reshape(o, c, 1, 1), fb, plain_input=False)
                           for i in range(t) for j in range(t)])


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Conv2D)
    d.kind = LIB.WL_CONV
    if isinstance(op, layout.BlockedConv):
        wino = algo.name == layout.WINOGRAD_NCHWC and op.blocked_input and winograd_blocked_fits(op)
        d.algo = getattr(LIB, _CODES[layout.WINOGRAD_NCHWC if wino else layout.NCHWC])
        b.bind(d, op)
        _encode_blocked(d, op, b)
        if wino:
            d.conv.packed_nr = m = winograd_tile(op)  # the output tile
            d.aux = b.aux(_winograd_blocked_weights(op.inputs[1].value, d.conv.filter_blocks, m))
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
