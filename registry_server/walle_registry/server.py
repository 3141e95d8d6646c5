"""Run the registry with uvicorn (``walle registry serve`` and ``python -m walle_registry``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from walle_registry.settings import Settings


def serve(host: str, port: int, data: Path, db_url: str | None = None, admin_token: str | None = None,
          log_level: str = "warning", backlog: int = 2048, limit_concurrency: int | None = None) -> None:
    import uvicorn

    from walle_registry.api import create_app

    app = create_app(Settings(data_dir=Path(data), db_url=db_url), admin_token=admin_token)
    uvicorn.run(app, host=host, port=port, log_level=log_level, backlog=backlog, timeout_keep_alive=75,
                limit_concurrency=limit_concurrency, access_log=False)


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
