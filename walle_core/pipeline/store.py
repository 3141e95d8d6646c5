"""The on-device store: events, features and the upload outbox in one SQLite database (WAL).

One database so that an event, the features it produced and their outbox entries commit in one
transaction: after a crash either all of them are there or none is. Every output has a
deterministic id, so re-deriving it after a restart is an ``INSERT OR IGNORE`` no-op.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walle_core import flags
from walle_core.pipeline.events import Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL, event_id TEXT NOT NULL, page TEXT NOT NULL,
    ts INTEGER NOT NULL, args TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS features (
    fid TEXT PRIMARY KEY, key TEXT NOT NULL, name TEXT NOT NULL,
    ts INTEGER NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS features_key_ts ON features(key, ts);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT NOT NULL, body TEXT NOT NULL,
    reason TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def event_uid(ev: Event) -> str:
    """Content id of an event: a producer re-sending after a crash does not store it twice."""
    raw = json.dumps(
        [ev.key, ev.event_id, ev.page, ev.timestamp_ms, ev.args], sort_keys=True, separators=(",", ":")
    )
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Feature:
    fid: str
    key: str
    name: str
    ts: int
    value: Any


class Store:
    """Events (bounded by age and count), features (by key and time) and the outbox."""

    def __init__(
        self,
        path: Path | str,
        *,
        retention_ms: int | None = 7 * 24 * 3600 * 1000,
        max_events: int | None = 1_000_000,
        sync: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_ms = retention_ms
        self.max_events = max_events
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in transaction()).
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={(sync or flags.pipeline_sync()).upper()}")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ events

    def add_event(self, ev: Event, uid: str | None = None) -> tuple[Event, bool]:
        """Insert inside the caller's transaction; return the stored event and whether it is new.

        Looks the uid up first: an ``INSERT OR IGNORE`` that hits the unique index can still
        consume an AUTOINCREMENT value, and sequence gaps would make replayed ids differ."""
        uid = uid or event_uid(ev)
        seq = self.event_seq(uid)
        if seq is not None:
            return _with_seq(ev, seq), False
        cur = self.db.execute(
            "INSERT INTO events(uid, key, event_id, page, ts, args) VALUES (?,?,?,?,?,?)",
            (uid, ev.key, ev.event_id, ev.page, ev.timestamp_ms, json.dumps(ev.args)),
        )
        return _with_seq(ev, int(cur.lastrowid or 0)), True

    def event_seq(self, uid: str) -> int | None:
        """The sequence number of an already stored event, or None."""
        row = self.db.execute("SELECT seq FROM events WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else int(row[0])

    def events(self, after_seq: int = 0, key: str | None = None) -> Iterator[Event]:
        q = "SELECT seq, key, event_id, page, ts, args FROM events WHERE seq > ?"
        params: list[Any] = [after_seq]
        if key is not None:
            q += " AND key = ?"
            params.append(key)
        for seq, k, eid, page, ts, args in self.db.execute(q + " ORDER BY seq", params):
            yield Event(eid, page, ts, json.loads(args), k, seq)

    def count_events(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def evict(self, now_ms: int | None = None) -> int:
        """Drop events older than the retention and the oldest beyond ``max_events``."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        removed = 0
        with self.transaction() as db:
            if self.retention_ms is not None:
                removed += db.execute("DELETE FROM events WHERE ts < ?", (now_ms - self.retention_ms,)).rowcount
            if self.max_events is not None:
                removed += db.execute(
                    "DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (self.max_events,),
                ).rowcount
        return removed

    # ------------------------------------------------------------------ features and outbox

    def has_feature(self, fid: str) -> bool:
        return self.db.execute("SELECT 1 FROM features WHERE fid = ?", (fid,)).fetchone() is not None

    def put_feature(self, f: Feature, upload: bool = True) -> bool:
        """Insert inside the caller's transaction (no-op if ``fid`` exists); queue it for upload."""
        body = json.dumps(f.value, sort_keys=True)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO features(fid, key, name, ts, value) VALUES (?,?,?,?,?)",
            (f.fid, f.key, f.name, f.ts, body),
        )
        if cur.rowcount and upload:
            payload = {"fid": f.fid, "key": f.key, "name": f.name, "ts": f.ts, "value": f.value}
            self.db.execute(
                "INSERT OR IGNORE INTO outbox(uid, body) VALUES (?, ?)", (f.fid, json.dumps(payload))
            )
        return bool(cur.rowcount)

    def features(
        self, key: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
        name: str | None = None,
    ) -> list[Feature]:
        """Features by key, name and time range ``[since, until)``, oldest first."""
        q, params = "SELECT fid, key, name, ts, value FROM features WHERE 1=1", []
        for clause, v in (("key = ?", key), ("ts >= ?", since_ms), ("ts < ?", until_ms), ("name = ?", name)):
            if v is not None:
                q += f" AND {clause}"
                params.append(v)
        rows = self.db.execute(q + " ORDER BY ts, fid", params)
        return [Feature(fid, k, n, ts, json.loads(v)) for fid, k, n, ts, v in rows]

    def dead_letter(self, what: str, body: str, reason: str) -> None:
        self.db.execute(
            "INSERT INTO dead_letter(what, body, reason, at_ms) VALUES (?,?,?,?)",
            (what, body, reason, int(time.time() * 1000)),
        )

    def dead_letters(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self.db.execute("SELECT what, body, reason FROM dead_letter ORDER BY id")]

    def outbox_batch(self, limit: int) -> list[tuple[int, str]]:
        return [(int(s), b) for s, b in self.db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,))]

    def outbox_ack(self, seqs: Sequence[int]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def outbox_reject(self, rows: Sequence[tuple[int, str]], reason: str) -> None:
        with self.transaction() as db:
            for seq, body in rows:
                self.dead_letter("upload", body, reason)
                db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def outbox_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def meta(self, name: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))


def _with_seq(ev: Event, seq: int) -> Event:
    return Event(ev.event_id, ev.page, ev.timestamp_ms, ev.args, ev.key, seq)
