"""``walle deploy create|list|status|pause|resume|rollback``: staged rollouts of task versions."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.commands.registry import JsonOpt, TokenOpt, UrlOpt, client
from walle_cli.console import fail, out
from walle_cli.timefmt import readable_time

deploy_app = typer.Typer(help="Release task versions to devices.", no_args_is_help=True)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# How a device's report counts in a stage: a device is in exactly one of these columns.
_OK, _FAILED, _PENDING = ("installed", "running"), ("failed", "error"), ("notified", "downloading")


def policy_lines(st: dict[str, Any]) -> list[str]:
    """The deployment's policy in words: who it targets and how it widens."""
    ids = st.get("device_ids")
    who = "all devices" if ids is None else f"{len(ids)} listed device(s): " + ", ".join(ids[:5]) + (
        ", ..." if len(ids) > 5 else "")
    filters = ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in sorted(st["filters"].items()))
    return [
        f"policy: {who}" + (f" with {filters}" if filters else "") + f", {st['percentage']:g}% by hash "
        f"(seed {st['seed']!r}), priority {st['priority']}",
        "stages: " + " -> ".join(f"{p:g}%" for p in st["stages"]) + f"; a stage opens after {st['min_sample']} "
        f"outcome(s) with success >= {st['success_threshold']:g}; halts at error rate > {st['error_threshold']:g}",
        f"replaces: {st['previous_version'] or 'nothing'}",
    ]


def stage_table(st: dict[str, Any]) -> Table:
    """Per stage: devices assigned, split into succeeded + failed + pending + other (removed, ...),
    which add up to assigned, and a total row that adds the stages up."""
    table = Table("stage", "percent", "targeted", "assigned", "succeeded", "failed", "pending", "other")
    totals = [0] * 6
    for p in st["progress"]:
        counts = p["counts"]
        ok, bad = sum(counts.get(k, 0) for k in _OK), sum(counts.get(k, 0) for k in _FAILED)
        pending = sum(counts.get(k, 0) for k in _PENDING)
        row = [p["targeted"], p["assigned"], ok, bad, pending, p["assigned"] - ok - bad - pending]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        mark = " *" if p["index"] == st["current_stage"] else ""
        table.add_row(f"{p['index'] + 1}{mark}", f"{p['percentage']:g}%", *map(str, row))
    table.add_section()
    table.add_row("total", "", *map(str, totals))
    return table


def _print_status(st: dict[str, Any]) -> None:
    reason = f" ({st['reason']})" if st.get("reason") else ""
    out().print(escape(f"deployment {st['id']}: {st['task']} {st['version']} [{st['state']}]{reason}"))
    for line in policy_lines(st):
        out().print(escape(line))
    if "progress" not in st:
        return
    out().print(stage_table(st))
    for e in st.get("errors", [])[:5]:
        out().print(escape(f"  {readable_time(e.get('at'))} error on {e['device']}: {e['error']}"))
    for ev in st.get("events", [])[:5]:
        out().print(escape(f"  {readable_time(ev['at'])} {ev['kind']}" + (f": {ev['detail']}" if ev["detail"] else "")))


@deploy_app.command("create")
def create(
    task: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    devices: Annotated[str | None, typer.Option("--devices", help="comma-separated device ids")] = None,
    os_: Annotated[str | None, typer.Option("--os", help="comma-separated OS names")] = None,
    app_version: Annotated[str | None, typer.Option("--app-version", help="range, e.g. '>=1.2,<2'")] = None,
    model: Annotated[str | None, typer.Option("--model", help="comma-separated device models")] = None,
    region: Annotated[str | None, typer.Option("--region", help="comma-separated regions")] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="comma-separated user groups (any)")] = None,
    backends: Annotated[str | None, typer.Option("--backends", help="comma-separated backends (all)")] = None,
    percentage: Annotated[float, typer.Option("--percentage", min=0, max=100)] = 100.0,
    seed: Annotated[str | None, typer.Option("--seed", help="hash seed (default: the task name)")] = None,
    stages: Annotated[str, typer.Option("--stages", help="cumulative percents, e.g. 1,10,50,100")] = "100",
    success: Annotated[float, typer.Option("--success-threshold", min=0, max=1)] = 0.9,
    error: Annotated[float, typer.Option("--error-threshold", min=0, max=1)] = 0.2,
    min_sample: Annotated[int, typer.Option("--min-sample", min=0)] = 1,
    priority: Annotated[int, typer.Option("--priority")] = 0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a deployment (policy: id list AND filters AND percentage; staged by --stages)."""
    try:
        stage_list = [float(s) for s in stages.split(",") if s.strip()]
    except ValueError:
        fail(f"--stages must be comma-separated numbers, got {stages!r}")
    filters = {k: v for k, v in {"os": _csv(os_), "app_version": app_version, "model": _csv(model),
                                 "region": _csv(region), "groups": _csv(groups),
                                 "backends": _csv(backends)}.items() if v}
    spec: dict[str, Any] = {"task": task, "version": version, "filters": filters, "percentage": percentage,
                            "stages": stage_list, "success_threshold": success, "error_threshold": error,
                            "min_sample": min_sample, "priority": priority}
    if devices:
        spec["device_ids"] = _csv(devices)
    if seed:
        spec["seed"] = seed
    with client(url, token) as c:
        dep = c.deploy(**spec)
        st = c.status(dep["id"])
    if as_json:
        out().print_json(json.dumps(st))
    else:
        _print_status(st)


@deploy_app.command("list")
def list_(task: Annotated[str | None, typer.Option("--task")] = None, url: UrlOpt = None, token: TokenOpt = None,
          as_json: JsonOpt = False) -> None:
    """List deployments, newest first."""
    with client(url, token) as c:
        deps = c.deployments(task)
    if as_json:
        out().print_json(json.dumps(deps))
        return
    table = Table("id", "task", "version", "state", "stage", "priority")
    for d in deps:
        table.add_row(str(d["id"]), d["task"], d["version"], d["state"], f"{d['current_stage'] + 1}/{len(d['stages'])}",
                      str(d["priority"]))
    out().print(table)


@deploy_app.command("status")
def status(dep_id: Annotated[int, typer.Argument()], url: UrlOpt = None, token: TokenOpt = None,
           as_json: JsonOpt = False) -> None:
    """Per-stage progress, counts by status and recent errors."""
    with client(url, token) as c:
        st = c.status(dep_id)
    if as_json:
        out().print_json(json.dumps(st))
    else:
        _print_status(st)


def _action(name: str) -> Any:
    def run(dep_id: Annotated[int, typer.Argument()], url: UrlOpt = None, token: TokenOpt = None,
            as_json: JsonOpt = False) -> None:
        with client(url, token) as c:
            st = c.action(dep_id, name)
        if as_json:
            out().print_json(json.dumps(st))
        else:
            _print_status(st)
    run.__doc__ = {"pause": "Halt a running deployment (no new devices are reached).",
                   "resume": "Resume a paused deployment.",
                   "rollback": "Roll back: its devices are re-targeted at the previous version."}[name]
    return run


for _name in ("pause", "resume", "rollback"):
    deploy_app.command(_name)(_action(_name))
