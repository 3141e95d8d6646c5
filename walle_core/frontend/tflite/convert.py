"""One TFLite subgraph -> one high-level :class:`Graph` (ONNX op types), with layouts tracked.

TFLite tensors are NHWC; the IR's convolutions, pools and depth/space moves are NCHW. Every
TFLite tensor may exist in the IR in two *layouts*: ``NATIVE`` (as TFLite holds it) and, for
rank-4 tensors, ``NCHW`` (the native tensor permuted by ``(0, 3, 1, 2)``). A form is made once,
when a consumer first asks for it: a Transpose, or a Reshape when only size-1 axes move. Ops that
do not care (element-wise, reductions, concat, pad, slice, resize, ...) work in whatever layout
their inputs already have, with axes remapped, so a chain of convolutions and element-wise ops
stays NCHW from the first transpose after the input to the last one before the output.

Quantised tensors (int8/uint8/int16 with scales) live in the IR in their stored type; a float op
reads ``DequantizeLinear`` of them and its result goes through ``QuantizeLinear`` (QDQ), so the
float decompositions run them and an int8 backend can find the pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from walle_core import dtypes
from walle_core.errors import ModelLoadError, UnsupportedOpError
from walle_core.frontend.tflite.densify import densify
from walle_core.frontend.tflite.reader import Quant, TflModel, TflOperator, TflSubgraph, TflTensor
from walle_core.ir.graph import Dim, Node, TensorType

OPSET = 21
NATIVE, NCHW = "native", "nchw"
TO_NCHW = (0, 3, 1, 2)
TO_NATIVE = (0, 2, 3, 1)
QUANT_TYPES = frozenset(np.dtype(t) for t in (np.int8, np.uint8, np.int16))


def perm_of(layout: str) -> tuple[int, ...] | None:
    return TO_NCHW if layout == NCHW else None


def map_axis(axis: int, rank: int, layout: str) -> int:
    """A native axis -> the same axis in ``layout``."""
    axis = axis + rank if axis < 0 else axis
    return TO_NCHW.index(axis) if layout == NCHW else axis


@dataclass(frozen=True)
class Const:
    """A tensor known at load time: stored values plus the quantisation that gives them meaning."""

    raw: np.ndarray
    quant: Quant | None


class Emitter:
    """Builds one Graph: node and initializer creation, unique names, per-tensor forms."""

    def __init__(self, model: TflModel, sub: TflSubgraph, names: set[str] | None = None,
                 parent: Emitter | None = None, into: Emitter | None = None) -> None:
        """``names``: IR names already taken (shared by nested graphs, so they never clash);
        ``parent``: the emitter whose graph holds this subgraph's (control-flow ancestry);
        ``into``: emit into that emitter's node list instead of a new graph (inlining)."""
        self.model, self.sub = model, sub
        self.nodes: list[Node] = into.nodes if into is not None else []
        self.inits: dict[str, np.ndarray] = into.inits if into is not None else {}
        self.used: set[str] = names if names is not None else set()
        self.ancestry: tuple[int, ...] = (*(parent.ancestry if parent is not None else ()), sub.index)
        self.forms: dict[tuple[int, str, bool], str] = {}  # (tensor, layout, real) -> IR name
        self.consts: dict[int, Const] = {}
        self.skipped: set[int] = set()  # operators folded away at load
        self.folded_pads: dict[int, tuple[int, list[int]]] = {}  # PAD output -> (input, conv pads)
        # resource variables: one store per model (shared with nested and inlined subgraphs),
        # filled by CALL_ONCE's initialisation; handles are per subgraph (tensor -> variable)
        shared = into if into is not None else parent
        self.variables: dict[str, Const] = shared.variables if shared is not None else {}
        self.initialised: set[int] = shared.initialised if shared is not None else set()
        self.handles: dict[int, str] = {}
        for t in sub.tensors:
            if t.data is not None and t.sparsity is None:
                self.consts[t.index] = self._const_of(t.data, t.quant)
            elif t.is_variable and t.data is None and t.dtype is not None:
                # A variable without contents (an RNN's state) starts at zero in every run.
                self.consts[t.index] = self._const_of(np.zeros(t.shape, t.dtype), t.quant)

    # ---- names, nodes, initializers --------------------------------------------------------

    def fresh(self, base: str) -> str:
        base = base or "v"
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def node(self, op_type: str, inputs: Sequence[str], hint: str, n_out: int = 1,
             **attrs: Any) -> list[str]:
        outs = [self.fresh(hint if n_out == 1 else f"{hint}:{i}") for i in range(n_out)]
        self.nodes.append(Node(op_type, list(inputs), outs, attrs, outs[0]))
        return outs

    def one(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        return self.node(op_type, inputs, hint, 1, **attrs)[0]

    def init(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.inits[name] = np.ascontiguousarray(value)
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.init(np.asarray(values, np.int64), hint)

    def scalar(self, value: float, hint: str, dtype: np.dtype | type = np.float32) -> str:
        return self.init(np.asarray(value, dtype), hint)

    # ---- constants -------------------------------------------------------------------------

    def _const_of(self, raw: np.ndarray, quant: Quant | None) -> Const:
        if quant is not None and raw.dtype == np.int32:
            # int32 biases: their scale is input scale x weight scale; only the real value matters.
            return Const(dequantize(raw, quant), None)
        if quant is not None and raw.dtype not in QUANT_TYPES:
            return Const(raw, None)
        return Const(raw, quant)

    def fold_constants(self) -> None:
        """DEQUANTIZE of fp16 weights and DENSIFY of sparse weights become constants at load;
        DEQUANTIZE of int8 weights becomes a constant that keeps its quantisation (so the IR
        holds DequantizeLinear over the int8 values)."""
        for op in self.sub.operators:
            if op.name == "DENSIFY" and op.inputs and op.inputs[0] >= 0:
                src = self.sub.tensors[op.inputs[0]]
                if src.data is not None and src.sparsity is not None:
                    self.consts[op.outputs[0]] = self._const_of(
                        densify(src.data, src.shape, src.sparsity, src.name), src.quant)
                    self.skipped.add(op.index)
            elif op.name == "DEQUANTIZE" and op.inputs and op.inputs[0] in self.consts:
                c = self.consts[op.inputs[0]]
                if c.quant is None:
                    self.consts[op.outputs[0]] = Const(c.raw.astype(np.float32), None)
                else:
                    self.consts[op.outputs[0]] = c
                self.skipped.add(op.index)

    def const_form(self, t: int, perm: Sequence[int] | None, real: bool, rank: int | None = None) -> str:
        """A constant in a layout: ``rank`` first pads it with leading 1s (broadcast alignment),
        ``perm`` permutes it; quantised constants keep their type behind a DequantizeLinear."""
        c = self.consts[t]
        raw = c.raw
        per_channel = c.quant is not None and c.quant.per_channel
        quant_axis = c.quant.axis if c.quant is not None and per_channel else 0
        if rank is not None and raw.ndim < rank:
            quant_axis += rank - raw.ndim
            raw = raw.reshape((1,) * (rank - raw.ndim) + raw.shape)
        if perm is not None:
            raw = np.transpose(raw, perm)
            quant_axis = list(perm).index(quant_axis) if per_channel else 0
        hint = self.sub.tensors[t].name
        if c.quant is None or not real:
            return self.init(raw, hint)
        params, extra = self.qparams(c.quant, raw.dtype, NATIVE, hint)
        if c.quant.per_channel:
            extra = {"axis": quant_axis}
        return self.one("DequantizeLinear", [self.init(raw, hint), *params], hint + ":dq", **extra)

    # ---- tensor forms ----------------------------------------------------------------------

    def tensor(self, t: int) -> TflTensor:
        return self.sub.tensors[t]

    def is_quantized(self, t: int) -> bool:
        tt = self.tensor(t)
        if t in self.consts:
            return self.consts[t].quant is not None
        return tt.quant is not None and tt.dtype in QUANT_TYPES

    def quant_of(self, t: int) -> Quant:
        q = self.consts[t].quant if t in self.consts else self.tensor(t).quant
        assert q is not None
        return q

    def value(self, t: int, layout: str = NATIVE, real: bool = True) -> str:
        """Tensor ``t`` in ``layout``; ``real``: dequantised if it is quantised. A constant of
        lower rank asked for in NCHW is first aligned to rank 4 (it is a broadcast operand)."""
        key = (t, layout, real)
        if key in self.forms:
            return self.forms[key]
        tt = self.tensor(t)
        if not self.is_quantized(t) and (t, layout, not real) in self.forms:
            return self.forms[(t, layout, not real)]  # stored and real forms are the same
        if t in self.consts:
            name = self.const_form(t, perm_of(layout), real, 4 if layout == NCHW else None)
        elif layout == NCHW and len(tt.shape) != 4:
            raise ModelLoadError(f"internal: rank-{len(tt.shape)} tensor {tt.name!r} asked for in NCHW")
        elif real and self.is_quantized(t):
            assert tt.dtype is not None
            name = self.dequantize(self.value(t, layout, real=False), self.quant_of(t), tt.dtype,
                                   layout, tt.name)
        else:
            other = NCHW if layout == NATIVE else NATIVE
            src = self.forms.get((t, other, real)) or self.forms.get((t, other, not real))
            if src is None:
                raise ModelLoadError(f"TFLite tensor {tt.name!r} is read before it is written")
            name = self.relayout(src, tt, layout)
        self.forms[key] = name
        return name

    def has_form(self, t: int, layout: str) -> bool:
        return (t, layout, True) in self.forms or (t, layout, False) in self.forms

    def qparams(self, q: Quant, stored: np.dtype, layout: str, hint: str) -> tuple[list[str], dict[str, Any]]:
        """Scale and zero-point initializers (scalars, or vectors with the axis in ``layout``)."""
        if q.per_channel:
            axis = map_axis(q.axis, 4, layout) if layout == NCHW else q.axis
            return ([self.init(q.scale, hint + ":scale"), self.init(q.zero_point.astype(stored), hint + ":zero_point")],
                    {"axis": axis})
        return ([self.init(q.scale.reshape(()), hint + ":scale"),
                 self.init(q.zero_point.reshape(()).astype(stored), hint + ":zero_point")], {})

    def dequantize(self, name: str, q: Quant, stored: np.dtype, layout: str, hint: str) -> str:
        params, extra = self.qparams(q, stored, layout, hint)
        return self.one("DequantizeLinear", [name, *params], hint + ":dq", **extra)

    def relayout(self, src: str, tt: TflTensor, to: str) -> str:
        hint = f"{tt.name}:{to}"
        if moves_only_unit_axes(tt):
            shape = [tt.shape[a] for a in TO_NCHW] if to == NCHW else list(tt.shape)
            if 0 in tt.dynamic_axes():
                shape[0] = 0  # Reshape's 0 copies the (dynamic) batch
            return self.one("Reshape", [src, self.ints(shape, hint + ":shape")], hint)
        return self.one("Transpose", [src], hint, perm=list(TO_NCHW if to == NCHW else TO_NATIVE))

    def define(self, t: int, name: str, layout: str = NATIVE, real: bool = True) -> None:
        """Record the result of an op for output tensor ``t``. A real (float) result for a
        quantised tensor is quantised here, so every reader sees TFLite's rounding."""
        if real and self.is_quantized(t):
            tt = self.tensor(t)
            assert tt.dtype is not None
            params, extra = self.qparams(self.quant_of(t), tt.dtype, layout, tt.name)
            name = self.one("QuantizeLinear", [name, *params], tt.name, **extra)
            real = False
        self.forms[(t, layout, real)] = name


def moves_only_unit_axes(tt: TflTensor) -> bool:
    """Whether NHWC <-> NCHW keeps ``tt``'s element order (only size-1 axes move), so a Reshape
    can stand in for the Transpose. Dynamic axes other than the batch count as >1."""
    if len(tt.shape) != 4:
        return False
    dynamic = set(tt.dynamic_axes())
    big = [a for a in TO_NCHW if tt.shape[a] != 1 or a in dynamic]
    return big == sorted(big)


def dequantize(raw: np.ndarray, q: Quant) -> np.ndarray:
    if not q.per_channel:
        return ((raw.astype(np.float64) - q.zero_point[0]) * q.scale[0]).astype(np.float32)
    shape = [1] * raw.ndim
    shape[q.axis] = -1
    zp = q.zero_point.reshape(shape)
    return ((raw.astype(np.float64) - zp) * q.scale.reshape(shape)).astype(np.float32)


def tensor_type(tt: TflTensor, base: str) -> TensorType:
    if tt.dtype is None:
        raise ModelLoadError(f"TFLite tensor {tt.name!r} has type {tt.type_name}, which Walle cannot hold")
    if tt.dtype not in dtypes.SUPPORTED:
        raise ModelLoadError(f"TFLite tensor {tt.name!r} has unsupported type {tt.type_name}")
    dims: list[Dim] = []
    sig = tt.signature if tt.signature is not None and len(tt.signature) == len(tt.shape) else None
    for axis, d in enumerate(tt.shape):
        if sig is not None and sig[axis] < 0:
            dims.append("batch" if axis == 0 else f"{base}_{axis}")
        else:
            dims.append(int(d))
    return TensorType(tt.dtype, tuple(dims))


def op_error(op: TflOperator, sub: TflSubgraph, detail: str) -> UnsupportedOpError:
    """Names the operator, its index, subgraph and op code, as every load-time refusal does."""
    return UnsupportedOpError(op.name, f"operator #{op.index} of subgraph {sub.index}", OPSET,
                              f"TFLite op code {op.code} (version {op.version}): {detail}")
