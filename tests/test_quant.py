"""Quantized models against onnxruntime's int8 kernels, ``walle quantize`` and ``walle convert``.

The models are quantized in the test by onnxruntime's own quantizer (the oracle's tool), in
the QDQ format (Walle's QDQ rewrite makes the islands integer) and the QOperator format (the
standard and com.microsoft integer ops), with uint8 and int8 activations and per-tensor and
per-channel weights. Walle's integer outputs must be within one quantisation step of
onnxruntime's; in practice the convolutions and matrix products are bit-exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from typer.testing import CliRunner

import walle_core
from walle_cli.app import app
from walle_core import atomic as A
from walle_core.frontend import import_graph
from walle_core.interpreter import fold
from walle_core.plan.lower import Lowering
from walle_core.plan.rewrite.qdq import fuse_qdq

ort = pytest.importorskip("onnxruntime")
oq = pytest.importorskip("onnxruntime.quantization")

BACKENDS = ["reference", "cpu"]


def _w(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return nh.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)


def small_cnn(path: Path) -> Path:
    """Conv + ReLU, depthwise conv, SiLU (Sigmoid * x), 1x1 conv, residual add, max and average
    pooling, concat, global pooling, Gemm: the op mix of a mobile CNN."""
    rng = np.random.default_rng(0)
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        h.make_node("Sigmoid", ["c2"], ["s2"]),
        h.make_node("Mul", ["c2", "s2"], ["m2"]),
        h.make_node("Conv", ["m2", "w3", "b3"], ["c3"]),
        h.make_node("Add", ["c3", "r1"], ["a3"]),
        h.make_node("MaxPool", ["a3"], ["p3"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("AveragePool", ["a3"], ["p3b"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Concat", ["p3", "p3b"], ["cat"], axis=1),
        h.make_node("GlobalAveragePool", ["cat"], ["g"]),
        h.make_node("Flatten", ["g"], ["f"]),
        h.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 19, 17])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 10])],
                     [_w(rng, "w1", 8, 3, 3, 3), _w(rng, "b1", 8), _w(rng, "w2", 8, 1, 3, 3),
                      _w(rng, "b2", 8), _w(rng, "w3", 8, 8, 1, 1), _w(rng, "b3", 8),
                      _w(rng, "wf", 10, 16), _w(rng, "bf", 10)])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def small_transformer(path: Path) -> Path:
    """Projections (MatMul with constant weights), attention scores between two activations,
    softmax, residual add."""
    rng = np.random.default_rng(1)
    d = 24
    nodes = [
        h.make_node("MatMul", ["x", "wq"], ["q"]),
        h.make_node("MatMul", ["x", "wk"], ["k"]),
        h.make_node("MatMul", ["x", "wv"], ["v"]),
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        h.make_node("MatMul", ["q", "kt"], ["s"]),
        h.make_node("Softmax", ["s"], ["p"], axis=-1),
        h.make_node("MatMul", ["p", "v"], ["o"]),
        h.make_node("MatMul", ["o", "wo"], ["o2"]),
        h.make_node("Add", ["o2", "x"], ["y"]),
    ]
    g = h.make_graph(nodes, "attn", [h.make_tensor_value_info("x", TP.FLOAT, [1, 7, d])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 7, d])],
                     [_w(rng, n, d, d) for n in ("wq", "wk", "wv", "wo")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def _inputs(model: Path, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    m = onnx.load(str(model))
    rng = np.random.default_rng(seed)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in m.graph.input}
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


class _Reader(oq.CalibrationDataReader):  # type: ignore[name-defined]
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def _ort_quantize(src: Path, dst: Path, fmt: str, per_channel: bool, act: str) -> Path:
    oq.quantize_static(
        str(src), str(dst), _Reader(_inputs(src, 8, 1)),
        quant_format=oq.QuantFormat.QDQ if fmt == "qdq" else oq.QuantFormat.QOperator,
        per_channel=per_channel, weight_type=oq.QuantType.QInt8,
        activation_type=oq.QuantType.QUInt8 if act == "u8" else oq.QuantType.QInt8,
    )
    return dst


def _ort_run(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def _output_step(model: Path) -> float:
    """The scale of the quantisation that produces the model's output."""
    m = onnx.load(str(model))
    inits = {i.name: nh.to_array(i) for i in m.graph.initializer}
    last = next(n for n in reversed(m.graph.node) if n.op_type == "DequantizeLinear")
    return float(inits[last.input[1]].reshape(-1)[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quant")
    return {"cnn": small_cnn(d / "cnn.onnx"), "attn": small_transformer(d / "attn.onnx")}


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("act", ["u8", "s8"])
@pytest.mark.parametrize("name", ["cnn", "attn"])
def test_static_int8_matches_onnxruntime(models: dict[str, Path], tmp_path: Path, name: str,
                                         fmt: str, per_channel: bool, act: str) -> None:
    q = _ort_quantize(models[name], tmp_path / "q.onnx", fmt, per_channel, act)
    step = _output_step(q)
    for feeds in _inputs(models[name], 3, 7):
        want = _ort_run(q, feeds)
        for backend in BACKENDS:
            m = walle_core.load(q, backend=backend)
            got = m.run(feeds)[m.output_names[0]]
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= step * 1.001, (backend, np.abs(got - want).max(), step)


def test_qdq_rewrite_makes_the_cnn_integer(models: dict[str, Path], tmp_path: Path) -> None:
    q = _ort_quantize(models["cnn"], tmp_path / "q.onnx", "qdq", True, "u8")
    _, report = fuse_qdq(import_graph(q))
    assert report.integer["Conv"] == 3 and report.integer["Gemm"] == 1
    for op in ("Add", "Mul", "Sigmoid", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool"):
        assert report.integer[op] == 1, op
    assert not report.float_ops
    ops = Lowering(import_graph(q), fold, {}).run({"x": ((1, 3, 19, 17), np.dtype(np.float32))}).ops
    names = [getattr(op, "name", "") for op in ops]
    # the Gemm and the global average pool (its planes times a column of ones)
    assert names.count("qlinear_conv") == 3 and names.count("qlinear_matmul") == 2
    assert names.count("quantize_linear") == 1 and names.count("dequantize_linear") == 1  # in, out
    assert not any(isinstance(op, A.Conv2D | A.MatMul) for op in ops)
    # SiLU (Sigmoid, then Mul by the same tensor) is one table; the Add is the one binary pass
    graph, _ = fuse_qdq(import_graph(q))
    kinds = [n.op_type for n in graph.nodes]
    assert kinds.count("QLinearLookup") == 1 and "QLinearMul" not in kinds and kinds.count("QLinearAdd") == 1


def test_qoperator_silu_is_one_table(models: dict[str, Path], tmp_path: Path) -> None:
    """onnxruntime's QOperator SiLU, QLinearMul(x, QLinearSigmoid(x)), becomes one table of x;
    the model stays within one step of onnxruntime."""
    q = _ort_quantize(models["cnn"], tmp_path / "qop.onnx", "qop", True, "u8")
    kinds = [n.op_type for n in fuse_qdq(import_graph(q))[0].nodes]
    assert "QLinearMul" not in kinds and "QLinearSigmoid" not in kinds and kinds.count("QLinearLookup") == 1
    feeds = _inputs(models["cnn"], 1, 5)[0]
    got = walle_core.load(q, backend="cpu").run(feeds)["y"]
    assert np.abs(got - _ort_run(q, feeds)).max() <= _output_step(q) * 1.001


def test_float_fallback_is_reported(tmp_path: Path) -> None:
    """An op without an integer form (here Erf between DQ and Q is a lookup, but a float Div
    with two activations is not) keeps DequantizeLinear -> float op -> QuantizeLinear."""
    x = h.make_tensor_value_info("x", TP.UINT8, [4])
    y = h.make_tensor_value_info("y", TP.UINT8, [4])
    inits = [nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(128, np.uint8), "z")]
    nodes = [h.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             h.make_node("Div", ["xf", "xf"], ["d"]),
             h.make_node("QuantizeLinear", ["d", "s", "z"], ["y"])]
    path = tmp_path / "div.onnx"
    onnx.save(h.make_model(h.make_graph(nodes, "g", [x], [y], inits),
                           opset_imports=[h.make_opsetid("", 17)]), path)
    _, report = fuse_qdq(import_graph(path))
    assert report.float_ops["Div"] == 1 and not report.integer
    got = walle_core.load(path, backend="cpu").run({"x": np.array([129, 130, 200, 250], np.uint8)})["y"]
    assert got.tolist() == [138, 138, 138, 138]  # 1.0 / 0.1 + 128
    shown = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "0 integer, 1 fall back to float" in shown.output
    assert any("Div" in line and "float" in line for line in shown.output.splitlines())


def test_relu6_with_quantized_constant_bounds_is_integer(tmp_path: Path) -> None:
    """Conv -> Clip whose bounds are Constant nodes (as exporters write ReLU6): ``walle quantize``
    puts QuantizeLinear -> DequantizeLinear on the bounds too; the rewrite reads them as the
    float values they stand for and fuses the clamp into the integer conv, matching onnxruntime."""
    from walle_core.tools.quantize import QuantizeOptions, quantize

    rng = np.random.default_rng(5)
    x = h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 9, 9])
    y = h.make_tensor_value_info("y", TP.FLOAT, [1, 4, 9, 9])
    nodes = [h.make_node("Constant", [], ["lo"], value=nh.from_array(np.array(0.0, np.float32))),
             h.make_node("Constant", [], ["hi"], value=nh.from_array(np.array(6.0, np.float32))),
             h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    inits = [nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    model = h.make_model(h.make_graph(nodes, "relu6", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)])
    batches = [{"x": (3 * rng.standard_normal((1, 3, 9, 9))).astype(np.float32)} for _ in range(4)]
    path = tmp_path / "relu6_int8.onnx"
    onnx.save(quantize(model, batches, QuantizeOptions("minmax", True), "cpu").model, path)
    _, report = fuse_qdq(import_graph(path))
    assert report.integer["Conv"] == 1 and not report.float_ops, report.describe()
    for feeds in batches:
        got = walle_core.load(path, backend="cpu").run(feeds)["y"]
        assert np.abs(got - _ort_run(path, feeds)).max() <= _output_step(path) * 1.001


def test_dynamic_quantization_matches_onnxruntime(models: dict[str, Path], tmp_path: Path) -> None:
    """quantize_dynamic: DynamicQuantizeLinear + MatMulInteger (+ Cast/Mul) or the fused
    com.microsoft DynamicQuantizeMatMul / MatMulIntegerToFloat."""
    q = tmp_path / "dyn.onnx"
    oq.quantize_dynamic(str(models["attn"]), str(q), weight_type=oq.QuantType.QInt8)
    for feeds in _inputs(models["attn"], 2, 3):
        want = _ort_run(q, feeds)
        for backend in BACKENDS:
            m = walle_core.load(q, backend=backend)
            got = m.run(feeds)[m.output_names[0]]
            assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_dynamic_quantize_lstm(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    hs, inp = 8, 5
    nodes = [h.make_node("LSTM", ["x", "w", "r", "b"], ["y", "yh"], hidden_size=hs)]
    g = h.make_graph(nodes, "lstm", [h.make_tensor_value_info("x", TP.FLOAT, [6, 1, inp])],
                     [h.make_tensor_value_info("yh", TP.FLOAT, [1, 1, hs])],
                     [_w(rng, "w", 1, 4 * hs, inp), _w(rng, "r", 1, 4 * hs, hs), _w(rng, "b", 1, 8 * hs)])
    src, dst = tmp_path / "lstm.onnx", tmp_path / "lstm_q.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), src)
    oq.quantize_dynamic(str(src), str(dst), weight_type=oq.QuantType.QInt8, op_types_to_quantize=["LSTM"])
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in onnx.load(str(dst)).graph.node)
    feeds = {"x": rng.standard_normal((6, 1, inp)).astype(np.float32)}
    want = _ort_run(dst, feeds)
    got = walle_core.load(dst, backend="cpu").run(feeds)["yh"]
    # onnxruntime quantizes X and H per step as well; Walle runs the dequantized weights
    assert np.abs(got - want).max() < 0.02


def test_walle_quantize_cli(models: dict[str, Path], tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feeds in enumerate(_inputs(models["cnn"], 6, 2)):
        np.save(calib / f"{i}.npy", feeds["x"])
    out = tmp_path / "cnn_int8.onnx"
    res = CliRunner().invoke(app, ["quantize", str(models["cnn"]), "-o", str(out), "--calib",
                                   str(calib), "--per-channel", "--method", "percentile"])
    assert res.exit_code == 0, res.output
    assert "relative error" in res.output and "top-1" in res.output
    assert "float: none" in res.output.replace("\n", " ")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    feeds = _inputs(models["cnn"], 1, 9)[0]
    want = walle_core.load(models["cnn"], backend="reference").run(feeds)["y"]
    got = walle_core.load(out, backend="cpu").run(feeds)["y"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05
    # onnxruntime runs the QDQ model Walle wrote, close to Walle's integers
    assert np.abs(_ort_run(out, feeds) - got).max() <= _output_step(out) * 1.001


def test_walle_quantize_rejects_bad_arguments(models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["quantize", str(models["cnn"]), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "--calib" in res.output
    res = runner.invoke(app, ["quantize", str(models["cnn"]), "-o", str(tmp_path / "o.onnx"),
                              "--random", "2", "--method", "magic"])
    assert res.exit_code == 2 and "--method" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["quantize", str(models["cnn"]), "-o", str(tmp_path / "o.onnx"),
                              "--calib", str(empty)])
    assert res.exit_code == 2 and "no .npz or .npy" in res.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_fp16_weights(models: dict[str, Path], tmp_path: Path, backend: str) -> None:
    out = tmp_path / "cnn16.onnx"
    res = CliRunner().invoke(app, ["convert", "--fp16", str(models["attn"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    m16 = onnx.load(str(out))
    assert sum(i.data_type == TP.FLOAT16 for i in m16.graph.initializer) == 4
    assert out.stat().st_size < 0.6 * models["attn"].stat().st_size
    feeds = _inputs(models["attn"], 1, 4)[0]
    want = _ort_run(out, feeds)  # onnxruntime on the same rounded weights
    got = walle_core.load(out, backend=backend).run(feeds)["y"]
    assert np.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_qdq_move_op_with_new_parameters_requantizes(tmp_path: Path) -> None:
    """DQ -> MaxPool -> Q whose output parameters differ from the input's: the pool runs on the
    int8 tensor and a table requantizes (exactly what the float path computes)."""
    x = h.make_tensor_value_info("x", TP.UINT8, [1, 2, 4, 4])
    y = h.make_tensor_value_info("y", TP.UINT8, None)
    inits = [nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(128, np.uint8), "z"),
             nh.from_array(np.array(0.07, np.float32), "s2"), nh.from_array(np.array(120, np.uint8), "z2")]
    nodes = [h.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             h.make_node("MaxPool", ["xf"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("QuantizeLinear", ["p", "s2", "z2"], ["y"])]
    path = tmp_path / "pool.onnx"
    onnx.save(h.make_model(h.make_graph(nodes, "g", [x], [y], inits),
                           opset_imports=[h.make_opsetid("", 17)]), path)
    _, report = fuse_qdq(import_graph(path))
    assert report.integer["MaxPool"] == 1
    feeds = {"x": np.random.default_rng(0).integers(0, 256, (1, 2, 4, 4)).astype(np.uint8)}
    want = _ort_run(path, feeds)
    for backend in BACKENDS:
        np.testing.assert_array_equal(walle_core.load(path, backend=backend).run(feeds)["y"], want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool_is_exact(tmp_path: Path, dtype: type, channels_last: int) -> None:
    """com.microsoft QLinearGlobalAveragePool (on the cpu backend: a qlinear_matmul of the planes by
    a column of ones) equals onnxruntime's integer results exactly, odd plane sizes included."""
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    shape = [2, 7, 9, 5] if channels_last else [2, 5, 7, 9]
    out_shape = [2, 1, 1, 5] if channels_last else [2, 5, 1, 1]
    elem = TP.UINT8 if dtype == np.uint8 else TP.INT8
    zx, zy = (131, 118) if dtype == np.uint8 else (-7, 4)
    inits = [nh.from_array(np.array(0.037, np.float32), "xs"), nh.from_array(np.array(zx, dtype), "xz"),
             nh.from_array(np.array(0.011, np.float32), "ys"), nh.from_array(np.array(zy, dtype), "yz")]
    node = h.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"],
                       domain="com.microsoft", channels_last=channels_last)
    g = h.make_graph([node], "gap", [h.make_tensor_value_info("x", elem, shape)],
                     [h.make_tensor_value_info("y", elem, out_shape)], inits)
    path = tmp_path / "gap.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)]), path)
    x: np.ndarray = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    want = _ort_run(path, {"x": x})
    for backend in BACKENDS:
        m = walle_core.load(path, backend=backend)
        np.testing.assert_array_equal(m.run({"x": x})[m.output_names[0]], want, err_msg=backend)


@pytest.mark.parametrize(("axes", "keepdims"), [([2, 3], 1), ([-1], 1), ([1], 1), ([1, 3], 1), ([2, 3], 0),
                                              ([1], 0)])
def test_qdq_reduce_mean_is_integer(tmp_path: Path, axes: list[int], keepdims: int) -> None:
    """DQ -> ReduceMean -> Q (squeeze-excitation's and classifiers' pools as torch exports them) becomes
    walle.QLinearReduceMean: trailing axes run as the planes' qlinear_matmul by ones, others as an
    int32 sum; within one step of onnxruntime's float ReduceMean between DQ and Q."""
    shape = [2, 6, 5, 7]
    x = h.make_tensor_value_info("x", TP.UINT8, shape)
    y = h.make_tensor_value_info("y", TP.UINT8, None)
    inits = [nh.from_array(np.array(0.05, np.float32), "s"), nh.from_array(np.array(121, np.uint8), "z"),
             nh.from_array(np.array(0.013, np.float32), "s2"), nh.from_array(np.array(117, np.uint8), "z2")]
    nodes = [h.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             h.make_node("ReduceMean", ["xf"], ["m"], axes=axes, keepdims=keepdims),
             h.make_node("QuantizeLinear", ["m", "s2", "z2"], ["y"])]
    path = tmp_path / "mean.onnx"
    onnx.save(h.make_model(h.make_graph(nodes, "g", [x], [y], inits),
                           opset_imports=[h.make_opsetid("", 17)]), path)
    _, report = fuse_qdq(import_graph(path))
    assert report.integer["ReduceMean"] == 1 and not report.float_ops, report.describe()
    feeds = {"x": np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)}
    want = _ort_run(path, feeds).astype(np.int32)
    for backend in BACKENDS:
        got = walle_core.load(path, backend=backend).run(feeds)["y"]
        assert got.shape == want.shape
        assert np.abs(got.astype(np.int32) - want).max() <= 1, backend


def test_qdq_split_runs_on_the_int8_tensor(tmp_path: Path) -> None:
    """DQ -> Split -> Q per output (yolov8's C2f blocks): the split runs on the 8-bit tensor, the
    output whose parameters differ from the input's through a table; equal to onnxruntime."""
    x = h.make_tensor_value_info("x", TP.UINT8, [1, 6, 3, 5])
    outs = [h.make_tensor_value_info(n, TP.UINT8, None) for n in ("y0", "y1")]
    inits = [nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(128, np.uint8), "z"),
             nh.from_array(np.array(0.07, np.float32), "s2"), nh.from_array(np.array(120, np.uint8), "z2"),
             nh.from_array(np.array([2, 4], np.int64), "sizes")]
    nodes = [h.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             h.make_node("Split", ["xf", "sizes"], ["a", "b"], axis=1),
             h.make_node("QuantizeLinear", ["a", "s", "z"], ["y0"]),
             h.make_node("QuantizeLinear", ["b", "s2", "z2"], ["y1"])]
    path = tmp_path / "split.onnx"
    onnx.save(h.make_model(h.make_graph(nodes, "g", [x], outs, inits),
                           opset_imports=[h.make_opsetid("", 17)]), path)
    _, report = fuse_qdq(import_graph(path))
    assert report.integer["Split"] == 1 and not report.float_ops, report.describe()
    feeds = {"x": np.random.default_rng(0).integers(0, 256, (1, 6, 3, 5)).astype(np.uint8)}
    so = ort.SessionOptions()
    want = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    for backend in BACKENDS:
        got = walle_core.load(path, backend=backend).run(feeds)
        np.testing.assert_array_equal(got["y0"], want[0], err_msg=backend)
        np.testing.assert_array_equal(got["y1"], want[1], err_msg=backend)
