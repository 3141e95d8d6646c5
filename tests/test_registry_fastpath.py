"""The device fast path (walle_registry.fastpath) answers exactly what the FastAPI routes answer:
the same request, once through the layer and once with it switched off, gets the same status,
body and headers; requests it cannot answer from memory go to FastAPI unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, make_bundle, make_keys

from walle_registry.app import create_app
from walle_registry.client import RegistryClient
from walle_registry.fastpath import DeviceFastPath
from walle_registry.settings import Settings

HEADERS = ("content-type", "content-length", "etag", "cache-control", "x-accel-redirect", "x-walle-signature",
           "x-walle-key-id", "x-walle-bundle-sha256", "retry-after", "www-authenticate")


def _answer(r: Any) -> tuple[int, bytes, dict[str, str]]:
    return r.status_code, r.content, {h: r.headers[h] for h in HEADERS if h in r.headers}


def test_fast_path_answers_as_the_routes_do(tmp_path: Path) -> None:
    st = Settings(data_dir=tmp_path / "data", accel_redirect="/_walle_blobs")
    app = create_app(st, admin_token=ADMIN)
    fast = DeviceFastPath(app, app.state.registry)
    with TestClient(fast) as http:
        admin = RegistryClient(token=ADMIN, http=http)
        keys = make_keys(tmp_path / "keys")
        admin.add_key(keys.pub_pem, "publisher")
        rel = admin.publish(make_bundle(tmp_path / "bundles", keys, "fp", "1.0.0"))
        devs = [admin.register(f"fp-{i}", region="eu") for i in range(2)]
        dep = admin.deploy(task="fp", version="1.0.0")
        auth = [{"Authorization": f"Bearer {d.token}"} for d in devs]

        def both(method: str, path: str, headers: dict[str, str], **kw: Any) -> tuple[Any, Any, int]:
            fast.enabled = False
            slow = _answer(http.request(method, path, headers=headers, **kw))
            fast.enabled = True
            before = fast.answered
            quick = _answer(http.request(method, path, headers=headers, **kw))
            return slow, quick, fast.answered - before

        sha = rel["files"][0]["sha256"]
        for method, path, kw in [
            ("POST", "/v1/device/checkin", {"json": {"metrics": {"battery": 0.5}, "cursor": 1}}),
            ("GET", "/v1/releases/fp/1.0.0/manifest", {}),
            ("GET", f"/v1/blobs/{sha}", {}),
        ]:
            slow, quick, answered = both(method, path, auth[0], **kw)
            assert quick == slow, (path, slow, quick)
            assert answered == 1, path  # the layer answered it (the comparison is not vacuous)
        # what the layer cannot answer goes through unchanged: a bad body, a conditional request,
        # an unknown blob, a publisher token
        for method, path, headers, kw in [
            ("POST", "/v1/device/checkin", auth[0], {"json": {"cursor": -1}}),
            ("POST", "/v1/device/checkin", auth[0], {"content": b"{not json", "headers": None}),
            ("GET", "/v1/releases/fp/1.0.0/manifest", {**auth[0], "If-None-Match": "*"}, {}),
            ("GET", f"/v1/blobs/{'0' * 64}", auth[0], {}),
            ("GET", f"/v1/blobs/{sha}", {"Authorization": f"Bearer {ADMIN}"}, {}),
        ]:
            kw = {k: v for k, v in kw.items() if v is not None}
            slow, quick, answered = both(method, path, headers, **kw)
            assert quick == slow and answered == 0, (path, slow, quick)
        # reports change state, so each device sends the same ones, one device through each path
        reports = [{"task": "fp", "version": "1.0.0", "status": "installed", "seq": 7, "deployment_id": dep["id"]},
                   {"task": "fp", "version": "1.0.0", "status": "installed", "seq": 7, "deployment_id": dep["id"]},
                   {"task": "nope", "version": "1.0.0", "status": "failed", "seq": 8}]
        assert http.post("/v1/device/checkin", json={}, headers=auth[1]).status_code == 200  # caches its credential
        outs: list[list[Any]] = [[], []]
        for i, on in enumerate((False, True)):
            fast.enabled = on
            before = fast.answered
            for body in reports:
                status, content, headers = _answer(http.post("/v1/device/reports", json=body, headers=auth[i]))
                outs[i].append((status, content.replace(devs[i].device_id.encode(), b"<dev>"), headers))
            assert fast.answered - before == (len(reports) if on else 0)
        assert outs[1] == outs[0]
        assert [o[0] for o in outs[0]] == [200, 200, 403]
        assert admin.status(dep["id"])["counts"] == {"installed": 2}
