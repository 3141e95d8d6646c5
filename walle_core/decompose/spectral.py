"""Spectral ops as dense transforms: DFT and STFT -> MatMul with plan-time cos/sin tables,
MelWeightMatrix as a plan-time constant."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core import dtypes
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, normalize_axis
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def _scalar(b: Builder, t: A.Tensor) -> float:
    return float(np.asarray(b.value(t)).reshape(-1)[0])


def _fit(b: Builder, x: A.Tensor, n: int) -> A.Tensor:
    """Zero-pad or crop the last axis of ``x`` to ``n``."""
    rank = len(x.shape)
    have = x.shape[-1]
    if have > n:
        return b.slice(x, [0] * rank, [*x.shape[:-1], n], [1] * rank)
    if have < n:
        return b.pad(x, [0] * rank, [0] * (rank - 1) + [n - have], 0.0)
    return x


def dft_signal_axis(
    b: Builder, x: A.Tensor, n: int, inverse: bool, onesided: bool
) -> A.Tensor:
    """DFT over axis -2 of ``x`` (..., L, 1|2); returns (..., K, 2) (or (..., n, 1) for a
    one-sided inverse, i.e. irfft)."""
    rank = len(x.shape)
    if x.shape[-1] not in (1, 2):
        raise DecomposeError("DFT input's last axis must be 1 (real) or 2 (complex)")
    lead = x.shape[:-2]
    length = x.shape[-2]

    def part(i: int) -> A.Tensor:
        p = b.slice(x, [0] * rank, [*lead, length, 1], [1] * rank)
        if i:
            p = b.slice(x, [0] * (rank - 1) + [1], [*lead, length, 1], [1] * rank)
        return b.reshape(p, (*lead, length))

    xr = part(0)
    xi = part(1) if x.shape[-1] == 2 else None
    dt = x.dtype
    if inverse and onesided:  # irfft: Hermitian half-spectrum -> n real samples
        half = n // 2 + 1
        xr = _fit(b, xr, half)
        xi = _fit(b, xi, half) if xi is not None else None
        k = np.arange(half).reshape(half, 1)
        t = np.arange(n).reshape(1, n)
        w = np.full((half, 1), 2.0)
        w[0] = 1.0
        if n % 2 == 0:
            w[-1] = 1.0
        ang = 2 * np.pi * k * t / n
        y = b.matmul(xr, b.const((w * np.cos(ang) / n).astype(dt)))
        if xi is not None:
            y = b.binary("sub", y, b.matmul(xi, b.const((w * np.sin(ang) / n).astype(dt))))
        return b.reshape(y, (*lead, n, 1))
    xr = _fit(b, xr, n)
    xi = _fit(b, xi, n) if xi is not None else None
    kout = n // 2 + 1 if onesided else n
    t = np.arange(n).reshape(n, 1)
    k = np.arange(kout).reshape(1, kout)
    ang = 2 * np.pi * t * k / n
    scale = 1.0 / n if inverse else 1.0
    c = b.const((np.cos(ang) * scale).astype(dt))
    s = b.const((np.sin(ang) * scale).astype(dt))
    if inverse:  # e^{+i}: (r + i q)(cos + i sin)
        yr = b.matmul(xr, c)
        yi = b.matmul(xr, s)
        if xi is not None:
            yr = b.binary("sub", yr, b.matmul(xi, s))
            yi = b.binary("add", yi, b.matmul(xi, c))
    else:  # e^{-i}: (r + i q)(cos - i sin)
        yr = b.matmul(xr, c)
        yi = b.unary("neg", b.matmul(xr, s))
        if xi is not None:
            yr = b.binary("add", yr, b.matmul(xi, s))
            yi = b.binary("add", yi, b.matmul(xi, c))
    return b.concat([b.reshape(yr, (*lead, kout, 1)), b.reshape(yi, (*lead, kout, 1))], -1)


@register("DFT")
def dft(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0])
    rank = len(x.shape)
    if ctx.opset < 20:
        axis = int(ctx.attr("axis", 1))
    else:
        axis_t = ins[2] if len(ins) > 2 else None
        axis = int(_scalar(b, axis_t)) if axis_t is not None else -2
    axis = normalize_axis(axis, rank)
    if axis == rank - 1:
        raise DecomposeError("DFT axis cannot be the real/imaginary axis")
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    n_t = ins[1] if len(ins) > 1 else None
    if n_t is not None:
        n = int(_scalar(b, n_t))
    else:
        n = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    perm = [i for i in range(rank - 1) if i != axis] + [axis, rank - 1]
    y = dft_signal_axis(b, b.transpose(x, perm), n, inverse, onesided)
    back = [perm.index(i) for i in range(rank)]
    return [b.transpose(y, back)]


@register("STFT")
def stft(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    sig = req(ins[0], "signal")
    step = int(_scalar(b, req(ins[1], "frame_step")))
    window = ins[2] if len(ins) > 2 else None
    fl_t = ins[3] if len(ins) > 3 else None
    if fl_t is not None:
        fl = int(_scalar(b, fl_t))
    elif window is not None:
        fl = window.shape[0]
    else:
        raise DecomposeError("STFT needs a window or a frame_length")
    if len(sig.shape) == 2:
        sig = b.reshape(sig, (*sig.shape, 1))
    batch, length, c = sig.shape
    frames = (length - fl) // step + 1
    if frames <= 0 or step <= 0:
        raise DecomposeError("STFT signal is shorter than one frame")
    fr = b.strided(sig, (batch, frames, fl, c), (length * c, step * c, c, 1))
    if window is not None:
        fr = b.binary("mul", fr, b.reshape(b.cast(window, sig.dtype), (fl, 1)))
    return [dft_signal_axis(b, fr, fl, False, bool(ctx.attr("onesided", 1)))]


@register("MelWeightMatrix")
def mel_weight_matrix(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    bins, dft_len, rate = (int(_scalar(b, req(t))) for t in ins[:3])
    lo, hi = (_scalar(b, req(t)) for t in ins[3:5])
    dtype = dtypes.from_onnx(int(ctx.attr("output_datatype", 1)))
    n_spec = dft_len // 2 + 1

    def to_mel(f: np.ndarray | float) -> np.ndarray:
        return np.asarray(2595 * np.log10(1 + np.asarray(f) / 700))

    def to_hz(m: np.ndarray) -> np.ndarray:
        return np.asarray(700 * (10 ** (m / 2595) - 1))

    lo_mel, hi_mel = to_mel(lo), to_mel(hi)
    mels = np.arange(bins + 2) * ((hi_mel - lo_mel) / (bins + 2)) + lo_mel
    edges = ((dft_len + 1) * to_hz(mels) // rate).astype(np.int64)
    out = np.zeros((n_spec, bins), np.float64)
    for i in range(bins):
        left, centre, right = edges[i], edges[i + 1], edges[i + 2]
        if centre > left:
            for j in range(left, centre + 1):
                out[j, i] = (j - left) / (centre - left)
        else:
            out[centre, i] = 1.0
        for j in range(centre, right):
            out[j, i] = (right - j) / (right - centre)
    return [b.const(out.astype(dtype))]
