"""Fused element-wise chains (``chain.c``): a run of fp32 Unary/Binary ops whose intermediates
nobody else reads becomes one op that loads each block of a row once, runs every step on it in
registers and stores it once. A rewrite of this backend only: the chain kernel's limits (five
operands, eight dimensions) are its own.

After the blocked layout, a PRelu chain that reads only a blocked conv's output moves into that
conv's epilogue (:func:`fuse_prelu`): the conv stores PRelu of its sums, and the pass over the
output (two where a model mixes slopes below and above 1) is gone."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.decompose.builder import contiguous
from walle_cpu import codes as K
from walle_cpu import layout
from walle_cpu._native import LIB
from walle_cpu.ops.conv import CONV
from walle_cpu.ops.elementwise import MAX_DIMS, set_nd
from walle_cpu.ops.kernel import Binder, OpKernel

# Binary functions a chain may contain (fp32 in, fp32 out)
CHAIN_BINARY = frozenset({"add", "sub", "mul", "div", "pow", "max", "min", "mod", "fmod", "atan2"})
MAX_OPERANDS = int(LIB.WL_MAX_OPERANDS) if LIB is not None else 0  # inputs of a chain (wl.h)


class Chain(A.Op):
    """A fused run of fp32 Unary/Binary ops (internal to this backend)."""

    kind = A.Kind.UNARY

    def __init__(self, ops: list[A.Op]) -> None:
        super().__init__(inputs=[t for o in ops for t in o.inputs], outputs=[ops[-1].out])
        self.ops = ops


def _fusable(op: A.Op) -> bool:
    if op.out.dtype != K.F32 or op.out.size == 0:
        return False
    if isinstance(op, A.Unary):
        return op.fn in K.FLOAT_UNARY and op.fn not in K.PREDICATES and op.inputs[0].dtype == K.F32
    if isinstance(op, A.Binary):
        return op.fn in CHAIN_BINARY and op.inputs[0].dtype == K.F32 and len(op.out.shape) <= MAX_DIMS
    return False


class _Operands:
    """The chain's distinct operands, one stride row each: a tensor read twice under the same
    strides (even through two Tensor objects of one buffer, so by id) takes one row. Both the
    fusion's limit check and the encoder count through this, so they cannot disagree."""

    def __init__(self) -> None:
        self.tensors: list[A.Tensor] = []
        self.strides: list[list[int]] = []

    def index(self, t: A.Tensor, st: Sequence[int]) -> int:
        for i, (o, s) in enumerate(zip(self.tensors, self.strides, strict=True)):
            if o.id == t.id and s == list(st):
                return i
        self.tensors.append(t)
        self.strides.append(list(st))
        return len(self.tensors) - 1


def _program(ops: list[A.Op]) -> tuple[_Operands, list[list[int]], list[list[float]]]:
    """The chain as chain.c runs it: operands, steps (mode, fn, operand, 0) and their params."""
    operands = _Operands()
    first = ops[0]
    if isinstance(first, A.Unary):
        operands.index(first.inputs[0], contiguous(first.out.shape))
    else:
        assert isinstance(first, A.Binary)
        operands.index(first.inputs[0], first.strides[0])
    steps: list[list[int]] = []
    params: list[list[float]] = []
    prev: A.Tensor | None = None
    for op in ops:  # the register starts as the first op's first operand
        if isinstance(op, A.Unary):
            steps.append([0, K.UNARY_FNS[op.fn], 0, 0])
            params.append(list(op.params[:4]))
        elif prev is None or op.inputs[0] is prev:  # reg = reg (fn) operand
            assert isinstance(op, A.Binary)
            steps.append([1, K.BINARY_FNS[op.fn], operands.index(op.inputs[1], op.strides[1]), 0])
            params.append([])
        else:  # reg = operand (fn) reg
            assert isinstance(op, A.Binary)
            steps.append([2, K.BINARY_FNS[op.fn], operands.index(op.inputs[0], op.strides[0]), 0])
            params.append([])
        prev = op.out
    return operands, steps, params


def fits(ops: list[A.Op]) -> bool:
    """Whether the kernel's operand rows hold the chain ``ops``."""
    return len(_program(ops)[0].tensors) <= MAX_OPERANDS


def fuse_chains(items: Sequence[tuple[A.Op, Algorithm]], external: set[int]) -> list[tuple[A.Op, Algorithm]]:
    """Merge runs of fusable ops, each reading the previous one's output (its only reader, dense)."""
    uses: dict[int, int] = {}
    for op, _ in items:
        for t in op.inputs:
            uses[t.id] = uses.get(t.id, 0) + 1
    out: list[tuple[A.Op, Algorithm]] = []
    chain: list[A.Op] = []

    def continues(prev: A.Op, op: A.Op) -> bool:
        t = prev.out
        if t.id in external or uses.get(t.id, 0) != 1 or op.out.shape != t.shape:
            return False
        if isinstance(op, A.Unary):
            return op.inputs[0] is t
        assert isinstance(op, A.Binary)
        hits = [i for i, x in enumerate(op.inputs) if x is t]
        if len(hits) != 1:
            return False
        return tuple(op.strides[hits[0]]) == tuple(contiguous(t.shape)) \
            and fits([*chain, op])

    def flush() -> None:
        if len(chain) >= 2:
            out.append((Chain(list(chain)), Algorithm("fused-elementwise")))
        else:
            out.extend((o, Algorithm("direct")) for o in chain)
        chain.clear()

    for op, algo in items:
        if _fusable(op) and chain and continues(chain[-1], op):
            chain.append(op)
            continue
        flush()
        if _fusable(op):
            chain.append(op)
        else:
            out.append((op, algo))
    flush()
    return out


def _encode(d: Any, ch: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(ch, Chain)
    operands, steps, params = _program(ch.ops)
    d.kind = LIB.WL_CHAIN
    b.bind(d, ch, operands.tensors)
    set_nd(d.nd, ch.out.shape, operands.strides)
    d.nd.n_steps = len(steps)
    d.aux = b.aux(np.array(steps, dtype=np.int64))
    prm = np.zeros((len(steps), 4), np.float64)
    for i, p in enumerate(params):
        prm[i, : len(p)] = p
    d.aux2 = b.aux(prm)


def label(ch: Chain) -> str:
    names = "+".join(getattr(o, "fn", o.kind.value) for o in ch.ops)
    return f"chain[{names}] {list(ch.out.shape)}"


CHAIN = OpKernel((Chain,), lambda op: True, _encode)


# ------------------------------------------------------------------ PRelu in a conv's epilogue


@dataclasses.dataclass(eq=False)
class PreluConv(layout.BlockedConv):
    """A blocked conv whose epilogue ends with PRelu (after the bias and the residual; its
    ``act`` is the identity): ``slope`` holds the per-channel slopes padded to whole blocks."""

    slope: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))


def _reads(op: A.Op, t: A.Tensor) -> list[int]:
    return [i for i, x in enumerate(op.inputs) if x.id == t.id]


def prelu_slope(ch: A.Op, x: A.Tensor, channels: int) -> np.ndarray | None:
    """The per-channel slopes (padded to whole blocks) when the blocked chain ``ch`` is PRelu of
    ``x`` as the PRelu decomposition writes it: ``max(x * s, x)`` with every slope <= 1, or
    ``min(x * s, x)`` with every slope >= 1, ``s`` a constant channel vector or scalar; else None."""
    if not isinstance(ch, Chain) or len(ch.ops) != 2:
        return None
    mul, ext = ch.ops
    if not (isinstance(mul, A.Binary) and mul.fn == "mul" and isinstance(ext, A.Binary)
            and ext.fn in ("max", "min")) or x.shape != ch.out.shape or len(x.shape) != 5:
        return None
    dense = tuple(contiguous(x.shape))
    k, e = _reads(mul, x), _reads(ext, x)
    if len(k) != 1 or len(e) != 1 or _reads(ext, mul.out) != [1 - e[0]] \
            or tuple(mul.strides[k[0]]) != dense or tuple(ext.strides[0]) != dense \
            or tuple(ext.strides[1]) != dense:
        return None
    s, st = mul.inputs[1 - k[0]], tuple(mul.strides[1 - k[0]])
    nb = x.shape[1] * x.shape[4]
    if s.value is None or s.dtype != K.F32:
        return None
    v = np.asarray(s.value, np.float32).reshape(-1)
    if v.size == 1 and not any(st):
        slope = np.full(nb, v[0], np.float32)
    elif v.size == nb and st == (0, layout.BLK, 0, 0, 1):
        slope = v.copy()
    else:
        return None
    real = slope[:channels]
    if not np.all(np.isfinite(real)) or not np.all(real <= 1 if ext.fn == "max" else real >= 1):
        return None
    return slope


def fuse_prelu(items: Sequence[tuple[A.Op, Algorithm]], external: set[int]) -> list[tuple[A.Op, Algorithm]]:
    """Fold each PRelu chain (:func:`prelu_slope`) that is the only reader of a blocked conv's
    output into the conv's epilogue; the conv then writes the chain's output. A second PRelu
    after the first (a model with slopes on both sides of 1 takes one pass per side) composes
    with it: PRelu(b) after PRelu(a) is PRelu(a * b) in each channel where a > 0 (a negative
    input stays negative) or b == 1 (the second one is the identity there)."""
    readers: dict[int, list[int]] = {}
    for i, (op, _) in enumerate(items):
        for t in {t.id for t in op.inputs}:
            readers.setdefault(t, []).append(i)
    out: list[tuple[A.Op, Algorithm] | None] = list(items)
    for i, (op, _) in enumerate(items):
        conv_at = None
        prev = op.inputs[0] if isinstance(op, Chain) else None
        if prev is not None and prev.id not in external and readers.get(prev.id) == [i]:
            conv_at = next((j for j in range(i - 1, -1, -1)
                            if out[j] is not None and out[j][0].out.id == prev.id), None)  # type: ignore[index]
        if conv_at is None:
            continue
        conv, algo = out[conv_at]  # type: ignore[misc]
        if not isinstance(conv, layout.BlockedConv) or conv.act.fn != "identity":
            continue
        slope = prelu_slope(op, conv.out, conv.plain_out[1])
        if slope is None:
            continue
        if isinstance(conv, PreluConv):
            c = conv.plain_out[1]
            if not np.all((conv.slope[:c] > 0) | (slope[:c] == 1)):
                continue
            slope = conv.slope * slope
        fields = {f.name: getattr(conv, f.name) for f in dataclasses.fields(layout.BlockedConv) if f.init}
        fields.update(outputs=[op.out], slope=slope)
        out[conv_at] = (PreluConv(**fields), algo)
        out[i] = None
    return [x for x in out if x is not None]


def _encode_prelu_conv(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, PreluConv)
    CONV.encode(d, op, algo, b)
    d.conv.prelu = 1
    has_bias = len(op.inputs) - op.residual > 2
    bias = layout.pad_bias(op.inputs[2].value if has_bias else None, op.inputs[1].shape[0])
    d.aux2 = b.aux(np.concatenate([bias, op.slope]).astype(np.float32))


PRELU_CONV = OpKernel((PreluConv,), lambda op: True, _encode_prelu_conv)
