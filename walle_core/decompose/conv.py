"""Convolutions: 2-D -> Conv2D (1-D via a unit axis), other ranks -> im2col Raster + MatMul,
ConvTranspose -> zero-insertion Raster + Conv with the flipped kernel, or (strided 2-D with
constant weights) one Conv per output phase interleaved by a Raster; a strided 2-D one of one
group with constant weights wraps that in a ``conv_transpose2d`` composite (x, w, [bias]; attrs
strides, begin pads, kernel) that a backend may run as one pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, contiguous, strided_regions
from walle_core.decompose.elementwise import req
from walle_core.decompose.movement import compact_regions

Ins = list[A.Tensor | None]


def resolve_pads(
    ctx: NodeContext, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) after applying ``auto_pad``."""
    nd = len(spatial)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise DecomposeError(f"pads must have {2 * nd} values")
        return pads
    if auto == "VALID":
        return [0] * 2 * nd
    begins, ends = [], []
    for i in range(nd):
        out = -(-spatial[i] // strides[i])
        eff = (kernel[i] - 1) * dilations[i] + 1
        total = max(0, (out - 1) * strides[i] + eff - spatial[i])
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def conv_out(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil: bool = False) -> int:
    span = size + p0 + p1 - ((k - 1) * d + 1)
    if span < 0:
        raise DecomposeError("kernel is larger than the padded input")
    return (-(-span // s) if ceil else span // s) + 1


def conv_nd(
    b: Builder, x: A.Tensor, w: A.Tensor, bias: A.Tensor | None, strides: Sequence[int],
    pads: Sequence[int], dilations: Sequence[int], groups: int,
    act: A.Activation = A.Activation(),
) -> A.Tensor:
    nd = len(x.shape) - 2
    if len(w.shape) != nd + 2:
        raise DecomposeError(f"weight rank {len(w.shape)} does not match input rank {len(x.shape)}")
    n, c = x.shape[:2]
    m = w.shape[0]
    if c != w.shape[1] * groups or m % groups:
        raise DecomposeError(f"channels {c} do not match weight {list(w.shape)} with group={groups}")
    if nd == 1:
        y = conv_nd(b, b.reshape(x, (n, c, 1, x.shape[2])), b.reshape(w, (m, w.shape[1], 1, w.shape[2])),
                    bias, (1, strides[0]), (0, pads[0], 0, pads[1]), (1, dilations[0]), groups, act)
        return b.reshape(y, (n, m, y.shape[3]))
    outs = [conv_out(x.shape[2 + i], w.shape[2 + i], strides[i], dilations[i], pads[i], pads[i + nd])
            for i in range(nd)]
    if nd == 2:
        y = b.tensor((n, m, *outs), x.dtype)
        ins = [x, w] + ([bias] if bias is not None else [])
        b.emit(A.Conv2D(ins, [y], strides=(strides[0], strides[1]),
                        pads=(pads[0], pads[1], pads[2], pads[3]),
                        dilations=(dilations[0], dilations[1]), groups=groups, act=act))
        return y
    return conv_im2col(b, x, w, bias, strides, pads, dilations, groups, outs, act)


def conv_im2col(
    b: Builder, x: A.Tensor, w: A.Tensor, bias: A.Tensor | None, strides: Sequence[int],
    pads: Sequence[int], dilations: Sequence[int], groups: int, outs: Sequence[int],
    act: A.Activation,
) -> A.Tensor:
    nd = len(outs)
    n, c = x.shape[:2]
    m = w.shape[0]
    xp = b.pad(x, [0, 0, *pads[:nd]], [0, 0, *pads[nd:]], 0.0) if any(pads) else x
    st = contiguous(xp.shape)
    ks = list(w.shape[2:])
    shape = [n, c, *ks, *outs]
    strides_v = [st[0], st[1]] + [st[2 + i] * dilations[i] for i in range(nd)] + [
        st[2 + i] * strides[i] for i in range(nd)]
    cols = b.strided(xp, shape, strides_v)
    kk = math.prod(ks)
    p = math.prod(outs)
    cg = c // groups
    cols = b.reshape(cols, (n, groups, cg * kk, p))
    cols = b.reshape(b.transpose(cols, (1, 0, 2, 3)), (groups, n, cg * kk, p))
    cols = b.reshape(b.transpose(cols, (0, 2, 1, 3)), (groups, cg * kk, n * p))
    wg = b.reshape(w, (groups, m // groups, cg * kk))
    y = b.matmul(wg, cols)  # (groups, m/g, n*p)
    y = b.transpose(b.reshape(y, (m, n, p)), (1, 0, 2))
    y = b.reshape(y, (n, m, *outs))
    if bias is not None:
        y = b.binary("add", y, b.reshape(bias, (m,) + (1,) * nd))
    if act.fn != "identity":
        y = b.unary(act.fn, y, *act.params)
    return y


@register("Conv")
def conv(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, w = req(ins[0]), req(ins[1], "weight")
    bias = ins[2] if len(ins) > 2 else None
    nd = len(x.shape) - 2
    if nd < 1:
        raise DecomposeError("Conv input needs at least one spatial axis")
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    strides = ctx.attr("strides") or [1] * nd
    dilations = ctx.attr("dilations") or [1] * nd
    pads = resolve_pads(ctx, x.shape[2:], kernel, strides, dilations)
    return [conv_nd(b, x, w, bias, strides, pads, dilations, int(ctx.attr("group", 1)))]


def dilate_input(b: Builder, x: A.Tensor, strides: Sequence[int]) -> A.Tensor:
    """Insert ``stride - 1`` zeros between input pixels (one Raster with a zero fill)."""
    if all(s == 1 for s in strides):
        return x
    nd = len(strides)
    shape = [*x.shape[:2]] + [(d - 1) * s + 1 for d, s in zip(x.shape[2:], strides, strict=True)]
    out = b.tensor(shape, x.dtype)
    dst = contiguous(shape)
    dst = dst[:2] + [dst[2 + i] * strides[i] for i in range(nd)]
    regions = strided_regions(0, 0, contiguous(x.shape), 0, dst, x.shape)
    b.emit(A.Raster([x], [out], regions=regions, fill=0.0))
    return out


@register("ConvTranspose")
def conv_transpose(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, w = req(ins[0]), req(ins[1], "weight")
    bias = ins[2] if len(ins) > 2 else None
    nd = len(x.shape) - 2
    groups = int(ctx.attr("group", 1))
    cin = w.shape[0]
    ks = ctx.attr("kernel_shape") or list(w.shape[2:])
    strides = ctx.attr("strides") or [1] * nd
    dil = ctx.attr("dilations") or [1] * nd
    outpad = ctx.attr("output_padding") or [0] * nd
    in_sp = x.shape[2:]
    out_shape = ctx.attr("output_shape")
    auto = ctx.attr("auto_pad", "NOTSET")
    grow = [0] * nd  # output_shape beyond the natural size: zeros (+ bias) at the end
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-nd:] if out_shape is not None else [d * s for d, s in zip(in_sp, strides, strict=True)]
        pads_b, pads_e = [], []
        for i in range(nd):
            natural = strides[i] * (in_sp[i] - 1) + outpad[i] + ((ks[i] - 1) * dil[i] + 1)
            total = max(natural - target[i], 0)
            grow[i] = target[i] - (natural - total)
            # SAME_UPPER puts the odd pad at the end; SAME_LOWER and NOTSET at the start.
            if auto == "SAME_UPPER":
                pads_b.append(total // 2)
                pads_e.append(total - total // 2)
            else:
                pads_b.append(total - total // 2)
                pads_e.append(total // 2)
        pads = pads_b + pads_e
    elif auto == "VALID":
        pads = [0] * 2 * nd
    else:
        pads = list(ctx.attr("pads") or [0] * 2 * nd)
    if x.shape[1] != cin:
        raise DecomposeError(f"input channels {x.shape[1]} do not match weight {list(w.shape)}")
    if nd == 2 and groups == 1 and any(s > 1 for s in strides) and all(d == 1 for d in dil) and w.value is not None and \
            (bias is None or bias.value is not None) and x.dtype == np.float32 and ks[0] * ks[1] <= _MAX_TAPS \
            and (w.shape[1] >= _MIN_OUT or any(k > st for k, st in zip(ks, strides, strict=True))):
        ins2 = [x, w] if bias is None else [x, w, bias]
        return b.composite("conv_transpose2d", ins2,
                           lambda: _conv_transpose(b, x, w, bias, ks, strides, dil, outpad, pads, grow, groups),
                           strides=tuple(int(v) for v in strides), pads=tuple(int(v) for v in pads[:2]),
                           kernel=tuple(int(v) for v in ks))
    return _conv_transpose(b, x, w, bias, ks, strides, dil, outpad, pads, grow, groups)


# A strided transposed 2-D conv of one group with constant weights is a ``conv_transpose2d``
# composite (a backend may run it as one pass writing every output pixel once) up to this many
# taps; at stride 1 it is an ordinary conv with the flipped kernel.
_MAX_TAPS = 1024
# ... when its kernel overlaps (k > stride: several taps per output, which the sub-pixel
# lowering computes with zeros or as several convs and an interleave) or it has this many output
# channels. A non-overlapping one with fewer (dbnet's 8-to-8 and 8-to-1 2x2 heads) stays the
# sub-pixel lowering: one 1x1 conv whose s*s*o outputs fill whole channel blocks, then a
# depth-to-space; as the composite its narrow output and what follows ran on half-empty (or
# 1/16-full) vectors: dbnet 0.369 -> 0.420 ms same-process.
_MIN_OUT = 16


def _conv_transpose(b: Builder, x: A.Tensor, w: A.Tensor, bias: A.Tensor | None, ks: Sequence[int],
                    strides: Sequence[int], dil: Sequence[int], outpad: Sequence[int], pads: Sequence[int],
                    grow: Sequence[int], groups: int) -> list[A.Tensor]:
    """ConvTranspose as ordinary convs (``pads``: begins then ends, after auto_pad; ``grow``:
    output_shape beyond the natural size)."""
    nd = len(x.shape) - 2
    cin, mg = w.shape[0], w.shape[1]
    # Equivalent direct conv: kernel flipped spatially, in/out channels swapped within groups.
    wv = b.value(w) if w.value is not None else None
    if wv is not None:
        wf = wv.reshape(groups, cin // groups, mg, *ks)
        wf = np.swapaxes(wf, 1, 2).reshape(groups * mg, cin // groups, *ks)
        wf = np.ascontiguousarray(wf[(slice(None), slice(None)) + (slice(None, None, -1),) * nd])
        wt = b.const(wf)
    else:
        wg = b.reshape(w, (groups, cin // groups, mg, *ks))
        wg = b.transpose(wg, (0, 2, 1, *range(3, 3 + nd)))
        st = contiguous(wg.shape)
        off = sum((k - 1) * s for k, s in zip(ks, st[3:], strict=True))
        wt = b.strided(wg, wg.shape, st[:3] + [-s for s in st[3:]], off)
        wt = b.reshape(wt, (groups * mg, cin // groups, *ks))
    full = [(k - 1) * d for k, d in zip(ks, dil, strict=True)]
    before = [full[i] - pads[i] for i in range(nd)]
    after = [full[i] - pads[nd + i] + outpad[i] + grow[i] for i in range(nd)]
    if wv is not None and nd == 2 and any(s > 1 for s in strides) and all(d == 1 for d in dil) \
            and all(k >= s for k, s in zip(ks, strides, strict=True)):
        wfv = b.value(wt)
        bv = None if bias is None or bias.value is None else np.asarray(b.value(bias))
        if bias is None or bv is not None:
            y = conv_transpose_subpixel(b, x, wfv, bv, strides, before, after, groups)
            if y is not None:
                return [y]
        return [conv_transpose_phases(b, x, wfv, bias, strides, before, after, groups)]
    xd = dilate_input(b, x, strides)
    if any(v < 0 for v in before + after):
        xd = b.pad(xd, [0, 0, *[min(v, 0) for v in before]], [0, 0, *[min(v, 0) for v in after]], 0.0)
        before = [max(v, 0) for v in before]
        after = [max(v, 0) for v in after]
    y = conv_nd(b, xd, wt, bias, [1] * nd, before + after, dil, groups)
    return [y]


@dataclass
class _Phase:
    """One output phase (oy % sh, ox % sw) of a strided transposed conv as an ordinary conv:
    kernel taps from ``k0`` every stride (``length`` of them), ``cnt`` outputs, pads ``pb``/``pa``
    of the input (negative: a crop)."""

    r: tuple[int, int]
    k0: list[int]
    length: list[int]
    cnt: list[int]
    pb: list[int]
    pa: list[int]


def _phases(ins: Sequence[int], ks: Sequence[int], strides: Sequence[int], before: Sequence[int],
            outs: Sequence[int]) -> list[_Phase]:
    out = []
    for rh in range(min(strides[0], outs[0])):
        for rw in range(min(strides[1], outs[1])):
            r = (rh, rw)
            k0 = [(before[i] - r[i]) % strides[i] for i in range(2)]
            length = [(ks[i] - 1 - k0[i]) // strides[i] + 1 for i in range(2)]
            cnt = [(outs[i] - r[i] + strides[i] - 1) // strides[i] for i in range(2)]
            pb = [-((r[i] + k0[i] - before[i]) // strides[i]) for i in range(2)]
            pa = [cnt[i] + length[i] - 1 - ins[i] - pb[i] for i in range(2)]
            out.append(_Phase(r, k0, length, cnt, pb, pa))
    return out


def _transposed_outs(x: A.Tensor, ks: Sequence[int], strides: Sequence[int], before: Sequence[int],
                     after: Sequence[int]) -> list[int]:
    ins = x.shape[2:]
    return [(ins[i] - 1) * strides[i] + 1 + before[i] + after[i] - ks[i] + 1 for i in range(2)]


# The sub-pixel lowering computes every phase over one common window; it is taken while at
# least this share of its multiply-adds are real: k a multiple of the stride (2x2 or 4x4 at
# stride 2: 71-100%, the rest one extra row and column), where one call beat the per-phase
# convs by 4-19% (8-128 channels, 5x6 to 48x64 maps); not 3x3 at stride 2 (42-56%: its zero
# taps cost 12-40% more).
_SUBPIXEL_MIN_REAL = 0.7


def conv_transpose_subpixel(
    b: Builder, x: A.Tensor, wf: np.ndarray, bias: np.ndarray | None, strides: Sequence[int],
    before: Sequence[int], after: Sequence[int], groups: int,
) -> A.Tensor | None:
    """A strided 2-D transposed convolution as ONE ordinary convolution that computes all
    ``sh*sw`` output phases as channels (each phase's kernel taps placed in a common window,
    zeros where a phase has fewer), then a depth-to-space Raster. One kernel call instead of
    one per phase (small maps and few channels left each phase's call mostly overhead), and
    the interleave is a plain block move (whole channel blocks when ``m`` fills them).

    None when the phases' taps differ so much that 30% of the common window's
    multiply-adds would be by zeros (then :func:`conv_transpose_phases`)."""
    n = x.shape[0]
    ins = x.shape[2:]
    m, cg = wf.shape[0], wf.shape[1]
    mg = m // groups
    ks = wf.shape[2:]
    outs = _transposed_outs(x, ks, strides, before, after)
    phases = _phases(ins, ks, strides, before, outs)
    if not phases:
        return None
    # Phase p's output j reads input j + a_p + t for its taps t < length_p (a_p = -pb_p). In
    # the common conv, output j' reads input j' + o + t for t < L: phase p's output j is the
    # common output j' = j + a_p - o, its taps in the first length_p of the window.
    o = [min(-p.pb[i] for p in phases) for i in range(2)]
    win = [max(p.length[i] for p in phases) for i in range(2)]
    cnt = [max(p.cnt[i] - p.pb[i] for p in phases) - o[i] for i in range(2)]
    real = sum(p.length[0] * p.length[1] * p.cnt[0] * p.cnt[1] for p in phases)
    if real < _SUBPIXEL_MIN_REAL * len(phases) * win[0] * win[1] * cnt[0] * cnt[1]:
        return None
    npx = len(phases)
    wu = np.zeros((groups, npx, mg, cg, win[0], win[1]), wf.dtype)
    for j, p in enumerate(phases):
        sub = wf[:, :, p.k0[0]::strides[0], p.k0[1]::strides[1]].reshape(groups, mg, cg, *p.length)
        wu[:, j, :, :, :p.length[0], :p.length[1]] = sub
    bu = None
    if bias is not None:
        bu = b.const(np.ascontiguousarray(np.broadcast_to(
            bias.reshape(groups, 1, mg), (groups, npx, mg)).reshape(-1)).astype(wf.dtype))
    pb = [-o[i] for i in range(2)]
    pa = [cnt[i] + win[i] - 1 + o[i] - ins[i] for i in range(2)]
    xs = x
    if any(v < 0 for v in pb + pa):
        xs = b.pad(x, [0, 0, *[min(v, 0) for v in pb]], [0, 0, *[min(v, 0) for v in pa]], 0.0)
    u = conv_nd(b, xs, b.const(wu.reshape(groups * npx * mg, cg, *win)), bu, [1, 1],
                [max(v, 0) for v in pb] + [max(v, 0) for v in pa], [1, 1], groups)
    y = b.tensor((n, m, *outs), x.dtype)
    dst = contiguous(y.shape)
    src = contiguous(u.shape)
    regions = _interleave_regions(phases, src, dst, strides, o, n, groups, mg)
    for j, p in enumerate(phases if not regions else []):
        # (n, group, channel, j, k) of phase p -> y[n, g*mg + c, r0 + s0*j, r1 + s1*k]
        shift = [-p.pb[i] - o[i] for i in range(2)]
        regions += strided_regions(
            0, j * mg * src[1] + shift[0] * src[2] + shift[1], [src[0], npx * mg * src[1], src[1], src[2], src[3]],
            p.r[0] * dst[2] + p.r[1],
            [dst[0], mg * dst[1], dst[1], dst[2] * strides[0], strides[1]],
            [n, groups, mg, p.cnt[0], p.cnt[1]])
    b.emit(A.Raster([u], [y], regions=regions))
    return y


def _interleave_regions(phases: list[_Phase], src: Sequence[int], dst: Sequence[int], strides: Sequence[int],
                        o: Sequence[int], n: int, groups: int, mg: int) -> list[A.Region]:
    """The depth-to-space of every phase at once, phases innermost: (n, group, channel, j,
    phase row, k, phase column), so each destination row is written contiguously from the
    phases' rows interleaved. Needs every phase's count equal and each phase's read offset a
    step per phase row / column (always so for two phases an axis); else [] (then a region set
    per phase)."""
    p0 = 1 + max(p.r[0] for p in phases)
    p1 = 1 + max(p.r[1] for p in phases)
    if len(phases) != p0 * p1 or any(p.cnt != phases[0].cnt for p in phases):
        return []
    shift = {p.r: [-p.pb[i] - o[i] for i in range(2)] for p in phases}
    s0 = [shift[(r, 0)][0] for r in range(p0)]
    s1 = [shift[(0, c)][1] for c in range(p1)]
    if any(shift[(r, c)] != [s0[r], s1[c]] for r in range(p0) for c in range(p1)):
        return []
    d0 = s0[1] - s0[0] if p0 > 1 else 0
    d1 = s1[1] - s1[0] if p1 > 1 else 0
    if s0 != [s0[0] + r * d0 for r in range(p0)] or s1 != [s1[0] + c * d1 for c in range(p1)]:
        return []
    cnt = phases[0].cnt
    npx = p0 * p1
    return compact_regions(
        0, s0[0] * src[2] + s1[0],
        [src[0], npx * mg * src[1], src[1], src[2], p1 * mg * src[1] + d0 * src[2], src[3], mg * src[1] + d1],
        0, [dst[0], mg * dst[1], dst[1], strides[0] * dst[2], dst[2], strides[1], 1],
        [n, groups, mg, cnt[0], p0, cnt[1], p1])


def conv_transpose_phases(
    b: Builder, x: A.Tensor, wf: np.ndarray, bias: A.Tensor | None, strides: Sequence[int],
    before: Sequence[int], after: Sequence[int], groups: int,
) -> A.Tensor:
    """A strided 2-D transposed convolution as ``sh*sw`` ordinary convolutions, one per output
    phase (oy % sh, ox % sw), each with the kernel taps that meet real input pixels, written
    interleaved by one Raster. Same result as convolving the zero-inserted input with the
    flipped kernel ``wf``, without the (s^2 - 1)/s^2 of multiplies by inserted zeros.

    ``before``/``after``: the pads of that equivalent stride-1 conv (may be negative)."""
    n = x.shape[0]
    m = wf.shape[0]
    ins = x.shape[2:]
    ks = wf.shape[2:]
    outs = _transposed_outs(x, ks, strides, before, after)
    y = b.tensor((n, m, *outs), x.dtype)
    dst = contiguous(y.shape)
    regions: list[A.Region] = []
    parts: list[A.Tensor] = []
    for ph in _phases(ins, ks, strides, before, outs):
        (rh, rw), k0, pb, pa = ph.r, ph.k0, ph.pb, ph.pa
        sub = np.ascontiguousarray(wf[:, :, k0[0]::strides[0], k0[1]::strides[1]])
        xs = x
        if any(v < 0 for v in pb + pa):
            xs = b.pad(x, [0, 0, *[min(v, 0) for v in pb]], [0, 0, *[min(v, 0) for v in pa]], 0.0)
        yp = conv_nd(b, xs, b.const(sub), bias, [1, 1], [max(v, 0) for v in pb] + [max(v, 0) for v in pa],
                     [1, 1], groups)
        regions += strided_regions(
            len(parts), 0, contiguous(yp.shape), rh * dst[2] + rw,
            [dst[0], dst[1], dst[2] * strides[0], strides[1]], yp.shape)
        parts.append(yp)
    b.emit(A.Raster(parts, [y], regions=regions))
    return y


def _conv_attrs(ctx: NodeContext, x: A.Tensor, w: A.Tensor) -> tuple[list[int], list[int], list[int], int]:
    nd = len(x.shape) - 2
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    strides = ctx.attr("strides") or [1] * nd
    dilations = ctx.attr("dilations") or [1] * nd
    pads = resolve_pads(ctx, x.shape[2:], kernel, strides, dilations)
    return strides, pads, dilations, int(ctx.attr("group", 1))
