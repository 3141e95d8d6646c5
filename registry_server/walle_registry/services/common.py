"""Small helpers every service uses: the clock, chunked ``IN`` lists, dialect-neutral upserts."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from walle_registry.models import Notice

IN_CHUNK = 500  # ids per ``IN (...)`` list: SQLite's bound-parameter limit stays far away

Notices = list[dict[str, Any]]  # push notices created by a transaction, published after commit


def now() -> float:
    return time.time()


def chunks(items: Sequence[str], n: int = IN_CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def insert_ignore(dialect: str, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, for SQLite and PostgreSQL."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(rows).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).values(rows).on_conflict_do_nothing(index_elements=keys)


def notice_dict(n: Notice) -> dict[str, Any]:
    return {"seq": int(n.seq), "device": n.device_id, "task": n.task, "version": n.version,
            "digest": n.manifest_digest, "deployment": n.deployment_id, "action": n.action}
