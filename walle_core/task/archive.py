"""The bundle archive: a deterministic gzip'd tar that is verified before anything is extracted.

Layout, in this fixed order::

    MANIFEST.json     canonical manifest (the signed bytes)
    SIGNATURE.json    {"alg": "ed25519", "key_id": ..., "signature": base64} (absent until signed)
    files/<path>      one regular file per manifest entry, sorted by path

Every member has mtime 0, uid/gid 0, no user/group names and mode 0644, and gzip's own header
carries mtime 0, so packing the same folder twice gives byte-identical bundles.

Reading streams the archive once per pass with hard limits on the compressed size, the
decompressed size, the compression ratio, the member count and each member's size, so a bomb is
stopped while it inflates. :func:`verify_bundle` writes nothing; :func:`extract_bundle` verifies,
then streams a second time into a temporary folder (re-checking every digest, since the file may
have changed in between) and renames that folder into place only when everything matched.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from walle_core.task.errors import (
    BundleError,
    DigestMismatchError,
    FileSetError,
    LimitError,
    ManifestError,
    SignatureError,
    UnsafeMemberError,
    VerificationError,
)
from walle_core.task.keys import Ed25519PrivateKey, KeyStore, key_id
from walle_core.task.manifest import FileEntry, Manifest, Quotas, canonical_json
from walle_core.task.schema import PATH_PATTERN

MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "SIGNATURE.json"
PAYLOAD_PREFIX = "files/"
SOURCE_MANIFEST = "task.json"  # the author's manifest stub inside a task folder
CHUNK = 1 << 16
MAX_SIGNATURE_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    """Hard limits applied while reading a bundle (defaults suit an on-device task)."""

    max_bundle_bytes: int = 256 << 20  # compressed file on disk
    max_total_bytes: int = 512 << 20  # all decompressed bytes, tar headers included
    max_member_bytes: int = 256 << 20
    max_members: int = 1024
    max_ratio: float = 100.0  # decompressed / compressed, checked once past ratio_floor bytes
    ratio_floor: int = 4 << 20


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    manifest_bytes: bytes
    key_id: str
    sha256: str  # of the whole bundle file


# ---------------------------------------------------------------------------------- writing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


Progress = Callable[[int], None]  # called with the payload bytes just written


class _Counted:
    """A file that reports the bytes read from it (progress of pack and sign)."""

    def __init__(self, fh: IO[bytes], progress: Progress) -> None:
        self.fh, self.progress = fh, progress

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.progress(len(data))
        return data


def _write_bundle(
    out: Path, manifest_bytes: bytes, signature: bytes | None, payload: Iterator[tuple[str, int, IO[bytes]]],
    progress: Progress | None = None,
) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            if signature is not None:
                tar.addfile(_tarinfo(SIGNATURE_NAME, len(signature)), io.BytesIO(signature))
            for path, size, fh in payload:
                tar.addfile(_tarinfo(PAYLOAD_PREFIX + path, size), fh if progress is None else cast(IO[bytes], _Counted(fh, progress)))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def collect_files(src: Path) -> list[Path]:
    """The files a task folder contributes: every regular file except task.json and caches."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise BundleError(f"{Path(dirpath) / d} is a symlink; bundles hold regular files only")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(src).as_posix()
            if rel == SOURCE_MANIFEST or name.startswith(".") or name.endswith(".pyc"):
                continue
            if path.is_symlink() or not path.is_file():
                raise BundleError(f"{path} is not a regular file; bundles hold regular files only")
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(src).as_posix())


def pack(src: Path, out: Path, progress: Progress | None = None) -> Manifest:
    """Pack task folder ``src`` (with its ``task.json``) into an unsigned bundle at ``out``;
    ``progress(n)`` follows the payload bytes written (their total is the manifest's file sizes)."""
    stub_path = src / SOURCE_MANIFEST
    try:
        stub: dict[str, Any] = json.loads(stub_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read {stub_path}: {exc}") from exc
    if not isinstance(stub, dict):
        raise ManifestError(f"{stub_path} must hold a JSON object")
    files = collect_files(src)
    stub = {**stub, "format": stub.get("format", 1), "files": [
        {"path": p.relative_to(src).as_posix(), "sha256": _sha256_file(p), "size": p.stat().st_size}
        for p in files
    ]}
    manifest = Manifest.from_dict(stub)
    manifest_bytes = manifest.canonical_bytes()

    def payload() -> Iterator[tuple[str, int, IO[bytes]]]:
        for entry in sorted(manifest.files, key=lambda f: f.path):
            with (src / entry.path).open("rb") as fh:
                yield entry.path, entry.size, fh

    _write_bundle(out, manifest_bytes, None, payload(), progress)
    return manifest


def signature_document(private: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    sig = private.sign(manifest_bytes)
    return canonical_json({
        "alg": "ed25519",
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(sig).decode("ascii"),
    })


# ---------------------------------------------------------------------------------- reading


class _Meter(io.RawIOBase):
    """Decompresses ``raw`` and stops as soon as the output breaks the size or ratio limits."""

    def __init__(self, raw: IO[bytes], limits: Limits) -> None:
        self._raw = raw
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self._limits = limits
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._gz.read(min(len(view), CHUNK))
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise VerificationError(f"bundle is not a valid gzip stream: {exc}") from exc
        n = len(data)
        view[:n] = data
        self.produced += n
        lim = self._limits
        if self.produced > lim.max_total_bytes:
            raise LimitError(f"bundle inflates past {lim.max_total_bytes} bytes (archive bomb?)")
        consumed = max(self._raw.tell(), 1)
        if self.produced > lim.ratio_floor and self.produced / consumed > lim.max_ratio:
            raise LimitError(
                f"bundle compression ratio exceeds {lim.max_ratio:g}:1 (archive bomb?)"
            )
        return n


def _check_member(info: tarfile.TarInfo, limits: Limits) -> str:
    """The payload path of a safe member; raises for links, devices, escapes and oversize."""
    name = info.name
    if not info.isreg():
        kind = ("symlink" if info.issym() else "hardlink" if info.islnk() else
                "directory" if info.isdir() else "device or fifo" if (info.ischr() or info.isblk()
                                                                      or info.isfifo()) else "special")
        raise UnsafeMemberError(f"member {name!r} is a {kind}; bundles hold regular files only")
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise UnsafeMemberError(f"member {name!r} has an absolute or non-portable path")
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise UnsafeMemberError(f"member {name!r} escapes the bundle folder")
    if info.size > limits.max_member_bytes:
        raise LimitError(f"member {name!r} is {info.size} bytes, above the {limits.max_member_bytes} limit")
    return name


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, cap: int) -> bytes:
    if info.size > cap:
        raise LimitError(f"{info.name} is {info.size} bytes, above the {cap} limit")
    fh = tar.extractfile(info)
    assert fh is not None  # regular file, checked by _check_member
    return fh.read()


def _parse_signature(raw: bytes) -> tuple[str, bytes]:
    try:
        doc = json.loads(raw.decode("utf-8"))
        if doc.get("alg") != "ed25519":
            raise SignatureError(f"unsupported signature algorithm {doc.get('alg')!r}")
        return str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"malformed {SIGNATURE_NAME}: {exc}") from exc


PayloadSink = Callable[[FileEntry, Iterator[bytes]], None]


def _walk(
    bundle: Path, limits: Limits, keys: KeyStore | None, sink: PayloadSink | None
) -> VerifiedBundle:
    """Stream ``bundle`` once: check the signature, then every payload member against the manifest.

    ``keys=None`` skips the signature (used only to re-sign). ``sink`` receives each payload file's
    chunks as they are read; the digest is checked after the last chunk, so a sink must treat what
    it got as untrusted until the walk returns.
    """
    try:
        size = bundle.stat().st_size
        raw = bundle.open("rb")
    except OSError as exc:
        raise BundleError(f"cannot read bundle {bundle}: {exc}") from exc
    if size > limits.max_bundle_bytes:
        raw.close()
        raise LimitError(f"bundle is {size} bytes, above the {limits.max_bundle_bytes} limit")
    whole = hashlib.sha256()
    with raw:
        while chunk := raw.read(CHUNK):
            whole.update(chunk)
        raw.seek(0)
        meter = _Meter(raw, limits)
        try:
            with tarfile.open(fileobj=io.BufferedReader(meter, CHUNK), mode="r|") as tar:
                return _walk_members(tar, limits, keys, sink, whole.hexdigest())
        except tarfile.TarError as exc:
            raise VerificationError(f"bundle is not a valid tar archive: {exc}") from exc


def _walk_members(
    tar: tarfile.TarFile, limits: Limits, keys: KeyStore | None, sink: PayloadSink | None, sha: str
) -> VerifiedBundle:
    members = iter(tar)

    def next_member() -> tarfile.TarInfo | None:
        try:
            info = next(members)
        except StopIteration:
            return None
        except tarfile.TarError as exc:
            raise VerificationError(f"corrupt archive: {exc}") from exc
        return info

    count = 1  # every member counts against max_members, the manifest included
    first = next_member()
    if first is None or first.name != MANIFEST_NAME:
        raise VerificationError(f"bundle must start with {MANIFEST_NAME}")
    _check_member(first, limits)
    manifest_bytes = _read_small(tar, first, 1 << 20)
    info = next_member()
    kid = ""
    if info is not None and info.name == SIGNATURE_NAME:
        _check_member(info, limits)
        kid, signature = _parse_signature(_read_small(tar, info, MAX_SIGNATURE_BYTES))
        if keys is not None:
            keys.verify(kid, signature, manifest_bytes)  # before the manifest is even parsed
        count += 1
        info = next_member()
    elif keys is not None:
        raise SignatureError("bundle is not signed")
    manifest = Manifest.from_bytes(manifest_bytes)
    expected = {f.path: f for f in manifest.files}
    seen: set[str] = set()
    while info is not None:
        count += 1
        if count > limits.max_members:
            raise LimitError(f"bundle has more than {limits.max_members} members")
        name = _check_member(info, limits)
        if not name.startswith(PAYLOAD_PREFIX):
            raise FileSetError(f"unexpected member {name!r} outside {PAYLOAD_PREFIX}")
        path = name[len(PAYLOAD_PREFIX):]
        if path in seen:
            raise FileSetError(f"file {path!r} appears twice in the archive")
        entry = expected.get(path)
        if entry is None:
            raise FileSetError(f"file {path!r} is not listed in the manifest")
        if info.size != entry.size:
            raise DigestMismatchError(f"file {path!r} is {info.size} bytes, the manifest says {entry.size}")
        seen.add(path)
        _stream_member(tar, info, entry, sink)
        info = next_member()
    missing = sorted(set(expected) - seen)
    if missing:
        raise FileSetError(f"file(s) listed in the manifest are missing: {missing[:5]}")
    return VerifiedBundle(manifest, manifest_bytes, kid, sha)


def _stream_member(tar: tarfile.TarFile, info: tarfile.TarInfo, entry: FileEntry, sink: PayloadSink | None) -> None:
    fh = tar.extractfile(info)
    assert fh is not None
    h = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            yield chunk

    if sink is None:
        for _ in chunks():
            pass
    else:
        sink(entry, chunks())
    if h.hexdigest() != entry.sha256:
        raise DigestMismatchError(f"file {entry.path!r} does not match its sha256 in the manifest")


def verify_bundle(bundle: Path, keys: KeyStore, limits: Limits | None = None) -> VerifiedBundle:
    """Check signature, manifest, file set, sizes, digests and limits. Writes nothing."""
    return _walk(Path(bundle), limits or Limits(), keys, None)


def extract_bundle(bundle: Path, dest: Path, keys: KeyStore, limits: Limits | None = None) -> VerifiedBundle:
    """Verify ``bundle``, then install its files into the new folder ``dest`` atomically."""
    limits = limits or Limits()
    first = verify_bundle(bundle, keys, limits)
    dest = Path(dest)
    if dest.exists():
        raise BundleError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))

    def write(entry: FileEntry, chunks: Iterator[bytes]) -> None:
        target = tmp.joinpath(*entry.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL|O_NOFOLLOW: never write through anything that already sits at the path.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)

    try:
        second = _walk(Path(bundle), limits, keys, write)
        if second.manifest_bytes != first.manifest_bytes:
            raise VerificationError("bundle changed while it was being installed")
        for entry in second.manifest.files:
            tmp.joinpath(*entry.path.split("/")).chmod(0o444)  # installed content is read-only
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return second


def sign_bundle(bundle: Path, private: Ed25519PrivateKey, out: Path | None = None,
                limits: Limits | None = None, progress: Progress | None = None) -> VerifiedBundle:
    """(Re-)sign ``bundle``: check its files against its manifest, then rewrite it with a signature."""
    bundle = Path(bundle)
    out = Path(out) if out is not None else bundle
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="walle-sign-") as staging:
        checked = extract_unverified(bundle, Path(staging) / "t", limits)
        root = Path(staging) / "t"

        def payload() -> Iterator[tuple[str, int, IO[bytes]]]:
            for entry in sorted(checked.manifest.files, key=lambda f: f.path):
                with root.joinpath(*entry.path.split("/")).open("rb") as fh:
                    yield entry.path, entry.size, fh

        signature = signature_document(private, checked.manifest_bytes)
        _write_bundle(out, checked.manifest_bytes, signature, payload(), progress)
    return VerifiedBundle(checked.manifest, checked.manifest_bytes, key_id(private.public_key()),
                          _sha256_file(out))


def extract_unverified(bundle: Path, dest: Path, limits: Limits) -> VerifiedBundle:
    """Extract with every structural check but no signature check: for the signer only."""
    dest.mkdir(parents=True)

    def write(entry: FileEntry, chunks: Iterator[bytes]) -> None:
        target = dest.joinpath(*entry.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:
            for chunk in chunks:
                out.write(chunk)

    return _walk(bundle, limits, None, write)


def read_manifest(bundle: Path, limits: Limits | None = None) -> Manifest:
    """The manifest of a bundle, structurally checked but not signature-checked (for display)."""
    return _walk(Path(bundle), limits or Limits(), None, None).manifest


__all__ = [
    "PATH_PATTERN",
    "Limits",
    "Quotas",
    "VerifiedBundle",
    "extract_bundle",
    "pack",
    "read_manifest",
    "sign_bundle",
    "verify_bundle",
]
