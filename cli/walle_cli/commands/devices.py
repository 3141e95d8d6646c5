"""``walle devices list``: registered devices, their attributes, status and targets."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from walle_cli.commands.registry import JsonOpt, TokenOpt, UrlOpt, client
from walle_cli.console import out

devices_app = typer.Typer(help="Devices known to the registry.", no_args_is_help=True)


@devices_app.command("list")
def list_(limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
          url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List devices (id, online, attributes, task versions they should run)."""
    with client(url, token) as c:
        devs = c.devices(limit)
    if as_json:
        out().print_json(json.dumps(devs))
        return
    table = Table("device", "status", "os", "app", "model", "region", "targets")
    for d in devs:
        a = d["attributes"]
        targets = ", ".join(f"{t}={v}" for t, v in sorted(d["targets"].items()) if v) or "-"
        table.add_row(d["id"], "online" if d["online"] else "offline", a.get("os", ""), a.get("app_version", ""),
                      a.get("model", ""), a.get("region", ""), targets)
    out().print(table)
    out().print(f"{len(devs)} device(s)")
