"""Results: devices upload task outputs (JSON, optionally gzip), publishers page through them."""

from __future__ import annotations

import json
import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from walle_registry import schemas as S
from walle_registry.errors import Forbidden, Invalid, TooLarge, Unauthorized
from walle_registry.routes.deps import AuthHeader, Reader, Reg, authenticate, bearer, rate_limit


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` references replaced by the definitions (for ``openapi_extra``,
    which FastAPI copies into the document as is)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": inline_refs(S.ResultsBatch.model_json_schema())}}}}

router = APIRouter(tags=["results"])


@router.post("/v1/results", openapi_extra=JSON_BODY)
async def ingest(request: Request, reg: Reg,
                 authorization: AuthHeader = None,
                 content_encoding: Annotated[str | None, Header(max_length=64)] = None,
                 task: Annotated[str, Query(max_length=64)] = "",
                 version: Annotated[str, Query(max_length=64)] = "",
                 token: Annotated[str | None, Query(max_length=256, description="device token, for "
                                                    "clients that cannot set headers")] = None) -> S.ResultsOut:
    secret = bearer(authorization) or token
    if secret is None:
        raise Unauthorized("missing credential (Authorization: Bearer <device token>)")
    p = await authenticate(reg, secret)
    if p.kind != "device":
        raise Forbidden("results are uploaded with a device credential")
    rate_limit(reg, p)
    cap = reg.settings.max_results_bytes
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > cap:
            raise TooLarge(f"results batch is larger than {cap} bytes")
    try:
        batch = S.ResultsBatch.model_validate(_decode_body(raw, content_encoding, cap))
    except ValidationError as exc:
        raise Invalid(f"not a results batch: {_first_error(exc)}") from None
    accepted, dups = await run_in_threadpool(reg.results.ingest, p.name, batch, task, version)
    return S.ResultsOut(accepted=accepted, duplicates=dups)


@router.get("/v1/results")
def query_results(_p: Reader, reg: Reg, task: Annotated[str, Query(max_length=64)],
                  version: Annotated[str | None, Query(max_length=64)] = None,
                  device: Annotated[str | None, Query(max_length=128)] = None,
                  after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[S.ResultOut]:
    return [S.ResultOut(id=r.id, device=r.device_id, seq=r.seq, task=r.task, version=r.version, name=r.name,
                        key=r.key, ts=r.ts, value=r.value, received_at=r.received_at)
            for r in reg.results.query(task, version, device, after, limit)]


def _decode_body(raw: bytes, encoding: str | None, cap: int) -> dict[str, Any]:
    enc = (encoding or "identity").strip().lower()
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = d.decompress(raw, cap + 1)
        except zlib.error as exc:
            raise Invalid(f"body is not valid gzip: {exc}") from None
        if len(raw) > cap or d.unconsumed_tail:
            raise TooLarge(f"results batch inflates past {cap} bytes")
    elif enc not in ("identity", ""):
        raise Invalid(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Invalid(f"body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (results are stored and served as strict JSON)")


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}"
