"""The task manifest: what a bundle holds and how the device must run it.

The manifest is signed in its *canonical* JSON form (sorted keys, no insignificant whitespace,
UTF-8), so the same manifest always has the same bytes, digest and signature.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from walle_core.task.errors import ManifestError
from walle_core.task.schema import MANIFEST_SCHEMA, schema_errors

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Quotas:
    """Per-run limits the VM enforces. Defaults suit a small on-device task."""

    wall_time_s: float = 10.0
    memory_bytes: int = 256 << 20
    output_bytes: int = 1 << 20


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    entry: str
    files: tuple[FileEntry, ...]
    model: str | None = None
    backends: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    trigger: dict[str, Any] = field(default_factory=dict)
    quotas: Quotas = field(default_factory=Quotas)
    min_walle_version: str = "0.1.0"
    description: str = ""
    format: int = FORMAT_VERSION

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in sorted(self.files, key=lambda f: f.path)]
        data["backends"] = list(self.backends)
        data["ops"] = list(self.ops)
        return data

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        """sha256 of the canonical manifest: the bundle's content address."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        errors = schema_errors(data, MANIFEST_SCHEMA)
        if errors:
            raise ManifestError("invalid manifest: " + "; ".join(errors[:5]))
        files = tuple(FileEntry(**f) for f in data["files"])
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ManifestError("invalid manifest: a file is listed twice")
        for key in ("entry", "model"):
            ref = data.get(key)
            if ref is not None and ref not in paths:
                raise ManifestError(f"invalid manifest: {key} {ref!r} is not one of the bundle's files")
        if not data["entry"].endswith(".py"):
            raise ManifestError("invalid manifest: entry must be a .py script")
        return cls(
            name=data["name"],
            version=data["version"],
            entry=data["entry"],
            files=files,
            model=data.get("model"),
            backends=tuple(data.get("backends", ())),
            ops=tuple(data.get("ops", ())),
            trigger=dict(data.get("trigger", {})),
            quotas=Quotas(**data.get("quotas", {})),
            min_walle_version=data.get("min_walle_version", "0.1.0"),
            description=data.get("description", ""),
            format=data["format"],
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not UTF-8 JSON: {exc}") from exc
        return cls.from_dict(data)

    def check_compatible(self, walle_version: str) -> None:
        """Raise when this device's Walle is older than the manifest's minimum."""
        if version_tuple(walle_version) < version_tuple(self.min_walle_version):
            raise ManifestError(
                f"task {self.name} needs walle >= {self.min_walle_version}, this is {walle_version}"
            )


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise ManifestError(f"bad version {version!r}")
    return tuple(int(g) for g in match.groups())
