#!/usr/bin/env bash
# A local registry cluster on loopback: a private PostgreSQL, N replicas, nginx in front.
#   scripts/cluster.sh up [--replicas 3] [--port 8700] [--workers 1] [--root /tmp/walle-cluster]
#   scripts/cluster.sh status|down [--root /tmp/walle-cluster]
# Needs Debian's postgresql and nginx (scripts/setup.sh installs both) and the .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m walle_registry.cluster "$@"
