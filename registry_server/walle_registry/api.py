"""The HTTP API (FastAPI). OpenAPI at ``/openapi.json``, interactive docs at ``/docs``.

Publishers and operators send ``Authorization: Bearer wpt_...`` (scopes: publish, deploy, enroll,
read, admin; admin implies all, any token may read). Devices send ``Authorization: Bearer
wdt_...``, issued by ``POST /v1/devices/register``; device endpoints are rate limited per device.
Every write needs a credential.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

import walle_registry
from walle_registry import schemas as S
from walle_registry.auth import Principal
from walle_registry.blobs import check_sha
from walle_registry.broker import KEEPALIVE
from walle_registry.errors import (
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RegistryError,
    TooLarge,
    Unauthorized,
)
from walle_registry.service import Registry, deployment_dict
from walle_registry.settings import Settings

log = logging.getLogger("walle_registry")
OCTET = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["items"], "properties": {
        "device": {"type": "string"}, "task": {"type": "string"}, "version": {"type": "string"},
        "items": {"type": "array", "items": {"type": "object", "required": ["seq"],
                                             "properties": {"seq": {"type": "integer"}}}}}}}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.Problem} for code in (400, 401, 403, 404, 409, 413, 416, 422, 429)}


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return value.strip()


def _reg(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


async def _authenticate(reg: Registry, secret: str) -> Principal:
    """Cached credentials are checked on the event loop; a miss reads the database in a thread."""
    p = reg.cached_principal(secret)
    if p is None:
        p = await run_in_threadpool(reg.authenticate, secret)
    return p


# The dependencies are coroutines: FastAPI runs plain ``def`` dependencies in the thread pool,
# which would cost every request a thread hand-off before the endpoint even starts.
async def _principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    secret = _bearer(authorization)
    if secret is None:
        raise Unauthorized("missing credential (Authorization: Bearer <token>)")
    return await _authenticate(_reg(request), secret)


def _limit(reg: Registry, p: Principal) -> None:
    wait = reg.limiter.take(p.name)
    if wait:
        raise RateLimited(f"device {p.name} is over its request rate; retry in {wait:.1f}s", wait)


def _scope(name: str) -> Callable[..., Awaitable[Principal]]:
    async def dep(p: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not p.has(name):
            raise Forbidden(f"this credential lacks the {name!r} scope")
        return p
    return dep


async def _device(request: Request, p: Annotated[Principal, Depends(_principal)]) -> Principal:
    if p.kind != "device":
        raise Forbidden("this endpoint is for device credentials")
    _limit(_reg(request), p)
    return p


async def _any(request: Request, p: Annotated[Principal, Depends(_principal)]) -> Principal:
    if p.kind == "device":
        _limit(_reg(request), p)
    return p


Publisher = Annotated[Principal, Depends(_scope("publish"))]
Deployer = Annotated[Principal, Depends(_scope("deploy"))]
Admin = Annotated[Principal, Depends(_scope("admin"))]
Reader = Annotated[Principal, Depends(_scope("read"))]
Enroller = Annotated[Principal, Depends(_scope("enroll"))]
DeviceP = Annotated[Principal, Depends(_device)]
AnyP = Annotated[Principal, Depends(_any)]



def create_app(settings: Settings, registry: Registry | None = None, admin_token: str | None = None) -> FastAPI:
    """Build the app. ``admin_token`` seeds an admin credential (otherwise one is generated and
    written to ``data_dir/admin.token`` the first time, mode 0600)."""
    reg = registry or Registry(settings)
    secret = reg.bootstrap_admin(admin_token)
    if secret is not None and admin_token is None:
        path = settings.data_dir / "admin.token"
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w") as fh:
                fh.write(secret + "\n")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        reg.broker.bind_loop(asyncio.get_running_loop())
        reg.start()
        ticker = asyncio.create_task(_keepalive_ticker(reg, settings.stream_keepalive_s))
        try:
            yield
        finally:
            ticker.cancel()
            reg.close()

    app = FastAPI(title="Walle registry", version=walle_registry.__version__, lifespan=lifespan,
                  description=__doc__ or "", responses=ERRORS)
    app.state.registry = reg

    @app.exception_handler(RegistryError)
    async def _registry_error(_req: Request, exc: RegistryError) -> JSONResponse:
        headers = {"Retry-After": f"{max(1, round(exc.retry_after))}"} if isinstance(exc, RateLimited) else None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs[:5])
        return JSONResponse({"error": "invalid", "detail": detail, "errors": errs}, status_code=422)

    # ------------------------------------------------------------------ misc

    @app.get("/healthz", tags=["misc"])
    def healthz() -> dict[str, Any]:
        return {"ok": True, "version": walle_registry.__version__, "database": reg.db.dialect,
                "streams": reg.broker.connected()}

    # ------------------------------------------------------------------ admin

    @app.post("/v1/tokens", status_code=201, tags=["admin"])
    def create_token(body: S.TokenCreate, _p: Admin) -> S.TokenOut:
        tok, secret = reg.create_token(body.name, list(body.scopes))
        return S.TokenOut(id=tok.id, name=tok.name, scopes=tok.scopes.split(), created_at=tok.created_at,
                          revoked=tok.revoked, token=secret)

    @app.get("/v1/tokens", tags=["admin"])
    def list_tokens(_p: Admin) -> list[S.TokenOut]:
        return [S.TokenOut(id=t.id, name=t.name, scopes=t.scopes.split(), created_at=t.created_at, revoked=t.revoked)
                for t in reg.list_tokens()]

    @app.delete("/v1/tokens/{token_id}", status_code=204, tags=["admin"])
    def revoke_token(token_id: int, _p: Admin) -> Response:
        reg.revoke_token(token_id if 0 < token_id < 2**31 else 0)
        return Response(status_code=204)

    @app.post("/v1/keys", status_code=201, tags=["admin"])
    def add_key(body: S.KeyCreate, _p: Admin) -> S.KeyOut:
        k = reg.add_key(body.pem, body.name)
        return S.KeyOut(key_id=k.key_id, name=k.name, created_at=k.created_at)

    @app.get("/v1/keys", tags=["admin"])
    def list_keys(_p: Reader) -> list[S.KeyOut]:
        return [S.KeyOut(key_id=k.key_id, name=k.name, created_at=k.created_at) for k in reg.list_keys()]

    # ------------------------------------------------------------------ publishing

    async def _spool(request: Request, limit: int) -> Path:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=settings.tmp_dir)
        size = 0
        try:
            with open(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"upload is larger than the {limit}-byte limit")
                    out.write(chunk)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        if size == 0:
            Path(name).unlink(missing_ok=True)
            raise Invalid("empty upload")
        return Path(name)

    def _release_out(rel: Any, created: bool) -> S.ReleaseOut:
        files = json.loads(rel.manifest).get("files", [])
        return S.ReleaseOut(task=rel.task, version=rel.version, manifest_digest=rel.manifest_digest,
                            bundle_sha256=rel.bundle_sha256, bundle_size=rel.bundle_size, key_id=rel.key_id,
                            created_at=rel.created_at, files=files, created=created)

    @app.post("/v1/tasks", tags=["publish"], openapi_extra=OCTET,
              responses={200: {"description": "identical content was already published (idempotent)"},
                         201: {"description": "published"}})
    async def publish_task(request: Request, response: Response, _p: Publisher) -> S.ReleaseOut:
        path = await _spool(request, settings.max_bundle_bytes)
        try:
            rel, created = await run_in_threadpool(reg.publish_bundle, path)
        finally:
            path.unlink(missing_ok=True)
        response.status_code = 201 if created else 200
        return _release_out(rel, created)

    @app.get("/v1/tasks", tags=["publish"])
    def list_tasks(_p: Reader) -> list[S.ReleaseOut]:
        return [_release_out(r, False) for r in reg.releases()]

    @app.get("/v1/tasks/{task}", tags=["publish"])
    def task_versions(task: str, _p: Reader) -> list[S.ReleaseOut]:
        rels = reg.releases(task)
        if not rels:
            raise NotFound(f"task {task} is not published")
        return [_release_out(r, False) for r in rels]

    @app.put("/v1/blobs/{sha256}", status_code=201, tags=["publish"], openapi_extra=OCTET)
    async def put_blob(sha256: str, request: Request, _p: Publisher) -> S.BlobOut:
        check_sha(sha256)
        path = await _spool(request, settings.max_bundle_bytes)
        try:
            info = await run_in_threadpool(reg.put_blob, _file_chunks(path), sha256)
        finally:
            path.unlink(missing_ok=True)
        return S.BlobOut(sha256=info.sha256, size=info.size)

    @app.post("/v1/plugins", tags=["publish"], openapi_extra=OCTET)
    async def publish_plugin(
        request: Request, response: Response, _p: Publisher,
        filename: Annotated[str, Query(max_length=255)], key_id: Annotated[str, Query(max_length=64)],
        signature: Annotated[str, Query(max_length=512, description="base64 Ed25519 signature of the wheel's sha256 hex")],
    ) -> S.PluginOut:
        path = await _spool(request, settings.max_plugin_bytes)
        try:
            row, created = await run_in_threadpool(reg.publish_plugin, path, filename, key_id, signature)
        finally:
            path.unlink(missing_ok=True)
        response.status_code = 201 if created else 200
        return S.PluginOut.model_validate(row, from_attributes=True).model_copy(update={"created": created})

    @app.get("/v1/plugins", tags=["publish"])
    def list_plugins(_p: AnyP) -> list[S.PluginOut]:
        return [S.PluginOut.model_validate(r, from_attributes=True) for r in reg.plugins()]

    @app.get("/v1/plugins/{name}/{version}/wheel", tags=["download"])
    async def plugin_wheel(name: str, version: str, request: Request, _p: AnyP) -> Response:
        row = await run_in_threadpool(reg.plugin, name, version)
        return await _serve_blob(reg, row.sha256, request, "application/octet-stream", row.filename)

    async def _release_for(p: Principal, task: str, version: str) -> Any:
        if p.kind == "device" and not reg.can_read_release_cached(p.name, task, version) and \
                not await run_in_threadpool(reg.can_read_release, p.name, task, version):
            raise NotFound(f"task {task} {version} is not deployed to this device")
        rel = reg.release_cached(task, version)
        if rel is None:
            rel = await run_in_threadpool(reg.release, task, version)
        return rel

    # ------------------------------------------------------------------ downloads

    @app.get("/v1/releases/{task}/{version}/manifest", tags=["download"],
             responses={304: {"description": "not modified"}})
    async def manifest(task: str, version: str, p: AnyP,
                       if_none_match: Annotated[str | None, Header()] = None) -> Response:
        rel = await _release_for(p, task, version)
        etag = f'"{rel.manifest_digest}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable",
                   "X-Walle-Signature": base64.b64encode(rel.signature.encode()).decode(),
                   "X-Walle-Key-Id": rel.key_id, "X-Walle-Bundle-Sha256": rel.bundle_sha256}
        if if_none_match and _etag_match(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        return Response(rel.manifest.encode("utf-8"), media_type="application/json", headers=headers)

    @app.get("/v1/releases/{task}/{version}/bundle", tags=["download"])
    async def bundle(task: str, version: str, request: Request, p: AnyP) -> Response:
        rel = await _release_for(p, task, version)
        return await _serve_blob(reg, rel.bundle_sha256, request, "application/gzip", f"{task}-{version}.walle")

    @app.head("/v1/blobs/{sha256}", tags=["download"], include_in_schema=False)
    @app.get("/v1/blobs/{sha256}", tags=["download"],
             responses={206: {"description": "partial content"}, 304: {"description": "not modified"}})
    async def get_blob(sha256: str, request: Request, p: AnyP) -> Response:
        check_sha(sha256)
        if p.kind == "device" and not reg.device_may_read_blob_cached(p.name, sha256) and \
                not await run_in_threadpool(reg.device_may_read_blob, p.name, sha256):
            raise NotFound(f"blob {sha256} not found")
        return await _serve_blob(reg, sha256, request, "application/octet-stream", None)

    # ------------------------------------------------------------------ devices

    @app.post("/v1/devices/register", status_code=201, tags=["devices"])
    def register(body: S.DeviceRegister, _p: Enroller) -> S.DeviceCredential:
        did, secret, notices = reg.register_device(body.device_id, body.attributes)
        reg.publish_notices(notices)
        return S.DeviceCredential(device_id=did, token=secret)

    @app.get("/v1/devices", tags=["devices"])
    def list_devices(_p: Reader, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                     offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> list[S.DeviceOut]:
        import time

        cutoff = time.time() - settings.online_window_s
        return [S.DeviceOut(id=d.id, attributes=d.attributes, registered_at=d.registered_at, last_seen=d.last_seen,
                            online=d.last_seen >= cutoff or reg.broker.is_connected(d.id), cursor=d.cursor,
                            targets=t) for d, t in reg.devices(limit, offset)]

    @app.put("/v1/device/attributes", tags=["device"])
    def put_attributes(body: S.Attributes, p: DeviceP) -> dict[str, int]:
        notices = reg.update_attributes(p.name, body)
        reg.publish_notices(notices)
        return {"notices": len(notices)}

    @app.post("/v1/device/checkin", tags=["device"])
    async def checkin(body: S.CheckIn, p: DeviceP) -> S.CheckInOut:
        out = reg.checkin_cached(p.name, body.metrics, body.cursor)  # memory only (written behind)
        if out is None:
            out = await run_in_threadpool(reg.checkin, p.name, body.metrics, body.cursor)
        return S.CheckInOut(cursor=out[0], latest=out[1])

    @app.get("/v1/device/notices", tags=["device"])
    def notices(p: DeviceP, after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> S.NoticePage:
        rows = reg.notices_after(p.name, after, limit)
        return S.NoticePage(notices=[S.Notice(**{k: v for k, v in n.items() if k != "device"}) for n in rows],
                            cursor=rows[-1]["seq"] if rows else after)

    @app.get("/v1/device/targets", tags=["device"])
    def targets(p: DeviceP) -> list[S.Target]:
        return [S.Target(task=t.task, version=t.version, digest=t.manifest_digest, deployment=t.deployment_id)
                for t in reg.targets(p.name) if t.version is not None]

    @app.get("/v1/device/stream", tags=["device"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent notices"}})
    async def stream(p: DeviceP, cursor: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        """Server-sent events: every notice after ``cursor`` (or ``Last-Event-ID``, or the device's
        acknowledged cursor), then live notices as they are committed; a comment every
        keep-alive interval."""
        start = cursor
        if start is None and last_event_id and last_event_id.isdigit():
            start = int(last_event_id)
        known = reg.cursors.get(p.name)
        if known is None or reg.latest.get(p.name) is None:  # warm the check-in fast path too
            known = await run_in_threadpool(reg.device_cursor, p.name, True)
        if start is None:
            start = known
        queue = reg.broker.subscribe(p.name)
        reg.touch(p.name)
        return StreamingResponse(_events(reg, p.name, start, queue),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/v1/device/reports", tags=["device"])
    def report(body: S.ReportIn, p: DeviceP) -> S.ReportOut:
        dup, dep_id, notices = reg.report(p.name, body.task, body.version, body.status, body.deployment_id,
                                          body.error, body.metrics, body.seq)
        reg.publish_notices(notices)
        return S.ReportOut(accepted=not dup, duplicate=dup, deployment_id=dep_id)

    @app.post("/v1/results", tags=["results"], openapi_extra=JSON_BODY)
    async def ingest(request: Request,
                     authorization: Annotated[str | None, Header()] = None,
                     content_encoding: Annotated[str | None, Header()] = None,
                     task: Annotated[str, Query(max_length=64)] = "",
                     version: Annotated[str, Query(max_length=64)] = "",
                     token: Annotated[str | None, Query(max_length=256, description="device token, for "
                                                        "clients that cannot set headers")] = None) -> S.ResultsOut:
        secret = _bearer(authorization) or token
        if secret is None:
            raise Unauthorized("missing credential (Authorization: Bearer <device token>)")
        p = await _authenticate(reg, secret)
        if p.kind != "device":
            raise Forbidden("results are uploaded with a device credential")
        _limit(reg, p)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > settings.max_results_bytes:
                raise TooLarge(f"results batch is larger than {settings.max_results_bytes} bytes")
        body = _decode_body(raw, content_encoding, settings.max_results_bytes)
        accepted, dups = await run_in_threadpool(reg.ingest_results, p.name, body, task, version)
        return S.ResultsOut(accepted=accepted, duplicates=dups)

    @app.get("/v1/results", tags=["results"])
    def query_results(_p: Reader, task: Annotated[str, Query(max_length=64)],
                      version: Annotated[str | None, Query(max_length=64)] = None,
                      device: Annotated[str | None, Query(max_length=128)] = None,
                      after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[S.ResultOut]:
        return [S.ResultOut(id=r.id, device=r.device_id, seq=r.seq, task=r.task, version=r.version, name=r.name, key=r.key,
                            ts=r.ts, value=r.value, received_at=r.received_at)
                for r in reg.results(task, version, device, after, limit)]

    # ------------------------------------------------------------------ deployments

    @app.post("/v1/deployments", status_code=201, tags=["deployments"])
    def create_deployment(body: S.DeploymentCreate, p: Deployer) -> S.DeploymentOut:
        dep, notices = reg.create_deployment(body, p.name)
        reg.publish_notices(notices)
        return S.DeploymentOut(**deployment_dict(dep))

    @app.get("/v1/deployments", tags=["deployments"])
    def list_deployments(_p: Reader, task: Annotated[str | None, Query(max_length=64)] = None) -> list[S.DeploymentOut]:
        return [S.DeploymentOut(**deployment_dict(d)) for d in reg.deployments(task)]

    @app.get("/v1/deployments/{dep_id}", tags=["deployments"])
    def deployment_status(dep_id: int, _p: Reader) -> S.DeploymentStatus:
        return S.DeploymentStatus(**reg.status(_id(dep_id)))

    @app.post("/v1/deployments/{dep_id}/pause", tags=["deployments"])
    def pause(dep_id: int, p: Deployer) -> S.DeploymentOut:
        return S.DeploymentOut(**deployment_dict(reg.pause(_id(dep_id), p.name)))

    @app.post("/v1/deployments/{dep_id}/resume", tags=["deployments"])
    def resume(dep_id: int, p: Deployer) -> S.DeploymentOut:
        dep, notices = reg.resume(_id(dep_id), p.name)
        reg.publish_notices(notices)
        return S.DeploymentOut(**deployment_dict(dep))

    @app.post("/v1/deployments/{dep_id}/rollback", tags=["deployments"])
    def rollback(dep_id: int, p: Deployer) -> S.DeploymentOut:
        dep, notices = reg.rollback(_id(dep_id), p.name)
        reg.publish_notices(notices)
        return S.DeploymentOut(**deployment_dict(dep))

    @app.post("/v1/deployments/{dep_id}/widen", tags=["deployments"])
    def widen(dep_id: int, body: S.Widen, _p: Deployer) -> S.DeploymentOut:
        dep, notices = reg.widen(_id(dep_id), body.percentage)
        reg.publish_notices(notices)
        return S.DeploymentOut(**deployment_dict(dep))

    from walle_registry.console import mount_console

    mount_console(app, reg)
    from walle_registry.plugins_api import mount_plugin_rollouts  # backend plugin rollouts (device agent)
    mount_plugin_rollouts(app, reg)
    return app


def _id(dep_id: int) -> int:
    if not 1 <= dep_id < 2**31:
        raise NotFound(f"deployment {dep_id} not found")
    return dep_id


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            yield chunk


def _decode_body(raw: bytes, encoding: str | None, limit: int) -> dict[str, Any]:
    enc = (encoding or "identity").strip().lower()
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = d.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise Invalid(f"body is not valid gzip: {exc}") from None
        if len(raw) > limit or d.unconsumed_tail:
            raise TooLarge(f"results batch inflates past {limit} bytes")
    elif enc not in ("identity", ""):
        raise Invalid(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    return body


def _etag_match(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def _serve_blob(reg: Registry, sha256: str, request: Request, media_type: str,
                      filename: str | None) -> Response:
    """ETag/If-None-Match and single-range ``Range`` (resumable downloads) over a stored blob.
    Small blobs are answered from memory (content addressed, so never stale)."""
    data = reg.blob_cache.get(sha256)
    if data is None:
        size = await run_in_threadpool(reg.blob_size, sha256)
        if size <= reg.blob_cache.max_item:
            data = await run_in_threadpool(_read_blob, reg, sha256)
    else:
        size = len(data)
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable"}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    inm = request.headers.get("if-none-match")
    if inm and _etag_match(inm, etag):
        return Response(status_code=304, headers=headers)
    start, end, status = 0, size - 1, 200
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if rng and (if_range is None or if_range.strip() == etag):
        parsed = _parse_range(rng, size)
        if isinstance(parsed, str):
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        if parsed is not None:
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    if data is not None:
        return Response(data[start:end + 1] if status == 206 else data, status_code=status, headers=headers,
                        media_type=media_type)
    body = reg.blobs.open_range(sha256, start, end) if size else iter([b""])
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


def _read_blob(reg: Registry, sha256: str) -> bytes:
    data = b"".join(reg.blobs.open_range(sha256, 0, None))
    reg.blob_cache.put(sha256, data)
    return data


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range; None = ignore (serve all)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        a = int(first)
        b = int(last) if last else size - 1
    except ValueError:
        return None
    if a >= size:
        return "unsatisfiable"
    if a < 0 or b < a:
        return None
    return a, min(b, size - 1)


async def _keepalive_ticker(reg: Registry, every: float, parts: int = 8) -> None:
    """Each stream gets a keep-alive comment every ``every`` seconds, spread over ``parts`` ticks."""
    part = 0
    while True:
        await asyncio.sleep(every / parts)
        reg.broker.keepalive(part, parts)
        part = (part + 1) % parts


async def _events(reg: Registry, device_id: str, cursor: int, queue: asyncio.Queue[dict[str, Any]]
                  ) -> AsyncIterator[str]:
    seen: set[int] = set()
    last = cursor
    try:
        yield "retry: 2000\n: connected\n\n"
        while True:  # catch up from the database, in pages
            page = await run_in_threadpool(reg.notices_after, device_id, last, 1000)
            for n in page:
                seen.add(n["seq"])
                last = max(last, n["seq"])
                yield _sse(n)
            if len(page) < 1000:
                break
        while True:
            n = await queue.get()
            if n is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            seq = int(n["seq"])
            if seq in seen or seq <= cursor:
                continue
            seen.add(seq)
            if len(seen) > 4096:
                seen = set(sorted(seen)[-2048:])
            last = max(last, seq)
            yield _sse(n)
    finally:
        reg.broker.unsubscribe(device_id, queue)


def _sse(n: dict[str, Any]) -> str:
    data = json.dumps({k: v for k, v in n.items() if k != "device"}, separators=(",", ":"))
    return f"id: {n['seq']}\nevent: notice\ndata: {data}\n\n"


__all__ = ["create_app"]
