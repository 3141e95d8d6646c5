"""Task deployments: create, pause, resume, roll back, widen, status, and the device reports that
drive the stage gates (the mechanics live in :mod:`.rollout`)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import insert, select, update

from walle_registry import policy
from walle_registry.cache import DeviceActivity
from walle_registry.db import Database
from walle_registry.errors import Conflict, Forbidden, Invalid, NotFound
from walle_registry.models import (
    Assignment,
    Deployment,
    DeploymentCount,
    DeploymentEvent,
    DeviceTarget,
    Release,
    Report,
)
from walle_registry.schemas import DeploymentCreate
from walle_registry.services.common import Notices, now
from walle_registry.services.publishing import Publishing
from walle_registry.services.rollout import ERROR_STATUSES, JOINABLE_STATES, OK_STATUSES, Rollout


class Deployments:
    def __init__(self, db: Database, rollout: Rollout, publishing: Publishing, activity: DeviceActivity) -> None:
        self.db, self.rollout, self.publishing, self.activity = db, rollout, publishing, activity

    def create(self, spec: DeploymentCreate, by: str) -> tuple[Deployment, Notices]:
        rel = self.publishing.release(spec.task, spec.version)  # 404 unless published
        if rel.key_id not in self.publishing.credentials.keystore().ids():
            raise Invalid(f"{spec.task} {spec.version} is signed by key {rel.key_id}, which is no longer trusted")
        with self.db.write(serial=True) as s:
            prev = s.scalar(select(Deployment.version).where(
                Deployment.task == spec.task, Deployment.state != "rolled_back",
                Deployment.version != spec.version).order_by(Deployment.id.desc()).limit(1))
            if prev is None:
                older = [r.version for r in s.scalars(select(Release).where(Release.task == spec.task))
                         if policy.version_key(r.version) < policy.version_key(spec.version)]
                prev = max(older, key=policy.version_key) if older else None
            t = now()
            dep = Deployment(
                task=spec.task, version=spec.version, previous_version=prev,
                device_ids=list(dict.fromkeys(spec.device_ids)) if spec.device_ids is not None else None,
                filters=spec.filters.model_dump(exclude_none=True), percentage=spec.percentage,
                seed=spec.seed or spec.task, stages=list(spec.stages), current_stage=0,
                success_threshold=spec.success_threshold, error_threshold=spec.error_threshold,
                min_sample=spec.min_sample, priority=spec.priority, state="running", reason="",
                created_by=by, created_at=t, updated_at=t)
            s.add(dep)
            s.flush()
            self.rollout.event(s, dep.id, "created", f"{spec.task} {spec.version} stages {spec.stages}")
            notices = self.rollout.assign_stage(s, dep)
            notices += self.rollout.evaluate(s, dep)
        return dep, notices

    def pause(self, dep_id: int, by: str) -> Deployment:
        with self.db.write() as s:
            dep = self.rollout.locked(s, dep_id)
            if dep.state != "running":
                raise Conflict(f"deployment {dep_id} is {dep.state}; only a running deployment can be paused")
            dep.state, dep.reason, dep.updated_at = "paused", f"paused by {by}", now()
            self.rollout.event(s, dep.id, "paused", dep.reason)
        return dep

    def resume(self, dep_id: int, by: str) -> tuple[Deployment, Notices]:
        with self.db.write(serial=True) as s:
            dep = self.rollout.locked(s, dep_id)
            if dep.state != "paused":
                raise Conflict(f"deployment {dep_id} is {dep.state}; only a paused deployment can be resumed")
            dep.state, dep.reason, dep.updated_at = "running", "", now()
            self.rollout.event(s, dep.id, "resumed", f"resumed by {by}")
            # Devices that registered while it was paused join now; the error gate is re-armed
            # for the next report (an operator's resume overrides the one that paused it).
            notices = self.rollout.assign_stage(s, dep)
            notices += self.rollout.evaluate(s, dep, check_errors=False)
        return dep, notices

    def rollback(self, dep_id: int, by: str) -> tuple[Deployment, Notices]:
        with self.db.write(serial=True) as s:
            dep = self.rollout.locked(s, dep_id)
            if dep.state == "rolled_back":
                raise Conflict(f"deployment {dep_id} is already rolled back")
            dep.state, dep.updated_at = "rolled_back", now()
            dep.reason = (f"rolled back by {by}: each device returns to the newest version it did not fail on "
                          "under a deployment that targeted it, or removes the task")
            self.rollout.event(s, dep.id, "rolled_back", dep.reason)
            devices = list(s.scalars(select(Assignment.device_id).where(Assignment.deployment_id == dep.id)))
            notices = self.rollout.retarget(s, dep.task, devices)
        return dep, notices

    def widen(self, dep_id: int, percentage: float) -> tuple[Deployment, Notices]:
        with self.db.write(serial=True) as s:
            dep = self.rollout.locked(s, dep_id)
            if dep.state == "rolled_back":
                raise Conflict(f"deployment {dep_id} is rolled back")
            if percentage < dep.percentage:
                raise Conflict(f"percentage can only grow ({dep.percentage:g}% -> {percentage:g}% refused)")
            dep.percentage, dep.updated_at = percentage, now()
            self.rollout.event(s, dep.id, "widened", f"{percentage:g}%")
            notices: Notices = []
            if dep.state in JOINABLE_STATES:  # the new devices join (a completed deployment reopens)
                notices = self.rollout.assign_stage(s, dep)
                notices += self.rollout.evaluate(s, dep)
        return dep, notices

    def get(self, dep_id: int) -> Deployment:
        with self.db.read() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None:
                raise NotFound(f"deployment {dep_id} not found")
            return dep

    def find(self, task: str | None = None) -> list[Deployment]:
        with self.db.read() as s:
            q = select(Deployment).order_by(Deployment.id.desc())
            if task:
                q = q.where(Deployment.task == task)
            return list(s.scalars(q))

    def status(self, dep_id: int) -> dict[str, Any]:
        with self.db.read() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None:
                raise NotFound(f"deployment {dep_id} not found")
            members = len(self.rollout.population(s, dep))
            quotas = [0] + [policy.stage_quota(pct, members) for pct in dep.stages]
            per_stage: dict[int, Counter[str]] = defaultdict(Counter)
            for stage, status, n in s.execute(select(DeploymentCount.stage, DeploymentCount.status, DeploymentCount.n)
                                              .where(DeploymentCount.deployment_id == dep.id)):
                if n:
                    per_stage[int(stage)][status] += int(n)
            progress = []
            for i, pct in enumerate(dep.stages):
                c = per_stage.get(i, Counter())
                progress.append({"index": i, "percentage": pct, "targeted": quotas[i + 1] - quotas[i],
                                 "assigned": sum(c.values()), "counts": dict(c),
                                 "succeeded": sum(c[k] for k in OK_STATUSES),
                                 "failed": sum(c[k] for k in ERROR_STATUSES),
                                 "active": i <= dep.current_stage})
            totals: Counter[str] = Counter()
            for c in per_stage.values():
                totals.update(c)
            events = [{"kind": e.kind, "detail": e.detail, "at": e.at} for e in s.scalars(
                select(DeploymentEvent).where(DeploymentEvent.deployment_id == dep.id)
                .order_by(DeploymentEvent.id.desc()).limit(20))]
            errors = [{"device": r.device_id, "status": r.status, "error": r.error, "at": r.created_at}
                      for r in s.scalars(select(Report).where(Report.deployment_id == dep.id,
                                                              Report.status.in_(ERROR_STATUSES))
                                         .order_by(Report.id.desc()).limit(10))]
            return {**deployment_dict(dep), "progress": progress, "counts": dict(totals), "events": events,
                    "errors": errors}

    # ------------------------------------------------------------------ device reports

    def report(self, device_id: str, task: str, version: str, status: str, deployment_id: int | None,
               error: str, metrics: dict[str, Any], seq: int | None) -> tuple[bool, int | None, Notices]:
        """Record a device status report; returns (duplicate, deployment id, notices)."""
        t = now()
        with self.db.write(serial=True) as s:
            if seq is not None and s.scalar(select(Report.id).where(Report.device_id == device_id,
                                                                    Report.seq == seq)) is not None:
                self.activity.note(device_id, t)
                return True, deployment_id, []
            # A device reports only on what was deployed to it (its own assignments and targets).
            if deployment_id is None:
                target = s.execute(select(DeviceTarget.deployment_id).where(
                    DeviceTarget.device_id == device_id, DeviceTarget.task == task)).first()
                if target is None:
                    raise Forbidden(f"task {task} was never deployed to device {device_id}")
                deployment_id = target.deployment_id
            elif s.scalar(select(Assignment.stage).where(Assignment.deployment_id == deployment_id,
                                                         Assignment.device_id == device_id)) is None:
                raise Forbidden(f"deployment {deployment_id} does not target device {device_id}")
            dep = self.rollout.locked(s, deployment_id) if deployment_id is not None else None
            if dep is not None and dep.task != task:
                raise Invalid(f"deployment {dep.id} is for task {dep.task}, not {task}")
            s.connection().execute(insert(Report), [{"device_id": device_id, "seq": seq, "deployment_id": deployment_id,
                                                     "task": task, "version": version, "status": status,
                                                     "error": error, "metrics": metrics, "created_at": t}])
            notices: Notices = []
            if dep is not None and version == dep.version:
                key = (Assignment.deployment_id == dep.id) & (Assignment.device_id == device_id)
                row = s.execute(select(Assignment.stage, Assignment.status).where(key)).first()
                if row is not None:
                    s.execute(update(Assignment).where(key).values(status=status, error=error, updated_at=t)
                              .execution_options(synchronize_session=False))
                    if row.status != status:
                        self.rollout.bump(s, dep.id, Counter({(int(row.stage), row.status): -1,
                                                              (int(row.stage), status): 1}))
                    if status in OK_STATUSES + ERROR_STATUSES:
                        notices = self.rollout.evaluate(s, dep)
        # last_seen and the device's metrics summary are written behind; the report row (with
        # its metrics) committed above.
        self.activity.note(device_id, t, metrics)
        return False, deployment_id, notices


def deployment_dict(dep: Deployment) -> dict[str, Any]:
    return {k: getattr(dep, k) for k in (
        "id", "task", "version", "previous_version", "state", "reason", "current_stage", "stages", "percentage",
        "seed", "device_ids", "filters", "success_threshold", "error_threshold", "min_sample", "priority",
        "created_by", "created_at", "updated_at")}
