"""docs/registry.md's shell transcript (a fresh registry run with the CLI only: keys, tokens,
publish, deploy, simulated devices, results, pause, rollback, revoke), executed as written against a registry on 127.0.0.1
and checked line by line against the output the page shows (issue 15, finding 9)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import transcript

DOC = Path(__file__).resolve().parents[1] / "docs" / "registry.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq")
def test_the_documented_cli_path_runs_as_shown(tmp_path: Path) -> None:
    steps = transcript.parse(DOC.read_text("utf-8"))
    commands = " ".join(s.command for s in steps)
    for needed in ("keys trust", "tokens create", "task publish", "deploy create", "deploy pause",
                   "deploy rollback", "keys revoke", "tokens revoke"):
        assert f"walle {needed}" in commands, needed
    port = str(free_port())
    for step in steps:
        step.command = step.command.replace("8700", port)
    bindir = str(Path(sys.executable).parent)  # the venv's `walle`
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "COLUMNS": "120",
           "WALLE_KEYS_DIR": str(tmp_path / "trusted")}
    for name in ("WALLE_REGISTRY_URL", "WALLE_REGISTRY_TOKEN"):
        env.pop(name, None)
    outputs = transcript.run(steps, tmp_path, env, timeout=600)
    assert transcript.mismatches(steps, outputs) == []


def test_the_checker_catches_an_output_line_the_command_does_not_print() -> None:
    steps = transcript.parse("<!-- transcript:start -->\n```console\n$ echo one two\none …\n$ echo three\n"
                             "four\n```\n<!-- transcript:end -->\n")
    assert [s.command for s in steps] == ["echo one two", "echo three"]
    problems = transcript.mismatches(steps, ["one two\n", "three\n"])
    assert len(problems) == 1 and "four" in problems[0]
