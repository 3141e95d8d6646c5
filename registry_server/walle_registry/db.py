"""Engines, sessions and migrations. SQLite runs in WAL mode; PostgreSQL is selected by URL.

SQLite allows one writer at a time: write transactions take an in-process lock and open with
``BEGIN IMMEDIATE`` so they queue instead of failing with "database is locked"; reads run
concurrently (WAL). PostgreSQL needs neither: row locks (``SELECT ... FOR UPDATE``) order the
few read-modify-write paths.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

NOTICE_LOCK = 0x57A11E
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_engine(url: str, immediate: bool, pool_size: int) -> Engine:
    # A pool as large as the worker threads that use it: connections are reused, never churned
    # (every new connection re-runs the PRAGMAs below).
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=pool_size, max_overflow=pool_size)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache per connection
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """The registry's database: a read engine and a write engine (the same one on PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._write_lock: threading.Lock | None = None
        if self.dialect == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.read_engine = _sqlite_engine(url, immediate=False, pool_size=24)
            self.write_engine = _sqlite_engine(url, immediate=True, pool_size=2)  # writers are serial
            self._write_lock = threading.Lock()
        else:
            if parsed.drivername == "postgresql":
                url = str(parsed.set(drivername="postgresql+psycopg"))
                self.url = url
            # No pre-ping (a round trip per checkout): the broker's LISTEN connection sees the
            # server go away and recycles the pool (:meth:`recycle`); otherwise a connection
            # broken by a restart fails its statement once and SQLAlchemy then invalidates the
            # whole pool. Reads run
            # in autocommit: under READ COMMITTED every statement takes its own snapshot anyway,
            # and BEGIN/ROLLBACK around a read cost two round trips for nothing.
            self.write_engine = create_engine(url, pool_size=20, max_overflow=20)
            self.read_engine = self.write_engine.execution_options(isolation_level="AUTOCOMMIT")
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        engine = create_engine(self.url, poolclass=NullPool)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def write(self, serial: bool = False) -> Iterator[Session]:
        """A session whose transaction commits when the block ends (rolls back on error).

        ``serial=True`` (transactions that write notices): on PostgreSQL take a transaction-level
        advisory lock first, so notice sequence numbers commit in increasing order and a device's
        cursor never skips a notice that committed late. SQLite writers are serial anyway.
        """
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._write() as session, session.begin():
                if serial and self.is_postgres:
                    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": NOTICE_LOCK})
                yield session
        finally:
            if lock is not None:
                lock.release()

    def recycle(self) -> None:
        """Drop the pooled connections (the broker saw the server go away): the next checkout
        connects afresh instead of failing once on a dead socket. Connections in use are closed
        when they come back."""
        self.write_engine.dispose()
        if not self.is_postgres:  # SQLite's read engine has a pool of its own
            self.read_engine.dispose()

    def dispose(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()
