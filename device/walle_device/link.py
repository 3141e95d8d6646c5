"""The device's side of the registry's HTTP API (asyncio, httpx): enrol, follow notices, pull, report.

Only the wire protocol lives here (see docs/registry.md); what to do with a notice is the agent's
business. Two kinds of failure are kept apart because the agent treats them differently:

* :class:`LinkDown` — the registry could not be reached or answered 5xx/429: retry later;
* :class:`Rejected` — a 4xx answer: the request itself is wrong and retrying will not help.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class LinkError(Exception):
    """Base of the link's failures."""


class LinkDown(LinkError):
    """Registry unreachable, timed out, or temporarily unable to answer (retry later)."""


class Corrupt(LinkDown):
    """A download did not hash to the digest it was announced with (thrown away; retried later)."""


class Rejected(LinkError):
    """The registry refused the request (a 4xx other than 408/425/429)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        detail = resp.text[:300]
    except httpx.ResponseNotRead:
        detail = ""
    if resp.status_code in RETRYABLE:
        raise LinkDown(f"HTTP {resp.status_code}: {detail}")
    raise Rejected(resp.status_code, detail)


@dataclass(frozen=True)
class Target:
    """What the registry wants this device to run for one task."""

    task: str
    version: str
    digest: str
    deployment: int | None


@dataclass(frozen=True)
class SignedManifest:
    raw: bytes  # canonical manifest bytes, exactly as signed
    key_id: str
    signature: bytes
    bundle_sha256: str


@dataclass(frozen=True)
class PluginTarget:
    """A backend plugin wheel the registry wants on this device, with its publisher signature."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int
    key_id: str
    signature: bytes  # Ed25519 over the wheel's sha256 hex
    deployment: int


class RegistryLink:
    """One device's connection to the registry. ``http`` may be shared by many devices (the simulator)."""

    def __init__(self, url: str, http: httpx.AsyncClient | None = None, token: str = "",
                 timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._own = http is None
        self.http = http if http is not None else httpx.AsyncClient(timeout=timeout_s)
        self.timeout_s = timeout_s
        self.token = token

    async def close(self) -> None:
        if self._own:
            await self.http.aclose()

    def _headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token if token is not None else self.token}"}

    async def _request(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {**self._headers(token), **kw.pop("headers", {})}
        try:
            resp = await self.http.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kw)
        except httpx.HTTPError as exc:  # refused, reset, timed out, protocol error
            raise LinkDown(f"{type(exc).__name__}: {exc}") from exc
        _raise_for(resp)
        return resp

    # ------------------------------------------------------------------ enrolment and health

    async def register(self, enroll_token: str, device_id: str | None, attributes: dict[str, Any]) -> tuple[str, str]:
        """Register with a publisher credential that has the ``enroll`` scope; (device id, token)."""
        body: dict[str, Any] = {"attributes": attributes}
        if device_id:
            body["device_id"] = device_id
        resp = await self._request("POST", "/v1/devices/register", token=enroll_token, json=body)
        cred = resp.json()
        return str(cred["device_id"]), str(cred["token"])

    async def checkin(self, cursor: int, metrics: dict[str, Any]) -> dict[str, Any]:
        resp = await self._request("POST", "/v1/device/checkin", json={"cursor": cursor, "metrics": metrics})
        return dict(resp.json())

    async def set_attributes(self, attributes: dict[str, Any]) -> None:
        await self._request("PUT", "/v1/device/attributes", json=attributes)

    async def targets(self) -> list[Target]:
        rows = (await self._request("GET", "/v1/device/targets")).json()
        return [Target(str(t["task"]), str(t["version"]), str(t["digest"]), t.get("deployment")) for t in rows]

    async def report(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict((await self._request("POST", "/v1/device/reports", json=body)).json())

    # ------------------------------------------------------------------ push

    async def notices(self, cursor: int) -> AsyncIterator[dict[str, Any]]:
        """Follow ``/v1/device/stream`` from ``cursor``: yields every notice, the backlog first.

        Ends (raising :class:`LinkDown`) when the connection drops; the caller reconnects.
        """
        timeout = httpx.Timeout(self.timeout_s, read=None)
        try:
            async with self.http.stream("GET", self.url + "/v1/device/stream", params={"cursor": cursor},
                                        headers=self._headers(), timeout=timeout) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                yield {"seq": -1, "action": "connected"}
                data: list[str] = []
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        notice = json.loads("\n".join(data))
                        data = []
                        yield dict(notice)
        except httpx.HTTPError as exc:
            raise LinkDown(f"stream: {type(exc).__name__}: {exc}") from exc
        raise LinkDown("stream closed by the registry")

    # ------------------------------------------------------------------ pull

    async def manifest(self, task: str, version: str) -> SignedManifest:
        """The canonical signed manifest of a release (verify it before fetching anything else)."""
        resp = await self._request("GET", f"/v1/releases/{task}/{version}/manifest")
        sig = json.loads(base64.b64decode(resp.headers["x-walle-signature"]))
        return SignedManifest(resp.content, str(sig["key_id"]), base64.b64decode(sig["signature"]),
                              resp.headers["x-walle-bundle-sha256"])

    async def download_bundle(self, task: str, version: str, sha256: str, dest: Path,
                              on_chunk: Callable[[int], None] | None = None) -> Path:
        """Download a release's bundle to ``dest`` (resumable, sha256 checked: see :meth:`_download`)."""
        return await self._download(f"/v1/releases/{task}/{version}/bundle", sha256, dest,
                                    f"bundle of {task} {version}", on_chunk)

    async def plugins(self) -> list[PluginTarget]:
        """The backend plugin versions the registry targets at this device."""
        rows = (await self._request("GET", "/v1/device/plugins")).json()
        return [PluginTarget(str(r["name"]), str(r["version"]), str(r["filename"]), str(r["sha256"]),
                             int(r["size"]), str(r["key_id"]), base64.b64decode(r["signature"]),
                             int(r["deployment"])) for r in rows]

    async def download_plugin(self, plugin: PluginTarget, dest: Path) -> Path:
        """Download a plugin wheel to ``dest`` (resumable, sha256 checked)."""
        return await self._download(f"/v1/plugins/{plugin.name}/{plugin.version}/wheel", plugin.sha256, dest,
                                    f"plugin {plugin.name} {plugin.version}")

    async def plugin_status(self, body: dict[str, Any]) -> None:
        await self._request("POST", "/v1/device/plugins/status", json=body)

    async def _download(self, path: str, sha256: str, dest: Path, what: str,
                        on_chunk: Callable[[int], None] | None = None) -> Path:
        """GET ``path`` into ``dest``; a ``dest.part`` left by an interrupted try is resumed with
        ``Range`` (``If-Range`` guards against a changed file). The sha256 is checked; a mismatch
        throws the part file away (:class:`LinkDown`: the next try starts over)."""
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = self._headers()
        if have:
            headers.update({"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'})
        try:
            async with self.http.stream("GET", self.url + path, headers=headers, timeout=self.timeout_s) as resp:
                if resp.status_code == 416:  # the part file is already complete (or longer: restart)
                    await resp.aread()
                elif resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                else:
                    with part.open("ab" if resp.status_code == 206 else "wb") as out:
                        async for chunk in resp.aiter_bytes(1 << 16):
                            out.write(chunk)
                            if on_chunk is not None:
                                on_chunk(len(chunk))
        except httpx.HTTPError as exc:
            raise LinkDown(f"download: {type(exc).__name__}: {exc}") from exc
        with part.open("rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
        if got != sha256:
            part.unlink()
            raise Corrupt(f"{what} does not match sha256 {sha256}; starting over")
        part.replace(dest)
        return dest

    def upload_url(self, path: str = "/v1/results") -> str:
        """Where the pipeline's upload tunnel posts (it cannot set headers: token in the query)."""
        return f"{self.url}{path}?token={self.token}"
