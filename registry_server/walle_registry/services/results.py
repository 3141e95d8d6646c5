"""Results: task outputs that devices upload through the pipeline tunnel, idempotent per
``(device, seq)``, and the paged query publishers read them with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from walle_registry.cache import DeviceActivity
from walle_registry.db import Database
from walle_registry.errors import Forbidden, Invalid
from walle_registry.models import Result
from walle_registry.services.common import IN_CHUNK, insert_ignore, now

ITEM_FIELDS = {"seq", "task", "version", "name", "key", "ts", "value"}


class Results:
    def __init__(self, db: Database, activity: DeviceActivity) -> None:
        self.db, self.activity = db, activity

    def ingest(self, device_id: str, body: dict[str, Any], task: str, version: str) -> tuple[int, int]:
        """Store a batch; returns (accepted, duplicates)."""
        items = body.get("items")
        if not isinstance(items, list):
            raise Invalid("a results batch is {\"items\": [{\"seq\": int, ...}, ...]}")
        if body.get("device") not in (None, device_id):
            raise Forbidden(f"this credential belongs to device {device_id}, not {body.get('device')!r}")
        batch_task = str(body.get("task") or task)
        batch_version = str(body.get("version") or version)
        rows: dict[int, dict[str, Any]] = {}
        t = now()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise Invalid(f"item {i} is not an object")
            seq = item.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**62:
                raise Invalid(f"item {i} needs an integer seq (0 <= seq < 2**62)")
            value = item["value"] if "value" in item else {k: v for k, v in item.items() if k not in ITEM_FIELDS}
            ts = item.get("ts", 0)
            rows[seq] = {
                "device_id": device_id, "seq": seq,
                "task": str(item.get("task") or batch_task)[:64], "version": str(item.get("version") or batch_version)[:64],
                "name": str(item.get("name", ""))[:128], "key": str(item.get("key", ""))[:256],
                "ts": float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0.0,
                "value": value, "received_at": t,
            }
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
        return len(new), len(rows) - len(new) + (len(items) - len(rows))

    def query(self, task: str, version: str | None = None, device: str | None = None, after: int = 0,
              limit: int = 100) -> list[Result]:
        with self.db.read() as s:
            q = select(Result).where(Result.task == task, Result.id > after)
            if version:
                q = q.where(Result.version == version)
            if device:
                q = q.where(Result.device_id == device)
            return list(s.scalars(q.order_by(Result.id).limit(limit)))
