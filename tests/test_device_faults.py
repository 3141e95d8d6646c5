"""Fault tests for the device agent: the registry killed mid-rollout, a device killed and
restarted, and a task version that crashes on some devices (auto-pause, then rollback)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from test_e2e_fixtures import *  # noqa: F403
from test_e2e_fixtures import ok_results, publish, wait_for

from walle_demo import scenario
from walle_demo.demo import Stack, verify_results
from walle_demo.simulator import Fleet, FleetConfig


def _fleet(stack: Stack, n: int, seed: int, **kw: object) -> Fleet:
    cfg = FleetConfig(stack.server.url, stack.enroll_token, stack.root / "devices", stack.keys, devices=n, seed=seed,
                      pause_s=(0.3, 0.9), upload_interval_s=0.3, backoff_max_s=1.0, **kw)  # type: ignore[arg-type]
    return Fleet(cfg)


def test_registry_killed_mid_rollout_loses_nothing(stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")

    async def run() -> None:
        async with _fleet(stack, 12, seed=5) as fleet:
            await wait_for(lambda: all(d.agent.connected for d in fleet.devices.values()), 30, "devices online")
            dep = stack.admin.deploy(task=scenario.TASK, version="1.0.0", stages=[25, 100], success_threshold=1.0,
                                     min_sample=2)
            await wait_for(lambda: stack.results(scenario.TASK), 30, "first results")
            stack.server.kill()  # SIGKILL while devices run tasks and upload
            await wait_for(lambda: not any(d.agent.connected for d in fleet.devices.values()), 10, "disconnect")
            before = fleet.summary()["runs_ok"]
            await asyncio.sleep(2.0)  # devices keep shopping and running tasks offline
            assert fleet.summary()["runs_ok"] > before
            stack.restart_registry()
            st = await wait_for(lambda: (s := stack.admin.status(dep["id"]))["state"] != "running" and s, 60,
                                "the rollout to finish after the restart")
            assert st["state"] == "completed"
            await wait_for(lambda: all(d.agent.connected for d in fleet.devices.values()), 30, "reconnect")
            for d in fleet.devices.values():
                assert d.task is not None
                d.task.cancel()
            assert await fleet.drain(30)
            runs = {did: d.agent.stats.runs_ok + d.agent.stats.runs_failed for did, d in fleet.devices.items()}
            assert all(d.agent.stats.connects >= 2 for d in fleet.devices.values())
        results = stack.results(scenario.TASK)
        per_device = Counter(r["device"] for r in results if r["value"]["user"]["status"] != "skipped")
        assert per_device == Counter({k: v for k, v in runs.items() if v}), "every run arrived exactly once"
        assert verify_results(ok_results(results), intent_model) == []

    asyncio.run(run())


def test_device_killed_and_restarted_loses_nothing(stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")

    async def run() -> None:
        fleet = _fleet(stack, 4, seed=9, sessions=6)
        await fleet.start()
        try:
            stack.admin.deploy(task=scenario.TASK, version="1.0.0")
            victim = "sim-0001"
            await wait_for(lambda: fleet.devices[victim].agent.stats.runs_ok >= 2, 30, "the victim to run tasks")
            await fleet.kill_device(victim)  # no flush, no goodbye: what a crash leaves on disk
            await asyncio.sleep(0.5)
            dev = await fleet.start_device(victim)  # same folder: resends its sessions from the start
            assert dev.agent.active() == {scenario.TASK: "1.0.0"}  # the install survived, no re-download
            assert await fleet.users_done(60)
            assert await fleet.drain(30)
            shopper = fleet.shopper(fleet.profile(victim))
            for _ in range(6):
                shopper.session()
            visits = len(shopper.views)
        finally:
            await fleet.stop()
        mine = [r for r in stack.results(scenario.TASK) if r["device"] == victim]
        fids = Counter(r["value"]["trigger"] + str(r["value"]["events"]) for r in mine)
        assert all(c == 1 for c in fids.values()), "no result uploaded twice"
        assert len(mine) == visits, "every item visit of the six sessions produced exactly one result"
        assert verify_results(ok_results(mine), intent_model) == []

    asyncio.run(run())


def test_crashing_version_auto_pauses_then_rollback_restores_previous(stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")
    # 1.1.0 "forgets" every currency but USD: it crashes on devices outside the US
    broken = scenario.task_script().replace('"EUR": 0.92, "CNY": 7.2, "JPY": 150.0, "BRL": 5.0, "INR": 83.0', "")
    assert broken != scenario.task_script()
    publish(stack, intent_model, "1.1.0", script=broken)

    async def run() -> None:
        async with _fleet(stack, 16, seed=21) as fleet:
            dep1 = stack.admin.deploy(task=scenario.TASK, version="1.0.0")
            await wait_for(lambda: stack.admin.status(dep1["id"])["state"] == "completed", 60, "1.0.0 everywhere")
            dep2 = stack.admin.deploy(task=scenario.TASK, version="1.1.0", stages=[50, 100], success_threshold=0.9,
                                      error_threshold=0.2, min_sample=3)
            st = await wait_for(lambda: (s := stack.admin.status(dep2["id"]))["state"] != "running" and s, 60,
                                "1.1.0 to stop")
            assert st["state"] == "paused" and "auto-paused" in st["reason"]
            on_new = [did for did, d in fleet.devices.items() if d.agent.active().get(scenario.TASK) == "1.1.0"]
            assert on_new and len(on_new) < len(fleet.devices)  # stage 1 only
            stack.admin.action(dep2["id"], "rollback")
            await wait_for(lambda: all(d.agent.active() == {scenario.TASK: "1.0.0"} for d in fleet.devices.values()),
                           30, "1.0.0 back everywhere")
            assert all(fleet.devices[did].agent.stats.rollbacks == 1 for did in on_new)
            marks = {did: fleet.devices[did].agent.stats.runs_ok for did in on_new}
            await wait_for(lambda: all(fleet.devices[did].agent.stats.runs_ok > marks[did] for did in on_new), 30,
                           "the restored version to run again")
            crashed = [r for r in stack.results(scenario.TASK, "1.1.0") if r["value"]["user"]["status"] == "failed"]
            assert crashed and all("KeyError" in r["value"]["user"]["error"] for r in crashed)

    asyncio.run(run())
