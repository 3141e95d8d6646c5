"""``walle bench vm``: the task VM benchmark figures (start latency, workers, subinterpreters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Annotated

import typer

from walle_cli.console import fail, out


def bench_vm(as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False) -> None:
    """Measure VM start latency vs a fresh process, 1 vs 2 workers, subinterpreters vs threads."""
    # A child process: BLAS must be single-threaded before numpy loads, and this one has numpy.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "walle_bench.vm"], capture_output=True, text=True, env=env)
    if proc.returncode:
        fail(f"benchmark failed: {proc.stderr.strip().splitlines()[-1:] }", code=1)
    report = json.loads(proc.stdout)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for section, figures in report.items():
        out().print(f"[bold]{section}[/bold]: {figures}")


def register(group: typer.Typer) -> None:
    """Add ``vm`` to the ``walle bench`` group."""
    group.command("vm")(bench_vm)
