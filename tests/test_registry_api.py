"""Registry API: auth, publishing, every policy dimension and every deployment state transition,
on SQLite and on PostgreSQL (the ``env`` fixture is parametrised over both)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, make_bundle, make_keys

from walle_registry.client import ApiError, DeviceClient, RegistryClient
from walle_registry.models import ApiToken, Device
from walle_registry.policy import bucket, in_version_range, matches_filters, stage_of


def call(fn: object, *args: object, **kw: object) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


# ---------------------------------------------------------------------------------- auth


def test_nothing_unauthenticated_writes(env: Env) -> None:
    h = env.http
    for method, path in [("POST", "/v1/tasks"), ("POST", "/v1/deployments"), ("POST", "/v1/devices/register"),
                         ("POST", "/v1/device/reports"), ("POST", "/v1/results"), ("POST", "/v1/keys"),
                         ("POST", "/v1/tokens"), ("POST", "/v1/deployments/1/pause"),
                         ("PUT", "/v1/blobs/" + "0" * 64), ("POST", "/v1/plugins"), ("POST", "/v1/device/checkin")]:
        r = h.request(method, path, content=b"{}")
        assert r.status_code == 401, (method, path, r.status_code, r.text)
    r = h.get("/v1/deployments", headers={"Authorization": "Bearer wpt_nope"})
    assert r.status_code == 401 and "invalid" in r.json()["detail"]


def test_scopes_and_revocation(env: Env) -> None:
    pub = RegistryClient(token=env.admin.create_token("ci", ["publish"])["token"], http=env.http)
    dep_tok = env.admin.create_token("ops", ["deploy"])
    ops = RegistryClient(token=dep_tok["token"], http=env.http)
    bundle = make_bundle(env.tmp, env.keys, "scoped", "1.0.0")
    assert pub.publish(bundle)["created"]
    assert call(ops.publish, bundle).status == 403
    assert call(pub.deploy, task="scoped", version="1.0.0").status == 403
    # no device matches yet: the deployment waits in its first stage (never "completed, 0 of 0")
    assert ops.deploy(task="scoped", version="1.0.0")["state"] == "running"
    assert call(pub.create_token, "x", ["admin"]).status == 403
    assert call(pub.register, "d1").status == 403  # enrolment needs the enroll scope
    # device credentials cannot publish or deploy
    dev = env.device("d-auth", os="linux")
    as_pub = RegistryClient(token=dev.token, http=env.http)
    assert call(as_pub.deploy, task="scoped", version="1.0.0").status == 403
    # tokens are stored hashed
    with env.registry.db.read() as s:
        hashes = [t.token_hash for t in s.query(ApiToken)] + [d.token_hash for d in s.query(Device)]
    assert dep_tok["token"] not in hashes and hashlib.sha256(dep_tok["token"].encode()).hexdigest() in hashes
    assert dev.token not in hashes
    env.http.delete(f"/v1/tokens/{dep_tok['id']}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert call(ops.deployments).status == 401


def test_device_rate_limit(tmp_path: Path) -> None:
    from test_registry_fixtures import make_env

    with make_env(tmp_path, None, device_rate_per_s=0.001, device_burst=3) as env:
        dev = env.device("d-rate")
        for _ in range(3):
            dev.checkin()
        r = env.http.post("/v1/device/checkin", json={}, headers=dev.headers)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------------------------- publishing


def test_publish_verify_idempotent_immutable(env: Env) -> None:
    bundle = make_bundle(env.tmp, env.keys, "vision", "1.0.0")
    first = env.admin.publish(bundle)
    assert first["created"] and first["task"] == "vision" and len(first["files"]) == 2
    again = env.admin.publish(bundle)
    assert not again["created"] and again["manifest_digest"] == first["manifest_digest"]
    r = env.http.post("/v1/tasks", content=bundle.read_bytes(), headers=env.admin.headers)
    assert r.status_code == 200
    other = make_bundle(env.tmp, env.keys, "vision", "1.0.0", model=b"different weights")
    err = call(env.admin.publish, other)
    assert err.status == 409 and "immutable" in err.detail
    # blobs are content addressed and downloadable with the publisher token
    for f in first["files"]:
        assert env.http.get(f"/v1/blobs/{f['sha256']}", headers=env.admin.headers).status_code == 200
    assert [r["version"] for r in env.admin.tasks()] == ["1.0.0"]


def test_bad_signature_and_tampered_bundles_rejected(env: Env) -> None:
    stranger = make_keys(env.tmp / "stranger", "stranger")
    err = call(env.admin.publish, make_bundle(env.tmp, stranger, "evil", "1.0.0"))
    assert err.status == 422 and "bad signature" in err.detail and "not trusted" in err.detail
    err = call(env.admin.publish, make_bundle(env.tmp, None, "unsigned", "1.0.0"))
    assert err.status == 422 and "bad signature" in err.detail and "not signed" in err.detail
    # a payload byte flipped after signing: the manifest digest no longer matches the file
    good = make_bundle(env.tmp, env.keys, "tamper", "1.0.0", model=b"A" * 4000)
    raw = gzip.decompress(good.read_bytes())
    bad = env.tmp / "tampered.walle"
    bad.write_bytes(gzip.compress(raw.replace(b"A" * 4000, b"A" * 3999 + b"B")))
    err = call(env.admin.publish, bad)
    assert err.status == 422 and "DigestMismatchError" in err.detail and "model.bin" in err.detail
    err = call(env.admin.publish, _write(env.tmp / "junk.walle", b"not a bundle at all"))
    assert err.status == 422
    # a blob uploaded under the wrong digest
    r = env.http.put("/v1/blobs/" + "ab" * 32, content=b"hello", headers=env.admin.headers)
    assert r.status_code == 422 and "digest mismatch" in r.json()["detail"]
    sha = hashlib.sha256(b"hello").hexdigest()
    r = env.http.put(f"/v1/blobs/{sha}", content=b"hello", headers=env.admin.headers)
    assert r.status_code == 201 and r.json() == {"sha256": sha, "size": 5}
    assert env.http.get("/v1/tasks", headers=env.admin.headers).json() == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _wheel(path: Path, name: str, version: str, meta_version: str | None = None) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "PLUGIN = 1\n")
        zf.writestr(f"{name}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nVersion: {meta_version or version}\n")
    out = path / f"{name}-{version}-py3-none-any.whl"
    out.write_bytes(buf.getvalue())
    return out


def test_publish_plugin_wheel(env: Env) -> None:
    wheel = _wheel(env.tmp, "walle_fancy", "1.2.0")
    first = env.admin.publish_plugin(wheel, env.keys.key_path)
    assert first["created"] and first["name"] == "walle_fancy" and first["version"] == "1.2.0"
    assert not env.admin.publish_plugin(wheel, env.keys.key_path)["created"]
    stranger = make_keys(env.tmp / "s2", "s2")
    err = call(env.admin.publish_plugin, _wheel(env.tmp, "walle_other", "1.0.0"), stranger.key_path)
    assert err.status == 422 and "bad signature" in err.detail
    bad_dir = env.tmp / "bad"
    bad_dir.mkdir()
    err = call(env.admin.publish_plugin, _wheel(bad_dir, "walle_meta", "1.0.0", meta_version="9.9.9"),
               env.keys.key_path)
    assert err.status == 422 and "METADATA" in err.detail
    other_dir = env.tmp / "o"
    other_dir.mkdir()
    changed = _wheel(other_dir, "walle_fancy", "1.2.0", meta_version=None)
    with zipfile.ZipFile(changed, "a") as zf:
        zf.writestr("walle_fancy/extra.py", "X = 2\n")
    assert call(env.admin.publish_plugin, changed, env.keys.key_path).status == 409
    r = env.http.get("/v1/plugins/walle_fancy/1.2.0/wheel", headers=env.admin.headers)
    assert r.status_code == 200 and r.content == wheel.read_bytes()


# ---------------------------------------------------------------------------------- policies


def test_policy_functions() -> None:
    assert in_version_range("1.4.2", ">=1.2,<2")
    assert not in_version_range("2.0.0", ">=1.2,<2")
    assert in_version_range("1.9.0", "~=1.4") and not in_version_range("2.0", "~=1.4")
    assert in_version_range("1.4.9", "~=1.4.2") and not in_version_range("1.5.0", "~=1.4.2")
    assert not in_version_range("garbage", ">=1")
    assert matches_filters({"backends": ["cpu", "opencl"]}, {"backends": ["cpu"]})
    assert not matches_filters({"backends": ["cpu"]}, {"backends": ["cpu", "vulkan"]})
    assert matches_filters({"groups": ["beta", "staff"]}, {"groups": ["staff"]})
    ids = [f"d{i}" for i in range(2000)]
    at10 = {d for d in ids if bucket("s", d) < 1000}
    at50 = {d for d in ids if bucket("s", d) < 5000}
    assert at10 <= at50 and 150 < len(at10) < 250 and 900 < len(at50) < 1100
    stages = [stage_of("s", d, [10, 50, 100]) for d in ids]
    assert 150 < stages.count(0) < 250 and 700 < stages.count(1) < 900


def test_target_by_device_id_list(env: Env) -> None:
    env.publish("t", "1.0.0")
    devs = [env.device(f"id-{i}") for i in range(4)]
    dep = env.deploy(task="t", version="1.0.0", device_ids=["id-1", "id-3", "id-unknown"])
    assert [env.target(d, "t") for d in devs] == [None, "1.0.0", None, "1.0.0"]
    assert env.admin.status(dep["id"])["counts"] == {"notified": 2}


@pytest.mark.parametrize(("filters", "expected"), [
    ({"os": ["android"]}, {"a"}),
    ({"app_version": ">=1.2,<2"}, {"a", "c"}),
    ({"model": ["pixel-8", "rpi5"]}, {"a", "b"}),
    ({"region": ["eu"]}, {"b", "c"}),
    ({"groups": ["beta"]}, {"c"}),
    ({"backends": ["cpu", "opencl"]}, {"b"}),
    ({"os": ["linux"], "region": ["eu"], "backends": ["cpu"]}, {"b", "c"}),
])
def test_attribute_filters(env: Env, filters: dict[str, object], expected: set[str]) -> None:
    env.publish("f", "1.0.0")
    devs = {
        "a": env.device("a", os="android", app_version="1.4.0", model="pixel-8", region="us", backends=["cpu"]),
        "b": env.device("b", os="linux", app_version="2.1.0", model="rpi5", region="eu",
                        backends=["cpu", "opencl"]),
        "c": env.device("c", os="linux", app_version="1.2.0", model="nuc", region="eu", groups=["beta"],
                        backends=["cpu", "reference"]),
    }
    env.deploy(task="f", version="1.0.0", filters=filters)
    assert {k for k, d in devs.items() if env.target(d, "f") == "1.0.0"} == expected


def test_bad_filters_and_specs_are_422(env: Env) -> None:
    env.publish("g", "1.0.0")
    for spec in [{"filters": {"app_version": ">>1"}}, {"stages": [50, 20, 100]}, {"stages": [10, 50]},
                 {"percentage": 150}, {"filters": {"colour": ["red"]}}, {"success_threshold": 2}]:
        assert call(env.deploy, task="g", version="1.0.0", **spec).status == 422, spec
    assert call(env.deploy, task="g", version="9.9.9").status == 404


def test_percentage_is_seeded_and_stable_when_widened(env: Env) -> None:
    env.publish("p", "1.0.0")
    devs = [env.device(f"p-{i:03d}") for i in range(120)]
    dep = env.deploy(task="p", version="1.0.0", percentage=20, seed="exp-1")
    at20 = {d.device_id for d in devs if env.target(d, "p")}
    assert at20 == {d.device_id for d in devs if bucket("exp-1", d.device_id) < 2000}
    assert 10 <= len(at20) <= 40
    env.admin.action(dep["id"], "widen", percentage=60)
    at60 = {d.device_id for d in devs if env.target(d, "p")}
    assert at20 < at60 and len(at60) > len(at20)
    assert call(env.admin.action, dep["id"], "widen", percentage=10).status == 409


def _report_all(devs: list[DeviceClient], task: str, version: str, status: str) -> None:
    for d in devs:
        d.report(task, version, status)


def test_staged_rollout_advances_on_success_with_min_sample(env: Env) -> None:
    env.publish("s", "1.0.0")
    devs = [env.device(f"s-{i:03d}") for i in range(60)]
    dep = env.deploy(task="s", version="1.0.0", stages=[10, 50, 100], success_threshold=0.8, min_sample=3)
    st = env.admin.status(dep["id"])
    assert st["current_stage"] == 0 and st["state"] == "running"
    first = [d for d in devs if env.target(d, "s")]
    assert len(first) == st["progress"][0]["targeted"] == st["progress"][0]["assigned"] >= 3
    # two successes: below the minimum sample, no advance
    _report_all(first[:2], "s", "1.0.0", "installed")
    assert env.admin.status(dep["id"])["current_stage"] == 0
    # the rest succeed: stage 2 opens and its devices are notified
    _report_all(first[2:], "s", "1.0.0", "running")
    st = env.admin.status(dep["id"])
    assert st["current_stage"] == 1 and st["progress"][1]["assigned"] == st["progress"][1]["targeted"] > 0
    second = [d for d in devs if env.target(d, "s") and d not in first]
    assert len(second) == st["progress"][1]["assigned"]
    _report_all(second, "s", "1.0.0", "installed")
    st = env.admin.status(dep["id"])
    assert st["current_stage"] == 2
    rest = [d for d in devs if env.target(d, "s") and d not in first and d not in second]
    _report_all(rest, "s", "1.0.0", "installed")
    st = env.admin.status(dep["id"])
    assert st["state"] == "completed" and all(env.target(d, "s") == "1.0.0" for d in devs)
    kinds = [e["kind"] for e in st["events"]]
    assert kinds.count("stage_advanced") == 2 and "completed" in kinds


def test_auto_pause_on_error_threshold_then_resume(env: Env) -> None:
    env.publish("e", "1.0.0")
    devs = [env.device(f"e-{i:02d}") for i in range(30)]
    dep = env.deploy(task="e", version="1.0.0", stages=[50, 100], error_threshold=0.25, min_sample=4,
                     success_threshold=0.5)
    first = [d for d in devs if env.target(d, "e")]
    first[0].report("e", "1.0.0", "failed", error="ImportError: numpy")
    assert env.admin.status(dep["id"])["state"] == "running"  # one failure, under the minimum sample
    first[1].report("e", "1.0.0", "installed")
    first[2].report("e", "1.0.0", "installed")
    first[3].report("e", "1.0.0", "failed", error="quota exceeded")
    st = env.admin.status(dep["id"])
    assert st["state"] == "paused" and "auto-paused" in st["reason"] and "50%" in st["reason"]
    assert {e["error"] for e in st["errors"]} == {"ImportError: numpy", "quota exceeded"}
    # while paused nothing advances and new devices do not join
    _report_all(first[4:], "e", "1.0.0", "installed")
    late = env.device("e-late")
    st = env.admin.status(dep["id"])
    assert st["state"] == "paused" and st["current_stage"] == 0 and env.target(late, "e") is None
    env.admin.action(dep["id"], "resume")
    st = env.admin.status(dep["id"])
    assert st["state"] == "running" and st["current_stage"] == 1  # success share already met
    assert env.target(late, "e") == "1.0.0"


def test_state_transitions(env: Env) -> None:
    env.publish("x", "1.0.0")
    env.device("x-1")
    dep = env.deploy(task="x", version="1.0.0", stages=[100], min_sample=1)
    i = dep["id"]
    assert call(env.admin.action, i, "resume").status == 409           # running -> resume: refused
    assert env.admin.action(i, "pause")["state"] == "paused"           # running -> paused
    assert call(env.admin.action, i, "pause").status == 409            # paused -> pause: refused
    assert env.admin.action(i, "resume")["state"] == "running"         # paused -> running
    assert env.admin.action(i, "pause")["state"] == "paused"
    assert env.admin.action(i, "rollback")["state"] == "rolled_back"   # paused -> rolled_back
    for action in ("pause", "resume", "rollback"):
        assert call(env.admin.action, i, action).status == 409         # rolled_back is final
    dep2 = env.deploy(task="x", version="1.0.0")
    assert dep2["state"] == "running"
    env.device("x-2").report("x", "1.0.0", "installed", deployment_id=dep2["id"])
    dev1 = env.admin.register("x-1")
    dev1.report("x", "1.0.0", "installed", deployment_id=dep2["id"])
    assert env.admin.status(dep2["id"])["state"] == "completed"        # running -> completed
    assert call(env.admin.action, dep2["id"], "pause").status == 409    # completed -> pause: refused
    assert env.admin.action(dep2["id"], "rollback")["state"] == "rolled_back"  # completed -> rolled_back
    assert call(env.admin.action, 999, "pause").status == 404


def test_rollback_retargets_previous_version(env: Env) -> None:
    env.publish("r", "1.0.0")
    env.publish("r", "1.1.0", model=b"v1.1")
    devs = [env.device(f"r-{i}") for i in range(5)]
    d1 = env.deploy(task="r", version="1.0.0")
    assert all(env.target(d, "r") == "1.0.0" for d in devs)
    d2 = env.deploy(task="r", version="1.1.0")
    assert d2["previous_version"] == "1.0.0"
    assert all(env.target(d, "r") == "1.1.0" for d in devs)
    devs[0].notices()
    env.admin.action(d2["id"], "rollback")
    assert all(env.target(d, "r") == "1.0.0" for d in devs)
    latest = devs[0].notices()
    assert latest[-1]["version"] == "1.0.0" and latest[-1]["action"] == "install"
    assert latest[-1]["digest"] == env.published[("r", "1.0.0")]["manifest_digest"]
    assert env.admin.status(d1["id"])["state"] == "running"  # the older deployment is untouched
    # with no earlier version the rollback removes the task
    env.publish("solo", "1.0.0")
    d3 = env.deploy(task="solo", version="1.0.0")
    env.admin.action(d3["id"], "rollback")
    assert env.target(devs[0], "solo") is None
    assert devs[0].notices()[-1]["action"] == "remove"


def test_late_joining_devices(env: Env) -> None:
    env.publish("late", "1.0.0")
    dep = env.deploy(task="late", version="1.0.0", filters={"region": ["eu"]}, stages=[100])
    joined = env.device("late-1", region="eu")
    other = env.device("late-2", region="us")
    assert env.target(joined, "late") == "1.0.0" and env.target(other, "late") is None
    other.set_attributes(region="eu")  # attribute change makes it match
    assert env.target(other, "late") == "1.0.0"
    assert env.admin.status(dep["id"])["progress"][0]["assigned"] >= 2


def test_overlapping_deployments_order(env: Env) -> None:
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        env.publish("o", v, model=v.encode())
    dev = env.device("o-1", groups=["beta"])
    low = env.deploy(task="o", version="1.0.0")
    assert env.target(dev, "o") == "1.0.0"
    env.deploy(task="o", version="2.0.0", priority=5, filters={"groups": ["beta"]})
    assert env.target(dev, "o") == "2.0.0"
    newer_low = env.deploy(task="o", version="1.1.0")  # newer, but lower priority: loses
    assert env.target(dev, "o") == "2.0.0"
    assert newer_low["state"] == "running" or newer_low["state"] == "completed"
    dev2 = env.device("o-2")
    assert env.target(dev2, "o") == "1.1.0"  # equal priority: the newest deployment wins
    env.admin.action(low["id"], "rollback")
    assert env.target(dev2, "o") == "1.1.0"


# ---------------------------------------------------------------------------------- push-then-pull


def test_notices_cursor_manifest_etag_and_range(env: Env) -> None:
    rel = env.publish("pull", "1.0.0", model=bytes(range(256)) * 64)
    dev = env.device("pull-1")
    other = env.device("pull-2", region="elsewhere")
    env.deploy(task="pull", version="1.0.0", device_ids=["pull-1"])
    notes = dev.notices()
    assert [(n["task"], n["version"], n["digest"], n["action"]) for n in notes] == [
        ("pull", "1.0.0", rel["manifest_digest"], "install")]
    assert dev.notices() == []  # cursor advanced
    assert dev.checkin()["cursor"] == notes[-1]["seq"]
    raw, headers = dev.manifest("pull", "1.0.0")
    assert raw is not None and hashlib.sha256(raw).hexdigest() == rel["manifest_digest"]
    assert dev.manifest("pull", "1.0.0", etag=headers["etag"])[0] is None  # 304
    model = next(f for f in rel["files"] if f["path"] == "model.bin")
    url = f"/v1/blobs/{model['sha256']}"
    full = env.http.get(url, headers=dev.headers)
    assert full.status_code == 200 and len(full.content) == model["size"]
    part = env.http.get(url, headers={**dev.headers, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == full.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{model['size']}"
    tail = env.http.get(url, headers={**dev.headers, "Range": "bytes=-10"})
    assert tail.content == full.content[-10:]
    assert env.http.get(url, headers={**dev.headers, "Range": f"bytes={model['size']}-"}).status_code == 416
    stale = env.http.get(url, headers={**dev.headers, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == model["size"]
    assert env.http.get(url, headers={**dev.headers, "If-None-Match": f'"{model["sha256"]}"'}).status_code == 304
    # a device that is not targeted cannot pull the release
    assert env.http.get(url, headers=other.headers).status_code == 404
    assert env.http.get("/v1/releases/pull/1.0.0/manifest", headers=other.headers).status_code == 404
    # the device verifies the signed manifest and every file digest
    from walle_core.task import KeyStore

    manifest = dev.pull("pull", "1.0.0", env.tmp / "installed", KeyStore(None, [env.keys.key.public_key()]))
    assert (env.tmp / "installed" / "model.bin").read_bytes() == bytes(range(256)) * 64
    assert manifest.name == "pull"


def test_offline_device_catches_up_with_cursor(env: Env) -> None:
    for v in ("1.0.0", "1.1.0"):
        env.publish("c", v, model=v.encode())
    dev = env.device("c-1")
    env.deploy(task="c", version="1.0.0")
    first = dev.notices()
    cursor = first[-1]["seq"]
    dev.checkin()  # acknowledges the cursor
    env.deploy(task="c", version="1.1.0")  # the device is offline meanwhile
    missed = dev.notices(after=cursor)
    assert [n["version"] for n in missed] == ["1.1.0"]
    assert env.registry.devices.get("c-1").cursor == cursor


def test_reports_and_results_are_deduplicated(env: Env) -> None:
    env.publish("res", "1.0.0")
    dev = env.device("res-1")
    dep = env.deploy(task="res", version="1.0.0", stages=[100], min_sample=5)
    a = dev.report("res", "1.0.0", "installed", seq=7, metrics={"latency_ms": 3.5})
    b = dev.report("res", "1.0.0", "installed", seq=7)
    assert a["accepted"] and b["duplicate"] and a["deployment_id"] == dep["id"]
    items = [{"seq": i, "fid": f"f{i}", "key": "k", "name": "score", "ts": 1.5 * i, "value": {"p": i}}
             for i in range(5)]
    assert dev.upload_results(items, task="res", version="1.0.0") == {"accepted": 5, "duplicates": 0}
    assert dev.upload_results([*items[2:], {"seq": 9, "value": 1}], task="res", version="1.0.0") == {
        "accepted": 1, "duplicates": 3}
    # the pipeline tunnel's wire format: gzip JSON, token as a query parameter
    body = gzip.compress(json.dumps({"device": "res-1", "items": [{"seq": 20, "name": "n", "value": 2}]}).encode())
    r = env.http.post(f"/v1/results?task=res&version=1.0.0&token={dev.token}", content=body,
                      headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    rows = env.admin.results("res", version="1.0.0")
    assert [r["seq"] for r in rows] == [0, 1, 2, 3, 4, 9, 20] and rows[0]["value"] == {"p": 0}
    assert env.admin.results("res", device="res-1", after=rows[2]["received_at"] and 0, limit=2)[1]["seq"] == 1
    r = env.http.post("/v1/results", json={"device": "someone-else", "items": []}, headers=dev.headers)
    assert r.status_code == 403
    r = env.http.post("/v1/results", json={"items": [{"seq": "x"}]}, headers=dev.headers)
    assert r.status_code == 422


def test_devices_listing(env: Env) -> None:
    env.publish("l", "1.0.0")
    env.device("l-1", os="linux", region="eu")
    env.deploy(task="l", version="1.0.0")
    rows = env.admin.devices()
    assert rows[0]["id"] == "l-1" and rows[0]["online"] and rows[0]["targets"] == {"l": "1.0.0"}
    assert rows[0]["attributes"]["region"] == "eu"


def test_openapi_published(env: Env) -> None:
    spec = env.http.get("/openapi.json").json()
    for path in ("/v1/tasks", "/v1/deployments", "/v1/device/stream", "/v1/blobs/{sha256}", "/v1/results"):
        assert path in spec["paths"]


def test_migrations_match_models(env: Env) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from walle_registry.models import Base

    with env.registry.db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    env.registry.db.migrate()  # idempotent
