"""Fused element-wise chains (``chain.c``): a run of fp32 Unary/Binary ops whose intermediates
nobody else reads becomes one op that loads each block of a row once, runs every step on it in
registers and stores it once. A rewrite of this backend only: the chain kernel's limits (five
operands, eight dimensions) are its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.decompose.builder import contiguous
from walle_cpu import codes as K
from walle_cpu._native import LIB
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
