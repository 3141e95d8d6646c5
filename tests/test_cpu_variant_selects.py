"""Lane-wise selects in the blocked kernels (a clip in a conv's epilogue, NaN winning a max pool,
PRelu in a depthwise epilogue) on every x86 kernel variant. On AVX2 and the portable variant a
block vector is wider than a register; GCC lowered compares of such vectors element by element
through the stack (MobileNetV2 at 29 ms on AVX2 against 6.5 on AVX-512), so they now run in
pieces of the register width (isa/vector.inc), and this checks the pieces keep the semantics:
NaN stays NaN through a clip and wins a max, a clip's bounds and PRelu's slopes per channel."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_variants import rerun_on_variant
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")
C = 40  # two whole blocks and a partial one


def _model() -> bytes:
    """conv 3x3 + Clip(0, 6) -> MaxPool 3x3 -> depthwise 3x3 -> PRelu -> depthwise 3x3."""
    rng = np.random.default_rng(7)
    inits = []

    def const(name: str, v: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        return name

    nodes = [
        helper.make_node("Conv", ["x", const("w1", rng.uniform(-2, 2, (C, 3, 3, 3))),
                                  const("b1", rng.uniform(-3, 3, C))], ["c1"], pads=[1] * 4),
        helper.make_node("Clip", ["c1", const("lo", np.array(0.0)), const("hi", np.array(6.0))], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["m1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["m1", const("w2", rng.uniform(-1, 1, (C, 1, 3, 3))),
                                  const("b2", rng.uniform(-1, 1, C))], ["c2"], pads=[1] * 4, group=C),
        helper.make_node("PRelu", ["c2", const("slope", rng.uniform(-0.5, 2.0, (C, 1, 1)))], ["p2"]),
        helper.make_node("Conv", ["p2", const("w3", rng.uniform(-1, 1, (C, 1, 3, 3)))], ["y"],
                         pads=[1] * 4, group=C),
    ]
    g = helper.make_graph(nodes, "selects", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 19, 23])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_selects_match_the_reference() -> None:
    """On the variant this process runs (WALLE_CPU_ISA when set): NaN pixels of the input spread
    as NaN (a clip or a max that dropped them would leave numbers), the rest matches."""
    from walle_cpu.compiler import CpuExecutable

    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 19, 23)).astype(np.float32)
    x[0, 1, 4, 5] = np.nan
    x[0, 0, 12, 17] = np.nan
    model = walle_core.load(_model(), backend="cpu", threads=2)
    got = model.run({"x": x})["y"]
    want = walle_core.load(_model(), backend="reference").run({"x": x})["y"]
    labels = [lb for step in model.plan_for({"x": x}).stage.steps if isinstance(step.executable, CpuExecutable)
              for lb in step.executable._labels]
    assert sum("nchwc" in lb for lb in labels) >= 3, labels
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_selects_match_the_reference_on_other_variants(isa: str) -> None:
    rerun_on_variant(__file__, "test_selects_match_the_reference and not other", isa)
