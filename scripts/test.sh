#!/usr/bin/env bash
# The project's whole check: setup, then lint, type-check and the test suite, all from .venv.
# Every step runs even when an earlier one fails; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || { echo "[test] setup failed" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH"

failed=()
step() {
    local name=$1
    shift
    echo "[test] $name: $*"
    if ! "$@"; then
        failed+=("$name")
    fi
}

step ruff .venv/bin/ruff check .
step mypy .venv/bin/mypy
# On every core (up to 8) with pytest-xdist, a dev extra; tests sharing a module-scoped fixture are
# kept on one worker (tests/conftest.py groups them for --dist loadgroup). The tests marked serial
# (held to wall-clock limits) run afterwards, alone. Without xdist: one serial run.
pytest_step() {
    local name=$1
    shift
    echo "[test] $name: $*"
    "$@"
    local rc=$?
    # 5: nothing selected (e.g. arguments naming only tests of the other pass)
    if ((rc != 0 && rc != 5)); then
        failed+=("$name")
    fi
}
if .venv/bin/python -c 'import xdist' 2>/dev/null; then
    pytest_step pytest .venv/bin/python -m pytest -q --hypothesis-profile=ci -n auto --maxprocesses 8 --dist loadgroup -m "not serial" "$@"
    pytest_step pytest-serial .venv/bin/python -m pytest -q --hypothesis-profile=ci -m serial "$@"
else
    step pytest .venv/bin/python -m pytest -q --hypothesis-profile=ci "$@"
fi

if ((${#failed[@]})); then
    echo "[test] FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "[test] all checks passed"
