"""``walle run``: load a model with ``walle_core.load`` and run it on ``.npy`` inputs."""

from __future__ import annotations

import json
import math
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

import walle_core
from walle_cli.console import fail, out, walle_errors

PREVIEW = 6  # values shown per output
JSON_VALUES = 10_000  # values --json prints per output before it gives only the first PREVIEW


def parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """``["x=a.npy", ...]`` -> feeds. Bad syntax or unreadable files are user errors (exit 2)."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            fail(f"--input expects NAME=FILE.npy, got {spec!r}")
        if name in feeds:
            fail(f"input {name!r} given twice")
        try:
            # allow_pickle=False: an input file must not be able to run code.
            value = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            fail(f"cannot read input {name!r} from {file}: {exc}")
        if not isinstance(value, np.ndarray):  # an .npz archive holds several arrays
            fail(f"input {name!r}: {file} is not a single .npy array")
        feeds[name] = value
    return feeds


def preview(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    text = np.array2string(flat[:PREVIEW], precision=5, separator=", ", max_line_width=10_000)
    return text[:-1] + ", ...]" if flat.size > PREVIEW else text


def output_json(arr: np.ndarray) -> dict[str, Any]:
    """An output as strict JSON: dtype, shape and values (non-finite floats as "nan"/"inf"/"-inf")."""
    flat = arr.reshape(-1)
    truncated = flat.size > JSON_VALUES
    shown = flat[:PREVIEW] if truncated else flat
    values = [v if not isinstance(v, float) or math.isfinite(v) else str(v) for v in shown.tolist()]
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "values": values, "truncated": truncated}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` that ``np.load`` reads back by output name.

    Not ``np.savez(**arrays)``: an output called ``file`` would clash with its parameter, and
    ``np.savez`` appends ``.npz`` to a path without that suffix.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def run(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="NAME=FILE.npy for each model input (repeat)."),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend name, or 'auto'.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="Kernel threads.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Save all outputs to this .npz file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=f"Print the outputs as JSON (values in full up to "
                                                         f"{JSON_VALUES:,} elements; --output for more).")] = False,
) -> None:
    """Run MODEL on numpy inputs and print its outputs (names, shapes, dtypes, first values)."""
    feeds = parse_inputs(inputs or [])
    with walle_errors():
        loaded = walle_core.load(model, backend=backend, threads=threads)
        start = time.perf_counter()
        results = loaded.run(feeds)
        elapsed_ms = (time.perf_counter() - start) * 1e3
    if output is not None:
        try:
            save_npz(output, results)
        except OSError as exc:
            fail(f"cannot write {output}: {exc}")
    if as_json:
        typer.echo(json.dumps({
            "model": str(model), "backends": loaded.backend_names, "first_run_ms": elapsed_ms,
            "outputs": {name: output_json(np.asarray(results[name])) for name in loaded.output_names},
            "saved_to": None if output is None else str(output)}, indent=2, allow_nan=False))
        return
    console = out()
    console.print(
        f"[bold]{escape(str(model))}[/bold] on {escape(', '.join(loaded.backend_names))}: "
        f"{elapsed_ms:.2f} ms (first run, includes planning)"
    )
    table = Table()
    for col in ("output", "dtype", "shape", "values"):
        table.add_column(col, overflow="fold")
    for name in loaded.output_names:
        arr = np.asarray(results[name])
        table.add_row(escape(name), str(arr.dtype), str(list(arr.shape)), escape(preview(arr)))
    console.print(table)
    if output is not None:
        console.print(f"saved {len(results)} output(s) to {escape(str(output))}")
