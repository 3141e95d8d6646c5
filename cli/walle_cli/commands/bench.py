"""``walle bench``: micro-benchmarks of Walle's subsystems (one subcommand each)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from walle_cli.console import out

bench_app = typer.Typer(help="Benchmarks of Walle's subsystems.", no_args_is_help=True)


@bench_app.command("pipeline")
def bench_pipeline(
    triggers: Annotated[int, typer.Option("--triggers", min=1, help="Active triggers (2-4 steps each).")] = 100,
    events: Annotated[int, typer.Option("--events", min=1, help="Events to push through.")] = 200_000,
    repeat: Annotated[int, typer.Option(min=1, help="Runs; the best one is reported.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Trigger-matching throughput (events_per_s) and per-event latency percentiles."""
    from walle_core.pipeline.bench import run_bench

    result = run_bench(triggers, events, repeat=repeat)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    lat = result["latency_us_per_event"]
    out().print(
        f"{result['events_per_s']:,} events/s with {triggers} triggers over {events:,} events "
        f"(latency per event p50 {lat['p50']:.2f} us, p99 {lat['p99']:.2f} us; "
        f"hand-written single trigger {result['hand_written_single_trigger_events_per_s']:,} events/s)"
    )
import walle_cli.commands.bench_model  # noqa: E402, F401  (registers "walle bench model")
