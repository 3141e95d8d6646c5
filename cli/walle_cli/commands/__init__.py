"""One module per ``walle`` command (group); ``walle_cli.app`` wires them into the Typer app."""
