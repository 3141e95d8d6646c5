"""Publishing (bundles, blobs, plugin wheels) and downloads (manifests, bundles, blobs, wheels)."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from walle_registry import schemas as S
from walle_registry.auth import Principal
from walle_registry.blobs import check_sha
from walle_registry.context import Registry
from walle_registry.errors import NotFound
from walle_registry.models import Release
from walle_registry.routes.deps import AnyP, PluginName, Publisher, Reader, Reg, Sha256, TaskName, Version
from walle_registry.routes.transfer import etag_match, file_chunks, serve_blob, spool

OCTET = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

router = APIRouter()


def _release_out(rel: Release, created: bool) -> S.ReleaseOut:
    files = json.loads(rel.manifest).get("files", [])
    return S.ReleaseOut(task=rel.task, version=rel.version, manifest_digest=rel.manifest_digest,
                        bundle_sha256=rel.bundle_sha256, bundle_size=rel.bundle_size, key_id=rel.key_id,
                        created_at=rel.created_at, files=files, created=created)


@router.post("/v1/tasks", tags=["publish"], openapi_extra=OCTET,
             responses={200: {"description": "identical content was already published (idempotent)"},
                        201: {"description": "published"}})
async def publish_task(request: Request, response: Response, _p: Publisher, reg: Reg) -> S.ReleaseOut:
    path = await spool(request, reg.spool.dir, reg.settings.max_bundle_bytes)
    try:
        rel, created = await run_in_threadpool(reg.publishing.publish_bundle, path)
    finally:
        path.unlink(missing_ok=True)
    response.status_code = 201 if created else 200
    return _release_out(rel, created)


@router.get("/v1/tasks", tags=["publish"])
def list_tasks(_p: Reader, reg: Reg) -> list[S.ReleaseOut]:
    return [_release_out(r, False) for r in reg.publishing.releases()]


@router.get("/v1/tasks/{task}", tags=["publish"])
def task_versions(task: TaskName, _p: Reader, reg: Reg) -> list[S.ReleaseOut]:
    rels = reg.publishing.releases(task)
    if not rels:
        raise NotFound(f"task {task} is not published")
    return [_release_out(r, False) for r in rels]


@router.put("/v1/blobs/{sha256}", status_code=201, tags=["publish"], openapi_extra=OCTET)
async def put_blob(sha256: Sha256, request: Request, _p: Publisher, reg: Reg) -> S.BlobOut:
    check_sha(sha256)
    path = await spool(request, reg.spool.dir, reg.settings.max_bundle_bytes)
    try:
        info = await run_in_threadpool(reg.publishing.put_blob, file_chunks(path), sha256)
    finally:
        path.unlink(missing_ok=True)
    return S.BlobOut(sha256=info.sha256, size=info.size)


@router.post("/v1/plugins", tags=["publish"], openapi_extra=OCTET)
async def publish_plugin(
    request: Request, response: Response, _p: Publisher, reg: Reg,
    filename: Annotated[str, Query(max_length=255)], key_id: Annotated[str, Query(max_length=64)],
    signature: Annotated[str, Query(max_length=512, description="base64 Ed25519 signature of the wheel's sha256 hex")],
) -> S.PluginOut:
    path = await spool(request, reg.spool.dir, reg.settings.max_plugin_bytes)
    try:
        row, created = await run_in_threadpool(reg.publishing.publish_plugin, path, filename, key_id, signature)
    finally:
        path.unlink(missing_ok=True)
    response.status_code = 201 if created else 200
    return S.PluginOut.model_validate(row, from_attributes=True).model_copy(update={"created": created})


@router.get("/v1/plugins", tags=["publish"])
def list_plugins(_p: AnyP, reg: Reg) -> list[S.PluginOut]:
    return [S.PluginOut.model_validate(r, from_attributes=True) for r in reg.publishing.plugins()]


# ---------------------------------------------------------------------------------- downloads


@router.get("/v1/plugins/{name}/{version}/wheel", tags=["download"])
async def plugin_wheel(name: PluginName, version: Version, request: Request, _p: AnyP, reg: Reg) -> Response:
    row = await run_in_threadpool(reg.publishing.plugin, name, version)
    return await serve_blob(reg, row.sha256, request, "application/octet-stream", row.filename)


async def _release_for(reg: Registry, p: Principal, task: str, version: str) -> Any:
    if p.kind == "device" and not reg.grants.can_read_release_cached(p.name, task, version) and \
            not await run_in_threadpool(reg.grants.can_read_release, p.name, task, version):
        raise NotFound(f"task {task} {version} is not deployed to this device")
    rel = reg.publishing.release_cached(task, version)
    if rel is None:
        rel = await run_in_threadpool(reg.publishing.release, task, version)
    return rel


@router.get("/v1/releases/{task}/{version}/manifest", tags=["download"],
            responses={304: {"description": "not modified"}})
async def manifest(task: TaskName, version: Version, p: AnyP, reg: Reg,
                   if_none_match: Annotated[str | None, Header(max_length=1024)] = None) -> Response:
    rel = await _release_for(reg, p, task, version)
    etag = f'"{rel.manifest_digest}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable",
               "X-Walle-Signature": base64.b64encode(rel.signature.encode()).decode(),
               "X-Walle-Key-Id": rel.key_id, "X-Walle-Bundle-Sha256": rel.bundle_sha256}
    if if_none_match and etag_match(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(rel.manifest.encode("utf-8"), media_type="application/json", headers=headers)


@router.get("/v1/releases/{task}/{version}/bundle", tags=["download"])
async def bundle(task: TaskName, version: Version, request: Request, p: AnyP, reg: Reg) -> Response:
    rel = await _release_for(reg, p, task, version)
    return await serve_blob(reg, rel.bundle_sha256, request, "application/gzip", f"{task}-{version}.walle")


@router.head("/v1/blobs/{sha256}", tags=["download"], include_in_schema=False)
@router.get("/v1/blobs/{sha256}", tags=["download"],
            responses={206: {"description": "partial content"}, 304: {"description": "not modified"}})
async def get_blob(sha256: Sha256, request: Request, p: AnyP, reg: Reg) -> Response:
    check_sha(sha256)
    if p.kind == "device" and not reg.grants.may_read_blob_cached(p.name, sha256) and \
            not await run_in_threadpool(reg.grants.may_read_blob, p.name, sha256):
        raise NotFound(f"blob {sha256} not found")
    return await serve_blob(reg, sha256, request, "application/octet-stream", None)
