"""Crash-safe storage: a registry process SIGKILLed at several points of a publish (receiving the
upload, extracting the bundle, writing blobs) leaves its unfinished work only in its spool folder,
and the next start removes it; the database and the blob store stay consistent and the same
bundle publishes cleanly afterwards."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, ProcessServer, make_bundle, make_keys

from walle_registry.client import RegistryClient

KEEP = {"registry.db", "registry.db-wal", "registry.db-shm", "admin.token", "server.log"}


def _unfinished(data: Path, pattern: str) -> list[Path]:
    """Work in progress matching ``pattern`` anywhere under the data folder (not only the spool:
    the test must also see it where an older layout kept it). The live server creates and
    removes folders while this walks them: a folder gone mid-walk means nothing seen this time."""
    try:
        return [p for p in data.rglob(pattern) if p.exists()]
    except FileNotFoundError:
        return []


def _leftovers(data: Path) -> list[str]:
    """Files that are neither state nor a stored blob nor the live replica's spool lock."""
    out = []
    for p in data.rglob("*"):
        rel = p.relative_to(data)
        if p.is_dir() or str(rel) in KEEP or (rel.parts[0] == "spool" and p.name == ".lock"):
            continue
        if rel.parts[0] == "blobs" and len(rel.parts) == 4 and rel.parts[3].startswith(rel.parts[1] + rel.parts[2]):
            continue
        out.append(str(rel))
    return sorted(out)


def _slow_body(bundle: Path, hold: threading.Event) -> Iterator[bytes]:
    data = bundle.read_bytes()
    yield data[: 1 << 20]
    hold.wait(30)  # the server now has a partial upload spooled
    yield data[1 << 20:]


def _kill_when(server: object, seen: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if seen():
            server.kill()  # type: ignore[attr-defined]
            return True
        time.sleep(0.0005)
    return False


@pytest.mark.parametrize("point", ["upload", "extract", "blob"])
def test_sigkill_during_a_publish_leaves_nothing_after_restart(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    keys = make_keys(tmp_path / "keys")
    model = os.urandom(24 << 20)  # incompressible: extraction and blob writes take a while
    bundle = make_bundle(tmp_path, keys, "crash", "1.0.0", model=model)
    server = ProcessServer(data).start()
    try:
        admin = RegistryClient(server.url, ADMIN)
        admin.add_key(keys.pub_pem)
        hold = threading.Event()
        outcome: list[object] = []

        def publish() -> None:
            body = _slow_body(bundle, hold) if point == "upload" else bundle.read_bytes()
            try:
                outcome.append(httpx.post(f"{server.url}/v1/tasks", content=body, timeout=60,
                                          headers={"Authorization": f"Bearer {ADMIN}"}).status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        sender = threading.Thread(target=publish, daemon=True)
        sender.start()
        seen = {
            "upload": lambda: any(p.stat().st_size > 0 for p in _unfinished(data, "upload-*")),
            "extract": lambda: any(_unfinished(data, "publish-*/files/*")),
            "blob": lambda: any(_unfinished(data, "blob-*")) or any(_unfinished(data / "blobs" / ".tmp", "*")),
        }[point]
        killed = _kill_when(server, seen)
        hold.set()
        sender.join(30)
        assert killed and isinstance(outcome[0], httpx.HTTPError), (point, outcome)
        assert _leftovers(data), "the kill left unfinished work behind"  # the point mattered

        server = ProcessServer(data, port=server.port).start()
        assert _leftovers(data) == []  # the restart removed it
        assert admin.tasks() == []  # the database never saw the half-done publish
        rel = admin.publish(bundle)
        assert rel["created"] and [t["version"] for t in admin.tasks()] == ["1.0.0"]
        for f in rel["files"]:
            r = httpx.get(f"{server.url}/v1/blobs/{f['sha256']}", headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200 and len(r.content) == f["size"]
        assert _leftovers(data) == []
    finally:
        server.stop()
    assert not any((data / "spool").iterdir())  # a clean stop removes the replica's own folder
