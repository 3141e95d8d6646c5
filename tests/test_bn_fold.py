"""Inference BatchNormalization, and a Mul, Add or Sub of a per-channel constant, folded into the
Conv / ConvTranspose before it (``walle_core.plan.rewrite.bn_fold``): the fold happens where it may (constants, also through
Identity nodes; grouped ConvTranspose; with and without a conv bias), never where the conv's
output is read elsewhere, is a graph output, or the statistics are computed, and the model's
result stays that of onnxruntime on the reference and cpu backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.frontend.onnx_import import import_model
from walle_core.plan.rewrite.bn_fold import fold_batch_norms

ort = pytest.importorskip("onnxruntime")


def _model(tmp_path: Path, *, op: str = "ConvTranspose", group: int = 1, bias: bool = True,
           identity_stats: bool = False, extra_reader: bool = False, stats_input: bool = False,
           conv_is_output: bool = False) -> Path:
    rng = np.random.default_rng(7)
    cin, cout, k = 8, 6, 2
    wshape = (cin, cout // group, k, k) if op == "ConvTranspose" else (cout, cin // group, 3, 3)
    attrs: dict[str, Any] = {"strides": [2, 2], "group": group} if op == "ConvTranspose" else \
        {"pads": [1, 1, 1, 1], "group": group}
    inits = [numpy_helper.from_array(rng.standard_normal(wshape).astype(np.float32), "w")]
    conv_in = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        conv_in.append("b")
    stats = {"gamma": rng.uniform(0.5, 2, cout), "beta": rng.standard_normal(cout),
             "mean": rng.standard_normal(cout), "var": rng.uniform(0.2, 3, cout)}
    nodes = [helper.make_node(op, conv_in, ["c"], **attrs)]
    names = []
    for key, v in stats.items():
        if stats_input and key == "mean":
            names.append("m_in")
            continue
        inits.append(numpy_helper.from_array(v.astype(np.float32), key))
        if identity_stats:
            nodes.append(helper.make_node("Identity", [key], [key + "_id"]))
            names.append(key + "_id")
        else:
            names.append(key)
    nodes.append(helper.make_node("BatchNormalization", ["c", *names], ["bn"], epsilon=1e-3))
    nodes.append(helper.make_node("Relu", ["bn"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["s"]))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    if conv_is_output:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 7, 9])]
    if stats_input:
        inputs.append(helper.make_tensor_value_info("m_in", TensorProto.FLOAT, [cout]))
    graph = helper.make_graph(nodes, "bn", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    path = tmp_path / "bn.onnx"
    onnx.save(model, str(path))
    return path


def _feeds(stats_input: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    feeds = {"x": rng.standard_normal((1, 8, 7, 9)).astype(np.float32)}
    if stats_input:
        feeds["m_in"] = rng.standard_normal(6).astype(np.float32)
    return feeds


CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "convtranspose": ({}, True),
    "convtranspose_grouped_no_bias": ({"group": 2, "bias": False}, True),
    "conv": ({"op": "Conv"}, True),
    "conv_grouped": ({"op": "Conv", "group": 2}, True),
    "stats_through_identity": ({"identity_stats": True}, True),
    "conv_output_read_again": ({"extra_reader": True}, False),
    "conv_output_is_graph_output": ({"conv_is_output": True}, False),
    "stats_computed": ({"stats_input": True}, False),
}


def _affine_model(tmp_path: Path, steps: list[tuple[str, tuple[int, ...], bool]], op: str = "Conv",
                  group: int = 1) -> Path:
    """A conv, then ``steps``: (Mul/Add/Sub, constant's shape, conv side first), then ReLU."""
    rng = np.random.default_rng(9)
    cin, cout = 8, 6
    wshape = (cin, cout // group, 2, 2) if op == "ConvTranspose" else (cout, cin // group, 3, 3)
    attrs: dict[str, Any] = {"strides": [2, 2], "group": group} if op == "ConvTranspose" else \
        {"pads": [1, 1, 1, 1], "group": group}
    inits = [numpy_helper.from_array(rng.standard_normal(wshape).astype(np.float32), "w")]
    nodes = [helper.make_node(op, ["x", "w"], ["t0"], **attrs)]
    for i, (kind, shape, conv_first) in enumerate(steps):
        c = f"c{i}"
        if len(shape) == 0:  # a scalar from a Constant node, as PaddlePaddle writes it
            nodes.append(helper.make_node("Constant", [], [c], value=numpy_helper.from_array(
                np.array(rng.uniform(0.5, 2), np.float32))))
        else:
            inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, shape).astype(np.float32), c))
        ins = [f"t{i}", c] if conv_first else [c, f"t{i}"]
        nodes.append(helper.make_node(kind, ins, [f"t{i + 1}"]))
    nodes.append(helper.make_node("Relu", [f"t{len(steps)}"], ["y"]))
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 7, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "affine.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    return path


AFFINE: dict[str, tuple[list[tuple[str, tuple[int, ...], bool]], dict[str, Any], int]] = {
    # steps, conv attrs, ops left after the conv (0: all folded)
    "scalar_mul_add": ([("Mul", (), False), ("Add", (), True)], {}, 0),
    "channel_mul_sub": ([("Mul", (6, 1, 1), True), ("Sub", (1, 6, 1, 1), True)], {}, 0),
    "grouped": ([("Mul", (1, 6, 1, 1), False), ("Add", (6, 1, 1), False)], {"group": 2}, 0),
    "convtranspose": ([("Mul", (6, 1, 1), True)], {"op": "ConvTranspose", "group": 2}, 0),
    "constant_minus_conv": ([("Sub", (6, 1, 1), False)], {}, 1),  # negates the conv: left
    "per_pixel": ([("Mul", (1, 1, 7, 9), True)], {}, 1),            # varies over space: left
    "broadcast_up": ([("Add", (2, 6, 1, 1), True)], {}, 1),          # makes a batch of 2: left
}


def _check_folds(path: Path, left: int) -> None:
    """``left`` element-wise ops stay after the fold, and the model still gives onnxruntime's
    result on the reference and cpu backends."""
    folded = fold_batch_norms(import_model(path))
    assert sum(n.op_type in ("Mul", "Add", "Sub") for n in folded.nodes) == left
    feeds = _feeds(False)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for backend in ("reference", "cpu"):
        got = walle_core.load(path, backend=backend).run(feeds)
        for w, g in zip(want, got.values(), strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


@pytest.mark.parametrize("case", sorted(AFFINE))
def test_constant_affine_after_a_conv_folds_where_it_may(tmp_path: Path, case: str) -> None:
    steps, kw, left = AFFINE[case]
    path = _affine_model(tmp_path, steps, **kw)
    _check_folds(path, left)


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_norm_folds_where_it_may_and_results_match(tmp_path: Path, case: str) -> None:
    kw, folds = CASES[case]
    path = _model(tmp_path, **kw)
    folded = fold_batch_norms(import_model(path))
    has_bn = any(n.op_type == "BatchNormalization" for n in folded.nodes)
    assert has_bn != folds
    feeds = _feeds(bool(kw.get("stats_input")))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    for backend in ("reference", "cpu"):
        got = walle_core.load(path, backend=backend).run(feeds)
        for w, g in zip(want, got.values(), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def _input_affine_model(tmp_path: Path, kernel: int, conv_attrs: dict[str, Any],
                        steps: list[tuple[str, tuple[int, ...], bool]]) -> Path:
    """ReLU(x), then ``steps`` (as in :func:`_affine_model`), then a conv of ``kernel``."""
    rng = np.random.default_rng(10)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 8, kernel, kernel)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")]
    nodes = [helper.make_node("Relu", ["x"], ["t0"])]
    for i, (kind, shape, value_first) in enumerate(steps):
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, shape).astype(np.float32), f"c{i}"))
        ins = [f"c{i}", f"t{i}"] if value_first else [f"t{i}", f"c{i}"]
        nodes.append(helper.make_node(kind, ins, [f"t{i + 1}"]))
    nodes.append(helper.make_node("Conv", [f"t{len(steps)}", "w", "b"], ["y"], **conv_attrs))
    graph = helper.make_graph(nodes, "in_affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 7, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "in_affine.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    return path


INPUT_AFFINE: dict[str, tuple[int, dict[str, Any], list[tuple[str, tuple[int, ...], bool]], int]] = {
    # kernel, conv attrs, steps, ops left before the conv (0: all folded)
    "pointwise": (1, {}, [("Mul", (), True), ("Add", (1,), False)], 0),
    "valid_3x3_sub": (3, {"strides": [2, 2]}, [("Mul", (1, 1, 1), False), ("Sub", (), False)], 0),
    "same_1x1": (1, {"auto_pad": "SAME_UPPER"}, [("Add", (), True)], 0),
    "padded_3x3": (3, {"pads": [1, 1, 1, 1]}, [("Add", (), True), ("Mul", (), False)], 1),  # the Mul folds
    "padded_3x3_shift_last": (3, {"pads": [1, 1, 1, 1]}, [("Mul", (), True), ("Add", (), False)], 2),
    "same_3x3": (3, {"auto_pad": "SAME_LOWER"}, [("Add", (), True)], 1),    # padding meets the shift
    "per_channel": (1, {}, [("Mul", (8, 1, 1), True)], 1),                  # could widen x's channels
    "full_rank_scalar": (1, {}, [("Add", (1, 1, 1, 1), True)], 1),          # could widen x's rank
    "constant_minus_x": (1, {}, [("Sub", (), True)], 1),
}


@pytest.mark.parametrize("case", sorted(INPUT_AFFINE))
def test_scalar_affine_before_an_unpadded_conv_folds(tmp_path: Path, case: str) -> None:
    kernel, attrs, steps, left = INPUT_AFFINE[case]
    path = _input_affine_model(tmp_path, kernel, attrs, steps)
    _check_folds(path, left)
