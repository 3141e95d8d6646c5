"""``walle results TASK``: task outputs uploaded by devices (de-duplicated by device and sequence)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.commands.registry import JsonOpt, TokenOpt, UrlOpt, client
from walle_cli.console import out
from walle_cli.timefmt import readable_time


def task_outputs(value: Any) -> tuple[str, Any]:
    """(run status, what to show) for one uploaded row: a device's trigger match carries the task
    run under ``user`` (status and outputs); anything else is shown as it is."""
    run = value.get("user") if isinstance(value, dict) else None
    if isinstance(run, dict) and "outputs" in run:
        return str(run.get("status", "")), run["outputs"] if run.get("status") == "ok" else run.get("error", run["outputs"])
    return "", value


def results(
    task: Annotated[str, typer.Argument(help="task name")],
    version: Annotated[str | None, typer.Option("--version")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show results of TASK (optionally one version or one device)."""
    with client(url, token) as c:
        rows = c.results(task, version, device, limit=limit)
    if as_json:
        out().print_json(json.dumps(rows))
        return
    # Ids and times stay whole on one line; a long name or output is cut short. A narrow terminal
    # leaves out the time the registry received a row (--json has everything).
    wide = out().width >= 110
    table = Table()
    table.add_column("device", no_wrap=True)
    for col in ("seq", "version", "name", "status"):
        table.add_column(col)
    for col in ("event time (UTC)", "received (UTC)")[: 2 if wide else 1]:
        table.add_column(col, no_wrap=True)
    table.add_column("outputs", overflow="ellipsis", no_wrap=True)
    for r in rows:
        status, shown = task_outputs(r["value"])
        times = [readable_time(r["ts"]), readable_time(r["received_at"])][: 2 if wide else 1]
        table.add_row(escape(r["device"]), str(r["seq"]), escape(r["version"]), escape(r["name"]), status,
                      *times, escape(json.dumps(shown)[:200]))
    out().print(table)
    out().print(f"{len(rows)} result(s)")
