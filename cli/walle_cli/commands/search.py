"""``walle search`` explains the semi-auto search per op; ``walle calibrate`` (re)builds the
per-device calibration cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

import walle_core
from walle_cli.console import fail, out, walle_errors
from walle_core.plugins import registry
from walle_core.search import Decision, calibration_for


def parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            fail(f"--shape expects NAME=D1,D2,..., got {spec!r}")
        if not sep or not name:
            fail(f"--shape expects NAME=D1,D2,..., got {spec!r}")
    return shapes


def describe(d: Decision) -> str:
    op = d.op
    fn = getattr(op, "fn", "") or getattr(op, "name", "")
    return f"{op.kind.value}{'(' + fn + ')' if fn else ''} {list(op.out.shape)}"


def search(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    shape: Annotated[list[str] | None, typer.Option("--shape", help="NAME=D1,D2,... for dynamic inputs.")] = None,
    measure: Annotated[bool, typer.Option(help="Also time each chosen op, and every candidate plan whole.")] = False,
    budget: Annotated[float, typer.Option(help="Measure-mode budget in seconds for timing top candidates (0: off).")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Explain the search: per op the chosen backend and algorithm, predicted cost, runner-up."""
    with walle_errors():
        m = walle_core.load(model, backend="auto", tune_budget_s=budget)
        try:
            feeds = m.example_feeds(parse_shapes(shape or []))
        except walle_core.InputError as exc:
            fail(f"{exc}: --shape NAME=D1,D2,...")
        decisions = m.explain(feeds)
        result = m.searcher.last_result if m.searcher is not None else None
        measured: list[float | None] = [None] * len(decisions)
        whole: float | None = None
        if measure:
            measured = list(m.time_decisions(decisions, repeat=5, budget_s=0.2))
            whole = m.time_run(feeds, repeat=5)
            if m.searcher is not None and result is not None:
                m.searcher.time_plans(result)  # every candidate plan, whole, as it would run
    rows: list[dict[str, Any]] = []
    for i, (d, t) in enumerate(zip(decisions, measured, strict=True)):
        ru = d.runner_up
        rows.append({
            "index": i, "op": describe(d), "backend": d.chosen.backend.name,
            "algorithm": d.chosen.algorithm.name, "predicted_us": d.chosen.predicted_s * 1e6,
            "measured_us": None if t is None else t * 1e6,
            "runner_up": None if ru is None else ru.label,
            "runner_up_us": None if ru is None else ru.seconds * 1e6,
            "why": d.reason, "skipped": d.skipped,
        })
    plans = [] if result is None else [{
        "plan": p.label, "chosen": p is result.chosen, "predicted_us": p.predicted_s * 1e6,
        "measured_us": None if p.measured_s is None else p.measured_s * 1e6,
        "programs": p.cost.programs, "transfers_us": p.cost.transfer_s * 1e6,
        "fallback_ops": p.fallbacks, "note": p.note} for p in result.plans]
    predicted_total = result.chosen.predicted_s if result is not None else sum(d.chosen.seconds for d in decisions)
    summary = {"ops": len(rows), "predicted_total_us": predicted_total * 1e6,
               "measured_ops_total_us": None if not measure else sum(t or 0 for t in measured) * 1e6,
               "measured_plan_us": None if whole is None else whole * 1e6,
               "why": None if result is None else result.why}
    if as_json:
        out().print_json(json.dumps({"decisions": rows, "plans": plans, "summary": summary}))
        return
    table = Table(title=f"search: {model.name}")
    for col in ("#", "op", "chosen", "pred µs", "meas µs", "runner-up", "ru µs", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["index"]), r["op"], f"{r['backend']}/{r['algorithm']}",
                      f"{r['predicted_us']:.1f}", "" if r["measured_us"] is None else f"{r['measured_us']:.1f}",
                      r["runner_up"] or "-", "" if r["runner_up_us"] is None else f"{r['runner_up_us']:.1f}",
                      r["why"])
    out().print(table)
    if plans:
        ptable = Table(title="candidate plans (whole graph)")
        for col in ("plan", "pred µs", "meas µs", "programs", "transfers µs", "fallback ops", ""):
            ptable.add_column(col)
        for p in plans:
            ptable.add_row(str(p["plan"]), f"{p['predicted_us']:.0f}",
                           "" if p["measured_us"] is None else f"{p['measured_us']:.0f}",
                           str(p["programs"]), f"{p['transfers_us']:.0f}", str(p["fallback_ops"]),
                           "chosen" if p["chosen"] else str(p["note"]))
        out().print(ptable)
        out().print(f"why: {summary['why']}")
    line = f"{summary['ops']} ops, predicted {summary['predicted_total_us']:.0f} µs"
    if measure:
        line += (f", measured per-op sum {summary['measured_ops_total_us']:.0f} µs,"
                 f" whole plan {summary['measured_plan_us']:.0f} µs")
    out().print(line)


def calibrate(
    refresh: Annotated[bool, typer.Option(help="Ignore the cache and measure again.")] = True,
) -> None:
    """Run the per-device micro-benchmarks for every available backend and cache the results."""
    for backend in registry().available():
        with Progress(transient=True) as progress:
            task = progress.add_task(f"calibrating {backend.name}", total=None)

            def step(msg: str, task_id: Any = task, name: str = backend.name) -> None:
                progress.update(task_id, description=f"{name}: {msg}")

            cal = calibration_for(backend, refresh=refresh, progress=step)
        out().print(f"{backend.name}: op overhead {cal.op_overhead_s * 1e6:.2f} µs, "
                    f"program overhead {cal.program_overhead_s * 1e6:.2f} µs, "
                    f"bandwidth {cal.bandwidth_Bps / 1e9:.1f} GB/s, upload {cal.h2d_Bps / 1e9:.2f} GB/s "
                    f"+ {cal.h2d_latency_s * 1e6:.1f} µs, download {cal.d2h_Bps / 1e9:.2f} GB/s "
                    f"+ {cal.d2h_latency_s * 1e6:.1f} µs, {len(cal.rates)} op buckets")
