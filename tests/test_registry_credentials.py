"""Least-privilege credentials: the enrolment token only registers new devices (rate limited, no
reads, no console), an existing device id is re-keyed only with its own credential or an admin
token, and a device writes only its own status and results for what was deployed to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, make_env

from walle_registry.client import ApiError, DeviceClient, RegistryClient


def test_the_enrolment_token_only_registers_new_devices(env: Env) -> None:
    rel = env.publish("sec", "1.0.0")
    real = env.device("sec-1")
    env.deploy(task="sec", version="1.0.0")
    enroll = RegistryClient(token=env.admin.create_token("fleet", ["enroll"])["token"], http=env.http)
    fresh = enroll.register("sec-2", os="linux")  # a new device: fine
    assert fresh.checkin()["cursor"] == 0
    h = enroll.headers
    sha = rel["files"][0]["sha256"]
    for path in ("/v1/results?task=sec", "/v1/devices", "/v1/tasks", "/v1/tasks/sec", "/v1/deployments",
                 "/v1/deployments/1", "/v1/keys", "/v1/plugins", "/v1/plugin-deployments", f"/v1/blobs/{sha}",
                 "/v1/releases/sec/1.0.0/manifest", "/v1/releases/sec/1.0.0/bundle", "/v1/tokens"):
        assert env.http.get(path, headers=h).status_code == 403, path
    console = env.http.get(f"/console?token={enroll.token}", follow_redirects=False)
    assert console.status_code == 200 and "Sign in" in console.text  # refused: the sign-in form again
    # re-registering an existing id would lock the real device out: refused, the device keeps working
    with pytest.raises(ApiError) as info:
        enroll.register("sec-1")
    assert info.value.status == 403 and "own credential or an admin" in info.value.detail
    assert real.checkin()["cursor"] >= 0 and env.target(real, "sec") == "1.0.0"


def test_a_device_rekeys_itself_and_an_admin_may_rekey_any(env: Env) -> None:
    dev = env.device("key-1", os="linux")
    r = env.http.post("/v1/devices/register", json={"device_id": "key-1", "attributes": {"os": "android"}},
                      headers=dev.headers)
    assert r.status_code == 201
    new = DeviceClient(token=r.json()["token"], device_id="key-1", http=env.http)
    assert new.checkin()["cursor"] == 0
    with pytest.raises(ApiError):
        dev.checkin()  # the old credential stopped working
    other = env.device("key-2")
    r = env.http.post("/v1/devices/register", json={"device_id": "key-1"}, headers=other.headers)
    assert r.status_code == 403  # a device cannot re-key another one
    assert env.admin.register("key-1").checkin()["cursor"] == 0  # the admin can


def test_enrolment_is_rate_limited(tmp_path: Path) -> None:
    with make_env(tmp_path, None, enroll_rate_per_s=0.001, enroll_burst=3) as env:
        enroll = RegistryClient(token=env.admin.create_token("fleet", ["enroll"])["token"], http=env.http)
        for i in range(3):
            enroll.register(f"rl-{i}")
        r = env.http.post("/v1/devices/register", json={"device_id": "rl-9"}, headers=enroll.headers)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert RegistryClient(token=ADMIN, http=env.http).register("rl-10").device_id == "rl-10"  # admins are not


def test_a_device_writes_only_for_what_was_deployed_to_it(env: Env) -> None:
    env.publish("mine", "1.0.0")
    env.publish("theirs", "1.0.0")
    me, them = env.device("iso-me"), env.device("iso-them")
    env.deploy(task="mine", version="1.0.0", device_ids=["iso-me"])
    theirs = env.deploy(task="theirs", version="1.0.0", device_ids=["iso-them"])
    for kw in ({"deployment_id": theirs["id"]}, {}):
        with pytest.raises(ApiError) as info:
            me.report("theirs", "1.0.0", "failed", error="injected text", **kw)
        assert info.value.status == 403
    st = env.admin.status(theirs["id"])
    assert st["errors"] == [] and st["counts"] == {"notified": 1}
    with pytest.raises(ApiError) as info:
        me.upload_results([{"seq": 1, "value": "forged"}], task="theirs", version="1.0.0")
    assert info.value.status == 403
    with pytest.raises(ApiError):
        me.upload_results([{"seq": 2, "task": "theirs", "value": "forged"}], task="mine")
    assert env.admin.results("theirs") == []
    # its own status and results go through
    assert me.report("mine", "1.0.0", "installed")["accepted"]
    assert me.upload_results([{"seq": 3, "value": 1}], task="mine", version="1.0.0")["accepted"] == 1
    assert them.report("theirs", "1.0.0", "installed", deployment_id=theirs["id"])["accepted"]
