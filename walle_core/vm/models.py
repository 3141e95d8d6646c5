"""Loaded models shared by task runs: load and plan a bundle's model once, run it many times.

A task that fires on every trigger would otherwise import, plan and compile its model on every
run (tens of milliseconds to seconds, all of it Python holding the GIL) for a few milliseconds of
kernel time. :class:`ModelCache` keeps loaded :class:`walle_core.Model` instances between runs.

What is shared, and with whom:

* An entry is keyed by the model file's resolved path *and* its identity on disk (size, mtime,
  inode), the backend and the kernel thread count. Installed bundles live in their own read-only
  folders, so in practice only runs of the same installed task version share a model; a
  reinstalled file is a new key.
* Instances are *checked out*: a run holds its instance exclusively and gives it back when it
  ends, so no two runs ever use one instance at the same time, whatever the backend's thread
  safety. Two workers running the same task at once hold two instances (at most one per worker).
* A run that did not end ``ok`` (time-out, crash, quota) drops its instance instead of giving it
  back: an interrupted run may have stopped half-way through planning.
* Tasks never see the ``Model`` object itself, only :class:`TaskModel` (run and describe), so a
  task cannot re-point the cached instance's backends or plans for the next run.

Backend choice is the engine's: ``auto`` lets the semi-auto search pick per op (planned once,
cached here). Tasks run side by side with one kernel thread each (``TaskSpec.threads``), so the
VM's parallelism is across tasks; the cpu backend runs a whole plan in one C call that releases
the GIL, which is what lets two workers use two cores.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from walle_core import flags

Key = tuple[str, int, int, int, str, int | None]


@dataclass
class CacheStats:
    loads: int = 0  # instances built (import + plan on first run)
    hits: int = 0  # checkouts served by an idle instance
    dropped: int = 0  # instances not given back (failed run) or evicted


class ModelCache:
    """A pool of idle loaded models per key; ``max_idle`` bounds the idle instances kept."""

    def __init__(self, max_idle: int = 32,
                 loader: Callable[[Path, str, int | None], Any] | None = None) -> None:
        self.max_idle = max_idle
        self._loader = loader or _load
        self._idle: OrderedDict[Key, list[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @staticmethod
    def key(path: Path, backend: str, threads: int | None) -> Key:
        resolved = Path(path).resolve()
        st = resolved.stat()
        return (str(resolved), st.st_size, st.st_mtime_ns, st.st_ino, backend, threads)

    def checkout(self, path: Path, backend: str, threads: int | None) -> tuple[Key, Any]:
        """An instance for this run only; give it back with :meth:`checkin`."""
        key = self.key(path, backend, threads)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                self.stats.hits += 1
                self._idle.move_to_end(key)
                return key, idle.pop()
        model = self._loader(Path(key[0]), backend, threads)  # outside the lock: loads may overlap
        with self._lock:
            self.stats.loads += 1
        return key, model

    def checkin(self, key: Key, model: Any, healthy: bool = True) -> None:
        with self._lock:
            if not healthy or self.max_idle <= 0:
                self.stats.dropped += 1
                return
            self._idle.setdefault(key, []).append(model)
            self._idle.move_to_end(key)
            while sum(len(v) for v in self._idle.values()) > self.max_idle:
                oldest = next(iter(self._idle))
                self._idle[oldest].pop(0)
                self.stats.dropped += 1
                if not self._idle[oldest]:
                    del self._idle[oldest]

    def idle(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def clear(self) -> None:
        """Forget every idle instance (e.g. after uninstalling tasks)."""
        with self._lock:
            self._idle.clear()


_calibrated: set[Path] = set()  # cache folders read once in this process: later runs skip the reads


def calibrate_for(model: str | None, backend: str) -> None:
    """Read (or, on a device's first run, make) the calibrations an ``auto`` model's search needs.

    Calibration is the device's one-time cost, not the task's: made inside a run it counts against
    the task's wall time (tens of seconds on a cold cache) and, in process mode, its address-space
    quota, where its timing buffers fail to allocate and the search has no backend left."""
    cache = flags.cache_dir()
    if model is None or backend != "auto" or cache in _calibrated:
        return
    from walle_core.plugins import registry
    from walle_core.search import calibration_for

    for available in registry().available():
        try:
            calibration_for(available)
        except Exception:  # the search records and skips a backend it cannot calibrate
            continue
    _calibrated.add(cache)


def _load(path: Path, backend: str, threads: int | None) -> Any:
    import walle_core  # the engine's public API, loaded lazily: many tasks have no model

    return walle_core.load(path, backend=backend, threads=threads)


MODELS = ModelCache()
"""The process's cache, used by every thread-mode VM."""


class TaskModel:
    """What ``walle.model()`` hands a task: run the bundle's model and describe it, nothing more."""

    __slots__ = ("_backends", "_infer", "_input_names", "_inputs", "_output_names")

    def __init__(self, model: Any, infer: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self._infer = infer
        self._inputs: dict[str, str] = dict(model.inputs)
        self._input_names: list[str] = list(model.input_names)
        self._output_names: list[str] = list(model.output_names)
        self._backends: list[str] = list(model.backend_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Same as ``walle.infer(feeds)`` (accounted against the task's memory quota)."""
        return self._infer(feeds)

    @property
    def inputs(self) -> dict[str, str]:
        return dict(self._inputs)

    @property
    def input_names(self) -> list[str]:
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    @property
    def backend_names(self) -> list[str]:
        return list(self._backends)
