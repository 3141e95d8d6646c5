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
