"""``walle pipeline replay``: run trigger specs over a JSON-lines event file and print matches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from walle_cli.console import err, fail, out, walle_errors
from walle_core.pipeline import Event, Matcher, compile_spec, read_jsonl

pipeline_app = typer.Typer(help="On-device data pipeline: replay events through triggers.", no_args_is_help=True)


def load_specs(path: Path) -> list[dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read trigger spec {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        fail(f"trigger spec {path} is not valid JSON ({exc.msg} at line {exc.lineno})")
    specs = raw if isinstance(raw, list) else [raw]
    with walle_errors():
        for s in specs:
            compile_spec(s)
    return specs


@pipeline_app.command("replay")
def replay(
    events: Annotated[Path, typer.Argument(help="JSON-lines file, one event object per line.")],
    trigger: Annotated[
        list[Path], typer.Option("--trigger", "-t", help="Trigger spec JSON (one spec or a list); repeatable.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per match.")] = False,
    until: Annotated[
        int | None,
        typer.Option(help="Advance the clock to this time (ms) at the end; default: past every window."),
    ] = None,
) -> None:
    """Print every match (and time-out) the triggers produce over EVENTS, in firing order.

    Malformed lines are reported on stderr with their line number and skipped.
    """
    specs = [s for p in trigger for s in load_specs(p)]
    with walle_errors():
        matcher = Matcher(specs)
    try:
        fh = events.open(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read events {events}: {exc.strerror}")
    bad = 0
    printed = 0

    def show(ms: list[Any]) -> None:
        nonlocal printed
        for m in ms:
            printed += 1
            if as_json:
                typer.echo(json.dumps(m.to_json()))
            else:
                seq = " ".join(f"{s}={e.event_id}@{e.timestamp_ms}" for s, e in zip(m.stages, m.events, strict=True))
                label = "" if m.kind == "match" else f" [{m.kind}]"
                out().print(f"{escape(m.trigger_id)}{label} key={escape(m.key)!s} at {m.fired_at_ms}: {escape(seq)}")

    with fh:
        for lineno, item in read_jsonl(iter(fh)):
            if not isinstance(item, Event):
                bad += 1
                err().print(f"[yellow]skipped[/yellow] {escape(str(item))}", soft_wrap=True)
                continue
            if item.timestamp_ms < matcher.clock_ms:
                bad += 1
                err().print(
                    f"[yellow]skipped[/yellow] line {lineno}: late event ({item.timestamp_ms} ms < clock "
                    f"{matcher.clock_ms} ms)", soft_wrap=True,
                )
                continue
            show(matcher.process(item))
    show(matcher.advance_time(until if until is not None else 2**62))
    summary = f"{printed} match(es), {matcher.stats.events} event(s)" + (f", {bad} skipped" if bad else "")
    err().print(summary)
