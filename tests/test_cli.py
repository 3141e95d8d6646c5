"""The ``walle`` CLI, driven through Typer's test runner (and once through the installed script)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from walle_cli.app import app
from walle_demo.demo import build_mlp, make_weights, numpy_mlp

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
COMMANDS = ["backends", "version", "run", "inspect", "demo"]


def plain(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return build_mlp(tmp_path / "mlp.onnx", make_weights())


def test_commands_are_registered() -> None:
    names = {c.name for c in app.registered_commands}
    assert set(COMMANDS) <= names


@pytest.mark.parametrize("args", [["--help"], *([c, "--help"] for c in COMMANDS)])
def test_help(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in plain(result.output)


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in plain(result.output)
    for name in COMMANDS:
        assert name in plain(result.output)


def test_backends_json() -> None:
    result = runner.invoke(app, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {d["name"]: d for d in data}
    assert {"reference", "cpu", "opencl", "vulkan", "metal"} <= set(by_name)
    for d in data:
        assert set(d) == {"name", "available", "reason", "device", "source"}
        assert isinstance(d["available"], bool)
        assert d["available"] or d["reason"], d
        assert d["device"] is None or set(d["device"]) == {"name", "kind", "details"}
    assert by_name["reference"]["available"] is True
    assert by_name["reference"]["device"]["kind"] == "cpu"
    if sys.platform != "darwin":
        assert by_name["metal"] == {**by_name["metal"], "available": False, "device": None}
        assert "macOS" in by_name["metal"]["reason"]


def test_backends_table() -> None:
    result = runner.invoke(app, ["backends"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    for name in ("reference", "cpu", "opencl", "vulkan", "metal"):
        assert name in text
    assert "Metal needs macOS" in text or sys.platform == "darwin"


def test_version() -> None:
    import walle_core

    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert f"walle {walle_core.__version__}" in result.output


def test_run_prints_and_saves_outputs(mlp: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    result = runner.invoke(
        app,
        ["run", str(mlp), "--input", f"x={tmp_path / 'x.npy'}", "--backend", "reference",
         "--threads", "1", "--output", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "probs" in text and "float32" in text and "[2, 4]" in text
    with np.load(out) as saved:
        assert list(saved.keys()) == ["probs"]
        np.testing.assert_allclose(saved["probs"], numpy_mlp(x, make_weights()), rtol=1e-5,
                                   atol=1e-6)


def _assert_clean_error(result: object, *needles: str) -> None:
    exit_code = result.exit_code  # type: ignore[attr-defined]
    output = plain(result.output)  # type: ignore[attr-defined]
    assert exit_code == 2, output
    assert "Traceback" not in output
    assert "error:" in output
    for needle in needles:
        assert needle in output, output


def test_run_corrupt_model_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xfe" * 8)
    result = runner.invoke(app, ["run", str(bad)])
    _assert_clean_error(result, "ModelLoadError")
    assert len(result.stderr.strip().splitlines()) == 1  # one line, not a traceback


def test_run_missing_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.onnx")])
    _assert_clean_error(result, "not found")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("x", "NAME=FILE.npy"), ("x=missing.npy", "cannot read input 'x'"),
     ("y=@X", "unknown input")],
)
def test_run_bad_inputs(mlp: Path, tmp_path: Path, spec: str, needle: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    spec = spec.replace("@X", str(tmp_path / "x.npy"))
    result = runner.invoke(app, ["run", str(mlp), "--input", spec])
    _assert_clean_error(result, needle)


def test_run_wrong_shape_and_unavailable_backend(mlp: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    result = runner.invoke(app, ["run", str(mlp), "-i", f"x={tmp_path / 'x.npy'}"])
    _assert_clean_error(result, "InputError", "float32[batch,8]")
    np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
    result = runner.invoke(app, ["run", str(mlp), "-i", f"x={tmp_path / 'x.npy'}", "-b", "nosuch"])
    _assert_clean_error(result, "BackendUnavailableError", "unknown backend 'nosuch'")


def test_inspect(mlp: Path) -> None:
    result = runner.invoke(app, ["inspect", str(mlp)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "opset 17" in text and "6 nodes" in text
    assert re.search(r"MatMul\s+│\s+2", text) and re.search(r"Softmax\s+│\s+1", text)
    assert "parameters: 212 values in 4 tensors" in text
    assert "float32[batch,8]" in text and "float32[batch,4]" in text
    # The decomposition section either shows counts per atomic kind or says why it could not.
    assert re.search(r"\d+ atomic ops", text) or "decomposition: not available" in text
    if "atomic ops by kind" in text:
        kinds = text.split("atomic ops by kind")[1]
        # softmax: one Composite where the primary backend claims it (cpu), else its Reduces
        assert re.search(r"MatMul\s+│\s+2", kinds) and re.search(r"(Reduce|Composite)\s+│\s+\d", kinds)
    assert re.search(r"0\s+│\s+(cpu|reference)", text)  # the plan's first step (cpu when built)


def test_inspect_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01\x02 not onnx")
    _assert_clean_error(runner.invoke(app, ["inspect", str(bad)]), "ModelLoadError")


def test_demo() -> None:
    result = runner.invoke(app, ["demo", "--quick", "--backend", "reference"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "reference" in text and "yes" in text and "[3, 4]" in text


def test_console_script() -> None:
    """The ``walle`` script that pip generated from ``[project.scripts]`` works."""
    script = Path(sys.executable).parent / "walle"
    if not script.exists():
        pytest.skip(f"no walle script next to {sys.executable}")
    proc = subprocess.run([str(script), "backends", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reference" in {d["name"] for d in json.loads(proc.stdout)}
