"""Shared terminal output for the CLI: one place that turns a ``WalleError`` into a red line.

Consoles are created per call (not at import) so that test runners that swap ``sys.stdout`` and
``sys.stderr`` see the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from walle_core import WalleError

# Exit code for "your input or environment is wrong" (Click uses 2 for usage errors too).
EXIT_USER_ERROR = 2


def out() -> Console:
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``error: message`` in red on stderr and leave with ``code``, never a traceback."""
    # escape(): messages quote shapes like "[1, 3]", which rich would read as markup tags.
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    err().print(f"[bold red]error:[/bold red] [red]{escape(first_line)}[/red]", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def walle_errors() -> Iterator[None]:
    """Turn any ``WalleError`` raised inside the block into :func:`fail`."""
    try:
        yield
    except WalleError as exc:
        fail(f"{type(exc).__name__}: {exc}")
