"""Batched status reports (``Deployments.report_many``, what the per-replica report queue commits
in one transaction) end exactly where the same reports sent one at a time end: same answers,
same refusals, same stage openings, pauses and notices, same counters."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import Env, make_env

from walle_registry.errors import RegistryError
from walle_registry.services.deployments import DeviceReport


def _fleet(env: Env, n: int) -> int:
    env.publish("batch", "1.0.0")
    env.publish("other", "1.0.0")
    for i in range(n):
        env.device(f"b-{i:03d}", region="eu")
    dep = env.deploy(task="batch", version="1.0.0", stages=[20, 60, 100], min_sample=3, error_threshold=0.4)
    return int(dep["id"])


def _reports(dep_id: int, n: int, seed: int) -> list[DeviceReport]:
    rng = random.Random(seed)
    out: list[DeviceReport] = []
    for k in range(4 * n):
        did = f"b-{rng.randrange(n):03d}"
        status = rng.choice(["downloading", "installed", "installed", "running", "failed"])
        kind = rng.random()
        if kind < 0.1:  # a task never deployed to it: refused, the rest still count
            out.append(DeviceReport(did, "other", "1.0.0", status, None, "", {}, 10_000 + k))
        elif kind < 0.2 and out:  # a retry of an earlier report: a duplicate
            prev = rng.choice(out)
            out.append(prev)
        else:
            explicit = dep_id if rng.random() < 0.5 else None
            out.append(DeviceReport(did, "batch", "1.0.0", status, explicit, "boom" if status == "failed" else "",
                                    {"k": k}, k if rng.random() < 0.9 else None))
    return out


def _state(env: Env, dep_id: int) -> dict[str, Any]:
    st = env.admin.status(dep_id)
    return {"state": st["state"], "stage": st["current_stage"], "reason": st["reason"], "counts": st["counts"],
            "progress": [(p["assigned"], p["counts"]) for p in st["progress"]],
            "events": [(e["kind"], e["detail"]) for e in st["events"]]}


def _norm(out: Any) -> Any:
    return (type(out).__name__, out.message) if isinstance(out, RegistryError) else out


@pytest.mark.parametrize("seed", [1, 3, 4, 5, 8])  # seeds whose reports open a stage or pause
def test_a_batch_of_reports_ends_where_the_same_reports_one_by_one_end(tmp_path: Path, seed: int) -> None:
    n = 30
    with make_env(tmp_path / "one", None) as one, make_env(tmp_path / "batch", None) as batch:
        dep_id = _fleet(one, n)
        assert _fleet(batch, n) == dep_id
        reports = _reports(dep_id, n, seed)
        seq_out: list[Any] = []
        seq_notices: list[dict[str, Any]] = []

        def one_by_one(r: DeviceReport) -> None:
            try:
                dup, did, notices = one.registry.deployments.report(
                    r.device_id, r.task, r.version, r.status, r.deployment_id, r.error, r.metrics, r.seq)
                seq_out.append((dup, did))
                seq_notices.extend(notices)
            except RegistryError as exc:
                seq_out.append(exc)

        for r in reports:
            one_by_one(r)
        # and a retry of the first accepted report: a duplicate, in both runs
        reports.append(next(r for r, o in zip(reports, seq_out, strict=True) if o == (False, dep_id) and r.seq))
        one_by_one(reports[-1])
        assert seq_out[-1][0] is True
        batch_out, batch_notices = batch.registry.deployments.report_many(reports)
        assert [_norm(o) for o in batch_out] == [_norm(o) for o in seq_out]
        assert any(isinstance(o, RegistryError) for o in batch_out)

        def strip(ns: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            return [(x["seq"], x["device"], x["version"], x["action"]) for x in ns]

        assert strip(batch_notices) == strip(seq_notices)
        assert _state(batch, dep_id) == _state(one, dep_id)
        kinds = [k for k, _ in _state(one, dep_id)["events"]]
        assert "stage_advanced" in kinds or "auto_paused" in kinds  # the gates acted inside the batch
