"""Content-addressed blob storage. The local store is a folder; an S3-compatible store implements
the same :class:`BlobStore` protocol (``put`` = PutObject after hashing, ``open_range`` = GetObject
with a ``Range`` header, ``exists`` = HeadObject).

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
from typing import Protocol

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
        check_sha(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
            max_bytes: int | None = None) -> BlobInfo:
        if expected_sha256 is not None:
            check_sha(expected_sha256)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(f"blob is larger than the {max_bytes}-byte limit")
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise Invalid(f"digest mismatch: the content hashes to sha256 {digest}, "
                              f"not the declared {expected_sha256}")
            final = self._path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and final.stat().st_size == size:
                os.unlink(tmp)  # same content already stored (content addressing)
            else:
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
            return BlobInfo(digest, size)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, path: Path, expected_sha256: str | None = None) -> BlobInfo:
        def chunks() -> Iterator[bytes]:
            with Path(path).open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        return self.put(chunks(), expected_sha256)

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
