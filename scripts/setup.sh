#!/usr/bin/env bash
# Idempotent setup, as root on a fresh Debian bookworm (or a machine that already has it all):
# system packages only when missing, a .venv, and the project installed editable with every extra.
# A second run with nothing changed does no apt and no pip work.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Test oracle/exporter; pinned so pip never picks another release (a local wheel is used here).
TORCH_VERSION="2.13.0"
EXTRAS="dev,opencl,vulkan,cpu,server,device,demo"
APT_PACKAGES=(
    python3 python3-venv python3-dev gcc   # interpreter, venv, headers and compiler for cffi
    ocl-icd-libopencl1 pocl-opencl-icd     # OpenCL loader + a CPU OpenCL driver
    libvulkan1 mesa-vulkan-drivers glslc   # Vulkan loader + lavapipe + GLSL->SPIR-V compiler
    postgresql chromium                    # registry tests: PostgreSQL 15 server, console screenshot
    nginx                                  # registry cluster: load balancer, X-Accel-Redirect blob delivery
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user  # cpu backend: NEON kernels cross-built (with aarch64 libc headers), tested under qemu
)

log() { printf '[setup] %s\n' "$*"; }

installed() {
    # `dpkg -s` alone also succeeds for removed packages whose config files remain, so read the
    # status. Captured, not piped to `grep -q`: under pipefail an early-exiting grep can make
    # dpkg die of SIGPIPE and a present package look missing.
    local info
    info=$(dpkg -s "$1" 2>/dev/null) || return 1
    [[ $info == *"Status: install ok installed"* ]]
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing system packages: ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "system packages present"
fi

# A venv whose interpreter no longer runs (moved, or its base Python was removed) is rebuilt.
if [[ -d .venv ]] && ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    log "rebuilding broken .venv"
    rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $(command -v python3) ($(python3 --version))"
    python3 -m venv .venv
fi

# The stamp covers everything that decides what pip installs, and where the editable install
# points (a copied .venv would point at the old checkout).
stamp_file=.venv/.walle-install-stamp
stamp=$( { sha256sum pyproject.toml; echo "torch==$TORCH_VERSION extras=$EXTRAS root=$PWD"; } \
    | sha256sum | cut -d' ' -f1)
if [[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]]; then
    log "python packages up to date (stamp matches pyproject.toml)"
else
log "installing walle[$EXTRAS] (editable) and torch==$TORCH_VERSION into .venv"
rm -f "$stamp_file"
# setuptools>=70.1 builds wheels without the separate `wheel` package; the plugin tests build
# throwaway packages with --no-build-isolation, so the venv needs a current one.
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
    -e ".[$EXTRAS]" "torch==$TORCH_VERSION" "setuptools>=70.1"
installed_torch=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
if [[ ${installed_torch%%+*} != "$TORCH_VERSION" ]]; then
    log "expected torch $TORCH_VERSION, got $installed_torch" >&2
    exit 1
fi
echo "$stamp" >"$stamp_file"
log "done: $(.venv/bin/walle version)"
fi

# Test data: the .tflite models MediaPipe's 0.10.21 wheel ships (later wheels carry none, and
# that one needs numpy<2, so it is unpacked, not installed). Fetched here, never by the tests,
# which only talk to 127.0.0.1.
MEDIAPIPE_VERSION=0.10.21
models_dir=.venv/share/walle/mediapipe-$MEDIAPIPE_VERSION
if [[ ! -f $models_dir/.complete ]]; then
    log "fetching MediaPipe $MEDIAPIPE_VERSION's .tflite models into $models_dir"
    tmp=$(mktemp -d)
    if .venv/bin/python -m pip download --no-deps --disable-pip-version-check -q \
        --only-binary ':all:' -d "$tmp" "mediapipe==$MEDIAPIPE_VERSION"; then
        mkdir -p "$models_dir"
        .venv/bin/python - "$tmp" "$models_dir" <<'PY'
import sys, zipfile
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for whl in src.glob("mediapipe-*.whl"):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.filename.startswith("mediapipe/modules/") and info.filename.endswith(".tflite"):
                (dst / Path(info.filename).name).write_bytes(z.read(info))
PY
        ls "$models_dir"/*.tflite >/dev/null 2>&1 && echo "$MEDIAPIPE_VERSION" >"$models_dir/.complete"
    else
        log "could not fetch mediapipe==$MEDIAPIPE_VERSION (no package registry?); the MediaPipe model tests will skip" >&2
    fi
    rm -rf "$tmp"
fi
