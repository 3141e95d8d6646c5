"""Half-precision weights (``walle convert --fp16``): half the download, the same float32 math.

Every float32 initializer of at least ``MIN_ELEMENTS`` elements is stored as float16 and read
through a ``Cast(to=FLOAT)`` under its old name, so the graph computes exactly as before on the
rounded weights. Walle folds those casts at plan time, so every backend runs the model with
float32 kernels and no per-run cost. Values beyond float16's range are an error (they would
become infinities).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from walle_core.errors import InputError

MIN_ELEMENTS = 16  # small tensors (shapes, scalars) stay float32: nothing to gain
F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Fp16Result:
    model: onnx.ModelProto
    converted: int
    bytes_before: int
    bytes_after: int


def weights_to_fp16(model: onnx.ModelProto) -> Fp16Result:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    kept: list[onnx.TensorProto] = []
    casts: list[onnx.NodeProto] = []
    before = after = converted = 0
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        before += arr.nbytes
        if init.data_type != TensorProto.FLOAT or arr.size < MIN_ELEMENTS:
            kept.append(init)
            after += arr.nbytes
            continue
        peak = float(np.nanmax(np.abs(arr))) if arr.size else 0.0
        if peak > F16_MAX:
            raise InputError(f"initializer {init.name!r} holds {peak:g}, beyond float16's range")
        half = arr.astype(np.float16)
        kept.append(numpy_helper.from_array(half, f"{init.name}_fp16"))
        casts.append(helper.make_node("Cast", [f"{init.name}_fp16"], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}_to_fp32"))
        after += half.nbytes
        converted += 1
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = [*casts, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    # a graph input that doubled as an initializer (an overridable default) stays float32
    names = {i.name for i in g.initializer}
    for vi in g.input:
        if vi.name not in names and any(c.output[0] == vi.name for c in casts):
            raise InputError(f"input {vi.name!r} has a default value; convert would hide it")
    onnx.checker.check_model(out)
    return Fp16Result(out, converted, before, after)
