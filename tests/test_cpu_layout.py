"""The cpu backend's blocked channel layout (NCHW16c): runs of ``nchwc`` convs stay blocked, the
layout changes are Raster ops at the edges of a run, pooling and global reductions read blocked
tensors, and every result matches the reference backend (channel counts that are not multiples
of 16, batches, strides, padding, residuals, fused activations)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walle_core import atomic as A
from walle_core.backend import Algorithm, Program
from walle_core.decompose.builder import Builder
from walle_core.plan.planner import expand_composites
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")
F32 = np.dtype(np.float32)


def _conv(b: Builder, rng: np.random.Generator, x: A.Tensor, o: int, k: int = 3, s: int = 1,
          p: int = 1, depthwise: bool = False, act: A.Activation | None = None) -> A.Tensor:
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    wv = rng.uniform(-0.5, 0.5, (o, 1 if depthwise else c, k, k)).astype(F32)
    y = b.tensor((n, o, oh, ow), F32)
    b.emit(A.Conv2D([x, b.const(wv), b.const(rng.uniform(-0.5, 0.5, o).astype(F32))], [y],
                    strides=(s, s), pads=(p, p, p, p), groups=c if depthwise else 1,
                    act=act or A.Activation()))
    return y


def _pool(b: Builder, x: A.Tensor, fn: str, k: int = 3, s: int = 2, p: int = 1) -> A.Tensor:
    n, c, h, w = x.shape
    y = b.tensor((n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1), F32)
    b.emit(A.Pool2D([x], [y], fn=fn, kernel=(k, k), strides=(s, s), pads=(p, p, p, p)))
    return y


def _run(ops: list[A.Op], ins: list[A.Tensor], outs: list[A.Tensor], feeds: list[np.ndarray],
         backend: str, threads: int = 2) -> tuple[list[np.ndarray], list[str]]:
    be = registry().get(backend)
    items = []
    for op in expand_composites(ops, be):  # the reference runs a composite's expansion
        algos = be.algorithms(op)
        pick = next((a for a in algos if a.name == "nchwc"), algos[0] if algos else Algorithm("?"))
        items.append((op, pick))
    exe = be.compile(Program(items, ins, outs), threads=threads)
    return exe.run(feeds), list(getattr(exe, "_labels", []))


def _check(ops: list[A.Op], ins: list[A.Tensor], outs: list[A.Tensor], feeds: list[np.ndarray],
           threads: int = 2, scale: float = 1.0) -> list[str]:
    got, labels = _run(ops, ins, outs, feeds, "cpu", threads)
    want, _ = _run(ops, ins, outs, feeds, "reference")
    for g, w in zip(got, want, strict=True):
        # sums of terms up to the output's scale, added in another order: error ~ eps * scale
        big = max(1.0, scale, float(np.abs(w).max(initial=0.0)))
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-5 * big)
    return labels


def test_a_conv_run_stays_blocked_with_layout_changes_only_at_its_edges() -> None:
    rng = np.random.default_rng(0)
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 3, 23, 21), F32)
    h = _conv(b, rng, x, 20, act=A.Activation("relu"))  # the stem reads the plain input
    h = _pool(b, h, "max")
    r = h
    h = _conv(b, rng, h, 20, act=A.Activation("clip", (0.0, 6.0)))
    h = _conv(b, rng, h, 20, depthwise=True)
    h = b.binary("add", _conv(b, rng, h, 20, k=1, p=0), r)  # fused as the conv's residual
    h = _conv(b, rng, h, 37, s=2, act=A.Activation("hardswish"))
    h = _pool(b, h, "avg", k=2, s=1, p=0)
    pooled = b.tensor((2, 37, 1, 1), F32)  # global average pool, as ReduceMean lowers it
    b.emit(A.Reduce([h], [pooled], fn="sum", outer=2 * 37, n=h.shape[2] * h.shape[3], inner=1))
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    labels = _check(b.ops, [x], [pooled], feeds)
    layout = [lb for lb in labels if lb.startswith("Raster layout")]
    assert sum("nchwc" in lb for lb in labels) == 5, labels
    assert len(layout) == 1 and "[2, 3, 1, 1, 16] -> [2, 37, 1, 1]" in layout[0], labels
    assert any(lb.startswith("Conv2D+residual nchwc") for lb in labels), labels


@pytest.mark.parametrize("c", [20, 32])
def test_element_wise_ops_between_blocked_convs_stay_blocked(c: int) -> None:
    """PRelu as it lowers (x < 0, x * per-channel slope, select) and SiLU as a fused chain
    (x * sigmoid(x)) between blocked convs run on the blocked tensors, the slope padded to
    whole blocks: no layout change inside the run."""
    rng = np.random.default_rng(4)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3, 19, 17), F32)
    h = _conv(b, rng, x, c)
    slope = b.const(rng.uniform(0.05, 0.5, (c, 1, 1)).astype(F32))
    h = b.select(b.binary("lt", h, b.scalar(0, h)), b.binary("mul", h, slope), h)  # PRelu
    h = _conv(b, rng, h, c, depthwise=True)
    h = b.binary("mul", h, b.unary("sigmoid", h))  # SiLU, a chain
    h = _conv(b, rng, h, c, k=1, p=0)
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    labels = _check(b.ops, [x], [h], feeds)
    assert sum("nchwc" in lb for lb in labels) == 3, labels
    assert len([lb for lb in labels if lb.startswith("Raster layout")]) == 1, labels
    assert any(lb.startswith("Select direct [1, 2, 19, 17, 16]") for lb in labels), labels
    assert any(lb.startswith("chain[sigmoid+mul] [1, 2, 19, 17, 16]") for lb in labels), labels


@pytest.mark.parametrize(("n", "c"), [(1, 24), (2, 32)])
def test_squeeze_excite_gate_multiplies_blocked_values(n: int, c: int) -> None:
    """x * sigmoid(conv(mean(x))), the gate (N, C, 1, 1) broadcast over H and W, reads both the
    activations and the gate blocked: no layout change between the convs (batches, a channel
    count that is not a whole number of blocks)."""
    rng = np.random.default_rng(7)
    b = Builder(fold=lambda op: None)
    x = b.tensor((n, 3, 12, 10), F32)
    h = _conv(b, rng, x, c)
    pooled = b.tensor((n, c, 1, 1), F32)
    b.emit(A.Reduce([h], [pooled], fn="sum", outer=n * c, n=12 * 10, inner=1))
    gate = _conv(b, rng, pooled, c, k=1, p=0, act=A.Activation("sigmoid"))
    h = _conv(b, rng, b.binary("mul", h, gate), c, k=1, p=0)
    feeds = [rng.uniform(-1, 1, x.shape).astype(F32)]
    labels = _check(b.ops, [x], [h], feeds)
    assert len([lb for lb in labels if lb.startswith("Raster layout")]) == 1, labels
    assert any(lb.startswith(f"Binary/mul direct [{n}, 2, 12, 10, 16]") for lb in labels), labels


def test_a_narrow_head_leaves_the_layout_before_its_element_wise_tail() -> None:
    """A one-channel map (a mask head) that no blocked conv reads again is unblocked right after
    its conv: the element-wise tail runs over one plane, not over 16 lanes of a block."""
    rng = np.random.default_rng(8)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3, 20, 18), F32)
    h = _conv(b, rng, _conv(b, rng, x, 16), 16)
    m = _conv(b, rng, h, 1, k=1, p=0)
    y = b.binary("mul", m, b.unary("sigmoid", m))  # m read twice: no conv epilogue takes it
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    tail = [lb for lb in labels if not lb.startswith(("Conv2D", "Raster layout"))]
    assert tail and all("[1, 1, 20, 18, 16]" not in lb for lb in tail), labels


@pytest.mark.parametrize(("before", "after"), [((0, 0, 0, 0), (0, 16, 0, 0)), ((0, 0, 1, 2), (0, 0, 2, 1)),
                                               ((0, 0, 0, 0), (0, 7, 0, 0)), ((0, 8, 0, 0), (0, 0, 0, 0))])
def test_pads_of_whole_blocks_run_blocked(before: tuple[int, ...], after: tuple[int, ...]) -> None:
    """A zero pad between blocked convs (channels widened after the last block, as TFLite
    residuals do, or a spatial border) stays blocked with its fill; channels padded in front
    shift the blocks by half a block and stay blocked too, as runs of 8 lanes."""
    rng = np.random.default_rng(9)
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 3, 9, 11), F32)
    h = _conv(b, rng, _conv(b, rng, x, 16), 16)
    p = b.pad(h, before, after, 0.0)
    y = _conv(b, rng, p, 8, k=1, p=0)
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    pad = [lb for lb in labels if lb.startswith("Raster direct")]
    blocked = pad == ["Raster direct [2, 1, 9, 11, 16] -> " + str([2, -(-p.shape[1] // 16), *p.shape[2:], 16])]
    assert blocked, labels


@pytest.mark.parametrize("c1", [16, 32, 8])
def test_channel_concat_and_interleave_run_blocked_when_they_move_whole_blocks(c1: int) -> None:
    """U-Net's skip concat and ConvTranspose's phase interleave stay blocked: every block
    comes whole from one source (c1 % 16 == 0) or as runs of 8 lanes (c1 == 8)."""
    rng = np.random.default_rng(c1)
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 3, 10, 12), F32)
    a = _conv(b, rng, x, c1)
    phases = [_conv(b, rng, a, 16, 1, 1, 0) for _ in range(2)]
    wide = b.tensor((2, 16, 10, 24), F32)  # interleave two maps along the width
    b.emit(A.Raster(phases, [wide], regions=[
        A.Region(k, i * 16 * 120, (12, 1, 0), i * 16 * 240 + k, (24, 2, 0), (160, 12, 1))
        for i in range(2) for k in range(2)]))
    y = _conv(b, rng, b.concat([_conv(b, rng, wide, c1, 1, 1, 0), wide], 1), 20)
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    layout = [lb for lb in labels if lb.startswith("Raster layout")]
    # one change, for the output
    assert len(layout) == 1, labels


@pytest.mark.parametrize(("c", "scale", "coord"), [(16, 2, "asymmetric"), (24, 2, "half_pixel"),
                                               (32, 3, "asymmetric"), (20, 1.5, "asymmetric")])
def test_nearest_upsampling_between_blocked_convs_stays_blocked(c: int, scale: float, coord: str) -> None:
    """Nearest upsampling of H and W (a YOLO / FPN top-down path) by whole factors is one
    Raster that runs on the blocked tensors, one region per pixel phase (1.5x: the resize2d
    composite, one blocked pass): no layout change around it; same numbers."""
    from walle_core.decompose.resize import AxisSpec, Options, resize

    rng = np.random.default_rng(c)
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 3, 7, 10), F32)
    h = _conv(b, rng, x, c)
    opt = Options("nearest", coord, "round_prefer_floor", -0.75, False, 0.0, False)
    up = resize(b, h, {a: AxisSpec(h.shape[a], int(h.shape[a] * scale), scale, (0.0, 1.0)) for a in (2, 3)}, opt)
    y = _conv(b, rng, up, 16)
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    layout = [lb for lb in labels if lb.startswith("Raster layout")]
    assert len(layout) == 1, labels


def test_a_lone_conv_between_plain_ops_runs_plain() -> None:
    """Two layout changes around one kernel do not pay: the conv gets its NCHW algorithm."""
    rng = np.random.default_rng(1)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 24, 9, 9), F32)
    y = b.unary("neg", _conv(b, rng, b.unary("abs", x), 32))
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert not any("nchwc" in lb or "layout" in lb for lb in labels), labels


def test_a_lone_narrow_conv_from_a_plain_input_runs_plain() -> None:
    """A narrow input reads plain into the stem kernel, but with fewer outputs than a block and
    no blocked conv after it the padding and the change back out cost more: NCHW algorithm.
    With a blocked conv after it, the same conv stays blocked."""
    rng = np.random.default_rng(3)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 4, 28, 28), F32)
    y = _conv(b, rng, x, 4, act=A.Activation("relu"))
    labels = _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert not any("nchwc" in lb or "layout" in lb for lb in labels), labels
    z = _conv(b, rng, y, 16)
    labels = _check(b.ops, [x], [z], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert sum("nchwc" in lb for lb in labels) == 2, labels


def test_blocked_output_that_is_also_a_program_output_is_converted_once() -> None:
    rng = np.random.default_rng(2)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3, 10, 10), F32)
    mid = _conv(b, rng, x, 18)
    y = _conv(b, rng, mid, 17)
    labels = _check(b.ops, [x], [mid, y], [rng.uniform(-1, 1, x.shape).astype(F32)])
    assert sum(lb.startswith("Raster layout") for lb in labels) == 2, labels


@pytest.mark.parametrize(("k", "s", "p"), [(3, 1, 1), (3, 2, 1), (5, 1, 2), (7, 2, 3), (2, 1, 1)])
def test_wide_maps_give_border_pixels_their_own_taps(k: int, s: int, p: int) -> None:
    """Maps 32 wide and more are not copied into a padded buffer: border pixels run with
    their valid taps only (with a residual and a stem conv from the plain input)."""
    rng = np.random.default_rng(k * 10 + s + p)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3, 41, 70), F32)
    h = _conv(b, rng, x, 19, k, s, p)
    y = b.binary("add", _conv(b, rng, h, 19, k, 1, k // 2) if k % 2 else
                 _conv(b, rng, h, 19, 3, 1, 1), h)
    _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])


@pytest.mark.parametrize(("k", "s", "p"), [(3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2), (7, 1, 3)])
def test_small_map_depthwise_convs_match_with_or_without_a_padded_copy(k: int, s: int, p: int) -> None:
    """Depthwise convs on maps under 32 wide: 3x3 keeps its border taps (three tap windows
    per row stay cached), 5x5 and 7x7 (five and seven) read a zero-bordered copy."""
    rng = np.random.default_rng(k * 10 + s)
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, 36, 9, 11), F32)
    h = _conv(b, rng, _conv(b, rng, x, 40, 1, 1, 0), 40, k, s, p, depthwise=True,
              act=A.Activation("relu"))
    y = _conv(b, rng, h, 24, 1, 1, 0)
    _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)])


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_give_the_same_blocked_result(threads: int) -> None:
    rng = np.random.default_rng(3)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 40, 15, 13), F32)
    y = _conv(b, rng, _conv(b, rng, x, 70, s=2), 33, k=1, p=0)
    _check(b.ops, [x], [y], [rng.uniform(-1, 1, x.shape).astype(F32)], threads)


@st.composite
def _chains(draw: st.DrawFn) -> tuple[list[A.Op], A.Tensor, A.Tensor, np.ndarray]:
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    b = Builder(fold=lambda op: None)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 40))
    x = b.tensor((n, c, draw(st.integers(3, 14)), draw(st.integers(3, 14))), F32)
    h = x
    for _ in range(draw(st.integers(2, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "pool", "residual", "concat",
                                     "slice"]))
        k = draw(st.sampled_from([1, 3]))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, k // 2 + 1)) if k > 1 else 0
        if h.shape[2] + 2 * p < k or h.shape[3] + 2 * p < k:
            continue
        if kind == "pool" and h.shape[2] >= 2 and h.shape[3] >= 2:
            h = _pool(b, h, draw(st.sampled_from(["max", "avg"])), k=2, s=2, p=0)
        elif kind == "depthwise":
            h = _conv(b, rng, h, h.shape[1], k, s, p, depthwise=True)
        elif kind == "residual":
            h = b.binary("add", _conv(b, rng, h, h.shape[1], 3, 1, 1), h)
        elif kind == "concat":  # channel concat: blocked when the offsets are whole blocks
            h = b.concat([h, _conv(b, rng, h, draw(st.sampled_from([8, 16, 21])), 1, 1, 0)], 1)
        elif kind == "slice" and h.shape[2] > 2:  # a spatial crop, or a channel range
            if draw(st.booleans()):
                h = b.slice(h, [0, 0, 1, 0], [h.shape[0], h.shape[1], h.shape[2] - 2, h.shape[3]],
                            [1, 1, 1, 1])
            elif h.shape[1] > 16:
                h = b.slice(h, [0, 16, 0, 0], [h.shape[0], h.shape[1] - 16, *h.shape[2:]], [1, 1, 1, 1])
        else:
            act = draw(st.sampled_from([None, A.Activation("relu"), A.Activation("sigmoid")]))
            h = _conv(b, rng, h, draw(st.integers(1, 40)), k, s, p, act=act)
    return b.ops, x, h, rng.uniform(-1, 1, x.shape).astype(F32)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chains())
def test_random_blocked_chains_match_the_reference(case: tuple[list[A.Op], A.Tensor, A.Tensor, np.ndarray]) -> None:
    ops, x, y, xv = case
    if not ops:
        return
    # A conv's fused sigmoid hides its sum: terms as large as the chain's largest value can cancel
    # there, so the rounding error scales with that value, not with the output's.
    values = [t for op in ops for t in op.outputs]
    chain_scale = max(float(np.abs(v).max(initial=0.0)) for v in _run(ops, [x], values, [xv], "reference")[0])
    _check(ops, [x], [y], [xv], scale=chain_scale)


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_forced_kernel_variant_is_used(isa: str) -> None:
    """WALLE_CPU_ISA (read in walle_core.flags) picks the kernel variant (the C harness of
    test_cpu_neon runs the blocked kernels of every variant)."""
    code = ("import numpy as np, walle_cpu.plugin as p\n"
            f"assert p.isa() == {isa!r}, p.isa()\n"
            "print('OK')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WALLE_CPU_ISA": isa})
    if "names a kernel variant" in res.stderr + res.stdout:
        pytest.skip(f"this CPU lacks {isa}")
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_unsupported_forced_variant_makes_the_backend_unavailable_with_the_reason() -> None:
    code = ("from walle_cpu.plugin import CpuBackend\n"
            "a = CpuBackend().availability()\n"
            "assert not a.available and 'WALLE_CPU_ISA=sse9' in a.reason, a\n"
            "print('OK')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WALLE_CPU_ISA": "sse9"})
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
