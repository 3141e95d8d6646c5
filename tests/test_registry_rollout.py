"""Rollout safety for late joiners and per-device rollback (the findings of issue 15, as an
operator sees them through the API)."""

from __future__ import annotations

from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import Env


def test_a_deployment_made_before_its_devices_exist_still_rolls_out_in_stages(env: Env) -> None:
    env.publish("late", "1.3.0")
    ids = [f"late-{i:04d}" for i in range(20)]
    dep = env.deploy(task="late", version="1.3.0", device_ids=ids, stages=[10, 50, 100], error_threshold=0.1,
                     min_sample=2)
    st = env.admin.status(dep["id"])
    assert (st["state"], st["current_stage"]) == ("running", 0)  # never "completed (0 of 0)"
    devs = [env.device(i) for i in ids]
    first = [d for d in devs if env.target(d, "late")]
    assert len(first) == 2  # 10% of 20: the first stage grew with the population, one device at a time
    st = env.admin.status(dep["id"])
    assert (st["progress"][0]["targeted"], st["progress"][0]["assigned"], st["progress"][1]["assigned"]) == (2, 2, 0)
    for d in first:
        d.report("late", "1.3.0", "failed", error="crash")
    st = env.admin.status(dep["id"])
    assert st["state"] == "paused" and "auto-paused" in st["reason"]
    assert sum(1 for d in devs if env.target(d, "late")) == len(first)  # nobody beyond the first stage got it


def test_a_completed_deployment_reopens_for_late_joiners_and_pauses_when_they_fail(env: Env) -> None:
    env.publish("grow", "1.0.0")
    dep = env.deploy(task="grow", version="1.0.0", filters={"region": ["eu"]}, error_threshold=0.3, min_sample=1)
    early = [env.device(f"grow-{i}", region="eu") for i in range(2)]
    for d in early:
        d.report("grow", "1.0.0", "installed")
    assert env.admin.status(dep["id"])["state"] == "completed"
    late = [env.device(f"grow-late-{i}", region="eu") for i in range(2)]
    st = env.admin.status(dep["id"])
    assert st["state"] == "running" and "reopened" in st["reason"]
    for d in late:
        d.report("grow", "1.0.0", "failed", error="boom")
    st = env.admin.status(dep["id"])
    assert st["state"] == "paused" and "1 of 3 reports failed" in st["reason"]  # the first late failure


def test_an_all_failed_rollout_never_completes_even_with_lenient_thresholds(env: Env) -> None:
    env.publish("bad", "1.0.0")
    devs = [env.device(f"bad-{i}") for i in range(3)]
    dep = env.deploy(task="bad", version="1.0.0", error_threshold=1.0, success_threshold=0.0, min_sample=1)
    for d in devs:
        d.report("bad", "1.0.0", "failed", error="crash")
    st = env.admin.status(dep["id"])
    assert st["state"] == "running" and st["counts"] == {"failed": 3}


def test_rollback_returns_each_device_to_what_it_ran_under_a_policy_that_matched_it(env: Env) -> None:
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        env.publish("rb", v, model=v.encode())
    eu = [env.device(f"rb-eu-{i}", region="eu") for i in range(3)]
    us = env.device("rb-us", region="us")
    env.deploy(task="rb", version="1.0.0", filters={"region": ["eu"]})
    for d in eu:
        d.report("rb", "1.0.0", "installed")
    one = env.deploy(task="rb", version="1.1.0", device_ids=["rb-eu-0"])
    eu[0].report("rb", "1.1.0", "failed", error="crash", deployment_id=one["id"])
    everyone = env.deploy(task="rb", version="1.2.0")
    assert everyone["previous_version"] == "1.1.0"
    assert {env.target(d, "rb") for d in [*eu, us]} == {"1.2.0"}
    env.admin.action(everyone["id"], "rollback")
    # not 1.1.0 (it failed on the only device it targeted) and nothing for the device 1.0.0 excluded
    assert [env.target(d, "rb") for d in eu] == ["1.0.0"] * 3
    assert env.target(us, "rb") is None and us.notices()[-1]["action"] == "remove"
