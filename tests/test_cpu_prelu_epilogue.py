"""PRelu after a blocked conv runs in the conv's epilogue on the cpu backend (``fuse_prelu`` in
``walle_cpu.ops.chain``): the conv stores x >= 0 ? x : a * x of its sums (after the bias and a
residual), so neither PRelu pass is left — one where every slope is on one side of 1, two
where a model mixes them. Results match the reference backend; labels show the fusion."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")

SLOPES = {
    "below_one": lambda c, rng: rng.uniform(-0.5, 1.0, c),
    "above_one": lambda c, rng: rng.uniform(1.0, 4.0, c),
    "mixed": lambda c, rng: rng.uniform(-0.5, 3.0, c),
    "scalar": lambda c, rng: np.array([0.2]),
}


def _model(c: int, slope: np.ndarray, rng: np.random.Generator) -> bytes:
    """stem conv -> PRelu -> depthwise 3x3 -> PRelu -> 1x1 conv + residual -> PRelu."""
    inits, nodes = [], []

    def const(name: str, v: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        return name

    def conv(x: str, y: str, cin: int, k: int, group: int = 1) -> None:
        w = const(f"{y}_w", rng.uniform(-0.5, 0.5, (c, cin // group, k, k)))
        b = const(f"{y}_b", rng.uniform(-0.5, 0.5, c))
        nodes.append(helper.make_node("Conv", [x, w, b], [y], pads=[k // 2] * 4, group=group))

    a = const("slope", slope.reshape(-1, 1, 1) if slope.size > 1 else slope)
    conv("x", "c1", 3, 3)
    nodes.append(helper.make_node("PRelu", ["c1", a], ["p1"]))
    conv("p1", "c2", c, 3, group=c)
    nodes.append(helper.make_node("PRelu", ["c2", a], ["p2"]))
    conv("p2", "c3", c, 1)
    nodes.append(helper.make_node("Add", ["c3", "p1"], ["s3"]))
    nodes.append(helper.make_node("PRelu", ["s3", a], ["y"]))
    g = helper.make_graph(nodes, "prelu_convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 13, 11])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _labels(model: walle_core.Model, feeds: dict[str, np.ndarray]) -> list[str]:
    from walle_cpu.compiler import CpuExecutable

    node = model.plan_for(feeds)
    return [lb for step in node.stage.steps if isinstance(step.executable, CpuExecutable)
            for lb in step.executable._labels]


@pytest.mark.parametrize("c", [20, 32])
@pytest.mark.parametrize("case", sorted(SLOPES))
def test_prelu_runs_in_the_blocked_conv_epilogue(case: str, c: int) -> None:
    rng = np.random.default_rng(len(case) + c)
    slope = SLOPES[case](c, rng).astype(np.float32)
    data = _model(c, slope, rng)
    x = rng.uniform(-2, 2, (2, 3, 13, 11)).astype(np.float32)
    want = walle_core.load(data, backend="reference").run({"x": x})["y"]
    for threads in (1, 2):
        model = walle_core.load(data, backend="cpu", threads=threads)
        got = model.run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))
        labels = _labels(model, {"x": x})
        assert sum("+prelu nchwc" in lb for lb in labels) == 3, labels
        assert not any(lb.startswith(("chain", "Binary", "Select")) for lb in labels), labels


def test_a_conv_output_read_elsewhere_keeps_its_prelu_pass() -> None:
    """The conv's output is also a graph output: PRelu cannot take its place."""
    rng = np.random.default_rng(3)
    c = 16
    w = numpy_helper.from_array(rng.uniform(-0.5, 0.5, (c, 3, 3, 3)).astype(np.float32), "w")
    a = numpy_helper.from_array(rng.uniform(0.1, 0.5, (c, 1, 1)).astype(np.float32), "a")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("PRelu", ["c", "a"], ["y"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c", "y")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])], outs, [w, a])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = rng.uniform(-1, 1, (1, 3, 9, 9)).astype(np.float32)
    model = walle_core.load(data, backend="cpu")
    got = model.run({"x": x})
    want = walle_core.load(data, backend="reference").run({"x": x})
    for k in ("c", "y"):
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-5)
    assert not any("+prelu" in lb for lb in _labels(model, {"x": x}))
