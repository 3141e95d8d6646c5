"""Backend conformance: small atomic-op programs on every available backend against numpy.

Parametrised over ``registry().available()`` at collection time, so an installed third-party
backend is tested without any change here (``pytest -k mybackend``). A case whose ops the backend
offers no algorithm for is skipped with the reason, so a partial backend passes while it grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Backend, Program
from walle_core.decompose.builder import Builder
from walle_core.plan.memory import plan_arena
from walle_core.plan.planner import expand_composites
from walle_core.plugins import registry

RNG = np.random.default_rng(7)
F32 = np.float32


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(F32)


@dataclass
class Case:
    name: str
    inputs: list[np.ndarray]
    build: Callable[[Builder, list[A.Tensor]], A.Tensor]  # emits ops, returns the output
    expect: Callable[..., np.ndarray]  # numpy on the same inputs
    rtol: float = 1e-5
    atol: float = 1e-6


def _conv2d(b: Builder, t: list[A.Tensor]) -> A.Tensor:
    out = b.tensor((1, 3, 5, 5), F32)
    b.emit(A.Conv2D(t, [out], pads=(1, 1, 1, 1), act=A.Activation("relu")))
    return out


def _np_conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # n c h w kh kw
    y = np.einsum("nchwij,ocij->nohw", win, w) + bias[None, :, None, None]
    return np.maximum(y, 0)


def _maxpool(b: Builder, t: list[A.Tensor]) -> A.Tensor:
    out = b.tensor((1, 2, 2, 2), F32)
    b.emit(A.Pool2D(t, [out], fn="max", kernel=(2, 2), strides=(2, 2)))
    return out


def _softmax(b: Builder, t: list[A.Tensor]) -> A.Tensor:
    def build() -> list[A.Tensor]:
        x = t[0]
        e = b.unary("exp", b.binary("sub", x, b.reduce_axis(x, 1, "max")))
        return [b.binary("div", e, b.reduce_axis(e, 1, "sum"))]

    return b.composite("softmax", t, build, axis=1)[0]


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


CASES = [
    Case("raster_transpose", [rand(2, 3, 4)], lambda b, t: b.transpose(t[0], [2, 0, 1]),
         lambda x: x.transpose(2, 0, 1)),
    Case("raster_slice_step", [rand(6, 5)], lambda b, t: b.slice(t[0], [1, 0], [2, 3], [2, 2]),
         lambda x: x[1:5:2, 0:5:2]),
    Case("raster_pad_fill", [rand(2, 3)], lambda b, t: b.pad(t[0], [1, 0], [0, 2], 7.0),
         lambda x: np.pad(x, ((1, 0), (0, 2)), constant_values=7.0)),
    Case("raster_concat", [rand(2, 3), rand(2, 1)], lambda b, t: b.concat(t, 1),
         lambda x, y: np.concatenate([x, y], 1)),
    Case("unary_relu", [rand(4, 5)], lambda b, t: b.unary("relu", t[0]), lambda x: np.maximum(x, 0)),
    Case("unary_exp", [rand(4, 5)], lambda b, t: b.unary("exp", t[0]), np.exp),
    Case("unary_tanh", [rand(4, 5)], lambda b, t: b.unary("tanh", t[0]), np.tanh),
    Case("binary_add_broadcast", [rand(3, 4), rand(4)], lambda b, t: b.binary("add", t[0], t[1]),
         np.add),
    Case("binary_div", [rand(3, 4), rand(3, 4) + 3], lambda b, t: b.binary("div", t[0], t[1]),
         np.divide),
    Case("binary_lt_bool", [rand(3, 4), rand(1, 4)], lambda b, t: b.binary("lt", t[0], t[1]),
         np.less),
    Case("select", [rand(3, 4) > 0, rand(3, 4), rand(3, 1)],
         lambda b, t: b.select(t[0], t[1], t[2]), np.where),
    Case("cast_f32_i32", [rand(3, 4) * 10], lambda b, t: b.cast(t[0], np.int32),
         lambda x: x.astype(np.int32)),
    Case("reduce_sum", [rand(3, 5, 2)], lambda b, t: b.reduce_axis(t[0], 1, "sum"),
         lambda x: x.sum(1, keepdims=True), rtol=1e-5, atol=1e-5),
    Case("reduce_argmax", [rand(4, 6)], lambda b, t: b.reduce_axis(t[0], 1, "argmax"),
         lambda x: x.argmax(1)[:, None]),
    Case("reduce_cumsum", [rand(4, 6)], lambda b, t: b.reduce_axis(t[0], 1, "cumsum"),
         lambda x: np.cumsum(x, 1), atol=1e-5),
    Case("matmul_batched_broadcast", [rand(2, 3, 4), rand(4, 5)],
         lambda b, t: b.matmul(t[0], t[1]), np.matmul, atol=1e-5),
    Case("conv2d_pad_bias_relu", [rand(1, 2, 5, 5), rand(3, 2, 3, 3), rand(3)], _conv2d,
         _np_conv2d, atol=1e-5),
    Case("pool2d_max", [rand(1, 2, 4, 4)], _maxpool,
         lambda x: x.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5))),
    Case("gather_rows", [rand(5, 3), np.array([4, 0, -1, 2], np.int64)],
         lambda b, t: b.gather_rows(t[0], t[1], 5, 3), lambda x, i: x[i]),
    Case("sort_descending", [rand(3, 7)], lambda b, t: b.argsort(t[0], 1, True),
         lambda x: np.argsort(-x, axis=1, kind="stable")),
    Case("composite_softmax", [rand(3, 6)], _softmax, _np_softmax),
]


def _backends() -> list[Backend]:
    return registry().available()


def _no_fold(op: A.Op) -> None:
    raise AssertionError("cases feed no constants, so nothing should fold")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("backend", _backends(), ids=[b.name for b in _backends()])
def test_backend_matches_numpy(backend: Backend, case: Case) -> None:
    b = Builder(_no_fold)
    ins = []
    for arr in case.inputs:
        t = b.tensor(arr.shape, arr.dtype)
        ins.append(t)
    out = case.build(b, ins)
    ops = expand_composites(b.ops, backend)
    chosen = []
    for op in ops:
        algos = backend.algorithms(op)
        if not algos:
            pytest.skip(f"{backend.name} offers no algorithm for {op.kind.value}")
        chosen.append((op, algos[0]))
    arena = plan_arena(ops, {t.id for t in ins} | {out.id})
    program = Program(chosen, ins, [out], arena.offsets, arena.arena_bytes)
    (got,) = backend.compile(program, threads=1).run(case.inputs)
    want = np.asarray(case.expect(*case.inputs))
    assert got.shape == want.shape == out.shape
    assert got.dtype == want.dtype == out.dtype, (got.dtype, want.dtype, out.dtype)
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)
