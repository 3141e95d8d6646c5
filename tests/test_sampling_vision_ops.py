"""Single-node checks of the sampling, vision and ai.onnx.ml decompositions against onnxruntime,
on inputs wider than the ONNX node cases (coordinates far outside the image, many boxes,
grouped/offset-grouped deformable convolution, adaptive RoiAlign sampling)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from walle_core.frontend.onnx_backend import WalleBackend  # noqa: E402

RNG = np.random.default_rng(11)
F = TensorProto.FLOAT


def _model(node: Any, inputs: dict[str, np.ndarray], out_type: int, opset: int) -> Any:
    elem = {np.dtype(np.float32): F, np.dtype(np.int64): TensorProto.INT64}
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, elem[v.dtype], None) for n, v in inputs.items()],
        [helper.make_tensor_value_info(o, out_type, None) for o in node.output])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _check(node: Any, inputs: dict[str, np.ndarray], opset: int, out_type: int = F,
           atol: float = 1e-5) -> None:
    m = _model(node, inputs, out_type, opset)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ref = ort.InferenceSession(m.SerializeToString(), opts).run(None, inputs)
    got = WalleBackend.prepare(m, "CPU").run(list(inputs.values()))
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape and r.dtype == g.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d(mode: str, padding: str, align: int) -> None:
    node = helper.make_node("GridSample", ["X", "G"], ["Y"], mode=mode, padding_mode=padding,
                            align_corners=align)
    x = RNG.standard_normal((2, 3, 5, 7)).astype(np.float32)
    g = RNG.uniform(-3, 3, (2, 4, 6, 2)).astype(np.float32)
    _check(node, {"X": x, "G": g}, 20)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_3d(mode: str, padding: str) -> None:
    node = helper.make_node("GridSample", ["X", "G"], ["Y"], mode=mode, padding_mode=padding)
    x = RNG.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    g = RNG.uniform(-2, 2, (1, 2, 3, 4, 3)).astype(np.float32)
    _check(node, {"X": x, "G": g}, 20)


@pytest.mark.parametrize("center", [0, 1])
def test_non_max_suppression_many_boxes(center: int) -> None:
    node = helper.make_node("NonMaxSuppression", ["B", "S", "M", "I", "T"], ["Y"],
                            center_point_box=center)
    boxes = RNG.uniform(0, 10, (2, 40, 4)).astype(np.float32)
    scores = RNG.uniform(0, 1, (2, 3, 40)).astype(np.float32)
    feeds: dict[str, np.ndarray] = {"B": boxes, "S": scores, "M": np.array([7], np.int64),
             "I": np.array([0.3], np.float32), "T": np.array([0.2], np.float32)}
    _check(node, feeds, 11, TensorProto.INT64)


def test_deform_conv_groups_strides_mask() -> None:
    node = helper.make_node("DeformConv", ["X", "W", "O", "B", "M"], ["Y"], strides=[2, 1],
                            pads=[1, 0, 2, 1], dilations=[1, 2], group=2, offset_group=2)
    oh, ow = (7 + 3 - 3) // 2 + 1, (8 + 1 - 3) + 1
    feeds: dict[str, np.ndarray] = {
        "X": RNG.standard_normal((2, 4, 7, 8)).astype(np.float32),
        "W": RNG.standard_normal((6, 2, 3, 2)).astype(np.float32),
        "O": RNG.uniform(-2, 2, (2, 24, oh, ow)).astype(np.float32),
        "B": RNG.standard_normal(6).astype(np.float32),
        "M": RNG.uniform(0, 1, (2, 12, oh, ow)).astype(np.float32),
    }
    _check(node, feeds, 22)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align(mode: str, ctm: str, ratio: int) -> None:
    node = helper.make_node("RoiAlign", ["X", "R", "I"], ["Y"], mode=mode, output_height=3,
                            output_width=4, sampling_ratio=ratio, spatial_scale=0.5,
                            coordinate_transformation_mode=ctm)
    rois = np.array([[0, 0, 20, 16], [3.3, 2.1, 9.7, 17.5], [-4, -3, 30, 25], [5, 5, 5.5, 6]],
                    np.float32)
    feeds: dict[str, np.ndarray] = {"X": RNG.standard_normal((2, 3, 9, 11)).astype(np.float32), "R": rois,
             "I": np.array([0, 1, 1, 0], np.int64)}
    _check(node, feeds, 16)  # onnxruntime implements RoiAlign up to opset 16


def test_col2im_padded_strided_dilated() -> None:
    node = helper.make_node("Col2Im", ["X", "S", "K"], ["Y"], strides=[2, 1], dilations=[1, 2],
                            pads=[1, 0, 1, 2])
    image, block = (6, 5), (2, 3)
    counts = [(6 + 2 - 2) // 2 + 1, (5 + 2 - 5) // 1 + 1]
    feeds: dict[str, np.ndarray] = {"X": RNG.standard_normal((2, 3 * 6, counts[0] * counts[1])).astype(np.float32),
             "S": np.array(image, np.int64), "K": np.array(block, np.int64)}
    _check(node, feeds, 18)


@pytest.mark.parametrize("size", [1, 3, 5])  # onnxruntime rejects even sizes
def test_lrn(size: int) -> None:
    node = helper.make_node("LRN", ["X"], ["Y"], size=size, alpha=0.3, beta=0.6, bias=1.5)
    _check(node, {"X": RNG.standard_normal((2, 6, 3, 2)).astype(np.float32)}, 13)
