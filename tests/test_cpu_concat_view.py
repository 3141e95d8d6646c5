"""Concats as views on the cpu backend (``walle_cpu.concat_view``): a Raster that places whole
inputs as contiguous runs of its output is not run, its inputs are written in place. The
results must equal numpy's, the arena must keep every part alive as long as its target and
any reader, and rasters that are not such concats (a fill, an input read twice, a strided
copy, a part that is a program output or input) still run."""

from __future__ import annotations

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Program
from walle_core.decompose.builder import Builder
from walle_core.plugins import registry


def _compile(b: Builder, ins: list[A.Tensor], outs: list[A.Tensor], threads: int = 2):  # type: ignore[no-untyped-def]
    cpu = registry().get("cpu")
    return cpu.compile(Program([(op, cpu.algorithms(op)[0]) for op in b.ops], ins, outs), threads=threads)


def _rasters(exe) -> int:  # type: ignore[no-untyped-def]
    return sum(label.startswith("Raster") for label in exe._labels)


def _concat(b: Builder, parts: list[A.Tensor], axis: int) -> A.Tensor:
    shape = list(parts[0].shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    y = b.tensor(tuple(shape), parts[0].dtype)
    b.emit(A.Raster(parts, [y], regions=_concat_regions(parts, y, axis)))
    return y


def _concat_regions(parts: list[A.Tensor], y: A.Tensor, axis: int) -> list[A.Region]:
    outer = int(np.prod(y.shape[:axis]))
    inner = int(np.prod(y.shape[axis + 1:]))
    regions, at = [], 0
    for i, p in enumerate(parts):
        run = p.shape[axis] * inner
        regions.append(A.Region(i, 0, (0, run, 1), at, (0, y.shape[axis] * inner, 1), (1, outer, run)))
        at += run
    return regions


@pytest.mark.parametrize("threads", [1, 2])
def test_a_channel_concat_of_computed_parts_is_a_view(threads: int) -> None:
    """y = concat(tanh(x), x * 2, exp(x)) along the channels of a batch-1 map, then read by an
    add: the concat is not run and its parts stay valid for a later reader (the exp part is
    read again after the concat)."""
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 16, 12, 20), np.float32)
    p0 = b.unary("tanh", x)
    p1 = b.binary("mul", x, b.const(np.array(2.0, np.float32)))
    p2 = b.unary("exp", x)
    y = _concat(b, [p0, p1, p2], 1)
    z = b.binary("add", y, b.const(np.array(1.0, np.float32)))
    w = b.unary("neg", p2)
    exe = _compile(b, [x], [z, w], threads)
    assert _rasters(exe) == 0
    xv = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    got_z, got_w = exe.run([xv])
    want = np.concatenate([np.tanh(xv), xv * 2, np.exp(xv)], 1) + 1
    np.testing.assert_allclose(got_z, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_w, -np.exp(xv), rtol=1e-6)


def test_nested_concats_and_a_program_output_target() -> None:
    """concat(concat(a, b), c) as the program's output: the inner parts land at their offsets
    in the output array itself."""
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 32, 8, 8), np.float32)
    a, c, d = b.unary("tanh", x), b.unary("exp", x), b.unary("neg", x)
    inner = _concat(b, [a, c], 1)
    y = _concat(b, [inner, d], 1)
    exe = _compile(b, [x], [y])
    assert _rasters(exe) == 0
    xv = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    want = np.concatenate([np.tanh(xv), np.exp(xv), -xv], 1)
    np.testing.assert_allclose(exe.run([xv])[0], want, rtol=1e-6)


def test_rasters_that_are_not_views_still_run() -> None:
    """A concat along the last axis (each part strided in the output), a concat reading a
    program input, one reading the same part twice, and one of a program output all run."""
    b = Builder(fold=lambda op: None)
    x = b.tensor((4, 16), np.float32)
    t = b.unary("tanh", x)
    e = b.unary("exp", x)
    y1 = _concat(b, [t, e], 1)       # strided parts
    y2 = _concat(b, [x, e], 0)       # a program input as a part
    y3 = _concat(b, [t, t], 0)       # the same part twice
    y4 = _concat(b, [e, t], 0)       # e is also a program output
    exe = _compile(b, [x], [y1, y2, y3, y4, e])
    assert _rasters(exe) == 4
    xv = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    got = exe.run([xv])
    th, ex = np.tanh(xv), np.exp(xv)
    for g, w in zip(got, [np.concatenate([th, ex], 1), np.concatenate([xv, ex], 0),
                          np.concatenate([th, th], 0), np.concatenate([ex, th], 0), ex], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_parts_off_cache_lines_are_not_placed() -> None:
    """A part whose offset in the output is not a multiple of 64 bytes stays a copy."""
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 3), np.float32)
    y = _concat(b, [b.unary("tanh", x), b.unary("exp", x)], 1)
    exe = _compile(b, [x], [y])
    assert _rasters(exe) == 1
    xv = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(exe.run([xv])[0], np.concatenate([np.tanh(xv), np.exp(xv)], 1), rtol=1e-6)


def test_arena_keeps_parts_apart_from_other_tensors() -> None:
    """Many intermediates live while the parts are written: none may share their memory (the
    arena is planned with each part renamed to its target)."""
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, 16, 16, 16), np.float32)
    parts, keep = [], []
    h = x
    for i in range(4):
        h = b.unary("tanh", b.binary("add", h, b.const(np.array(0.1 * (i + 1), np.float32))))
        parts.append(h)
        keep.append(b.unary("exp", h))  # read after the concat
    y = _concat(b, parts, 1)
    outs = [b.binary("add", y, b.const(np.array(0.0, np.float32)))]
    for k in keep:
        outs.append(b.binary("mul", k, b.const(np.array(1.0, np.float32))))
    exe = _compile(b, [x], outs)
    xv = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    got = exe.run([xv])
    hv, want_parts = xv, []
    for i in range(4):
        hv = np.tanh(hv + np.float32(0.1 * (i + 1)))
        want_parts.append(hv)
    np.testing.assert_allclose(got[0], np.concatenate(want_parts, 1), rtol=1e-5, atol=1e-6)
    for g, p in zip(got[1:], want_parts, strict=True):
        np.testing.assert_allclose(g, np.exp(p), rtol=1e-5)
