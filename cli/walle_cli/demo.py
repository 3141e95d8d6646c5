"""The end-to-end demo: build a tiny ONNX MLP, run it with ``walle_core.load`` on every available
backend and check each result against the same network computed directly in numpy."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import walle_core
from walle_core.plugins import registry

IN, HIDDEN, OUT = 8, 16, 4


@dataclass
class DemoResult:
    backend: str
    shape: tuple[int, ...]
    max_abs_error: float
    ok: bool
    first_ms: float  # includes planning and kernel preparation
    warm_ms: float


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN),
        "b1": rng.standard_normal(HIDDEN) * 0.1,
        "w2": rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN),
        "b2": rng.standard_normal(OUT) * 0.1,
    }
    # Cast last: the model is float32 throughout, as ONNX requires matching operand types.
    return {k: v.astype(np.float32) for k, v in weights.items()}


def build_mlp(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """``softmax(relu(x @ w1 + b1) @ w2 + b2)`` with a symbolic batch dim, written to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "walle_demo_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def numpy_mlp(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(x @ w["w1"] + w["b1"], 0)
    z = h @ w["w2"] + w["b2"]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def run_demo(batch: int = 3, backends: list[str] | None = None) -> list[DemoResult]:
    """Run the MLP on each backend (default: every available one); raises ``WalleError``."""
    names = backends if backends else [b.name for b in registry().available()]
    weights = make_weights()
    x = np.random.default_rng(1).standard_normal((batch, IN)).astype(np.float32)
    expected = numpy_mlp(x, weights)
    results: list[DemoResult] = []
    with tempfile.TemporaryDirectory(prefix="walle-demo-") as tmp:
        path = build_mlp(Path(tmp) / "mlp.onnx", weights)
        for name in names:
            model = walle_core.load(path, backend=name)
            t0 = time.perf_counter()
            got = model.run({"x": x})["probs"]
            t1 = time.perf_counter()
            model.run({"x": x})
            t2 = time.perf_counter()
            same = got.shape == expected.shape
            err = float(np.max(np.abs(got - expected))) if same else float("inf")
            ok = same and bool(np.allclose(got, expected, rtol=1e-5, atol=1e-6))
            first_ms, warm_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
            results.append(DemoResult(name, tuple(got.shape), err, ok, first_ms, warm_ms))
    return results
