"""The composites the cpu backend claims, each one kernel: softmax and log_softmax
(``softmax.c``), layer norm over the last axes (``layer_norm.c``), the LSTM cell
(``lstm_cell.c``) and whole LSTM / GRU directions (``recurrent.c``)."""

from __future__ import annotations

import math
from typing import Any

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu import codes as K
from walle_cpu._native import LIB
from walle_cpu.ops.kernel import Binder, OpKernel, direct_cost

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
    """(xw, rt, h0, c0 | [rbh]) -> (Y, h_final[, c_final]); the outputs after Y travel as
    operands after the inputs (a descriptor has one output)."""
    d.kind = LIB.WL_RECURRENT
    b.bind(d, op, [*op.inputs, *op.outputs[1:]])
    r = d.recurrent
    r.seq, r.batch, r.hidden = op.out.shape
    r.gru = int(op.name == "gru_sequence")
    r.reverse = int(op.attrs["reverse"])  # type: ignore[call-overload]
    r.linear_before_reset = int(op.attrs.get("linear_before_reset", 0))  # type: ignore[call-overload]
    r.has_rbh = int(r.gru and len(op.inputs) == 4)


COMPOSITE = OpKernel((A.Composite,), _supported, _encode, lambda op: (FUSED,))
