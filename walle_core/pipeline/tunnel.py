"""The upload tunnel: outbox rows -> gzip JSON batches -> HTTP POST, retried with back-off.

Rows stay in the on-disk outbox until the server acknowledges their batch, so nothing is lost
across restarts. Every item carries ``(device, seq)`` (``seq`` is the outbox row id, assigned once
when the feature is first produced), so a batch resent after a lost acknowledgement is
de-duplicated by the cloud. Wire format (``Content-Encoding: gzip``)::

    {"device": "dev-1", "items": [{"seq": 17, "fid": "...", "key": "...", "name": "...",
                                    "ts": 0, "value": ...}, ...]}
"""

from __future__ import annotations

import gzip
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from walle_core.pipeline.errors import UploadError
from walle_core.pipeline.store import Store

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class UploadStats:
    batches: int = 0
    items: int = 0
    attempts: int = 0
    retries: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    last_error: str = ""
    errors: list[str] = field(default_factory=list)


class Uploader:
    """Drains a :class:`Store` outbox to ``url``."""

    def __init__(
        self,
        store: Store,
        url: str,
        device: str,
        *,
        batch_size: int = 500,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        item_fields: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        self.store, self.url, self.device = store, url, device
        self.batch_size, self.max_attempts = batch_size, max_attempts
        self.backoff_s, self.backoff_max_s, self.timeout_s = backoff_s, backoff_max_s, timeout_s
        self.sleep = sleep
        # Extra top-level fields per item, e.g. the task and version a result belongs to (the
        # device agent files several tasks' results through one outbox).
        self.item_fields = item_fields
        self.stats = UploadStats()

    def _post(self, body: bytes) -> int:
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def flush(self) -> int:
        """Upload until the outbox is empty or a batch exhausts its attempts; return items sent.

        Transient failures (connection errors, 408/429/5xx) are retried with exponential back-off
        and jitter; after ``max_attempts`` the rows stay in the outbox for the next flush. A 4xx
        answer means the batch will never be accepted: its rows move to the dead-letter table.
        """
        sent = 0
        while True:
            rows = self.store.outbox_batch(self.batch_size)
            if not rows:
                return sent
            items = [{"seq": seq, **json.loads(body)} for seq, body in rows]
            if self.item_fields is not None:
                items = [{**item, **self.item_fields(item)} for item in items]
            payload = gzip.compress(json.dumps({"device": self.device, "items": items}).encode())
            if not self._send(payload, rows):
                return sent
            self.store.outbox_ack([s for s, _ in rows])
            self.stats.batches += 1
            self.stats.items += len(rows)
            self.stats.bytes_sent += len(payload)
            sent += len(rows)

    def _send(self, payload: bytes, rows: list[tuple[int, str]]) -> bool:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            self.stats.attempts += 1
            try:
                status = self._post(payload)
                reason = f"HTTP {status}"
            except (OSError, urllib.error.URLError) as exc:  # refused, reset, timed out
                status, reason = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                return True
            if status and status not in RETRYABLE_STATUS:
                self.stats.rejected += len(rows)
                self.store.outbox_reject(rows, reason)
                self.stats.errors.append(reason)
                raise UploadError(f"upload of {len(rows)} item(s) rejected: {reason}")
            self.stats.last_error = reason
            self.stats.errors.append(reason)
            if attempt < self.max_attempts:
                self.stats.retries += 1
                self.sleep(min(delay, self.backoff_max_s) * random.uniform(0.5, 1.0))
                delay *= 2
        return False
