"""The device hot paths as a plain ASGI layer in front of FastAPI.

A rollout is a burst of the same four requests from every device — check-in, manifest, blob
authorisation, status report — and FastAPI's routing, dependency solving and middleware cost
several times the work of answering them from the replica's caches. This layer answers exactly
those requests when everything they need is already in memory: a *cached* device credential, a
body that validates, a cached grant and release (manifest, blob), the check-in's cached cursor,
and no conditional or ranged request. Anything else — a cache miss, a bad body, ``If-None-Match``,
``Range``, ``HEAD``, another path — goes to the FastAPI app unchanged (a consumed body is replayed),
so every refusal and every slower case keeps its one implementation there.

The answers are the ones the FastAPI routes give (same models, status codes, headers and error
bodies; ``tests/test_registry_fastpath.py`` compares them); the same rate limit is taken once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from walle_registry import schemas as S
from walle_registry.auth import DEVICE_PREFIX, Principal
from walle_registry.blobs import SHA_RE, LocalBlobStore, blob_key
from walle_registry.context import Registry
from walle_registry.errors import RateLimited, RegistryError, Unauthorized, scrub_paths
from walle_registry.services.deployments import DeviceReport

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 << 10  # device check-ins and reports are small; larger bodies take the full path
JSON_TYPE = (b"content-type", b"application/json")
M = TypeVar("M", bound=BaseModel)


class DeviceFastPath:
    def __init__(self, app: ASGIApp, reg: Registry) -> None:
        self.app, self.reg = app, reg
        self.enabled = True
        self.answered = 0  # requests this layer answered itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/v1/device/checkin":
            handler = self._checkin
        elif method == "POST" and path == "/v1/device/reports":
            handler = self._report
        elif method == "GET" and path.startswith("/v1/blobs/"):
            handler = self._blob
        elif method == "GET" and path.startswith("/v1/releases/") and path.endswith("/manifest"):
            handler = self._manifest
        else:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        principal = self._cached_device(headers)
        if principal is not None and await handler(scope, receive, send, headers, principal):
            self.answered += 1
        else:
            await self.app(scope, _replay(scope, receive), send)

    # ------------------------------------------------------------------ pieces

    def _cached_device(self, headers: dict[bytes, bytes]) -> Principal | None:
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        secret = value.strip()
        if scheme.lower() != "bearer" or not secret.startswith(DEVICE_PREFIX) or len(secret) > 1024:
            return None
        p = self.reg.credentials.cached_principal(secret)
        return p if p is not None and p.kind == "device" else None

    def _allowed(self, p: Principal) -> bool:
        """The device's rate token; a refusal goes to the full path, which refuses it too."""
        return not self.reg.limiter.take(p.name)

    async def _body(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes]) -> Any:
        """The decoded JSON body, or None (then the full path answers, with the body replayed)."""
        ctype = headers.get(b"content-type")
        if ctype is not None and b"json" not in ctype.lower():
            return None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
            if size > MAX_BODY:
                break
        raw = b"".join(chunks)
        scope["walle.body"] = (raw, more)
        if more or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def _validated(self, model: type[M], scope: Scope, receive: Receive,
                         headers: dict[bytes, bytes]) -> M | None:
        """The body as ``model``, or None for the full path (no body, too large, not valid)."""
        data = await self._body(scope, receive, headers)
        if data is None:
            return None
        try:
            return model.model_validate(data)
        except ValidationError:
            return None

    async def _checkin(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                       p: Principal) -> bool:
        body = await self._validated(S.CheckIn, scope, receive, headers)
        if body is None:
            return False
        if self.reg.devices.cursors.get(p.name) is None or self.reg.devices.latest.get(p.name) is None:
            return False  # the full path loads them in a thread
        if not self._allowed(p):
            return False
        out = self.reg.devices.checkin_cached(p.name, body.metrics, body.cursor)
        if out is None:
            return False
        await _respond(send, 200, S.CheckInOut(cursor=out[0], latest=out[1]).model_dump_json().encode(), [JSON_TYPE])
        return True

    async def _report(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                      p: Principal) -> bool:
        body = await self._validated(S.ReportIn, scope, receive, headers)
        if body is None:
            return False
        if not self._allowed(p):
            return False
        try:
            dup, dep_id = await self.reg.reports.submit(DeviceReport(
                p.name, body.task, body.version, body.status, body.deployment_id, body.error, body.metrics, body.seq))
        except RegistryError as exc:
            await self._error(send, exc)
            return True
        out = S.ReportOut(accepted=not dup, duplicate=dup, deployment_id=dep_id)
        await _respond(send, 200, out.model_dump_json().encode(), [JSON_TYPE])
        return True

    async def _manifest(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                        p: Principal) -> bool:
        parts = scope["path"].split("/")  # '', v1, releases, task, version, manifest
        if len(parts) != 6 or b"if-none-match" in headers:
            return False
        task, version = parts[3], parts[4]
        if not (0 < len(task) <= 64 and 0 < len(version) <= 64):
            return False
        rel = self.reg.publishing.release_cached(task, version)
        if rel is None or not self.reg.grants.can_read_release_cached(p.name, task, version):
            return False
        if not self._allowed(p):
            return False
        extra = [(b"etag", f'"{rel.manifest_digest}"'.encode()),
                 (b"cache-control", b"private, max-age=31536000, immutable"),
                 (b"x-walle-signature", base64.b64encode(rel.signature.encode())),
                 (b"x-walle-key-id", rel.key_id.encode()), (b"x-walle-bundle-sha256", rel.bundle_sha256.encode()),
                 JSON_TYPE]
        await _respond(send, 200, rel.manifest.encode("utf-8"), extra)
        return True

    async def _blob(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                    p: Principal) -> bool:
        settings = self.reg.settings
        sha = scope["path"][len("/v1/blobs/"):]
        if not settings.accel_redirect or not isinstance(self.reg.blobs, LocalBlobStore) or \
                b"if-none-match" in headers or len(sha) != 64 or not SHA_RE.match(sha):
            return False
        if not self.reg.grants.may_read_blob_cached(p.name, sha) or not self._allowed(p):
            return False
        target = f"{settings.accel_redirect.rstrip('/')}/{blob_key(sha)}".encode()
        await _respond(send, 200, b"", [(b"x-accel-redirect", target), (b"content-type", b"application/octet-stream")])
        return True

    async def _error(self, send: Send, exc: RegistryError) -> None:
        """The body and headers of the app's RegistryError handler."""
        settings = self.reg.settings
        detail = scrub_paths(exc.message, settings.data_dir, settings.spool_dir)
        extra = [JSON_TYPE]
        if isinstance(exc, RateLimited):
            extra.append((b"retry-after", f"{max(1, round(exc.retry_after))}".encode()))
        if isinstance(exc, Unauthorized):
            extra.append((b"www-authenticate", b"Bearer"))
        body = json.dumps({"error": exc.code, "detail": detail}, ensure_ascii=False, separators=(",", ":"))
        await _respond(send, exc.status, body.encode(), extra)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope["headers"]}


def _replay(scope: Scope, receive: Receive) -> Receive:
    """``receive`` that first hands back what the fast path already read of the body."""
    read = scope.pop("walle.body", None)
    if read is None:
        return receive
    raw, more = read
    pending: list[Message] = [{"type": "http.request", "body": raw, "more_body": more}]

    async def again() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return again


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
