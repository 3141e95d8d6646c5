"""Content-addressed blob storage. The local store is a folder; :class:`S3BlobStore` (boto3) keeps
blobs in an S3-compatible object store under the same :class:`BlobStore` protocol (``put`` =
PutObject after hashing, ``open_range`` = GetObject with a ``Range`` header, ``exists`` =
HeadObject) and can presign GETs, so devices download from the store (or a CDN before it), not
through the registry.

Writes are atomic (temp file + rename) and verified: a blob is stored under a digest only after
its bytes were hashed to that digest, so a reader never sees a partial or mislabelled blob.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from walle_registry.errors import Invalid, NotFound, TooLarge

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 16


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int


class BlobStore(Protocol):
    def put(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
            max_bytes: int | None = None) -> BlobInfo: ...

    def put_file(self, path: Path, expected_sha256: str | None = None) -> BlobInfo: ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def open_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start..end`` inclusive (``end=None``: to the last byte)."""
        ...

    def delete(self, sha256: str) -> None: ...


def check_sha(sha256: str) -> str:
    if not SHA_RE.match(sha256):
        raise Invalid(f"{sha256!r} is not a lowercase hex sha256 digest")
    return sha256


class LocalBlobStore:
    """Blobs at ``root/ab/cd/<sha256>``; a blob is written under ``tmp`` (the replica's spool, on
    the same file system) and renamed into place once its digest is checked."""

    def __init__(self, root: Path, tmp: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tmp) if tmp is not None else self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def put(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
            max_bytes: int | None = None) -> BlobInfo:
        if expected_sha256 is not None:
            check_sha(expected_sha256)
        tmp, digest, size = _hash_to_temp(chunks, self.tmp, max_bytes)
        try:
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            if expected_sha256 is not None and digest != expected_sha256:
                raise Invalid(f"digest mismatch: the content hashes to sha256 {digest}, "
                              f"not the declared {expected_sha256}")
            final = self._path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and final.stat().st_size == size:
                tmp.unlink()  # same content already stored (content addressing)
            else:
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
            return BlobInfo(digest, size)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, path: Path, expected_sha256: str | None = None) -> BlobInfo:
        return self.put(_file_chunks(path), expected_sha256)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} not found") from None

    def open_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(sha256)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} not found") from None
        last = path.stat().st_size - 1 if end is None else end

        def gen() -> Iterator[bytes]:
            with fh:
                fh.seek(start)
                remaining = last - start + 1
                while remaining > 0:
                    chunk = fh.read(min(CHUNK, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk

        return gen()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)


# Content addressed: a name never changes content. Registry answers are per device (authorised);
# objects behind presigned URLs may sit in a shared cache (the signature is the authorisation).
IMMUTABLE = "private, max-age=31536000, immutable"
IMMUTABLE_SHARED = "public, max-age=31536000, immutable"


def blob_key(sha256: str) -> str:
    """``ab/cd/<sha256>``: the layout of both stores (and of nginx's internal blob location)."""
    check_sha(sha256)
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _file_chunks(path: Path) -> Iterator[bytes]:
    """The file at `path`, read lazily in CHUNK-sized pieces."""
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _hash_to_temp(chunks: Iterable[bytes], tmp: Path, max_bytes: int | None) -> tuple[Path, str, int]:
    h = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(prefix="blob-", dir=tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(f"blob is larger than the {max_bytes}-byte limit")
                h.update(chunk)
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), h.hexdigest(), size


class S3BlobStore:
    """Blobs as objects ``prefix + ab/cd/<sha256>`` in one bucket of an S3-compatible store.

    An upload is hashed into a temp file under ``tmp`` first, so an object is only ever written
    under the digest of its bytes; an object that exists already is not uploaded again. Objects
    carry ``Cache-Control: immutable``, which presigned GETs return to the device or a CDN.
    ``presign_s`` > 0 makes :mod:`walle_registry.delivery` redirect authorised downloads to a
    presigned URL valid that many seconds instead of streaming the object itself.
    """

    def __init__(self, bucket: str, tmp: Path, prefix: str = "", endpoint: str | None = None,
                 region: str | None = None, presign_s: int = 0, client: Any = None) -> None:
        if client is None:
            try:
                import boto3  # type: ignore[import-untyped]
            except ImportError:
                raise Invalid("an s3:// blob store needs boto3 (pip install 'walle[server]')") from None
            client = boto3.client("s3", endpoint_url=endpoint, region_name=region or "us-east-1")
        self.client, self.bucket, self.presign_s = client, bucket, presign_s
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, tmp: Path) -> S3BlobStore:
        """``s3://bucket[/prefix]?endpoint=http://127.0.0.1:9000&region=eu-west-1&presign=300``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise Invalid(f"blob store {url!r} is not an s3://bucket[/prefix] URL")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region", "presign"}
        if unknown:
            raise Invalid(f"blob store URL has unknown options {sorted(unknown)} (endpoint, region, presign)")
        try:
            presign = int(query.get("presign", "0"))
        except ValueError:
            raise Invalid(f"blob store presign={query['presign']!r} is not a number of seconds") from None
        return cls(parts.netloc, tmp, parts.path, query.get("endpoint"), query.get("region"), presign)

    def _key(self, sha256: str) -> str:
        return self.prefix + blob_key(sha256)

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(sha256)))
        except _client_error() as exc:
            if _not_found(exc):
                return None
            raise

    def put(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
            max_bytes: int | None = None) -> BlobInfo:
        if expected_sha256 is not None:
            check_sha(expected_sha256)
        path, digest, size = _hash_to_temp(chunks, self.tmp, max_bytes)
        try:
            if expected_sha256 is not None and digest != expected_sha256:
                raise Invalid(f"digest mismatch: the content hashes to sha256 {digest}, "
                              f"not the declared {expected_sha256}")
            head = self._head(digest)
            if head is None or int(head["ContentLength"]) != size:
                self.client.upload_file(str(path), self.bucket, self._key(digest), ExtraArgs={
                    "ContentType": "application/octet-stream", "CacheControl": IMMUTABLE_SHARED})
            return BlobInfo(digest, size)
        finally:
            path.unlink(missing_ok=True)

    def put_file(self, path: Path, expected_sha256: str | None = None) -> BlobInfo:
        return self.put(_file_chunks(path), expected_sha256)

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise NotFound(f"blob {sha256} not found")
        return int(head["ContentLength"])

    def open_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        rng = f"bytes={start}-{'' if end is None else end}"
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256), Range=rng)
        except _client_error() as exc:
            if _not_found(exc):
                raise NotFound(f"blob {sha256} not found") from None
            raise
        body = obj["Body"]

        def gen() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return gen()

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def presign(self, sha256: str, expires_s: int | None = None) -> str:
        """A GET URL for the object that works without credentials for ``expires_s`` seconds."""
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(sha256)},
            ExpiresIn=expires_s or self.presign_s or 300))


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    return ClientError


def _not_found(exc: Exception) -> bool:
    """A botocore error for a missing object (HEAD answers a bare 404, GET ``NoSuchKey``)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


def open_store(url: str | None, root: Path, tmp: Path) -> BlobStore:
    """The store a replica's settings name: a folder (``None``) or an ``s3://`` URL."""
    if url is None:
        return LocalBlobStore(root, tmp)
    return S3BlobStore.from_url(url, tmp)
