"""What an operator mapper sees: its inputs in any layout, constants, options, and how to emit
nodes and define its outputs. Mappers register by TFLite builtin name with :func:`maps`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from walle_core.errors import ModelLoadError, UnsupportedOpError
from walle_core.frontend.tflite.convert import (
    NATIVE,
    NCHW,
    Emitter,
    dequantize,
    map_axis,
    op_error,
)
from walle_core.frontend.tflite.fold import fold_spatial_pads
from walle_core.frontend.tflite.reader import TflOperator, TflTensor

Mapper = Callable[["OpContext"], None]
MAPPERS: dict[str, Mapper] = {}

# ActivationFunctionType: NONE, RELU, RELU_N1_TO_1, RELU6, TANH, SIGN_BIT (the last two clamp nothing)
_CLIPS = {2: (-1.0, 1.0), 3: (0.0, 6.0)}
PADDING = {0: "SAME_UPPER", 1: "VALID"}  # TFLite SAME puts the odd pad after, as SAME_UPPER does


def maps(*names: str) -> Callable[[Mapper], Mapper]:
    def deco(fn: Mapper) -> Mapper:
        for n in names:
            if n in MAPPERS:
                raise RuntimeError(f"TFLite op {n} is mapped twice")
            MAPPERS[n] = fn
        return fn

    return deco


class OpContext:
    def __init__(self, em: Emitter, op: TflOperator) -> None:
        self.em, self.op = em, op

    # ---- reading the operator --------------------------------------------------------------

    def fail(self, detail: str) -> UnsupportedOpError:
        return op_error(self.op, self.em.sub, detail)

    def opt(self, name: str, default: Any = None) -> Any:
        """A builtin option by accessor name (``"StrideW"``), or ``default`` without options."""
        return self.op.options.get(name, default) if self.op.options is not None else default

    def has(self, i: int) -> bool:
        return i < len(self.op.inputs) and self.op.inputs[i] >= 0

    def t(self, i: int) -> TflTensor:
        if not self.has(i):
            raise self.fail(f"input {i} is missing")
        return self.em.tensor(self.op.inputs[i])

    def out_t(self, j: int = 0) -> TflTensor:
        return self.em.tensor(self.op.outputs[j])

    def rank(self, i: int) -> int:
        return len(self.t(i).shape)

    @property
    def hint(self) -> str:
        return self.out_t(0).name if self.op.outputs else self.op.name.lower()

    def is_const(self, i: int) -> bool:
        return self.has(i) and self.op.inputs[i] in self.em.consts

    def const(self, i: int) -> np.ndarray | None:
        """Input ``i``'s real value when known at load (native layout), else None."""
        if not self.is_const(i):
            return None
        c = self.em.consts[self.op.inputs[i]]
        return dequantize(c.raw, c.quant) if c.quant is not None else c.raw

    def ints(self, i: int, what: str) -> list[int]:
        v = self.const(i)
        if v is None:
            raise self.fail(f"{what} (input {i}) must be a constant")
        return [int(a) for a in np.asarray(v).reshape(-1)]

    def has_nchw(self, i: int) -> bool:
        return self.has(i) and self.em.has_form(self.op.inputs[i], NCHW)

    # ---- values ----------------------------------------------------------------------------

    def x(self, i: int, layout: str = NATIVE) -> str:
        """Input ``i``'s real (dequantised) value in ``layout``."""
        return self.em.value(self.t(i).index, layout, real=True)

    def stored(self, i: int, layout: str = NATIVE) -> str:
        """Input ``i`` in its stored type (int8 stays int8)."""
        return self.em.value(self.t(i).index, layout, real=False)

    def weight(self, i: int, perm: Sequence[int]) -> str:
        """A weight permuted into the IR's layout: constants are permuted at load (quantised
        ones behind a DequantizeLinear on the permuted int8 values), others get a Transpose."""
        t = self.t(i).index
        if t in self.em.consts:
            return self.em.const_form(t, perm, real=True)
        return self.one("Transpose", [self.x(i)], perm=list(perm))

    def pick_layout(self, inputs: Sequence[int]) -> str:
        """NCHW when the output is rank 4, every non-constant input is rank 4 and at least one
        of them already exists in NCHW; otherwise the native layout."""
        live = [i for i in inputs if self.has(i) and not self.is_const(i)]
        if len(self.out_t().shape) != 4 or any(self.rank(i) != 4 for i in live):
            return NATIVE
        return NCHW if any(self.has_nchw(i) for i in live) else NATIVE

    def same_quant(self, i: int, j: int = 0) -> bool:
        """Whether input ``i`` and output ``j`` hold the same numbers in the same stored form, so
        a pure data move may copy stored values (no dequantise / quantise round trip)."""
        a, b = self.t(i), self.out_t(j)
        if a.dtype != b.dtype:
            return False
        qa = self.em.quant_of(a.index) if self.em.is_quantized(a.index) else None
        qb = self.em.quant_of(b.index) if self.em.is_quantized(b.index) else None
        if qa is None or qb is None:
            return qa is None and qb is None
        return (qa.axis == qb.axis and np.array_equal(qa.scale, qb.scale)
                and np.array_equal(qa.zero_point, qb.zero_point))

    def data(self, i: int, layout: str = NATIVE, stored: bool = False) -> str:
        return self.stored(i, layout) if stored else self.x(i, layout)

    # ---- emitting --------------------------------------------------------------------------

    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        return self.em.node(op_type, inputs, self.hint, n_out, **attrs)

    def one(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.em.one(op_type, inputs, self.hint, **attrs)

    def ints_init(self, values: Sequence[int]) -> str:
        return self.em.ints(values, self.hint + ":const")

    def scalar(self, value: float, dtype: np.dtype | type = np.float32) -> str:
        return self.em.scalar(value, self.hint + ":const", dtype)

    def out(self, name: str, layout: str = NATIVE, j: int = 0, stored: bool = False) -> None:
        self.em.define(self.op.outputs[j], name, layout, real=not stored)

    def activation(self, y: str, option: str = "FusedActivationFunction") -> str:
        code = int(self.opt(option, 0))
        if code == 0:
            return y
        if code == 1:
            return self.one("Relu", [y])
        if code in _CLIPS:
            lo, hi = _CLIPS[code]
            return self.one("Clip", [y, self.scalar(lo), self.scalar(hi)])
        if code in (4, 5):
            # TFLite's kernels turn a fused activation into a clamp range; TANH and SIGN_BIT
            # have none, so they leave the values as they are (checked against LiteRT).
            return y
        raise self.fail(f"fused activation {code} is not a TFLite activation")

    def padding(self) -> str:
        code = int(self.opt("Padding", 0))
        if code not in PADDING:
            raise self.fail(f"padding {code}")
        return PADDING[code]

    def nchw_axis(self, axis: int, rank: int, layout: str) -> int:
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for rank {rank}")
        return map_axis(axis, rank, layout)


def run_operators(em: Emitter, bindings: Sequence[str]) -> list[str]:
    """Map every operator of ``em.sub`` with its inputs bound to the IR names ``bindings``
    (stored values, native layout); returns its outputs' IR names, likewise."""
    sub = em.sub
    if len(bindings) != len(sub.inputs):
        raise ModelLoadError(f"TFLite subgraph {sub.index} takes {len(sub.inputs)} inputs, got {len(bindings)}")
    for t, name in zip(sub.inputs, bindings, strict=True):
        if t in em.consts:
            raise ModelLoadError(f"TFLite input {sub.tensors[t].name!r} of subgraph {sub.index} is a constant")
        em.forms[(t, NATIVE, False)] = name
    em.fold_constants()
    fold_spatial_pads(em)
    for op in sub.operators:
        if op.index in em.skipped:
            continue
        mapper = MAPPERS.get(op.name)
        if mapper is None:
            raise op_error(op, sub, "no mapping for this operator")
        mapper(OpContext(em, op))
    return [em.value(t, NATIVE, real=False) for t in sub.outputs]
