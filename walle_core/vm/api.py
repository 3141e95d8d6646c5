"""The ``walle`` module a task sees: its model, its trigger's events, outputs, logs, data library.

Each VM gets its own facade instance (a fresh module object, never in ``sys.modules``), so one
task's outputs and memory account cannot be reached from another.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from walle_core.errors import MemoryLimitError
from walle_core.plan.memory import limited
from walle_core.task.manifest import Quotas
from walle_core.vm.errors import OutputQuotaError, TaskMemoryError
from walle_core.vm.models import MODELS, Key, ModelCache, TaskModel

log = logging.getLogger("walle.vm")


class MemoryAccount:
    """Live bytes a task holds through the engine and the data library (thread mode's quota).

    Arrays are charged when handed to the task and released by a weakref finalizer when the task
    drops them, so the figure follows what the task keeps, not what it ever touched.
    """

    def __init__(self, limit: int, task: str) -> None:
        self.limit, self.task = limit, task
        self.live = self.peak = 0
        self.exceeded = False
        self._lock = threading.Lock()

    def charge(self, nbytes: int, what: str) -> None:
        with self._lock:
            if self.live + nbytes > self.limit:
                self.exceeded = True
                raise TaskMemoryError(
                    f"task {self.task!r}: {what} needs {nbytes} bytes, {self.live} of the "
                    f"{self.limit}-byte memory quota are in use"
                )
            self.live += nbytes
            self.peak = max(self.peak, self.live)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.live -= nbytes

    def track(self, value: Any, what: str) -> Any:
        """Charge every ndarray in ``value`` (an array, or a dict/list/tuple of them)."""
        if isinstance(value, np.ndarray):
            owner = value if value.base is None else value.base
            if isinstance(owner, np.ndarray) and owner.nbytes:
                self.charge(owner.nbytes, what)
                weakref.finalize(owner, self.release, owner.nbytes)
        elif isinstance(value, Mapping):
            for v in value.values():
                self.track(v, what)
        elif isinstance(value, list | tuple):
            for v in value:
                self.track(v, what)
        return value


def output_size(value: Any) -> int:
    """Bytes an output counts against the quota: raw array bytes, or its JSON text."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    try:
        return len(json.dumps(value, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise OutputQuotaError(f"output must be an ndarray or JSON-serialisable: {exc}") from exc


class TaskContext:
    """Per-run state behind the facade: events, outputs, logs, model, memory account."""

    def __init__(
        self,
        name: str,
        version: str,
        root: Path,
        model_path: str | None,
        events: Sequence[Mapping[str, Any]],
        quotas: Quotas,
        backend: str = "auto",
        threads: int | None = 1,
        models: ModelCache | None = None,
    ) -> None:
        self.name, self.version, self.root = name, version, root
        self.model_path, self.backend, self.threads = model_path, backend, threads
        self.quotas = quotas
        self._events = [copy.deepcopy(dict(e)) for e in events]
        self.outputs: dict[str, Any] = {}
        self.output_bytes = 0
        self.output_exceeded = False
        self.logs: list[str] = []
        self.memory = MemoryAccount(quotas.memory_bytes, name)
        self.models = models if models is not None else MODELS
        self._model: Any = None
        self._model_key: Key | None = None
        self.engine_s = 0.0  # wall time inside the engine's run (kernels, mostly without the GIL)
        self._plan_bytes = 0

    # ------------------------------------------------------------------ API calls

    def events(self) -> list[dict[str, Any]]:
        """The events of the window that fired this task's trigger (a private copy)."""
        return copy.deepcopy(self._events)

    def model(self) -> TaskModel:
        """The bundle's model (a run-and-describe view; the loaded instance is cached per worker)."""
        return TaskModel(self._engine(), self.infer)

    def _engine(self) -> Any:
        if self._model is None:
            if self.model_path is None:
                raise FileNotFoundError(f"task {self.name!r} has no model in its bundle")
            self._model_key, self._model = self.models.checkout(
                self.root / self.model_path, self.backend, self.threads)
        return self._model

    def release(self, healthy: bool) -> None:
        """End of the run: give the model instance back to the cache (dropped unless healthy)."""
        model, self._model = self._model, None
        if model is not None and self._model_key is not None:
            self.models.checkin(self._model_key, model, healthy)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the bundle's model; its arena and its outputs count against the memory quota.

        Thread mode has no address-space limit, so the quota is enforced before the engine
        allocates: arenas of plans the (cached) instance already has are charged before the run,
        and the engine plans and folds under the quota left (``walle_core.plan.memory.limited``),
        refusing a larger arena, output or constant before allocating it."""
        with self._quota():
            model = self._engine()
            if self.memory.exceeded:
                raise TaskMemoryError(f"task {self.name!r}: memory quota already exceeded")
            self._charge_arena(model)
        with self._quota():
            t0 = time.perf_counter()
            results: dict[str, np.ndarray] = model.run(feeds)
            self.engine_s += time.perf_counter() - t0
        self._charge_arena(model)  # a plan built by this run: its arena passed the check above
        return self.memory.track(results, "model outputs")

    def _charge_arena(self, model: Any) -> None:
        grown = int(model.peak_bytes) - self._plan_bytes
        if grown > 0:  # this run's share of the arena (a cached model charges it on first use)
            self.memory.charge(grown, "the engine's buffers")
            self._plan_bytes += grown

    @contextlib.contextmanager
    def _quota(self) -> Iterator[None]:
        """The engine's memory limit is what the task has left (its charged arena is reusable);
        the engine's refusal becomes the task's TaskMemoryError."""
        left = self.memory.limit - self.memory.live + self._plan_bytes
        try:
            with limited(left, f"what is left of task {self.name!r}'s {self.memory.limit}-byte memory quota"):
                yield
        except MemoryLimitError as exc:
            self.memory.exceeded = True
            raise TaskMemoryError(f"task {self.name!r}: {exc}") from exc

    def output(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("output name must be a non-empty string")
        if isinstance(value, np.ndarray):
            value = value.copy()  # the task may keep mutating its own array
        size = output_size(value)
        previous = output_size(self.outputs[name]) if name in self.outputs else 0
        total = self.output_bytes - previous + size
        if total > self.quotas.output_bytes:
            self.output_exceeded = True
            raise OutputQuotaError(
                f"task {self.name!r}: output {name!r} brings outputs to {total} bytes, "
                f"quota {self.quotas.output_bytes}"
            )
        self.outputs[name] = value
        self.output_bytes = total

    def log(self, *parts: Any) -> None:
        message = " ".join(str(p) for p in parts)
        self.logs.append(message)
        log.info("task %s: %s", self.name, message)

    def resource(self, path: str) -> bytes:
        """Bytes of a file shipped in the bundle (paths are bundle-relative)."""
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"{path!r} is not inside the bundle")
        return target.read_bytes()

    def zeros(self, shape: Any, dtype: Any = "float32") -> np.ndarray:
        """An accounted buffer, for tasks that keep large intermediate state."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.memory.charge(nbytes, "walle.zeros")
        arr = np.zeros(shape, dtype)
        weakref.finalize(arr, self.memory.release, nbytes)
        return arr

    # ------------------------------------------------------------------ the module

    def facade(self) -> types.ModuleType:
        from walle_core.vm import data

        mod = types.ModuleType("walle", "The Walle task API.")
        for fn in (self.events, self.model, self.infer, self.output, self.log, self.resource, self.zeros):
            setattr(mod, fn.__name__, fn)
        mod.task = self.name  # type: ignore[attr-defined]
        mod.version = self.version  # type: ignore[attr-defined]
        mod.cv = self._accounted(data)  # type: ignore[attr-defined]
        return mod

    def _accounted(self, library: types.ModuleType) -> types.ModuleType:
        """A copy of ``library`` whose functions charge the arrays they return."""
        proxy = types.ModuleType(library.__name__, library.__doc__)
        for name in getattr(library, "__all__", ()):
            fn = getattr(library, name)
            setattr(proxy, name, self._charging(fn, f"walle.cv.{name}") if callable(fn) else fn)
        return proxy

    def _charging(self, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.memory.track(fn(*args, **kwargs), what)

        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return call
