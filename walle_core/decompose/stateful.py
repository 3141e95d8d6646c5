"""Ops that carry a recurrent state between calls (opset 27): CausalConvWithState and
LinearAttention.

CausalConvWithState: the past state (or zeros) is concatenated in front of the input along the
time axis, and the depthwise causal convolution is a sum of ``k`` shifted slices times per-channel
taps (``Raster`` + ``Binary``); the present state is the last ``k - 1`` steps of that sequence.

LinearAttention: the recurrence is unrolled over the (plan-time) sequence length, one step at a
time with batched ``MatMul`` over (batch, kv head): outer products ``k ⊗ v`` are (d_k, 1) x (1, d_v)
products, ``S^T k`` is (1, d_k) x (d_k, d_v), and the query heads of one kv head share its state
(grouped-query attention) as the rows of one (group, d_k) x (d_k, d_v) product.

Half-precision inputs are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def _opt(ins: Ins, i: int) -> A.Tensor | None:
    return ins[i] if len(ins) > i else None


def _compute_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dt == np.float16 else dt


def _silu(b: Builder, x: A.Tensor) -> A.Tensor:
    return b.binary("mul", x, b.unary("sigmoid", x))


# --------------------------------------------------------------------------- causal convolution


@register("CausalConvWithState")
def causal_conv_with_state(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, w = req(ins[0], "input"), req(ins[1], "weight")
    bias, past = _opt(ins, 2), _opt(ins, 3)
    act = str(ctx.attr("activation", "none"))
    if act not in ("none", "silu", "swish"):
        raise ctx.unsupported(f"activation {act!r}")
    if len(x.shape) != 3 or len(w.shape) != 3 or w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        raise DecomposeError(f"CausalConvWithState wants input (B, C, L) and weight (C, 1, k), "
                             f"got {list(x.shape)} and {list(w.shape)}")
    n, c, length = x.shape
    k = w.shape[2]
    dt = x.dtype
    ct = _compute_dtype(dt)
    if k < 1:
        raise DecomposeError("CausalConvWithState kernel size must be at least 1")
    xs = b.cast(x, ct)
    if past is None:
        state: A.Tensor = b.const(np.zeros((n, c, k - 1), ct))
    else:
        if past.shape != (n, c, k - 1):
            raise DecomposeError(f"past_state must be {[n, c, k - 1]}, got {list(past.shape)}")
        state = b.cast(past, ct)
    seq = b.concat([state, xs], 2) if k > 1 else xs  # (B, C, k - 1 + L)
    taps = b.cast(w, ct)
    acc: A.Tensor | None = None
    for j in range(k):
        window = b.slice(seq, [0, 0, j], [n, c, length], [1, 1, 1])
        wj = b.reshape(b.slice(taps, [0, 0, j], [c, 1, 1], [1, 1, 1]), (1, c, 1))
        term = b.binary("mul", window, wj)
        acc = term if acc is None else b.binary("add", acc, term)
    assert acc is not None
    if bias is not None:
        acc = b.binary("add", acc, b.reshape(b.cast(bias, ct), (1, c, 1)))
    if act != "none":
        acc = _silu(b, acc)
    total = k - 1 + length
    present = b.slice(seq, [0, 0, total - (k - 1)], [n, c, k - 1], [1, 1, 1])
    return [b.cast(acc, dt), b.cast(present, dt)]


# --------------------------------------------------------------------------- linear attention


@register("LinearAttention")
def linear_attention(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    q, k, v = req(ins[0], "query"), req(ins[1], "key"), req(ins[2], "value")
    past, decay, beta = _opt(ins, 3), _opt(ins, 4), _opt(ins, 5)
    rule = str(ctx.attr("update_rule", "gated_delta"))
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ctx.unsupported(f"update_rule {rule!r}")
    hq, hkv = int(ctx.attr("q_num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise DecomposeError(f"q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")
    if not len(q.shape) == len(k.shape) == len(v.shape) == 3:
        raise DecomposeError("LinearAttention takes 3-D packed query, key and value")
    bsz, steps, qh = q.shape
    if qh % hq or k.shape[2] % hkv or v.shape[2] % hkv:
        raise DecomposeError("hidden sizes are not divisible by the head counts")
    dk, dv = qh // hq, v.shape[2] // hkv
    if k.shape != (bsz, steps, hkv * dk) or v.shape[:2] != (bsz, steps):
        raise DecomposeError(f"key/value shapes {list(k.shape)}, {list(v.shape)} do not match query")
    gated = rule in ("gated", "gated_delta")
    delta = rule in ("delta", "gated_delta")
    if gated and decay is None:
        raise DecomposeError(f"update_rule {rule!r} needs the decay input")
    if delta and beta is None:
        raise DecomposeError(f"update_rule {rule!r} needs the beta input")
    scale = float(ctx.attr("scale", 0.0)) or 1.0 / math.sqrt(dk)
    group = hq // hkv
    dt = q.dtype
    ct = _compute_dtype(dt)

    # (B, T, H*D) -> (B, T, H, D) in the compute type; one step is a (B, H, ...) slice.
    qf = b.reshape(b.cast(q, ct), (bsz, steps, hkv, group, dk))
    kf = b.reshape(b.cast(k, ct), (bsz, steps, hkv, dk))
    vf = b.reshape(b.cast(v, ct), (bsz, steps, hkv, dv))
    gf: A.Tensor | None = None
    if gated:
        assert decay is not None
        per = decay.shape[2] // hkv if decay.shape[2] % hkv == 0 else 0
        if decay.shape[:2] != (bsz, steps) or per not in (1, dk):
            raise DecomposeError(f"decay must be (B, T, H_kv) or (B, T, H_kv*d_k), got {list(decay.shape)}")
        gf = b.unary("exp", b.reshape(b.cast(decay, ct), (bsz, steps, hkv, per)))
    bf: A.Tensor | None = None
    if delta:
        assert beta is not None
        if beta.shape[:2] != (bsz, steps) or beta.shape[2] not in (1, hkv):
            raise DecomposeError(f"beta must be (B, T, H_kv) or (B, T, 1), got {list(beta.shape)}")
        bf = b.reshape(b.cast(beta, ct), (bsz, steps, beta.shape[2]))

    if past is None:
        state: A.Tensor = b.const(np.zeros((bsz, hkv, dk, dv), ct))
    else:
        if past.shape != (bsz, hkv, dk, dv):
            raise DecomposeError(f"past_state must be {[bsz, hkv, dk, dv]}, got {list(past.shape)}")
        state = b.cast(past, ct)

    def step(t: A.Tensor, i: int, tail: tuple[int, ...]) -> A.Tensor:
        """Time step ``i`` of a (B, T, ...) tensor, reshaped to ``tail``."""
        starts = [0, i] + [0] * (len(t.shape) - 2)
        sizes = [bsz, 1, *t.shape[2:]]
        return b.reshape(b.slice(t, starts, sizes, [1] * len(t.shape)), tail)

    outs = []
    for i in range(steps):
        kt = step(kf, i, (bsz, hkv, dk, 1))
        vt = step(vf, i, (bsz, hkv, 1, dv))
        if gf is not None:
            g = step(gf, i, (bsz, hkv, gf.shape[3], 1))
            state = b.binary("mul", state, g)
        if bf is not None:
            bt = step(bf, i, (bsz, bf.shape[2], 1, 1))
            # S^T k as a row: (B, H, 1, d_k) @ (B, H, d_k, d_v)
            sk = b.matmul(b.reshape(kt, (bsz, hkv, 1, dk)), state)
            vt = b.binary("mul", b.binary("sub", vt, sk), bt)
        state = b.binary("add", state, b.matmul(kt, vt))
        qt = step(qf, i, (bsz, hkv, group, dk))
        o = b.matmul(qt, state)  # (B, H_kv, group, d_v)
        outs.append(b.reshape(o, (bsz, 1, hq * dv)))
    if steps == 0:
        out = b.const(np.zeros((bsz, 0, hq * dv), ct))
    else:
        out = b.concat(outs, 1) if len(outs) > 1 else outs[0]
        out = b.binary("mul", out, b.const(np.array(scale, ct)))
    return [b.cast(out, dt), b.cast(state, past.dtype if past is not None else dt)]
