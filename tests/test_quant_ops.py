"""The cpu backend's int8 kernels through the engine, against ``reference`` (which runs the
composites' integer expansion): hypothesis draws odd shapes, strides, padding, dilation,
groups (depthwise included), uint8/int8 activations and weights, zero points, per-tensor and
per-channel scales, fused clamps and int32 outputs (ConvInteger / MatMulInteger). The integers
must be identical."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import walle_core
from walle_core.plugins import registry

pytestmark = pytest.mark.skipif("cpu" not in {b.name for b in registry().available()},
                                reason="the cpu backend is not built")

_TYPES = {np.dtype(np.uint8): TP.UINT8, np.dtype(np.int8): TP.INT8, np.dtype(np.int32): TP.INT32}


def _rand(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


def _run_both(node: Any, x: np.ndarray, out_dtype: np.dtype, out_shape: list[int],
              inits: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    g = h.make_graph([node], "q", [h.make_tensor_value_info("x", _TYPES[x.dtype], list(x.shape))],
                     [h.make_tensor_value_info("y", _TYPES[out_dtype], out_shape)], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]).SerializeToString()
    ref = walle_core.load(model, backend="reference").run({"x": x})["y"]
    cpu_model = walle_core.load(model, backend="cpu")
    got = cpu_model.run({"x": x})["y"]
    steps = cpu_model.plan_for({"x": x}).stage.steps
    assert [s.backend for s in steps] == ["cpu"], "the int8 op fell back to another backend"
    return got, ref


@st.composite
def conv_cases(draw: st.DrawFn) -> dict[str, Any]:
    depthwise = draw(st.booleans())
    groups = 1
    if depthwise:
        c = o = groups = draw(st.integers(2, 20))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        c = groups * draw(st.integers(1, 9))
        o = groups * draw(st.integers(1, 9))
    k = draw(st.sampled_from([1, 1, 3, 3, 5]))
    return {
        "n": draw(st.integers(1, 2)), "c": c, "o": o, "groups": groups, "k": k,
        "h": draw(st.integers(k, 17)), "w": draw(st.integers(k, 17)),
        "stride": draw(st.integers(1, 2)), "dil": draw(st.sampled_from([1, 1, 2])),
        "pad": draw(st.integers(0, k // 2 + 1)),
        "x_dtype": draw(st.sampled_from([np.dtype(np.uint8), np.dtype(np.int8)])),
        "w_dtype": draw(st.sampled_from([np.dtype(np.int8), np.dtype(np.int8), np.dtype(np.uint8)])),
        "per_channel": draw(st.booleans()), "w_zero": draw(st.booleans()),
        "integer": draw(st.integers(0, 4)) == 0, "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_int8_conv_matches_reference(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    n, c, o, k, g = case["n"], case["c"], case["o"], case["k"], case["groups"]
    d, s, p = case["dil"], case["stride"], case["pad"]
    if (k - 1) * d + 1 > min(case["h"], case["w"]) + 2 * p:
        return
    x = _rand(rng, case["x_dtype"], (n, c, case["h"], case["w"]))
    w = _rand(rng, case["w_dtype"], (o, c // g, k, k))
    oh = (case["h"] + 2 * p - (k - 1) * d - 1) // s + 1
    ow = (case["w"] + 2 * p - (k - 1) * d - 1) // s + 1
    lo, hi = np.iinfo(case["w_dtype"]).min, np.iinfo(case["w_dtype"]).max
    wz = rng.integers(lo, hi + 1, size=o if case["per_channel"] else ()).astype(case["w_dtype"]) \
        if case["w_zero"] else np.zeros(o if case["per_channel"] else (), case["w_dtype"])
    xz = _rand(rng, case["x_dtype"], ())
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "dilations": [d, d], "group": g}
    if case["integer"]:
        inits = [nh.from_array(w, "w"), nh.from_array(xz, "xz"), nh.from_array(wz, "wz")]
        node = h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)
        out = np.dtype(np.int32)
    else:
        ws = (rng.uniform(0.001, 0.02, size=o if case["per_channel"] else ())).astype(np.float32)
        out = case["x_dtype"]
        inits = [nh.from_array(w, "w"), nh.from_array(np.array(0.05, np.float32), "xs"),
                 nh.from_array(xz, "xz"), nh.from_array(ws, "ws"), nh.from_array(wz, "wz"),
                 nh.from_array(np.array(rng.uniform(0.05, 2.0), np.float32), "ys"),
                 nh.from_array(_rand(rng, out, ()), "yz")]
        names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
        if case["bias"]:
            inits.append(nh.from_array(rng.integers(-5000, 5000, size=o).astype(np.int32), "b"))
            names.append("b")
        node = h.make_node("QLinearConv", names, ["y"], **attrs)
    got, ref = _run_both(node, x, out, [n, o, oh, ow], inits)
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 40), batch=st.integers(1, 3),
       x_dtype=st.sampled_from([np.dtype(np.uint8), np.dtype(np.int8)]),
       w_dtype=st.sampled_from([np.dtype(np.int8), np.dtype(np.uint8)]),
       per_channel=st.booleans(), integer=st.booleans(), seed=st.integers(0, 2**31))
def test_int8_matmul_matches_reference(m: int, k: int, n: int, batch: int, x_dtype: np.dtype,
                                       w_dtype: np.dtype, per_channel: bool, integer: bool,
                                       seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _rand(rng, x_dtype, (batch, m, k))
    w = _rand(rng, w_dtype, (k, n))
    wz = _rand(rng, w_dtype, (n,) if per_channel else ())
    xz = _rand(rng, x_dtype, ())
    if integer:
        inits = [nh.from_array(w, "w"), nh.from_array(xz, "xz"), nh.from_array(wz, "wz")]
        node = h.make_node("MatMulInteger", ["x", "w", "xz", "wz"], ["y"])
        out = np.dtype(np.int32)
    else:
        out = x_dtype
        ws = rng.uniform(0.001, 0.02, size=(n,) if per_channel else ()).astype(np.float32)
        inits = [nh.from_array(w, "w"), nh.from_array(np.array(0.04, np.float32), "xs"),
                 nh.from_array(xz, "xz"), nh.from_array(ws, "ws"), nh.from_array(wz, "wz"),
                 nh.from_array(np.array(rng.uniform(0.05, 3.0), np.float32), "ys"),
                 nh.from_array(_rand(rng, out, ()), "yz")]
        node = h.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    got, ref = _run_both(node, x, out, [batch, m, n], inits)
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 5), hh=st.integers(2, 13), ww=st.integers(2, 70), k=st.integers(1, 3),
       s=st.integers(1, 3), d=st.integers(1, 2), pad=st.integers(0, 1), signed=st.booleans(),
       seed=st.integers(0, 2**31))
def test_int8_max_pool_matches_reference(c: int, hh: int, ww: int, k: int, s: int, d: int,
                                         pad: int, signed: bool, seed: int) -> None:
    """The max pools of int8 models run on the int8 tensor (``pool8.c``); rows wide enough for
    the vector paths (stride 1 and 2 over 16 output columns) and their scalar tails."""
    span = (k - 1) * d + 1
    if span > min(hh, ww) + 2 * pad or pad >= k:
        return
    dtype = np.dtype(np.int8 if signed else np.uint8)
    x = _rand(np.random.default_rng(seed), dtype, (1, c, hh, ww))
    node = h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4,
                       dilations=[d, d])
    got, ref = _run_both(node, x, dtype, [1, c, (hh + 2 * pad - span) // s + 1,
                                          (ww + 2 * pad - span) // s + 1], [])
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu"]),
       n=st.integers(1, 40000), signed=st.booleans(), seed=st.integers(0, 2**31))
def test_int8_elementwise_matches_reference(op: str, n: int, signed: bool, seed: int) -> None:
    """QLinearAdd / QLinearMul (one float32 pass, ``qlinear_binary``) and the table lookups
    (``qlinear_lookup``) on the cpu backend give the reference's integers."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(np.int8 if signed else np.uint8)
    x = _rand(rng, dtype, (n,))

    def scale(name: str) -> Any:
        return nh.from_array(np.array(rng.uniform(0.005, 0.2), np.float32), name)

    inits = [scale("xs"), nh.from_array(_rand(rng, dtype, ()), "xz"), scale("ys"),
             nh.from_array(_rand(rng, dtype, ()), "yz")]
    if op in ("QLinearAdd", "QLinearMul"):
        inits += [nh.from_array(_rand(rng, dtype, (n,)), "b"), scale("bs"),
                  nh.from_array(_rand(rng, dtype, ()), "bz")]
        names = ["x", "xs", "xz", "b", "bs", "bz", "ys", "yz"]
    else:
        names = ["x", "xs", "xz", "ys", "yz"]
    node = h.make_node(op, names, ["y"], domain="com.microsoft")
    if "Leaky" in op:
        node.attribute.append(h.make_attribute("alpha", 0.1))
    g = h.make_graph([node], "q", [h.make_tensor_value_info("x", _TYPES[dtype], [n])],
                     [h.make_tensor_value_info("y", _TYPES[dtype], [n])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    data = model.SerializeToString()
    ref = walle_core.load(data, backend="reference").run({"x": x})["y"]
    cpu = walle_core.load(data, backend="cpu")
    assert [s.backend for s in cpu.plan_for({"x": x}).stage.steps] == ["cpu"]
    np.testing.assert_array_equal(cpu.run({"x": x})["y"], ref)


def _integer_node_cases() -> list[Any]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "onnx_node"))
    import node_cases as nc  # type: ignore[import-not-found]

    ops = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}
    return [pytest.param(c, id=c.name) for c in nc.load_cases()
            if {n.op_type for n in c.model.graph.node} & ops]


@pytest.mark.parametrize("case", _integer_node_cases())
def test_onnx_integer_node_cases_run_on_the_int8_kernels(case: Any) -> None:
    """ONNX's own node cases of the integer ops, with every input but the activation made a
    constant (as in real models): the cpu backend runs them on its int8 kernels, with nothing
    left for another backend, and gives the expected integers."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    g = model.graph
    first = g.input[0].name
    for vi, value in zip(list(g.input)[1:], case.inputs[1:], strict=True):
        g.initializer.append(nh.from_array(np.asarray(value), vi.name))
    keep = [vi for vi in g.input if vi.name == first]
    del g.input[:]
    g.input.extend(keep)
    loaded = walle_core.load(model.SerializeToString(), backend="cpu")
    feeds = {first: case.inputs[0]}
    got = loaded.run(feeds)[loaded.output_names[0]]
    np.testing.assert_array_equal(got, case.outputs[0])
    batched_b = any(n.op_type == "QLinearMatMul" for n in g.node) and np.asarray(case.inputs[3]).ndim > 2
    if not batched_b:  # a batched B is no constant matrix: the int32 expansion runs it
        assert [s.backend for s in loaded.plan_for(feeds).stage.steps] == ["cpu"]


def _same_as_reference(data: bytes, feeds: dict[str, np.ndarray]) -> list[str]:
    """Assert the cpu backend gives the reference's integers for output ``y``; the labels of
    the ops its one cpu step runs (an int8 op claimed whole is one label)."""
    from walle_cpu.compiler import CpuExecutable

    ref = walle_core.load(data, backend="reference").run(feeds)["y"]
    cpu = walle_core.load(data, backend="cpu")
    np.testing.assert_array_equal(cpu.run(feeds)["y"], ref)
    plan = cpu.plan_for(feeds)
    (step,) = plan.stage.steps
    assert isinstance(step.executable, CpuExecutable)
    ins = [feeds[name] for name, _ in sorted(plan.input_ids.items(), key=lambda kv: step.inputs.index(kv[1]))]
    return [label for label, _ in step.executable.profile(ins, 1)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["QLinearAdd", "QLinearMul"]), c=st.integers(1, 40), hw=st.integers(1, 23),
       form=st.sampled_from(["nc11", "c11", "scalar", "same"]), swap=st.booleans(),
       signed=st.booleans(), seed=st.integers(0, 2**31))
def test_int8_broadcast_binary_matches_reference(op: str, c: int, hw: int, form: str, swap: bool,
                                                 signed: bool, seed: int) -> None:
    """QLinearAdd / QLinearMul with one operand broadcast along the other's trailing axes (a
    squeeze-excitation scale (N, C, 1, 1) times (N, C, H, W)), either operand first: one
    ``qlinear_binary`` pass on the cpu backend, the reference's integers."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(np.int8 if signed else np.uint8)
    full = (2, c, hw, hw)
    part = {"nc11": (2, c, 1, 1), "c11": (c, 1, 1), "scalar": (), "same": full}[form]
    feeds = {"x": _rand(rng, dtype, full), "s": _rand(rng, dtype, part)}

    def scale(name: str) -> Any:
        return nh.from_array(np.array(rng.uniform(0.005, 0.2), np.float32), name)

    inits = [scale("xs"), nh.from_array(_rand(rng, dtype, ()), "xz"), scale("ss"),
             nh.from_array(_rand(rng, dtype, ()), "sz"), scale("ys"), nh.from_array(_rand(rng, dtype, ()), "yz")]
    first, second = (["s", "ss", "sz"], ["x", "xs", "xz"]) if swap else (["x", "xs", "xz"], ["s", "ss", "sz"])
    node = h.make_node(op, [*first, *second, "ys", "yz"], ["y"], domain="com.microsoft")
    g = h.make_graph([node], "q", [h.make_tensor_value_info(n, _TYPES[dtype], list(v.shape)) for n, v in feeds.items()],
                     [h.make_tensor_value_info("y", _TYPES[dtype], list(full))], inits)
    data = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)]).SerializeToString()
    labels = _same_as_reference(data, feeds)
    assert len(labels) == 1 and "int8-direct" in labels[0], labels


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 4), m=st.integers(1, 30), k=st.integers(1, 70), n=st.integers(1, 40),
       a_dtype=st.sampled_from([np.dtype(np.uint8), np.dtype(np.int8)]),
       b_dtype=st.sampled_from([np.dtype(np.uint8), np.dtype(np.int8)]), seed=st.integers(0, 2**31))
def test_int8_matmul_of_two_activations_matches_reference(batch: int, m: int, k: int, n: int, a_dtype: np.dtype,
                                                          b_dtype: np.dtype, seed: int) -> None:
    """QLinearMatMul of two 8-bit inputs (attention's Q K^T and scores x V): the
    ``qlinear_bmm`` composite, B packed per run by the cpu kernel, the reference's integers."""
    rng = np.random.default_rng(seed)
    feeds = {"a": _rand(rng, a_dtype, (batch, m, k)), "b": _rand(rng, b_dtype, (batch, k, n))}
    inits = [nh.from_array(np.array(rng.uniform(0.005, 0.05), np.float32), "as"),
             nh.from_array(_rand(rng, a_dtype, ()), "az"),
             nh.from_array(np.array(rng.uniform(0.005, 0.05), np.float32), "bs"),
             nh.from_array(_rand(rng, b_dtype, ()), "bz"),
             nh.from_array(np.array(rng.uniform(0.05, 2.0), np.float32), "ys"),
             nh.from_array(_rand(rng, a_dtype, ()), "yz")]
    node = h.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    g = h.make_graph([node], "q", [h.make_tensor_value_info(k_, _TYPES[v.dtype], list(v.shape)) for k_, v in feeds.items()],
                     [h.make_tensor_value_info("y", _TYPES[a_dtype], [batch, m, n])], inits)
    data = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]).SerializeToString()
    labels = _same_as_reference(data, feeds)
    assert len(labels) == 1 and "int8-gemm" in labels[0], labels


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.one_of(st.integers(1, 300), st.just(70001)), signed=st.booleans(),
       zero=st.integers(-128, 255), scale=st.floats(1e-3, 2.0), seed=st.integers(0, 2**31 - 1))
def test_quantize_dequantize_match_reference(n: int, signed: bool, zero: int, scale: float, seed: int) -> None:
    """Per-tensor QuantizeLinear of float32 (ties, values past the range, infinities) and
    DequantizeLinear back run on the cpu backend's kernels with the reference's integers and
    floats exactly."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(np.int8 if signed else np.uint8)
    info = np.iinfo(dtype)
    zero = int(np.clip(zero, info.min, info.max))
    s = np.float32(scale)
    x = (rng.standard_normal(n) * 100 * s).astype(np.float32)
    x[::7] = ((rng.integers(-300, 300, x[::7].size) + 0.5) * s).astype(np.float32)  # ties
    x[:3] = np.array([np.inf, -np.inf, 1e30], np.float32)[: min(3, n)]
    inits = [nh.from_array(np.array(s, np.float32), "s"), nh.from_array(np.array(zero, dtype), "z")]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    g = h.make_graph(nodes, "qdq", [h.make_tensor_value_info("x", TP.FLOAT, [n])],
                     [h.make_tensor_value_info("q", _TYPES[dtype], [n]), h.make_tensor_value_info("y", TP.FLOAT, [n])],
                     inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]).SerializeToString()
    want = walle_core.load(model, backend="reference").run({"x": x})
    cpu_model = walle_core.load(model, backend="cpu")
    got = cpu_model.run({"x": x})
    assert [st_.backend for st_ in cpu_model.plan_for({"x": x}).stage.steps] == ["cpu"]
    np.testing.assert_array_equal(got["q"], want["q"])
    np.testing.assert_array_equal(got["y"], want["y"])


_LARGE_CONVS = [  # over a million multiply-adds: on AMX machines the weights are packed for the tiles
    {"n": 1, "c": 40, "o": 72, "groups": 1, "k": 3, "h": 15, "w": 15, "stride": 1, "dil": 1, "pad": 1,
     "x_dtype": np.dtype(np.uint8), "w_dtype": np.dtype(np.int8), "per_channel": True, "w_zero": False,
     "integer": False, "bias": True, "seed": 1},
    {"n": 1, "c": 64, "o": 96, "groups": 1, "k": 1, "h": 15, "w": 13, "stride": 1, "dil": 1, "pad": 0,
     "x_dtype": np.dtype(np.int8), "w_dtype": np.dtype(np.uint8), "per_channel": False, "w_zero": True,
     "integer": False, "bias": False, "seed": 2},
    {"n": 2, "c": 48, "o": 64, "groups": 2, "k": 3, "h": 12, "w": 13, "stride": 2, "dil": 1, "pad": 1,
     "x_dtype": np.dtype(np.uint8), "w_dtype": np.dtype(np.int8), "per_channel": True, "w_zero": True,
     "integer": True, "bias": False, "seed": 3},
]


@pytest.mark.parametrize("case", _LARGE_CONVS, ids=["3x3", "1x1-wzero", "grouped-int32"])
def test_large_int8_conv_matches_reference(case: dict[str, Any]) -> None:
    """Products large enough for the AMX tile kernel where the CPU has one (the hypothesis cases
    above are small and run the VNNI loops there)."""
    test_int8_conv_matches_reference.hypothesis.inner_test(case)  # type: ignore[attr-defined]


@pytest.mark.parametrize("integer", [False, True])
def test_large_int8_matmul_matches_reference(integer: bool) -> None:
    test_int8_matmul_matches_reference.hypothesis.inner_test(  # type: ignore[attr-defined]
        m=37, k=200, n=150, batch=2, x_dtype=np.dtype(np.uint8), w_dtype=np.dtype(np.int8),
        per_channel=True, integer=integer, seed=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=st.booleans(), groups=st.sampled_from([1, 2]), k=st.sampled_from([1, 3, 5]),
       pad=st.integers(0, 2), stride=st.integers(1, 2), one_d=st.booleans(), w_zero=st.booleans(),
       w_dtype=st.sampled_from([np.dtype(np.uint8), np.dtype(np.int8)]), seed=st.integers(0, 2**31))
def test_integer_ops_with_a_run_time_zero_point_stay_on_the_int8_kernels(
        conv: bool, groups: int, k: int, pad: int, stride: int, one_d: bool, w_zero: bool,
        w_dtype: np.dtype, seed: int) -> None:
    """ConvInteger / MatMulInteger fed DynamicQuantizeLinear's zero point (a run-time value, as
    onnxruntime's ``quantize_dynamic`` writes them) run the int8 composite with zero point 0 and
    subtract the zero point times the weights' window (or column) sums: the int32 results are
    onnxruntime's, and nothing falls back to ``reference``."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(seed)
    c, o, hh, ww = 4 * groups, 3 * groups, 9, 11
    x = _rand(rng, np.dtype(np.uint8), (2, c, ww) if one_d else (1, c, hh, ww))
    xz = _rand(rng, np.dtype(np.uint8), ())
    spatial = x.shape[2:]
    if conv:
        w = _rand(rng, w_dtype, (o, c // groups, *([k] * len(spatial))))
        attrs = {"strides": [stride] * len(spatial), "pads": [pad] * 2 * len(spatial), "group": groups}
        node = h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)
        wz = _rand(rng, w_dtype, ()) if w_zero else np.zeros((), w_dtype)
    else:
        x = x.reshape(-1, x.shape[-1])
        w = _rand(rng, w_dtype, (x.shape[-1], o))
        node = h.make_node("MatMulInteger", ["x", "w", "xz", "wz"], ["y"])
        wz = _rand(rng, w_dtype, (o,)) if w_zero else np.zeros((o,), w_dtype)
    g = h.make_graph([node], "q", [h.make_tensor_value_info("x", TP.UINT8, list(x.shape)),
                                   h.make_tensor_value_info("xz", TP.UINT8, [])],
                     [h.make_tensor_value_info("y", TP.INT32, None)],
                     [nh.from_array(w, "w"), nh.from_array(wz, "wz")])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)]).SerializeToString()
    feeds = {"x": x, "xz": xz}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    cpu_model = walle_core.load(model, backend="cpu")
    np.testing.assert_array_equal(cpu_model.run(feeds)["y"], want)
    assert [s.backend for s in cpu_model.plan_for(feeds).stage.steps] == ["cpu"], "fell back"
