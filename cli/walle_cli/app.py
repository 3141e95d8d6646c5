"""The ``walle`` command-line application (Typer). Thin: every command calls public APIs."""

from __future__ import annotations

import platform

import numpy as np
import typer

import walle_core
from walle_cli.commands import task as task_commands
from walle_cli.commands import vm as vm_commands
from walle_cli.commands.backends import backends
from walle_cli.commands.bench import bench_app
from walle_cli.commands.demo import demo
from walle_cli.commands.deploy import deploy_app
from walle_cli.commands.device import device_app
from walle_cli.commands.devices import devices_app
from walle_cli.commands.inspect import inspect
from walle_cli.commands.keys import keys_app
from walle_cli.commands.pipeline import pipeline_app
from walle_cli.commands.quantize import convert_command, quantize_command
from walle_cli.commands.registry import registry_app, task_app
from walle_cli.commands.results import results
from walle_cli.commands.run import run
from walle_cli.commands.search import calibrate, search
from walle_cli.commands.tokens import tokens_app
from walle_cli.console import out

app = typer.Typer(
    name="walle",
    help="Walle: a device-cloud ML engine with pluggable compute backends.",
    no_args_is_help=True,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell (docs/registry.md)
    add_completion=True,
    # Bugs still show a traceback, but without dumping every local (weights can be huge).
    pretty_exceptions_show_locals=False,
)


@app.command("version")
def version() -> None:
    """Print the Walle version and the versions it runs with."""
    import onnx

    out().print(
        f"walle {walle_core.__version__} (python {platform.python_version()}, "
        f"numpy {np.__version__}, onnx {onnx.__version__})"
    )


app.command("backends")(backends)
app.command("run")(run)
app.command("inspect")(inspect)
app.command("demo")(demo)
app.command("search")(search)
app.command("calibrate")(calibrate)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(bench_app, name="bench")
app.add_typer(registry_app, name="registry")
app.add_typer(task_app, name="task")
task_commands.register(task_app)
vm_commands.register(bench_app)
app.add_typer(keys_app, name="keys")
app.add_typer(tokens_app, name="tokens")
app.add_typer(deploy_app, name="deploy")
app.add_typer(devices_app, name="devices")
app.add_typer(device_app, name="device")
app.command("results")(results)
app.command("quantize")(quantize_command)
app.command("convert")(convert_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
