"""``walle inspect``: what a model is made of, and what it decomposes into."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

import walle_core
from walle_cli.console import out, walle_errors


def _section(heading: str, table: Table) -> None:
    # Headings as plain lines, not table titles: rich wraps a title to the table's width.
    console = out()
    console.print(f"\n[bold]{escape(heading)}[/bold]")
    console.print(table)


def _io_table(values: list[walle_core.TensorInfo]) -> Table:
    table = Table()
    table.add_column("name", overflow="fold")
    table.add_column("type", overflow="fold")
    for t in values:
        note = " (optional, has a default)" if t.has_default else ""
        table.add_row(escape(t.name), escape(t.type) + note)
    return table


def _decomposition(info: walle_core.ModelInfo) -> None:
    plan = info.plan
    if plan is None:
        out().print(f"\ndecomposition: [yellow]not available[/yellow] ({escape(info.plan_error)})")
        return
    where = "" if plan.complete else " in its first stage (a sync point follows: data-dependent)"
    sizes = ", ".join(f"{n}={list(s)}" for n, s in plan.shapes.items()) or "no inputs"
    steps = Table()
    for col in ("#", "backend", "ops", "arena bytes"):
        steps.add_column(col, justify="left" if col == "backend" else "right")
    for i, step in enumerate(plan.steps):
        steps.add_row(str(i), escape(step.backend), str(step.ops), f"{step.arena_bytes:,}")
    _section(f"plan for {sizes}: {plan.n_ops} atomic ops{where}, "
             f"peak arena {plan.peak_bytes:,} bytes", steps)
    table = Table()
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, n in plan.kinds.items():
        table.add_row(kind, str(n))
    _section(f"decomposed: {sum(plan.kinds.values())} atomic ops by kind, {plan.flops / 1e9:.3f} GFLOPs", table)


def _quantized(model: Path, info: walle_core.ModelInfo) -> None:
    """For a QDQ model: which DequantizeLinear -> op -> QuantizeLinear islands run as integer
    ops and which op types stay float between dequantized tensors (docs/quantization.md)."""
    if "DequantizeLinear" not in info.op_types:
        return
    from walle_core.tools import integer_report

    report = integer_report(model)
    table = Table()
    table.add_column("op type")
    table.add_column("runs as", overflow="fold")
    table.add_column("count", justify="right")
    for op, n in sorted(report.integer.items()):
        table.add_row(escape(op), "integer", str(n))
    for op, n in sorted(report.float_ops.items()):
        table.add_row(escape(op), "[yellow]float (dequantized)[/yellow]", str(n))
    floats = sum(report.float_ops.values())
    _section(f"quantized islands: {sum(report.integer.values())} integer, {floats} fall back to float", table)


def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend to plan the decomposition for.")
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Show MODEL's inputs, outputs, op types, parameters and its atomic decomposition."""
    console = out()
    with walle_errors():
        info = walle_core.describe(model, backend=backend)
    if as_json:
        typer.echo(json.dumps({"model": str(model), **dataclasses.asdict(info)}, indent=2))
        return
    console.print(
        f"[bold]{escape(str(model))}[/bold]: graph '{escape(info.name)}', opset {info.opset}, "
        f"{info.nodes} nodes"
        + (f" ({info.nested_nodes} inside control-flow bodies)" if info.nested_nodes else "")
    )
    console.print(f"parameters: {info.parameters:,} values in {info.parameter_tensors} tensors "
                  f"({info.parameter_bytes:,} bytes)")
    _section("inputs", _io_table(info.inputs))
    _section("outputs", _io_table(info.outputs))
    ops = Table()
    ops.add_column("op type")
    ops.add_column("count", justify="right")
    for op, n in info.op_types.items():
        ops.add_row(escape(op), str(n))
    _section(f"op types ({len(info.op_types)})", ops)
    _quantized(model, info)
    _decomposition(info)
