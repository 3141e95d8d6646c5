"""The agent's durable state: credentials, notice cursor, installed tasks and plugins, unsent reports.

One JSON file, replaced atomically (write a temporary file, fsync, rename), so a device killed at
any instant restarts from the last complete state. Everything else the agent must not lose lives
in the pipeline's SQLite store (events, features, the upload outbox) and in the install folders.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Installed:
    """One task on this device: the active version and the one kept for rollback."""

    version: str | None  # None: removed by the registry (the files stay for a later rollback)
    digest: str = ""
    deployment: int | None = None
    previous: str | None = None
    after_seq: int = 0  # matches that began at or before this event seq predate the install


@dataclass
class InstalledPlugin:
    """One backend plugin on this device: the active version and the one kept for rollback."""

    version: str | None  # None: no longer targeted (the files stay for a later rollback)
    sha256: str = ""
    deployment: int | None = None
    previous: str | None = None


@dataclass
class AgentState:
    device_id: str = ""
    token: str = ""
    cursor: int = 0
    report_seq: int = 0
    tasks: dict[str, Installed] = field(default_factory=dict)
    plugins: dict[str, InstalledPlugin] = field(default_factory=dict)
    # status last reported per "task@version", so a restart does not re-report or forget one
    reported: dict[str, str] = field(default_factory=dict)
    pending_reports: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> AgentState:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text("utf-8"))
        tasks = {k: Installed(**v) for k, v in raw.pop("tasks", {}).items()}
        plugins = {k: InstalledPlugin(**v) for k, v in raw.pop("plugins", {}).items()}
        return cls(tasks=tasks, plugins=plugins, **raw)

    def save(self, path: Path) -> None:
        data = asdict(self)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def next_report(self, task: str, version: str, status: str, deployment: int | None, error: str = "",
                    metrics: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Queue a report if ``status`` is new for this task version; the caller saves the state."""
        key = f"{task}@{version}"
        if self.reported.get(key) == status:
            return None
        self.reported[key] = status
        self.report_seq += 1
        body: dict[str, Any] = {"task": task, "version": version, "status": status, "error": error[:4000],
                                "metrics": metrics or {}, "seq": self.report_seq}
        if deployment is not None:
            body["deployment_id"] = deployment
        self.pending_reports.append(body)
        return body
