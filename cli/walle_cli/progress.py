"""Progress bars (rich) for the long byte-moving commands: pack, sign and publish of big bundles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from walle_cli.console import err

# Below this a bundle is packed, signed or sent in well under a second: no bar.
LARGE_BYTES = 8 << 20


@contextmanager
def byte_progress(description: str, total: int, console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """A callback that advances a bar on stderr by the bytes it is given. The bar shows for
    ``total`` of LARGE_BYTES and more on a terminal; otherwise the callback does nothing visible."""
    console = console or err()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console,
                  disable=total < LARGE_BYTES or not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
