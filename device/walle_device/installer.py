"""Installed task versions on the device: verified, atomic, the previous one kept for rollback.

Layout under the agent's folder::

    tasks/<task>/<version>/...          the bundle's files (read-only), renamed into place whole
    tasks/<task>/<version>.manifest     the verified canonical manifest (written after the files)
    downloads/<task>-<version>.walle[.part]   bundles being fetched (a .part is resumed)

A version counts as installed only when its manifest file exists; a folder without one (the
device died between the two renames) is removed and installed again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from walle_core.task import KeyStore, Manifest, VerificationError, extract_bundle


class Installer:
    def __init__(self, root: Path, keys: KeyStore) -> None:
        self.root = Path(root)
        self.keys = keys
        self.tasks_dir = self.root / "tasks"
        self.downloads = self.root / "downloads"
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)

    def folder(self, task: str, version: str) -> Path:
        return self.tasks_dir / task / version

    def _manifest_path(self, task: str, version: str) -> Path:
        return self.tasks_dir / task / f"{version}.manifest"

    def has(self, task: str, version: str) -> bool:
        return self._manifest_path(task, version).exists() and self.folder(task, version).is_dir()

    def manifest(self, task: str, version: str) -> Manifest:
        return Manifest.from_bytes(self._manifest_path(task, version).read_bytes())

    def verify_manifest(self, raw: bytes, key_id: str, signature: bytes, digest: str) -> Manifest:
        """Check a manifest fetched on its own before anything else is downloaded."""
        self.keys.verify(key_id, signature, raw)
        manifest = Manifest.from_bytes(raw)
        if digest and manifest.digest() != digest:
            raise VerificationError(f"manifest digest {manifest.digest()} differs from the notice's {digest}")
        return manifest

    def download_path(self, task: str, version: str) -> Path:
        return self.downloads / f"{task}-{version}.walle"

    def install(self, bundle: Path, expected: Manifest) -> Manifest:
        """Verify ``bundle`` (signature, every digest, limits) and install it; idempotent."""
        task, version = expected.name, expected.version
        if self.has(task, version):
            return self.manifest(task, version)
        folder = self.folder(task, version)
        if folder.exists():  # a half-finished install from before a crash
            _rmtree(folder)
        verified = extract_bundle(bundle, folder, self.keys)
        if verified.manifest_bytes != expected.canonical_bytes():
            _rmtree(folder)
            raise VerificationError(f"bundle of {task} {version} holds another manifest than the one announced")
        target = self._manifest_path(task, version)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(verified.manifest_bytes)
        os.replace(tmp, target)
        bundle.unlink(missing_ok=True)
        return verified.manifest

    def prune(self, task: str, keep: set[str]) -> None:
        """Remove installed versions of ``task`` other than ``keep`` (current and previous)."""
        base = self.tasks_dir / task
        if not base.is_dir():
            return
        for entry in base.iterdir():
            version = entry.name.removesuffix(".manifest")
            if version in keep or entry.name.startswith("."):
                continue
            if entry.is_dir():
                _rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def _rmtree(path: Path) -> None:
    # installed files are read-only; their folders are not, so rmtree can unlink them
    shutil.rmtree(path, ignore_errors=True)
