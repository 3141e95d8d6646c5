"""All ``WALLE_*`` environment variables, read in one place.

Other modules call these functions instead of touching ``os.environ`` so that the set of knobs
is documented here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path


def _get(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def debug() -> bool:
    """WALLE_DEBUG=1: keep per-op diagnostics (shapes, timings) in plans."""
    return _get("WALLE_DEBUG") not in ("", "0")


def backend_preference() -> list[str]:
    """WALLE_BACKENDS=cpu,reference: restrict and order the backends that ``auto`` may pick."""
    raw = _get("WALLE_BACKENDS")
    return [b.strip() for b in raw.split(",") if b.strip()]


def default_threads() -> int | None:
    """WALLE_THREADS=N: default kernel thread count (None = one per core)."""
    raw = _get("WALLE_THREADS")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def cache_dir() -> Path:
    """WALLE_CACHE_DIR: calibration, tuning, compiled kernels and test models live here."""
    raw = _get("WALLE_CACHE_DIR")
    base = Path(raw) if raw else Path(_get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "walle"
    base.mkdir(parents=True, exist_ok=True)
    return base


def opencl_device() -> str:
    """WALLE_OPENCL_DEVICE: substring of the OpenCL device name to force."""
    return _get("WALLE_OPENCL_DEVICE")


def disabled_plugins() -> set[str]:
    """WALLE_DISABLE_PLUGINS=opencl,vulkan: entry points not to load at all."""
    return {p.strip() for p in _get("WALLE_DISABLE_PLUGINS").split(",") if p.strip()}
