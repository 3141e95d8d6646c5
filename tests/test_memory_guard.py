"""The engine's memory guard (issue 15, finding 8): sizes are checked against the memory limit at
plan time, before anything is allocated, so a tiny model that asks for terabytes fails with a
``MemoryLimitError`` naming the node and the size, and a thread-mode task's quota holds before the
engine allocates, not after."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.errors import MemoryLimitError, WalleError
from walle_core.flags import max_memory, parse_bytes
from walle_core.plan.memory import limited, memory_limit
from walle_core.task import Quotas
from walle_core.vm import TaskSpec, run_task

HUGE = [1_000_000, 1_000_000]  # 4e12 bytes of float32
BIG = [20_000, 20_000]  # 1.6 GB of float32: fits a large machine, must not be built to inspect


def _model(nodes: list[helper.NodeProto], inputs: list[helper.ValueInfoProto],
           inits: list[TensorProto]) -> bytes:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", inputs, [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def constant_of_shape(shape: list[int]) -> bytes:
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value)
    return _model([node], [], [numpy_helper.from_array(np.array(shape, np.int64), "shape")])


def broadcast(op: str, shape: list[int]) -> bytes:
    """``op`` (Expand or Tile) of a [1, 1] input by a constant ``shape`` / repeats."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])
    node = helper.make_node(op, ["x", "shape"], ["y"])
    return _model([node], [x], [numpy_helper.from_array(np.array(shape, np.int64), "shape")])


def relu_chain(n: int) -> bytes:
    """x -> Relu -> Relu -> y on [n, n] float32: two tensors of n*n*4 bytes live at once."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return _model(nodes, [x], [])


def test_the_limit_comes_from_walle_max_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [parse_bytes(s) for s in ("2G", "512M", "64K", "1000", "2GiB", "1.5G")] == [
        2 << 30, 512 << 20, 64 << 10, 1000, 2 << 30, 3 << 29]
    assert [parse_bytes(s) for s in ("", "lots", "0", "-5M", "inf", "nan")] == [None] * 6
    monkeypatch.delenv("WALLE_MAX_MEMORY", raising=False)
    assert max_memory() > 0  # a fraction of physical memory
    monkeypatch.setenv("WALLE_MAX_MEMORY", "3M")
    assert memory_limit() == (3 << 20, "WALLE_MAX_MEMORY")
    with limited(1 << 20, "a task's quota"):
        assert memory_limit() == (1 << 20, "a task's quota")
        with limited(8 << 20, "a larger quota"):  # never above the limit already in force
            assert memory_limit() == (1 << 20, "a task's quota")
    assert memory_limit()[0] == 3 << 20


@pytest.mark.parametrize("model, feeds, node", [
    (constant_of_shape(HUGE), {}, "ConstantOfShape"),
    (broadcast("Expand", HUGE), {"x": np.ones((1, 1), np.float32)}, "Expand"),
    (broadcast("Tile", HUGE), {"x": np.ones((1, 1), np.float32)}, "Tile"),
], ids=["ConstantOfShape", "Expand", "Tile"])
def test_a_terabyte_tensor_is_a_walle_error_naming_node_and_size(
        model: bytes, feeds: dict[str, np.ndarray], node: str) -> None:
    m = walle_core.load(model, backend="reference")
    with pytest.raises(MemoryLimitError) as info:
        m.run(feeds)
    assert isinstance(info.value, WalleError)
    text = str(info.value)
    assert f"({node})" in text and "3.6 TiB (4,000,000,000,000 bytes)" in text and "WALLE_MAX_MEMORY" in text


def test_inspecting_a_large_constant_does_not_build_it(tmp_path: Path) -> None:
    """The 111-byte file of the report: describing it planned (and allocated) 1.6 GB twice."""
    path = tmp_path / "big.onnx"
    path.write_bytes(constant_of_shape(BIG))
    tracemalloc.start()
    try:
        info = walle_core.describe(path, backend="reference")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.plan is not None and info.plan.n_ops == 1  # one Raster fills it when run
    assert peak < 64 << 20, peak


def test_small_constant_broadcasts_still_fold() -> None:
    m = walle_core.load(constant_of_shape([4, 8]), backend="reference")
    assert m.describe_plan().n_ops == 0
    np.testing.assert_array_equal(m.run({})["y"], np.ones((4, 8), np.float32))


def test_a_large_broadcast_left_to_run_time_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    m = walle_core.load(constant_of_shape([2100, 2100]), backend="reference")  # 17.6 MB: not folded
    assert m.describe_plan().n_ops == 1
    np.testing.assert_array_equal(m.run({})["y"], np.ones((2100, 2100), np.float32))


def test_walle_max_memory_refuses_what_fits_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLE_MAX_MEMORY", "1G")
    with pytest.raises(MemoryLimitError, match=r"float32\[20000, 20000\] tensor needs 1\.5 GiB"):
        walle_core.load(constant_of_shape(BIG), backend="reference").run({})


def test_the_arena_and_outputs_together_must_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each [1024, 1024] tensor (4 MiB) fits 6 MiB; the intermediate plus the output do not."""
    monkeypatch.setenv("WALLE_MAX_MEMORY", "6M")
    model = walle_core.load(relu_chain(1024), backend="reference")
    with pytest.raises(MemoryLimitError, match=r"arena and outputs \(largest op Unary"):
        model.run({"x": np.ones((1024, 1024), np.float32)})
    monkeypatch.setenv("WALLE_MAX_MEMORY", "9M")
    y = walle_core.load(relu_chain(1024), backend="reference").run({"x": -np.ones((1024, 1024), np.float32)})["y"]
    assert float(y.max()) == 0.0


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_cli_reports_the_limit_without_a_traceback(tmp_path: Path, command: str) -> None:
    path = tmp_path / "huge.onnx"
    path.write_bytes(constant_of_shape(HUGE))
    proc = subprocess.run([sys.executable, "-m", "walle_cli.app", command, str(path), "--backend", "reference"],
                          capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "MemoryError:" not in text
    assert "MemoryLimitError" in text or "3.6 TiB" in text, text
    assert proc.returncode == (2 if command == "run" else 0), text


HOG_MODEL = """
import walle
walle.infer({})
"""


def test_thread_mode_quota_holds_before_the_engine_allocates(tmp_path: Path) -> None:
    """A 64 MB task whose model makes a 1.6 GB tensor: refused at plan time, not after the host
    has allocated gigabytes."""
    root = tmp_path / "task"
    root.mkdir()
    (root / "main.py").write_text(textwrap.dedent(HOG_MODEL))
    (root / "model.onnx").write_bytes(constant_of_shape(BIG))
    spec = TaskSpec(name="hog", root=root, entry="main.py", model="model.onnx",
                    quotas=Quotas(memory_bytes=64 << 20, wall_time_s=60))
    tracemalloc.start()
    try:
        result = run_task(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "memory", result.error
    assert "TaskMemoryError" in (result.error or "") and "1.5 GiB" in (result.error or "")
    assert peak < 64 << 20, peak
