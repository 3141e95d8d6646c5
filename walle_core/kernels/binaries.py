"""Compiled kernels on disk (OpenCL device binaries, SPIR-V), shared by the GPU plugins: one file
per digest under ``walle_core.flags.cache_dir()/<backend>``, written atomically so that concurrent
processes never read half a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from walle_core import flags
from walle_core.files import atomic_write


class BinaryCache:
    def __init__(self, subdir: str, suffix: str) -> None:
        self.dir = flags.cache_dir() / subdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.suffix = suffix

    def path(self, ident: str) -> Path:
        return self.dir / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}{self.suffix}"

    def get(self, ident: str) -> bytes | None:
        path = self.path(ident)
        return path.read_bytes() if path.exists() else None

    def put(self, ident: str, data: bytes) -> None:
        atomic_write(self.path(ident), data)

    def drop(self, ident: str) -> None:
        self.path(ident).unlink(missing_ok=True)
