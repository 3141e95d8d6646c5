"""The rollout mechanics every deployment operation shares, on an open write transaction:
who a deployment targets, assigning devices as stages open, the per-stage counters, what each
device should run (the winner of overlapping deployments), and evaluating the stage gates.

Rules (see docs/registry.md):

* population = device id list (if any) AND attribute filters AND seeded-hash percentage;
* stages are cumulative percentages of the population; a device is *assigned* (and notified)
  once its stage is reached; devices registering later join running/completed deployments;
* after each terminal report the current stages are evaluated: with at least
  ``min(min_sample, assigned)`` terminal reports, an error rate above ``error_threshold`` pauses
  the deployment; a success share of the assigned devices at or above ``success_threshold``
  advances to the next stage (or completes it);
* overlapping deployments of one task on one device: the highest ``priority`` wins, ties go to
  the newest deployment; a rolled-back deployment targets its ``previous_version`` instead.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
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
)
from walle_registry.services.common import Notices, chunks, now

OK_STATUSES = ("installed", "running")
ERROR_STATUSES = ("failed", "error")
TARGETING_STATES = ("running", "paused", "completed")
JOINABLE_STATES = ("running", "completed")


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
    def population(s: Session, dep: Deployment) -> list[tuple[str, int]]:
        """(device id, stage) for every device the deployment targets."""
        q = select(Device.id, Device.attributes)
        out: list[tuple[str, int]] = []
        rows: Iterable[Any]
        if dep.device_ids is not None:
            rows = [r for chunk in chunks(dep.device_ids) for r in s.execute(q.where(Device.id.in_(chunk)))]
        else:
            rows = s.execute(q)
        for did, attrs in rows:
            if policy.targeted(did, attrs or {}, dep.device_ids, dep.filters, dep.seed, dep.percentage):
                out.append((did, policy.stage_of(dep.seed, did, dep.stages)))
        return out

    def assign_stage(self, s: Session, dep: Deployment) -> Notices:
        """Assign every targeted device whose stage has been reached and is not assigned yet."""
        have = set(s.scalars(select(Assignment.device_id).where(Assignment.deployment_id == dep.id)))
        new = [(did, st) for did, st in self.population(s, dep) if st <= dep.current_stage and did not in have]
        self.insert_assignments(s, dep.id, new)
        return self.retarget(s, dep.task, [did for did, _ in new])

    def join(self, s: Session, did: str, attrs: dict[str, Any]) -> Notices:
        """Late joiners: assign the device to every running/completed deployment it matches."""
        deps = list(s.scalars(select(Deployment).where(Deployment.state.in_(JOINABLE_STATES))))
        have = set(s.scalars(select(Assignment.deployment_id).where(Assignment.device_id == did)))
        tasks: set[str] = set()
        for dep in deps:
            if dep.id in have or not policy.targeted(did, attrs, dep.device_ids, dep.filters, dep.seed, dep.percentage):
                continue
            stage = policy.stage_of(dep.seed, did, dep.stages)
            if stage <= dep.current_stage:
                self.insert_assignments(s, dep.id, [(did, stage)])
                tasks.add(dep.task)
        notices: Notices = []
        for task in sorted(tasks):
            notices += self.retarget(s, task, [did])
        return notices

    def insert_assignments(self, s: Session, dep_id: int, rows: Sequence[tuple[str, int]]) -> None:
        """Assign devices (``(device id, stage)``) as ``notified`` and count them."""
        if not rows:
            return
        t = now()
        s.execute(insert(Assignment), [{"deployment_id": dep_id, "device_id": did, "stage": st, "status": "notified",
                                        "error": "", "updated_at": t} for did, st in rows])
        self.bump(s, dep_id, Counter((st, "notified") for _, st in rows))

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
        """Status counts of the deployment's active stages, from the incremental counters."""
        rows = s.execute(select(DeploymentCount.status, func.sum(DeploymentCount.n)).where(
            DeploymentCount.deployment_id == dep.id, DeploymentCount.stage <= dep.current_stage)
            .group_by(DeploymentCount.status))
        return Counter({status: int(n) for status, n in rows if n})

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
        for chunk in chunks(list(dict.fromkeys(device_ids))):
            for did, assigned_to in s.execute(select(Assignment.device_id, Assignment.deployment_id).where(
                    Assignment.device_id.in_(chunk), Assignment.deployment_id.in_(list(deps)))):
                ranked[did].append(deps[assigned_to])
            for did, ver, target_dep in s.execute(select(DeviceTarget.device_id, DeviceTarget.version,
                                                         DeviceTarget.deployment_id).where(
                    DeviceTarget.device_id.in_(chunk), DeviceTarget.task == task)):
                current[did] = (ver, target_dep)
        for did, cands in ranked.items():
            for dep in sorted(cands, key=lambda d: (d.priority, d.id), reverse=True):
                if dep.state in TARGETING_STATES or (dep.state == "rolled_back" and dep.previous_version):
                    winners[did] = dep
                    break
        digests = {r.version: r.manifest_digest for r in s.scalars(select(Release).where(Release.task == task))}
        t = now()
        added: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        fresh: list[dict[str, Any]] = []
        for did in dict.fromkeys(device_ids):
            dep_or_none = winners.get(did)
            if dep_or_none is None:
                version, dep_id = None, None
            else:
                version = dep_or_none.version if dep_or_none.state != "rolled_back" else dep_or_none.previous_version
                dep_id = dep_or_none.id
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
            s.execute(insert(DeviceTarget), added)
        if changed:
            s.execute(update(DeviceTarget), changed)  # bulk UPDATE by primary key (device_id, task)
        if not fresh:
            return []
        seqs = s.execute(insert(Notice).returning(Notice.seq, sort_by_parameter_order=True), fresh).scalars().all()
        return [{"seq": int(q), "device": n["device_id"], "task": task, "version": n["version"],
                 "digest": n["manifest_digest"], "deployment": n["deployment_id"], "action": n["action"]}
                for q, n in zip(seqs, fresh, strict=True)]

    # ------------------------------------------------------------------ stage gates

    def evaluate(self, s: Session, dep: Deployment, check_errors: bool = True) -> Notices:
        """Advance, complete or auto-pause a running deployment from its reports so far."""
        notices: Notices = []
        while dep.state == "running":
            counts = self.counts(s, dep)
            total = sum(counts.values())
            ok = sum(counts[k] for k in OK_STATUSES)
            bad = sum(counts[k] for k in ERROR_STATUSES)
            done = ok + bad
            need = min(dep.min_sample, total)
            if check_errors and done and done >= need and bad / done > dep.error_threshold:
                dep.state = "paused"
                dep.reason = (f"auto-paused: {bad} of {done} reports failed "
                              f"({bad / done:.0%} > error threshold {dep.error_threshold:.0%})")
                dep.updated_at = now()
                self.event(s, dep.id, "auto_paused", dep.reason)
                break
            if done < need or (total and ok / total < dep.success_threshold):
                break
            if dep.current_stage + 1 >= len(dep.stages):
                dep.state, dep.reason, dep.updated_at = "completed", "", now()
                self.event(s, dep.id, "completed", f"{ok} of {total} devices succeeded")
                break
            dep.current_stage += 1
            dep.updated_at = now()
            self.event(s, dep.id, "stage_advanced",
                       f"stage {dep.current_stage} ({dep.stages[dep.current_stage]:g}%) after {ok} of {total} succeeded")
            notices += self.assign_stage(s, dep)
        return notices
