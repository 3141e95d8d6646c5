"""A Conv1d's activation and residual add run in its Conv2D's epilogue on the cpu backend.

A Conv1d lowers to a Conv2D over [N, C, 1, L] whose result the next op reads reshaped as
[N, C, L] (same memory, another shape), as does a residual read from the conv's [N, C, L] input. The epilogue rewrites (``walle_core.plan.rewrite.epilogue``)
fold an activation or a residual add read through such a reshape as they do a directly following
one; the fused op keeps the Conv2D's shape. Results match the reference backend, labels show the
fusion (a GELU spelt with Erf too: each of its readers reads the conv output through an alias
of its own), and a reshaped result that is itself a model output is left unfused."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")


def _model(c: int, n: int, length: int, act: str, residual: bool, act_is_output: bool,
           rng: np.random.Generator) -> bytes:
    """[N, L, C] -> Transpose (as after an Embedding) -> Conv1d(k=5, pad 2) (-> + its input)
    -> act -> ReduceMax over time; the activation's result is a model output too if asked."""
    inits, nodes = [], []

    def const(name: str, v: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]))
    w, b = const("w", rng.uniform(-0.5, 0.5, (c, c, 5))), const("b", rng.uniform(-0.5, 0.5, c))
    nodes.append(helper.make_node("Conv", ["xt", w, b], ["c1"], pads=[2, 2]))
    last = "c1"
    if residual:
        nodes.append(helper.make_node("Add", ["c1", "xt"], ["s1"]))
        last = "s1"
    if act == "clip":
        nodes.append(helper.make_node("Clip", [last, const("lo", np.array(0.0)), const("hi", np.array(0.3))], ["a"]))
    elif act == "erf_gelu":  # x * (1 + erf(x / sqrt2)) * 0.5, as torch exports GELU before opset 20
        nodes += [helper.make_node("Div", [last, const("r2", np.array(np.sqrt(2.0)))], ["g1"]),
                  helper.make_node("Erf", ["g1"], ["g2"]),
                  helper.make_node("Add", ["g2", const("one", np.array(1.0))], ["g3"]),
                  helper.make_node("Mul", [last, "g3"], ["g4"]),
                  helper.make_node("Mul", ["g4", const("half", np.array(0.5))], ["a"])]
    else:
        nodes.append(helper.make_node(act, [last], ["a"]))
    nodes.append(helper.make_node("ReduceMax", ["a"], ["y"], axes=[2], keepdims=0))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if act_is_output:
        outs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, length, c])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _labels(model: walle_core.Model, feeds: dict[str, np.ndarray]) -> list[str]:
    from walle_cpu.compiler import CpuExecutable

    node = model.plan_for(feeds)
    return [lb for step in node.stage.steps if isinstance(step.executable, CpuExecutable)
            for lb in step.executable._labels]


@pytest.mark.parametrize(("c", "n", "length"), [(8, 2, 37), (32, 1, 96)])
@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "clip", "erf_gelu"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act_is_output", [False, True])
def test_conv1d_epilogue_through_reshape(c: int, n: int, length: int, act: str, residual: bool, act_is_output: bool) -> None:
    rng = np.random.default_rng(3)
    data = _model(c, n, length, act, residual, act_is_output, rng)
    feeds = {"x": rng.standard_normal((n, length, c)).astype(np.float32)}
    want = walle_core.load(data, backend="reference").run(feeds)
    cpu = walle_core.load(data, backend="cpu", threads=2)
    got = cpu.run(feeds)
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()), err_msg=name)
        assert got[name].shape == ref.shape
    labels = _labels(cpu, feeds)
    convs = [lb for lb in labels if lb.startswith("Conv2D")]
    assert len(convs) == 1, labels
    fn = {"Relu": "relu", "Sigmoid": "sigmoid", "clip": "clip", "erf_gelu": "gelu"}[act]
    # the activation folds unless its result is a model output read in the [N, C, L] shape
    assert convs[0].split(" ")[0].endswith("+" + fn) == (not act_is_output), labels
    if residual:
        assert "+residual" in convs[0], labels
        assert not any(lb.startswith("Binary") for lb in labels), labels
