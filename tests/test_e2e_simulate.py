"""``walle device simulate`` as a user runs it: a child process with N simulated devices against a
live registry on 127.0.0.1 with a published, deployed task. The devices register, install the
task and upload results that match the model run directly; results are read back page by page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_e2e_fixtures import *  # noqa: F403
from test_e2e_fixtures import ok_results, publish

from walle_demo import scenario
from walle_demo.demo import ResultTally, Stack, verify_results

DEVICES = 5


def test_device_simulate_cli_against_a_live_registry(stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")
    dep = stack.admin.deploy(task=scenario.TASK, version="1.0.0")
    cmd = [sys.executable, "-c", "from walle_cli.app import main; main()", "device", "simulate",
           "--devices", str(DEVICES), "--registry", stack.server.url, "--enroll-token", stack.enroll_token,
           "--root", str(stack.root / "devices"), "--trust", str(stack.root / "keys" / "publisher.pub"),
           "--id-prefix", "cli", "--duration", "15", "--pause", "0.3", "--seed", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = " ".join(proc.stdout.split()).partition("done:")[2]  # the console may wrap the summary line
    assert f"devices {DEVICES}" in done and f"installed {DEVICES}" in done and "runs_failed 0" in done, done

    ids = {f"cli-{i:04d}" for i in range(DEVICES)}
    devices = {d["id"]: d for d in stack.admin.devices()}
    assert set(devices) == ids  # every simulated device registered with its own attributes
    assert len({(d["attributes"]["os"], d["attributes"]["model"]) for d in devices.values()}) > 1
    st = stack.admin.status(dep["id"])
    assert st["state"] == "completed"
    assert sum(p["assigned"] for p in st["progress"]) == DEVICES
    assert sum(p["succeeded"] for p in st["progress"]) == DEVICES  # each one installed and ran the task

    results = stack.results(scenario.TASK, page=7)  # paged by result id, several pages
    assert len(results) > 7
    assert [r["id"] for r in results] == sorted({r["id"] for r in results})  # no gaps, no repeats
    assert len(results) == len(stack.admin.results(scenario.TASK, limit=10_000))
    tally = ResultTally(stack.admin, scenario.TASK, page=4)
    assert tally.poll() == len(results) and tally.poll() == len(results)  # the second poll finds nothing new
    good = ok_results(results)
    assert {r["device"] for r in good} == ids  # every device uploaded results
    assert verify_results(results, intent_model) == []  # and they are the model's outputs
