"""All ``WALLE_*`` environment variables, read in one place.

Other modules call these functions instead of touching ``os.environ`` so that the set of knobs
is documented here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path


def _get(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def cpu_isa() -> str:
    """WALLE_CPU_ISA=avx512|avx2|neon|scalar: force the cpu backend's SIMD variant ("" or auto:
    the best this CPU supports)."""
    return _get("WALLE_CPU_ISA").strip().lower()


def bench_ghz() -> float | None:
    """WALLE_BENCH_GHZ=3.7: the clock the kernel benchmark's modelled peak assumes (default: what
    /proc/cpuinfo reports)."""
    raw = _get("WALLE_BENCH_GHZ")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def fuzz_examples() -> int:
    """WALLE_FUZZ_EXAMPLES=N: examples per operation in the registry's schemathesis test (5)."""
    raw = _get("WALLE_FUZZ_EXAMPLES")
    return int(raw) if raw.isdigit() else 5


def backend_preference() -> list[str]:
    """WALLE_BACKENDS=cpu,reference: restrict and order the backends that ``auto`` may pick."""
    raw = _get("WALLE_BACKENDS")
    return [b.strip() for b in raw.split(",") if b.strip()]


def default_threads() -> int | None:
    """WALLE_THREADS=N: default kernel thread count (None = one per core)."""
    raw = _get("WALLE_THREADS")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def recurrent_chunks() -> int | None:
    """WALLE_RECURRENT_CHUNKS=N: the cpu backend splits each step of a one-direction LSTM/GRU
    layer into N chunks of hidden units that threads share (default: no split)."""
    raw = _get("WALLE_RECURRENT_CHUNKS")
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


def vulkan_device() -> str:
    """WALLE_VULKAN_DEVICE: substring of the Vulkan device name to force."""
    return _get("WALLE_VULKAN_DEVICE")


def vulkan_staging() -> bool:
    """WALLE_VULKAN_STAGING=1: move data through host-visible staging buffers even where device
    memory is host-visible (the discrete-GPU path, exercised on integrated/CPU drivers)."""
    return _get("WALLE_VULKAN_STAGING") not in ("", "0")


def gpu_precision() -> str:
    """WALLE_GPU_PRECISION=fp16: GPU backends store float32 tensors as float16 (float32 sums);
    opt-in, default fp32."""
    return _get("WALLE_GPU_PRECISION") or "fp32"


def disabled_plugins() -> set[str]:
    """WALLE_DISABLE_PLUGINS=opencl,vulkan: entry points not to load at all."""
    return {p.strip() for p in _get("WALLE_DISABLE_PLUGINS").split(",") if p.strip()}


def keys_dir() -> Path:
    """WALLE_KEYS_DIR: the trusted-key store (``<key_id>.pub`` files) that bundles are verified against."""
    raw = _get("WALLE_KEYS_DIR")
    return Path(raw) if raw else Path(_get("XDG_CONFIG_HOME", str(Path.home() / ".config"))) / "walle" / "trusted_keys"


def vm_mode() -> str:
    """WALLE_VM_MODE=thread|subinterpreter|process: the task VM's default mode (thread)."""
    return _get("WALLE_VM_MODE") or "thread"


def vm_workers() -> int | None:
    """WALLE_VM_WORKERS=N: task VM worker threads (None = one per core)."""
    raw = _get("WALLE_VM_WORKERS")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def pipeline_dir() -> Path:
    """WALLE_PIPELINE_DIR: where the on-device event store, feature store and outbox live."""
    raw = _get("WALLE_PIPELINE_DIR")
    return Path(raw) if raw else cache_dir() / "pipeline"


def pipeline_sync() -> str:
    """WALLE_PIPELINE_SYNC=normal|full: SQLite ``synchronous`` for the pipeline store. ``normal``
    (default) survives a process crash; ``full`` also survives power loss, at an fsync per commit."""
    raw = _get("WALLE_PIPELINE_SYNC", "normal").lower()
    return raw if raw in ("normal", "full") else "normal"


def pipeline_max_runs_per_key() -> int:
    """WALLE_PIPELINE_MAX_RUNS=N: bound on live partial matches per key (oldest dropped first)."""
    raw = _get("WALLE_PIPELINE_MAX_RUNS")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 10_000


def upload_url() -> str:
    """WALLE_UPLOAD_URL: the endpoint the pipeline's upload tunnel posts batches to."""
    return _get("WALLE_UPLOAD_URL")


def registry_url() -> str:
    """WALLE_REGISTRY_URL: the registry the ``walle task publish/deploy/devices/results`` commands talk to."""
    return _get("WALLE_REGISTRY_URL") or "http://127.0.0.1:8700"


def registry_token() -> str:
    """WALLE_REGISTRY_TOKEN: the publisher/operator API token those commands send."""
    return _get("WALLE_REGISTRY_TOKEN")


def max_memory() -> int:
    """WALLE_MAX_MEMORY=2G (or bytes, 512M, 64K): the most memory one tensor, the folded constants
    or one plan's arena and outputs may take; more is refused at plan time with a
    ``MemoryLimitError`` (default: half of the machine's physical memory)."""
    parsed = parse_bytes(_get("WALLE_MAX_MEMORY"))
    if parsed is not None:
        return parsed
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a conservative 4 GiB
        return 4 << 30


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(raw: str) -> int | None:
    """``"2G"`` -> 2147483648 (binary units K, M, G, T; optional ``B``/``iB``); None when empty or
    not a positive size."""
    text = raw.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        return None
    return int(value) if 1 <= value < float(1 << 62) else None  # also refuses inf and nan
