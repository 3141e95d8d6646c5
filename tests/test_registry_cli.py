"""The registry CLI commands against a live registry (uvicorn in a thread)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, ThreadServer, make_bundle
from typer.testing import CliRunner

from walle_cli.app import app

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    text = ANSI.sub("", result.output)
    assert result.exit_code == 0, text
    return text


def test_cli_publish_deploy_devices_results(sqlite_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env = sqlite_env
    with ThreadServer(env.app) as srv:
        monkeypatch.setenv("WALLE_REGISTRY_URL", srv.url)
        monkeypatch.setenv("WALLE_REGISTRY_TOKEN", ADMIN)
        bundle = make_bundle(env.tmp, env.keys, "cli-task", "1.0.0")
        assert "cli-task 1.0.0 published" in cli("task", "publish", str(bundle))
        assert "already published" in cli("task", "publish", str(bundle))
        dev = env.device("cli-dev", os="linux", region="eu")
        text = cli("deploy", "create", "cli-task", "1.0.0", "--os", "linux", "--stages", "50,100")
        assert "deployment 1: cli-task 1.0.0 [running]" in text
        st = json.loads(cli("deploy", "status", "1", "--json"))
        assert st["progress"][0]["percentage"] == 50
        assert "[paused]" in cli("deploy", "pause", "1")
        assert "[running]" in cli("deploy", "resume", "1")
        assert "cli-task" in cli("deploy", "list")
        listing = cli("devices", "list")
        assert "cli-dev" in listing and "1 device(s)" in listing
        dev.upload_results([{"seq": 1, "name": "score", "value": 0.5}], task="cli-task", version="1.0.0")
        out = cli("results", "cli-task")
        assert "cli-dev" in out and "1 result(s)" in out
        assert "[rolled_back]" in cli("deploy", "rollback", "1")
        bad = runner.invoke(app, ["deploy", "pause", "1"])
        assert bad.exit_code == 2 and "only a running deployment" in ANSI.sub("", bad.output)


def test_cli_reports_unreachable_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WALLE_REGISTRY_TOKEN", "wpt_x")
    result = runner.invoke(app, ["deploy", "list", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot reach the registry" in ANSI.sub("", result.output)
    monkeypatch.delenv("WALLE_REGISTRY_TOKEN")
    result = runner.invoke(app, ["deploy", "list"])
    assert result.exit_code == 2 and "no API token" in ANSI.sub("", result.output)


@pytest.mark.parametrize("group", ["registry", "task", "deploy", "devices"])
def test_cli_help(group: str) -> None:
    assert runner.invoke(app, [group, "--help"]).exit_code == 0
