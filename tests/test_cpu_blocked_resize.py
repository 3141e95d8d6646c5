"""The ``resize2d`` composite (one pass for a 2-D nearest / linear resize) and channel runs of
blocked rasters, on the cpu backend against the reference backend (which runs the composite's
expansion), plain and blocked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_cpu_layout import _check, _conv

from walle_core import atomic as A
from walle_core.decompose.builder import Builder
from walle_core.decompose.resize import AxisSpec, Options, resize

F32 = np.float32
COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


def _resize(b: Builder, x: A.Tensor, mode: str, coord: str, oh: int, ow: int) -> A.Tensor:
    opt = Options(mode, coord, "round_prefer_floor", -0.75, False, 0.0, False)
    specs = {a: AxisSpec(x.shape[a], size, size / x.shape[a], (0.0, 1.0))
             for a, size in ((2, oh), (3, ow)) if size != x.shape[a]}
    return resize(b, x, specs, opt)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2), c=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 9),
       oh=st.integers(1, 19), ow=st.integers(1, 19), mode=st.sampled_from(["nearest", "linear"]),
       coord=st.sampled_from(COORDS), blocked=st.booleans(), seed=st.integers(0, 2**16))
def test_resize2d_matches_reference(n: int, c: int, h: int, w: int, oh: int, ow: int, mode: str, coord: str,
                                    blocked: bool, seed: int) -> None:
    """Any sizes (up and down, one axis or both), both modes, every coordinate mode; on the
    plain input or between blocked convs (then the resize runs blocked)."""
    assume((oh, ow) != (h, w))  # no op at all
    rng = np.random.default_rng(seed)
    b = Builder(fold=lambda op: None)
    x = b.tensor((n, c, h, w), F32)
    src = _conv(b, rng, x, c) if blocked else x
    y = _resize(b, src, mode, coord, oh, ow)
    if blocked:
        y = _conv(b, rng, y, 16)
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    resized = [lb for lb in labels if lb.startswith("Composite")]
    if blocked and resized:
        assert "16]" in resized[0], labels  # NCHW16c in and out


@pytest.mark.parametrize(("mode", "coord"), [("linear", "half_pixel"), ("linear", "align_corners"),
                                             ("nearest", "asymmetric")])
def test_resize_between_blocked_convs_is_one_blocked_pass(mode: str, coord: str) -> None:
    """U-Net's bilinear 2x upsampling (and a nearest one by 29/12 x 23/10, not a few block
    moves): one blocked composite, no layout change around it."""
    rng = np.random.default_rng(3)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3, 12, 10), F32)
    h = _conv(b, rng, _conv(b, rng, x, 32), 32)
    oh, ow = (29, 23) if mode == "nearest" else (24, 20)
    y = _conv(b, rng, _resize(b, h, mode, coord, oh, ow), 16)
    comps = [op for op in b.ops if isinstance(op, A.Composite)]
    assert [op.name for op in comps] == ["resize2d"]
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert [lb for lb in labels if lb.startswith("Raster layout")] == \
        ["Raster layout [1, 1, 24, 20, 16] -> [1, 16, 24, 20]" if mode != "nearest" else
         "Raster layout [1, 1, 29, 23, 16] -> [1, 16, 29, 23]"], labels
    assert any(lb.startswith("Composite") and "[1, 2, 12, 10, 16]" in lb for lb in labels), labels


@pytest.mark.parametrize(("c1", "c2"), [(8, 8), (8, 24), (20, 12), (16, 4)])
def test_concat_of_lane_runs_stays_blocked(c1: int, c2: int) -> None:
    """A channel concat whose inputs do not fill whole blocks copies runs of lanes between
    blocked tensors (8 + 8: lanes 0-7 from one input, 8-15 from the other): one layout change,
    for the output."""
    rng = np.random.default_rng(c1 * 100 + c2)
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 3, 9, 7), F32)
    h = _conv(b, rng, x, 16)
    y = _conv(b, rng, b.concat([_conv(b, rng, h, c1), _conv(b, rng, h, c2)], 1), 16)
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert len([lb for lb in labels if lb.startswith("Raster layout")]) == 1, labels


def test_channel_shuffle_is_not_taken_as_single_lanes() -> None:
    """A channel shuffle moves single lanes: not a blocked raster (a region per lane)."""
    rng = np.random.default_rng(5)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3, 8, 8), F32)
    h = _conv(b, rng, x, 32)
    s = b.reshape(b.transpose(b.reshape(h, (1, 2, 16, 8, 8)), (0, 2, 1, 3, 4)), (1, 32, 8, 8))
    y = _conv(b, rng, s, 16)
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert not any(lb.startswith("Raster direct") and "16]" in lb.split("->")[0] for lb in labels), labels


def _conv_transpose_model(c: int, o: int, hw: tuple[int, int], k: tuple[int, int], s: tuple[int, int],
                          pads: list[int], outpad: list[int], bias: bool, around: bool, seed: int) -> bytes:
    """x -> [Conv 3x3] -> ConvTranspose -> [Relu -> Conv 3x3] as ONNX (``around``: between convs,
    so that the transposed conv runs on blocked tensors from a blocked producer)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, v: np.ndarray) -> str:
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, v.shape, v.ravel()))
        return name

    x = "x"
    if around:
        nodes.append(helper.make_node("Conv", ["x", const("cw", rng.uniform(-0.3, 0.3, (c, c, 3, 3)).astype(F32))],
                                      ["xc"], pads=[1, 1, 1, 1]))
        x = "xc"
    ins = [x, const("wt", rng.uniform(-0.5, 0.5, (c, o, *k)).astype(F32))]
    if bias:
        ins.append(const("bt", rng.uniform(-0.5, 0.5, o).astype(F32)))
    nodes.append(helper.make_node("ConvTranspose", ins, ["t"], strides=list(s), kernel_shape=list(k), pads=pads,
                                  output_padding=outpad))
    out = "t"
    if around:
        nodes.append(helper.make_node("Relu", ["t"], ["tr"]))
        nodes.append(helper.make_node("Conv", ["tr", const("w2", rng.uniform(-0.3, 0.3, (16, o, 3, 3)).astype(F32))],
                                      ["y"], pads=[1, 1, 1, 1]))
        out = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *hw])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 40), o=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 11),
       k=st.tuples(st.integers(1, 5), st.integers(1, 5)), s=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       pad=st.integers(0, 2), bias=st.booleans(), around=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_transpose_matches_reference(c: int, o: int, h: int, w: int, k: tuple[int, int], s: tuple[int, int],
                                          pad: int, bias: bool, around: bool, seed: int) -> None:
    """Any kernel, stride, begin/end pads and output padding (the composite on blocked tensors
    where it is taken, the convs of its phases elsewhere) against the reference."""
    import walle_core

    pads = [min(pad, k[0] - 1), min(pad, k[1] - 1), max(0, min(pad - 1, k[0] - 1)), min(pad, k[1] - 1)]
    outpad = [min(1, s[0] - 1), 0]
    assume((h - 1) * s[0] + k[0] - pads[0] - pads[2] + outpad[0] > 0 and (w - 1) * s[1] + k[1] - pads[1] - pads[3] > 0)
    model = _conv_transpose_model(c, o, (h, w), k, s, pads, outpad, bias, around, seed)
    x = np.random.default_rng(seed).uniform(-1, 1, (1, c, h, w)).astype(F32)
    want = walle_core.load(model, backend="reference").run({"x": x})
    got = walle_core.load(model, backend="cpu", threads=2).run({"x": x})
    for name, v in want.items():
        np.testing.assert_allclose(got[name], v, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(v).max())))


def test_unet_style_conv_transposes_run_as_one_blocked_pass() -> None:
    """A 3x3 stride-2 ConvTranspose (pads 1, output padding 1) and a 2x2 stride-2 one with 32
    outputs between blocked convs: one blocked composite each, no layout change around them."""
    import walle_core
    from walle_cpu.compiler import CpuExecutable

    for k, pads, outpad, o in (((3, 3), [1, 1, 1, 1], [1, 1], 8), ((2, 2), [0, 0, 0, 0], [0, 0], 32)):
        model = _conv_transpose_model(16, o, (12, 10), k, (2, 2), pads, outpad, True, True, 1)
        m = walle_core.load(model, backend="cpu", threads=2)
        x = np.random.default_rng(2).uniform(-1, 1, (1, 16, 12, 10)).astype(F32)
        want = walle_core.load(model, backend="reference").run({"x": x})["y"]
        np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))
        node = m.plan_for({"x": x})
        labels = [lb for step in node.stage.steps if isinstance(step.executable, CpuExecutable)
                  for lb in step.executable._labels]
        assert [lb for lb in labels if lb.startswith("Composite")] == \
            [f"Composite nchwc [1, 1, 12, 10, 16] [16, {o}, {k[0]}, {k[1]}] -> [1, {-(-o // 16)}, 24, 20, 16]"], labels
        assert not any(lb.startswith("Raster") for lb in labels[1:-1]), labels  # the edges only
