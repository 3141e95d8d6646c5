"""Blob downloads handed off the Python path once the registry has authorised them.

* Behind nginx (``Settings.accel_redirect``, local store): the answer is an empty response with
  ``X-Accel-Redirect: <prefix>/ab/cd/<sha256>``; nginx then sends the file itself from an internal
  location over the blob folder (sendfile, ``Range``), adding ``ETag: "<sha256>"`` and
  ``Cache-Control: immutable`` (see :mod:`walle_registry.cluster` for the location block).
* S3-compatible store with ``presign`` set: a 307 to a presigned GET of the object, valid
  ``presign`` seconds; the store (or a CDN in front of it) serves the bytes and ranges.

Otherwise :func:`walle_registry.routes.transfer.serve_blob` streams the blob as before (the plain
single-process mode). ``If-None-Match`` is answered here in every mode: a device that has the blob
costs one small response and no hand-off.
"""

from __future__ import annotations

from fastapi import Request, Response

from walle_registry.blobs import IMMUTABLE, BlobStore, LocalBlobStore, S3BlobStore, blob_key
from walle_registry.settings import Settings


def blob_headers(sha256: str, filename: str | None) -> dict[str, str]:
    headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes", "Cache-Control": IMMUTABLE}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return headers


def etag_match(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def hand_off(settings: Settings, blobs: BlobStore, sha256: str, request: Request, media_type: str,
             filename: str | None) -> Response | None:
    """The response that lets another server send the blob, or None to send it from Python."""
    headers = blob_headers(sha256, filename)
    inm = request.headers.get("if-none-match")
    if inm and etag_match(inm, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    if settings.accel_redirect and isinstance(blobs, LocalBlobStore):
        # nginx adds ETag and Cache-Control in the internal location; passing only what it keeps
        # (type, disposition) avoids doubled headers.
        keep = {"X-Accel-Redirect": f"{settings.accel_redirect.rstrip('/')}/{blob_key(sha256)}"}
        if filename:
            keep["Content-Disposition"] = headers["Content-Disposition"]
        return Response(status_code=200, headers=keep, media_type=media_type)
    if isinstance(blobs, S3BlobStore) and blobs.presign_s > 0:
        # the redirect itself expires with the URL, so it must not be cached longer
        return Response(status_code=307, headers={"Location": blobs.presign(sha256),
                                                  "Cache-Control": f"private, max-age={blobs.presign_s // 2}"})
    return None
