"""The operator's CLI against a live registry (issue 15, findings 6 and 9 and "the operator's view"):
publisher keys and tokens trusted, listed and revoked from the CLI; ``deploy status`` shows the
policy and per-stage numbers that add up; ``results`` shows readable times; ``--json`` on run,
inspect and bench model; shell completion; progress bars for big bundles."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from rich.console import Console
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, ThreadServer, make_bundle, make_keys
from typer.testing import CliRunner

from walle_cli.app import app
from walle_cli.progress import LARGE_BYTES, byte_progress
from walle_cli.timefmt import readable_time
from walle_core.task import pack

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "160"})
    text = ANSI.sub("", result.output)
    assert result.exit_code == code, text
    return text


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table, as cell texts."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]


@pytest.fixture
def live(sqlite_env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    srv = ThreadServer(sqlite_env.app).__enter__()
    monkeypatch.setenv("WALLE_REGISTRY_URL", srv.url)
    monkeypatch.setenv("WALLE_REGISTRY_TOKEN", ADMIN)
    monkeypatch.setenv("WALLE_KEYS_DIR", str(tmp_path / "trusted"))
    yield sqlite_env
    srv.__exit__()


def test_keys_trust_list_revoke_in_the_registry_and_locally(live: Env, tmp_path: Path) -> None:
    other = make_keys(tmp_path / "other", "release")
    pub = str(other.key_path.with_suffix(".pub"))
    out = cli("keys", "trust", pub, "--name", "release-team")
    kid = re.search(r"trusted (\w+) in the registry \(release-team\)", out)
    assert kid is not None
    listed = json.loads(cli("keys", "list", "--json"))
    assert {k["key_id"]: k["name"] for k in listed}[kid.group(1)] == "release-team"
    assert "2 key(s)" in cli("keys", "list")
    bundle = make_bundle(tmp_path / "b", other, "keyed", "1.0.0")
    assert "keyed 1.0.0 published" in cli("task", "publish", str(bundle))
    assert f"revoked {kid.group(1)} in the registry" in cli("keys", "revoke", kid.group(1))
    assert kid.group(1) not in cli("keys", "list")
    refused = cli("task", "publish", str(make_bundle(tmp_path / "b", other, "keyed", "1.0.1")), code=2)
    assert "HTTP 422" in refused
    # --local: the machine's own trusted-key store, untouched by the registry commands above
    assert cli("keys", "list", "--local").strip() == ""
    assert f"trusted {kid.group(1)} locally" in cli("keys", "trust", pub, "--local")
    assert cli("keys", "list", "--local").split() == [kid.group(1)]
    assert f"revoked {kid.group(1)} locally" in cli("keys", "revoke", kid.group(1), "--local")
    assert "no trusted key" in cli("keys", "revoke", kid.group(1), "--local", code=2)


def test_tokens_create_list_revoke(live: Env) -> None:
    result = runner.invoke(app, ["tokens", "create", "ci", "--scope", "publish", "-s", "read"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("wpt_") and "\n" not in secret  # stdout holds the secret alone
    rows = {r[1]: r for r in table_rows(cli("tokens", "list"))}
    assert rows["ci"][2] == "publish read" and rows["ci"][4] == "active"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows["ci"][3])
    assert "deployment" not in cli("deploy", "list", "--token", secret)  # the new token reads
    assert f"revoked token {rows['ci'][0]}" in cli("tokens", "revoke", rows["ci"][0])
    assert "HTTP 401" in cli("deploy", "list", "--token", secret, code=2)
    assert {r[1]: r[4] for r in table_rows(cli("tokens", "list"))}["ci"] == "revoked"
    assert "Input should be 'publish'" in cli("tokens", "create", "x", "--scope", "root", code=2)


def test_deploy_status_shows_the_policy_and_stage_numbers_that_add_up(live: Env) -> None:
    live.publish("stat", "1.0.0")
    devices = [live.device(f"st-{i}", os="linux") for i in range(6)]
    cli("deploy", "create", "stat", "1.0.0", "--os", "linux", "--stages", "50,100", "--min-sample", "2",
        "--error-threshold", "0.9")
    reached = [d for d in devices if live.target(d, "stat") == "1.0.0"]
    assert reached
    reached[0].report("stat", "1.0.0", "installed", 1)
    if len(reached) > 1:
        reached[1].report("stat", "1.0.0", "failed", 1, error="boom")
    text = cli("deploy", "status", "1")
    assert "policy: all devices with os=linux, 100% by hash (seed 'stat'), priority 0" in text
    assert "stages: 50% -> 100%; a stage opens after 2 outcome(s)" in text
    rows = table_rows(text)
    stages, total = rows[:-1], rows[-1]
    assert total[0] == "total"
    for row in stages:
        targeted, assigned, ok, bad, pending, other = map(int, row[2:])
        assert assigned <= targeted or targeted == 0
        assert assigned == ok + bad + pending + other
    sums = [sum(int(r[i]) for r in stages) for i in range(2, 8)]
    assert [int(c) for c in total[2:]] == sums
    st = json.loads(cli("deploy", "status", "1", "--json"))
    assert sums[0] == len(devices) and sums[1] == sum(p["assigned"] for p in st["progress"])
    assert sums[2] >= 1 and "error on st-" in text and "created: stat 1.0.0" in text


def test_results_show_readable_times(live: Env) -> None:
    live.publish("res", "1.0.0")
    dev = live.device("res-dev", os="linux")
    live.deploy(task="res", version="1.0.0")
    run = {"trigger": "res/t", "kind": "match", "user": {"task": "res", "status": "ok", "outputs": {"dwell_ms": 5}}}
    dev.upload_results([{"seq": 1, "name": "score", "value": 0.5, "ts": 1_767_225_600_000},  # 2026-01-01, in ms
                        {"seq": 2, "name": "res/t", "value": run, "ts": 1_767_225_601}],  # in seconds
                       task="res", version="1.0.0")
    rows = table_rows(cli("results", "res"))
    assert rows[0][0] == "res-dev" and rows[0][5] == "2026-01-01 00:00:00" and rows[0][7] == "0.5"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[0][6])
    assert rows[1][4] == "ok" and rows[1][5] == "2026-01-01 00:00:01" and rows[1][7] == '{"dwell_ms": 5}'
    assert readable_time(1_767_225_600) == "2026-01-01 00:00:00" and readable_time(0) == "-"


def tiny_model(path: Path, dims: list[int | str] | None = None) -> Path:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims or [1, 3])])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_json_on_run_inspect_and_bench_model(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "relu.onnx")
    np.save(tmp_path / "x.npy", np.array([[-1.0, 0.5, np.inf]], np.float32))
    ran = json.loads(cli("run", str(model), "-i", f"x={tmp_path / 'x.npy'}", "--backend", "reference", "--json"))
    assert ran["outputs"]["y"] == {"dtype": "float32", "shape": [1, 3], "values": [0.0, 0.5, "inf"],
                                   "truncated": False}
    info = json.loads(cli("inspect", str(model), "--backend", "reference", "--json"))
    assert info["op_types"] == {"Relu": 1} and info["plan"]["n_ops"] == 1 and info["inputs"][0]["name"] == "x"
    bench = json.loads(cli("bench", "model", str(model), "--backend", "reference", "--runs", "2", "--vs",
                           "nosuchpeer", "--json"))
    assert bench["walle_ms"] > 0 and "nosuchpeer" in bench["skipped"] and bench["runs"] == 2


def test_bench_model_takes_the_shapes_of_dynamic_inputs(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "relu_dyn.onnx", ["n", "?"])
    args = ["bench", "model", str(model), "--backend", "reference", "--runs", "1", "--vs", "nosuchpeer", "--json"]
    assert json.loads(cli(*args))["inputs"] == {"x": [1, 1]}  # declared, unknown dims 1
    assert json.loads(cli(*args, "--shape", "x=4,48"))["inputs"] == {"x": [4, 48]}
    assert "no input named 'y'" in cli(*args, "--shape", "y=4,48", code=2)
    assert "--shape expects NAME=D1,D2,..." in cli(*args, "--shape", "x=4,a", code=2)


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F _walle_completion walle"),
                                           ("zsh", "#compdef walle"), ("fish", "complete --command walle")])
def test_shell_completion_is_offered(shell: str, marker: str) -> None:
    walle = Path(sys.executable).parent / "walle"  # the installed console script, as a user runs it
    # Typer detects the user's shell; its own test switch makes the shell an argument instead
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    proc = subprocess.run([str(walle), "--show-completion", shell], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout + proc.stderr
    assert "--install-completion" in cli("--help")


def test_pack_sign_progress_covers_every_payload_byte(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    (src / "task.json").write_text(json.dumps({"name": "big", "version": "1.0.0", "entry": "main.py"}))
    (src / "main.py").write_text("x = 1\n")
    (src / "blob.bin").write_bytes(b"\1" * (LARGE_BYTES + 12345))
    seen: list[int] = []
    pack(src, tmp_path / "big.walle", seen.append)
    assert sum(seen) == LARGE_BYTES + 12345 + len("x = 1\n") and len(seen) > 2
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with byte_progress("packing big", LARGE_BYTES * 2, console) as advance:
        advance(LARGE_BYTES * 2)
    assert "packing big" in buf.getvalue() and "16.8" in buf.getvalue()  # the bar, with MB done
    quiet = io.StringIO()
    with byte_progress("packing small", 1000, Console(file=quiet, force_terminal=True)) as advance:
        advance(1000)
    assert quiet.getvalue() == ""  # small bundles: no bar


def test_pack_refuses_a_trigger_devices_would_refuse(tmp_path: Path) -> None:
    """A bad trigger used to pack, sign and publish fine, and every device then stayed at
    'downloading' (the spec only failed when the device activated it)."""
    src = tmp_path / "t"
    src.mkdir()
    (src / "main.py").write_text("x = 1\n")
    trigger = {"id": "v", "pattern": [{"name": "a", "event": "page_enter",
                                       "where": [{"field": "page", "op": "eq", "value": "item"}]}]}
    (src / "task.json").write_text(json.dumps({"name": "t", "version": "1.0.0", "entry": "main.py", "trigger": trigger}))
    out = cli("task", "pack", str(src), "-o", str(tmp_path / "t.walle"), code=2)
    assert "TriggerSpecError" in out and "unknown op 'eq'" in out and not (tmp_path / "t.walle").exists()
    trigger["pattern"][0]["where"][0]["op"] = "=="
    (src / "task.json").write_text(json.dumps({"name": "t", "version": "1.0.0", "entry": "main.py", "trigger": trigger}))
    assert "packed t 1.0.0" in cli("task", "pack", str(src), "-o", str(tmp_path / "t.walle"))
