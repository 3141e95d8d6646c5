"""Device agent pieces against a live registry: a half-downloaded bundle is resumed with Range,
a corrupt partial download is thrown away and fetched again, and the state survives a restart."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from test_e2e_fixtures import *  # noqa: F403
from test_e2e_fixtures import publish, wait_for

from walle_core.task import pack, sign_bundle
from walle_demo import scenario
from walle_demo.demo import Stack
from walle_device import AgentConfig, DeviceAgent


@pytest.mark.parametrize("corrupt", [False, True])
def test_half_downloaded_bundle_is_resumed(stack: Stack, intent_model: Path, corrupt: bool) -> None:
    publish(stack, intent_model, "1.0.0")
    bundle = (stack.root / "bundles" / f"{scenario.TASK}-1.0.0.walle").read_bytes()
    root = stack.root / "dev"
    part = root / "downloads" / f"{scenario.TASK}-1.0.0.walle.part"
    part.parent.mkdir(parents=True)
    head = bundle[: len(bundle) // 2]
    part.write_bytes(bytes(b ^ 0xFF for b in head) if corrupt else head)  # what a cut connection left
    cfg = AgentConfig(root=root, registry_url=stack.server.url, keys=stack.keys, enroll_token=stack.enroll_token,
                      device_id="resume-1", attributes={"os": "android", "app_version": "3.2.0"})

    async def run() -> None:
        agent = DeviceAgent(cfg)
        await agent.start()
        try:
            stack.admin.deploy(task=scenario.TASK, version="1.0.0")
            await wait_for(lambda: agent.active() == {scenario.TASK: "1.0.0"}, 30, "the install")
            assert agent.stats.downloads_resumed == 1
            assert not part.exists()
        finally:
            await agent.stop()
        again = DeviceAgent(cfg)  # a restart finds the install and its credentials
        await again.start()
        try:
            assert again.device_id == "resume-1" and again.active() == {scenario.TASK: "1.0.0"}
            assert (root / "tasks" / scenario.TASK / "1.0.0" / "model.onnx").exists()
        finally:
            await again.stop()

    asyncio.run(run())


def _bundle_with_trigger(stack: Stack, model: Path, version: str, trigger: dict[str, object]) -> Path:
    """The demo task with another trigger (``pack`` carries a trigger without compiling it, as a
    publisher with a newer pattern language would)."""
    src = stack.root / "bundles" / f"src-trigger-{version}"
    src.mkdir(parents=True)
    (src / "main.py").write_text(scenario.task_script(), "utf-8")
    shutil.copyfile(model, src / "model.onnx")
    (src / "task.json").write_text(json.dumps({"name": scenario.TASK, "version": version, "entry": "main.py",
                                               "model": "model.onnx", "trigger": trigger}), "utf-8")
    out = stack.root / "bundles" / f"{scenario.TASK}-{version}.walle"
    pack(src, out)
    sign_bundle(out, stack.private_key)
    return out


def test_a_trigger_the_device_cannot_compile_is_an_error_and_the_running_version_keeps_firing(
        stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")
    bad = {"id": "item_view", "pattern": [{"event": "page_enter",
                                           "where": [{"field": "page", "op": "resembles", "value": "item"}]}]}
    stack.admin.publish(_bundle_with_trigger(stack, intent_model, "1.1.0", bad))
    cfg = AgentConfig(root=stack.root / "dev-trigger", registry_url=stack.server.url, keys=stack.keys,
                      enroll_token=stack.enroll_token, device_id="trigger-1", pull_jitter_s=0.0,
                      attributes={"os": "android", "app_version": "3.2.0"})

    async def run() -> None:
        agent = DeviceAgent(cfg)
        await agent.start()
        try:
            stack.admin.deploy(task=scenario.TASK, version="1.0.0")
            await wait_for(lambda: agent.active() == {scenario.TASK: "1.0.0"}, 30, "1.0.0 active")
            assert agent.pipeline is not None
            before = agent.pipeline.matcher.triggers()
            assert len(before) == 1
            dep = stack.admin.deploy(task=scenario.TASK, version="1.1.0")
            st = await wait_for(lambda: (s := stack.admin.status(dep["id"]))["counts"].get("error") and s, 30,
                                "the error report of 1.1.0")
            assert st["counts"] == {"error": 1}  # not left at 'downloading'
            assert "resembles" in st["errors"][0]["error"]
            assert agent.active() == {scenario.TASK: "1.0.0"}  # the old version still runs ...
            assert agent.pipeline.matcher.triggers() == before  # ... with its trigger
            assert not any(t.done() for t in agent._tasks)  # the reconcile loop did not die of it
        finally:
            await agent.stop()

    asyncio.run(run())


def test_pushed_pulls_are_jittered_over_the_configured_window(stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")
    window = 0.8
    agents = [DeviceAgent(AgentConfig(root=stack.root / f"dev-jitter-{i}", registry_url=stack.server.url,
                                      keys=stack.keys, enroll_token=stack.enroll_token, device_id=f"jitter-{i}",
                                      pull_jitter_s=window, attributes={"os": "android", "app_version": "3.2.0"}))
              for i in range(6)]

    async def run() -> None:
        for a in agents:
            await a.start()
        try:
            await wait_for(lambda: all(a.connected for a in agents), 30, "the streams")
            stack.admin.deploy(task=scenario.TASK, version="1.0.0")
            await wait_for(lambda: all(a.active() == {scenario.TASK: "1.0.0"} for a in agents), 60, "the installs")
            waits = [w for a in agents for w in a.stats.pull_waits]
            assert len(waits) >= len(agents) and all(0 <= w <= window for w in waits)
            assert len(set(waits)) > 1  # spread, not one shared delay
        finally:
            for a in agents:
                await a.stop()

    asyncio.run(run())
