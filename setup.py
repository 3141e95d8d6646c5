"""Build hook for the C kernels of the ``cpu`` backend (cffi out-of-line API mode).

All metadata lives in pyproject.toml; this file only adds the cffi extension. A machine without a
working C compiler still installs: the extension is skipped with a clear message, recorded in
``plugins/cpu/walle_cpu/_build_error.txt``, and the ``cpu`` backend reports itself unavailable
with that reason.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
ERROR_FILE = ROOT / "plugins" / "cpu" / "walle_cpu" / "_build_error.txt"


class OptionalBuildExt(build_ext):
    """Build extensions, but turn a compiler failure into a recorded, readable reason."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            self._record(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._record(exc)
        else:
            ERROR_FILE.unlink(missing_ok=True)

    @staticmethod
    def _record(exc: BaseException) -> None:
        reason = (
            "the C kernels of the cpu backend were not compiled at install time "
            f"({type(exc).__name__}: {exc}); install a C compiler (e.g. `apt-get install gcc` "
            "and the Python headers `python3-dev`) and reinstall walle"
        )
        print(f"warning: {reason}", file=sys.stderr)
        with contextlib.suppress(OSError):
            ERROR_FILE.write_text(reason + "\n")


setup(
    cffi_modules=["plugins/cpu/walle_cpu/_build.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
