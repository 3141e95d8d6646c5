"""Constants and generators: Constant, ConstantOfShape, Range, EyeLike."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req
from walle_core.decompose.movement import ints

Ins = list[A.Tensor | None]


@register("Constant")
def constant(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    attrs = ctx.node.attrs
    if "value" in attrs:
        return [b.const(attrs["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return [b.const(np.array(attrs[key], dtype))]
    if "sparse_value" in attrs:
        return [b.const(attrs["sparse_value"])]
    raise ctx.unsupported(f"Constant attributes {sorted(attrs)}")


@register("ConstantOfShape")
def constant_of_shape(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    shape = ints(b, req(ins[0], "shape")) or []
    value = ctx.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if any(d < 0 for d in shape):
        raise DecomposeError(f"negative dimension in {shape}")
    # a broadcast of the fill value: folded when small, a run-time Raster when large
    return [b.expand(b.const(fill[0], fill.dtype), shape)]


@register("Range")
def range_(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    start, limit, delta = (np.asarray(b.value(req(t))).reshape(()) for t in ins[:3])
    if delta == 0:
        raise DecomposeError("Range delta is 0")
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return [b.const((start + np.arange(n) * delta).astype(req(ins[0]).dtype))]


@register("HannWindow", "HammingWindow", "BlackmanWindow")
def window(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    from walle_core import dtypes

    size = int(np.asarray(b.value(req(ins[0], "size"))).reshape(-1)[0])
    dtype = dtypes.from_onnx(int(ctx.attr("output_datatype", 1)))
    denom = size if ctx.attr("periodic", 1) else size - 1
    n = np.arange(size, dtype=np.float64)
    phase = 2 * np.pi * n / denom if denom else np.zeros_like(n)
    op = ctx.node.op_type
    if op == "HannWindow":
        w = 0.5 - 0.5 * np.cos(phase)
    elif op == "HammingWindow":
        w = 25 / 46 - (21 / 46) * np.cos(phase)
    else:
        w = 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2 * phase)
    return [b.const(w.astype(dtype))]
