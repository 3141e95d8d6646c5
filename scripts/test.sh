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
step pytest .venv/bin/python -m pytest -q "$@"

if ((${#failed[@]})); then
    echo "[test] FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "[test] all checks passed"
