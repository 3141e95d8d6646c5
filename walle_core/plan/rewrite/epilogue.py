"""Epilogue fusions: the residual add and the activation that follow a Conv2D or MatMul run in
that op's epilogue (``Rewrites.residual``, ``Rewrites.activations``).

Both run on a backend's op list before its memory is planned, so a fused op's inputs and output
never share memory (an op's operands are live at the same step): the kernels may read the
residual after writing parts of the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.decompose.builder import contiguous
from walle_core.plan.rewrite.fused import ConvRes, MatMulRes, with_activation, with_residual

Items = list[tuple[A.Op, Algorithm]]
_F32 = np.dtype(np.float32)  # the epilogues fuse float32 ops


def readers(items: Sequence[tuple[A.Op, Algorithm]]) -> dict[int, int]:
    """How many ops read each tensor id."""
    uses: dict[int, int] = {}
    for op, _ in items:
        for t in op.inputs:
            uses[t.id] = uses.get(t.id, 0) + 1
    return uses


def _alias(t: A.Tensor, shape: tuple[int, ...]) -> A.Tensor:
    """``t`` under another shape of the same size: same id, so it binds to the same memory."""
    value = None if t.value is None else t.value.reshape(shape)
    return A.Tensor(shape, t.dtype, value, t.name, t.id)


def fuse_residuals(items: Sequence[tuple[A.Op, Algorithm]], uses: dict[int, int],
                   external: set[int]) -> Items:
    """Fold ``add(conv(x), r)`` (either operand order) into the Conv2D's epilogue, and likewise
    for MatMul: ``r`` must have exactly the output's shape, contiguous, float32, and the
    conv/matmul output no other reader; the add may read that output through a reshape (as a
    Conv1d's [N, C, L] of its Conv2D's [N, C, 1, L]). The fused op runs at the add's place in the list (so
    ``r`` exists by then; the producer's inputs are immutable values, kept alive until it runs).
    ``r`` is listed as the fused op's last input."""
    out: list[tuple[A.Op, Algorithm] | None] = []
    pos: dict[int, int] = {}  # id of a fusable producer's output -> its index in out
    for op, algo in items:
        if isinstance(op, A.Binary) and op.fn == "add" and len(op.inputs) == 2 \
                and op.out.dtype == _F32 and op.out.size > 0:
            best: tuple[int, int] | None = None
            contig = tuple(contiguous(op.out.shape))
            for k in (0, 1):
                t, r = op.inputs[k], op.inputs[1 - k]
                p = pos.get(t.id)
                if p is None or r is t or t.id in external or uses.get(t.id, 0) != 1:
                    continue
                if t.shape != op.out.shape or r.shape != op.out.shape or r.dtype != _F32:
                    continue
                producer = out[p]
                if producer is None or producer[0].out.size != t.size:
                    continue
                if producer[0].out.shape != t.shape and op.out.id in external:
                    continue  # a reshaped result read outside keeps its own op
                if tuple(op.strides[k]) != contig or tuple(op.strides[1 - k]) != contig:
                    continue
                if best is None or p > best[0]:  # the later producer: shorter lifetimes
                    best = (p, k)
            if best is not None:
                p, k = best
                prod = out[p]
                assert prod is not None
                out[p] = None
                pos.pop(prod[0].out.id, None)
                r, dst = op.inputs[1 - k], op.out
                if dst.shape != prod[0].out.shape:
                    # the add reads a reshaped view (Conv1d's [N,C,L] of its [N,C,1,L]): the
                    # fused op keeps the producer's shape, on aliases of the same memory
                    r, dst = _alias(r, prod[0].out.shape), _alias(dst, prod[0].out.shape)
                out.append((with_residual(prod[0], r, dst), prod[1]))
                continue
        if isinstance(op, A.Conv2D | A.MatMul) and not isinstance(op, ConvRes | MatMulRes) \
                and op.out.dtype == _F32 and op.out.size > 0 \
                and (not isinstance(op, A.Conv2D) or op.act.fn == "identity"):
            pos[op.out.id] = len(out)
        out.append((op, algo))
    return [x for x in out if x is not None]


def _reads(x: A.Tensor, t: A.Tensor) -> bool:
    """``x`` is ``t`` or a reshaped alias of it (same id and size: a contiguous reshape, such as
    Conv1d's [N, C, L] of its Conv2D's [N, C, 1, L], binds to the same memory)."""
    return x is t or (x.id == t.id and x.size == t.size)


def activation_step(op: A.Op, t: A.Tensor, allowed: frozenset[str]) -> tuple[str, tuple[float, ...]] | None:
    """``op`` as an activation of ``t`` (or of a reshaped alias of it) among ``allowed``:
    (unary fn, params), or ("clip", (lo, hi)) for a clip or a Binary max/min against a scalar
    constant."""
    if op.out.size != t.size or op.out.dtype != _F32:
        return None
    if isinstance(op, A.Unary):
        x = op.inputs[0]
        if _reads(x, t) and op.out.shape == x.shape and op.fn in allowed and op.fn != "identity":
            if op.fn == "clip":
                lo, hi = (*op.params, -math.inf, math.inf)[:2]
                return "clip", (float(lo), float(hi))
            return op.fn, tuple(float(p) for p in op.params)
        return None
    if isinstance(op, A.Binary) and op.fn in ("max", "min") and len(op.inputs) == 2 \
            and "clip" in allowed:
        hits = [k for k, x in enumerate(op.inputs) if _reads(x, t)]
        if len(hits) != 1 or op.inputs[hits[0]].shape != op.out.shape \
                or tuple(op.strides[hits[0]]) != tuple(contiguous(op.out.shape)):
            return None
        c = op.inputs[1 - hits[0]]
        if c.value is None or c.size != 1 or c.dtype != _F32:
            return None
        v = float(np.asarray(c.value).reshape(-1)[0])
        if math.isnan(v):
            return None
        return ("clip", (v, math.inf)) if op.fn == "max" else ("clip", (-math.inf, v))
    return None


def fuse_activations(items: Sequence[tuple[A.Op, Algorithm]], uses: dict[int, int],
                     external: set[int], allowed: frozenset[str]) -> Items:
    """Fold the activation that directly follows a Conv2D or MatMul into its epilogue: a float
    Unary among ``allowed``, or Binary max/min against a scalar constant (ReLU, ReLU6 and clips
    lower to those), taken as ``clip``; consecutive max/min steps compose into one clip while
    the bounds stay ordered. Only when the producer's output has no other reader."""
    out: Items = []
    i = 0
    while i < len(items):
        op, algo = items[i]
        i += 1
        plain_mm = type(op) is A.MatMul and op.out.dtype == _F32
        if not ((isinstance(op, A.Conv2D | MatMulRes) and op.act.fn == "identity") or plain_mm):
            out.append((op, algo))
            continue
        start = i
        fn: str = "identity"
        params: tuple[float, ...] = (-math.inf, math.inf)
        last = op.out
        while i < len(items) and last.id not in external and uses.get(last.id, 0) == 1:
            nxt = items[i][0]
            step = activation_step(nxt, last, allowed)
            if step is None:
                break
            if step[0] == "clip" and fn in ("identity", "clip"):
                lo, hi = max(params[0], step[1][0]), min(params[1], step[1][1])
                if lo > hi:
                    break
                fn, params = "clip", (lo, hi)
            elif fn == "identity" and step[0] != "clip":
                fn, params = step
            else:
                break
            last = nxt.out
            i += 1
            if fn != "clip":
                break
        if fn == "identity" or (last.shape != op.out.shape and last.id in external):
            out.append((op, algo))
            out.extend(items[start:i])  # nothing taken: the consumed ops run as they were
            continue
        if last.shape != op.out.shape:  # through a reshape: the producer keeps its own shape
            last = _alias(last, op.out.shape)
        out.append((with_activation(op, A.Activation(fn, params), last), algo))
    return out
