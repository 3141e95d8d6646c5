"""Upload tunnel against a real HTTP server on 127.0.0.1: batching, gzip, retries, idempotency."""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from walle_core.pipeline import UploadError
from walle_core.pipeline.runtime import Pipeline


@dataclass
class Cloud:
    """The server side: a script of behaviours, then 200s; de-duplicates by (device, seq)."""

    script: list[str] = field(default_factory=list)
    requests: int = 0
    received: list[tuple[str, int, str]] = field(default_factory=list)  # raw, duplicates included
    encodings: set[str] = field(default_factory=set)

    def unique(self) -> dict[tuple[str, int], str]:
        return {(d, s): fid for d, s, fid in self.received}


@pytest.fixture
def cloud() -> Iterator[tuple[Cloud, str]]:
    state = Cloud()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            state.requests += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.encodings.add(self.headers.get("Content-Encoding", ""))
            action = state.script.pop(0) if state.script else "ok"
            if action.isdigit():
                self.send_response(int(action))
                self.end_headers()
                return
            batch = json.loads(gzip.decompress(body))
            for item in batch["items"]:
                state.received.append((batch["device"], item["seq"], item["fid"]))
            if action == "drop":  # processed, but the acknowledgement is lost
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/upload"
    server.shutdown()
    server.server_close()


def filled_pipeline(directory: Path, n: int = 120) -> Pipeline:
    windows = [{"name": "c3", "type": "count", "size": 3, "features": {"n": {"fn": "count"}}}]
    p = Pipeline(directory, windows=windows, device="dev-7")
    p.ingest_many({"event_id": "e", "page": "p", "timestamp_ms": i, "args": {"i": i}} for i in range(n))
    return p


def test_batches_are_gzipped_and_outbox_drains(tmp_path: Path, cloud: tuple[Cloud, str]) -> None:
    state, url = cloud
    p = filled_pipeline(tmp_path)
    assert p.store.outbox_size() == 40
    up = p.uploader(url, batch_size=16, backoff_s=0.001)
    assert up.flush() == 40
    assert state.requests == 3 and state.encodings == {"gzip"}
    assert p.store.outbox_size() == 0
    assert sorted(s for _, s, _ in state.received) == list(range(1, 41))


def test_retries_with_backoff_and_cloud_deduplicates(tmp_path: Path, cloud: tuple[Cloud, str]) -> None:
    state, url = cloud
    state.script = ["503", "drop", "500", "429"]
    p = filled_pipeline(tmp_path)
    sleeps: list[float] = []
    up = p.uploader(url, batch_size=25, backoff_s=0.01, sleep=sleeps.append)
    assert up.flush() == 40
    assert up.stats.retries == 4
    assert all(b >= a for a, b in itertools.pairwise(sleeps))  # doubling beats the jitter
    assert sleeps[0] <= 0.01 and max(sleeps) <= 0.08  # exponential, jittered, capped by attempts
    # The dropped acknowledgement made the client resend: raw deliveries have duplicates...
    assert len(state.received) > 40
    # ...which (device, seq) removes, leaving every feature exactly once.
    uniq = state.unique()
    assert len(uniq) == 40 and len(set(uniq.values())) == 40
    assert p.store.outbox_size() == 0


def test_outbox_survives_restart_while_the_cloud_is_down(tmp_path: Path, cloud: tuple[Cloud, str]) -> None:
    state, url = cloud
    p = filled_pipeline(tmp_path)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    down_url = f"http://127.0.0.1:{dead.getsockname()[1]}/upload"  # bound, not listening: refused
    up = p.uploader(down_url, max_attempts=3, backoff_s=0.001)
    assert up.flush() == 0 and up.stats.attempts == 3
    assert "ConnectionRefused" in up.stats.last_error or "refused" in up.stats.last_error.lower()
    p.close()
    dead.close()
    again = Pipeline(tmp_path, device="dev-7")
    assert again.store.outbox_size() == 40
    assert again.uploader(url).flush() == 40
    assert len(state.unique()) == 40


def test_rejected_batch_goes_to_dead_letter(tmp_path: Path, cloud: tuple[Cloud, str]) -> None:
    state, url = cloud
    state.script = ["400"]
    p = filled_pipeline(tmp_path, n=6)
    with pytest.raises(UploadError, match="HTTP 400"):
        p.uploader(url).flush()
    assert p.store.outbox_size() == 0
    assert [w for w, _, _ in p.store.dead_letters()] == ["upload", "upload"]
