"""Notification fan-out from whoever commits a notice to the stream connections that wait for it.

A replica's device streams subscribe by device id on the replica's event loop. ``publish`` is
called after the notices are committed. :class:`InProcessBroker` delivers within one process;
:class:`PostgresBroker` sends ``pg_notify`` and every replica's listener thread (one ``LISTEN``
connection each) delivers what it receives locally, so any replica can serve any device. The
database stays the source of truth: a stream that connects (or reconnects) first reads the
notices after its cursor, so a notification lost in transit only delays a notice, never drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("walle_registry.broker")
CHANNEL = "walle_notices"
MAX_PAYLOAD = 7000  # PostgreSQL NOTIFY payloads must stay under 8000 bytes
KEEPALIVE: dict[str, Any] = {"keepalive": True}  # queue marker: send an SSE comment
RESYNC: dict[str, Any] = {"resync": True}  # queue marker: notices may have been missed, re-read the database


class InProcessBroker:
    """Fan-out to asyncio queues of this process."""

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Hooks set by the registry: ``on_notices`` sees every delivered notice (this replica's and,
        # through PostgreSQL, the others'); ``on_control`` gets control messages of other replicas.
        self.on_notices: Callable[[Sequence[dict[str, Any]]], None] | None = None
        self.on_control: Callable[[dict[str, Any]], None] | None = None
        self.on_resync: Callable[[], None] | None = None  # notices may have been missed
        # the database connection broke (e.g. the server restarted): pooled connections are stale
        self.on_disconnect: Callable[[], None] | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, device_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        with self._lock:
            self._subs[device_id].add(queue)
        return queue

    def unsubscribe(self, device_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            subs = self._subs.get(device_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subs[device_id]

    def keepalive(self, part: int, parts: int) -> None:
        """Put a keep-alive marker into one ``parts``-th of the stream queues (call on the loop).
        One ticker for all streams replaces a timer per connection."""
        with self._lock:
            queues = [q for subs in self._subs.values() for q in subs if id(q) // 16 % parts == part]
        for q in queues:
            q.put_nowait(KEEPALIVE)

    def resync(self) -> None:
        """Tell every local stream to catch up from the database (thread-safe): called when the
        notification channel was down, so live notices of that gap never arrived."""
        if self.on_resync is not None:
            self.on_resync()
        with self._lock:
            queues = [q for subs in self._subs.values() for q in subs]
        if not queues or self._loop is None:
            return

        def put_all() -> None:
            for q in queues:
                q.put_nowait(RESYNC)

        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(put_all)

    def connected(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def is_connected(self, device_id: str) -> bool:
        with self._lock:
            return bool(self._subs.get(device_id))

    def deliver(self, notices: Sequence[dict[str, Any]]) -> None:
        """Hand notices to local subscribers (thread-safe)."""
        if self.on_notices is not None:
            self.on_notices(notices)
        with self._lock:
            targets = [(q, n) for n in notices for q in self._subs.get(str(n["device"]), ())]
        if not targets or self._loop is None:
            return

        def put_all() -> None:
            for q, n in targets:
                q.put_nowait(n)

        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(put_all)

    def publish(self, notices: Sequence[dict[str, Any]]) -> None:
        self.deliver(notices)

    def publish_control(self, message: dict[str, Any]) -> None:
        """Tell the other replicas (none in process)."""

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class PostgresBroker(InProcessBroker):
    """``NOTIFY walle_notices`` on publish, one ``LISTEN`` thread per replica for delivery.

    Publishing is batched per replica: ``publish`` queues the notices and returns, and one sender
    thread sends everything queued meanwhile in one transaction of payloads packed up to the
    size limit, so a burst of requests that each commit a few notices costs a few ``NOTIFY``
    transactions, not one each, and no request waits for the send.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn.replace("postgresql+psycopg://", "postgresql://")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._send_conn: Any = None
        self.ready = threading.Event()
        self._pending: list[dict[str, Any]] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="walle-pg-listen", daemon=True)
        self._thread.start()
        self._sender = threading.Thread(target=self._send_loop, name="walle-pg-notify", daemon=True)
        self._sender.start()
        self.ready.wait(10)

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if self.ready.is_set():  # a reconnection: notices sent meanwhile were lost
                        self.resync()
                    self.ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            try:
                                payload = json.loads(note.payload)
                                if isinstance(payload, dict):
                                    if self.on_control is not None:
                                        self.on_control(payload)
                                else:
                                    self.deliver(payload)
                            except (ValueError, KeyError, TypeError):
                                log.warning("ignoring malformed notification %r", note.payload[:200])
            except Exception as exc:  # connection lost: reconnect (streams catch up from the DB)
                if self._stop.is_set():
                    return
                log.warning("LISTEN connection failed (%s); retrying", exc)
                if self.on_disconnect is not None:
                    self.on_disconnect()
                self._stop.wait(1.0)

    def publish(self, notices: Sequence[dict[str, Any]]) -> None:
        if self._sender is None:  # not started (tests, tools): send now
            self._notify(self._pack(notices))
            return
        with self._pending_lock:
            self._pending.extend(notices)
        self._wake.set()

    def _send_loop(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            self._flush()
            if self._stop.is_set():
                return

    def _flush(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if batch:
            self._notify(self._pack(batch))

    @staticmethod
    def _pack(notices: Sequence[dict[str, Any]]) -> list[str]:
        """JSON arrays of notices, each payload under PostgreSQL's size limit."""
        chunks: list[str] = []
        batch: list[dict[str, Any]] = []
        size = 2
        for n in notices:
            item = json.dumps(n, separators=(",", ":"))
            if batch and size + len(item) + 1 > MAX_PAYLOAD:
                chunks.append(json.dumps(batch, separators=(",", ":")))
                batch, size = [], 2
            batch.append(n)
            size += len(item) + 1
        if batch:
            chunks.append(json.dumps(batch, separators=(",", ":")))
        return chunks

    def publish_control(self, message: dict[str, Any]) -> None:
        self._notify([json.dumps(message, separators=(",", ":"))])

    def _notify(self, chunks: list[str]) -> None:
        import psycopg

        with self._send_lock:
            for attempt in range(2):
                try:
                    if self._send_conn is None or self._send_conn.closed:
                        self._send_conn = psycopg.connect(self.dsn, autocommit=True)
                    with self._send_conn.transaction():
                        for chunk in chunks:
                            self._send_conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, chunk))
                    return
                except psycopg.OperationalError as exc:
                    self._send_conn = None
                    if attempt:
                        log.warning("NOTIFY failed (%s); devices will catch up on reconnect", exc)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(5)  # it flushes what is queued before it returns
        if self._thread is not None:
            self._thread.join(5)
        if self._send_conn is not None:
            self._send_conn.close()


Broker = InProcessBroker
