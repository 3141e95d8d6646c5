"""The engine's own numpy interpreter: constant folding needs no plugin at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest
from onnx import TensorProto, helper

import walle_core
from walle_core import atomic as A
from walle_core.backend import Algorithm, Availability, Backend, Cost, DeviceInfo, Executable, Program
from walle_core.decompose.builder import Builder
from walle_core.interpreter import Interpreter, KernelError, fold
from walle_core.plugins import Registry


class Recording(Backend):
    """A backend that is not the reference plugin and notes every op kind it was asked to run."""

    name = "recording"
    version = "test"
    compiled: ClassVar[list[A.Kind]] = []

    def availability(self) -> Availability:
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo("recording", "cpu")

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        return (Algorithm("numpy", lambda o: Cost(o.flops(), o.bytes_moved(), 1)),)

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        Recording.compiled += [op.kind for op, _ in program.ops]
        return Interpreter(program)


def test_builder_folds_constants_by_default() -> None:
    b = Builder()
    shape = b.const(np.array([2, 3, 4], np.int64))
    total = b.reduce(shape, [0], "prod", keepdims=False)
    assert int(b.value(total)) == 24
    assert b.ops == []  # folded, nothing left for a backend


def test_fold_rejects_an_op_with_a_runtime_input() -> None:
    b = Builder(fold=lambda op: None)
    x = b.tensor((2,), np.float32)
    y = b.unary("neg", x)
    (op,) = b.ops
    assert y is op.outputs[0]
    with pytest.raises(KernelError, match="no plan-time value"):
        fold(op)


def test_a_model_plans_its_shape_arithmetic_with_every_plugin_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLE_DISABLE_PLUGINS", "reference,cpu,opencl,vulkan,metal")
    reg = Registry()
    assert not reg.available()
    reg.register(Recording)
    monkeypatch.setattr("walle_core.runtime.model.registry", lambda: reg)
    Recording.compiled = []
    # y = reshape(x, [shape(x)[0], -1]): Shape, Gather, Unsqueeze and Concat are shape arithmetic.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "first"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [helper.make_tensor("first", TensorProto.INT64, [], [0]),
             helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m = walle_core.load(onnx_model.SerializeToString(), backend="recording")
    assert m.backend_names == ["recording"]
    x = np.arange(-12, 12, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(m.run({"x": x})["y"], np.maximum(x.reshape(2, 12), 0))
    assert A.Kind.GATHER_SCATTER not in Recording.compiled and A.Kind.UNARY in Recording.compiled
