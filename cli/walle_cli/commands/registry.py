"""``walle registry serve`` and ``walle task publish``: run the registry, publish signed bundles."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from walle_cli.commands.cluster import cluster_app
from walle_cli.console import fail, out
from walle_cli.progress import byte_progress
from walle_core import flags

registry_app = typer.Typer(help="Run the Walle registry service.", no_args_is_help=True)
registry_app.add_typer(cluster_app, name="cluster")
task_app = typer.Typer(help="Task bundles in the registry.", no_args_is_help=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help="registry URL (default: $WALLE_REGISTRY_URL)")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="API token (default: $WALLE_REGISTRY_TOKEN)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


@contextmanager
def client(url: str | None, token: str | None) -> Iterator[Any]:
    """A :class:`walle_registry.client.RegistryClient`; API and connection errors become red lines."""
    try:
        import httpx

        from walle_registry.client import ApiError, RegistryClient
    except ImportError as exc:
        fail(f"the registry client needs the server extra (pip install 'walle[server]'): {exc}")
    tok = token or flags.registry_token()
    if not tok:
        fail("no API token: pass --token or set WALLE_REGISTRY_TOKEN")
    c = RegistryClient(url or flags.registry_url(), tok)
    try:
        yield c
    except ApiError as exc:
        fail(f"registry refused: {exc.detail} (HTTP {exc.status})")
    except httpx.HTTPError as exc:
        fail(f"cannot reach the registry at {url or flags.registry_url()}: {exc}")
    finally:
        c.close()


@registry_app.command("serve")
def serve(
    data: Annotated[Path, typer.Option("--data", help="folder for the SQLite database and the blobs")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8700,
    db: Annotated[str | None, typer.Option("--db", help="database URL, e.g. postgresql://user@host/db")] = None,
    admin_token: Annotated[str | None, typer.Option("--admin-token", help="seed this admin token")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes (more than 1 needs --db postgresql)")] = 1,
    accel_redirect: Annotated[str | None, typer.Option(
        "--accel-redirect", help="behind nginx: hand blob downloads over with X-Accel-Redirect to this prefix")] = None,
    blob_store: Annotated[str | None, typer.Option(
        "--blob-store", help="an S3-compatible store: s3://BUCKET/PREFIX?endpoint=URL&presign=SECONDS (default: a folder under --data)")] = None,
) -> None:
    """Serve the registry API (OpenAPI at /openapi.json, console at /console)."""
    try:
        from walle_registry.server import serve as run
    except ImportError as exc:
        fail(f"the registry needs the server extra (pip install 'walle[server]'): {exc}")
    data.mkdir(parents=True, exist_ok=True)
    token_file = data / "admin.token"
    out().print(f"walle registry on http://{host}:{port} (data {data}, db {db or 'sqlite'})")
    if admin_token is None:
        out().print(f"admin token: {token_file} (created on first start)")
    from walle_registry.errors import Invalid

    try:
        from walle_registry.settings import Settings

        settings = Settings(data_dir=data, db_url=db, accel_redirect=accel_redirect, blob_store=blob_store)
        run(host, port, data, db, admin_token, log_level, workers=workers, settings=settings)
    except Invalid as exc:
        fail(exc.message)


@task_app.command("publish")
def publish(
    bundle: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="signed bundle (.walle)")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a signed bundle; the registry verifies digests and signature first."""
    with client(url, token) as c, byte_progress(f"publishing {bundle.name}", bundle.stat().st_size) as advance:
        rel = c.publish(bundle, advance)
    if as_json:
        import json

        out().print_json(json.dumps(rel))
        return
    what = "published" if rel["created"] else "already published (identical content)"
    out().print(f"{rel['task']} {rel['version']} {what}: manifest {rel['manifest_digest'][:16]}, "
                f"{len(rel['files'])} file(s), {rel['bundle_size']} bytes, key {rel['key_id'][:12]}")
