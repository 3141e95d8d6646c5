"""Device agent pieces against a live registry: a half-downloaded bundle is resumed with Range,
a corrupt partial download is thrown away and fetched again, and the state survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_e2e_fixtures import *  # noqa: F403
from test_e2e_fixtures import publish, wait_for

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
