"""``walle quantize`` writes a QDQ int8 model calibrated on Walle; ``walle convert --fp16``
writes a model with half-precision weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import onnx
import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from walle_cli.console import fail, out, walle_errors
from walle_core.tools import (
    METHODS,
    QuantizeOptions,
    accuracy,
    integer_report,
    load_batches,
    model_inputs,
    quantize,
    random_batches,
    read_model_proto,
    weights_to_fp16,
)


def _read(model: Path) -> onnx.ModelProto:
    with walle_errors():
        proto: onnx.ModelProto = read_model_proto(model)
    return proto


def quantize_command(
    model: Annotated[Path, typer.Argument(help="Float ONNX model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the QDQ model.")],
    calib: Annotated[
        Path | None, typer.Option("--calib", help="Folder of .npz (or .npy) calibration inputs.")
    ] = None,
    random: Annotated[
        int | None, typer.Option("--random", min=1, help="Calibrate on N random normal inputs.")
    ] = None,
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="One weight scale per output channel.")
    ] = False,
    method: Annotated[
        str, typer.Option("--method", help=f"Activation ranges: {', '.join(METHODS)}.")
    ] = "minmax",
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend that calibrates.")] = "auto",
) -> None:
    """Quantize MODEL to int8 (QDQ: uint8 activations, int8 weights) and report its accuracy
    against the float model on the calibration inputs."""
    if (calib is None) == (random is None):
        fail("give exactly one of --calib DIR and --random N")
    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}")
    proto = _read(model)
    with walle_errors():
        batches = (load_batches(calib, model_inputs(proto)) if calib is not None
                   else random_batches(proto, random or 1))
        with Progress(transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done)

            result = quantize(proto, batches, QuantizeOptions(method, per_channel), backend, progress)
            onnx.save(result.model, str(output))
            acc = accuracy(model, output, batches, backend, progress)
        report = integer_report(output)
    out().print(f"wrote {output}: {result.activations} activations, {result.weights} weights quantized "
                f"({method}{', per channel' if per_channel else ''}, {len(batches)} calibration inputs)")
    for note in result.skipped:
        out().print(f"  note: {note}")
    out().print(f"  runs as {report.describe()}")
    table = Table("output", "relative error", "top-1 agreement", title="int8 vs float32")
    for name, err in acc.relative_error.items():
        top = acc.top1.get(name)
        table.add_row(name, f"{err:.4f}", "-" if top is None else f"{100 * top:.1f}%")
    out().print(table)


def convert_command(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Store float32 weights as float16.")] = False,
) -> None:
    """Rewrite MODEL's storage: --fp16 halves its float weights (it still computes in float32)."""
    if not fp16:
        fail("nothing to do: give a conversion (--fp16)")
    proto = _read(model)
    with walle_errors():
        result = weights_to_fp16(proto)
    onnx.save(result.model, str(output))
    out().print(f"wrote {output}: {result.converted} weights as float16, "
                f"{result.bytes_before / 1e6:.2f} MB -> {result.bytes_after / 1e6:.2f} MB")
