"""Element-wise TFLite operators: activations, arithmetic with fused activations, comparisons,
casts and (de)quantisation. They run in whichever layout their inputs already have."""

from __future__ import annotations

import numpy as np

from walle_core import dtypes
from walle_core.frontend.tflite.context import OpContext, maps

UNARY = {
    "LOGISTIC": "Sigmoid", "TANH": "Tanh", "RELU": "Relu", "HARD_SWISH": "HardSwish",
    "ABS": "Abs", "EXP": "Exp", "LOG": "Log", "SQRT": "Sqrt", "NEG": "Neg", "FLOOR": "Floor",
    "CEIL": "Ceil", "ROUND": "Round", "SIN": "Sin", "COS": "Cos", "ELU": "Elu", "SIGN": "Sign",
    "LOGICAL_NOT": "Not",
}
CLIPS = {"RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0), "RELU_0_TO_1": (0.0, 1.0)}
BINARY = {
    "ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "MAXIMUM": "Max", "MINIMUM": "Min",
    "POW": "Pow", "LESS": "Less", "LESS_EQUAL": "LessOrEqual", "GREATER": "Greater",
    "GREATER_EQUAL": "GreaterOrEqual", "EQUAL": "Equal", "LOGICAL_AND": "And", "LOGICAL_OR": "Or",
}


@maps(*UNARY)
def unary(c: OpContext) -> None:
    layout = c.pick_layout([0])
    c.out(c.one(UNARY[c.op.name], [c.x(0, layout)]), layout)


@maps(*CLIPS)
def clip(c: OpContext) -> None:
    layout = c.pick_layout([0])
    lo, hi = CLIPS[c.op.name]
    c.out(c.one("Clip", [c.x(0, layout), c.scalar(lo), c.scalar(hi)]), layout)


@maps("RSQRT")
def rsqrt(c: OpContext) -> None:
    layout = c.pick_layout([0])
    c.out(c.one("Reciprocal", [c.one("Sqrt", [c.x(0, layout)])]), layout)


@maps("SQUARE")
def square(c: OpContext) -> None:
    layout = c.pick_layout([0])
    x = c.x(0, layout)
    c.out(c.one("Mul", [x, x]), layout)


@maps("LEAKY_RELU")
def leaky_relu(c: OpContext) -> None:
    layout = c.pick_layout([0])
    c.out(c.one("LeakyRelu", [c.x(0, layout)], alpha=float(c.opt("Alpha", 0.2))), layout)


@maps("GELU")
def gelu(c: OpContext) -> None:
    layout = c.pick_layout([0])
    approximate = "tanh" if c.opt("Approximate", False) else "none"
    c.out(c.one("Gelu", [c.x(0, layout)], approximate=approximate), layout)


@maps("PRELU")
def prelu(c: OpContext) -> None:
    layout = c.pick_layout([0, 1])
    c.out(c.one("PRelu", [c.x(0, layout), c.x(1, layout)]), layout)


@maps(*BINARY)
def binary(c: OpContext) -> None:
    if c.t(0).dtype == np.int16 and c.opt("PotScaleInt16", False):
        raise c.fail("power-of-two int16 scaling is not supported")
    layout = c.pick_layout([0, 1])
    y = c.one(BINARY[c.op.name], [c.x(0, layout), c.x(1, layout)])
    c.out(c.activation(y), layout)  # comparisons have no such option: activation() reads NONE


@maps("SQUARED_DIFFERENCE")
def squared_difference(c: OpContext) -> None:
    layout = c.pick_layout([0, 1])
    d = c.one("Sub", [c.x(0, layout), c.x(1, layout)])
    c.out(c.one("Mul", [d, d]), layout)


@maps("FLOOR_DIV")
def floor_div(c: OpContext) -> None:
    layout = c.pick_layout([0, 1])
    out = c.out_t().dtype
    if out is None or not dtypes.is_float(out):
        raise c.fail(f"FLOOR_DIV on {c.out_t().type_name} is not supported")
    c.out(c.one("Floor", [c.one("Div", [c.x(0, layout), c.x(1, layout)])]), layout)


@maps("SELECT", "SELECT_V2")
def select(c: OpContext) -> None:
    layout = c.pick_layout([0, 1, 2])
    c.out(c.one("Where", [c.x(0, layout), c.x(1, layout), c.x(2, layout)]), layout)


@maps("CAST")
def cast(c: OpContext) -> None:
    # CAST converts stored values; quantisation parameters play no part.
    layout = c.pick_layout([0])
    to = c.out_t().dtype
    if to is None or to not in dtypes.SUPPORTED:
        raise c.fail(f"cast to {c.out_t().type_name}")
    c.out(c.one("Cast", [c.stored(0, layout)], to=dtypes.to_onnx(to)), layout, stored=True)


@maps("DEQUANTIZE")
def dequantize(c: OpContext) -> None:
    layout = c.pick_layout([0])
    x = c.x(0, layout)
    if c.t(0).dtype == np.float16:
        x = c.one("Cast", [x], to=dtypes.to_onnx(np.dtype(np.float32)))
    c.out(x, layout)


@maps("QUANTIZE")
def quantize(c: OpContext) -> None:
    # Float -> int8, or int8 -> int8 under new parameters: both are dequantise, then quantise.
    if not c.em.is_quantized(c.out_t().index):
        raise c.fail(f"output {c.out_t().name!r} has no quantisation parameters")
    layout = c.pick_layout([0])
    c.out(c.x(0, layout), layout)


@maps("ADD_N")
def add_n(c: OpContext) -> None:
    n = len(c.op.inputs)
    layout = c.pick_layout(range(n))
    c.out(c.one("Sum", [c.x(i, layout) for i in range(n)]), layout)
