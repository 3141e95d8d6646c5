"""The transformer composites of the cpu backend against their expansions: layer norm (the
ONNX op and the nine-node form exporters write below opset 17, recognised as one) and softmax
rows of every length (whole vectors, masked tails, -inf and NaN rows), over hypothesis shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")

from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as H  # noqa: E402
from onnx import numpy_helper as NH  # noqa: E402

import walle_core  # noqa: E402
from walle_core import atomic as A  # noqa: E402
from walle_core.backend import Program  # noqa: E402
from walle_core.decompose.builder import Builder  # noqa: E402
from walle_core.errors import BackendUnavailableError  # noqa: E402
from walle_core.plan.planner import prepare  # noqa: E402
from walle_core.plugins import registry  # noqa: E402

try:
    CPU = registry().get("cpu")
except BackendUnavailableError as exc:  # pragma: no cover - no compiler at install time
    pytest.skip(f"cpu backend unavailable: {exc}", allow_module_level=True)
REF = registry().get("reference")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _model(nodes: list[Any], x_shape: list[int], inits: list[Any], opset: int,
           outs: tuple[str, ...] = ("Y",)) -> bytes:
    g = H.make_graph(nodes, "g", [H.make_tensor_value_info("X", TP.FLOAT, x_shape)],
                     [H.make_tensor_value_info(o, TP.FLOAT, None) for o in outs], inits)
    m = H.make_model(g, opset_imports=[H.make_opsetid("", opset)])
    m.ir_version = 8
    return bytes(m.SerializeToString())


def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    assert got.shape == want.shape
    scale = max(float(np.max(np.abs(want))), 1e-6) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _composites(m: Any, feeds: dict[str, np.ndarray]) -> list[str]:
    """The composites the cpu backend runs as kernels in ``m``'s plan."""
    ops = prepare(m.atomic_ops(feeds)[0], CPU, set())
    return [op.name for op in ops if isinstance(op, A.Composite)]


def _spelled_layer_norm(rng: np.random.Generator, n_axes: int, shape: tuple[int, ...], opset: int,
                        square: str, bias: bool, eps: float) -> tuple[list[Any], list[Any]]:
    """LayerNorm over the last ``n_axes`` axes as torch writes it below opset 17."""
    axes = list(range(-n_axes, 0))
    norm_shape = list(shape[len(shape) - n_axes:])
    inits = [NH.from_array(rng.standard_normal(norm_shape).astype(np.float32), "g"),
             NH.from_array(np.array(eps, np.float32), "eps"), NH.from_array(np.array(2.0, np.float32), "two")]
    if opset >= 18:
        inits.append(NH.from_array(np.array(axes, np.int64), "axes"))

    def mean(src: str, dst: str) -> Any:
        if opset >= 18:
            return H.make_node("ReduceMean", [src, "axes"], [dst], keepdims=1)
        return H.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1)

    sq = (H.make_node("Pow", ["d", "two"], ["sq"]) if square == "pow"
          else H.make_node("Mul", ["d", "d"], ["sq"]))
    nodes = [mean("X", "mu"), H.make_node("Sub", ["X", "mu"], ["d"]), sq, mean("sq", "var"),
             H.make_node("Add", ["var", "eps"], ["ve"]), H.make_node("Sqrt", ["ve"], ["sd"]),
             H.make_node("Div", ["d", "sd"], ["nrm"]),
             H.make_node("Mul", ["nrm", "g"], ["Y" if not bias else "sc"])]
    if bias:
        inits.append(NH.from_array(rng.standard_normal(norm_shape).astype(np.float32), "b"))
        nodes.append(H.make_node("Add", ["b", "sc"], ["Y"]))
    return nodes, inits


@st.composite
def _ln_case(draw: st.DrawFn) -> tuple[tuple[int, ...], int]:
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 70), min_size=rank, max_size=rank)))
    return shape, draw(st.integers(1, rank))


@SETTINGS
@given(case=_ln_case(), opset=st.sampled_from([13, 17, 18]), square=st.sampled_from(["pow", "mul"]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_norm_kernel_matches_its_expansion(case: tuple[tuple[int, ...], int], opset: int, square: str,
                                                 bias: bool, seed: int) -> None:
    """The ONNX op (opset 17+) and the spelled-out form (any opset) both run as one layer_norm
    kernel on the cpu and match the reference backend's expansion, over odd row lengths."""
    shape, n_axes = case
    rng = np.random.default_rng(seed)
    if opset >= 17 and square == "pow":
        norm = list(shape[len(shape) - n_axes:])
        inits = [NH.from_array(rng.standard_normal(norm).astype(np.float32), "g")]
        ins = ["X", "g"]
        if bias:
            inits.append(NH.from_array(rng.standard_normal(norm).astype(np.float32), "b"))
            ins.append("b")
        nodes = [H.make_node("LayerNormalization", ins, ["Y"], axis=-n_axes, epsilon=1e-5)]
    else:
        nodes, inits = _spelled_layer_norm(rng, n_axes, shape, opset, square, bias, 1e-5)
    m = _model(nodes, list(shape), inits, opset)
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal()).astype(np.float32)
    cpu = walle_core.load(m, backend="cpu")
    assert _composites(cpu, {"X": x}) == ["layer_norm"]
    want = walle_core.load(m, backend="reference").run({"X": x})["Y"]
    _close(cpu.run({"X": x})["Y"], want)


def test_spelled_layer_norm_matches_onnxruntime_and_stays_when_shared() -> None:
    """The recognised form gives onnxruntime's numbers; a pattern whose intermediate another
    node reads (the mean, here) is left as written."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    nodes, inits = _spelled_layer_norm(rng, 1, (2, 7, 384), 14, "pow", True, 1e-12)
    x = rng.standard_normal((2, 7, 384)).astype(np.float32) * 4
    m = _model(nodes, [2, 7, 384], inits, 14)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    cpu = walle_core.load(m, backend="cpu")
    _close(cpu.run({"X": x})["Y"], want)
    # the scale behind an Identity (torch shares equal initializers that way) is still a constant
    ident = [H.make_node("Identity", ["g"], ["g2"])]
    for n in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.input[:] = ["g2" if i == "g" else i for i in n.input]
        ident.append(c)
    cpu_id = walle_core.load(_model(ident, [2, 7, 384], inits, 14), backend="cpu")
    assert _composites(cpu_id, {"X": x}) == ["layer_norm"]
    _close(cpu_id.run({"X": x})["Y"], want)
    shared = _model([*nodes, H.make_node("Neg", ["mu"], ["M"])], [2, 7, 384], inits, 14, ("Y", "M"))
    cpu2 = walle_core.load(shared, backend="cpu")
    assert "layer_norm" not in _composites(cpu2, {"X": x})
    _close(cpu2.run({"X": x})["Y"], want)


def test_layer_norm_with_read_statistics_is_expanded() -> None:
    """LayerNormalization whose Mean / InvStdDev outputs are read runs expanded (the kernel
    writes only Y) and gives all three."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(4)
    inits = [NH.from_array(rng.standard_normal(33).astype(np.float32), "g")]
    m = _model([H.make_node("LayerNormalization", ["X", "g"], ["Y", "M", "I"], axis=-1)], [5, 33], inits, 17,
               ("Y", "M", "I"))
    x = rng.standard_normal((5, 33)).astype(np.float32)
    cpu = walle_core.load(m, backend="cpu")
    assert "layer_norm" not in _composites(cpu, {"X": x})
    got = cpu.run({"X": x})
    for name, w in zip(("Y", "M", "I"), ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(
            None, {"X": x}), strict=True):
        _close(got[name], w)


@SETTINGS
@given(rows=st.integers(1, 40), n=st.integers(1, 300), log=st.booleans(), seed=st.integers(0, 2**16),
       special=st.sampled_from(["none", "ninf_row", "ninf_some", "nan"]))
def test_softmax_rows_match_the_expansion(rows: int, n: int, log: bool, seed: int, special: str) -> None:
    """softmax / log_softmax rows of any length (vector tails included) against the reference
    backend's expansion, with fully and partly -inf rows (a masked attention row) and NaN."""
    from walle_core.decompose.norm import softmax_axis

    b = Builder(fold=lambda op: None)
    x = b.tensor((rows, n), np.dtype(np.float32))
    y = softmax_axis(b, x, 1, log)
    ops = prepare(b.ops, CPU, {y.id})
    assert [type(op) for op in ops] == [A.Composite]
    exe = CPU.compile(Program([(op, CPU.algorithms(op)[0]) for op in ops], [x], [y]), threads=2)
    rng = np.random.default_rng(seed)
    xv = (rng.standard_normal((rows, n)) * 8).astype(np.float32)
    if special == "ninf_row":
        xv[rng.integers(rows)] = -np.inf
    elif special == "ninf_some":
        xv[rng.random((rows, n)) < 0.3] = -np.inf
    elif special == "nan":
        xv[rng.integers(rows), rng.integers(n)] = np.nan
    rops = prepare(b.ops, REF, {y.id})
    want = REF.compile(Program([(op, REF.algorithms(op)[0]) for op in rops], [x], [y])).run([xv])[0]
    np.testing.assert_allclose(exe.run([xv])[0], want, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(batch=st.integers(1, 6), m=st.integers(1, 40), n=st.integers(1, 130), k=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_products_of_computed_operands_match_numpy(batch: int, m: int, n: int, k: int, seed: int) -> None:
    """A batched MatMul of two computed operands (attention's Q K^T and scores x V) reads a
    small B in place (isa/matmul.inc: no packing per head), any m, n, k and vector tail."""
    rng = np.random.default_rng(seed)
    b = Builder(fold=lambda op: None)
    x, w = b.tensor((batch, m, k), np.dtype(np.float32)), b.tensor((batch, k, n), np.dtype(np.float32))
    y = b.matmul(x, w)
    ops = prepare(b.ops, CPU, {y.id})
    exe = CPU.compile(Program([(op, CPU.algorithms(op)[0]) for op in ops], [x, w], [y]), threads=2)
    xv = rng.standard_normal((batch, m, k)).astype(np.float32)
    wv = rng.standard_normal((batch, k, n)).astype(np.float32)
    want = np.matmul(xv.astype(np.float64), wv.astype(np.float64))
    np.testing.assert_allclose(exe.run([xv, wv])[0], want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.sqrt(k))))


@SETTINGS
@given(m=st.integers(1, 30), n=st.integers(1, 200), k=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_matmul_with_gelu_matches_the_expansion(m: int, n: int, k: int, seed: int) -> None:
    """MatMul + erf GELU (the exported x * 0.5 * (1 + erf(x / sqrt 2)), folded into the
    MatMul): the GELU runs as one pass of the row kernel after the GEMM."""
    rng = np.random.default_rng(seed)
    b = Builder(fold=lambda op: None)
    x = b.tensor((1, m, k), np.dtype(np.float32))
    h = b.matmul(x, b.const((rng.standard_normal((k, n)) * 0.5).astype(np.float32)))
    e = b.unary("erf", b.binary("div", h, b.scalar(float(np.sqrt(2.0)), h)))
    y = b.binary("mul", b.binary("mul", h, b.binary("add", e, b.scalar(1.0, e))), b.scalar(0.5, h))
    ops = prepare(b.ops, CPU, {y.id})
    exe = CPU.compile(Program([(op, CPU.algorithms(op)[0]) for op in ops], [x], [y]), threads=2)
    rops = prepare(b.ops, REF, {y.id})
    ref = REF.compile(Program([(op, REF.algorithms(op)[0]) for op in rops], [x], [y]))
    xv = rng.standard_normal((1, m, k)).astype(np.float32)
    labels = [label for label, _ in exe.profile([xv], runs=1)]  # type: ignore[attr-defined]
    assert labels == [f"MatMul+gelu packed-gemm {[1, m, k]} {[1, k, n]} -> {[1, m, n]}"]
    _close(exe.run([xv])[0], ref.run([xv])[0], 2e-5)
