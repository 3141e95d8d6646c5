"""HardSwish as exporters spell it folds into the producing conv's epilogue on the cpu backend.

Before opset 14 there is no HardSwish op, so exporters write it out: PaddlePaddle (PaddleOCR's
models) ``x * clip(x + 3, 0, 6) / 6``, tf2onnx ``x * relu6(x + 3) * (1/6)``, torch
``x * HardSigmoid(x, alpha=1/6)``. ``walle_core.plan.rewrite.patterns.fold_hardswish`` makes each
one ``Unary hardswish``, which the activation epilogue takes. Each spelling matches onnxruntime,
and the plan shows one ``Conv2D+hardswish`` and no element-wise pass; look-alikes (another
slope, another offset, an intermediate that is also a model output) are left as they are and
still match.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.plugins import registry

pytest.importorskip("onnxruntime")
from tests.zoo.check import TOL, onnxruntime_outputs, worst_error

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")

C = 24


def _model(spelling: str, opset: int = 11, three: float = 3.0, extra_output: str | None = None) -> bytes:
    rng = np.random.default_rng(5)
    inits = []

    def const(name: str, v: object) -> str:
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32), name))
        return name

    w = const("w", rng.uniform(-1, 1, (C, 3, 3, 3)) * 2)
    nodes = [helper.make_node("Conv", ["x", w, const("b", rng.uniform(-1, 1, C))], ["c"], pads=[1, 1, 1, 1])]
    add3 = helper.make_node("Add", ["c", const("three", three)], ["p"])
    clip06 = helper.make_node("Clip", ["p", const("zero", 0.0), const("six", 6.0)], ["r"])
    if spelling == "paddle":         # x * clip(x + 3, 0, 6) / 6
        nodes += [add3, clip06, helper.make_node("Mul", ["c", "r"], ["m"]),
                  helper.make_node("Div", ["m", const("d6", 6.0)], ["h"])]
    elif spelling == "tf2onnx":      # relu6(x + 3) * x * (1/6), operands the other way round
        nodes += [add3, clip06, helper.make_node("Mul", ["r", "c"], ["m"]),
                  helper.make_node("Mul", [const("sixth", 1 / 6), "m"], ["h"])]
    elif spelling == "relu_min":     # x * (min(relu(x + 3), 6) / 6)
        nodes += [add3, helper.make_node("Relu", ["p"], ["q"]),
                  helper.make_node("Min", ["q", const("six", 6.0)], ["r"]),
                  helper.make_node("Div", ["r", const("d6", 6.0)], ["s"]),
                  helper.make_node("Mul", ["c", "s"], ["h"])]
    elif spelling == "clip_attr":    # Clip with attributes (opsets before 11)
        nodes += [add3, helper.make_node("Clip", ["p"], ["r"], min=0.0, max=6.0),
                  helper.make_node("Mul", ["c", "r"], ["m"]),
                  helper.make_node("Div", ["m", const("d6", 6.0)], ["h"])]
    elif spelling.startswith("hardsigmoid"):  # torch before opset 14: x * HardSigmoid(x, 1/6)
        alpha = 1 / 6 if spelling == "hardsigmoid" else 0.2
        nodes += [helper.make_node("HardSigmoid", ["c"], ["s"], alpha=alpha, beta=0.5),
                  helper.make_node("Mul", ["c", "s"], ["h"])]
    nodes.append(helper.make_node("MaxPool", ["h"], ["y"], kernel_shape=[2, 2], strides=[2, 2]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_output:
        outs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _labels(model: walle_core.Model, feeds: dict[str, np.ndarray]) -> list[str]:
    from walle_cpu.compiler import CpuExecutable

    node = model.plan_for(feeds)
    return [lb for step in node.stage.steps if isinstance(step.executable, CpuExecutable)
            for lb in step.executable._labels]


def _run(data: bytes) -> list[str]:
    feeds = {"x": np.random.default_rng(6).uniform(-2, 2, (1, 3, 20, 36)).astype(np.float32)}
    model = walle_core.load(data, backend="cpu", threads=2)
    assert worst_error(model.run(feeds), onnxruntime_outputs(data, feeds)) <= TOL
    assert not model.dropped, model.dropped
    return _labels(model, feeds)


@pytest.mark.parametrize("spelling", ["paddle", "tf2onnx", "relu_min", "clip_attr", "hardsigmoid"])
def test_spelt_out_hardswish_runs_in_the_conv_epilogue(spelling: str) -> None:
    labels = _run(_model(spelling, opset=7 if spelling == "clip_attr" else 11))
    assert labels[0].startswith("Conv2D+hardswish"), labels
    assert not any(lb.startswith(("chain", "Binary", "Unary")) for lb in labels), labels


@pytest.mark.parametrize(("spelling", "three", "extra"), [
    ("hardsigmoid_0.2", 3.0, None),  # HardSigmoid's default slope: x * hardsigmoid(x) is no HardSwish
    ("paddle", 2.5, None),           # clip(x + 2.5, 0, 6) / 6
    ("paddle", 3.0, "r"),            # the clip's result is also a model output
])
def test_look_alikes_are_left_as_they_are(spelling: str, three: float, extra: str | None) -> None:
    labels = _run(_model(spelling, three=three, extra_output=extra))
    assert not any("hardswish" in lb for lb in labels), labels
