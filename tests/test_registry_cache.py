"""The registry's in-memory fast paths stay correct: cached credentials are dropped on revocation
and re-keying, rollout counters are maintained incrementally (and survive a restart), heartbeats
written behind are visible to readers and durable after a clean shutdown, cached read grants
widen when a device is targeted later; SQLite and PostgreSQL (``env`` is parametrised)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, make_env

from walle_registry.app import create_app
from walle_registry.cache import AuthCache, BlobCache, DeviceActivity, MonotoneMap
from walle_registry.client import ApiError, RegistryClient
from walle_registry.context import Registry
from walle_registry.models import Assignment, DeploymentCount, Device
from walle_registry.settings import Settings


@contextlib.contextmanager
def reopen(tmp: Path, db_url: str | None) -> Iterator[tuple[Registry, RegistryClient]]:
    """A fresh app (a restarted process) over the data of an earlier ``make_env``."""
    app = create_app(Settings(data_dir=tmp / "data", db_url=db_url), admin_token=ADMIN)
    with TestClient(app) as http:
        yield app.state.registry, RegistryClient(token=ADMIN, http=http)


def _status(env: Env, token: str) -> int:
    return env.http.get("/v1/deployments", headers={"Authorization": f"Bearer {token}"}).status_code


def test_revoked_token_stops_working_immediately(env: Env) -> None:
    tok = env.admin.create_token("ci", ["read"])
    assert _status(env, tok["token"]) == 200
    assert env.registry.credentials.cached_principal(tok["token"]) is not None  # served from the cache now
    env.http.delete(f"/v1/tokens/{tok['id']}", headers={"Authorization": f"Bearer {ADMIN}"}).raise_for_status()
    assert env.registry.credentials.cached_principal(tok["token"]) is None
    assert _status(env, tok["token"]) == 401


def test_rekeyed_device_loses_its_old_token_immediately(env: Env) -> None:
    old = env.device("rekey-1", os="linux")
    old.checkin()
    assert env.registry.credentials.cached_principal(old.token) is not None
    new = env.device("rekey-1", os="linux")  # registering the same id again issues a new token
    try:
        old.checkin()
        raise AssertionError("the old device token still works")
    except ApiError as exc:
        assert exc.status == 401
    assert new.checkin()["cursor"] == 0


def test_auth_cache_ignores_a_lookup_that_raced_a_revocation() -> None:
    cache: AuthCache[str] = AuthCache(ttl=60)
    generation = cache.generation  # a lookup starts and reads the token as valid ...
    cache.drop("abc")  # ... a revocation commits meanwhile ...
    cache.put("abc", "principal", generation)  # ... the stale answer must not be cached
    assert cache.get("abc") is None
    cache.put("abc", "principal", cache.generation)
    assert cache.get("abc") == "principal"


def test_auth_cache_entries_expire() -> None:
    now = [0.0]
    cache: AuthCache[str] = AuthCache(ttl=5, clock=lambda: now[0])
    cache.put("k", "v", cache.generation)
    now[0] = 4.9
    assert cache.get("k") == "v"
    now[0] = 5.0
    assert cache.get("k") is None


def test_monotone_map_never_goes_back() -> None:
    m = MonotoneMap()
    assert m.raise_to("d", 5) == 5 and m.get("d") is None  # not authoritative: not reported ...
    assert m.raise_to("d", 4, loaded=True) == 5  # ... but a load that read an older value keeps it
    m.raise_to("d", 7, loaded=True)
    m.raise_to("d", 3, loaded=True)  # a stale load that finished late
    assert m.get("d") == 7
    m.raise_to("d", 9)
    assert m.get("d") == 9


def test_activity_buffer_coalesces_and_requeues() -> None:
    a = DeviceActivity()
    a.note("d", 1.0, {"x": 1}, cursor=3)
    a.note("d", 2.0, {"y": 2}, cursor=2)
    seen, metrics, cursor = a.take()
    assert seen == {"d": 2.0} and metrics == {"d": {"x": 1, "y": 2}} and cursor == {"d": 3}
    a.note("d", 3.0, {"x": 5})
    a.give_back(seen, metrics, cursor)  # a failed flush: newer notes win
    seen, metrics, cursor = a.take()
    assert seen == {"d": 3.0} and metrics == {"d": {"x": 5, "y": 2}} and cursor == {"d": 3}


def test_blob_cache_is_bounded() -> None:
    c = BlobCache(max_item=10, max_total=20)
    c.put("a", b"0123456789")
    c.put("big", b"x" * 11)
    assert c.get("big") is None
    c.put("b", b"0123456789")
    c.get("a")  # most recently used
    c.put("c", b"0123456789")
    assert c.get("a") is not None and c.get("b") is None and c.get("c") is not None


def _counts_by_group(reg: Registry, dep_id: int) -> tuple[dict[tuple[int, str], int], dict[tuple[int, str], int]]:
    with reg.db.read() as s:
        kept = {(int(st), str(status)): int(n) for st, status, n in s.execute(
            select(DeploymentCount.stage, DeploymentCount.status, DeploymentCount.n)
            .where(DeploymentCount.deployment_id == dep_id)) if n}
        counted = {(int(st), str(status)): int(n) for st, status, n in s.execute(
            select(Assignment.stage, Assignment.status, func.count()).where(Assignment.deployment_id == dep_id)
            .group_by(Assignment.stage, Assignment.status))}
    return kept, counted


def test_incremental_counters_match_a_recount_and_survive_a_restart(tmp_path: Path, db_url: str | None) -> None:
    with make_env(tmp_path, db_url) as env:
        env.publish("cnt", "1.0.0")
        devs = [env.device(f"cnt-{i:02d}", os="linux") for i in range(30)]
        dep = env.deploy(task="cnt", version="1.0.0", stages=[30, 100], success_threshold=1.0, min_sample=100,
                         error_threshold=1.0)
        assigned = [d for d in devs if env.target(d, "cnt")]
        statuses = ["downloading", "installed", "running", "failed", "installed"]
        for i, d in enumerate(assigned):
            d.report("cnt", "1.0.0", statuses[i % len(statuses)])
        assigned[0].report("cnt", "1.0.0", "running")  # a status change moves one count
        assigned[0].report("cnt", "1.0.0", "running")  # the same status again changes nothing
        late = env.device("cnt-late", os="linux")  # joins the running deployment
        kept, counted = _counts_by_group(env.registry, dep["id"])
        assert kept == counted
        before = env.admin.status(dep["id"])
        assert sum(before["counts"].values()) == len(assigned) + (1 if env.target(late, "cnt") else 0)
    with reopen(tmp_path, db_url) as (reg, admin):  # a fresh process over the same database
        after = admin.status(dep["id"])
        assert after["counts"] == before["counts"] and after["progress"] == before["progress"]
        kept, counted = _counts_by_group(reg, dep["id"])
        assert kept == counted


def test_heartbeats_written_behind_are_visible_and_durable(tmp_path: Path, db_url: str | None) -> None:
    with make_env(tmp_path, db_url, activity_flush_s=3600.0) as env:  # no background flush
        env.publish("hb", "1.0.0")
        dev = env.device("hb-1", os="linux")
        env.deploy(task="hb", version="1.0.0")
        notes = dev.notices()
        out = dev.checkin({"battery": 0.4})  # acknowledges the cursor
        assert out["cursor"] == notes[-1]["seq"] == out["latest"]
        rows = {d["id"]: d for d in env.admin.devices()}  # readers see it (flushed on read)
        assert rows["hb-1"]["cursor"] == out["cursor"]
        dev.checkin({"temp": 31})
        assert env.registry.devices.activity.pending() == 1
    with reopen(tmp_path, db_url) as (reg, admin):  # the clean shutdown flushed the buffer
        row = next(d for d in admin.devices() if d["id"] == "hb-1")
        assert row["cursor"] == out["cursor"]
        with reg.db.read() as s:
            got = s.get(Device, "hb-1")
            assert got is not None and got.metrics == {"battery": 0.4, "temp": 31}


def test_checkin_latest_follows_new_notices(env: Env) -> None:
    env.publish("lat", "1.0.0")
    env.publish("lat", "1.1.0")
    dev = env.device("lat-1", os="linux")
    assert dev.checkin()["latest"] == 0  # cached from here on
    env.deploy(task="lat", version="1.0.0")
    first = dev.checkin(ack=False)["latest"]
    assert first > 0
    env.deploy(task="lat", version="1.1.0")
    assert dev.checkin(ack=False)["latest"] > first


def test_read_grants_widen_when_a_device_is_targeted_later(env: Env) -> None:
    rel = env.publish("grant", "1.0.0")
    other = env.publish("grant", "2.0.0", model=b"other-model")
    dev = env.device("g-1", os="linux")
    blob = rel["files"][0]["sha256"]

    def get(path: str) -> int:
        return env.http.get(path, headers={"Authorization": f"Bearer {dev.token}"}).status_code

    assert get(f"/v1/blobs/{blob}") == 404 and get("/v1/releases/grant/1.0.0/manifest") == 404
    env.deploy(task="grant", version="1.0.0")
    assert get(f"/v1/blobs/{blob}") == 200 and get("/v1/releases/grant/1.0.0/manifest") == 200
    assert get(f"/v1/blobs/{blob}") == 200  # now from the cache
    model = next(f["sha256"] for f in other["files"] if f["sha256"] not in {g["sha256"] for g in rel["files"]})
    assert get(f"/v1/blobs/{model}") == 404  # still refused: 2.0.0 is not deployed to it
    env.deploy(task="grant", version="2.0.0")
    assert get(f"/v1/blobs/{model}") == 200


def test_monotone_map_raise_many_only_grows_and_is_a_floor_until_loaded() -> None:
    m = MonotoneMap()
    m.raise_to("a", 5, loaded=True)
    m.raise_many([("a", 3), ("b", 7), ("a", 9), ("b", 2)])
    assert m.get("a") == 9  # merged with max, still loaded
    assert m.get("b") is None  # a floor: not authoritative until a load
    assert m.raise_to("b", 4, loaded=True) == 7


def test_activity_flush_merges_metrics_and_only_raises_the_cursor(env: Env) -> None:
    env.device("fl-1", os="linux")
    env.device("fl-2", os="linux")
    devs = env.registry.devices
    devs.activity.note("fl-1", 100.0, {"a": 1, "b": {"x": 1}}, 7)
    devs.activity.note("fl-2", 101.0)
    devs.flush_activity()
    devs.activity.note("fl-1", 102.0, {"b": 2, "c": 3}, 5)  # an older cursor does not lower it
    devs.flush_activity()
    with env.registry.db.read() as s:
        one, two = s.get(Device, "fl-1"), s.get(Device, "fl-2")
        assert one is not None and two is not None
        assert (one.last_seen, one.cursor, one.metrics) == (102.0, 7, {"a": 1, "b": 2, "c": 3})
        assert (two.last_seen, two.cursor, two.metrics) == (101.0, 0, {})
