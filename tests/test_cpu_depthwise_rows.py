"""Blocked depthwise convs run the interior of each output row in register tiles (3x3 and 5x5,
strides 1 and 2: ``nc_dw_row`` in ``isa/depthwise.inc``), the last tile overlapping its
neighbour, and the border pixels through tap tables. Every width around the tile size,
padding, row dilation, a residual with a clip and a PRelu epilogue match the reference."""

from __future__ import annotations

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Algorithm, Program
from walle_core.decompose.builder import Builder
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")
F32 = np.dtype(np.float32)


def _run(ops: list[A.Op], ins: list[A.Tensor], outs: list[A.Tensor], feeds: list[np.ndarray],
         backend: str, threads: int) -> tuple[list[np.ndarray], list[str]]:
    be = registry().get(backend)
    items = []
    for op in ops:
        algos = be.algorithms(op)
        items.append((op, next((a for a in algos if a.name == "nchwc"), algos[0] if algos else Algorithm("?"))))
    exe = be.compile(Program(items, ins, outs), threads=threads)
    return exe.run(feeds), list(getattr(exe, "_labels", []))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "s", "d"), [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2), (7, 1, 1)])
@pytest.mark.parametrize("w", [5, 9, 12, 17, 40])
def test_blocked_depthwise_rows_match_the_reference(k: int, s: int, d: int, w: int, threads: int) -> None:
    rng = np.random.default_rng(k * 100 + s * 10 + w)
    c, h = 20, 11
    p = d * (k - 1) // 2
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 3, h, w), F32)

    def conv(src: A.Tensor, o: int, kk: int, groups: int, stride: int = 1, dil: int = 1,
             pad: int = 0, act: A.Activation | None = None) -> A.Tensor:
        n, ci, hh, ww = src.shape
        oh = (hh + 2 * pad - dil * (kk - 1) - 1) // stride + 1
        ow = (ww + 2 * pad - dil * (kk - 1) - 1) // stride + 1
        y = b.tensor((n, o, oh, ow), F32)
        wv = rng.uniform(-0.5, 0.5, (o, ci // groups, kk, kk)).astype(F32)
        b.emit(A.Conv2D([src, b.const(wv), b.const(rng.uniform(-0.5, 0.5, o).astype(F32))], [y],
                        strides=(stride, stride), pads=(pad,) * 4, dilations=(dil, dil), groups=groups,
                        act=act or A.Activation()))
        return y

    h0 = conv(x, c, 1, 1)  # a blocked stem: the depthwise convs read blocked values
    h1 = conv(h0, c, k, c, stride=s, dil=d, pad=p, act=A.Activation("clip", (-0.4, 0.6)))
    h2 = conv(h1, c, k, c, dil=d, pad=p)
    h2 = b.binary("add", h2, h1)  # residual: a depthwise conv with a residual epilogue
    slope = b.const(rng.uniform(0.05, 0.9, (c, 1, 1)).astype(F32))
    h3 = conv(h2, c, k, c, pad=(k - 1) // 2)
    y = b.binary("max", b.binary("mul", h3, slope), h3)  # PRelu: the conv's epilogue
    y = conv(y, 4, 1, 1)
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    got, labels = _run(b.ops, [x], [y], feeds, "cpu", threads)
    want, _ = _run(b.ops, [x], [y], feeds, "reference", 1)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-5)
    assert sum(lb.startswith("Conv2D") and "nchwc" in lb for lb in labels) == 5, labels
    assert any("+residual" in lb for lb in labels) and any("+prelu" in lb for lb in labels), labels


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "s"), [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (4, 4), (6, 7), (8, 8), (9, 14), (16, 5)])
def test_small_maps_and_same_padding_match_the_reference(k: int, s: int, hw: tuple[int, int], threads: int) -> None:
    """Small maps with TFLite's SAME padding (the odd pad after: pads (0, 0, 1, 1) for a 3x3
    stride 2 on an even map): rows copied into a zero-bordered scratch, every pixel a tile pixel
    (remainder tiles of 1-7), a residual and a clip on top."""
    rng = np.random.default_rng(k * 1000 + s * 100 + hw[0] * 10 + hw[1])
    c, (h, w) = 40, hw
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 8, h, w), F32)
    y0 = b.tensor((1, c, h, w), F32)
    b.emit(A.Conv2D([x, b.const(rng.uniform(-0.5, 0.5, (c, 8, 1, 1)).astype(F32)), b.const(np.zeros(c, F32))], [y0]))
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    pads = (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)
    y1 = b.tensor((1, c, oh, ow), F32)
    b.emit(A.Conv2D([y0, b.const(rng.uniform(-0.5, 0.5, (c, 1, k, k)).astype(F32)),
                     b.const(rng.uniform(-0.5, 0.5, c).astype(F32))], [y1], strides=(s, s), pads=pads,
                    groups=c, act=A.Activation("clip", (-0.5, 0.7))))
    y2 = b.tensor((1, c, oh, ow), F32)
    b.emit(A.Conv2D([y1, b.const(rng.uniform(-0.5, 0.5, (c, 1, k, k)).astype(F32)), b.const(np.zeros(c, F32))],
                    [y2], pads=((k - 1) // 2,) * 4, groups=c))
    y3 = b.binary("add", y2, y1)
    y = b.tensor((1, 4, oh, ow), F32)
    b.emit(A.Conv2D([y3, b.const(rng.uniform(-0.5, 0.5, (4, c, 1, 1)).astype(F32)), b.const(np.zeros(4, F32))], [y]))
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    got, labels = _run(b.ops, [x], [y], feeds, "cpu", threads)
    want, _ = _run(b.ops, [x], [y], feeds, "reference", 1)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-5)
    assert sum(lb.startswith("Conv2D") and "nchwc" in lb for lb in labels) >= 3, labels
