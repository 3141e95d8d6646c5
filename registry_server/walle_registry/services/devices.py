"""Devices: registration (and re-keying), attributes, heartbeats, notices and targets.

Heartbeats stay off the database: ``last_seen``, check-in metrics and acknowledged cursors go to
a write-behind buffer (:class:`DeviceActivity`) that a background thread flushes every
``activity_flush_s``; reads that expose those fields flush first. The newest notice seq and the
acknowledged cursor of each device are kept in memory (:class:`MonotoneMap`), so a check-in is
answered without a query.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from walle_registry import auth
from walle_registry.cache import DeviceActivity, MonotoneMap
from walle_registry.db import Database
from walle_registry.errors import Forbidden, NotFound
from walle_registry.models import Assignment, Device, DeviceTarget, Notice
from walle_registry.schemas import Attributes
from walle_registry.services.common import Notices, chunks, notice_dict, now
from walle_registry.services.credentials import Credentials
from walle_registry.services.rollout import Rollout
from walle_registry.settings import Settings

log = logging.getLogger("walle_registry.devices")


class Devices:
    def __init__(self, db: Database, settings: Settings, credentials: Credentials, rollout: Rollout) -> None:
        self.db, self.settings, self.credentials, self.rollout = db, settings, credentials, rollout
        # With PostgreSQL other replicas write too. Every committed notice reaches every replica
        # through the broker (``observe_notices``), and a replica whose LISTEN connection dropped
        # forgets them all (``forget_latest``), so the newest seq stays exact; the TTL is only a
        # backstop. A cursor acknowledged on another replica is seen here late, which at worst
        # answers a check-in with an older cursor than the device sent elsewhere (harmless: the
        # device's own cursor rules). SQLite has a single writer process.
        shared = db.is_postgres
        self.latest = MonotoneMap(ttl=settings.device_cache_ttl_s if shared else None)  # device -> newest notice seq
        self.cursors = MonotoneMap(ttl=settings.device_cache_ttl_s if shared else None)  # device -> acknowledged cursor
        self.activity = DeviceActivity()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def observe_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        self.latest.raise_many((str(n["device"]), int(n["seq"])) for n in notices)

    def forget_latest(self) -> None:
        """Notices may have been missed (the broker's channel was down): re-read on next use."""
        self.latest.clear()

    # ------------------------------------------------------------------ heartbeat write-behind

    def start(self) -> None:
        if self._flusher is None and self.settings.activity_flush_s > 0:
            self._stop.clear()
            self._flusher = threading.Thread(target=self._flush_loop, name="walle-activity", daemon=True)
            self._flusher.start()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(10)
            self._flusher = None
        self.flush_activity()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.settings.activity_flush_s):
            try:
                self.flush_activity()
            except Exception as exc:  # database briefly unavailable: the batch was re-queued
                log.warning("flushing device activity failed: %s", exc)

    def flush_activity(self) -> None:
        """Write buffered last_seen / check-in metrics / cursors (one transaction)."""
        with self._flush_lock:
            seen, metrics, cursor = self.activity.take()
            if not seen:
                return
            try:
                if self.db.is_postgres:
                    self._flush_postgres(seen, metrics, cursor)
                    return
                with self.db.write() as s:
                    ids = sorted(seen)
                    conn = s.connection()  # Core executemany (the ORM would bulk-update by primary key)
                    conn.execute(update(Device).where(Device.id == bindparam("did")).values(last_seen=bindparam("t")),
                                 [{"did": d, "t": seen[d]} for d in ids])
                    if cursor:
                        conn.execute(update(Device).where(Device.id == bindparam("did"), Device.cursor < bindparam("cur"))
                                     .values(cursor=bindparam("cur")),
                                     [{"did": d, "cur": v} for d, v in sorted(cursor.items())])
                    if metrics:
                        merged: list[dict[str, Any]] = []
                        for chunk in chunks(sorted(metrics)):
                            for did, old in s.execute(select(Device.id, Device.metrics).where(Device.id.in_(chunk))):
                                merged.append({"did": did, "m": {**(old or {}), **metrics[did]}})
                        if merged:
                            conn.execute(update(Device).where(Device.id == bindparam("did"))
                                         .values(metrics=bindparam("m", type_=Device.__table__.c.metrics.type)), merged)
            except BaseException:
                self.activity.give_back(seen, metrics, cursor)
                raise

    def _flush_postgres(self, seen: dict[str, float], metrics: dict[str, dict[str, Any]],
                        cursor: dict[str, int]) -> None:
        """One ``UPDATE ... FROM json_to_recordset(:rows)`` for the whole batch: last_seen set,
        the cursor raised, the metrics merged key by key (``jsonb ||``, as ``{**old, **new}``).
        The per-row statements cost ~10 µs of Python each, which at thousands of distinct devices
        per flush was a sizeable share of a check-in."""
        rows = [{"did": d, "t": t, "cur": cursor.get(d), "m": metrics.get(d)} for d, t in sorted(seen.items())]
        with self.db.write() as s:
            s.execute(text(
                "UPDATE devices AS d SET last_seen = x.t, "
                "cursor = CASE WHEN x.cur IS NOT NULL AND x.cur > d.cursor THEN x.cur ELSE d.cursor END, "
                "metrics = CASE WHEN x.m IS NULL THEN d.metrics "
                "ELSE (COALESCE(d.metrics::jsonb, '{}'::jsonb) || x.m::jsonb)::json END "
                "FROM json_to_recordset(CAST(:rows AS json)) AS x(did varchar, t float, cur bigint, m json) "
                "WHERE d.id = x.did"), {"rows": json.dumps(rows, separators=(",", ":"))})

    # ------------------------------------------------------------------ registration

    def register(self, device_id: str | None, attrs: Attributes, may_rekey: bool = False) -> tuple[str, str, Notices]:
        """Create a device (or, with ``may_rekey``, re-key an existing id) and join it to the
        deployments it matches."""
        did = device_id or f"dev-{uuid.uuid4().hex[:16]}"
        secret = auth.new_secret(auth.DEVICE_PREFIX)
        data = attrs.model_dump()
        old_hash: str | None = None
        with self.db.write(serial=True) as s:
            dev = s.get(Device, did)
            if dev is None:
                s.add(Device(id=did, token_hash=auth.hash_secret(secret), attributes=data, registered_at=now(),
                             last_seen=now(), cursor=0, metrics={}))
            else:
                if not may_rekey:
                    raise Forbidden(f"device {did} is already registered; re-registering it needs its own "
                                    "credential or an admin token")
                old_hash = dev.token_hash
                dev.token_hash, dev.attributes, dev.last_seen = auth.hash_secret(secret), data, now()
            s.flush()
            notices = self.rollout.join(s, did, data, new_device=old_hash is None)
        if old_hash is not None:  # re-keyed: the previous credential stops working now
            self.credentials.drop(old_hash)
        else:  # a new device: cursor 0, and its only notices are the ones just written
            self.cursors.raise_to(did, 0, loaded=True)
            self.latest.raise_to(did, max((int(n["seq"]) for n in notices), default=0), loaded=True)
        return did, secret, notices

    def update_attributes(self, device_id: str, attrs: Attributes) -> Notices:
        data = attrs.model_dump()
        with self.db.write(serial=True) as s:
            dev = _device(s, device_id)
            dev.attributes, dev.last_seen = data, now()
            return self.rollout.join(s, device_id, data, new_device=False)

    # ------------------------------------------------------------------ reads

    def page(self, limit: int = 1000, offset: int = 0) -> list[tuple[Device, dict[str, str | None]]]:
        self.flush_activity()
        with self.db.read() as s:
            devs = list(s.scalars(select(Device).order_by(Device.id).limit(limit).offset(offset)))
            targets: dict[str, dict[str, str | None]] = defaultdict(dict)
            for chunk in chunks([d.id for d in devs]):
                for t in s.scalars(select(DeviceTarget).where(DeviceTarget.device_id.in_(chunk))):
                    targets[t.device_id][t.task] = t.version
            return [(d, targets.get(d.id, {})) for d in devs]

    def count(self) -> int:
        with self.db.read() as s:
            return int(s.scalar(select(func.count()).select_from(Device)) or 0)

    def get(self, device_id: str) -> Device:
        self.flush_activity()
        with self.db.read() as s:
            return _device(s, device_id)

    def status_counts(self) -> dict[str, int]:
        """Devices in total, online and offline, and assignments by status (the console's tiles)."""
        cutoff = now() - self.settings.online_window_s
        self.flush_activity()
        with self.db.read() as s:
            total = int(s.scalar(select(func.count()).select_from(Device)) or 0)
            online = int(s.scalar(select(func.count()).select_from(Device).where(Device.last_seen >= cutoff)) or 0)
            by_status = {st: int(n) for st, n in s.execute(
                select(Assignment.status, func.count()).group_by(Assignment.status))}
        return {"total": total, "online": online, "offline": total - online, **{f"status:{k}": v for k, v in
                                                                                 by_status.items()}}

    # ------------------------------------------------------------------ check-ins and notices

    def checkin_cached(self, device_id: str, metrics: dict[str, Any], cursor: int | None) -> tuple[int, int] | None:
        """A check-in answered from memory (no database access); None when the device's cursor or
        newest notice is not cached yet (then call :meth:`checkin`). The heartbeat itself is
        written behind (``activity_flush_s``)."""
        known, latest = self.cursors.get(device_id), self.latest.get(device_id)
        if known is None or latest is None:
            return None
        self.activity.note(device_id, now(), metrics, cursor)
        if cursor is not None and cursor > known:
            known = self.cursors.raise_to(device_id, cursor)
        return known, latest

    def checkin(self, device_id: str, metrics: dict[str, Any], cursor: int | None) -> tuple[int, int]:
        self._load_ints(device_id)
        out = self.checkin_cached(device_id, metrics, cursor)
        assert out is not None
        return out

    def _load_ints(self, device_id: str) -> None:
        with self.db.read() as s:
            dev_cursor = s.scalar(select(Device.cursor).where(Device.id == device_id))
            if dev_cursor is None:
                raise NotFound(f"device {device_id} not found")
            latest = s.scalar(select(func.max(Notice.seq)).where(Notice.device_id == device_id)) or 0
        self.cursors.raise_to(device_id, int(dev_cursor), loaded=True)
        self.latest.raise_to(device_id, int(latest), loaded=True)

    def cursor(self, device_id: str, warm: bool = False) -> int:
        """The cursor the device acknowledged (including check-ins not flushed yet); ``warm``
        also loads the newest notice seq, so the device's check-ins need no database access."""
        known = self.cursors.get(device_id)
        if known is None or (warm and self.latest.get(device_id) is None):
            self._load_ints(device_id)
            known = self.cursors.get(device_id) or 0
        return known

    def touch(self, device_id: str) -> None:
        """Record that the device was seen (written behind)."""
        self.activity.note(device_id, now())

    def notices_after(self, device_id: str, cursor: int, limit: int = 500) -> Notices:
        with self.db.read() as s:
            rows = s.scalars(select(Notice).where(Notice.device_id == device_id, Notice.seq > cursor)
                             .order_by(Notice.seq).limit(limit))
            return [notice_dict(n) for n in rows]

    def targets(self, device_id: str) -> list[DeviceTarget]:
        with self.db.read() as s:
            _device(s, device_id)
            return list(s.scalars(select(DeviceTarget).where(DeviceTarget.device_id == device_id)
                                  .order_by(DeviceTarget.task)))


def _device(s: Session, device_id: str) -> Device:
    dev = s.get(Device, device_id)
    if dev is None:
        raise NotFound(f"device {device_id} not found")
    return dev
