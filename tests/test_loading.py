"""Loading what onnxruntime loads: exporters' conventions for dynamic dims, missing input shapes,
symbolic dims shared across inputs, optional (defaulted) inputs, wrong or missing value_info,
and every opset from 7 to the newest the installed ``onnx`` knows.

Each model is built with ``onnx.helper`` the way the exporter in question writes it, run on
Walle (reference and, when built, cpu) and compared with onnxruntime; the first three also go
through ``walle search`` (with ``--measure``, so the searched plan runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import walle_core
from walle_core.errors import InputError, InvalidModelError, UnsupportedOpError
from walle_core.plugins import registry

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper, version_converter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.zoo.check import TOL, onnxruntime_outputs, worst_error  # noqa: E402

BACKENDS = [e.name for e in registry().entries()
            if e.name in ("reference", "cpu") and e.availability.available]
RNG = np.random.default_rng(7)


def _const(name: str, arr: np.ndarray) -> object:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes: list[object], inputs: list[object], outputs: list[object], inits: list[object],
           opset: int = 17, value_info: list[object] | None = None) -> bytes:
    graph = h.make_graph(nodes, "g", inputs, outputs, inits, value_info=value_info or [])
    return bytes(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]).SerializeToString())


def paddle_style_ocr(dims: tuple[int | str, ...] = (-1, 3, -1, -1)) -> bytes:
    """A recogniser's front as PaddlePaddle exports it: input ``float32[-1,3,-1,-1]``, Reshape
    with 0 (copy) and -1 (infer) entries, a 0-sized declared output dim."""
    w = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Transpose", ["p"], ["t"], perm=[0, 3, 1, 2]),      # N, W, C, H
        h.make_node("Reshape", ["t", "shape"], ["seq"]),                 # N, W, C*H
        h.make_node("Softmax", ["seq"], ["y"], axis=-1),
    ]
    inits = [_const("w", w), _const("b", np.zeros(8, np.float32)),
             _const("shape", np.array([0, 0, -1], np.int64))]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, list(dims))],
                  [h.make_tensor_value_info("y", T.FLOAT, [-1, 0, -1])], inits)


def placeholder_named_dims() -> bytes:
    """The same front declared ``float32[-1,3,'?','?']``, as PaddleOCR's text-direction classifier
    (shipped in rapidocr's wheel) declares it: '?' names every unknown dim, not one shared size."""
    return paddle_style_ocr((-1, 3, "?", "?"))


def shapeless_mlp() -> bytes:
    """Input and output declared without any shape (only an element type)."""
    w = (RNG.standard_normal((16, 8)) * 0.3).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["a"]),
             h.make_node("Softmax", ["a"], ["y"], axis=-1)]
    inits = [_const("w", w), _const("b", np.linspace(-1, 1, 8).astype(np.float32))]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, None)],
                  [h.make_tensor_value_info("y", T.FLOAT, None)], inits)


def shared_symbol_pooler(value_info: list[object] | None = None,
                         out_shape: list[object] | None = None) -> bytes:
    """Token ids and an attention mask that share ``[batch, seq]``: masked mean of embeddings."""
    emb = RNG.standard_normal((50, 6)).astype(np.float32)
    nodes = [
        h.make_node("Gather", ["emb", "ids"], ["e"]),                           # batch, seq, 6
        h.make_node("Cast", ["mask"], ["mf"], to=T.FLOAT),
        h.make_node("Unsqueeze", ["mf", "last"], ["m3"]),
        h.make_node("Mul", ["e", "m3"], ["em"]),
        h.make_node("ReduceSum", ["em", "seq_axis"], ["s"], keepdims=0),
        h.make_node("ReduceSum", ["m3", "seq_axis"], ["n"], keepdims=0),
        h.make_node("Max", ["n", "one"], ["n1"]),
        h.make_node("Div", ["s", "n1"], ["y"]),
    ]
    inits = [_const("emb", emb), _const("last", np.array([-1], np.int64)),
             _const("seq_axis", np.array([1], np.int64)), _const("one", np.ones(1, np.float32))]
    ins = [h.make_tensor_value_info("ids", T.INT64, ["batch", "seq"]),
           h.make_tensor_value_info("mask", T.INT64, ["batch", "seq"])]
    outs = [h.make_tensor_value_info("y", T.FLOAT, out_shape if out_shape is not None else ["batch", 6])]
    return _model(nodes, ins, outs, inits, value_info=value_info)


def _pooler_feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    mask = np.ones((batch, seq), np.int64)
    mask[:, seq // 2:] = 0
    return {"ids": RNG.integers(0, 50, (batch, seq)).astype(np.int64), "mask": mask}


CASES = {
    "minus_one_dims": (paddle_style_ocr, [{"x": (1, 3, 48, 192)}, {"x": (2, 3, 32, 100)}]),
    "placeholder_named_dims": (placeholder_named_dims, [{"x": (1, 3, 48, 192)}, {"x": (2, 3, 32, 100)}]),
    "no_input_shapes": (shapeless_mlp, [{"x": (2, 16)}, {"x": (3, 5, 16)}]),
    "shared_symbols": (shared_symbol_pooler, [{"ids": (1, 12)}, {"ids": (3, 5)}]),
}


def _feeds(case: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    if case == "shared_symbols":
        return _pooler_feeds(*shapes["ids"])
    return {n: RNG.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_loads_and_matches_onnxruntime(case: str, backend: str) -> None:
    make, shape_list = CASES[case]
    data = make()
    model = walle_core.load(data, backend=backend)
    for shapes in shape_list:
        feeds = _feeds(case, shapes)
        assert worst_error(model.run(feeds), onnxruntime_outputs(data, feeds)) <= TOL
        assert not model.dropped, model.dropped  # the backend itself ran it


@pytest.mark.parametrize("case", sorted(CASES))
def test_walle_search_plans_and_runs(case: str, tmp_path: Path) -> None:
    from walle_cli.app import app

    make, shape_list = CASES[case]
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(make())
    shape_args = [a for name, s in _feeds(case, shape_list[0]).items()
                  for a in ("--shape", f"{name}={','.join(map(str, s.shape))}")]
    result = CliRunner().invoke(app, ["search", str(path), *shape_args, "--measure", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["ops"] > 0 and summary["measured_plan_us"] > 0


def test_declared_types_read_as_dynamic() -> None:
    assert walle_core.load(paddle_style_ocr(), backend="reference").inputs == {"x": "float32[?,3,?,?]"}
    assert walle_core.load(shapeless_mlp(), backend="reference").inputs == {"x": "float32[?]"}


def test_shared_symbol_bound_inconsistently_names_the_node_and_both_inputs() -> None:
    model = walle_core.load(shared_symbol_pooler(), backend="reference")
    feeds = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 4), np.int64)}
    with pytest.raises(InputError, match=r"node 'Mul->em'.*do not broadcast.*'mask'.*dim 1 'seq' is 4.*"
                                         r"'ids'.*'seq' to 5"):
        model.run(feeds)
    with pytest.raises(InputError, match=r"shape \[2, 5, 1\], the model expects int64\[batch,seq\]"):
        model.run({"ids": np.zeros((2, 5, 1), np.int64), "mask": np.ones((2, 5), np.int64)})


def test_a_name_bound_to_two_sizes_runs_where_the_model_allows() -> None:
    """onnxruntime checks fixed dims only: a mask of one column broadcasts over ``seq``."""
    data = shared_symbol_pooler()
    feeds = _pooler_feeds(2, 5)
    feeds["mask"] = feeds["mask"][:, :1].copy()
    for backend in BACKENDS:
        got = walle_core.load(data, backend=backend).run(feeds)
        assert worst_error(got, onnxruntime_outputs(data, feeds)) <= TOL


def test_fixed_dim_mismatch_is_still_rejected() -> None:
    model = walle_core.load(paddle_style_ocr(), backend="reference")
    with pytest.raises(InputError, match=r"shape \[1, 4, 8, 8\], the model expects float32\[\?,3,\?,\?\]"):
        model.run({"x": np.zeros((1, 4, 8, 8), np.float32)})


def test_wrong_and_missing_value_info_are_not_trusted() -> None:
    """Shapes and types the exporter recorded for intermediates and outputs are hints at best:
    a wrong one must not change what runs (onnxruntime only warns)."""
    wrong = [h.make_tensor_value_info("e", T.FLOAT, [7, 7, 7]),      # really batch, seq, 6
             h.make_tensor_value_info("s", T.FLOAT, [1]),            # really batch, 6
             h.make_tensor_value_info("m3", T.FLOAT, ["batch", "seq"])]  # really rank 3
    for data in (shared_symbol_pooler(wrong, out_shape=[9, 9, 9]), shared_symbol_pooler(out_shape=[])):
        model = walle_core.load(data, backend="reference")
        feeds = _pooler_feeds(2, 7)
        assert worst_error(model.run(feeds), onnxruntime_outputs(data, feeds)) <= TOL


def test_defaulted_inputs_are_optional() -> None:
    """A graph input that also has an initializer may be fed (override) or left out; one that
    no node reads is no input at all (Caffe2 exports list such blobs)."""
    nodes = [h.make_node("Mul", ["x", "scale"], ["y"])]
    scale = np.array([2.0, 3.0], np.float32)
    data = _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["n", 2]),
                          h.make_tensor_value_info("scale", T.FLOAT, [2]),
                          h.make_tensor_value_info("unused_blob", T.FLOAT, [1, 1])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["n", 2])],
                  [_const("scale", scale), _const("unused_blob", np.ones((1, 1), np.float32))])
    model = walle_core.load(data, backend="reference")
    assert model.input_names == ["x"]
    assert [vi.name for vi in model.graph.inputs] == ["x", "scale"]
    x = RNG.standard_normal((3, 2)).astype(np.float32)
    for feeds in ({"x": x}, {"x": x, "scale": np.array([-1.0, 0.5], np.float32)}):
        assert worst_error(model.run(feeds), onnxruntime_outputs(data, feeds)) <= TOL


def opset7_convnet() -> object:
    """An IR-3, opset-7 model (initializers listed as graph inputs) whose ops changed their
    signature in later opsets: Upsample, Clip, Slice, Pad, Split, Squeeze/Unsqueeze, Reduce*,
    2-D Softmax semantics, BatchNormalization, Dropout."""
    inits = [
        _const("w", (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
        _const("b", np.zeros(8, np.float32)), _const("g", np.ones(8, np.float32)),
        _const("beta", np.full(8, 0.1, np.float32)), _const("mean", np.zeros(8, np.float32)),
        _const("var", np.ones(8, np.float32)),
        _const("fcw", (RNG.standard_normal((16, 5)) * 0.2).astype(np.float32)),
        _const("fcb", np.zeros(5, np.float32)), _const("shape", np.array([0, -1], np.int64)),
        _const("reps", np.array([1, 2], np.int64)),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"]),
        h.make_node("Relu", ["bn"], ["r"]),
        h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Upsample", ["p"], ["u"], scales=[1.0, 1.0, 2.0, 2.0], mode="nearest"),
        h.make_node("Clip", ["u"], ["cl"], min=0.0, max=2.0),
        h.make_node("Concat", ["cl", "r"], ["cat"], axis=1),
        h.make_node("Slice", ["cat"], ["sl"], axes=[1], starts=[2], ends=[10]),
        h.make_node("Pad", ["sl"], ["pd"], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.5),
        h.make_node("Split", ["pd"], ["s1", "s2"], axis=1, split=[3, 5]),
        h.make_node("ReduceMean", ["s2"], ["rm"], axes=[2, 3], keepdims=1),
        h.make_node("Squeeze", ["rm"], ["sq"], axes=[2, 3]),
        h.make_node("Unsqueeze", ["sq"], ["us"], axes=[2]),
        h.make_node("Softmax", ["s1"], ["sm"], axis=1),  # before opset 13: over C*H*W
        h.make_node("Dropout", ["sm"], ["dr"], ratio=0.3),
        h.make_node("ReduceSum", ["dr"], ["rs"], axes=[2, 3], keepdims=0),
        h.make_node("Sigmoid", ["rs"], ["sg"]),
        h.make_node("Flatten", ["us"], ["fl"], axis=1),
        h.make_node("Concat", ["sg", "fl"], ["feat"], axis=1),
        h.make_node("Tile", ["feat", "reps"], ["tl"]),
        h.make_node("Reshape", ["tl", "shape"], ["rsh"]),
        h.make_node("Gemm", ["rsh", "fcw", "fcb"], ["y"]),
    ]
    inputs = [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])]
    inputs += [h.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = h.make_graph(nodes, "opset7", inputs, [h.make_tensor_value_info("y", T.FLOAT, ["N", 5])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def test_every_opset_from_7_to_the_newest() -> None:
    """The opset-7 model converted by ONNX's version converter to every later opset gives
    onnxruntime's opset-7 answer on Walle."""
    base = opset7_convnet()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = onnxruntime_outputs(base.SerializeToString(), {"x": x})
    newest = onnx.defs.onnx_opset_version()
    for opset in range(7, newest + 1):
        proto = base if opset == 7 else version_converter.convert_version(base, opset)
        got = walle_core.load(proto.SerializeToString(), backend="reference").run({"x": x})
        assert worst_error(got, want) <= TOL, f"opset {opset}"


@pytest.mark.parametrize("opset", [6, "newest+1"])
def test_opset_outside_the_range_is_named(opset: int | str) -> None:
    version = onnx.defs.onnx_opset_version() + 1 if opset == "newest+1" else int(opset)
    data = _model([h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [2])],
                  [h.make_tensor_value_info("y", T.FLOAT, [2])], [], opset=version)
    with pytest.raises(UnsupportedOpError, match=f"opset {version} is outside the supported range 7-"):
        walle_core.load(data, backend="reference")


def test_inconsistent_node_is_named() -> None:
    data = _model([h.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
                  [h.make_tensor_value_info("x", T.FLOAT, [-1, 3])],
                  [h.make_tensor_value_info("y", T.FLOAT, None)], [_const("w", np.ones((4, 2), np.float32))])
    with pytest.raises(InvalidModelError, match="'proj'"):
        walle_core.load(data, backend="reference").run({"x": np.ones((2, 3), np.float32)})


def test_fused_conv_with_residual_and_leaky_relu() -> None:
    """onnxruntime's FusedConv: ``act(conv(X, W) + B + Z)`` with the activation's parameters."""
    w = (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    node = h.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain="com.microsoft", pads=[1, 1, 1, 1],
                       activation="LeakyRelu", activation_params=[0.2])
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, 6, 6]),
                                       h.make_tensor_value_info("z", T.FLOAT, ["n", 4, 6, 6])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [_const("w", w), _const("b", np.linspace(-1, 1, 4).astype(np.float32))])
    data = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    proto = bytes(data.SerializeToString())
    feeds = {"x": RNG.standard_normal((2, 3, 6, 6)).astype(np.float32),
             "z": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)}
    for backend in BACKENDS:
        got = walle_core.load(proto, backend=backend).run(feeds)
        assert worst_error(got, onnxruntime_outputs(proto, feeds)) <= TOL
