"""Small helpers every service uses: the clock, chunked ``IN`` lists, dialect-neutral upserts."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.types import ARRAY

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


def insert_rows(s: Session, model: Any, rows: list[dict[str, Any]], returning: Sequence[Any] = ()) -> list[Any]:
    """Insert many rows in one statement; with ``returning``, the returned rows (in no particular
    order: return a key to match them up).

    On PostgreSQL this is ``INSERT ... SELECT unnest(:a), unnest(:b), ...`` with one array per
    column: a small statement the driver parses once, where a multi-row ``VALUES`` list costs the
    driver a parse of thousands of placeholders per batch (a deployment's fan-out writes a notice,
    an assignment and a target per device)."""
    if not rows:
        return []
    if s.get_bind().dialect.name != "postgresql":
        if returning:
            return list(s.execute(insert(model).returning(*returning, sort_by_parameter_order=True), rows))
        s.execute(insert(model), rows)
        return []
    table = model.__table__
    cols = list(rows[0])
    sel = select(*[func.unnest(bindparam(f"u_{c}", value=[r[c] for r in rows], type_=ARRAY(table.c[c].type)))
                   for c in cols])
    stmt = insert(table).from_select(cols, sel)
    if returning:
        return list(s.execute(stmt.returning(*returning)))
    s.execute(stmt)
    return []
