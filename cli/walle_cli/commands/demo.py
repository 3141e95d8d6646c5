"""``walle demo``: the end-to-end loop (registry, signed task, staged rollout, simulated devices,
results, HTML report); ``--quick`` runs only a tiny ONNX MLP on every backend against numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.console import fail, out, walle_errors
from walle_demo.demo import HIDDEN, IN, OUT, run_demo, run_e2e


def demo(
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, max=2000,
                                         help="Simulated devices in the fleet.")] = 60,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the registry, devices and the report "
                                                       "(replaced).")] = Path("walle-demo"),
    seed: Annotated[int, typer.Option(help="Seed for the shoppers, the devices and the model.")] = 7,
    timeout: Annotated[float, typer.Option(help="Seconds the rollout may take.")] = 240.0,
    quick: Annotated[bool, typer.Option("--quick", help="Only run a tiny ONNX MLP on every backend "
                                                        "and compare with numpy.")] = False,
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="--quick: backend to run on (repeat); default: all available."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="--quick: batch size of the random input.")] = 3,
) -> None:
    """Run the whole Walle loop on this machine and write an HTML report (or --quick)."""
    if quick or backend:
        _quick(batch, backend)
        return
    console = out()
    try:
        outcome = run_e2e(devices, out_dir, seed, timeout, console=console)
    except RuntimeError as exc:
        fail(str(exc), code=1)
    table = Table(title="Walle demo summary", show_header=False)
    for k, v in outcome.summary.items():
        table.add_row(escape(k), escape(str(v)))
    console.print(table)
    if outcome.problems:
        for p in outcome.problems[:10]:
            console.print(f"[red]problem:[/red] {escape(p)}")
        fail(f"{len(outcome.problems)} problem(s); report: {outcome.report}", code=1)
    console.print(f"[bold green]report:[/bold green] {outcome.report}")


def _quick(batch: int, backend: list[str] | None) -> None:
    console = out()
    console.print(
        f"model: softmax(relu(x @ w1 + b1) @ w2 + b2), x: float32[{batch},{IN}], "
        f"hidden {HIDDEN}, {OUT} classes (built with onnx.helper)"
    )
    with walle_errors():
        results = run_demo(batch, backend)
    table = Table(title="Walle demo: MLP vs numpy")
    for col in ("backend", "output shape", "max |error|", "match", "first run ms", "warm run ms"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in results:
        table.add_row(
            escape(r.backend),
            str(list(r.shape)),
            f"{r.max_abs_error:.2e}",
            "[green]yes[/green]" if r.ok else "[red]NO[/red]",
            f"{r.first_ms:.2f}",
            f"{r.warm_ms:.3f}",
        )
    console.print(table)
    if not results:
        fail("no backend is available to run the demo")
    bad = [r.backend for r in results if not r.ok]
    if bad:
        fail(f"results differ from numpy on: {', '.join(bad)}", code=1)
