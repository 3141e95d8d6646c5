#!/usr/bin/env bash
# Set up, show the backends this machine has, and run a tiny real model checked against numpy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
.venv/bin/walle backends
.venv/bin/walle demo
