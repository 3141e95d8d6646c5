"""bench/fleet_sim.py: the model agrees with queueing arithmetic where that has an answer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fleet_sim import Costs, Fleet, Fluid, Plant, simulate

COSTS = Costs(notify={"replicas": 0.001, "postgres": 0.0, "nginx": 0.0},
              pull={"replicas": 0.004, "postgres": 0.0005, "nginx": 0.0005},
              checkin={"replicas": 0.001, "postgres": 0.0, "nginx": 0.0},
              listen=1e-6, cores=2.0, checkin_cores=2.0)


def test_fluid_queue_is_fifo_at_its_capacity() -> None:
    q = Fluid(2.0)
    assert q.take(0.0, 4.0) == 2.0
    assert q.take(1.0, 2.0) == 3.0  # waits for the first job
    assert q.take(10.0, 2.0) == 11.0  # idle server starts at once
    with pytest.raises(ValueError, match="under-provisioned"):
        Fluid(1.0, background=1.5)


def test_loopback_rollout_matches_the_queue_arithmetic() -> None:
    n = 4000
    fleet = Fleet(n, online=1.0, stages=(100.0,), bake_s=0.0, jitter_s=0.0, bandwidth_mbit=1e5, bundle_mb=0.1)
    out = simulate(fleet, Plant(replicas=3, shared_cores=2.0, cdn_gbit=1e3), COSTS, sample=n)
    notify = n * 0.001 / 2.0  # one fan-out of n notices on 2 cores
    assert out.notify_s["p99"] == pytest.approx(notify, rel=0.01)
    pulls = n * 0.005 / 2.0  # then every pull, one after another, on the same cores
    assert out.deliver_s["p50"] == pytest.approx(notify + pulls / 2, rel=0.02)
    assert out.deliver_s["p99"] == pytest.approx(notify + pulls * 0.99, rel=0.02)
    assert out.checkins_per_s == pytest.approx(2.0 / 0.001)


def test_stages_open_once_each_after_the_gate_and_the_bake() -> None:
    fleet = Fleet(1_000_000, online=0.5, stages=(1.0, 10.0, 100.0), bake_s=100.0, jitter_s=50.0)
    out = simulate(fleet, Plant(replicas=50, replica_cores=4.0, db_nodes=1, db_cores=32.0), COSTS, sample=5000)
    assert len(out.stage_opened_s) == 3
    gaps = [b - a for a, b in zip(out.stage_opened_s, out.stage_opened_s[1:], strict=False)]
    assert all(g >= 100.0 for g in gaps)  # never before the bake
    assert out.deliver_s["p99"] >= out.stage_opened_s[-1]  # the last stage's devices deliver last


def test_sampling_weight_does_not_change_the_answer_much() -> None:
    fleet = Fleet(200_000, online=1.0, stages=(100.0,), bake_s=0.0, jitter_s=0.0, bandwidth_mbit=1e5,
                  bundle_mb=0.1)
    plant = Plant(replicas=3, shared_cores=2.0, cdn_gbit=1e3)
    fine = simulate(fleet, plant, COSTS, sample=20_000)
    coarse = simulate(fleet, Plant(replicas=3, shared_cores=2.0, cdn_gbit=1e3), COSTS, sample=2_000)
    assert coarse.deliver_s["p99"] == pytest.approx(fine.deliver_s["p99"], rel=0.02)


def test_costs_split_by_the_measured_fanout_phase(tmp_path: Path) -> None:
    import json

    def tiers(cpu: float) -> dict[str, float]:
        return {"replicas_cpu_s": cpu, "postgres_cpu_s": cpu / 4, "nginx_cpu_s": cpu / 10, "client_cpu_s": 1.0}

    run = {"devices": 1000, "checkins_per_s": 500.0, "notify_s": {"99": 9.0},
           "phases": {"rollout": {"wall_s": 10.0, **tiers(8.0)}, "fanout": {"wall_s": 2.0, **tiers(2.0)},
                      "checkin": {"wall_s": 10.0, **tiers(5.0)}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    costs = Costs.from_bench(path, listen=1e-6)
    assert costs.notify["replicas"] == pytest.approx(2.0 / 1000)  # the fan-out phase, not the wall share
    assert costs.pull["replicas"] == pytest.approx(6.0 / 1000)
    assert costs.pull["postgres"] == pytest.approx(1.5 / 1000)
    assert "client" not in costs.notify  # the bench client is not a server tier
    assert costs.cores == pytest.approx((8.0 + 2.0 + 0.8) / 10.0)
    # 200 devices had already pulled when the last notice arrived: their pulls leave the fan-out
    run["phases"]["fanout"]["pulled"] = 200
    path.write_text(json.dumps(run))
    costs = Costs.from_bench(path, listen=1e-6)
    per_pull = 6.0 / 800
    assert costs.notify["replicas"] == pytest.approx((2.0 - 200 * per_pull) / 1000)
    assert costs.pull["replicas"] == pytest.approx((6.0 + 200 * per_pull) / 1000)


def test_runs_of_two_sizes_fit_a_fixed_and_a_per_device_cost() -> None:
    from fleet_sim import _fit_lines

    per, fixed = _fit_lines([2000.0, 5000.0], {"replicas": [0.5 + 2000 * 1e-4, 0.5 + 5000 * 1e-4]})
    assert per["replicas"] == pytest.approx(1e-4) and fixed["replicas"] == pytest.approx(0.5)
    per, fixed = _fit_lines([2000.0, 5000.0], {"replicas": [0.9, 0.6]})  # less work for more devices: noise
    assert fixed["replicas"] == 0.0 and per["replicas"] == pytest.approx(1.5 / 7000)
