"""Rollout rules against a small reference model: hypothesis draws arrival orders of devices,
deployments (device lists, attribute filters, stages, thresholds, priorities), outcomes, attribute
changes, resumes and rollbacks; after every step the registry's deployment states, open stages,
assignments and what each device runs must equal the model's, and the safety invariants hold (a
deployment is never completed while a device it assigned has no outcome or none succeeded)."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import Env, make_env

from walle_registry.client import ApiError, DeviceClient
from walle_registry.models import Assignment, Deployment, DeviceTarget
from walle_registry.policy import stage_quota, stage_rank

VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0")
STAGES = ([100.0], [50.0, 100.0], [20.0, 60.0, 100.0])
OK, FAILED = "installed", "failed"
_examples = itertools.count()

# ---------------------------------------------------------------------------------- the model


@dataclass
class MDep:
    id: int
    version: str
    ids: list[str] | None
    regions: list[str] | None
    stages: list[float]
    min_sample: int
    error_threshold: float
    success_threshold: float
    priority: int
    state: str = "running"
    stage: int = 0
    population: int = 0  # matched devices when last counted, plus new devices since
    status: dict[str, str] = field(default_factory=dict)  # assigned device -> latest status


@dataclass
class Model:
    """The rules of docs/registry.md, over plain sets and dicts."""

    task: str
    devices: dict[str, str] = field(default_factory=dict)  # device -> region
    deps: list[MDep] = field(default_factory=list)
    outcome: dict[tuple[str, str], str] = field(default_factory=dict)  # (device, version) -> latest outcome
    target: dict[str, MDep | None] = field(default_factory=dict)

    def matches(self, dep: MDep, did: str) -> bool:
        return did in self.devices and (dep.ids is None or did in dep.ids) and \
            (dep.regions is None or self.devices[did] in dep.regions)

    def quota(self, dep: MDep) -> int:
        return stage_quota(dep.stages[dep.stage], dep.population)

    def open_stage(self, dep: MDep) -> list[str]:
        """Fill the current stage's quota, lowest stage bucket first."""
        members = [d for d in self.devices if self.matches(dep, d)]
        dep.population = len(members)
        waiting = sorted((d for d in members if d not in dep.status), key=lambda d: stage_rank(self.task, d))
        new = waiting[:max(0, self.quota(dep) - len(dep.status))]
        for d in new:
            dep.status[d] = "notified"
        return new

    def gates(self, dep: MDep, check_errors: bool = True) -> list[str]:
        reached: list[str] = []
        while dep.state in ("running", "completed"):
            total = len(dep.status)
            ok = sum(s == OK for s in dep.status.values())
            bad = sum(s == FAILED for s in dep.status.values())
            done, last = ok + bad, dep.stage == len(dep.stages) - 1
            if total == 0:
                return reached
            need = max(1, min(dep.min_sample, total))
            errors = done >= need and bad / done > dep.error_threshold
            if check_errors and errors:
                dep.state = "paused"
                return reached
            passing = done >= need and ok / total >= dep.success_threshold
            if not last:
                if not passing:
                    return reached
                dep.stage += 1
                reached += self.open_stage(dep)
                continue
            finished = passing and done == total and ok > 0 and not errors
            if finished:
                dep.state = "completed"
            elif dep.state == "completed":
                dep.state = "running"
            return reached
        return reached

    def runs(self, did: str) -> MDep | None:
        """Highest priority, then newest, assigned deployment; never a rolled-back one, and below
        one never a version the device failed on."""
        below_rollback = False
        for dep in sorted((d for d in self.deps if did in d.status), key=lambda d: (d.priority, d.id), reverse=True):
            if dep.state == "rolled_back":
                below_rollback = True
            elif not (below_rollback and self.outcome.get((did, dep.version)) == FAILED):
                return dep
        return None

    def retarget(self, devices: list[str]) -> None:
        for d in devices:
            self.target[d] = self.runs(d)

    # operations (each mirrors one API call)

    def register(self, did: str, region: str) -> None:
        new_device = did not in self.devices
        self.devices[did] = region
        joined: list[str] = []
        for dep in self.deps:
            if dep.state in ("running", "completed") and did not in dep.status and self.matches(dep, did):
                if not new_device:
                    joined += self.open_stage(dep)
                else:
                    dep.population += 1
                    if len(dep.status) < self.quota(dep):
                        dep.status[did] = "notified"
                        joined.append(did)
                joined += self.gates(dep)
        self.retarget(joined)

    def deploy(self, dep: MDep) -> None:
        self.deps.append(dep)
        reached = self.open_stage(dep)
        reached += self.gates(dep)
        self.retarget(reached)

    def report(self, did: str, ok: bool) -> None:
        dep = self.target.get(did)
        assert dep is not None
        status = OK if ok else FAILED
        self.outcome[(did, dep.version)] = status
        if did in dep.status:
            dep.status[did] = status
            self.retarget(self.gates(dep))

    def rollback(self, dep: MDep) -> None:
        dep.state = "rolled_back"
        self.retarget(list(dep.status))

    def resume(self, dep: MDep) -> None:
        dep.state = "running"
        reached = self.open_stage(dep)
        reached += self.gates(dep, check_errors=False)
        self.retarget(reached)


# ---------------------------------------------------------------------------------- the registry


@pytest.fixture(scope="module")
def model_env() -> Iterator[Env]:
    with make_env(Path(tempfile.mkdtemp(prefix="walle-model-")), None, device_rate_per_s=0) as env:
        yield env


@dataclass
class Run:
    env: Env
    model: Model
    tag: str
    clients: dict[str, DeviceClient] = field(default_factory=dict)
    dep_ids: dict[int, int] = field(default_factory=dict)  # model id -> registry id

    def did(self, i: int) -> str:
        return f"{self.tag}-d{i}"

    def attrs(self, region: str) -> dict[str, Any]:
        return {"region": region, "groups": [self.tag]}  # the group keeps examples apart

    def step(self, op: tuple[Any, ...]) -> None:
        kind, *args = op
        getattr(self, kind)(*args)
        self.compare()

    def register(self, i: int, region: str) -> None:
        did = self.did(i)
        if did in self.clients:  # a known device changes attributes (and may join deployments)
            self.clients[did].set_attributes(**self.attrs(region))
        else:
            self.clients[did] = self.env.admin.register(did, **self.attrs(region))
        self.model.register(did, region)

    def deploy(self, v: int, scope: str, ids: list[int], stages: int, min_sample: int, error_threshold: float,
               success_threshold: float, priority: int) -> None:
        spec: dict[str, Any] = {"filters": {"groups": [self.tag]}}
        regions = ["eu"] if scope == "eu" else None
        device_ids = [self.did(i) for i in sorted(set(ids))] if scope == "ids" else None
        if regions:
            spec["filters"]["region"] = regions
        if device_ids is not None:
            spec["device_ids"] = device_ids
        out = self.env.admin.deploy(task=self.model.task, version=VERSIONS[v], stages=STAGES[stages],
                                    min_sample=min_sample, error_threshold=error_threshold,
                                    success_threshold=success_threshold, priority=priority, **spec)
        mid = len(self.model.deps)
        self.dep_ids[mid] = out["id"]
        self.model.deploy(MDep(mid, VERSIONS[v], device_ids, regions, STAGES[stages], min_sample, error_threshold,
                               success_threshold, priority))

    def report(self, i: int, ok: bool) -> None:
        did = self.did(i)
        dep = self.model.target.get(did)
        if did not in self.clients or dep is None:
            return
        self.clients[did].report(self.model.task, dep.version, OK if ok else FAILED, deployment_id=self.dep_ids[dep.id])
        self.model.report(did, ok)

    def rollback(self, n: int) -> None:
        if not self.model.deps:
            return
        dep = self.model.deps[n % len(self.model.deps)]
        if dep.state == "rolled_back":
            with pytest.raises(ApiError) as info:
                self.env.admin.action(self.dep_ids[dep.id], "rollback")
            assert info.value.status == 409
            return
        self.env.admin.action(self.dep_ids[dep.id], "rollback")
        self.model.rollback(dep)

    def resume(self, n: int) -> None:
        paused = [d for d in self.model.deps if d.state == "paused"]
        if paused:
            dep = paused[n % len(paused)]
            self.env.admin.action(self.dep_ids[dep.id], "resume")
            self.model.resume(dep)

    def compare(self) -> None:
        ids = {rid: mid for mid, rid in self.dep_ids.items()}
        with self.env.registry.db.read() as s:
            deps = {d.id: d for d in s.scalars(select(Deployment).where(Deployment.id.in_(list(ids))))}
            assigned = {(a.deployment_id, a.device_id) for a in s.scalars(
                select(Assignment).where(Assignment.deployment_id.in_(list(ids))))}
            targets = {t.device_id: t.version for t in s.scalars(
                select(DeviceTarget).where(DeviceTarget.task == self.model.task))}
        for rid, dep in deps.items():
            m = self.model.deps[ids[rid]]
            assert (dep.state, dep.current_stage) == (m.state, m.stage), (rid, dep.reason)
            assert {d for r, d in assigned if r == rid} == set(m.status), rid
            if m.state == "completed":  # never green without an outcome from everyone, or no success
                assert all(v != "notified" for v in m.status.values()) and OK in m.status.values()
                assert not [d for d in self.model.devices if self.model.matches(m, d) and d not in m.status]
        want = {d: (t.version if t else None) for d, t in self.model.target.items()}
        assert {d: v for d, v in targets.items() if v is not None} == {d: v for d, v in want.items() if v}


def _ops() -> st.SearchStrategy[list[tuple[Any, ...]]]:
    device = st.integers(0, 4)
    region = st.sampled_from(["eu", "us"])
    deploy = st.tuples(st.just("deploy"), st.integers(0, 3), st.sampled_from(["all", "eu", "ids"]),
                       st.lists(device, max_size=4), st.integers(0, 2), st.integers(0, 3),
                       st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from([0.5, 1.0]), st.integers(0, 1))
    op = st.one_of(st.tuples(st.just("register"), device, region), deploy,
                   st.tuples(st.just("report"), device, st.booleans()),
                   st.tuples(st.just("rollback"), st.integers(0, 5)), st.tuples(st.just("resume"), st.integers(0, 5)))
    return st.lists(op, min_size=1, max_size=30)


def _deploy(v: int, scope: str = "all", ids: tuple[int, ...] = (), stages: int = 0, min_sample: int = 0,
            error_threshold: float = 1.0, success_threshold: float = 0.5, priority: int = 0) -> tuple[Any, ...]:
    return ("deploy", v, scope, list(ids), stages, min_sample, error_threshold, success_threshold, priority)


LATE_JOINERS = [_deploy(0, "ids", (0, 1, 2, 3, 4), stages=2, min_sample=2, error_threshold=0.1, success_threshold=1.0),
                *[("register", i, "eu") for i in range(5)], *[("report", i, False) for i in range(5)],
                ("register", 4, "us"), ("resume", 0), *[("report", i, False) for i in range(5)]]
BACK_TO_WHAT_DID_NOT_FAIL = [("register", 0, "eu"), ("register", 1, "eu"), _deploy(0), ("report", 0, False),
                             ("report", 1, True), _deploy(1), ("rollback", 1)]
BACK_ONLY_WHERE_TARGETED = [("register", 0, "eu"), ("register", 1, "us"), _deploy(0, "eu"), _deploy(1, "ids", (2,)),
                            _deploy(2), ("register", 2, "us"), ("report", 2, False), ("rollback", 2)]


@given(ops=_ops())
@example(ops=LATE_JOINERS)
@example(ops=BACK_TO_WHAT_DID_NOT_FAIL)
@example(ops=BACK_ONLY_WHERE_TARGETED)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_rollouts_follow_the_reference_model(model_env: Env, ops: list[tuple[Any, ...]]) -> None:
    n = next(_examples)
    task = f"m{n}"
    for v in VERSIONS:
        model_env.publish(task, v, model=f"{task}-{v}".encode())
    run = Run(model_env, Model(task), f"x{n}")
    for op in ops:
        run.step(op)
