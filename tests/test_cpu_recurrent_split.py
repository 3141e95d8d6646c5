"""One-direction LSTM / GRU layers whose steps are split by hidden units across threads
(recurrent.c's chunks, R^T packed per chunk by the compiler): the same numbers as the whole
step, bit for bit, for any chunk count, thread count, batch, direction and initial state.
Without chunks, threads take slices of the batch rows each (no wait between steps): those
match the reference for every slicing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_cpu.ops.composite import unit_chunks


def _model(tmp_path: Path, kind: str, hid: int, batch: int, direction: str) -> tuple[Path, dict[str, np.ndarray]]:
    import onnx

    rng = np.random.default_rng(hid + batch)
    gates, inp, seq = (4 if kind == "LSTM" else 3), 6, 9
    dirs = 2 if direction == "bidirectional" else 1
    init = [numpy_helper.from_array(rng.uniform(-0.6, 0.6, shape).astype(np.float32), name)
            for name, shape in (("W", (dirs, gates * hid, inp)), ("R", (dirs, gates * hid, hid)),
                                ("B", (dirs, 2 * gates * hid)))]
    ins = ["X", "W", "R", "B", "", "h0"] + (["c0"] if kind == "LSTM" else [])
    outs = ["Y", "Yh", "Yc"][: 3 if kind == "LSTM" else 2]
    attrs: dict[str, Any] = {"linear_before_reset": 1} if kind == "GRU" else {}
    node = helper.make_node(kind, ins, outs, hidden_size=hid, direction=direction, **attrs)
    states = list(ins[5:])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, (seq, batch, inp))]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, (dirs, batch, hid)) for n in states],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs], init)
    path = tmp_path / f"{kind}-{hid}-{batch}-{direction}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    feeds = {"X": rng.uniform(-1, 1, (seq, batch, inp)).astype(np.float32)}
    feeds |= {n: rng.uniform(-0.5, 0.5, (dirs, batch, hid)).astype(np.float32) for n in states}
    return path, feeds


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("hid", "batch"), [(50, 1), (33, 3)])
def test_split_steps_match_the_whole_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                                          direction: str, hid: int, batch: int) -> None:
    path, feeds = _model(tmp_path, kind, hid, batch, direction)
    monkeypatch.setenv("WALLE_RECURRENT_CHUNKS", "1")
    # one thread: every step's product over the whole batch, the tiling the chunks share (at 2
    # threads the batch rows run apart, in tiles of fewer rows that sum in another order)
    whole = walle_core.load(path, backend="cpu", threads=1).run(feeds)
    want = walle_core.load(path, backend="reference").run(feeds)
    for name in want:
        np.testing.assert_allclose(whole[name], want[name], rtol=1e-5, atol=1e-5)
    for chunks, threads in ((2, 2), (3, 2), (7, 3), (3, 1)):
        monkeypatch.setenv("WALLE_RECURRENT_CHUNKS", str(chunks))
        assert unit_chunks(batch, hid, kind == "GRU", True, 1) == chunks
        model = walle_core.load(path, backend="cpu", threads=threads)
        for _ in range(3):  # later runs reuse the per-thread scratch and wake parked threads
            got = model.run(feeds)
            for name in want:
                np.testing.assert_array_equal(got[name], whole[name], err_msg=f"{chunks} chunks")


def test_which_steps_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WALLE_RECURRENT_CHUNKS", raising=False)
    assert unit_chunks(2, 64, False, False, 1) == 1  # off by default (see unit_chunks)
    monkeypatch.setenv("WALLE_RECURRENT_CHUNKS", "4")
    assert unit_chunks(2, 64, False, False, 1) == 4
    assert unit_chunks(1, 3, False, False, 1) == 3  # never more chunks than units
    assert unit_chunks(1, 64, True, True, 1) == 4
    assert unit_chunks(1, 64, True, False, 1) == 1  # r * h_prev needs every unit's r
    assert unit_chunks(1, 64, False, False, 2) == 1  # the directions run on a thread each


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_batch_slices_match_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                                          direction: str, batch: int) -> None:
    """Each thread runs whole sequences of its own rows, states and outputs included: with
    more threads than rows, as many as rows, fewer, and two directions sharing the threads."""
    monkeypatch.delenv("WALLE_RECURRENT_CHUNKS", raising=False)
    path, feeds = _model(tmp_path, kind, 20, batch, direction)
    want = walle_core.load(path, backend="reference").run(feeds)
    for threads in (1, 2, 3, 4):
        model = walle_core.load(path, backend="cpu", threads=threads)
        for _ in range(2):
            got = model.run(feeds)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{threads} threads, {name}")
