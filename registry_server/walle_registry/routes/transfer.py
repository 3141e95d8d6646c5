"""Bytes in and out: request bodies spooled to a temp file under a size limit, and stored blobs
served with ETag / If-None-Match and single-range ``Range`` (resumable downloads)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from walle_registry.context import Registry
from walle_registry.delivery import blob_headers, hand_off
from walle_registry.delivery import etag_match as etag_match  # publishing's manifest answers
from walle_registry.errors import Invalid, TooLarge


async def spool(request: Request, spool_dir: Path, limit: int) -> Path:
    """Stream the body to a temp file; the caller deletes it."""
    fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
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


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            yield chunk


async def serve_blob(reg: Registry, sha256: str, request: Request, media_type: str,
                     filename: str | None) -> Response:
    """Handed to nginx or a presigned URL when configured (:mod:`walle_registry.delivery`);
    otherwise small blobs are answered from memory (content addressed, so never stale)."""
    handed = hand_off(reg.settings, reg.blobs, sha256, request, media_type, filename)
    if handed is not None:
        return handed
    data = reg.blob_cache.get(sha256)
    if data is None:
        size = await run_in_threadpool(reg.publishing.blob_size, sha256)
        if size <= reg.blob_cache.max_item:
            data = await run_in_threadpool(_read_blob, reg, sha256)
    else:
        size = len(data)
    headers = blob_headers(sha256, filename)
    etag = headers["ETag"]
    start, end, status = 0, size - 1, 200
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if rng and (if_range is None or if_range.strip() == etag):
        parsed = parse_range(rng, size)
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


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
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
