"""Plain (NCHW) depthwise convs (``depthwise-direct``): a narrow map or a kernel above 3x3 runs
through the blocked tiles one block of 16 channels at a time (``depthwise.c``: the planes
interleaved into a zero-bordered scratch and back), others on the plane kernel. Every width
around the switch, partial channel blocks, strides, dilation, asymmetric padding, a residual
under each activation and a batch match the reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Algorithm, Program
from walle_core.plan.rewrite.fused import ConvRes
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")
F32 = np.dtype(np.float32)


_ids = itertools.count(1)


def _tensor(shape: tuple[int, ...], value: np.ndarray | None = None) -> A.Tensor:
    return A.Tensor(shape, F32, value=value, id=next(_ids))


def _run(op: A.Conv2D, ins: list[A.Tensor], feeds: list[np.ndarray], backend: str,
         threads: int) -> np.ndarray:
    be = registry().get(backend)
    algos = be.algorithms(op)
    algo = next((a for a in algos if a.name == "depthwise-direct"), algos[0] if algos else Algorithm("?"))
    if backend == "cpu":
        assert algo.name == "depthwise-direct", [a.name for a in algos]
    exe = be.compile(Program([(op, algo)], ins, [op.out]), threads=threads)
    return exe.run(feeds)[0]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "s", "d"), [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (7, 1, 1),
                                           (7, 2, 1), (3, 1, 2), (9, 1, 1)])
@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (3, 7), (9, 15), (16, 17), (20, 24)])
@pytest.mark.parametrize("act", ["identity", "relu", "clip", "sigmoid"])
def test_plain_depthwise_matches_the_reference(k: int, s: int, d: int, hw: tuple[int, int], act: str,
                                               threads: int) -> None:
    rng = np.random.default_rng(k * 1000 + s * 100 + d * 10 + hw[0] + hw[1])
    c, (h, w) = 35, hw  # two whole blocks and a partial one
    n = 2
    p = d * (k - 1) // 2
    pads = (p, p + 1, p, max(p - 1, 0))  # asymmetric: (top, left, bottom, right)
    oh = (h + pads[0] + pads[2] - d * (k - 1) - 1) // s + 1
    ow = (w + pads[1] + pads[3] - d * (k - 1) - 1) // s + 1
    if oh < 1 or ow < 1:
        pytest.skip("no output pixel")
    prm = (-0.4, 0.6) if act == "clip" else ()
    x = _tensor((n, c, h, w))
    wt = _tensor((c, 1, k, k), rng.uniform(-0.5, 0.5, (c, 1, k, k)).astype(F32))
    bias = _tensor((c,), rng.uniform(-0.5, 0.5, c).astype(F32))
    res = _tensor((n, c, oh, ow))
    y = _tensor((n, c, oh, ow))
    op = ConvRes([x, wt, bias, res], [y], strides=(s, s), pads=pads, dilations=(d, d), groups=c,
                 act=A.Activation(act, prm))
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32), rng.uniform(-1, 1, res.shape).astype(F32)]
    got = _run(op, [x, res], feeds, "cpu", threads)
    plain = A.Conv2D([x, wt, bias], [y], strides=(s, s), pads=pads, dilations=(d, d), groups=c)
    want = _run(plain, [x], feeds[:1], "reference", 1) + feeds[1]  # (the reference has no ConvRes)
    want = {"identity": want, "relu": np.maximum(want, 0), "clip": np.clip(want, *prm),
            "sigmoid": 1 / (1 + np.exp(-want))}[act]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("k", "hw"), [(7, (4, 4)), (7, (16, 16)), (3, (7, 7)), (3, (40, 40))])
def test_plain_depthwise_without_bias_or_residual(k: int, hw: tuple[int, int], threads: int) -> None:
    rng = np.random.default_rng(k + hw[0])
    c, (h, w) = 16, hw
    x = _tensor((1, c, h, w))
    wt = _tensor((c, 1, k, k), rng.uniform(-0.5, 0.5, (c, 1, k, k)).astype(F32))
    y = _tensor((1, c, h, w))
    op = A.Conv2D([x, wt], [y], pads=((k - 1) // 2,) * 4, groups=c)
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    got = _run(op, [x], feeds, "cpu", threads)
    want = _run(op, [x], feeds, "reference", 1)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("k", "pads"), [(1, (2, 0, 0, 0)), (1, (0, 0, 3, 1)), (3, (4, 1, 4, 1)),
                                         (1, (2, 1, 2, 1))])
def test_bands_of_rows_wholly_inside_the_padding(k: int, pads: tuple[int, int, int, int],
                                                 threads: int) -> None:
    """A 1-pixel-high input padded by more rows than the kernel spans: with threads, some
    output bands read no input row at all (their scratch is all padding; the count of input
    rows once came out negative and the copy wrote before the scratch)."""
    rng = np.random.default_rng(k + sum(pads))
    c, h, w = 4, 1, 2
    oh, ow = h + pads[0] + pads[2] - k + 1, w + pads[1] + pads[3] - k + 1
    x = _tensor((1, c, h, w))
    wt = _tensor((c, 1, k, k), rng.uniform(-0.5, 0.5, (c, 1, k, k)).astype(F32))
    y = _tensor((1, c, oh, ow))
    op = A.Conv2D([x, wt], [y], pads=pads, groups=c)
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    for _ in range(3):  # a write outside the scratch shows up as a crash or a changed answer
        got = _run(op, [x], feeds, "cpu", threads)
        np.testing.assert_allclose(got, _run(op, [x], feeds, "reference", 1), rtol=1e-6, atol=1e-6)
