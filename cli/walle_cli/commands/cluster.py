"""``walle registry cluster up|down|status``: a local registry cluster on loopback (a private
PostgreSQL, N replicas, nginx in front), as ``scripts/cluster.sh`` starts it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from walle_cli.console import fail, out

if TYPE_CHECKING:
    from walle_registry.cluster import Cluster

cluster_app = typer.Typer(help="A local registry cluster: PostgreSQL, replicas, nginx (loopback).",
                          no_args_is_help=True)
RootOpt = Annotated[Path, typer.Option("--root", help="folder holding the cluster's data, logs and state")]
DEFAULT_ROOT = Path("/tmp/walle-cluster")


def _cluster_class() -> type[Cluster]:
    try:
        from walle_registry.cluster import Cluster
    except ImportError as exc:
        fail(f"the registry cluster needs the server extra (pip install 'walle[server]'): {exc}")
    return Cluster


@cluster_app.command("up")
def up(
    root: RootOpt = DEFAULT_ROOT,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="registry replicas behind nginx")] = 3,
    port: Annotated[int, typer.Option("--port", help="the load balancer's port")] = 8700,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes per replica")] = 1,
    admin_token: Annotated[str | None, typer.Option("--admin-token", help="seed this admin token")] = None,
) -> None:
    """Start PostgreSQL, the replicas and nginx on 127.0.0.1; prints the URL and the admin token."""
    from walle_registry.errors import Invalid

    try:
        c = _cluster_class().up(root, replicas, port, workers, admin_token)
    except Invalid as exc:
        fail(exc.message)
    out().print(json.dumps({"url": c.state.url, "admin_token": c.state.admin_token, "db": c.state.db_url,
                            "replicas": c.state.replica_ports, "root": c.state.root}, indent=2))


@cluster_app.command("down")
def down(root: RootOpt = DEFAULT_ROOT) -> None:
    """Stop nginx, the replicas and PostgreSQL, and remove the cluster's folder."""
    from walle_registry.errors import Invalid

    try:
        _cluster_class().load(root).down()
    except Invalid as exc:
        fail(exc.message)
    out().print(f"cluster at {root} stopped")


@cluster_app.command("status")
def status(root: RootOpt = DEFAULT_ROOT) -> None:
    """Ports, process ids and the database URL of a running cluster."""
    from walle_registry.errors import Invalid

    try:
        state = _cluster_class().load(root).state
    except Invalid as exc:
        fail(exc.message)
    out().print(json.dumps(asdict(state), indent=2))
