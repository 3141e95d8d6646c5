"""The composites the cpu backend claims, each one kernel: softmax and log_softmax
(``softmax.c``), layer norm over the last axes (``layer_norm.c``), the LSTM cell
(``lstm_cell.c``) and whole LSTM / GRU directions (``recurrent.c``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel, direct_cost
from walle_cpu.ops.matmul import pack_panels

FUSED = Algorithm("fused", direct_cost(0.3, flop_scale=12.0))  # ~12 flops per element (exp)


def _supported(op: A.Op) -> bool:
    assert isinstance(op, A.Composite)
    if op.name == "layer_norm" and not _layer_norm_rows(op):
        return False
    return op.name in K.COMPOSITES and all(t.dtype == K.F32 for t in (*op.inputs, *op.outputs))


def _layer_norm_rows(op: A.Composite) -> tuple[int, int] | None:
    """(rows, n) of a layer norm over the axes from ``axis`` on, when its scale and bias hold
    one value per element of a row (the kernel's form; a broadcast one runs the expansion)."""
    x = op.inputs[0]
    axis = int(op.attrs["axis"])  # type: ignore[call-overload]
    if len(op.outputs) != 1 or op.out.shape != x.shape:
        return None

    def core(shape: tuple[int, ...]) -> tuple[int, ...]:  # without leading 1s
        lead = next((i for i, d in enumerate(shape) if d != 1), len(shape))
        return tuple(shape[lead:])

    if any(core(t.shape) != core(x.shape[axis:]) for t in op.inputs[1:]):
        return None
    return math.prod(x.shape[:axis]), math.prod(x.shape[axis:])


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Composite)
    if op.name == "lstm_cell":  # (gates iofc, c) -> (h, c)
        d.kind = LIB.WL_LSTM_CELL
        # the second output travels as a third operand (a descriptor has one output)
        b.bind(d, op, [*op.inputs, op.outputs[1]])
        d.lstm.batch, d.lstm.hidden = op.out.shape[0], int(op.attrs["hidden"])  # type: ignore[call-overload]
        return
    if op.name in ("lstm_sequence", "gru_sequence"):
        _encode_sequence(d, op, b)
        return
    if op.name == "layer_norm":  # (x, scale, [bias]) -> y
        d.kind = LIB.WL_LAYER_NORM
        b.bind(d, op)
        rows = _layer_norm_rows(op)
        assert rows is not None
        ln = d.layer_norm
        ln.rows, ln.n = rows
        ln.has_bias = int(len(op.inputs) > 2)
        ln.eps = float(op.attrs["epsilon"])  # type: ignore[arg-type]
        return
    d.kind = LIB.WL_SOFTMAX  # softmax / log_softmax over one axis
    b.bind(d, op)
    shape, axis = op.inputs[0].shape, int(op.attrs["axis"])  # type: ignore[call-overload]
    s = d.softmax
    s.outer, s.n, s.inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    s.log = int(op.name == "log_softmax")


def _encode_sequence(d: Any, op: A.Composite, b: Binder) -> None:
    """(xw, rt, h0, c0 | [rbh]) -> (Y, h_final[, c_final]) per direction (both of a
    bidirectional layer in turn); the outputs after the first Y travel as operands after the
    inputs (a descriptor has one output)."""
    d.kind = LIB.WL_RECURRENT
    b.bind(d, op, [*op.inputs, *op.outputs[1:]])
    r = d.recurrent
    r.seq, r.batch, r.hidden = op.out.shape
    r.gru = int(op.name == "gru_sequence")
    r.reverse = int(op.attrs["reverse"])  # type: ignore[call-overload]
    r.linear_before_reset = int(op.attrs.get("linear_before_reset", 0))  # type: ignore[call-overload]
    dirs = int(op.attrs.get("directions", 1))  # type: ignore[call-overload]
    if dirs > 1:  # 0 (the descriptor's zero) reads as 1
        r.dirs = dirs
    r.has_rbh = int(r.gru and len(op.inputs) == 4 * dirs)
    gru, lbr = bool(r.gru), bool(r.linear_before_reset)
    chunks = unit_chunks(r.batch, r.hidden, gru, lbr, dirs)
    packed = _packed_recurrent(op, dirs, r.hidden, gru, lbr, chunks)
    if packed is not None:
        d.aux = b.aux(packed)
        r.chunks = chunks  # the per-chunk packing needs R constant


def unit_chunks(batch: int, hidden: int, gru: bool, lbr: bool, dirs: int) -> int:
    """Into how many chunks of hidden units each step of one direction splits across threads
    (1: none). Off unless ``WALLE_RECURRENT_CHUNKS`` asks: on the shared 2-core machine the
    split measured 2-8% slower than the whole step on one thread (bench/recurrent_split.py:
    a wait per step for a thread that often has no core), so it stays a measured option.
    The GRU without linear_before_reset multiplies the whole r vector into h_prev before its
    last product, so it never splits; a bidirectional layer's directions already run apart."""
    forced = flags.recurrent_chunks()
    if forced is None or dirs != 1 or (gru and not lbr):
        return 1
    return max(1, min(forced, hidden, 64))


def _packed_recurrent(op: A.Composite, dirs: int, hidden: int, gru: bool, lbr: bool,
                      chunks: int = 1) -> np.ndarray | None:
    """Constant R^T of every direction packed into GEMM panels once, here, as recurrent.c
    otherwise packs it on every run: all gates, or (GRU without linear_before_reset) z and r,
    then the h gate's columns; with ``chunks`` > 1, per chunk of hidden units every gate's
    columns of those units (recurrent.c's split steps). None when R is computed."""
    per_dir = len(op.inputs) // dirs
    rts = [op.inputs[i * per_dir + 1].value for i in range(dirs)]
    if any(rt is None for rt in rts):
        return None
    gates = 3 if gru else 4
    cuts = [0, 2 * hidden, 3 * hidden] if gru and not lbr else [0, gates * hidden]
    parts = []
    for rt in rts:
        full = np.asarray(rt, np.float32).reshape(hidden, gates * hidden)
        if chunks > 1:  # chunk i: units [i * hidden // chunks, (i + 1) * hidden // chunks)
            for i in range(chunks):
                u0, u1 = i * hidden // chunks, (i + 1) * hidden // chunks
                cols = np.concatenate([np.arange(g * hidden + u0, g * hidden + u1) for g in range(gates)])
                parts.append(pack_panels(full[:, cols], hidden, len(cols)))
            continue
        parts += [pack_panels(full[:, lo:hi], hidden, hi - lo) for lo, hi in itertools.pairwise(cuts)]
    return np.concatenate(parts)


COMPOSITE = OpKernel((A.Composite,), _supported, _encode, lambda op: (FUSED,))
