"""Attention (opset 23+) -> MatMul / Binary / Reduce / Select, plus RotaryEmbedding.

The masks Attention combines (causal, boolean or additive ``attn_mask``, sliding window,
per-batch padding from ``nonpad_kv_seqlen``) become one additive bias of 0 / -inf that the
scores add before a softmax; rows every key is masked out of produce zeros.
"""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core import dtypes
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def _opt(ins: Ins, i: int) -> A.Tensor | None:
    return ins[i] if len(ins) > i else None


def split_heads(b: Builder, x: A.Tensor, heads: int) -> A.Tensor:
    """(B, S, H*D) -> (B, H, S, D)."""
    bsz, seq, hidden = x.shape
    if heads <= 0 or hidden % heads:
        raise DecomposeError(f"hidden size {hidden} is not divisible by {heads} heads")
    return b.transpose(b.reshape(x, (bsz, seq, heads, hidden // heads)), (0, 2, 1, 3))


def softmax_last(b: Builder, x: A.Tensor) -> A.Tensor:
    """Softmax over the last axis; a row that is all -inf gives zeros (not NaN)."""
    axis = len(x.shape) - 1
    m = b.reduce_axis(x, axis, "max")
    zero = b.scalar(0, m)
    m = b.select(b.unary("isneginf", m), zero, m)
    e = b.unary("exp", b.binary("sub", x, m))
    s = b.reduce_axis(e, axis, "sum")
    s = b.select(b.binary("eq", s, zero), b.scalar(1, s), s)
    return b.binary("div", e, s)


def _allowed_bias(b: Builder, allowed: A.Tensor, dtype: np.dtype) -> A.Tensor:
    zero = b.const(np.array(0, dtype))
    ninf = b.const(np.array(-np.inf, dtype))
    return b.select(allowed, zero, ninf)


def _offset_diff(
    b: Builder, q: int, kv: int, offset: int | A.Tensor
) -> A.Tensor:
    """``(i + offset) - j`` over (q, kv), or (B, 1, q, kv) for a per-batch offset tensor."""
    i = np.arange(q, dtype=np.int64).reshape(q, 1)
    j = np.arange(kv, dtype=np.int64).reshape(1, kv)
    if isinstance(offset, int):
        return b.const(i + offset - j)
    off = b.reshape(b.cast(offset, np.int64), (offset.size, 1, 1, 1))
    return b.binary("add", off, b.const((i - j).reshape(1, 1, q, kv)))


@register("Attention")
def attention(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    q, k, v = req(ins[0], "Q"), req(ins[1], "K"), req(ins[2], "V")
    mask, past_k, past_v = _opt(ins, 3), _opt(ins, 4), _opt(ins, 5)
    nonpad = _opt(ins, 6)
    if (past_k is None) != (past_v is None):
        raise DecomposeError("past_key and past_value must be given together")
    rank3 = len(q.shape) == 3
    if rank3:
        q = split_heads(b, q, int(ctx.attr("q_num_heads", 0)))
        kvh = int(ctx.attr("kv_num_heads", 0))
        k = split_heads(b, k, kvh)
        v = split_heads(b, v, kvh)
    if not len(q.shape) == len(k.shape) == len(v.shape) == 4:
        raise DecomposeError("Attention takes 3-D or 4-D Q, K, V")
    dt = q.dtype
    scale = ctx.attr("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    sq = b.const(np.array(np.sqrt(np.float32(scale)), np.float32).astype(dt))
    if past_k is not None and past_v is not None:
        k = b.concat([past_k, k], 2)
        v = b.concat([past_v, v], 2)
    present_k, present_v = k, v
    qn, kvn = q.shape[2], k.shape[2]

    # ---- the additive bias
    bias: A.Tensor = b.const(np.zeros((qn, kvn), dt))
    if mask is not None and mask.shape[-1] < kvn:
        pad = kvn - mask.shape[-1]
        before = [0] * len(mask.shape)
        after = [0] * (len(mask.shape) - 1) + [pad]
        mask = b.pad(mask, before, after, 0.0 if mask.dtype == np.bool_ else -np.inf)
    if mask is not None and mask.dtype == np.bool_:
        mask = _allowed_bias(b, mask, dt)
    elif mask is not None:
        mask = b.cast(mask, dt)
    offset: int | A.Tensor = 0
    if past_k is not None:
        offset = past_k.shape[2]
    elif nonpad is not None:
        offset = b.binary("sub", b.cast(nonpad, np.int64), b.const(np.array(qn, np.int64)))
    if ctx.attr("is_causal", 0):
        base = mask if mask is not None else bias
        bias = b.binary("add", base, _allowed_bias(
            b, b.binary("ge", _offset_diff(b, qn, kvn, offset), b.const(np.array(0, np.int64))), dt))
    elif mask is not None:
        bias = b.binary("add", bias, mask)
    left = int(ctx.attr("left_window_size", -1))
    right = int(ctx.attr("right_window_size", -1))
    if left >= 0 or right >= 0:
        diff = _offset_diff(b, qn, kvn, offset)
        ok: A.Tensor | None = None
        if left >= 0:
            ok = b.binary("le", diff, b.const(np.array(left, np.int64)))
        if right >= 0:
            r = b.binary("ge", diff, b.const(np.array(-right, np.int64)))
            ok = r if ok is None else b.binary("and", ok, r)
        assert ok is not None
        bias = b.binary("add", bias, _allowed_bias(b, ok, dt))
    if nonpad is not None:
        lens = b.reshape(b.cast(nonpad, np.int64), (nonpad.size, 1, 1, 1))
        cols = b.const(np.arange(kvn, dtype=np.int64).reshape(1, 1, 1, kvn))
        bias = b.binary("add", bias, _allowed_bias(b, b.binary("lt", cols, lens), dt))

    # ---- grouped-query attention: repeat each KV head
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        if hq % hk or v.shape[1] != hk:
            raise DecomposeError(f"{hq} query heads cannot share {hk} key/value heads")
        rep = hq // hk

        def repeat(t: A.Tensor) -> A.Tensor:
            n, h, s, d = t.shape
            e = b.expand(b.reshape(t, (n, h, 1, s, d)), (n, h, rep, s, d))
            return b.reshape(e, (n, h * rep, s, d))

        k, v = repeat(k), repeat(v)

    # ---- scores, softmax, output
    qs = b.binary("mul", q, sq)
    ks = b.binary("mul", k, sq)
    scores = b.matmul(qs, b.transpose(ks, (0, 1, 3, 2)))
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap > 0:
        c = b.scalar(softcap, scores)
        scores = b.binary("mul", b.unary("tanh", b.binary("div", scores, c)), c)
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    qk_out = scores
    with_bias = b.binary("add", scores, bias)
    if mode == 2:
        qk_out = with_bias
    precision = ctx.attr("softmax_precision")
    if precision is not None:
        with_bias = b.cast(with_bias, dtypes.from_onnx(int(precision)))
    probs = softmax_last(b, with_bias)
    row_masked = b.unary("isneginf", b.reduce_axis(bias, len(bias.shape) - 1, "max"))
    probs = b.select(row_masked, b.scalar(0, probs), probs)
    if mode == 3:
        qk_out = probs
    probs = b.cast(probs, dt)
    y = b.matmul(probs, v)
    if rank3:
        n, h, s, d = y.shape
        y = b.reshape(b.transpose(y, (0, 2, 1, 3)), (n, s, h * d))
    return [y, present_k, present_v, b.cast(qk_out, dt)]


@register("RotaryEmbedding")
def rotary_embedding(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, cos, sin = req(ins[0]), req(ins[1], "cos_cache"), req(ins[2], "sin_cache")
    pos = _opt(ins, 3)
    interleaved = bool(ctx.attr("interleaved", 0))
    rank3 = len(x.shape) == 3
    if rank3:
        heads = int(ctx.attr("num_heads", 0))
        if heads <= 0:
            raise DecomposeError("RotaryEmbedding on 3-D input needs num_heads")
        n, s, hidden = x.shape
        x4 = b.reshape(x, (n, s, heads, hidden // heads))  # (B, S, H, D)
    else:
        x4 = b.transpose(x, (0, 2, 1, 3))  # (B, H, S, D) -> (B, S, H, D)
    n, s, h, d = x4.shape
    rot = int(ctx.attr("rotary_embedding_dim", 0)) or d
    if pos is not None:
        from walle_core.decompose.index import take

        cos = take(b, cos, pos, 0)  # (B, S, rot/2)
        sin = take(b, sin, pos, 0)
    half = rot // 2
    cos = b.slice(cos, [0] * len(cos.shape), [*cos.shape[:-1], half], [1] * len(cos.shape))
    sin = b.slice(sin, [0] * len(sin.shape), [*sin.shape[:-1], half], [1] * len(sin.shape))
    lead = cos.shape[:-1]
    cos = b.reshape(cos, (*((1,) * (2 - len(lead))), *lead, 1, half))  # (B|1, S, 1, half)
    sin = b.reshape(sin, (*((1,) * (2 - len(lead))), *lead, 1, half))
    xr = b.slice(x4, [0, 0, 0, 0], [n, s, h, rot], [1, 1, 1, 1])
    if interleaved:
        x1 = b.slice(xr, [0, 0, 0, 0], [n, s, h, half], [1, 1, 1, 2])
        x2 = b.slice(xr, [0, 0, 0, 1], [n, s, h, half], [1, 1, 1, 2])
    else:
        x1 = b.slice(xr, [0, 0, 0, 0], [n, s, h, half], [1, 1, 1, 1])
        x2 = b.slice(xr, [0, 0, 0, half], [n, s, h, half], [1, 1, 1, 1])
    r1 = b.binary("sub", b.binary("mul", x1, cos), b.binary("mul", x2, sin))
    r2 = b.binary("add", b.binary("mul", x2, cos), b.binary("mul", x1, sin))
    if interleaved:
        parts = b.concat([b.reshape(r1, (n, s, h, half, 1)), b.reshape(r2, (n, s, h, half, 1))], 4)
        rotated = b.reshape(parts, (n, s, h, rot))
    else:
        rotated = b.concat([r1, r2], 3)
    if rot < d:
        rest = b.slice(x4, [0, 0, 0, rot], [n, s, h, d - rot], [1, 1, 1, 1])
        rotated = b.concat([rotated, rest], 3)
    if rank3:
        return [b.reshape(rotated, x.shape)]
    return [b.transpose(rotated, (0, 2, 1, 3))]
