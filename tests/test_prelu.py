"""PRelu with constant slopes lowers to Mul + Max/Min passes (no compare and Select) and still
gives x >= 0 ? x : a * x exactly: zero signs, infinities and NaNs included."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core import atomic as A

SLOPES = {
    "below_one": [0.25, -0.5, 1.0, 1e-3],  # negative and exactly 1 included
    "above_one": [1.0, 1.5, 7.0, 1.25],
    "mixed": [-0.25, 1.75, 0.5, 3.0],
    "zero": [0.0, 0.5, 0.25, 1.5],  # a zero slope keeps the compare and Select (0 * inf)
}


def _model(slope: np.ndarray) -> bytes:
    node = helper.make_node("PRelu", ["x", "a"], ["y"])
    g = helper.make_graph([node], "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3, 5])],
                          [numpy_helper.from_array(slope, "a")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", sorted(SLOPES))
def test_constant_slope_prelu_is_exact(case: str, backend: str) -> None:
    slope = np.asarray(SLOPES[case], np.float32).reshape(4, 1, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32) * 3
    x.reshape(-1)[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0]
    x[1, :, 0, :4] = [[0.0, -0.0, np.inf, -np.inf]] * 4  # every channel meets the special values
    model = walle_core.load(_model(slope), backend=backend)
    got = model.run({"x": x})["y"]
    with np.errstate(invalid="ignore"):
        want = np.where(x < 0, x * slope, x)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    ops, _ = model.atomic_ops({"x": x})
    selects = sum(isinstance(op, A.Select) for op in ops)
    assert selects == (1 if case == "zero" else 0), [type(op).__name__ for op in ops]
