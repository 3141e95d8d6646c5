"""Shared fixtures for the registry tests: a throwaway PostgreSQL 15 cluster, a registry per test
on SQLite or PostgreSQL, signed test bundles, and a live uvicorn server when real sockets matter.

Imported by the other ``test_registry*.py`` modules (``from test_registry_fixtures import *``); the
fixtures themselves are registered once per session by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from fastapi.testclient import TestClient

from walle_core.task import generate_key, pack, save_keypair, sign_bundle
from walle_demo.demo import RegistryProcess, free_port
from walle_registry.app import create_app
from walle_registry.client import DeviceClient, RegistryClient
from walle_registry.context import Registry
from walle_registry.settings import Settings

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN = "wpt_test-admin-token-0123456789abcdef"
_db_counter = itertools.count()


# ---------------------------------------------------------------------------------- PostgreSQL


@dataclass
class PgCluster:
    dsn_base: str  # postgresql+psycopg://user@127.0.0.1:port/
    port: int

    def new_database(self) -> str:
        import psycopg

        name = f"walle_t{os.getpid()}_{next(_db_counter)}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.dsn_base}{name}"


def _pg_reason() -> str | None:
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 binaries not found in {PG_BIN} (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    return None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="walle-pg-"))
    os.chmod(root, 0o777)
    data = root / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, env=env)
    opts = (f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300")
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts,
                    "-w", "-t", "60", "start"], check=True, capture_output=True, env=env)
    try:
        yield PgCluster(f"postgresql+psycopg://postgres@127.0.0.1:{port}/", port)
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


# ---------------------------------------------------------------------------------- bundles


@dataclass
class Keys:
    root: Path
    key: Any
    pub_pem: str
    key_path: Path


def make_keys(root: Path, name: str = "publisher") -> Keys:
    root.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    key_path, pub_path = save_keypair(key, root / name)
    return Keys(root, key, pub_path.read_text(), key_path)


def make_bundle(root: Path, keys: Keys | None, task: str, version: str, model: bytes = b"model-bytes",
                script: str = "def run(x):\n    return x\n", extra: dict[str, bytes] | None = None) -> Path:
    src = root / f"src-{task}-{version}-{next(_db_counter)}"
    src.mkdir(parents=True)
    (src / "task.json").write_text(json.dumps({"name": task, "version": version, "entry": "main.py",
                                               "model": "model.bin"}))
    (src / "main.py").write_text(script)
    (src / "model.bin").write_bytes(model)
    for name, data in (extra or {}).items():
        (src / name).write_bytes(data)
    out = root / f"{task}-{version}-{src.name}.walle"
    pack(src, out)
    if keys is not None:
        sign_bundle(out, keys.key)
    return out


# ---------------------------------------------------------------------------------- environments


@dataclass
class Env:
    tmp: Path
    app: Any
    http: TestClient
    registry: Registry
    admin: RegistryClient
    keys: Keys
    published: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def publish(self, task: str, version: str, **kw: Any) -> dict[str, Any]:
        bundle = make_bundle(self.tmp / "bundles", self.keys, task, version, **kw)
        rel = self.admin.publish(bundle)
        self.published[(task, version)] = rel
        return rel

    def device(self, device_id: str, **attrs: Any) -> DeviceClient:
        return self.admin.register(device_id, **attrs)

    def deploy(self, **spec: Any) -> dict[str, Any]:
        return self.admin.deploy(**spec)

    def target(self, dev: DeviceClient, task: str) -> str | None:
        for t in dev.targets():
            if t["task"] == task:
                return str(t["version"])
        return None


@contextlib.contextmanager
def make_env(tmp: Path, db_url: str | None, **settings: Any) -> Iterator[Env]:
    st = Settings(data_dir=tmp / "data", db_url=db_url, **settings)
    app = create_app(st, admin_token=ADMIN)
    with TestClient(app) as http:
        admin = RegistryClient(token=ADMIN, http=http)
        keys = make_keys(tmp / "keys")
        admin.add_key(keys.pub_pem, "test publisher")
        yield Env(tmp, app, http, app.state.registry, admin, keys)


@pytest.fixture
def env(tmp_path: Path, db_url: str | None) -> Iterator[Env]:
    with make_env(tmp_path, db_url) as e:
        yield e


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path, None) as e:
        yield e


# ---------------------------------------------------------------------------------- live servers


class ThreadServer:
    """uvicorn in a thread of this process (for SSE and Range tests over real sockets)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def ProcessServer(data: Path, db_url: str | None = None, port: int | None = None) -> RegistryProcess:
    """``python -m walle_registry`` in a child process (for kill -9 / restart tests): the demo's
    launcher, so tests and the demo start the service the same way."""
    return RegistryProcess(data, ADMIN, port=port, db_url=db_url)


def test_fixtures_build_a_verifiable_bundle(tmp_path: Path) -> None:
    from walle_core.task import KeyStore, verify_bundle

    keys = make_keys(tmp_path / "k")
    bundle = make_bundle(tmp_path, keys, "demo", "1.0.0")
    assert verify_bundle(bundle, KeyStore(None, [keys.key.public_key()])).manifest.name == "demo"


# The fixtures above are not exported: tests/conftest.py registers them once for the whole session
# (a star import would define them again in every module, and then the session-scoped PostgreSQL
# cluster was initialised once per importing module).
__all__ = [
    "ADMIN", "Env", "Keys", "PgCluster", "ProcessServer", "ThreadServer", "free_port",
    "make_bundle", "make_env", "make_keys",
]
