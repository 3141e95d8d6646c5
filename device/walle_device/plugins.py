"""Backend plugins on the device: signed wheels, verified, unpacked atomically, made importable.

Layout under the agent's folder::

    plugins/<name>-<version>/        the wheel's files (packages + ``.dist-info``), renamed into place whole
    downloads/<wheel file name>[.part]   wheels being fetched (a .part is resumed)

A wheel is installed only after (1) its publisher's Ed25519 signature over its sha256 hex verifies
against the device's trusted keys, (2) its bytes hash to that sha256, and (3) every member is a
plain file inside the folder and matches the wheel's own ``RECORD``. It is unpacked into a hidden
temporary folder that is renamed into place, so a folder that exists is complete.

:meth:`PluginInstaller.activate` puts the active version's folder on ``sys.path`` (and takes any
other version of the plugin off it), so ``importlib.metadata`` sees the wheel's ``.dist-info`` and
its ``walle.backends`` entry point; the engine's shared backend registry is rebuilt on its next use.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib
import io
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from walle_core import plugins as engine_plugins
from walle_core.task import DigestMismatchError, KeyStore, LimitError, UnsafeMemberError, VerificationError

MAX_UNPACKED = 512 << 20
MAX_MEMBERS = 20_000


class PluginInstaller:
    def __init__(self, root: Path, keys: KeyStore) -> None:
        self.root = Path(root)
        self.keys = keys
        self.dir = self.root / "plugins"
        self.downloads = self.root / "downloads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str, version: str) -> Path:
        return self.dir / f"{name}-{version}"

    def has(self, name: str, version: str) -> bool:
        return self.folder(name, version).is_dir()

    def download_path(self, filename: str) -> Path:
        return self.downloads / Path(filename).name

    def verify(self, wheel: Path, sha256: str, key_id: str, signature: bytes) -> None:
        """Signature by a trusted key over ``sha256``, then the file's digest (raises VerificationError)."""
        self.keys.verify(key_id, signature, sha256.encode("ascii"))
        actual = _sha256(wheel)
        if actual != sha256:
            raise DigestMismatchError(f"wheel {wheel.name} has sha256 {actual}, its signature covers {sha256}")

    def install(self, wheel: Path, name: str, version: str, sha256: str, key_id: str, signature: bytes) -> Path:
        """Verify ``wheel`` and unpack it into :meth:`folder`; idempotent. Nothing is left behind
        when verification fails."""
        folder = self.folder(name, version)
        if folder.is_dir():
            return folder
        self.verify(wheel, sha256, key_id, signature)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{version}.", dir=self.dir))
        try:
            _unpack(wheel, tmp, f"{name}-{version}")
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        wheel.unlink(missing_ok=True)
        return folder

    def activate(self, name: str, version: str | None) -> None:
        """Make ``version`` of ``name`` the importable one in this process (None: no version).

        Modules loaded from another version's folder are dropped from ``sys.modules`` so the next
        import reads the active one; the engine's backend registry is rebuilt on next use."""
        wanted = str(self.folder(name, version)) if version is not None else None
        prefix = str(self.dir / f"{name}-")
        for entry in [p for p in sys.path if p.startswith(prefix) and p != wanted]:
            sys.path.remove(entry)
            for mod_name, mod in list(sys.modules.items()):
                if (getattr(mod, "__file__", None) or "").startswith(entry + os.sep):
                    del sys.modules[mod_name]
        if wanted is not None and wanted not in sys.path:
            sys.path.append(wanted)  # after the environment: a plugin cannot shadow Walle itself
        importlib.invalidate_caches()
        engine_plugins.reset_registry()

    def prune(self, name: str, keep: set[str]) -> None:
        """Remove installed versions of ``name`` other than ``keep`` (active and previous)."""
        for entry in self.dir.glob(f"{name}-*"):
            version = entry.name[len(name) + 1:]
            if entry.is_dir() and version not in keep and "-" not in version:
                shutil.rmtree(entry, ignore_errors=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _target(member: str, data_dir: str) -> PurePosixPath | None:
    """Where a wheel member goes inside the folder (None: skip it); raises for unsafe names."""
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or "\\" in member or not path.parts:
        raise UnsafeMemberError(f"wheel member {member!r} escapes the plugin folder")
    if path.parts[0] == data_dir:  # NAME-VERSION.data/<scheme>/...: only library code is installed
        if len(path.parts) > 2 and path.parts[1] in ("purelib", "platlib"):
            return PurePosixPath(*path.parts[2:])
        return None
    return path


def _record(zf: zipfile.ZipFile, dist_info: str) -> dict[str, str]:
    """member -> ``sha256=...`` hash from the wheel's RECORD."""
    name = f"{dist_info}/RECORD"
    if name not in zf.namelist():
        raise VerificationError(f"wheel has no {name}")
    rows = csv.reader(io.StringIO(zf.read(name).decode("utf-8")))
    return {row[0]: row[1] for row in rows if len(row) >= 2 and row[1]}


def _unpack(wheel: Path, dest: Path, stem: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > MAX_UNPACKED:
            raise LimitError(f"wheel {wheel.name} unpacks to more than {MAX_MEMBERS} files or {MAX_UNPACKED} bytes")
        dist_info = f"{stem}.dist-info"
        hashes = _record(zf, dist_info)
        unsigned = {f"{dist_info}/RECORD", f"{dist_info}/RECORD.jws", f"{dist_info}/RECORD.p7s"}
        for info in infos:
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeMemberError(f"wheel member {info.filename!r} is a link")
            rel = _target(info.filename, f"{stem}.data")
            data = zf.read(info)
            if info.filename not in unsigned:
                algo, _, want = hashes.get(info.filename, "").partition("=")
                if algo != "sha256":
                    raise VerificationError(f"wheel member {info.filename!r} has no sha256 in RECORD")
                got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                if got != want:
                    raise DigestMismatchError(f"wheel member {info.filename!r} does not match RECORD")
            if rel is None:
                continue
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)


__all__ = ["PluginInstaller"]
