"""Run the registry with uvicorn (``walle registry serve`` and ``python -m walle_registry``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from walle_registry.settings import Settings


def serve(host: str, port: int, data: Path, db_url: str | None = None, admin_token: str | None = None,
          log_level: str = "warning", backlog: int = 2048, limit_concurrency: int | None = None) -> None:
    import uvicorn

    from walle_registry.app import create_app

    raise_fd_limit()
    app = create_app(Settings(data_dir=Path(data), db_url=db_url), admin_token=admin_token)
    uvicorn.run(app, host=host, port=port, log_level=log_level, backlog=backlog, timeout_keep_alive=75,
                limit_concurrency=limit_concurrency, access_log=False, loop=_best("uvloop", "asyncio"),
                http=_best("httptools", "h11"))


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
    args = ap.parse_args(argv)
    serve(args.host, args.port, args.data, args.db, args.admin_token, args.log_level)
