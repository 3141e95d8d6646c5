"""MatMul of few rows and many columns on the cpu backend: matmul.c shares such a product among
threads by whole column panels (each thread streams its own part of B), with the bias, the
residual and the activation of the epilogue applied to every column slice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core


def linear_nodes(inputs: list[onnx.ValueInfoProto], out_shape: list[int], residual: bool,
                 act: str | None) -> list[onnx.NodeProto]:
    """y = x @ w + b [+ r] [act]: the MatMul and its epilogue (adding input ``r`` to ``inputs``
    when residual), ending in an Identity so the epilogue's last op is not a graph output."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y0"])]
    last = "y0"
    if residual:
        nodes.append(helper.make_node("Add", [last, "r"], ["y1"]))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, out_shape))
        last = "y1"
    if act:
        nodes.append(helper.make_node(act, [last], ["y2"]))
        last = "y2"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    return nodes


def _linear(path: str, m: int, k: int, n: int, residual: bool, act: str | None,
            rng: np.random.Generator) -> None:
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])]
    nodes = linear_nodes(inputs, [1, m, n], residual, act)
    graph = helper.make_graph(nodes, "linear", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)


@pytest.mark.parametrize(("m", "k", "n"), [(24, 100, 200), (17, 64, 1536), (100, 96, 161), (256, 300, 130),
                                           (3, 384, 1000)])
@pytest.mark.parametrize(("residual", "act"), [(False, None), (True, "Relu"), (True, None)])
@pytest.mark.parametrize("threads", [2, 3])
def test_few_row_linear_layers_match_numpy(tmp_path, m: int, k: int, n: int, residual: bool,  # type: ignore[no-untyped-def]
                                           act: str | None, threads: int) -> None:
    rng = np.random.default_rng(m * 7 + n)
    path = str(tmp_path / "linear.onnx")
    _linear(path, m, k, n, residual, act, rng)
    feeds = {"x": rng.standard_normal((1, m, k)).astype(np.float32)}
    if residual:
        feeds["r"] = rng.standard_normal((1, m, n)).astype(np.float32)
    got = walle_core.load(path, backend="cpu", threads=threads).run(feeds)["y"]
    import onnx

    model = onnx.load(path)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    bias = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    want = feeds["x"].astype(np.float64) @ w + bias
    if residual:
        want = want + feeds["r"]
    if act == "Relu":
        want = np.maximum(want, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
