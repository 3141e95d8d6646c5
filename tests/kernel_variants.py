"""Rerunning some of a test file's tests on another cpu kernel variant (``WALLE_CPU_ISA``), in a
fresh process: the variant is picked once, when the extension loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def rerun_on_variant(test_file: str, selection: str, isa: str) -> None:
    """Run the tests of ``test_file`` that ``-k selection`` picks with ``WALLE_CPU_ISA=isa``;
    skip when this CPU lacks the variant, fail with their output when they fail."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file,
                          "-k", selection],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "WALLE_CPU_ISA": isa})
    if "names a kernel variant" in res.stdout + res.stderr:
        pytest.skip(f"this CPU lacks {isa}")
    assert res.returncode == 0 and " passed" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
