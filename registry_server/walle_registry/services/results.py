"""Results: task outputs that devices upload through the pipeline tunnel, idempotent per
``(device, seq)``, and the paged query publishers read them with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from walle_registry.cache import DeviceActivity
from walle_registry.db import Database
from walle_registry.errors import Forbidden
from walle_registry.models import Result
from walle_registry.schemas import ResultsBatch
from walle_registry.services.common import IN_CHUNK, insert_ignore, now
from walle_registry.services.grants import Grants


class Results:
    def __init__(self, db: Database, activity: DeviceActivity, grants: Grants) -> None:
        self.db, self.activity, self.grants = db, activity, grants

    def ingest(self, device_id: str, batch: ResultsBatch, task: str, version: str) -> tuple[int, int]:
        """Store a batch; returns (accepted, duplicates)."""
        if batch.device not in (None, device_id):
            raise Forbidden(f"this credential belongs to device {device_id}, not {batch.device!r}")
        batch_task = batch.task or task
        batch_version = batch.version or version
        rows: dict[int, dict[str, Any]] = {}
        t = now()
        for item in batch.items:
            rows[item.seq] = {
                "device_id": device_id, "seq": item.seq, "task": item.task or batch_task,
                "version": item.version or batch_version, "name": item.name, "key": item.key, "ts": item.ts,
                "value": item.output(), "received_at": t,
            }
        for task_name, task_version in sorted({(r["task"], r["version"]) for r in rows.values()}):
            if not self.grants.may_write_results(device_id, task_name, task_version):
                raise Forbidden(f"task {task_name or '(none)'} {task_version} was never deployed to device "
                                f"{device_id}")
        if not rows:
            return 0, 0
        with self.db.write() as s:
            existing: set[int] = set()
            seqs = list(rows)
            for i in range(0, len(seqs), IN_CHUNK):
                existing.update(int(x) for x in s.scalars(select(Result.seq).where(
                    Result.device_id == device_id, Result.seq.in_(seqs[i:i + IN_CHUNK]))))
            new = [rows[q] for q in seqs if q not in existing]
            if new:
                s.execute(insert_ignore(self.db.dialect, Result, new, ["device_id", "seq"]))
        self.activity.note(device_id, t)
        return len(new), len(rows) - len(new) + (len(batch.items) - len(rows))

    def query(self, task: str, version: str | None = None, device: str | None = None, after: int = 0,
              limit: int = 100) -> list[Result]:
        with self.db.read() as s:
            q = select(Result).where(Result.task == task, Result.id > after)
            if version:
                q = q.where(Result.version == version)
            if device:
                q = q.where(Result.device_id == device)
            return list(s.scalars(q.order_by(Result.id).limit(limit)))
