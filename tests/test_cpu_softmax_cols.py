"""Softmax over an axis that is not the last on the cpu backend (softmax.c): with at least a
vector of columns after the axis the columns run in vector lanes (softmax_cols in
isa/reduce.inc), with fewer they are gathered into rows; both against the reference
backend's expansion, with -inf columns (all or some) and NaN."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walle_core.backend import Program
from walle_core.decompose.builder import Builder
from walle_core.plan.planner import prepare
from walle_core.plugins import registry

CPU, REF = registry().get("cpu"), registry().get("reference")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outer=st.integers(1, 3), n=st.integers(1, 40), inner=st.integers(1, 70), log=st.booleans(),
       seed=st.integers(0, 2**16), special=st.sampled_from(["none", "ninf_column", "ninf_some", "nan"]),
       threads=st.sampled_from([1, 2]))
def test_softmax_over_a_middle_axis_matches_the_expansion(outer: int, n: int, inner: int, log: bool,
                                                          seed: int, special: str, threads: int) -> None:
    from walle_core.decompose.norm import softmax_axis

    b = Builder(fold=lambda op: None)
    x = b.tensor((outer, n, inner), np.dtype(np.float32))
    y = softmax_axis(b, x, 1, log)
    ops = prepare(b.ops, CPU, {y.id})
    exe = CPU.compile(Program([(op, CPU.algorithms(op)[0]) for op in ops], [x], [y]), threads=threads)
    rng = np.random.default_rng(seed)
    xv = (rng.standard_normal((outer, n, inner)) * 8).astype(np.float32)
    if special == "ninf_column":
        xv[rng.integers(outer), :, rng.integers(inner)] = -np.inf
    elif special == "ninf_some":
        xv[rng.random(xv.shape) < 0.3] = -np.inf
    elif special == "nan":
        xv[rng.integers(outer), rng.integers(n), rng.integers(inner)] = np.nan
    rops = prepare(b.ops, REF, {y.id})
    want = REF.compile(Program([(op, REF.algorithms(op)[0]) for op in rops], [x], [y])).run([xv])[0]
    np.testing.assert_allclose(exe.run([xv])[0], want, rtol=1e-5, atol=1e-6)
