"""The blocked (NCHW16c) direct conv's driver paths against the reference backend, on every x86
kernel variant: 1x1 convs without padding run each task's pixels as one run of tiles across
rows (two tile sizes when the pixels do not split evenly), wide padded maps run their interior
columns as runs between border tiles, plain-input stems take one table entry per channel and
tap, partial input blocks (channels not a multiple of 16) and reductions cut into slices
(hundreds of input channels) continue their partial sums, and filter groups of 1-4 blocks.
Grouped convs whose groups lie within 16-channel blocks (g channels in and out per group, 16 a
multiple of g: RegNet's and ResNeXt's groups of 8) run as one dense 16 x 16 conv per block, zero
across groups (``layout.is_blockdiag``): group widths 2-16, a partial last block (whose padding
channels the previous conv's sigmoid leaves at 0.5: they must weigh nothing), strides, padded
and small maps, a residual under each activation, batches."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_variants import rerun_on_variant

from walle_core import atomic as A
from walle_core.backend import Algorithm, Program
from walle_core.decompose.builder import Builder
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")
F32 = np.dtype(np.float32)

# (input channels, map height, width, outputs, kernel, stride, pad, residual, activation)
CASES = [
    (24, 37, 45, 70, 1, 1, 0, False, "relu"),     # flat run, partial block, 4 + 1 filter blocks
    (16, 40, 40, 96, 1, 1, 0, True, None),        # flat run + residual, 4 + 2 filter blocks
    (40, 23, 29, 48, 1, 2, 0, False, "relu"),     # 1x1 stride 2: rows not contiguous
    (700, 9, 11, 40, 1, 1, 0, True, "relu"),      # reduction in two slices, partial block
    (33, 41, 70, 19, 3, 2, 1, False, "relu"),     # wide map: interior runs between borders
    (20, 35, 64, 35, 3, 1, 1, True, None),        # wide map stride 1 + residual
    (3, 66, 70, 32, 3, 2, 1, False, "relu"),      # plain-input stem
    (3, 47, 64, 24, 7, 2, 3, False, None),        # plain-input 7x7 stem, wide borders
    (16, 12, 13, 16, 3, 1, 1, False, "sigmoid"),  # small map: padded copy, tiles across rows
]


def _case(c: int, h: int, w: int, o: int, k: int, s: int, p: int, res: bool,
          act: str | None) -> tuple[list[A.Op], A.Tensor, A.Tensor, np.ndarray]:
    rng = np.random.default_rng(c * 1000 + h * 10 + k)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, c, h, w), F32)
    src = x
    if c > 3:  # a 3x3 conv first, so that the conv under test reads a blocked input
        src = b.tensor((1, c, h, w), F32)
        b.emit(A.Conv2D([x, b.const((rng.uniform(-0.5, 0.5, (c, c, 3, 3)) / (3 * np.sqrt(c))).astype(F32))],
                        [src], strides=(1, 1), pads=(1, 1, 1, 1)))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = b.tensor((1, o, oh, ow), F32)
    wv = (rng.uniform(-0.5, 0.5, (o, c, k, k)) / np.sqrt(c * k * k)).astype(F32)
    b.emit(A.Conv2D([src, b.const(wv), b.const(rng.uniform(-0.5, 0.5, o).astype(F32))], [y],
                    strides=(s, s), pads=(p, p, p, p),
                    act=A.Activation(act) if act else A.Activation()))
    if res:  # the residual: a second conv of the same shape
        r = b.tensor((1, o, oh, ow), F32)
        b.emit(A.Conv2D([src, b.const(wv[::-1].copy())], [r], strides=(s, s), pads=(p, p, p, p)))
        y = b.binary("add", y, r)
    # and a 1x1 conv after it, so that its output stays blocked
    z = b.tensor((1, 16, oh, ow), F32)
    b.emit(A.Conv2D([y, b.const((rng.uniform(-0.5, 0.5, (16, o, 1, 1)) / np.sqrt(o)).astype(F32))], [z],
                    strides=(1, 1), pads=(0, 0, 0, 0)))
    return b.ops, x, z, rng.uniform(-1, 1, x.shape).astype(F32)


def _run(ops: list[A.Op], x: A.Tensor, y: A.Tensor, xv: np.ndarray, backend: str,
         threads: int) -> tuple[np.ndarray, list[str]]:
    be = registry().get(backend)
    items = []
    for op in ops:
        algos = be.algorithms(op)
        items.append((op, next((a for a in algos if a.name == "nchwc"),
                               algos[0] if algos else Algorithm("?"))))
    exe = be.compile(Program(items, [x], [y]), threads=threads)
    return exe.run([xv])[0], list(getattr(exe, "_labels", []))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda cs: "c{}_{}x{}_o{}_k{}s{}p{}{}".format(*cs[:7], "_res" if cs[7] else ""))
def test_blocked_conv_matches_the_reference(case: tuple[int | bool | str | None, ...], threads: int) -> None:
    ops, x, y, xv = _case(*case)  # type: ignore[arg-type]
    got, labels = _run(ops, x, y, xv, "cpu", threads)
    want, _ = _run(ops, x, y, xv, "reference", 1)
    assert sum("nchwc" in lb for lb in labels) >= 2, labels
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


# (channels, group width, map height, width, kernel, stride, batch, residual, activation)
BLOCKDIAG_CASES = [
    (72, 8, 12, 12, 3, 2, 1, False, "relu"),     # regnet's: 9 groups, a partial last block
    (48, 8, 24, 24, 3, 1, 1, True, "relu"),      # whole blocks + residual, wide map borders
    (64, 16, 9, 9, 3, 1, 2, False, None),        # one group a block, a batch of two
    (24, 4, 7, 7, 3, 1, 1, True, "sigmoid"),     # 4-wide groups, partial block, small map
    (32, 2, 20, 41, 1, 1, 1, False, "clip"),     # 1x1, 2-wide groups
    (40, 8, 35, 33, 5, 2, 1, True, None),        # 5x5 stride 2, partial block
]


def _blockdiag_case(c: int, g: int, h: int, w: int, k: int, s: int, n: int, res: bool,
          act: str | None) -> tuple[list[A.Op], A.Tensor, A.Tensor, np.ndarray]:
    rng = np.random.default_rng(c * 100 + g * 10 + k)
    b = Builder(fold=lambda op: None)
    x = b.tensor((n, c, h, w), F32)
    src = b.tensor((n, c, h, w), F32)  # a dense blocked conv first: the grouped one reads blocks
    b.emit(A.Conv2D([x, b.const((rng.uniform(-0.5, 0.5, (c, c, 3, 3)) / (3 * np.sqrt(c))).astype(F32))],
                    [src], strides=(1, 1), pads=(1, 1, 1, 1), act=A.Activation("sigmoid")))
    p = k // 2
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = b.tensor((n, c, oh, ow), F32)
    wv = (rng.uniform(-0.5, 0.5, (c, g, k, k)) / np.sqrt(g * k * k)).astype(F32)
    b.emit(A.Conv2D([src, b.const(wv), b.const(rng.uniform(-0.5, 0.5, c).astype(F32))], [y],
                    strides=(s, s), pads=(p, p, p, p), groups=c // g,
                    act=A.Activation(act, (-0.3, 0.4) if act == "clip" else ()) if act else A.Activation()))
    if res:  # the residual: a dense conv of the same output shape
        r = b.tensor((n, c, oh, ow), F32)
        b.emit(A.Conv2D([src, b.const((rng.uniform(-0.5, 0.5, (c, c, k, k)) / np.sqrt(c * k * k)).astype(F32))],
                        [r], strides=(s, s), pads=(p, p, p, p)))
        y = b.binary("add", y, r)
    z = b.tensor((n, 16, oh, ow), F32)  # and a 1x1 conv after it, so that its output stays blocked
    b.emit(A.Conv2D([y, b.const((rng.uniform(-0.5, 0.5, (16, c, 1, 1)) / np.sqrt(c)).astype(F32))], [z],
                    strides=(1, 1), pads=(0, 0, 0, 0)))
    return b.ops, x, z, rng.uniform(-1, 1, x.shape).astype(F32)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", BLOCKDIAG_CASES, ids=lambda cs: "c{}_g{}_{}x{}_k{}s{}_n{}{}".format(*cs[:7], "_res" if cs[7] else ""))
def test_block_diagonal_grouped_conv_matches_the_reference(case: tuple[int | bool | str | None, ...],
                                                           threads: int) -> None:
    ops, x, y, xv = _blockdiag_case(*case)  # type: ignore[arg-type]
    got, labels = _run(ops, x, y, xv, "cpu", threads)
    want, _ = _run(ops, x, y, xv, "reference", 1)
    c, g = case[0], case[1]
    assert any("nchwc" in lb and f"[{c}, {g}," in lb for lb in labels), labels
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def test_groups_across_blocks_stay_plain() -> None:
    """Groups of 12 straddle blocks and groups of 32 span two: those keep their plain kernels."""
    be = registry().get("cpu")
    for c, g in ((48, 12), (64, 32), (48, 3)):
        b = Builder(fold=lambda op: None)
        x = b.tensor((1, c, 8, 8), F32)
        y = b.tensor((1, c, 8, 8), F32)
        op = A.Conv2D([x, b.const(np.ones((c, g, 3, 3), F32))], [y], strides=(1, 1), pads=(1, 1, 1, 1),
                      groups=c // g)
        assert "nchwc" not in [a.name for a in be.algorithms(op)], (c, g)


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_other_kernel_variants_match_the_reference(isa: str) -> None:
    """The same cases on the AVX2 and portable variants (their tiles: one filter block)."""
    rerun_on_variant(__file__, "(test_blocked_conv_matches_the_reference or "
                     "test_block_diagonal_grouped_conv_matches_the_reference) and -2]", isa)
