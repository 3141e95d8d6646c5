"""Batched MatMul on the cpu backend: batches sharing one B (a linear layer over (batch, tokens,
features), constant or computed) run as one GEMM of batch * m rows in matmul.c; a per-batch B,
a full bias and a transposed A keep the per-batch loop. All against numpy in float64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cpu_matmul_cols import linear_nodes

import walle_core


def _model(path: str, batch: int, m: int, k: int, n: int, const_b: bool, per_batch_b: bool,
           residual: bool, act: str | None, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """x (batch, m, k) @ w [+ bias] [+ r] [act]; returns the constants by name."""
    wshape = (batch, k, n) if per_batch_b else (k, n)
    w = (rng.standard_normal(wshape) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, m, k])]
    inits = [numpy_helper.from_array(bias, "b")]
    if const_b:
        inits.append(numpy_helper.from_array(w, "w"))
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(wshape)))
    nodes = linear_nodes(inputs, [batch, m, n], residual, act)
    graph = helper.make_graph(nodes, "batched", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, m, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return {"w": w, "b": bias}


@pytest.mark.parametrize(("batch", "m", "k", "n"), [(4, 4, 80, 80), (16, 16, 48, 144), (3, 17, 64, 200),
                                                    (5, 1, 96, 96)])
@pytest.mark.parametrize(("const_b", "per_batch_b"), [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize(("residual", "act"), [(False, None), (True, "Relu")])
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_matmul_matches_numpy(tmp_path, batch: int, m: int, k: int, n: int, const_b: bool,  # type: ignore[no-untyped-def]
                                      per_batch_b: bool, residual: bool, act: str | None,
                                      threads: int) -> None:
    rng = np.random.default_rng(batch * 31 + m * 7 + n)
    path = str(tmp_path / "batched.onnx")
    consts = _model(path, batch, m, k, n, const_b, per_batch_b, residual, act, rng)
    feeds = {"x": rng.standard_normal((batch, m, k)).astype(np.float32)}
    if not const_b:
        feeds["w"] = consts["w"]
    if residual:
        feeds["r"] = rng.standard_normal((batch, m, n)).astype(np.float32)
    got = walle_core.load(path, backend="cpu", threads=threads).run(feeds)["y"]
    want = feeds["x"].astype(np.float64) @ consts["w"].astype(np.float64) + consts["b"]
    if residual:
        want = want + feeds["r"]
    if act == "Relu":
        want = np.maximum(want, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
