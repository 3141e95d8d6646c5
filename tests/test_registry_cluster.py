"""The registry as a cluster on loopback (``walle_registry.cluster``): PostgreSQL, three replicas,
nginx in front. Blobs go out through nginx after a replica authorises them; a replica killed
mid-rollout, a PostgreSQL restart and an nginx reload lose no notice and no status report.

Skipped (with the reason) only where the PostgreSQL or nginx binaries are absent.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg")
httpx = pytest.importorskip("httpx")

from test_registry_fixtures import make_bundle, make_keys  # noqa: E402

from walle_registry.client import ApiError, DeviceClient, RegistryClient  # noqa: E402
from walle_registry.cluster import Cluster, missing_binaries  # noqa: E402

ADMIN = "wpt_cluster-test-admin-0123456789"
_REASON = missing_binaries()


def transient(exc: BaseException) -> bool:
    """What a device retries: a broken connection, or a 5xx/429 from nginx while a replica is down
    (nginx answers 502 for a request that was in flight on a killed replica)."""
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, (httpx.HTTPError, OSError))
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.up(tmp_path_factory.mktemp("cluster") / "root", replicas=3, admin_token=ADMIN)
    try:
        yield c
    finally:
        c.down()


RELEASES: dict[str, dict[str, Any]] = {}  # version -> the publish answer


@pytest.fixture(scope="module")
def admin(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    root = tmp_path_factory.mktemp("bundles")
    keys = make_keys(root)
    c = RegistryClient(cluster.state.url, ADMIN)
    c.add_key(keys.pub_pem)
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):
        RELEASES[version] = c.publish(make_bundle(root, keys, "fleet", version, model=random.randbytes(200_000)))
    yield c
    c.close()


def streams_per_replica(cluster: Cluster) -> list[int]:
    out = []
    for port in cluster.state.replica_ports:
        try:
            out.append(int(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["streams"]))
        except httpx.HTTPError:
            out.append(0)
    return out


class Device(threading.Thread):
    """Follows its stream through the balancer, reconnecting from its cursor when the connection
    breaks; on an install notice it waits a random jitter, pulls the release and reports."""

    def __init__(self, cluster: Cluster, cred: DeviceClient, jitter_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.client = DeviceClient(cluster.state.url, cred.headers["Authorization"].split()[1], cred.device_id)
        self.jitter_s = jitter_s
        self.reported: dict[str, int] = {}  # version -> deployment
        self.reconnects = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for notice in self.client.stream():
                    if notice["action"] == "install":
                        self._install(notice)
            except Exception as exc:
                if not transient(exc):
                    raise
            if not self.stop.is_set():
                self.reconnects += 1
                time.sleep(0.2)

    def _install(self, notice: dict[str, Any]) -> None:
        time.sleep(random.uniform(0, self.jitter_s))
        for attempt in range(50):  # a request cut by a dying replica is retried, like a device would
            try:
                raw, _ = self.client.manifest(notice["task"], notice["version"])
                assert raw is not None
                self.client.report(notice["task"], notice["version"], "installed", notice["deployment"],
                                   seq=notice["seq"])
                self.reported[notice["version"]] = notice["deployment"]
                return
            except Exception as exc:
                if not transient(exc):
                    raise
                time.sleep(0.1 * (attempt + 1))


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, admin: RegistryClient) -> Iterator[list[Device]]:
    devices = [Device(cluster, admin.register(f"fleet-{i:03d}", region="eu"), jitter_s=1.5) for i in range(24)]
    for d in devices:
        d.start()
    wait_for(lambda: sum(streams_per_replica(cluster)) >= len(devices), 20, "every device's stream connected")
    yield devices
    for d in devices:
        d.stop.set()
        d.client.close()


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


def all_reported(fleet: list[Device], version: str) -> bool:
    dead = [d.name for d in fleet if not d.is_alive()]
    assert not dead, f"device threads died: {dead} (their exceptions are in the warnings)"
    return all(version in d.reported for d in fleet)


def rollout(admin: RegistryClient, fleet: list[Device], version: str, during: Any = None) -> dict[str, Any]:
    dep = admin.deploy(task="fleet", version=version, min_sample=1, success_threshold=1.0)
    if during is not None:
        wait_for(lambda: any(version in d.reported for d in fleet), 20, f"a first {version} report")
        during()
    wait_for(lambda: all_reported(fleet, version), 40, f"every device reports {version}")
    return admin.status(dep["id"])


def test_blobs_are_sent_by_nginx_after_the_replica_authorises(cluster: Cluster, admin: RegistryClient,
                                                              fleet: list[Device], tmp_path: Path) -> None:
    status = rollout(admin, fleet, "1.0.0")
    assert status["counts"].get("installed") == len(fleet)
    blob = max(RELEASES["1.0.0"]["files"], key=lambda f: f["size"])
    sha, url = blob["sha256"], f"/v1/blobs/{blob['sha256']}"
    dev = fleet[0].client
    whole = dev.http.get(url, headers=dev.headers)
    assert whole.status_code == 200 and len(whole.content) == blob["size"]
    assert whole.headers["etag"] == f'"{sha}"'
    assert "immutable" in whole.headers["cache-control"]
    assert "x-accel-redirect" not in whole.headers
    part = dev.http.get(url, headers={**dev.headers, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{blob['size']}"
    assert dev.http.get(url, headers={**dev.headers, "If-None-Match": f'"{sha}"'}).status_code == 304
    assert dev.http.get(url).status_code == 401  # nginx sends nothing the registry did not authorise
    assert dev.http.get(f"/_walle_blobs/{sha[:2]}/{sha[2:4]}/{sha}").status_code == 404  # internal only
    # the replica itself answers with the hand-off, not the bytes
    direct = httpx.get(f"http://127.0.0.1:{cluster.state.replica_ports[0]}{url}", headers=dev.headers)
    assert direct.headers["x-accel-redirect"] == f"/_walle_blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    assert direct.content == b""
    dev.download(sha, tmp_path / "model.bin")  # the client's verified download works through nginx
    assert (tmp_path / "model.bin").read_bytes() == whole.content


def test_replica_killed_mid_rollout_loses_no_report(cluster: Cluster, admin: RegistryClient,
                                                    fleet: list[Device]) -> None:
    before = streams_per_replica(cluster)
    assert before[0] > 0, before  # the credential hash spread the streams, so the victim holds some
    reconnects = sum(d.reconnects for d in fleet)
    status = rollout(admin, fleet, "2.0.0", during=lambda: cluster.kill_replica(0))
    assert status["counts"].get("installed") == len(fleet), status["counts"]
    assert sum(d.reconnects for d in fleet) >= reconnects + before[0]  # its devices came back elsewhere
    wait_for(lambda: sum(streams_per_replica(cluster)[1:]) >= len(fleet), 20, "streams on the live replicas")
    cluster.start_replica(0)


def test_postgres_restart_is_survived(cluster: Cluster, admin: RegistryClient, fleet: list[Device]) -> None:
    cluster.restart_postgres()
    # the LISTEN threads see the restart, recycle their pools and resubscribe
    wait_for(lambda: _ok(lambda: admin.register("after-restart", region="eu")), 20, "a write after the restart")
    status = rollout(admin, fleet, "3.0.0")
    assert status["counts"].get("installed") == len(fleet), status["counts"]


def test_balancer_reload_keeps_streams_and_serves_new_requests(cluster: Cluster, admin: RegistryClient,
                                                               fleet: list[Device]) -> None:
    reconnects = sum(d.reconnects for d in fleet)
    cluster.reload_balancer()
    status = rollout(admin, fleet, "4.0.0")  # notices reach streams opened before the reload
    assert status["counts"].get("installed") == len(fleet), status["counts"]
    assert sum(d.reconnects for d in fleet) == reconnects


def _ok(call: Any) -> bool:
    try:
        call()
    except Exception:
        return False
    return True
