"""The public description and timing API the CLI is built on (``walle inspect``, ``walle search``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core

F = TensorProto.FLOAT


def mlp_with_optional_input() -> bytes:
    w = np.ones((8, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "bias"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", F, ["batch", 8]),
                         helper.make_tensor_value_info("bias", F, [4])],
        [helper.make_tensor_value_info("y", F, ["batch", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_describe_reads_the_graph_without_a_backend() -> None:
    info = walle_core.describe(mlp_with_optional_input())
    assert (info.name, info.opset, info.nodes, info.nested_nodes) == ("small", 17, 3, 0)
    assert info.op_types == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert (info.parameters, info.parameter_bytes, info.parameter_tensors) == (36, 144, 2)
    assert [(t.name, t.type, t.has_default) for t in info.inputs] == [
        ("x", "float32[batch,8]", False), ("bias", "float32[4]", True)]
    assert info.plan is None and info.plan_error == ""


def test_describe_plans_on_a_backend_and_reports_why_it_cannot() -> None:
    info = walle_core.describe(mlp_with_optional_input(), backend="reference")
    assert info.plan is not None and info.plan.complete
    assert info.plan.shapes == {"x": (1, 8)}
    assert [s.backend for s in info.plan.steps] == ["reference"]
    assert info.plan.kinds["MatMul"] == 1 and info.plan.flops >= 2 * 8 * 4
    missing = walle_core.describe(mlp_with_optional_input(), backend="no-such-backend")
    assert missing.plan is None and "no-such-backend" in missing.plan_error


def test_model_example_feeds_follow_declared_shapes_and_overrides() -> None:
    m = walle_core.load(mlp_with_optional_input(), backend="reference")
    assert m.describe() == walle_core.describe(mlp_with_optional_input())
    feeds = m.example_feeds()
    assert list(feeds) == ["x"] and feeds["x"].shape == (1, 8) and feeds["x"].dtype == np.float32
    assert m.example_feeds({"x": (5, 8)})["x"].shape == (5, 8)


def test_unknown_rank_needs_a_shape() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, None)],
                              [helper.make_tensor_value_info("y", F, None)])
    m = walle_core.load(helper.make_model(graph).SerializeToString(), backend="reference")
    with pytest.raises(walle_core.InputError, match="'x' has no declared shape"):
        m.example_feeds()
    assert m.example_feeds({"x": (2, 3)})["x"].shape == (2, 3)


def test_timing_the_whole_run_and_each_decision() -> None:
    m = walle_core.load(mlp_with_optional_input(), backend="reference")
    feeds = m.example_feeds()
    assert m.time_run(feeds, repeat=3) > 0
    decisions = m.explain(feeds)
    times = m.time_decisions(decisions, repeat=2, budget_s=0.05)
    assert len(times) == len(decisions) > 0 and all(t > 0 for t in times)
