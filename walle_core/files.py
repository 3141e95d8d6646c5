"""Writing cache files that several processes (pytest workers, device agents) may write at once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replaces ``path`` with ``data`` in one rename: a reader sees the old file or the new one,
    never half of either, and each writer has its own temporary file (a shared ``.tmp`` name
    let two processes rename the same file, and the second rename failed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
