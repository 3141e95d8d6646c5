"""In-memory state that keeps the hot device paths off the database.

* :class:`AuthCache` — credential digest (sha256 of the secret, never the secret) -> principal.
  Entries expire after ``ttl`` seconds (a backstop for other replicas); revocation and device
  re-keying drop them at once, and a *generation* counter stops a lookup that raced with a
  revocation from caching the old answer.
* :class:`DeviceActivity` — write-behind buffer for heartbeat data (``last_seen``, check-in
  metrics, acknowledged cursor). A background thread flushes it in one transaction every few
  hundred milliseconds; reads that expose those fields flush first. Status reports are *not*
  buffered: they commit before the device gets its answer.
* :class:`MonotoneMap` — per-device integers that only grow (newest notice seq, acknowledged
  cursor); concurrent updates merge with ``max`` so a late, stale load can never lower them.
* :class:`BlobCache` — bytes of small blobs. Blobs are content addressed and immutable, so a
  cached blob is never stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class AuthCache(Generic[V]):
    """digest -> principal with a TTL and race-safe invalidation."""

    def __init__(self, ttl: float = 30.0, max_entries: int = 500_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._data: dict[str, tuple[V, float]] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def get(self, digest: str) -> V | None:
        hit = self._data.get(digest)
        if hit is None:
            return None
        value, expires = hit
        if self.clock() >= expires:
            self._data.pop(digest, None)
            return None
        return value

    def put(self, digest: str, value: V, generation: int) -> None:
        """Cache unless an invalidation happened since ``generation`` was read."""
        with self._lock:
            if generation != self.generation:
                return
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[digest] = (value, self.clock() + self.ttl)

    def drop(self, *digests: str) -> None:
        with self._lock:
            self.generation += 1
            for d in digests:
                self._data.pop(d, None)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class MonotoneMap:
    """key -> int that only grows; optional TTL after which :meth:`get` reports a miss.

    A value merged before the key was ever loaded is kept as a floor but not reported (it is not
    authoritative); the next load merges with it, so an update that lands between a load's read
    and its write-back is never lost."""

    def __init__(self, ttl: float | None = None, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._data: dict[str, tuple[int, float | None]] = {}  # value, time loaded (None: a floor only)
        self._lock = threading.Lock()

    def get(self, key: str) -> int | None:
        hit = self._data.get(key)
        if hit is None or hit[1] is None:
            return None
        if self.ttl is not None and self.clock() - hit[1] > self.ttl:
            return None
        return hit[0]

    def raise_to(self, key: str, value: int, loaded: bool = False) -> int:
        """Merge ``value`` (max); ``loaded=True`` marks an authoritative read (starts the TTL)."""
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                if len(self._data) >= self.max_entries:
                    self._data.clear()
                self._data[key] = (value, self.clock() if loaded else None)
                return value
            best = max(hit[0], value)
            self._data[key] = (best, self.clock() if loaded else hit[1])
            return best

    def raise_many(self, items: Iterable[tuple[str, int]]) -> None:
        """:meth:`raise_to` (not loaded) for many keys under one lock acquisition (a broker batch)."""
        data = self._data
        with self._lock:
            for key, value in items:
                hit = data.get(key)
                if hit is None:
                    if len(data) >= self.max_entries:
                        data.clear()
                    data[key] = (value, None)
                elif value > hit[0]:
                    data[key] = (value, hit[1])

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class DeviceActivity:
    """Pending heartbeat writes, coalesced per device."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: dict[str, float] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.cursor: dict[str, int] = {}

    def note(self, device_id: str, at: float, metrics: dict[str, Any] | None = None,
             cursor: int | None = None) -> None:
        with self._lock:
            self.seen[device_id] = max(at, self.seen.get(device_id, 0.0))
            if metrics:
                self.metrics[device_id] = {**self.metrics.get(device_id, {}), **metrics}
            if cursor is not None and cursor > self.cursor.get(device_id, -1):
                self.cursor[device_id] = cursor

    def take(self) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, int]]:
        with self._lock:
            out = self.seen, self.metrics, self.cursor
            self.seen, self.metrics, self.cursor = {}, {}, {}
        return out

    def give_back(self, seen: dict[str, float], metrics: dict[str, dict[str, Any]], cursor: dict[str, int]) -> None:
        """Re-queue a batch whose flush failed (newer notes win)."""
        with self._lock:
            for d, t in seen.items():
                self.seen[d] = max(t, self.seen.get(d, 0.0))
            for d, m in metrics.items():
                self.metrics[d] = {**m, **self.metrics.get(d, {})}
            for d, c in cursor.items():
                self.cursor[d] = max(c, self.cursor.get(d, -1))

    def pending(self) -> int:
        return len(self.seen)


class BlobCache:
    """LRU of small immutable blobs (bytes), bounded in item size and total size."""

    def __init__(self, max_item: int = 1 << 20, max_total: int = 64 << 20) -> None:
        self.max_item, self.max_total = max_item, max_total
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, sha256: str) -> bytes | None:
        with self._lock:
            data = self._data.get(sha256)
            if data is not None:
                self._data.move_to_end(sha256)
            return data

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > self.max_item:
            return
        with self._lock:
            if sha256 in self._data:
                return
            self._data[sha256] = data
            self._total += len(data)
            while self._total > self.max_total and self._data:
                _, old = self._data.popitem(last=False)
                self._total -= len(old)

    def drop(self, sha256: str) -> None:
        with self._lock:
            old = self._data.pop(sha256, None)
            if old is not None:
                self._total -= len(old)
