"""The rollout mechanics every deployment operation shares, on an open write transaction:
who a deployment targets, assigning devices as stages open, the per-stage counters, what each
device should run (the winner of overlapping deployments), and evaluating the stage gates.

Rules (see docs/registry.md; ``tests/test_registry_rollout_model.py`` checks them against a
small reference model over random arrival orders, outcomes and rollbacks):

* population = the registered devices the policy matches: device id list (if any) AND
  attribute filters AND seeded-hash percentage;
* stages are cumulative percentages: while the rollout is in a stage at ``p``%, up to
  ``ceil(p% of the population)`` devices are *assigned* (and notified), taken in stage-bucket
  order. A device that registers later enters the stage the rollout is in when the stage's quota
  has room (a growing population grows the quota), otherwise it waits for the next stage. Each
  assignment records the stage it entered;
* a gate counts the outcomes (``installed``/``running`` = success, ``failed``/``error``) of the
  assigned devices, with ``need = max(1, min(min_sample, assigned))``: once ``need`` outcomes are
  in, an error share above ``error_threshold`` pauses the deployment, and a success share of the
  assigned devices at or above ``success_threshold`` opens the next stage. Nothing opens
  without an outcome, so a deployment that matches nobody yet stays in its first stage;
* after the last stage the deployment is ``completed`` only while every assigned device has an
  outcome, at least one succeeded and the error share is within the threshold. A device that
  joins later, or an outcome that breaks those conditions, reopens it (``running``), and the
  error gate can then pause it: an all-failed rollout never looks green;
* what a device runs for a task: the highest ``priority`` deployment assigned to it, ties to the
  newest, rolled-back deployments never. Below a rolled-back deployment, a deployment whose
  version the device reported failing on is passed over too, so after a rollback each device
  returns to the newest version it did not fail on under a deployment that targeted it, or to
  nothing.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from walle_registry import policy
from walle_registry.db import Database
from walle_registry.errors import NotFound
from walle_registry.models import (
    Assignment,
    Deployment,
    DeploymentCount,
    DeploymentEvent,
    Device,
    DeviceTarget,
    Notice,
    Release,
    Report,
)
from walle_registry.services.common import Notices, chunks, id_chunks, insert_rows, member_of, now

OK_STATUSES = ("installed", "running")
ERROR_STATUSES = ("failed", "error")
TARGETING_STATES = ("running", "paused", "completed")
JOINABLE_STATES = ("running", "completed")
PENDING_STATUSES = ("notified", "downloading")


class Rollout:
    """Stateless apart from the database dialect (for the counter upsert)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def locked(s: Session, dep_id: int) -> Deployment:
        dep = s.scalar(select(Deployment).where(Deployment.id == dep_id).with_for_update())
        if dep is None:
            raise NotFound(f"deployment {dep_id} not found")
        return dep

    @staticmethod
    def event(s: Session, dep_id: int, kind: str, detail: str = "") -> None:
        s.add(DeploymentEvent(deployment_id=dep_id, kind=kind, detail=detail, at=now()))

    # ------------------------------------------------------------------ population and assignment

    @staticmethod
    def population(s: Session, dep: Deployment) -> list[str]:
        """Every registered device the deployment's policy matches."""
        q = select(Device.id, Device.attributes)
        rows: Iterable[Any]
        ids = set(dep.device_ids) if dep.device_ids is not None else None  # membership per device: a set
        if dep.device_ids is not None:
            rows = [r for chunk in chunks(dep.device_ids) for r in s.execute(q.where(Device.id.in_(chunk)))]
        else:
            rows = s.execute(q)
        return [did for did, attrs in rows
                if policy.targeted(did, attrs or {}, ids, dep.filters, dep.seed, dep.percentage)]

    def assign_stage(self, s: Session, dep: Deployment) -> Notices:
        """Recount the population and fill the current stage's quota, lowest stage bucket first."""
        members = self.population(s, dep)
        dep.population = len(members)
        have = set(s.scalars(select(Assignment.device_id).where(Assignment.deployment_id == dep.id)))
        room = policy.stage_quota(dep.stages[dep.current_stage], len(members)) - len(have)
        waiting = sorted((d for d in members if d not in have), key=lambda d: policy.stage_rank(dep.seed, d))
        new = waiting[:max(0, room)]
        self.insert_assignments(s, dep.id, dep.current_stage, new)
        return self.retarget(s, dep.task, new)

    def join(self, s: Session, did: str, attrs: dict[str, Any], new_device: bool) -> Notices:
        """A device registered (``new_device``) or changed attributes: it enters every running or
        completed deployment whose policy matches it and whose current stage has room, then those
        gates run (a completed deployment reopens)."""
        deps = list(s.scalars(select(Deployment).where(Deployment.state.in_(JOINABLE_STATES))
                              .order_by(Deployment.id)))
        have = set(s.scalars(select(Assignment.deployment_id).where(Assignment.device_id == did)))
        tasks: set[str] = set()
        notices: Notices = []
        for dep in deps:
            if dep.id in have or \
                    not policy.targeted(did, attrs, dep.device_ids, dep.filters, dep.seed, dep.percentage):
                continue
            s.refresh(dep, with_for_update=True)  # a concurrent report may have moved its gates
            if dep.state not in JOINABLE_STATES:
                continue
            if new_device:  # one more member: no need to recount the population
                dep.population += 1
                if self.assigned(s, dep) < policy.stage_quota(dep.stages[dep.current_stage], dep.population):
                    self.insert_assignments(s, dep.id, dep.current_stage, [did])
                    tasks.add(dep.task)
            else:  # the device may have matched before (and waited): recount
                notices += self.assign_stage(s, dep)
            notices += self.evaluate(s, dep)
        for task in sorted(tasks):
            notices += self.retarget(s, task, [did])
        return notices

    def insert_assignments(self, s: Session, dep_id: int, stage: int, devices: Sequence[str]) -> None:
        """Assign devices in ``stage`` as ``notified`` and count them."""
        if not devices:
            return
        t = now()
        insert_rows(s, Assignment, [{"deployment_id": dep_id, "device_id": did, "stage": stage,
                                     "status": "notified", "error": "", "updated_at": t} for did in devices])
        self.bump(s, dep_id, Counter({(stage, "notified"): len(devices)}))

    # ------------------------------------------------------------------ counters

    def bump(self, s: Session, dep_id: int, deltas: Counter[tuple[int, str]]) -> None:
        """Add ``deltas[(stage, status)]`` to the deployment's counters (upsert)."""
        rows = [{"deployment_id": dep_id, "stage": st, "status": status, "n": n}
                for (st, status), n in sorted(deltas.items()) if n]
        if not rows:
            return
        s.connection().execute(self._count_upsert, rows)

    @functools.cached_property
    def _count_upsert(self) -> Any:
        """INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n, built once (executemany)."""
        keys = ["deployment_id", "stage", "status"]
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(DeploymentCount)
            return pg.on_conflict_do_update(index_elements=keys, set_={"n": DeploymentCount.n + pg.excluded.n})
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(DeploymentCount)
        return lite.on_conflict_do_update(index_elements=keys, set_={"n": DeploymentCount.n + lite.excluded.n})

    @staticmethod
    def counts(s: Session, dep: Deployment) -> Counter[str]:
        """Status counts of the deployment's assigned devices, from the incremental counters."""
        rows = s.execute(select(DeploymentCount.status, func.sum(DeploymentCount.n)).where(
            DeploymentCount.deployment_id == dep.id).group_by(DeploymentCount.status))
        return Counter({status: int(n) for status, n in rows if n})

    def assigned(self, s: Session, dep: Deployment) -> int:
        return sum(self.counts(s, dep).values())

    # ------------------------------------------------------------------ what each device runs

    def retarget(self, s: Session, task: str, device_ids: Sequence[str]) -> Notices:
        """Recompute what each device should run for ``task``; write notices for the changes."""
        if not device_ids:
            return []
        s.flush()
        deps = {d.id: d for d in s.scalars(select(Deployment).where(Deployment.task == task))}
        winners: dict[str, Deployment] = {}
        ranked: dict[str, list[Deployment]] = defaultdict(list)
        current: dict[str, tuple[str | None, int | None]] = {}
        for chunk in id_chunks(s, list(dict.fromkeys(device_ids))):
            for did, assigned_to in s.execute(select(Assignment.device_id, Assignment.deployment_id).where(
                    member_of(s, Assignment.device_id, chunk), Assignment.deployment_id.in_(list(deps)))):
                ranked[did].append(deps[assigned_to])
            for did, ver, target_dep in s.execute(select(DeviceTarget.device_id, DeviceTarget.version,
                                                         DeviceTarget.deployment_id).where(
                    member_of(s, DeviceTarget.device_id, chunk), DeviceTarget.task == task)):
                current[did] = (ver, target_dep)
        failed = self._failed_versions(s, task, ranked) if any(
            d.state == "rolled_back" for d in deps.values()) else {}
        for did, cands in ranked.items():
            below_rollback = False
            for dep in sorted(cands, key=lambda d: (d.priority, d.id), reverse=True):
                if dep.state == "rolled_back":
                    below_rollback = True
                elif not (below_rollback and dep.version in failed.get(did, ())):
                    winners[did] = dep
                    break
        digests = {r.version: r.manifest_digest for r in s.scalars(select(Release).where(Release.task == task))}
        t = now()
        added: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        fresh: list[dict[str, Any]] = []
        for did in dict.fromkeys(device_ids):
            winner = winners.get(did)
            version, dep_id = (winner.version, winner.id) if winner is not None else (None, None)
            cur = current.get(did)
            if cur is not None and cur == (version, dep_id):
                continue
            if cur is None and version is None:
                continue
            digest = digests.get(version) if version else None
            row = {"device_id": did, "task": task, "version": version, "manifest_digest": digest,
                   "deployment_id": dep_id, "updated_at": t}
            if cur is None:
                added.append(row)
            else:
                changed.append(row)
                if cur[0] == version:
                    continue  # same version under another deployment: nothing for the device to do
            fresh.append({"device_id": did, "task": task, "version": version, "manifest_digest": digest,
                          "deployment_id": dep_id, "action": "install" if version else "remove", "created_at": t})
        if added:
            insert_rows(s, DeviceTarget, added)
        if changed:
            s.execute(update(DeviceTarget), changed)  # bulk UPDATE by primary key (device_id, task)
        if not fresh:
            return []
        seq_of = {did: int(q) for q, did in insert_rows(s, Notice, fresh, (Notice.seq, Notice.device_id))}
        return [{"seq": seq_of[n["device_id"]], "device": n["device_id"], "task": task, "version": n["version"],
                 "digest": n["manifest_digest"], "deployment": n["deployment_id"], "action": n["action"]}
                for n in sorted(fresh, key=lambda n: seq_of[n["device_id"]])]

    @staticmethod
    def _failed_versions(s: Session, task: str, devices: Iterable[str]) -> dict[str, set[str]]:
        """device -> versions of ``task`` whose latest outcome on the device was a failure."""
        latest: dict[tuple[str, str], str] = {}
        for chunk in chunks(list(devices)):
            for did, version, status in s.execute(
                    select(Report.device_id, Report.version, Report.status)
                    .where(Report.device_id.in_(chunk), Report.task == task,
                           Report.status.in_(OK_STATUSES + ERROR_STATUSES)).order_by(Report.id)):
                latest[(did, version)] = status
        out: dict[str, set[str]] = defaultdict(set)
        for (did, version), status in latest.items():
            if status in ERROR_STATUSES:
                out[did].add(version)
        return out

    # ------------------------------------------------------------------ stage gates

    def evaluate(self, s: Session, dep: Deployment, check_errors: bool = True) -> Notices:
        """Run the gates of a running or completed deployment: open stages, complete, reopen or
        auto-pause it from the outcomes counted so far (``check_errors=False``: an operator's
        resume overrides the error gate until the next outcome)."""
        notices: Notices = []
        while (step := self.gate(dep, self.counts(s, dep), check_errors)) is not None:
            action, detail = step
            if action == "advance":
                notices += self._advance(s, dep, detail)
                continue
            dep.updated_at = now()
            if action == "pause":
                dep.state, dep.reason = "paused", detail
                self.event(s, dep.id, "auto_paused", detail)
            elif action == "complete":
                dep.state, dep.reason = "completed", ""
                self.event(s, dep.id, "completed", detail)
            else:  # reopen
                dep.state, dep.reason = "running", detail
                self.event(s, dep.id, "reopened", detail)
            break
        return notices

    @staticmethod
    def gate(dep: Deployment, counts: Counter[str], check_errors: bool = True) -> tuple[str, str] | None:
        """What :meth:`evaluate` does next given the status counts: ``(action, detail)`` with action
        pause / advance / complete / reopen, or None when the gates leave the deployment as it is
        (batched reports use this to skip the database round trips of a gate that stays shut)."""
        if dep.state not in JOINABLE_STATES:
            return None
        total = sum(counts.values())
        if total == 0:  # nobody matched yet: nothing to count, nothing opens
            return None
        ok = sum(counts[k] for k in OK_STATUSES)
        bad = sum(counts[k] for k in ERROR_STATUSES)
        done = ok + bad
        need = max(1, min(dep.min_sample, total))
        too_many_errors = done >= need and bad / done > dep.error_threshold
        if check_errors and too_many_errors:
            return "pause", (f"auto-paused: {bad} of {done} reports failed "
                             f"({bad / done:.0%} > error threshold {dep.error_threshold:.0%})")
        passing = done >= need and ok / total >= dep.success_threshold
        if dep.current_stage + 1 < len(dep.stages):
            return ("advance", f"{ok} of {total} succeeded") if passing else None
        pending = sum(counts[k] for k in PENDING_STATUSES)
        finished = passing and pending == 0 and ok > 0 and not too_many_errors
        if finished and dep.state == "running":
            return "complete", f"{ok} of {total} devices succeeded"
        if not finished and dep.state == "completed":
            return "reopen", f"reopened: {pending} of {total} devices without an outcome, {bad} failed"
        return None

    def _advance(self, s: Session, dep: Deployment, why: str) -> Notices:
        dep.current_stage += 1
        dep.updated_at = now()
        self.event(s, dep.id, "stage_advanced",
                   f"stage {dep.current_stage} ({dep.stages[dep.current_stage]:g}%) after {why}")
        return self.assign_stage(s, dep)
