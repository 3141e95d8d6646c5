"""What a device may download: the releases it is (or was) targeted with, and their blobs.

Read permission is monotone: assignments are never deleted and a deployment's task, version and
previous version never change, so a grant, once seen, stays valid and is cached; a miss re-reads
the grants (one joined query) before refusing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from walle_registry.db import Database
from walle_registry.errors import NotFound
from walle_registry.models import Assignment, Deployment
from walle_registry.services.publishing import Publishing

SHA_IN_TEXT = re.compile(r"[0-9a-f]{64}")


class Grants:
    def __init__(self, db: Database, publishing: Publishing) -> None:
        self.db, self.publishing = db, publishing
        self._grants: dict[str, frozenset[tuple[str, str]]] = {}  # device -> readable (task, version)
        self._release_blobs: dict[tuple[str, str], frozenset[str]] = {}

    def _load(self, device_id: str) -> frozenset[tuple[str, str]]:
        with self.db.read() as s:
            rows = s.execute(select(Deployment.task, Deployment.version, Deployment.previous_version)
                             .join(Assignment, Assignment.deployment_id == Deployment.id)
                             .where(Assignment.device_id == device_id).distinct())
            grants = {(t, v) for t, v0, v1 in rows for v in (v0, v1) if v is not None}
        merged = frozenset(grants | self._grants.get(device_id, frozenset()))
        if len(self._grants) > 1_000_000:
            self._grants.clear()
        self._grants[device_id] = merged
        return merged

    def observe_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        """An install notice exists only for a release a deployment assigned to the device (its
        target), so it is a grant; the rest of the device's grants load on a miss as before."""
        for n in notices:
            if n.get("action") == "install" and n.get("version"):
                did, key = str(n["device"]), (str(n["task"]), str(n["version"]))
                have = self._grants.get(did)
                if have is None or key not in have:
                    self._grants[did] = (have or frozenset()) | {key}

    def can_read_release_cached(self, device_id: str, task: str, version: str) -> bool:
        return (task, version) in self._grants.get(device_id, ())

    def can_read_release(self, device_id: str, task: str, version: str) -> bool:
        """Devices may pull a release they are (or were) targeted with."""
        if self.can_read_release_cached(device_id, task, version):
            return True
        return (task, version) in self._load(device_id)

    def may_write_results(self, device_id: str, task: str, version: str) -> bool:
        """Devices upload results only for tasks deployed to them (``version`` when given)."""
        if version:
            return self.can_read_release(device_id, task, version)
        return any(t == task for t, _ in self._grants.get(device_id, ())) or \
            any(t == task for t, _ in self._load(device_id))

    def release_blobs(self, task: str, version: str) -> frozenset[str]:
        """Every digest a release's manifest names, plus its bundle (cached: releases are immutable)."""
        key = (task, version)
        blobs = self._release_blobs.get(key)
        if blobs is None:
            rel = self.publishing.release(task, version)
            blobs = frozenset(SHA_IN_TEXT.findall(rel.manifest)) | {rel.bundle_sha256}
            self._release_blobs[key] = blobs
        return blobs

    def may_read_blob_cached(self, device_id: str, sha256: str) -> bool:
        for key in self._grants.get(device_id, ()):
            blobs = self._release_blobs.get(key)
            if blobs is not None and sha256 in blobs:
                return True
        return False

    def may_read_blob(self, device_id: str, sha256: str) -> bool:
        if self.may_read_blob_cached(device_id, sha256):
            return True
        for task, version in self._load(device_id):
            try:
                if sha256 in self.release_blobs(task, version):
                    return True
            except NotFound:
                continue
        return False
