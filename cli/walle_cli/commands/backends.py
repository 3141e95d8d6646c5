"""``walle backends``: every backend plugin this process can see, with truthful availability."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.console import out
from walle_core.plugins import BackendEntry, registry


def entry_to_json(entry: BackendEntry) -> dict[str, Any]:
    device = entry.device
    return {
        "name": entry.name,
        "available": entry.availability.available,
        "reason": entry.availability.reason,
        "device": None
        if device is None
        else {"name": device.name, "kind": device.kind, "details": dict(device.details)},
        "source": entry.source,
    }


def _device_cell(entry: BackendEntry) -> str:
    dev = entry.device
    if dev is None:
        return "-"
    lines = [f"{escape(dev.name)} ({escape(dev.kind)})"]
    lines += [f"[dim]{escape(k)}[/dim]={escape(v)}" for k, v in dev.details.items()]
    return "\n".join(lines)


def backends(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list instead of a table.")
    ] = False,
) -> None:
    """List backend plugins: availability (with the reason when unavailable), device, source."""
    entries = registry().entries()
    if as_json:
        # Plain print, not rich: rich would wrap long lines and break the JSON.
        typer.echo(json.dumps([entry_to_json(e) for e in entries], indent=2))
        return
    table = Table(title="Walle backends", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("available", no_wrap=True)
    table.add_column("reason", ratio=2, overflow="fold")
    # Device name, kind and details share one column so the table fits an 80-column terminal.
    table.add_column("device (kind)", ratio=3, overflow="fold")
    table.add_column("source", ratio=2, overflow="fold")
    for e in entries:
        table.add_row(
            escape(e.name),
            "[green]yes[/green]" if e.availability.available else "[red]no[/red]",
            escape(e.availability.reason),
            _device_cell(e),
            escape(e.source),
        )
    out().print(table)
