"""Small HTTP clients for the registry: :class:`RegistryClient` (publishers, operators) and
:class:`DeviceClient` (the device side of push-then-pull). Used by the CLI, the tests and the
benchmark; any ``httpx.Client`` (a FastAPI ``TestClient`` included) can carry the requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from walle_core.task import KeyStore, Manifest, load_private_key


class ApiError(Exception):
    """The registry answered with an error status; ``detail`` is its explanation."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        try:
            body = resp.json()
            error, detail = str(body.get("error", "")), str(body.get("detail", resp.text))
        except (ValueError, AttributeError):
            error, detail = "", resp.text[:500]
        raise ApiError(resp.status_code, error, detail)
    return resp


class _Base:
    def __init__(self, url: str = "", token: str = "", http: httpx.Client | None = None,
                 timeout: float = 30.0) -> None:
        self.http = http if http is not None else httpx.Client(base_url=url, timeout=timeout)
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _req(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return _check(self.http.request(method, path, headers=headers, **kw))

    def close(self) -> None:
        self.http.close()


class RegistryClient(_Base):
    """Publisher/operator calls (token scopes decide which succeed)."""

    def add_key(self, pem: str, name: str = "") -> dict[str, Any]:
        return dict(self._req("POST", "/v1/keys", json={"pem": pem, "name": name}).json())

    def keys(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/keys").json())

    def revoke_key(self, key_id: str) -> None:
        self._req("DELETE", f"/v1/keys/{key_id}")

    def create_token(self, name: str, scopes: list[str]) -> dict[str, Any]:
        return dict(self._req("POST", "/v1/tokens", json={"name": name, "scopes": scopes}).json())

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/tokens").json())

    def revoke_token(self, token_id: int) -> None:
        self._req("DELETE", f"/v1/tokens/{token_id}")

    def publish(self, bundle: Path, on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload a signed bundle, streamed from disk; ``on_chunk(n)`` follows the bytes sent."""
        size = Path(bundle).stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(bundle, "rb") as f:
                while block := f.read(1 << 20):
                    if on_chunk is not None:
                        on_chunk(len(block))
                    yield block

        resp = self._req("POST", "/v1/tasks", content=chunks(),
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        return dict(resp.json())

    def publish_plugin(self, wheel: Path, private_key: Path) -> dict[str, Any]:
        """Publish a wheel; the answer also carries the ``key_id`` and ``signature`` sent, which a
        plugin deployment (:meth:`deploy_plugin`) hands on to the devices."""
        data = Path(wheel).read_bytes()
        signed = sign_plugin(data, private_key)
        params = {"filename": Path(wheel).name, **signed}
        out = dict(self._req("POST", "/v1/plugins", params=params, content=data,
                             headers={"Content-Type": "application/octet-stream"}).json())
        return {**out, **signed}

    def deploy_plugin(self, name: str, version: str, key_id: str, signature: str, **spec: Any) -> dict[str, Any]:
        """Target a published plugin at devices (``device_ids``, ``filters``, ``percentage``)."""
        body = {"name": name, "version": version, "key_id": key_id, "signature": signature, **spec}
        return dict(self._req("POST", "/v1/plugin-deployments", json=body).json())

    def plugin_deployments(self, name: str | None = None) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/plugin-deployments", params={"name": name} if name else None).json())

    def tasks(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/tasks").json())

    def deploy(self, **spec: Any) -> dict[str, Any]:
        return dict(self._req("POST", "/v1/deployments", json=spec).json())

    def deployments(self, task: str | None = None) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/deployments", params={"task": task} if task else None).json())

    def status(self, dep_id: int) -> dict[str, Any]:
        return dict(self._req("GET", f"/v1/deployments/{dep_id}").json())

    def action(self, dep_id: int, action: str, **body: Any) -> dict[str, Any]:
        return dict(self._req("POST", f"/v1/deployments/{dep_id}/{action}", json=body or None).json())

    def devices(self, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/devices", params={"limit": limit, "offset": offset}).json())

    def results(self, task: str, version: str | None = None, device: str | None = None, after: int = 0,
                limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"task": task, "after": after, "limit": limit}
        if version:
            params["version"] = version
        if device:
            params["device"] = device
        return list(self._req("GET", "/v1/results", params=params).json())

    def all_results(self, task: str, version: str | None = None, device: str | None = None,
                    page: int = 5000, after: int = 0) -> Iterator[dict[str, Any]]:
        """Every result of ``task`` after result id ``after``, page by page (each page continues
        after the last id of the one before)."""
        while True:
            rows = self.results(task, version, device, after, page)
            yield from rows
            if len(rows) < page:
                return
            last = int(rows[-1].get("id") or 0)
            if last <= after:
                raise ApiError(200, "no_ids", "this registry does not return result ids; cannot page")
            after = last

    def register(self, device_id: str | None = None, **attributes: Any) -> DeviceClient:
        body: dict[str, Any] = {"attributes": attributes}
        if device_id:
            body["device_id"] = device_id
        cred = self._req("POST", "/v1/devices/register", json=body).json()
        return DeviceClient(token=cred["token"], device_id=cred["device_id"], http=self.http)


def sign_plugin(wheel: bytes, private_key: Path) -> dict[str, str]:
    """``key_id`` and base64 Ed25519 ``signature`` over the wheel's sha256 hex (what the registry
    and the devices verify)."""
    from walle_core.task import key_id

    key = load_private_key(Path(private_key))
    sig = key.sign(hashlib.sha256(wheel).hexdigest().encode("ascii"))
    return {"key_id": key_id(key.public_key()), "signature": base64.b64encode(sig).decode()}


class DeviceClient(_Base):
    """A device: check in, follow notices, pull manifests and blobs (resumable), report."""

    def __init__(self, url: str = "", token: str = "", device_id: str = "", http: httpx.Client | None = None,
                 timeout: float = 30.0) -> None:
        super().__init__(url, token, http, timeout)
        self.device_id = device_id
        self.cursor = 0
        self.report_seq = 0

    def checkin(self, metrics: dict[str, Any] | None = None, ack: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"metrics": metrics or {}}
        if ack:
            body["cursor"] = self.cursor
        return dict(self._req("POST", "/v1/device/checkin", json=body).json())

    def set_attributes(self, **attributes: Any) -> dict[str, Any]:
        return dict(self._req("PUT", "/v1/device/attributes", json=attributes).json())

    def notices(self, after: int | None = None) -> list[dict[str, Any]]:
        """Every notice after the cursor (paged); advances ``self.cursor``."""
        out: list[dict[str, Any]] = []
        cursor = self.cursor if after is None else after
        while True:
            page = self._req("GET", "/v1/device/notices", params={"after": cursor}).json()
            out += page["notices"]
            if not page["notices"]:
                break
            cursor = page["cursor"]
        self.cursor = max(self.cursor, cursor)
        return out

    def stream(self, cursor: int | None = None) -> Iterator[dict[str, Any]]:
        """Follow ``/v1/device/stream`` (server-sent events) and yield each notice."""
        params = {"cursor": cursor if cursor is not None else self.cursor}
        with self.http.stream("GET", "/v1/device/stream", params=params, headers=self.headers,
                              timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                _check(resp)
            data: list[str] = []
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    notice = json.loads("\n".join(data))
                    data = []
                    self.cursor = max(self.cursor, int(notice["seq"]))
                    yield notice

    def targets(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/device/targets").json())

    def report(self, task: str, version: str, status: str, deployment_id: int | None = None, error: str = "",
               metrics: dict[str, Any] | None = None, seq: int | None = None) -> dict[str, Any]:
        if seq is None:
            self.report_seq += 1
            seq = self.report_seq
        body: dict[str, Any] = {"task": task, "version": version, "status": status, "error": error,
                                "metrics": metrics or {}, "seq": seq}
        if deployment_id is not None:
            body["deployment_id"] = deployment_id
        return dict(self._req("POST", "/v1/device/reports", json=body).json())

    def upload_results(self, items: list[dict[str, Any]], task: str = "", version: str = "") -> dict[str, Any]:
        body = {"device": self.device_id, "items": items, "task": task, "version": version}
        return dict(self._req("POST", "/v1/results", json=body).json())

    def manifest(self, task: str, version: str, etag: str | None = None) -> tuple[bytes | None, dict[str, str]]:
        """Canonical manifest bytes (None when ``etag`` still matches) and the response headers."""
        headers = {"If-None-Match": etag} if etag else {}
        resp = self._req("GET", f"/v1/releases/{task}/{version}/manifest", headers=headers)
        return (None if resp.status_code == 304 else resp.content), dict(resp.headers)

    def download(self, sha256: str, dest: Path, on_chunk: Callable[[int], None] | None = None) -> Path:
        """Download blob ``sha256`` to ``dest``, resuming a ``dest.part`` left by an interrupted try."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"If-Range": f'"{sha256}"', "Range": f"bytes={have}-"} if have else {}
        with self.http.stream("GET", f"/v1/blobs/{sha256}", headers={**self.headers, **headers}) as resp:
            if resp.status_code >= 400:
                resp.read()
                _check(resp)
            mode = "ab" if resp.status_code == 206 else "wb"
            with part.open(mode) as out:
                for chunk in resp.iter_bytes(1 << 16):
                    out.write(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk))
        with part.open("rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
        if got != sha256:
            part.unlink()
            raise ValueError(f"downloaded blob does not match sha256 {sha256}")
        part.replace(dest)
        return dest

    def pull(self, task: str, version: str, dest: Path, keys: KeyStore,
             cache: dict[str, Path] | None = None) -> Manifest:
        """Fetch and verify the signed manifest, then download the files it lists that are not in
        ``cache`` (sha256 -> local path), verifying each digest. Files land in ``dest``."""
        raw, headers = self.manifest(task, version)
        assert raw is not None
        sig = json.loads(base64.b64decode(headers["x-walle-signature"]))
        keys.verify(sig["key_id"], base64.b64decode(sig["signature"]), raw)
        manifest = Manifest.from_bytes(raw)
        cache = cache if cache is not None else {}
        for f in manifest.files:
            target = Path(dest).joinpath(*f.path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.sha256 in cache:
                target.write_bytes(cache[f.sha256].read_bytes())
            else:
                self.download(f.sha256, target)
                cache[f.sha256] = target
        return manifest
