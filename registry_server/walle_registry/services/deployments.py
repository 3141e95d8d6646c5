"""Task deployments: create, pause, resume, roll back, widen, status, and the device reports that
drive the stage gates (the mechanics live in :mod:`.rollout`)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from walle_registry import policy
from walle_registry.cache import DeviceActivity
from walle_registry.db import Database
from walle_registry.errors import Conflict, Forbidden, Invalid, NotFound, RegistryError
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
from walle_registry.services.common import Notices, id_chunks, member_of, now
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
        outcomes, notices = self.report_many([DeviceReport(device_id, task, version, status, deployment_id, error,
                                                           metrics, seq)])
        out = outcomes[0]
        if isinstance(out, Exception):
            raise out
        return out[0], out[1], notices

    def report_many(self, reports: Sequence[DeviceReport]) -> tuple[list[ReportOutcome], Notices]:
        """Record status reports in one transaction, with the same outcome as recording them one
        after the other in this order: per report (duplicate, deployment id) or the error that
        refused it (the others still count), and the notices the gates wrote.

        The reads are one query per kind for the whole batch; report rows, assignment updates and
        counter deltas are written together; a gate is run against the database only when the
        counts kept in memory say it would act (open a stage, pause, complete or reopen), with
        everything before it written first, so the order of events is the sequential one."""
        t = now()
        outcomes: list[ReportOutcome] = []
        notices: Notices = []
        seen: list[tuple[str, dict[str, Any] | None]] = []  # activity to note after the commit
        with self.db.write(serial=True) as s:
            conn = s.connection()
            devs = sorted({r.device_id for r in reports})
            seqs = sorted({r.seq for r in reports if r.seq is not None})
            stored: set[tuple[str, int]] = set()
            targets: dict[tuple[str, str], int | None] = {}
            assigned: dict[tuple[int, str], list[Any]] = {}  # (deployment, device) -> [stage, status]
            for chunk in id_chunks(s, devs):
                if seqs:
                    stored.update((d, int(q or 0)) for d, q in conn.execute(
                        select(Report.device_id, Report.seq).where(member_of(s, Report.device_id, chunk),
                                                                   Report.seq.in_(seqs))))
                for d, task, dep_id in conn.execute(select(DeviceTarget.device_id, DeviceTarget.task,
                                                           DeviceTarget.deployment_id)
                                                    .where(member_of(s, DeviceTarget.device_id, chunk))):
                    targets[(d, task)] = dep_id
                for dep_id, d, stage, status in conn.execute(select(
                        Assignment.deployment_id, Assignment.device_id, Assignment.stage, Assignment.status)
                        .where(member_of(s, Assignment.device_id, chunk))):
                    assigned[(int(dep_id), d)] = [int(stage), status]
            dep_ids = sorted({r.deployment_id for r in reports if r.deployment_id is not None} |
                             {v for v in targets.values() if v is not None})
            deps = {d.id: d for d in s.scalars(select(Deployment).where(Deployment.id.in_(dep_ids))
                                               .order_by(Deployment.id).with_for_update())} if dep_ids else {}
            counts = {i: self.rollout.counts(s, d) for i, d in deps.items()}
            rows: list[dict[str, Any]] = []
            updates: dict[tuple[int, str], dict[str, Any]] = {}
            deltas: dict[int, Counter[tuple[int, str]]] = defaultdict(Counter)

            def flush() -> None:
                if rows:
                    conn.execute(insert(Report), rows)
                if updates:
                    conn.execute(update(Assignment).where(Assignment.deployment_id == bindparam("b_dep"),
                                                          Assignment.device_id == bindparam("b_dev"))
                                 .values(status=bindparam("b_status"), error=bindparam("b_error"),
                                         updated_at=bindparam("b_t")), list(updates.values()))
                for dep_id, delta in sorted(deltas.items()):
                    self.rollout.bump(s, dep_id, delta)
                rows.clear()
                updates.clear()
                deltas.clear()

            stage_opened = False
            for r in reports:
                if r.seq is not None and (r.device_id, r.seq) in stored:
                    seen.append((r.device_id, None))
                    outcomes.append((True, r.deployment_id))
                    continue
                dep_id = r.deployment_id
                if dep_id is None:
                    if (r.device_id, r.task) not in targets and not (
                            stage_opened and self._target_now(s, r.device_id, r.task, targets)):
                        outcomes.append(Forbidden(f"task {r.task} was never deployed to device {r.device_id}"))
                        continue
                    dep_id = targets[(r.device_id, r.task)]
                elif (dep_id, r.device_id) not in assigned and not (
                        stage_opened and self._assigned_now(s, dep_id, r.device_id, assigned)):
                    outcomes.append(Forbidden(f"deployment {dep_id} does not target device {r.device_id}"))
                    continue
                dep = deps.get(dep_id) if dep_id is not None else None
                if dep_id is not None and dep is None:
                    outcomes.append(NotFound(f"deployment {dep_id} not found"))
                    continue
                if dep is not None and dep.task != r.task:
                    outcomes.append(Invalid(f"deployment {dep.id} is for task {dep.task}, not {r.task}"))
                    continue
                if r.seq is not None:
                    stored.add((r.device_id, r.seq))
                rows.append({"device_id": r.device_id, "seq": r.seq, "deployment_id": dep_id, "task": r.task,
                             "version": r.version, "status": r.status, "error": r.error, "metrics": r.metrics,
                             "created_at": t})
                outcomes.append((False, dep_id))
                seen.append((r.device_id, r.metrics))
                if dep is None or r.version != dep.version:
                    continue
                row = assigned.get((dep.id, r.device_id))
                if row is None and stage_opened and self._assigned_now(s, dep.id, r.device_id, assigned):
                    row = assigned[(dep.id, r.device_id)]
                if row is None:
                    continue
                updates[(dep.id, r.device_id)] = {"b_dep": dep.id, "b_dev": r.device_id, "b_status": r.status,
                                                  "b_error": r.error, "b_t": t}
                if row[1] != r.status:
                    deltas[dep.id][(row[0], row[1])] -= 1
                    deltas[dep.id][(row[0], r.status)] += 1
                    counts[dep.id][row[1]] -= 1
                    counts[dep.id][r.status] += 1
                    row[1] = r.status
                if r.status in OK_STATUSES + ERROR_STATUSES and self.rollout.gate(dep, counts[dep.id]) is not None:
                    flush()
                    notices += self.rollout.evaluate(s, dep)
                    counts[dep.id] = self.rollout.counts(s, dep)
                    stage_opened = True
            flush()
        # last_seen and the device's metrics summary are written behind; the report rows (with
        # their metrics) committed above.
        for did, metrics in seen:
            self.activity.note(did, t, metrics)
        return outcomes, notices

    @staticmethod
    def _target_now(s: Session, device_id: str, task: str, targets: dict[tuple[str, str], int | None]) -> bool:
        """A target a stage opened earlier in this batch (not in the batch's first read)."""
        row = s.execute(select(DeviceTarget.deployment_id).where(
            DeviceTarget.device_id == device_id, DeviceTarget.task == task)).first()
        if row is not None:
            targets[(device_id, task)] = row.deployment_id
        return row is not None

    @staticmethod
    def _assigned_now(s: Session, dep_id: int, device_id: str, assigned: dict[tuple[int, str], list[Any]]) -> bool:
        """An assignment a stage opened earlier in this batch (not in the batch's first read)."""
        row = s.execute(select(Assignment.stage, Assignment.status).where(
            Assignment.deployment_id == dep_id, Assignment.device_id == device_id)).first()
        if row is not None:
            assigned[(dep_id, device_id)] = [int(row.stage), row.status]
        return row is not None


@dataclass(frozen=True)
class DeviceReport:
    """One status report as a device sent it (``POST /v1/device/reports``)."""

    device_id: str
    task: str
    version: str
    status: str
    deployment_id: int | None
    error: str
    metrics: dict[str, Any]
    seq: int | None


ReportOutcome = tuple[bool, int | None] | RegistryError  # (duplicate, deployment id) or the refusal


class ReportQueue:
    """Group commit of the status reports of one replica: a request queues its report and waits;
    one drain task at a time writes everything queued meanwhile with
    :meth:`Deployments.report_many` (one transaction, one notice lock), then answers each
    request. A report is answered only after its transaction committed, as before; under load
    many reports share a commit instead of queueing one by one on the notice lock."""

    def __init__(self, deployments: Deployments, publish: Callable[[Notices], None], max_batch: int = 1000) -> None:
        self.deployments, self.publish, self.max_batch = deployments, publish, max_batch
        self._pending: list[tuple[DeviceReport, asyncio.Future[tuple[bool, int | None]]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, report: DeviceReport) -> tuple[bool, int | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[bool, int | None]] = loop.create_future()
        self._pending.append((report, fut))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            items = [r for r, _ in batch]
            try:
                outcomes, notices = await asyncio.to_thread(self.deployments.report_many, items)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    continue
                # one report may be what failed the transaction: the others must not share its fate
                for r, f in batch:
                    await self._one(r, f)
                continue
            if notices:
                self.publish(notices)
            for (_, fut), out in zip(batch, outcomes, strict=True):
                _settle(fut, out)

    async def _one(self, report: DeviceReport, fut: asyncio.Future[tuple[bool, int | None]]) -> None:
        try:
            outcomes, notices = await asyncio.to_thread(self.deployments.report_many, [report])
        except Exception as exc:
            _settle(fut, exc)
            return
        if notices:
            self.publish(notices)
        _settle(fut, outcomes[0])


def _settle(fut: asyncio.Future[tuple[bool, int | None]], out: ReportOutcome | Exception) -> None:
    if fut.done():  # the request went away (client disconnected)
        return
    if isinstance(out, BaseException):
        fut.set_exception(out)
    else:
        fut.set_result(out)


def deployment_dict(dep: Deployment) -> dict[str, Any]:
    return {k: getattr(dep, k) for k in (
        "id", "task", "version", "previous_version", "state", "reason", "current_stage", "stages", "percentage",
        "seed", "device_ids", "filters", "success_threshold", "error_threshold", "min_sample", "priority",
        "created_by", "created_at", "updated_at")}
