"""The demo's e-commerce scenario: train a purchase-intent model and pack it as a signed task.

1. **Data** — simulated shoppers (``walle_demo.behaviour``) browse a catalogue; the
   ``item_view`` trigger cuts their streams into item-page visits (the same trigger the devices
   run), ``intent_task.features`` turns each visit into a row, and the label is whether the
   shopper bought the item later in that session.
2. **Model** — a small MLP (12 → 16 → 1, ReLU, sigmoid), trained with numpy (Adam, binary
   cross-entropy, fixed seed), with the feature standardisation folded into the ONNX graph.
3. **Task** — ``main.py`` (the feature script), ``model.onnx`` and the trigger, packed and signed.
"""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from walle_core.pipeline import Matcher, parse_event
from walle_core.task import pack, sign_bundle
from walle_demo import intent_task
from walle_demo.behaviour import Catalogue, Shopper, item_view_trigger, seed_of

TASK = "purchase-intent"
N_FEATURES = len(intent_task.FEATURES)


@dataclass
class Dataset:
    x: np.ndarray  # float32[n, N_FEATURES]
    y: np.ndarray  # float32[n]


def visits(events: list[dict[str, Any]], trigger: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
    """Cut a stream into item-page visits with the task's trigger (the devices' matcher)."""
    matcher = Matcher([trigger or item_view_trigger()])
    out: list[list[dict[str, Any]]] = []
    for ev in events:
        for m in matcher.process(parse_event(ev)):
            out.append([e.to_json() for e in m.events])
    return out


def make_dataset(seed: int, shoppers: int = 400, sessions: int = 6) -> Dataset:
    """Rows and purchase labels from ``shoppers`` simulated users (disjoint from the devices' users)."""
    catalogue = Catalogue.generate(seed)
    rows: list[list[float]] = []
    labels: list[float] = []
    regions = ("us", "eu", "cn", "jp", "br", "in")
    for i in range(shoppers):
        shopper = Shopper(f"train-{i}", regions[i % len(regions)], seed_of(seed, "train", i), catalogue)
        stream = [e for _ in range(sessions) for e in shopper.session()]
        bought = {(v.key, v.enter_ms): v.purchased for v in shopper.views}
        for visit in visits(stream):
            rows.append(intent_task.features(visit))
            labels.append(float(bought[(visit[0]["key"], visit[0]["timestamp_ms"])]))
    return Dataset(np.asarray(rows, np.float32), np.asarray(labels, np.float32))


@dataclass
class TrainedModel:
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    train_auc: float
    test_auc: float
    base_rate: float
    n_train: int
    n_test: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The network in numpy (float64), for checks."""
        h = np.maximum(((x - self.mean) / self.std) @ self.w1 + self.b1, 0.0)
        return np.asarray(1.0 / (1.0 + np.exp(-(h @ self.w2 + self.b2))))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic; ties get average ranks)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for s in np.unique(scores):  # average ranks of ties
        tie = scores == s
        ranks[tie] = ranks[tie].mean()
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(data: Dataset, seed: int, hidden: int = 16, epochs: int = 400, lr: float = 0.01) -> TrainedModel:
    """Full-batch Adam on binary cross-entropy with a class-balanced weight; 80/20 split."""
    rng = np.random.default_rng(seed_of(seed, "train-split"))
    idx = rng.permutation(len(data.y))
    cut = int(0.8 * len(idx))
    tr, te = idx[:cut], idx[cut:]
    x = data.x.astype(np.float64)
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    xs = (x - mean) / std
    y = data.y.astype(np.float64)[:, None]
    pos = float(y[tr].mean())
    weight = np.where(y[tr] > 0.5, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    params = {
        "w1": rng.standard_normal((N_FEATURES, hidden)) * np.sqrt(2.0 / N_FEATURES),
        "b1": np.zeros(hidden),
        "w2": rng.standard_normal((hidden, 1)) * np.sqrt(1.0 / hidden),
        "b2": np.zeros(1),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    xt, yt = xs[tr], y[tr]
    for step in range(1, epochs + 1):
        pre = xt @ params["w1"] + params["b1"]
        h = np.maximum(pre, 0.0)
        p = 1.0 / (1.0 + np.exp(-(h @ params["w2"] + params["b2"])))
        dz = weight * (p - yt) / len(yt)
        dh = (dz @ params["w2"].T) * (pre > 0)
        grads = {"w2": h.T @ dz + 1e-4 * params["w2"], "b2": dz.sum(0),
                 "w1": xt.T @ dh + 1e-4 * params["w1"], "b1": dh.sum(0)}
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            params[k] -= lr * (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
    f32 = {k: p.astype(np.float32) for k, p in params.items()}
    model = TrainedModel(f32["w1"], f32["b1"], f32["w2"], f32["b2"], mean.astype(np.float32),
                         std.astype(np.float32), 0.0, 0.0, float(data.y.mean()), len(tr), len(te))
    model.train_auc = auc(model.predict(data.x[tr])[:, 0], data.y[tr])
    model.test_auc = auc(model.predict(data.x[te])[:, 0], data.y[te])
    return model


def export_onnx(model: TrainedModel, path: Path) -> Path:
    """``sigmoid(relu(((x - mean) / std) @ w1 + b1) @ w2 + b2)`` as ONNX, input ``x``, output ``intent``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["intent"]),
    ]
    inits = {"mean": model.mean, "std": model.std, "w1": model.w1, "b1": model.b1, "w2": model.w2, "b2": model.b2}
    graph = helper.make_graph(
        nodes, "purchase_intent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("intent", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), k) for k, a in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="walle-demo")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def task_script() -> str:
    """The feature script's source, exactly as it ships in the bundle."""
    return inspect.getsource(intent_task)


def build_bundle(out_dir: Path, model_path: Path, version: str, private_key: Any, script: str | None = None,
                 description: str = "purchase intent of an item-page visit") -> Path:
    """Pack and sign the task (``main.py``, ``model.onnx``, trigger) into ``out_dir``."""
    src = out_dir / f"src-{version}"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    (src / "main.py").write_text(script if script is not None else task_script(), "utf-8")
    shutil.copyfile(model_path, src / "model.onnx")
    (src / "task.json").write_text(json.dumps({
        "name": TASK, "version": version, "entry": "main.py", "model": "model.onnx",
        "trigger": item_view_trigger(), "description": description,
        "quotas": {"wall_time_s": 5.0, "memory_bytes": 64 << 20, "output_bytes": 16 << 10},
    }), "utf-8")
    bundle = out_dir / f"{TASK}-{version}.walle"
    pack(src, bundle)
    sign_bundle(bundle, private_key)
    return bundle
