"""TFLite_Detection_PostProcess (SSD heads' box decoding + NMS) and BITCAST, against LiteRT.

The models are built with the schema's flatbuffers object API (``tflite_testlib``): box
encodings and class scores as inputs, anchors as a constant, the custom op's options as the
flexbuffer map TensorFlow's converter writes. Anchors cluster in a few places so that NMS has
boxes to suppress; scores are drawn without ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tflite")

from flatbuffers import flexbuffers  # type: ignore[import-untyped]
from tflite_testlib import ModelBuilder, interpreter, litert_run

import walle_core
from walle_core.errors import UnsupportedOpError
from walle_core.frontend.tflite_import import import_model


def anchors(n: int, rng: np.random.Generator, clusters: int = 6) -> np.ndarray:
    centre = rng.uniform(0.15, 0.85, (clusters, 2))[rng.integers(0, clusters, n)]
    yx = centre + rng.normal(0, 0.03, (n, 2))
    hw = rng.uniform(0.1, 0.35, (n, 2))
    return np.concatenate([yx, hw], 1).astype(np.float32)


def detection_model(n: int = 64, classes: int = 3, background: bool = True, max_det: int = 10,
                    per_det: int = 1, score_thr: float = 0.3, iou_thr: float = 0.5, extra: int = 0,
                    seed: int = 0, **more: Any) -> bytes:
    rng = np.random.default_rng(seed)
    b = ModelBuilder()
    box = b.input([1, n, 4 + extra], name="box_encodings")
    cls = b.input([1, n, classes + int(background)], name="class_predictions")
    anc = b.const(anchors(n, rng), name="anchors")
    opts = dict(max_detections=max_det, max_classes_per_detection=per_det, detections_per_class=100,
                use_regular_nms=False, nms_score_threshold=score_thr, nms_iou_threshold=iou_thr,
                num_classes=classes, y_scale=10.0, x_scale=10.0, h_scale=5.0, w_scale=5.0)
    opts.update(more)
    outs = b.custom("TFLite_Detection_PostProcess", [box, cls, anc], flexbuffers.Dumps(opts),
                    [[1, max_det * per_det, 4], [1, max_det * per_det], [1, max_det * per_det], [1]])
    b.output(*outs)
    return b.pack()


def feeds(model: bytes, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in i["shape"]) for i in interpreter(model).get_input_details()]
    enc = rng.normal(0, 1, shapes[0]).astype(np.float32)
    scores = rng.permutation(np.linspace(0.0, 1.0, int(np.prod(shapes[1])), dtype=np.float32)).reshape(shapes[1])
    return [enc, scores]


def check(model: bytes, backend: str, per_box: int, slots_per_box: int, seed: int = 1) -> list[np.ndarray]:
    """Walle against LiteRT; ``per_box``: the classes reported per detection (K) in each box's
    ``slots_per_box`` (max_classes_per_detection) output slots."""
    x = feeds(model, seed)
    ref = litert_run(model, x)
    m = walle_core.load(model, backend=backend)
    got = m.run(dict(zip(m.input_names, x, strict=True)))
    out = [got[name] for name in m.output_names]
    for g, r in zip(out, ref, strict=True):
        assert g.shape == r.shape
    np.testing.assert_array_equal(out[3], ref[3])
    # LiteRT leaves the rows after the last detection as they were (uninitialised memory);
    # Walle writes zeros there. The detections themselves must agree.
    filled = np.zeros(out[1].shape[1], bool).reshape(-1, slots_per_box)
    filled[: int(ref[3][0]), :per_box] = True
    for g, r in zip(out[:3], ref[:3], strict=True):
        mask = filled.reshape(-1)
        np.testing.assert_allclose(g[0, mask], r[0, mask], rtol=1e-6, atol=1e-6)
        assert not np.any(g[0, ~mask])
    return ref


CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "no_background": {"background": False},
    "two_classes_per_box": {"per_det": 2, "classes": 4},
    "more_classes_per_box_than_classes": {"per_det": 5, "classes": 3},
    "few_above_threshold": {"score_thr": 0.985},  # fewer detections than max_detections: zero rows
    "none_above_threshold": {"score_thr": 1.5},
    "tight_iou": {"iou_thr": 0.05, "max_det": 20},
    "loose_iou": {"iou_thr": 0.95},
    "keypoints_in_encodings": {"extra": 6},
    "many_anchors": {"n": 1000, "classes": 10, "max_det": 25},
    "one_detection": {"max_det": 1},
    # the per-class NMS: at most detections_per_class per class, then the best max_detections
    "regular": {"use_regular_nms": True, "detections_per_class": 3, "max_det": 6},
    "regular_no_background": {"use_regular_nms": True, "background": False, "detections_per_class": 4},
    "regular_many_anchors": {"use_regular_nms": True, "n": 500, "classes": 10, "detections_per_class": 20,
                             "max_det": 25},
    "regular_few_above_threshold": {"use_regular_nms": True, "score_thr": 0.985, "detections_per_class": 5},
    "regular_tight_iou": {"use_regular_nms": True, "iou_thr": 0.05, "detections_per_class": 10, "max_det": 20},
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_detection_postprocess_matches_litert(case: str, backend: str) -> None:
    args = CASES[case]
    model = detection_model(**args)
    per_box = min(args.get("per_det", 1), args.get("classes", 3))
    for seed in (1, 2):
        ref = check(model, backend, per_box, args.get("per_det", 1), seed)
    if case.endswith("few_above_threshold"):
        assert 0 < ref[3][0] < 10
    if case == "none_above_threshold":
        assert ref[3][0] == 0


def test_detection_postprocess_suppresses_overlaps() -> None:
    """Suppression happens in these models: NMS keeps other boxes than score order alone would."""
    model = detection_model(n=64, iou_thr=0.3, max_det=10)
    x = feeds(model)
    m = walle_core.load(model, backend="cpu")
    got = m.run(dict(zip(m.input_names, x, strict=True)))
    top10 = np.sort(x[1][0, :, 1:].max(1))[::-1][:10]
    assert not np.allclose(got[m.output_names[2]][0], top10)


def test_bad_options_fail_at_load() -> None:
    def model(options: bytes, rows: int) -> bytes:
        b = ModelBuilder()
        box, cls = b.input([1, 8, 4]), b.input([1, 8, 2])
        outs = b.custom("TFLite_Detection_PostProcess", [box, cls, b.const(np.zeros((8, 4), np.float32))],
                        options, [[1, rows, 4], [1, rows], [1, rows], [1]])
        b.output(*outs)
        return b.pack()

    with pytest.raises(UnsupportedOpError, match=r"operator #0 of subgraph 0.*custom options"):
        import_model(model(b"\x00\x01", 4))
    good = flexbuffers.Dumps(dict(max_detections=4, num_classes=1, nms_score_threshold=0.1, nms_iou_threshold=0.5,
                                  y_scale=1.0, x_scale=1.0, h_scale=1.0, w_scale=1.0))
    import_model(model(good, 4))
    with pytest.raises(UnsupportedOpError, match=r"output 0 has shape \[1, 5, 4\], expected \[1, 4, 4\]"):
        import_model(model(good, 5))


def test_bitcast_of_a_constant_folds_at_load() -> None:
    b = ModelBuilder()
    x = b.input([2, 3], dtype=np.int32, name="x")
    bits = np.array([[1.0, -2.5, 3.25], [0.0, 7.0, -0.125]], np.float32)
    (y,) = b.op("BITCAST", [b.const(bits)], out_dtype=np.int32, out_shapes=[[2, 3]])
    (z,) = b.op("ADD", [x, y], "AddOptions", out_dtype=np.int32)
    (h,) = b.op("BITCAST", [b.const(np.arange(6, dtype=np.int32))], out_dtype=np.int16, out_shapes=[[6, 2]])
    b.output(z, h)
    model = b.build()
    feed = np.arange(6, dtype=np.int32).reshape(2, 3)
    ref = litert_run(model, [feed])
    m = walle_core.load(model, backend="cpu")
    got = m.run({"x": feed})
    for name, r in zip(m.output_names, ref, strict=True):
        np.testing.assert_array_equal(got[name], r)
