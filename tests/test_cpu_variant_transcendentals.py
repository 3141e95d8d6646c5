"""exp, sigmoid, tanh and erf (and the roundings) on every x86 kernel variant: each variant has its own vector code
for them (isa/reduce.inc: AVX-512 masks and rcp14, AVX2 blends and a rounding instruction, the
portable selects), so each is held to a few ulp of float64 over the whole float range, and to
the exact values at the special points (0, -0, +-inf, NaN, the overflow and underflow edges,
and 1 where sigmoid and tanh saturate: AVX2's 12-bit reciprocal with one Newton step gave
0.99999994 there)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from kernel_variants import rerun_on_variant
from onnx import TensorProto, helper

import walle_core
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, 88.73, 88.8, 89.0, -87.0, -103.9,
                    -104.0, -110.0, 9.0, -9.0, 0.29, 0.31, 20.0, -20.0], np.float32)
ULPS = 4  # the variants' own bound (the portable forms reach 2.4 ulp)


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(v)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1 / (1 + e), e / (1 + e))


FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Exp": np.exp, "Sigmoid": _sigmoid, "Tanh": np.tanh, "Erf": _erf}


def _run(op: str, x: np.ndarray) -> np.ndarray:
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return np.asarray(walle_core.load(data, backend="cpu", threads=1).run({"x": x})["y"])


@pytest.mark.parametrize("op", list(FUNCTIONS))
def test_transcendentals_within_a_few_ulp(op: str) -> None:
    """On the variant this process runs (WALLE_CPU_ISA when set)."""
    # every float magnitude from 1e-6 to 120 (both signs), plus lengths that leave vector tails
    mags = np.geomspace(1e-6, 120, 40001).astype(np.float32)
    x = np.concatenate([mags, -mags, SPECIAL, np.array([0.5, -2.5, 3.0], np.float32)])
    got = _run(op, x).astype(np.float64)
    with np.errstate(all="ignore"):
        want = FUNCTIONS[op](x.astype(np.float64)).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf])
    tiny = np.abs(want) < np.finfo(np.float32).tiny  # below the normal range: flushed or not
    assert (np.abs(got[tiny]) < np.finfo(np.float32).tiny).all()
    fin = np.isfinite(want) & ~tiny
    ulp = np.spacing(np.abs(want[fin]).astype(np.float32)).astype(np.float64)
    # erf is a rational fit (max error 3.7e-7, isa/reduce.inc): up to 6 ulp just below 1
    err = np.abs(got[fin] - want[fin]) / (np.maximum(ulp, 4e-7 / ULPS) if op == "Erf" else ulp)
    assert err.max() <= ULPS, f"{op}: {err.max():.2f} ulp at x={x[fin][err.argmax()]}"
    # saturation and signed zeros exactly: sigmoid(20) and tanh(+-20) are 1 and -1 in float32,
    # and the functions that pass 0 keep its sign
    for v in (20.0, -20.0, 0.0, -0.0):
        i = int(np.flatnonzero((x == v) & (np.signbit(x) == np.signbit(np.float32(v))))[0])
        assert got[i] == want[i] and np.signbit(got[i]) == np.signbit(want[i]), (op, v, got[i], want[i])


@pytest.mark.parametrize(("op", "want"), [("Round", np.rint), ("Floor", np.floor), ("Ceil", np.ceil)])
def test_roundings_are_exact(op: str, want: Callable[[np.ndarray], np.ndarray]) -> None:
    """The rounding instructions: halves to even, signed zeros, integers past 2^23, inf, NaN."""
    halves = np.arange(-6, 6, dtype=np.float32) + np.float32(0.5)
    x = np.concatenate([halves, np.nextafter(halves, np.float32(np.inf)), np.nextafter(halves, np.float32(-np.inf)),
                        np.array([-0.0, 0.0, -0.4, 0.4, 2.0**23 + 1, -(2.0**24), 3e38, np.inf, -np.inf, np.nan],
                                 np.float32),
                        np.random.default_rng(4).uniform(-300, 300, 1001).astype(np.float32)])
    got, ref = _run(op, x), want(x)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_transcendentals_on_other_variants(isa: str) -> None:
    rerun_on_variant(__file__, "within_a_few_ulp or roundings", isa)
