"""Real .tflite models (the ones MediaPipe's wheel ships), float and int8, against LiteRT; plus
the importer's contracts: signatures, dynamic batch, layouts, errors, and .tflite in the CLI and
in task bundles.

The MediaPipe models come from the ``mediapipe`` wheel (an installed one, or the models that
``scripts/setup.sh`` unpacked from it into ``.venv/share/walle``); the int8 variants are made from
them by LiteRT's own calibrator. Float: Walle must match LiteRT to 3e-4 of each output's scale.
Int8: integer kernels round differently from a float QDQ emulation, and the differences grow
over 100+ layers; so Walle's difference from LiteRT must stay within the spread among LiteRT's
own kernel sets (XNNPACK, the builtin kernels, the reference kernels) on the same inputs.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tflite")

from tflite_testlib import (
    ModelBuilder,
    buffers_after_flatbuffer,
    builtin_transpose_conv,
    fold_fp16_weights,
    litert_kernel_sets,
    litert_kernel_spread,
    litert_run,
    mediapipe_models,
    quantize,
    random_feeds,
    rel_error,
)
from typer.testing import CliRunner

import walle_core
from walle_core.errors import ModelLoadError, UnsupportedOpError
from walle_core.frontend.tflite_import import import_model

# Models LiteRT runs on its own (the others need MediaPipe's custom ops).
FLOAT_MODELS = [
    "face_detection_short_range", "face_detection_full_range_sparse", "face_landmark",
    "hand_landmark_lite", "hand_landmark_full", "hand_recrop", "iris_landmark",
    "palm_detection_lite", "palm_detection_full", "pose_detection", "pose_landmark_full",
]
INT8_MODELS = ["face_detection_short_range", "face_landmark", "hand_landmark_lite", "iris_landmark",
               "palm_detection_lite"]
# Float: 3e-4 of each output's scale, or 3x the spread between LiteRT's own kernel sets where
# the output is that sensitive to rounding: pose_landmark_full's segmentation logits (|x| ~ 1400)
# move by ~1 (7e-4) between LiteRT's XNNPACK and builtin kernels, and under a 1-ulp input change.
FLOAT_TOL = 3e-4
# Transposes the importer leaves in each model: the input's NHWC -> NCHW and, for detector
# heads, one before each reshape of a conv output into (anchors, values).
TRANSPOSES = {"face_landmark": 1, "iris_landmark": 1, "hand_landmark_lite": 1, "hand_recrop": 1,
              "face_detection_short_range": 5, "palm_detection_lite": 5}


@pytest.fixture(scope="module")
def zoo() -> Path:
    found = mediapipe_models()
    if found is None:
        pytest.skip("MediaPipe's .tflite models are not unpacked: run scripts/setup.sh (it fetches mediapipe==0.10.21 once)")
    return found


def model_bytes(zoo: Path, name: str) -> bytes:
    return (zoo / f"{name}.tflite").read_bytes()


def run_walle(model: bytes | Path, feeds: list[np.ndarray], backend: str = "reference") -> list[np.ndarray]:
    m = walle_core.load(model, backend=backend)
    got = m.run(dict(zip(m.input_names, feeds, strict=True)))
    return [got[n] for n in m.output_names]


def backend_or_skip(name: str) -> str:
    from walle_core.plugins import registry

    entry = next((e for e in registry().entries() if e.name == name), None)
    if entry is None or not entry.availability.available:
        pytest.skip(f"backend {name} is unavailable here")
    return name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", FLOAT_MODELS)
def test_mediapipe_float_model_matches_litert(zoo: Path, name: str, backend: str) -> None:
    path = zoo / f"{name}.tflite"
    feeds = random_feeds(path.read_bytes())
    ref = litert_run(path.read_bytes(), feeds)
    got = run_walle(path, feeds, backend=backend_or_skip(backend))
    spread = litert_kernel_spread(path.read_bytes(), feeds)
    for g, r, s in zip(got, ref, spread, strict=True):
        assert rel_error(g, r) <= max(FLOAT_TOL, 3 * s), (rel_error(g, r), s)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["opencl", "vulkan"])
@pytest.mark.parametrize("name", ["face_detection_short_range", "hand_recrop"])
def test_mediapipe_model_on_gpu_backends(zoo: Path, name: str, backend: str) -> None:
    """The GPU backends (pocl and lavapipe where no GPU is present) on two small models."""
    data = model_bytes(zoo, name)
    feeds = random_feeds(data)
    for g, r in zip(run_walle(data, feeds, backend=backend_or_skip(backend)), litert_run(data, feeds), strict=True):
        assert rel_error(g, r) <= FLOAT_TOL


def litert_spread(model: bytes, feeds: list[np.ndarray]) -> list[float]:
    """Per output, the largest mean |difference| (in int8 steps) between LiteRT's kernel sets."""
    results = [[v.astype(np.int64) for v in outs] for outs in litert_kernel_sets(model, feeds)]
    return [max(float(np.mean(np.abs(a[k] - b[k]))) for a in results for b in results)
            for k in range(len(results[0]))]


@pytest.mark.slow
@pytest.mark.parametrize("name", INT8_MODELS)
def test_mediapipe_int8_model_within_litert_spread(zoo: Path, name: str) -> None:
    model = quantize(fold_fp16_weights(model_bytes(zoo, name)), samples=4)
    graph = import_model(model)
    assert graph.inputs[0].type.dtype == np.int8
    ops = Counter(n.op_type for n in graph.nodes)
    assert ops["DequantizeLinear"] > 0 and ops["QuantizeLinear"] > 0
    feeds = random_feeds(model)
    ref = litert_run(model, feeds)
    got = run_walle(model, feeds)
    for g, r, spread in zip(got, ref, litert_spread(model, feeds), strict=True):
        assert g.dtype == r.dtype == np.int8
        diff = np.abs(g.astype(np.int64) - r.astype(np.int64))
        assert float(diff.mean()) <= 1.5 * spread + 0.5, (float(diff.mean()), spread)


@pytest.mark.parametrize("name", sorted(TRANSPOSES))
def test_layout_changes_only_at_the_edges(zoo: Path, name: str) -> None:
    graph = import_model(model_bytes(zoo, name))
    ops = Counter(n.op_type for n in graph.nodes)
    assert ops["Transpose"] == TRANSPOSES[name], ops
    assert ops["Conv"] >= 20  # dozens of NCHW convs, element-wise ops between them, no transposes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["selfie_segmentation", "selfie_segmentation_landscape"])
def test_mediapipe_transpose_conv_bias_custom_op(zoo: Path, name: str) -> None:
    """MediaPipe's custom Convolution2DTransposeBias, checked against LiteRT running the same
    model with the builtin TRANSPOSE_CONV in its place."""
    data = model_bytes(zoo, name)
    builtin = builtin_transpose_conv(data)
    assert builtin != data
    feeds = random_feeds(builtin)
    ref = litert_run(builtin, feeds)
    for g, r in zip(run_walle(data, feeds), ref, strict=True):
        assert rel_error(g, r) <= FLOAT_TOL


def test_mediapipe_custom_op_fails_at_load_naming_it(zoo: Path) -> None:
    with pytest.raises(UnsupportedOpError) as err:
        import_model(model_bytes(zoo, "face_landmark_with_attention"))
    text = str(err.value)
    assert "CUSTOM:Landmarks2TransformMatrix" in text and "operator #" in text and "op code 32" in text


def conv_chain(batch_signature: bool = False) -> bytes:
    """input -> conv+relu -> add -> max pool -> depthwise -> mean -> fully connected."""
    rng = np.random.default_rng(3)
    b = ModelBuilder()
    x = b.input([1, 8, 8, 3], name="x", signature=[-1, 8, 8, 3] if batch_signature else None)
    (y,) = b.op("CONV_2D", [x, b.const(rng.normal(size=(8, 3, 3, 3)).astype(np.float32)), b.const(np.zeros(8, np.float32))],
                "Conv2DOptions", padding=0, strideW=1, strideH=1, fusedActivationFunction=1,
                dilationWFactor=1, dilationHFactor=1)
    (y,) = b.op("ADD", [y, b.const(rng.normal(size=8).astype(np.float32))], "AddOptions")
    (y,) = b.op("MAX_POOL_2D", [y], "Pool2DOptions", padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2)
    # (with a bias: LiteRT 2.3 crashes on a bias-less depthwise conv once the batch is resized)
    (y,) = b.op("DEPTHWISE_CONV_2D", [y, b.const(rng.normal(size=(1, 3, 3, 8)).astype(np.float32)),
                                      b.const(np.zeros(8, np.float32))],
                "DepthwiseConv2DOptions", padding=0, strideW=1, strideH=1, depthMultiplier=1,
                dilationWFactor=1, dilationHFactor=1)
    (feat,) = b.op("MEAN", [y, b.const(np.asarray([1, 2], np.int32))], "ReducerOptions", keepDims=False)
    (logits,) = b.op("FULLY_CONNECTED", [feat, b.const(rng.normal(size=(5, 8)).astype(np.float32))],
                     "FullyConnectedOptions")
    b.output(y, logits)
    b.sign("serving_default", ["x"], ["features", "logits"])
    return b.build()


def test_chain_has_two_layout_changes_and_no_raster_between() -> None:
    model = walle_core.load(conv_chain(), backend="reference")
    ops = Counter(n.op_type for n in model.graph.nodes)
    assert ops["Transpose"] == 2, ops  # the input in, the `features` output out; mean reads NCHW
    ops_run, _ = model.atomic_ops(model.example_feeds())
    moves = [op for op in ops_run if op.kind.value == "Raster" and len(op.inputs[0].shape) == 4
             and op.inputs[0].shape != op.out.shape]
    assert [(m.inputs[0].shape, m.out.shape) for m in moves] == [((1, 8, 8, 3), (1, 3, 8, 8)),
                                                                  ((1, 8, 4, 4), (1, 4, 4, 8))]


def test_signature_names_inputs_and_outputs() -> None:
    graph = import_model(conv_chain())
    assert graph.name == "serving_default"
    assert [v.name for v in graph.inputs] == ["x"]
    assert [v.name for v in graph.outputs] == ["features", "logits"]
    with pytest.raises(ModelLoadError, match=r"no signature 'predict'.*'serving_default'"):
        import_model(conv_chain(), signature="predict")


def test_dynamic_batch_from_shape_signature() -> None:
    data = conv_chain(batch_signature=True)
    graph = import_model(data)
    assert graph.inputs[0].type.describe() == "float32[batch,8,8,3]"
    model = walle_core.load(data, backend="reference")
    for batch in (1, 3):
        feeds = [np.random.default_rng(batch).uniform(-1, 1, (batch, 8, 8, 3)).astype(np.float32)]
        ref = litert_run(data, feeds)
        got = model.run({"x": feeds[0]})
        for name, r in zip(model.output_names, ref, strict=True):
            assert got[name].shape[0] == batch
            assert rel_error(got[name], r) <= 1e-5


def test_unsupported_op_and_option_name_operator_index_and_code() -> None:
    b = ModelBuilder()
    x = b.input([2, 3], name="x")
    (y,) = b.op("RELU", [x])
    (z,) = b.op("BITCAST", [y], out_dtype=np.int32, out_shapes=[[2, 3]])
    b.output(z)
    with pytest.raises(UnsupportedOpError, match=r"'BITCAST'.*operator #1 of subgraph 0.*op code 159"):
        import_model(b.pack())
    b = ModelBuilder()
    x = b.input([2, 8], name="x")
    (y,) = b.op("FULLY_CONNECTED", [x, b.const(np.zeros((4, 8), np.float32))], "FullyConnectedOptions",
                weightsFormat=1, out_shapes=[[2, 4]])
    b.output(y)
    with pytest.raises(UnsupportedOpError, match=r"'FULLY_CONNECTED'.*operator #0.*op code 9.*shuffled"):
        import_model(b.pack())


def test_corrupt_and_truncated_files_raise_model_load_error(tmp_path: Path) -> None:
    data = conv_chain()
    for cut in (0, 4, 7, 8, 16, 64, len(data) // 3, len(data) // 2, len(data) - 100):
        with pytest.raises(ModelLoadError):
            import_model(data[:cut])
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="TFLite"):
        walle_core.load(path)
    path.write_bytes(b"\x00\x01")
    with pytest.raises(ModelLoadError, match="too short"):
        walle_core.load(path)
    wrong = bytearray(data)
    wrong[4:8] = b"XXXX"
    with pytest.raises(ModelLoadError):
        walle_core.load(bytes(wrong))
    rng = np.random.default_rng(0)
    for _ in range(40):  # flipped bytes: a clean error or a model, never a crash of another kind
        bad = bytearray(data)
        for pos in rng.integers(8, len(bad), 6):
            bad[pos] = int(rng.integers(0, 256))
        with contextlib.suppress(ModelLoadError, UnsupportedOpError):
            import_model(bytes(bad))


def test_walle_run_inspect_search_bench_accept_tflite(tmp_path: Path) -> None:
    from walle_cli.app import app

    path = tmp_path / "chain.tflite"
    path.write_bytes(conv_chain())
    x = np.random.default_rng(0).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(path), "-i", f"x={tmp_path / 'x.npy'}", "-b", "reference"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "logits" in result.output and "features" in result.output
    result = runner.invoke(app, ["inspect", str(path), "-b", "reference"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Conv" in result.output and "float32[1,8,8,3]" in result.output
    result = runner.invoke(app, ["search", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Conv2D" in result.output
    # The peer is LiteRT on the same file: both answers agree (max |diff| column), timing aside.
    result = runner.invoke(app, ["bench", "model", str(path), "--vs", "litert", "--runs", "2",
                                 "--backend", "reference"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("chain"))
    assert float(row.split()[-1]) < 1e-4, row


def test_task_bundle_with_a_tflite_model(tmp_path: Path) -> None:
    from walle_core.task import KeyStore, extract_bundle, generate_key, pack, sign_bundle
    from walle_core.vm.vm import TaskSpec, ThreadVM

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.tflite").write_bytes(conv_chain())
    (src / "main.py").write_text(
        "import numpy as np\nimport walle\n"
        "m = walle.model()\n"
        "walle.output('logits', m.run({'x': np.ones((1, 8, 8, 3), np.float32)})['logits'])\n")
    (src / "task.json").write_text(json.dumps({"name": "tfl", "version": "1.0.0", "entry": "main.py",
                                               "model": "model.tflite", "trigger": {"pattern": ["open"]}}))
    key = generate_key()
    pack(src, tmp_path / "tfl.walle")
    sign_bundle(tmp_path / "tfl.walle", key)
    bundle = extract_bundle(tmp_path / "tfl.walle", tmp_path / "installed", KeyStore(keys=[key.public_key()]))
    spec = TaskSpec.from_manifest(bundle.manifest, tmp_path / "installed", backend="reference")
    result = ThreadVM(spec).run()
    assert result.ok, result.error
    ref = litert_run(conv_chain(), [np.ones((1, 8, 8, 3), np.float32)])[1]
    assert rel_error(np.asarray(result.outputs["logits"]), ref) <= 1e-5


def control_flow_model(kind: str) -> bytes:
    """IF: x * 2 when cond else x + 1. WHILE: (i, x) -> (i + 1, x * 1.5) while i < 3."""
    b = ModelBuilder()
    if kind == "IF":
        cond = b.input([1], np.bool_, name="cond")
        x = b.input([2, 3], name="x")
        then, other = b.subgraph(), b.subgraph()
        for index, op, options, value in ((then, "MUL", "MulOptions", 2.0), (other, "ADD", "AddOptions", 1.0)):
            b.use(index)
            xi = b.input([2, 3], name="x")
            b.output(*b.op(op, [xi, b.const(np.float32(value))], options, out_shapes=[[2, 3]]))
        b.use(0)
        (y,) = b.op("IF", [cond, x], "IfOptions", thenSubgraphIndex=then, elseSubgraphIndex=other)
        b.output(y)
        return b.build()
    i = b.input([], np.int32, name="i")
    x = b.input([2, 3], name="x")
    cond, body = b.subgraph(), b.subgraph()
    b.use(cond)
    ci = b.input([], np.int32, name="i")
    b.input([2, 3], name="x")  # the condition reads only the counter
    b.output(*b.op("LESS", [ci, b.const(np.int32(3))], out_dtype=np.bool_, out_shapes=[[]]))
    b.use(body)
    bi, bx = b.input([], np.int32, name="i"), b.input([2, 3], name="x")
    (ni,) = b.op("ADD", [bi, b.const(np.int32(1))], "AddOptions", out_dtype=np.int32, out_shapes=[[]])
    (nx,) = b.op("MUL", [bx, b.const(np.float32(1.5))], "MulOptions", out_shapes=[[2, 3]])
    b.output(ni, nx)
    b.use(0)
    outs = b.op("WHILE", [i, x], "WhileOptions", n_out=2, out_shapes=[[], [2, 3]],
                condSubgraphIndex=cond, bodySubgraphIndex=body)
    b.output(*outs)
    return b.build()


@pytest.mark.parametrize("cond", [True, False])
def test_if_between_subgraphs(cond: bool) -> None:
    data = control_flow_model("IF")
    graph = import_model(data)
    assert [n.op_type for n in graph.nodes].count("If") == 1
    feeds = [np.asarray([cond]), np.random.default_rng(0).uniform(-1, 1, (2, 3)).astype(np.float32)]
    ref = litert_run(data, feeds)
    got = run_walle(data, feeds)
    assert rel_error(got[0], ref[0]) <= 1e-6


@pytest.mark.parametrize("start", [0, 2, 5])
def test_while_between_subgraphs(start: int) -> None:
    data = control_flow_model("WHILE")
    assert [n.op_type for n in import_model(data).nodes].count("Loop") == 1
    feeds = [np.asarray(start, np.int32), np.random.default_rng(1).uniform(-1, 1, (2, 3)).astype(np.float32)]
    ref = litert_run(data, feeds)
    got = run_walle(data, feeds)
    np.testing.assert_array_equal(got[0], ref[0])
    assert rel_error(got[1], ref[1]) <= 1e-6


def variable_model(init: str = "const", assign_in_main: bool = False) -> bytes:
    """x + w, w a resource variable that CALL_ONCE's subgraph 1 assigns: a constant (``const``),
    an fp16 constant behind DEQUANTIZE (``fp16``) or a value computed by an op (``computed``);
    ``assign_in_main`` also assigns it in the main graph."""
    b = ModelBuilder()
    resource = b.S.TensorType.RESOURCE

    def handle() -> int:
        (h,) = b.op("VAR_HANDLE", [], "VarHandleOptions", container="c", sharedName="w", out_shapes=[[]])
        b.tensors[h].type = resource
        return h

    x = b.input([2, 4], name="x")
    b.op("CALL_ONCE", [], "CallOnceOptions", n_out=0, initSubgraphIndex=1)
    h = handle()
    if assign_in_main:
        b.op("ASSIGN_VARIABLE", [h, x], n_out=0)
    (v,) = b.op("READ_VARIABLE", [h], out_shapes=[[2, 4] if assign_in_main else [4]])
    (y,) = b.op("ADD", [x, v], "AddOptions")
    b.output(y)
    b.subgraph()
    h1 = handle()
    w = np.array([1.5, -2.0, 0.25, 4.0], np.float32)
    if init == "fp16":
        (val,) = b.op("DEQUANTIZE", [b.const(w.astype(np.float16))], out_shapes=[[4]])
    elif init == "computed":
        (val,) = b.op("ADD", [b.const(w), b.const(w)], "AddOptions", out_shapes=[[4]])
    else:
        val = b.const(w)
    b.op("ASSIGN_VARIABLE", [h1, val], n_out=0)
    b.use(0)
    return b.build()


@pytest.mark.parametrize("init", ["const", "fp16"])
def test_resource_variable_initialised_once_reads_as_a_constant(init: str) -> None:
    data = variable_model(init)
    graph = import_model(data)
    assert {n.op_type for n in graph.nodes} == {"Add"}, [n.op_type for n in graph.nodes]
    feeds = [np.random.default_rng(2).uniform(-1, 1, (2, 4)).astype(np.float32)]
    ref = litert_run(data, feeds)
    model = walle_core.load(data, backend="reference")
    for _ in range(2):  # the same in every run, as in LiteRT after its one initialisation
        got = model.run(dict(zip(model.input_names, feeds, strict=True)))
        assert rel_error(got[model.output_names[0]], ref[0]) <= 1e-6


def test_resource_variables_that_change_at_run_time_are_refused_at_load() -> None:
    with pytest.raises(UnsupportedOpError, match=r"'ASSIGN_VARIABLE'.*operator #2 of subgraph 0.*op code 144"
                                                 r".*'c/w' at run time"):
        import_model(variable_model(assign_in_main=True))
    with pytest.raises(UnsupportedOpError, match=r"'ADD'.*operator #1 of subgraph 1.*op code 0"
                                                 r".*initialisation subgraph 1"):
        import_model(variable_model("computed"))


@pytest.mark.parametrize(("io", "activations"), [("uint8", "int8"), ("float", "int8"), ("int16", "int16")])
def test_quantised_variants_of_a_chain(io: str, activations: str) -> None:
    """uint8 inputs and outputs (requantised to the int8 inside), float edges (QUANTIZE and
    DEQUANTIZE ops), 16-bit activations with 8-bit weights: within one step of LiteRT."""
    model = quantize(conv_chain(), io=io, activations=activations)
    graph = import_model(model)
    assert graph.inputs[0].type.dtype == {"uint8": np.uint8, "float": np.float32, "int16": np.int16}[io]
    feeds = random_feeds(model)
    ref = litert_run(model, feeds)
    for g, r in zip(run_walle(model, feeds), ref, strict=True):
        assert g.dtype == r.dtype
        if r.dtype.kind == "f":
            assert rel_error(g, r) <= 1e-2  # within a step of the int8 output's range
        else:
            assert np.max(np.abs(g.astype(np.int64) - r.astype(np.int64))) <= 1


def test_buffers_stored_after_the_flatbuffer() -> None:
    """The >2 GB layout (Buffer.offset / size into the file), read the same as inline buffers."""
    data = buffers_after_flatbuffer(conv_chain())
    feeds = random_feeds(data)
    ref = litert_run(data, feeds)
    for g, r in zip(run_walle(data, feeds), ref, strict=True):
        assert rel_error(g, r) <= 1e-5
    with pytest.raises(ModelLoadError, match="past the end of the file"):
        import_model(data[:-64])


def test_signature_picks_its_subgraph() -> None:
    """Two signatures over two subgraphs: each key imports its own subgraph under its names."""
    b = ModelBuilder()
    x = b.input([2, 3], name="x0")
    b.output(*b.op("MUL", [x, b.const(np.float32(2.0))], "MulOptions"))
    b.sign("double", ["value"], ["doubled"])
    b.subgraph()
    y = b.input([2, 3], name="y0")
    b.output(*b.op("NEG", [y], out_shapes=[[2, 3]]))
    b.sign("negate", ["value"], ["negated"], subgraph=1)
    data = b.build()
    from ai_edge_litert.interpreter import Interpreter

    value = np.random.default_rng(0).uniform(-1, 1, (2, 3)).astype(np.float32)
    it = Interpreter(model_content=data)
    for key, out in (("double", "doubled"), ("negate", "negated")):
        graph = import_model(data, signature=key)
        assert graph.name == key and [v.name for v in graph.inputs] == ["value"]
        assert [v.name for v in graph.outputs] == [out]
        got = walle_core.Model(graph, backend="reference").run({"value": value})[out]
        np.testing.assert_allclose(got, it.get_signature_runner(key)(value=value)[out], rtol=1e-6)
    assert import_model(data).name == "double"  # the main subgraph's signature by default


@pytest.mark.parametrize(("time_major", "peepholes"), [(False, False), (True, True)])
def test_unidirectional_sequence_lstm(time_major: bool, peepholes: bool) -> None:
    rng = np.random.default_rng(5)
    batch, steps, n_in, hidden = 2, 4, 3, 5
    b = ModelBuilder()
    x = b.input([steps, batch, n_in] if time_major else [batch, steps, n_in], name="x")

    def weights(*shape: int) -> int:
        return b.const((rng.normal(size=shape) * 0.5).astype(np.float32))

    ins = [x, *(weights(hidden, n_in) for _ in range(4)), *(weights(hidden, hidden) for _ in range(4))]
    ins += [weights(hidden) if peepholes else -1 for _ in range(3)]
    ins += [weights(hidden) for _ in range(4)] + [-1, -1]
    ins += [b.tensor([batch, hidden], variable=True), b.tensor([batch, hidden], variable=True)]
    (y,) = b.op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, "UnidirectionalSequenceLSTMOptions",
                fusedActivationFunction=4, timeMajor=time_major)
    b.output(y)
    data = b.build()
    graph = import_model(data)
    assert [n.op_type for n in graph.nodes].count("LSTM") == 1
    feeds = random_feeds(data)
    ref = litert_run(data, feeds)
    assert rel_error(run_walle(data, feeds)[0], ref[0]) <= 1e-5


@pytest.mark.parametrize(("time_major", "act"), [(False, 4), (True, 1)])
def test_unidirectional_sequence_rnn(time_major: bool, act: int) -> None:
    rng = np.random.default_rng(8)
    batch, steps, n_in, units = 2, 5, 3, 4
    b = ModelBuilder()
    x = b.input([steps, batch, n_in] if time_major else [batch, steps, n_in], name="x")
    ins = [x, *(b.const((rng.normal(size=s) * 0.5).astype(np.float32)) for s in ((units, n_in), (units, units), (units,))),
           b.tensor([batch, units], variable=True)]
    (y,) = b.op("UNIDIRECTIONAL_SEQUENCE_RNN", ins, "SequenceRNNOptions", fusedActivationFunction=act,
                timeMajor=time_major)
    b.output(y)
    data = b.build()
    assert [n.op_type for n in import_model(data).nodes].count("RNN") == 1
    feeds = random_feeds(data)
    ref = litert_run(data, feeds)
    assert rel_error(run_walle(data, feeds)[0], ref[0]) <= 1e-5


@pytest.mark.parametrize("op", ["FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"])
def test_dynamic_range_quantised_weights(op: str) -> None:
    """int8 weights with float activations (the converter's default "dynamic range" mode):
    Walle dequantises the weights and computes in float; LiteRT quantises each input row to int8
    on the fly, so the two agree to that rounding (~1/127 of the input's range), not to 1e-5."""
    rng = np.random.default_rng(9)
    b = ModelBuilder()

    def weights(shape: tuple[int, ...], axis: int) -> int:
        n = shape[axis]
        return b.const(rng.integers(-127, 128, shape).astype(np.int8), quant=(np.linspace(0.005, 0.02, n), np.zeros(n), axis))

    if op == "FULLY_CONNECTED":
        x = b.input([3, 16], name="x")
        (y,) = b.op(op, [x, weights((8, 16), 0), b.const(np.zeros(8, np.float32))], "FullyConnectedOptions")
    elif op == "CONV_2D":
        x = b.input([1, 6, 6, 4], name="x")
        (y,) = b.op(op, [x, weights((5, 3, 3, 4), 0), b.const(np.zeros(5, np.float32))], "Conv2DOptions",
                    padding=0, strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1)
    else:
        x = b.input([1, 6, 6, 4], name="x")
        (y,) = b.op(op, [x, weights((1, 3, 3, 4), 3), b.const(np.zeros(4, np.float32))], "DepthwiseConv2DOptions",
                    padding=0, strideW=1, strideH=1, depthMultiplier=1, dilationWFactor=1, dilationHFactor=1)
    b.output(y)
    data = b.build()
    feeds = random_feeds(data)
    ref = litert_run(data, feeds)
    assert rel_error(run_walle(data, feeds)[0], ref[0]) <= 2e-2


def bidirectional_lstm_model(time_major: bool, merge: bool, peepholes: bool) -> bytes:
    rng = np.random.default_rng(10)
    batch, steps, n_in, hidden = 2, 4, 3, 5
    b = ModelBuilder()
    x = b.input([steps, batch, n_in] if time_major else [batch, steps, n_in], name="x")

    def weights(*shape: int) -> int:
        return b.const((rng.normal(size=shape) * 0.5).astype(np.float32))

    def direction() -> list[int]:
        ins = [*(weights(hidden, n_in) for _ in range(4)), *(weights(hidden, hidden) for _ in range(4))]
        ins += [weights(hidden) if peepholes else -1 for _ in range(3)]
        return ins + [weights(hidden) for _ in range(4)] + [-1, -1]

    ins = [x, *direction(), *direction()]
    ins += [b.tensor([batch, hidden], variable=True) for _ in range(4)] + [-1] * 9
    shape = [steps, batch] if time_major else [batch, steps]
    outs = b.op("BIDIRECTIONAL_SEQUENCE_LSTM", ins, "BidirectionalSequenceLSTMOptions", n_out=1 if merge else 2,
                out_shapes=[[*shape, 2 * hidden]] if merge else [[*shape, hidden]] * 2,
                fusedActivationFunction=4, timeMajor=time_major, mergeOutputs=merge)
    b.output(*outs)
    return b.build()


@pytest.mark.parametrize(("time_major", "merge", "peepholes"), [(False, False, False), (True, False, True),
                                                          (True, True, False), (False, True, False)])
def test_bidirectional_sequence_lstm(time_major: bool, merge: bool, peepholes: bool) -> None:
    """Against LiteRT; for batch-major merged outputs, against LiteRT's two unmerged outputs side
    by side (LiteRT's own merged batch-major output holds garbage or NaNs in some runs)."""
    data = bidirectional_lstm_model(time_major, merge, peepholes)
    assert [n.op_type for n in import_model(data).nodes].count("LSTM") == 1
    feeds = random_feeds(data)
    if merge and not time_major:
        ref = [np.concatenate(litert_run(bidirectional_lstm_model(time_major, False, peepholes), feeds), axis=-1)]
    else:
        ref = litert_run(data, feeds)
    for backend in ("reference", backend_or_skip("cpu")):
        for got, want in zip(run_walle(data, feeds, backend=backend), ref, strict=True):
            assert rel_error(got, want) <= 1e-5, backend


LSTM_VARIANTS = {
    "cifg": {"cifg": True},
    "cifg_peepholes_time_major": {"cifg": True, "peepholes": True, "time_major": True},
    "projection": {"projection": True},
    "projection_bias_clipped": {"projection": True, "proj_bias": True, "cellClip": 0.8, "projClip": 0.5},
    "layer_norm": {"layer_norm": True, "peepholes": True},
    "layer_norm_cifg_projection": {"layer_norm": True, "cifg": True, "projection": True},
    "relu_cell_clip": {"cellClip": 1.5, "act": 1},
}


@pytest.mark.parametrize("variant", sorted(LSTM_VARIANTS))
def test_lstm_variants_beyond_onnx_unrolled(variant: str) -> None:
    """CIFG, projection (bias, clipping), layer-normalised gates, cell clipping: the recurrence
    unrolled step by step in the IR, against LiteRT."""
    v = LSTM_VARIANTS[variant]
    rng = np.random.default_rng(6)
    batch, steps, n_in, cells, n_out = 2, 5, 3, 6, (4 if v.get("projection") else 6)
    b = ModelBuilder()
    time_major = bool(v.get("time_major"))
    x = b.input([steps, batch, n_in] if time_major else [batch, steps, n_in], name="x")

    def weights(*shape: int) -> int:
        return b.const((rng.normal(size=shape) * 0.5).astype(np.float32))

    cifg = bool(v.get("cifg"))
    ins = [x] + [-1 if cifg and g == 0 else weights(cells, n_in) for g in range(4)]
    ins += [-1 if cifg and g == 0 else weights(cells, n_out) for g in range(4)]
    ins += [weights(cells) if v.get("peepholes") and not (cifg and k == 0) else -1 for k in range(3)]
    ins += [-1 if cifg and g == 0 else weights(cells) for g in range(4)]
    ins += [weights(n_out, cells) if v.get("projection") else -1, weights(n_out) if v.get("proj_bias") else -1]
    ins += [b.tensor([batch, n_out], variable=True), b.tensor([batch, cells], variable=True)]
    if v.get("layer_norm"):
        ins += [-1 if cifg and g == 0 else b.const((1 + rng.normal(size=cells) * 0.2).astype(np.float32))
                for g in range(4)]
    (y,) = b.op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, "UnidirectionalSequenceLSTMOptions",
                fusedActivationFunction=int(v.get("act", 4)), timeMajor=time_major,
                cellClip=float(v.get("cellClip", 0.0)), projClip=float(v.get("projClip", 0.0)))
    b.output(y)
    data = b.build()
    assert "LSTM" not in [n.op_type for n in import_model(data).nodes]
    feeds = random_feeds(data, lo=-2.0, hi=2.0)
    ref = litert_run(data, feeds)
    assert rel_error(run_walle(data, feeds)[0], ref[0]) <= 1e-5
    assert rel_error(run_walle(data, feeds, backend=backend_or_skip("cpu"))[0], ref[0]) <= 1e-5


def test_a_value_read_by_a_branch_and_output_keeps_one_name() -> None:
    """x * 3 is both a graph output and an operand the IF's branches read from the enclosing
    scope: naming the output after the signature must rename it inside the branches too."""
    b = ModelBuilder()
    cond = b.input([1], np.bool_, name="cond")
    x = b.input([2, 3], name="x")
    (tripled,) = b.op("MUL", [x, b.const(np.float32(3.0))], "MulOptions")
    then, other = b.subgraph(), b.subgraph()
    for index, op in ((then, "NEG"), (other, "ABS")):
        b.use(index)
        xi = b.input([2, 3], name="v")
        b.output(*b.op(op, [xi], out_shapes=[[2, 3]]))
    b.use(0)
    (y,) = b.op("IF", [cond, tripled], "IfOptions", thenSubgraphIndex=then, elseSubgraphIndex=other)
    b.output(tripled, y)
    b.sign("serving_default", ["cond", "x"], ["tripled", "picked"])
    data = b.build()
    value = np.random.default_rng(2).uniform(-1, 1, (2, 3)).astype(np.float32)
    for flag in (True, False):
        feeds = [np.asarray([flag]), value]
        for g, r in zip(run_walle(data, feeds), litert_run(data, feeds), strict=True):
            assert rel_error(g, r) <= 1e-6
