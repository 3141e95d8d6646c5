"""What the console shows, read from the database: devices with their health, one device in
detail, task releases. Read-only queries; the services own every write.

A device's **health** comes from its newest report per task (and its open assignments):
``failing`` when the newest report of some task is an error, else ``updating`` while a version is
being delivered (notified or downloading), else ``healthy`` when a task is installed or running,
else ``idle`` (nothing deployed to it). Each device counts once, whatever its number of tasks.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from walle_registry.context import Registry
from walle_registry.errors import NotFound
from walle_registry.models import Assignment, Deployment, Device, DeviceTarget, Release, Report
from walle_registry.services.common import now
from walle_registry.services.rollout import ERROR_STATUSES, OK_STATUSES, PENDING_STATUSES

HEALTH = ("failing", "updating", "healthy", "idle")  # worst first


@dataclass
class DeviceRow:
    id: str
    attributes: dict[str, Any]
    registered_at: float
    last_seen: float
    online: bool
    versions: dict[str, str | None]  # task -> the version it should run (None: removed)
    health: str
    last_error: str = ""
    last_error_at: float = 0.0


@dataclass
class DeviceDetail:
    row: DeviceRow
    metrics: dict[str, Any]
    assignments: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)


def _health(latest: dict[str, str], open_statuses: set[str]) -> str:
    if any(s in ERROR_STATUSES for s in latest.values()):
        return "failing"
    if open_statuses & set(PENDING_STATUSES):
        return "updating"
    if any(s in OK_STATUSES for s in latest.values()) or open_statuses & set(OK_STATUSES):
        return "healthy"
    return "idle"


def devices(reg: Registry, limit: int = 500, only: str | None = None) -> list[DeviceRow]:
    """Devices (or the one named ``only``), most recently seen first, each with its versions,
    health and newest error."""
    reg.devices.flush_activity()  # heartbeats are written behind: show them
    cutoff = now() - reg.settings.online_window_s
    chosen = select(Device.id).order_by(Device.last_seen.desc(), Device.id).limit(limit)
    if only is not None:
        chosen = chosen.where(Device.id == only)
    # the chosen ids as a subquery, not a list of parameters: a fleet outnumbers SQLite's variables
    ids = chosen.subquery().c.id
    with reg.db.read() as s:
        devs = list(s.scalars(select(Device).where(Device.id.in_(select(ids)))
                              .order_by(Device.last_seen.desc(), Device.id)))
        versions: dict[str, dict[str, str | None]] = defaultdict(dict)
        for t in s.scalars(select(DeviceTarget).where(DeviceTarget.device_id.in_(select(ids)))):
            versions[t.device_id][t.task] = t.version
        open_statuses: dict[str, set[str]] = defaultdict(set)
        for device_id, status in s.execute(select(Assignment.device_id, Assignment.status)
                                           .join(Deployment, Deployment.id == Assignment.deployment_id)
                                           .where(Assignment.device_id.in_(select(ids)),
                                                  Deployment.state != "rolled_back")):
            open_statuses[device_id].add(status)
        # the newest report per device and task, and the newest error per device
        newest = select(func.max(Report.id)).where(Report.device_id.in_(select(ids))).group_by(Report.device_id,
                                                                                                 Report.task)
        latest: dict[str, dict[str, str]] = defaultdict(dict)
        for r in s.scalars(select(Report).where(Report.id.in_(newest))):
            latest[r.device_id][r.task] = r.status
        last_error = (select(func.max(Report.id)).where(Report.device_id.in_(select(ids)),
                                                        Report.status.in_(ERROR_STATUSES))
                      .group_by(Report.device_id))
        errors = {r.device_id: r for r in s.scalars(select(Report).where(Report.id.in_(last_error)))}
    return [DeviceRow(d.id, dict(d.attributes), d.registered_at, d.last_seen, d.last_seen >= cutoff,
                      versions[d.id], _health(latest[d.id], open_statuses[d.id]),
                      errors[d.id].error if d.id in errors else "",
                      errors[d.id].created_at if d.id in errors else 0.0) for d in devs]


def health_counts(rows: list[DeviceRow]) -> dict[str, int]:
    """Devices by health (each device once), worst first."""
    c = Counter(r.health for r in rows)
    return {h: c[h] for h in HEALTH}


def device(reg: Registry, device_id: str) -> DeviceDetail:
    rows = devices(reg, only=device_id)
    if not rows:
        raise NotFound(f"device {device_id!r} not found")
    with reg.db.read() as s:
        dev = s.get(Device, device_id)
        metrics = dict(dev.metrics or {}) if dev is not None else {}
        assignments = [{"deployment": a.deployment_id, "task": task, "version": version, "stage": a.stage + 1,
                        "status": a.status, "error": a.error, "at": a.updated_at}
                       for a, task, version in s.execute(
                           select(Assignment, Deployment.task, Deployment.version)
                           .join(Deployment, Deployment.id == Assignment.deployment_id)
                           .where(Assignment.device_id == device_id).order_by(Assignment.deployment_id.desc()))]
        reports = [{"task": r.task, "version": r.version, "status": r.status, "error": r.error,
                    "deployment": r.deployment_id, "at": r.created_at}
                   for r in s.scalars(select(Report).where(Report.device_id == device_id)
                                      .order_by(Report.id.desc()).limit(20))]
    return DeviceDetail(rows[0], metrics, assignments, reports)


def releases(reg: Registry) -> list[dict[str, Any]]:
    """Every published task version, newest first, with how many deployments released it."""
    with reg.db.read() as s:
        deployed = dict(s.execute(select(Deployment.task + "@" + Deployment.version, func.count())
                                  .group_by(Deployment.task, Deployment.version)).all())
        return [{"task": r.task, "version": r.version, "digest": r.manifest_digest, "key_id": r.key_id,
                 "size": r.bundle_size, "at": r.created_at, "deployments": int(deployed.get(f"{r.task}@{r.version}", 0))}
                for r in s.scalars(select(Release).order_by(Release.created_at.desc(), Release.id.desc()))]


def tasks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Releases grouped by task: versions, the newest one, deployments."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    return [{"task": t, "versions": len(rs), "latest": rs[0]["version"], "deployments": sum(r["deployments"] for r in rs)}
            for t, rs in sorted(by_task.items())]
