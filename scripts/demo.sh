#!/usr/bin/env bash
# Set up, show the backends, then the end-to-end demo: registry, signed task, staged rollout to
# simulated devices, results checked against the model, HTML report (its path is printed last).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
.venv/bin/walle backends
.venv/bin/walle demo
