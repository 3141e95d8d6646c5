"""``walle inspect``: what a model is made of, and what it decomposes into."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.console import out, walle_errors
from walle_core.errors import WalleError
from walle_core.frontend.onnx_import import import_model
from walle_core.ir.graph import Graph, ValueInfo, subgraphs
from walle_core.runtime.model import Model


def count_ops(graph: Graph) -> tuple[Counter[str], int]:
    """Op-type counts over the graph and its control-flow bodies; second value: how many of them
    sit inside subgraphs."""
    counts: Counter[str] = Counter()
    nested = 0
    stack: list[tuple[Graph, bool]] = [(graph, False)]
    while stack:
        g, inner = stack.pop()
        for node in g.nodes:
            custom = node.domain not in ("", "ai.onnx")
            name = f"{node.domain}.{node.op_type}" if custom else node.op_type
            counts[name] += 1
            nested += inner
            stack.extend((sub, True) for sub in subgraphs(node))
    return counts, nested


def zero_feeds(inputs: list[ValueInfo]) -> dict[str, np.ndarray]:
    """Zero arrays of the declared shapes, 1 for every symbolic or unknown dim."""
    feeds: dict[str, np.ndarray] = {}
    for vi in inputs:
        if vi.type.shape is None:
            raise WalleError(f"input {vi.name!r} has unknown rank; no shape to plan for")
        shape = tuple(d if isinstance(d, int) else 1 for d in vi.type.shape)
        feeds[vi.name] = np.zeros(shape, vi.type.dtype)
    return feeds


def atomic_kinds(model: Model, feeds: dict[str, np.ndarray]) -> tuple[Counter[str], float]:
    """Atomic op kinds of the first stage after the planner's clean-ups, and their FLOPs."""
    ops, _ = model.atomic_ops(feeds)
    return Counter(op.kind.value for op in ops), sum(op.flops() for op in ops)


def _section(heading: str, table: Table) -> None:
    # Headings as plain lines, not table titles: rich wraps a title to the table's width.
    console = out()
    console.print(f"\n[bold]{escape(heading)}[/bold]")
    console.print(table)


def _io_table(values: list[ValueInfo], defaults: set[str]) -> Table:
    table = Table()
    table.add_column("name", overflow="fold")
    table.add_column("type", overflow="fold")
    for vi in values:
        note = " (optional, has a default)" if vi.name in defaults else ""
        table.add_row(escape(vi.name), escape(vi.type.describe()) + note)
    return table


def _decomposition(graph: Graph, backend: str) -> None:
    console = out()
    try:
        model = Model(graph, backend=backend)
        feeds = zero_feeds([vi for vi in graph.inputs if vi.name in set(model.input_names)])
        node = model.plan_for(feeds)
    except WalleError as exc:
        console.print(f"\ndecomposition: [yellow]not available[/yellow] ({escape(str(exc))})")
        return
    stage = node.stage
    where = "" if node.complete else " in its first stage (a sync point follows: data-dependent)"
    sizes = ", ".join(f"{n}={list(a.shape)}" for n, a in sorted(feeds.items())) or "no inputs"
    steps = Table()
    for col in ("#", "backend", "ops", "arena bytes"):
        steps.add_column(col, justify="left" if col == "backend" else "right")
    for i, step in enumerate(stage.steps):
        steps.add_row(str(i), escape(step.backend), str(step.ops), f"{step.arena_bytes:,}")
    _section(f"plan for {sizes}: {stage.n_ops} atomic ops{where}, "
             f"peak arena {stage.peak_bytes:,} bytes", steps)
    try:
        kinds, flops = atomic_kinds(model, feeds)
    except WalleError as exc:
        console.print(f"atomic kinds: not available ({escape(str(exc))})")
        return
    table = Table()
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, n in kinds.most_common():
        table.add_row(kind, str(n))
    _section(f"decomposed: {sum(kinds.values())} atomic ops by kind, {flops / 1e9:.3f} GFLOPs", table)


def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend to plan the decomposition for.")
    ] = "auto",
) -> None:
    """Show MODEL's inputs, outputs, op types, parameters and its atomic decomposition."""
    console = out()
    with walle_errors():
        graph = import_model(model)
    counts, nested = count_ops(graph)
    params = sum(int(a.size) for a in graph.initializers.values())
    param_bytes = sum(int(a.nbytes) for a in graph.initializers.values())
    console.print(
        f"[bold]{escape(str(model))}[/bold]: graph '{escape(graph.name)}', opset {graph.opset}, "
        f"{sum(counts.values())} nodes"
        + (f" ({nested} inside control-flow bodies)" if nested else "")
    )
    n_tensors = len(graph.initializers)
    console.print(f"parameters: {params:,} values in {n_tensors} tensors ({param_bytes:,} bytes)")
    defaults = set(graph.initializers)
    _section("inputs", _io_table(graph.inputs, defaults))
    _section("outputs", _io_table(graph.outputs, set()))
    ops = Table()
    ops.add_column("op type")
    ops.add_column("count", justify="right")
    for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        ops.add_row(escape(op), str(n))
    _section(f"op types ({len(counts)})", ops)
    _decomposition(graph, backend)
