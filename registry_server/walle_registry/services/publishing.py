"""Publishing: signed task bundles become immutable releases, signed wheels become plugins, and
every file is stored once in the content-addressed blob store.

A release or plugin row is written only after all of its blobs are stored, so a reader never sees
a release whose files are missing.
"""

from __future__ import annotations

import base64
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walle_core.task import (
    BundleError,
    LimitError,
    Limits,
    SignatureError,
    UnknownKeyError,
    VerificationError,
    VerifiedBundle,
    extract_bundle,
    read_manifest,
    verify_bundle,
)
from walle_registry.blobs import BlobInfo, BlobStore
from walle_registry.db import Database
from walle_registry.errors import Conflict, Invalid, NotFound, TooLarge
from walle_registry.models import Blob, Plugin, Release
from walle_registry.services.common import insert_ignore, now
from walle_registry.services.credentials import Credentials


class Publishing:
    def __init__(self, db: Database, blobs: BlobStore, credentials: Credentials, spool: Path,
                 max_bundle_bytes: int) -> None:
        self.db, self.blobs, self.credentials, self.spool = db, blobs, credentials, spool
        self.max_bundle_bytes = max_bundle_bytes
        self._releases: dict[tuple[str, str], Release] = {}  # immutable rows

    # ------------------------------------------------------------------ blobs

    def _record_blob(self, s: Session, info: BlobInfo) -> None:
        """Insert the blob row unless it exists (concurrent uploads of shared files race here)."""
        s.execute(insert_ignore(self.db.dialect, Blob, [{"sha256": info.sha256, "size": info.size,
                                                         "created_at": now()}], ["sha256"]))

    def put_blob(self, chunks: Iterable[bytes], sha256: str) -> BlobInfo:
        info = self.blobs.put(chunks, sha256, self.max_bundle_bytes)
        self._insert_blob(info)
        return info

    def _insert_blob(self, info: BlobInfo) -> None:
        try:
            with self.db.write() as s:
                self._record_blob(s, info)
        except IntegrityError:
            pass  # a concurrent upload recorded the same content

    def blob_size(self, sha256: str) -> int:
        return self.blobs.size(sha256)

    # ------------------------------------------------------------------ task releases

    def publish_bundle(self, path: Path) -> tuple[Release, bool]:
        """Verify a signed bundle against the trusted publisher keys and store it.

        Returns ``(release, created)``; an identical re-upload returns the existing release with
        ``created=False``; different content for an existing version is a 409.
        """
        limits = Limits(max_bundle_bytes=self.max_bundle_bytes)
        try:
            manifest = read_manifest(path, limits)
        except LimitError as exc:
            raise TooLarge(f"bundle rejected: {exc}") from None
        except BundleError as exc:
            raise Invalid(f"bundle rejected: {type(exc).__name__}: {exc}") from None
        keys = self.credentials.keystore()
        if not keys.ids():
            raise Invalid("bundle rejected: no publisher keys are trusted yet (POST /v1/keys first)")
        existing = self._release_or_none(manifest.name, manifest.version)
        if existing is not None:  # the signature decides first: an untrusted upload learns nothing
            _checked(verify_bundle, path, keys, limits)
            return self._same_or_conflict(existing, manifest.digest()), False
        staging = Path(tempfile.mkdtemp(prefix="publish-", dir=self.spool))
        try:
            verified = _checked(extract_bundle, path, staging / "files", keys, limits)
            signature = _read_signature(path)
            infos = [self.blobs.put_file(staging / "files" / Path(*f.path.split("/")), f.sha256)
                     for f in verified.manifest.files]
            infos.append(self.blobs.put_file(path, verified.sha256))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        m = verified.manifest
        release = Release(task=m.name, version=m.version, manifest_digest=m.digest(),
                          manifest=verified.manifest_bytes.decode("utf-8"), signature=signature,
                          key_id=verified.key_id, bundle_sha256=verified.sha256,
                          bundle_size=path.stat().st_size, created_at=now())
        try:
            with self.db.write() as s:
                for info in infos:
                    self._record_blob(s, info)
                s.add(release)
        except IntegrityError:  # a concurrent publish of the same version won the race
            winner = self._release_or_none(m.name, m.version)
            if winner is None:
                for info in infos:
                    self._insert_blob(info)
                raise
            return self._same_or_conflict(winner, m.digest()), False
        return release, True

    @staticmethod
    def _same_or_conflict(existing: Release, digest: str) -> Release:
        if existing.manifest_digest != digest:
            raise Conflict(f"{existing.task} {existing.version} is already published with different "
                           f"content (manifest {existing.manifest_digest[:12]}); versions are immutable")
        return existing

    def _release_or_none(self, task: str, version: str) -> Release | None:
        cached = self._releases.get((task, version))
        if cached is not None:
            return cached
        with self.db.read() as s:
            rel = s.scalar(select(Release).where(Release.task == task, Release.version == version))
        if rel is not None:
            self._releases[(task, version)] = rel
        return rel

    def release_cached(self, task: str, version: str) -> Release | None:
        return self._releases.get((task, version))

    def release(self, task: str, version: str) -> Release:
        rel = self._release_or_none(task, version)
        if rel is None:
            raise NotFound(f"task {task} {version} is not published")
        return rel

    def releases(self, task: str | None = None) -> list[Release]:
        with self.db.read() as s:
            q = select(Release).order_by(Release.task, Release.id)
            if task is not None:
                q = q.where(Release.task == task)
            return list(s.scalars(q))

    # ------------------------------------------------------------------ plugin wheels

    def publish_plugin(self, path: Path, filename: str, kid: str, signature_b64: str) -> tuple[Plugin, bool]:
        """Accept a backend plugin wheel signed (Ed25519 over its sha256 hex) by a trusted key."""
        name, version = _wheel_name_version(path, filename)
        info = self.blobs.put_file(path)
        try:
            sig = base64.b64decode(signature_b64, validate=True)
        except ValueError:
            raise Invalid("plugin rejected: signature is not base64") from None
        try:
            self.credentials.keystore().verify(kid, sig, info.sha256.encode("ascii"))
        except (SignatureError, UnknownKeyError) as exc:
            raise Invalid(f"plugin rejected: bad signature: {exc}") from None
        row = Plugin(name=name, version=version, filename=filename, sha256=info.sha256, size=info.size,
                     key_id=kid, created_at=now())
        with self.db.read() as s:
            existing = s.scalar(select(Plugin).where(Plugin.name == name, Plugin.version == version))
        if existing is not None:
            if existing.sha256 != info.sha256:
                raise Conflict(f"plugin {name} {version} is already published with different content")
            return existing, False
        try:
            with self.db.write() as s:
                self._record_blob(s, info)
                s.add(row)
        except IntegrityError:
            with self.db.read() as s:
                winner = s.scalar(select(Plugin).where(Plugin.name == name, Plugin.version == version))
            if winner is None or winner.sha256 != info.sha256:
                raise Conflict(f"plugin {name} {version} is already published with different content") from None
            return winner, False
        return row, True

    def plugins(self) -> list[Plugin]:
        with self.db.read() as s:
            return list(s.scalars(select(Plugin).order_by(Plugin.name, Plugin.id)))

    def plugin(self, name: str, version: str) -> Plugin:
        with self.db.read() as s:
            row = s.scalar(select(Plugin).where(Plugin.name == name, Plugin.version == version))
        if row is None:
            raise NotFound(f"plugin {name} {version} not found")
        return row


def _checked(verify: Callable[..., VerifiedBundle], *args: Any) -> VerifiedBundle:
    """Run a bundle check, turning its errors into answers (422, or 413 for a limit)."""
    try:
        return verify(*args)
    except (SignatureError, UnknownKeyError) as exc:
        raise Invalid(f"bundle rejected: bad signature: {exc}") from None
    except LimitError as exc:
        raise TooLarge(f"bundle rejected: {exc}") from None
    except VerificationError as exc:
        raise Invalid(f"bundle rejected: {type(exc).__name__}: {exc}") from None
    except BundleError as exc:
        raise Invalid(f"bundle rejected: {exc}") from None


def _read_signature(bundle: Path) -> str:
    """The SIGNATURE.json document of an (already verified) bundle, for devices to re-verify."""
    with tarfile.open(bundle, "r:gz") as tar:
        for info in tar:
            if info.name == "SIGNATURE.json":
                fh = tar.extractfile(info)
                assert fh is not None
                return fh.read(8192).decode("utf-8")
    raise Invalid("bundle rejected: bad signature: bundle is not signed")


def _wheel_name_version(path: Path, filename: str) -> tuple[str, str]:
    """Check a wheel's file name against its METADATA; return (name, version)."""
    if not filename.endswith(".whl") or "/" in filename or "\\" in filename:
        raise Invalid("plugin rejected: the file name must be a wheel name (NAME-VERSION-...-....whl)")
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        raise Invalid(f"plugin rejected: {filename!r} is not a wheel file name")
    name, version = parts[0], parts[1]
    try:
        with zipfile.ZipFile(path) as zf:
            meta_name = f"{name}-{version}.dist-info/METADATA"
            if meta_name not in zf.namelist():
                raise Invalid(f"plugin rejected: the wheel has no {meta_name}")
            info = zf.getinfo(meta_name)
            if info.file_size > 1 << 20:
                raise Invalid("plugin rejected: METADATA is too large")
            headers = HeaderParser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
    except zipfile.BadZipFile:
        raise Invalid("plugin rejected: not a zip archive (wheel)") from None
    meta_n = (headers.get("Name") or "").replace("-", "_").lower()
    if meta_n != name.lower() or headers.get("Version") != version:
        raise Invalid(f"plugin rejected: METADATA says {headers.get('Name')} {headers.get('Version')}, "
                      f"the file name says {name} {version}")
    return name, version
