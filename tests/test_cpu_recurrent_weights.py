"""Whole-sequence recurrent layers on the cpu backend with R fed at run time: recurrent.c packs
a computed R itself on every run (a constant one comes packed by the compiler), for each
direction of a bidirectional layer on its own thread, or (steps large enough for more than two
threads) one direction after the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core import atomic as A


@pytest.mark.parametrize(("kind", "lbr"), [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize(("hid", "threads"), [(24, 2), (128, 3)])  # (128, 3): steps for 3 threads
def test_recurrent_weights_fed_at_run_time_match_the_reference(tmp_path: Path, kind: str, lbr: int,
                                                              direction: str, hid: int, threads: int) -> None:
    import onnx

    rng = np.random.default_rng(5)
    gates = 4 if kind == "LSTM" else 3
    dirs, inp, seq, batch = (2 if direction == "bidirectional" else 1), 5, 7, 2
    init = [numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)
            for name, shape in (("W", (dirs, gates * hid, inp)), ("B", (dirs, 2 * gates * hid)))]
    outs = ["Y", "Yh", "Yc"][: 3 if kind == "LSTM" else 2]
    attrs: dict[str, Any] = {"linear_before_reset": lbr} if kind == "GRU" else {}
    node = helper.make_node(kind, ["X", "W", "R", "B"], outs, hidden_size=hid, direction=direction, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, (seq, batch, inp)),
         helper.make_tensor_value_info("R", TensorProto.FLOAT, (dirs, gates * hid, hid))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs], init)
    path = tmp_path / "rnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    feeds = {"X": rng.uniform(-1, 1, (seq, batch, inp)).astype(np.float32),
             "R": rng.uniform(-0.5, 0.5, (dirs, gates * hid, hid)).astype(np.float32)}
    model = walle_core.load(path, backend="cpu", threads=threads)
    ops, _ = model.atomic_ops(feeds)
    assert [op.attrs["directions"] for op in ops
            if isinstance(op, A.Composite) and op.name.endswith("_sequence")] == [dirs]
    want = walle_core.load(path, backend="reference").run(feeds)
    for _ in range(2):  # the second run reuses the per-thread scratch the first one grew
        got = model.run(feeds)
        assert not model.dropped, model.dropped
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
