"""The cpu backend's Winograd F(4x4, 3x3) conv on the blocked layout (``winograd-nchwc``):
offered for 3x3 stride-1 convs of one group, it keeps the blocked chain (no layout change
around it) and matches the reference backend on odd shapes: channel counts that are not whole
blocks, maps smaller than a tile or not a multiple of 4, padding 0 and 1, batches, and the
blocked conv's epilogues (residual, clip/relu, other activations, PRelu), under every kernel
variant this CPU runs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walle_core import atomic as A
from walle_core.backend import Algorithm, Program
from walle_core.decompose.builder import Builder
from walle_core.plan.planner import choose
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")
F32 = np.dtype(np.float32)
WINO = "winograd-nchwc"


def _conv(b: Builder, rng: np.random.Generator, x: A.Tensor, o: int, k: int = 3, p: int = 1,
          act: A.Activation | None = None, s: int = 1) -> A.Tensor:
    n, c, h, w = x.shape
    y = b.tensor((n, o, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1), F32)
    wv = rng.uniform(-0.5, 0.5, (o, c, k, k)).astype(F32)
    b.emit(A.Conv2D([x, b.const(wv), b.const(rng.uniform(-0.5, 0.5, o).astype(F32))], [y],
                    strides=(s, s), pads=(p, p, p, p), act=act or A.Activation()))
    return y


def _run(ops: list[A.Op], ins: list[A.Tensor], outs: list[A.Tensor], feeds: list[np.ndarray],
         backend: str, want: str) -> tuple[list[np.ndarray], list[str]]:
    """Runs with ``want`` for every conv that offers it, else the blocked direct conv."""
    be = registry().get(backend)
    items = []
    for op in ops:
        algos = list(be.algorithms(op))
        pick = next((a for a in algos if a.name == want), None) or \
            next((a for a in algos if a.name == "nchwc"), algos[0] if algos else Algorithm("?"))
        items.append((op, pick))
    exe = be.compile(Program(items, ins, outs), threads=2)
    return exe.run(feeds), list(getattr(exe, "_labels", []))


def _check(ops: list[A.Op], ins: list[A.Tensor], outs: list[A.Tensor],
           feeds: list[np.ndarray], tile: int | None = None) -> list[str]:
    """cpu (Winograd with output tiles of ``tile``: 4 or 2; None: as modelled) against the
    reference."""
    import walle_cpu.ops.conv as cv

    modelled = cv.winograd_tile
    if tile is not None:
        cv.winograd_tile = lambda op: tile
    try:
        got, labels = _run(ops, ins, outs, feeds, "cpu", WINO)
    finally:
        cv.winograd_tile = modelled
    want, _ = _run(ops, ins, outs, feeds, "reference", "")
    for g, w in zip(got, want, strict=True):
        # Winograd's transforms add and subtract terms several times the output's scale (the
        # points +-2 weigh them up to 8x): errors of ~1e-5 of the scale, where a wrong tap or
        # channel is off by the scale itself; the bound is the zoo's, 1e-4 of the scale
        big = max(1.0, float(np.abs(w).max(initial=0.0)))
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * big)
    return labels


def _model(n: int, c: int, o: int, h: int, w: int, p: int, act: str, residual: bool,
           seed: int) -> tuple[Builder, A.Tensor, A.Tensor, list[np.ndarray]]:
    """A 1x1 conv makes the input blocked, then the 3x3 conv (with a residual from another 1x1
    conv of the same input when ``residual``), then a 1x1 conv reads its blocked output."""
    rng = np.random.default_rng(seed)
    b = Builder(fold=lambda op: None)
    x = b.tensor((n, c, h, w), F32)
    xb = _conv(b, rng, x, c, k=1, p=0)
    acts = {"identity": A.Activation(), "relu": A.Activation("relu"),
            "clip": A.Activation("clip", (-0.25, 0.5)), "sigmoid": A.Activation("sigmoid")}
    r = _conv(b, rng, xb, o, k=1, p=0) if residual else None  # (padding 1: the same size)
    y = _conv(b, rng, xb, o, p=p, act=None if residual else acts[act])
    if r is not None:  # the residual rewrite folds the add (and the activation after it)
        y = b.binary("add", y, r)
        if act != "identity":
            y = b.unary(act, y) if act != "clip" else b.binary(
                "min", b.binary("max", y, b.scalar(-0.25, y)), b.scalar(0.5, y))
    out = _conv(b, rng, y, 3, k=1, p=0)
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    return b, x, out, feeds


@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize(("n", "c", "o", "h", "w", "p", "act", "residual"), [
    (1, 16, 16, 8, 8, 1, "identity", False),
    (1, 20, 37, 7, 9, 1, "relu", False),
    (2, 33, 17, 5, 6, 0, "clip", False),
    (1, 17, 7, 1, 1, 1, "identity", False),      # a map smaller than one tile
    (1, 24, 24, 13, 11, 1, "relu", True),
    (2, 40, 40, 6, 3, 1, "sigmoid", True),        # an activation the tiles cannot apply
    (1, 64, 48, 30, 26, 1, "clip", True),         # tiles in several strips
    (1, 32, 20, 44, 40, 1, "sigmoid", False),     # whole strips a thread, an activation pass
])
def test_winograd_conv_matches_reference(n: int, c: int, o: int, h: int, w: int, p: int, act: str,
                                         residual: bool, tile: int) -> None:
    b, x, out, feeds = _model(n, c, o, h, w, p, act, residual, seed=c * o + h)
    labels = _check(b.ops, [x], [out], feeds, tile)
    wino = [lb for lb in labels if WINO in lb]
    assert len(wino) == 1, labels
    assert ("+residual" in wino[0]) == residual, labels
    # the blocked chain holds: one layout change in, one out
    assert len([lb for lb in labels if lb.startswith("Raster layout")]) == 2, labels


def test_winograd_conv_takes_prelu_into_its_epilogue() -> None:
    rng = np.random.default_rng(5)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 20, 9, 10), F32)
    h = _conv(b, rng, _conv(b, rng, x, 20, k=1, p=0), 21)
    slope = b.const(rng.uniform(0.05, 0.5, (21, 1, 1)).astype(F32))
    h = b.binary("max", b.binary("mul", h, slope), h)  # PRelu as its decomposition writes it
    out = _conv(b, rng, h, 5, k=1, p=0)
    labels = _check(b.ops, [x], [out], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert any(WINO in lb for lb in labels), labels
    assert not any(lb.startswith(("Binary", "chain")) for lb in labels), labels


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_winograd_conv_under_other_kernel_variants(isa: str) -> None:
    from walle_core.errors import BackendUnavailableError
    from walle_cpu.plugin import set_isa

    try:
        set_isa(isa)
    except BackendUnavailableError as exc:  # a variant this CPU or build lacks
        pytest.skip(str(exc))
    try:
        b, x, out, feeds = _model(1, 36, 20, 11, 9, 1, "relu", True, seed=3)
        for tile in (4, 2):
            assert any(WINO in lb for lb in _check(b.ops, [x], [out], feeds, tile))
    finally:
        set_isa("auto")


def test_offered_only_for_3x3_stride_1_dense_convs() -> None:
    be = registry().get("cpu")
    rng = np.random.default_rng(0)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 32, 16, 16), F32)
    _conv(b, rng, x, 32)                    # offered
    _conv(b, rng, x, 32, s=2)               # strided
    _conv(b, rng, x, 32, k=5, p=2)          # 5x5
    _conv(b, rng, b.tensor((1, 3, 16, 16), F32), 32)  # a narrow stem input stays plain
    _conv(b, rng, b.tensor((1, 12, 16, 16), F32), 32)  # under one block of input channels
    offered = [any(a.name == WINO for a in be.algorithms(op)) for op in b.ops]
    assert offered == [True, False, False, False, False]


def test_modelled_cost_prefers_winograd_where_it_pays() -> None:
    """Many tiles per weight (a 56x56 map): Winograd F(4x4, 3x3); a 7x7 map of 512 channels
    streams 4x (F(2x2, 3x3): 1.8x) the direct conv's weights for few tiles: the direct conv."""
    import walle_cpu.ops.conv as cv

    be = registry().get("cpu")
    rng = np.random.default_rng(0)
    b = Builder(fold=lambda op: None)
    _conv(b, rng, b.tensor((1, 64, 56, 56), F32), 64)
    b2 = Builder(fold=lambda op: None)
    b2.tensor((1, 512, 7, 7), F32)
    big = b2.tensor((1, 512, 7, 7), F32)
    b2.emit(A.Conv2D([big, b2.const(np.zeros((512, 512, 3, 3), F32))], [b2.tensor(big.shape, F32)],
                     pads=(1, 1, 1, 1)))
    assert choose(b.ops[0], [be])[1].name == WINO
    assert isinstance(b.ops[0], A.Conv2D) and cv.winograd_tile(b.ops[0]) == 4
    assert choose(b2.ops[0], [be])[1].name == "nchwc"
    b3 = Builder(fold=lambda op: None)
    _conv(b3, rng, b3.tensor((1, 256, 7, 7), F32), 256)  # 7x7 of 256: F(2x2, 3x3)
    op3 = b3.ops[0]
    assert isinstance(op3, A.Conv2D) and choose(op3, [be])[1].name == WINO
    assert cv.winograd_tile(op3) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_winograd_conv_random_shapes(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 2))
    c = data.draw(st.integers(16, 40))
    o = data.draw(st.integers(1, 40))
    p = data.draw(st.integers(0, 1))
    h = data.draw(st.integers(3 - 2 * p, 14))
    w = data.draw(st.integers(3 - 2 * p, 14))
    act = data.draw(st.sampled_from(["identity", "relu", "clip", "sigmoid"]))
    residual = p == 1 and data.draw(st.booleans())
    tile = data.draw(st.sampled_from([4, 2]))
    b, x, out, feeds = _model(n, c, o, h, w, p, act, residual, seed=data.draw(st.integers(0, 99)))
    labels = _check(b.ops, [x], [out], feeds, tile)
    assert sum(WINO in lb for lb in labels) == 1, labels
