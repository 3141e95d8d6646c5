"""``Model.run`` on a feed signature it has seen takes a shorter path (no full re-check, one
call into the program): it must behave exactly as the first run did."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import walle_core
from walle_core.errors import InputError


def _model(backend: str, passthrough: bool = True) -> walle_core.Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])
    same = helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("Add", ["x", "b"], ["t"]), helper.make_node("Relu", ["t"], ["y"]),
             helper.make_node("Neg", ["t"], ["z"]), helper.make_node("Identity", ["x"], ["x_out"])]
    if not passthrough:  # x_out computed: the plan is one program whose outputs are all its own
        nodes[-1] = helper.make_node("Abs", ["x"], ["x_out"])
    g = helper.make_graph(nodes, "g", [x, b], [y, z, same])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return walle_core.load(m.SerializeToString(), backend=backend, threads=2)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("passthrough", [True, False])
def test_repeated_runs_match_the_first(backend: str, passthrough: bool) -> None:
    m = _model(backend, passthrough)
    rng = np.random.default_rng(0)
    x, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    want = {"y": np.maximum(x + b, 0), "z": -(x + b), "x_out": x if passthrough else np.abs(x)}
    first = m.run({"x": x, "b": b})
    second = m.run({"x": x, "b": b})
    for out in (first, second):
        assert sorted(out) == ["x_out", "y", "z"]
        for k, v in want.items():
            np.testing.assert_allclose(out[k], v, rtol=1e-6)
    # results are fresh arrays: never a caller's input, never an earlier run's result
    assert not np.shares_memory(second["x_out"], x)
    for k in first:
        assert not np.shares_memory(first[k], second[k])
    second["y"][...] = 7
    np.testing.assert_allclose(m.run({"x": x, "b": b})["y"], want["y"], rtol=1e-6)
    # another feed order, a non-contiguous array and a list of float32 scalars reach the same plan
    xt = np.asfortranarray(x)
    for feeds in ({"b": b, "x": x}, {"x": xt, "b": b}, {"x": x, "b": list(b)}):
        np.testing.assert_allclose(m.run(feeds)["z"], want["z"], rtol=1e-6)
    # a new shape plans again
    np.testing.assert_allclose(m.run({"x": x[:2], "b": b})["y"], want["y"][:2], rtol=1e-6)


@pytest.mark.parametrize("passthrough", [True, False])
def test_a_seen_signature_still_checks_dtypes(passthrough: bool) -> None:
    m = _model("cpu", passthrough)
    x, b = np.ones((2, 4), np.float32), np.ones(4, np.float32)
    m.run({"x": x, "b": b})
    with pytest.raises(InputError, match="dtype"):
        m.run({"x": x.astype(np.float64), "b": b})
    with pytest.raises(InputError, match="missing"):
        m.run({"x": x})
    with pytest.raises(InputError, match="unknown"):
        m.run({"x": x, "b": b, "c": b})
