"""``walle demo``: a tiny real model, end to end, checked against numpy."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.console import fail, out, walle_errors
from walle_cli.demo import HIDDEN, IN, OUT, run_demo


def demo(
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="Backend to run on (repeat); default: all available."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the random input.")] = 3,
) -> None:
    """Build a tiny ONNX MLP, run it with Walle and compare with numpy."""
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
