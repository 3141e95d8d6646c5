"""The spool: the one place where a replica keeps unfinished work (uploads being received,
bundles being extracted, blobs being written before their atomic rename).

Each running replica owns a folder ``data_dir/spool/<id>/`` and holds an exclusive ``flock`` on
its ``.lock`` file for as long as it runs. At startup a replica removes every folder whose lock
nobody holds (its owner was killed), so a crash at any point of a publish leaves nothing behind
after the next start, while replicas sharing the data folder keep their own work. Without
``fcntl`` (Windows) one replica per data folder is assumed and every leftover is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
UNLOCKED_GRACE_S = 60.0  # a folder whose owner has not taken its lock yet is left alone this long


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.swept = self.sweep()
        self.dir = self.root / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.dir.mkdir()
        self._lock: IO[str] | None = open(self.dir / LOCK, "w")  # noqa: SIM115 - held until close()
        if fcntl is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def sweep(self) -> int:
        """Remove what replicas that are gone left behind; returns how many entries went."""
        removed = 0
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                if not self._abandoned(entry):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed

    @staticmethod
    def _abandoned(folder: Path) -> bool:
        lock = folder / LOCK
        if not lock.exists():
            return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
        if fcntl is None:
            return True
        with open(lock) as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a live replica holds it
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return True

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None
            shutil.rmtree(self.dir, ignore_errors=True)
