"""Publisher keys: revocable, and a bundle's signature is checked before anything about an existing
version is revealed; error answers never show the server's paths."""

from __future__ import annotations

import gzip
import time

import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, make_bundle, make_keys

from walle_registry.client import ApiError, RegistryClient


def _error(fn: object, *args: object, **kw: object) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


def test_a_publisher_key_can_be_revoked(env: Env) -> None:
    old = make_keys(env.tmp / "old", "old")
    kid = env.admin.add_key(old.pub_pem, "old laptop")["key_id"]
    env.admin.publish(make_bundle(env.tmp, old, "signed", "1.0.0"))
    env.device("k-1")
    ops = RegistryClient(token=env.admin.create_token("ops", ["deploy", "publish"])["token"], http=env.http)
    assert env.http.delete(f"/v1/keys/{kid}", headers=ops.headers).status_code == 403  # admins only
    assert env.http.delete(f"/v1/keys/{kid}", headers=env.admin.headers).status_code == 204
    assert kid not in {k["key_id"] for k in env.admin.http.get("/v1/keys", headers=env.admin.headers).json()}
    err = _error(env.admin.publish, make_bundle(env.tmp, old, "signed", "1.1.0"))
    assert err.status == 422 and "bad signature" in err.detail
    err = _error(env.admin.deploy, task="signed", version="1.0.0")
    assert err.status == 422 and "no longer trusted" in err.detail
    assert env.http.delete(f"/v1/keys/{kid}", headers=env.admin.headers).status_code == 404
    env.publish("other", "1.0.0")  # the other key still works
    assert env.deploy(task="other", version="1.0.0")["state"] == "running"


def test_a_resigned_bundle_for_an_existing_version_is_checked_for_its_signature_first(env: Env) -> None:
    bundle = make_bundle(env.tmp, env.keys, "re", "1.0.0", model=b"original")
    env.admin.publish(bundle)
    stranger = make_keys(env.tmp / "stranger", "stranger")
    same = make_bundle(env.tmp, stranger, "re", "1.0.0", model=b"original")  # same content, untrusted key
    different = make_bundle(env.tmp, stranger, "re", "1.0.0", model=b"changed")
    for b in (same, different):
        err = _error(env.admin.publish, b)
        assert err.status == 422 and "bad signature" in err.detail and "not trusted" in err.detail
    unsigned = make_bundle(env.tmp, None, "re", "1.0.0", model=b"changed")
    assert _error(env.admin.publish, unsigned).status == 422
    assert _error(env.admin.publish, make_bundle(env.tmp, env.keys, "re", "1.0.0", model=b"changed")).status == 409
    assert not env.admin.publish(bundle)["created"]  # the trusted identical upload stays idempotent


def test_error_answers_never_show_server_paths(env: Env) -> None:
    roots = {str(env.registry.settings.data_dir), str(env.registry.settings.data_dir.resolve()), str(env.tmp)}
    answers = [
        env.http.post("/v1/keys", json={"pem": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"},
                      headers=env.admin.headers),
        env.http.post("/v1/keys", json={"pem": "garbage"}, headers=env.admin.headers),
        env.http.post("/v1/tasks", content=b"not a bundle", headers=env.admin.headers),
        env.http.post("/v1/tasks", content=gzip.compress(b"not a tar"), headers=env.admin.headers),
        env.http.post("/v1/tasks", content=gzip.compress(b"\0" * 1024), headers=env.admin.headers),
        env.http.post("/v1/plugins?filename=x-1.0-py3-none-any.whl&key_id=k&signature=AA==", content=b"not a zip",
                      headers=env.admin.headers),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        assert not any(root in r.text for root in roots), r.text
        assert "/tmp" not in r.text and "upload-" not in r.text and ".pub" not in r.text, r.text


def test_revocations_hold_on_another_replica_at_once(env: Env) -> None:
    """A second app over the same database (and data folder): a key or a token revoked on one
    replica is refused on the other without waiting for a cache to expire."""
    from fastapi.testclient import TestClient

    from walle_registry.app import create_app

    tok = env.admin.create_token("ci", ["publish"])
    kid = env.admin.add_key(make_keys(env.tmp / "k2", "k2").pub_pem)["key_id"]
    other_app = create_app(env.registry.settings, admin_token=ADMIN)
    with TestClient(other_app) as other:
        headers = {"Authorization": f"Bearer {tok['token']}"}
        assert other.get("/v1/tasks", headers=headers).status_code == 200  # cached on the other replica now
        assert kid in {k["key_id"] for k in other.get("/v1/keys", headers=headers).json()}
        assert env.http.delete(f"/v1/keys/{kid}", headers=env.admin.headers).status_code == 204
        assert kid not in {k["key_id"] for k in other.get("/v1/keys", headers=headers).json()}
        assert env.http.delete(f"/v1/tokens/{tok['id']}", headers=env.admin.headers).status_code == 204
        if env.registry.db.is_postgres:  # the replicas share a broker only on PostgreSQL
            deadline = time.monotonic() + 5
            while other.get("/v1/tasks", headers=headers).status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert other.get("/v1/tasks", headers=headers).status_code == 401
