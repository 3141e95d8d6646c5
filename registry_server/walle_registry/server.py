"""Run the registry with uvicorn (``walle registry serve`` and ``python -m walle_registry``).

``workers > 1`` binds the listening socket once and forks that many worker processes, each an
independent uvicorn server with its own :class:`~walle_registry.context.Registry` accepting on
the shared socket (the kernel spreads connections). Workers share nothing in memory, so more than
one needs PostgreSQL: its broker carries notices and revocations between them as between replicas.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walle_registry.errors import Invalid
from walle_registry.settings import Settings


@dataclass(frozen=True)
class ServeOptions:
    log_level: str = "warning"
    backlog: int = 2048
    limit_concurrency: int | None = None
    workers: int = 1


def serve(host: str, port: int, data: Path, db_url: str | None = None, admin_token: str | None = None,
          log_level: str = "warning", backlog: int = 2048, limit_concurrency: int | None = None,
          workers: int = 1, settings: Settings | None = None) -> None:
    """Serve until interrupted; ``settings`` overrides the defaults built from ``data``/``db_url``."""
    settings = settings or Settings(data_dir=Path(data), db_url=db_url)
    opts = ServeOptions(log_level, backlog, limit_concurrency, workers)
    raise_fd_limit()
    if workers < 1:
        raise Invalid(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        _run_worker(settings, admin_token, opts, host=host, port=port)
        return
    if not settings.database_url.startswith("postgresql"):
        raise Invalid("--workers > 1 needs PostgreSQL (--db postgresql://...): SQLite's in-process "
                      "broker cannot tell other worker processes about new notices")
    _prepare(settings, admin_token)  # migrate and seed once, not racing in every worker
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    ctx = multiprocessing.get_context("fork")  # the children inherit the bound socket
    procs = [ctx.Process(target=_run_worker, args=(settings, admin_token, opts), kwargs={"sock": sock},
                         name=f"walle-registry-{i}", daemon=False) for i in range(workers)]
    for p in procs:
        p.start()

    def stop(_sig: int, _frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    sock.close()


def _prepare(settings: Settings, admin_token: str | None) -> None:
    from walle_registry.app import write_admin_token
    from walle_registry.context import Registry

    reg = Registry(settings)
    try:
        write_admin_token(reg, settings, admin_token)
    finally:
        reg.db.dispose()
        reg.spool.close()


def _run_worker(settings: Settings, admin_token: str | None, opts: ServeOptions, host: str = "127.0.0.1",
                port: int = 0, sock: socket.socket | None = None) -> None:
    import uvicorn

    from walle_registry.app import create_app

    app = create_app(settings, admin_token=admin_token)
    asgi: Any = app
    if settings.device_fast_path:
        from walle_registry.fastpath import DeviceFastPath

        asgi = DeviceFastPath(app, app.state.registry)
    config = uvicorn.Config(asgi, host=host, port=port, log_level=opts.log_level, backlog=opts.backlog,
                            timeout_keep_alive=75, limit_concurrency=opts.limit_concurrency, access_log=False,
                            loop=_best("uvloop", "asyncio"), http=_best("httptools", "h11"))
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)


def _best(module: str, fallback: str) -> str:
    """uvloop's event loop and httptools' parser when installed (the ``server`` extra has them)."""
    try:
        __import__(module)
    except ImportError:
        return fallback
    return module


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every device stream is a socket."""
    try:
        import resource
    except ImportError:  # not on Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m walle_registry", description="Run the Walle registry.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--db", default=None, help="database URL (default: SQLite under --data)")
    ap.add_argument("--admin-token", default=None)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (more than 1 needs PostgreSQL)")
    ap.add_argument("--accel-redirect", default=None, metavar="PREFIX",
                    help="hand authorised blob downloads to nginx: X-Accel-Redirect to PREFIX/ab/cd/<sha256>")
    ap.add_argument("--blob-store", default=None, metavar="URL",
                    help="s3://bucket[/prefix]?endpoint=http://host:port (default: a folder under --data)")
    args = ap.parse_args(argv)
    settings = Settings(data_dir=args.data, db_url=args.db, accel_redirect=args.accel_redirect,
                        blob_store=args.blob_store)
    serve(args.host, args.port, args.data, args.db, args.admin_token, args.log_level, workers=args.workers,
          settings=settings)
