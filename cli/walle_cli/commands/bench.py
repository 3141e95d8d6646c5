"""``walle bench``: micro-benchmarks of Walle's subsystems (one subcommand each)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from walle_cli.console import out, walle_errors

bench_app = typer.Typer(help="Benchmarks of Walle's subsystems.", no_args_is_help=True)


@bench_app.command("pipeline")
def bench_pipeline(
    triggers: Annotated[int, typer.Option("--triggers", min=1, help="Active triggers (2-4 steps each).")] = 100,
    events: Annotated[int, typer.Option("--events", min=1, help="Events to push through.")] = 200_000,
    repeat: Annotated[int, typer.Option(min=1, help="Runs; the best one is reported.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Trigger-matching throughput (events_per_s) and per-event latency percentiles."""
    from walle_bench.pipeline import run_bench

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


@bench_app.command("model")
def bench_model(
    model: Annotated[str, typer.Argument(help="An .onnx or .tflite file (test models: bench/peers.py).")],
    vs: Annotated[list[str], typer.Option("--vs", help="Peer engine(s): onnxruntime, mnn, litert (.tflite).")] = ["onnxruntime"],  # noqa: B006
    threads: Annotated[int, typer.Option(min=1, help="Threads for every engine.")] = 2,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per engine (median).")] = 30,
    backend: Annotated[str, typer.Option(help="Walle backend.")] = "cpu",
    shape: Annotated[list[str] | None, typer.Option(
        "--shape", help="NAME=D1,D2,... for a dynamic input (default: its declared shape, unknown dims 1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Latency of MODEL on Walle against peer engines (same process, same threads, batch 1)."""
    from walle_bench.compare import compare, header, resolve_model, table_rows
    from walle_cli.commands.search import parse_shapes

    with walle_errors():
        name, path, feeds = resolve_model(model, parse_shapes(shape or []))
        res = compare(name, path, feeds, threads=threads, runs=runs, peers=vs, backend=backend)
    if as_json:
        ratios = {p: res.ratio(p) for p in res.peers}
        typer.echo(json.dumps({**dataclasses.asdict(res), "path": str(path), "threads": threads, "runs": runs,
                               "backend": backend, "inputs": {n: list(a.shape) for n, a in feeds.items()},
                               "walle_over_peer": ratios}, indent=2))
        return
    inputs = ", ".join(f"{n}{list(a.shape)}" for n, a in feeds.items())
    for line in [*header(threads, runs), f"inputs: {inputs}", *table_rows([res], vs)]:
        typer.echo(line)
