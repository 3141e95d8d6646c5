"""Element-wise unaries moved ahead of the copy before them on the cpu backend
(``walle_cpu.hoist``): after a depth-to-space Raster behind a conv, the ReLU or Sigmoid becomes
the conv's epilogue; a raster with a fill, one that drops elements, or one whose output or
input another op reads keeps the unary after it. Results match numpy in every case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Program
from walle_core.decompose.builder import Builder, contiguous, strided_regions
from walle_core.plugins import registry
from walle_cpu.compiler import lowered
from walle_cpu.hoist import hoist_unaries


def _conv1x1(b: Builder, x: A.Tensor, wv: np.ndarray) -> A.Tensor:
    y = b.tensor((x.shape[0], wv.shape[0], *x.shape[2:]), np.float32)
    b.emit(A.Conv2D([x, b.const(wv)], [y]))
    return y


def _depth_to_space(b: Builder, u: A.Tensor, s: int) -> A.Tensor:
    """(1, s*s*c, h, w) -> (1, c, s*h, s*w), channel (p, q, c) to pixel (y*s + p, x*s + q)."""
    _, cs, h, w = u.shape
    c = cs // (s * s)
    y = b.tensor((1, c, s * h, s * w), u.dtype)
    src, dst = contiguous(u.shape), contiguous(y.shape)
    regions = []
    for p, q in itertools.product(range(s), range(s)):
        regions += strided_regions(0, (p * s + q) * c * src[1], [src[1], src[2], src[3]],
                                   p * dst[2] + q, [dst[1], s * dst[2], s], [c, h, w])
    b.emit(A.Raster([u], [y], regions=regions))
    return y


def _numpy_d2s(u: np.ndarray, s: int) -> np.ndarray:
    _, cs, h, w = u.shape
    c = cs // (s * s)
    return u.reshape(s, s, c, h, w).transpose(2, 3, 0, 4, 1).reshape(1, c, s * h, s * w)


def _conv_then_copy(fn: str, *, second_reader: bool = False, fill: bool = False
                    ) -> tuple[Builder, A.Tensor, list[A.Tensor], np.ndarray]:
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 8, 6, 10), np.float32)
    wv = np.random.default_rng(0).standard_normal((32, 8, 1, 1)).astype(np.float32)
    u = _conv1x1(b, x, wv)
    y = _depth_to_space(b, u, 2)
    if fill:
        b.ops[-1].fill = 0.5  # type: ignore[attr-defined]
    z = b.unary(fn, y)
    outs = [z]
    if second_reader:
        outs.append(b.unary("neg", y))
    return b, x, outs, wv


def _run(b: Builder, x: A.Tensor, outs: list[A.Tensor]) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    cpu = registry().get("cpu")
    exe = cpu.compile(Program([(op, cpu.algorithms(op)[0]) for op in b.ops], [x], outs), threads=2)
    xv = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    return exe.run([xv]), exe._labels, xv  # type: ignore[attr-defined]


def _ref(xv: np.ndarray, wv: np.ndarray, fn: str) -> np.ndarray:
    u = np.einsum("oc,nchw->nohw", wv[:, :, 0, 0], xv)
    y = _numpy_d2s(u, 2)
    return np.maximum(y, 0) if fn == "relu" else 1 / (1 + np.exp(-y))


@pytest.mark.parametrize("fn", ["relu", "sigmoid"])
def test_activation_after_depth_to_space_becomes_the_conv_epilogue(fn: str) -> None:
    b, x, outs, wv = _conv_then_copy(fn)
    got, labels, xv = _run(b, x, outs)
    assert not any(label.startswith("Unary") for label in labels), labels
    assert any(f"+{fn}" in label for label in labels), labels
    np.testing.assert_allclose(got[0], _ref(xv, wv, fn), rtol=1e-5, atol=1e-5)


def test_a_copy_read_twice_keeps_its_unary_after_it() -> None:
    b, x, outs, wv = _conv_then_copy("relu", second_reader=True)
    program = Program([(op, registry().get("cpu").algorithms(op)[0]) for op in b.ops], [x], outs)
    assert [type(op).__name__ for op, _ in hoist_unaries(program.ops, {t.id for t in outs}, lambda: 10**6)] == \
        [type(op).__name__ for op, _ in program.ops]
    got, _, xv = _run(b, x, outs)
    np.testing.assert_allclose(got[0], _ref(xv, wv, "relu"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], -_numpy_d2s(np.einsum("oc,nchw->nohw", wv[:, :, 0, 0], xv), 2),
                               rtol=1e-5, atol=1e-5)


def test_a_copy_with_a_fill_or_a_slice_keeps_its_unary_after_it() -> None:
    b, x, outs, _ = _conv_then_copy("sigmoid", fill=True)
    program = Program([(op, registry().get("cpu").algorithms(op)[0]) for op in b.ops], [x], outs)
    assert isinstance(lowered(program, registry().get("cpu").rewrites)[-1][0], A.Unary)
    # a slice: half the channels of the conv's output
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 8, 6, 10), np.float32)
    wv = np.random.default_rng(0).standard_normal((16, 8, 1, 1)).astype(np.float32)
    u = _conv1x1(b, x, wv)
    half = b.tensor((1, 8, 6, 10), np.float32)
    b.emit(A.Raster([u], [half], regions=strided_regions(0, 0, [1], 0, [1], [8 * 60])))
    z = b.unary("sigmoid", half)
    got, labels, xv = _run(b, x, [z])
    assert any(label.startswith("Unary") for label in labels), labels
    want = 1 / (1 + np.exp(-np.einsum("oc,nchw->nohw", wv[:8, :, 0, 0], xv)))
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
