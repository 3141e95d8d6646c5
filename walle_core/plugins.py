"""Plugin discovery: the ``walle.backends`` entry-point group, loaded into a pluggy manager.

A plugin that fails to import, provides a malformed backend, or whose device is missing is kept
in the listing as unavailable with the reason; it never breaks the caller.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from walle_core import flags
from walle_core.backend import Availability, Backend, DeviceInfo
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import PROJECT, BackendSpec, PipelineSpec

ENTRY_POINT_GROUP = "walle.backends"

# The fixed preference used by ``backend="auto"`` until the search picks per graph.
PREFERENCE = ("cpu", "opencl", "vulkan", "metal", "reference")


@dataclass
class BackendEntry:
    name: str
    source: str  # "entry point <dist>:<value>" or "registered in process"
    backend: Backend | None
    availability: Availability
    device: DeviceInfo | None


def _unavailable(name: str, source: str, reason: str) -> BackendEntry:
    return BackendEntry(name, source, None, Availability(False, reason), None)


def _probe(cls: type, source: str) -> BackendEntry:
    name = str(getattr(cls, "name", cls.__name__))
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        return _unavailable(name, source, f"{cls!r} is not a walle_core.backend.Backend")
    try:
        backend = cls()
        avail = backend.availability()
    except Exception as exc:  # a broken plugin must not break discovery
        return _unavailable(name, source, f"backend raised while probing: {exc!r}")
    try:
        device: DeviceInfo | None = backend.device_info()
    except Exception:  # an absent device has no description; availability says why
        device = None
    return BackendEntry(name, source, backend if avail.available else None, avail, device)


def load_entry_points(
    pm: pluggy.PluginManager, group: str
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Register every entry point of ``group`` with ``pm``, each failure isolated.

    Returns ``{name: source}`` of the plugins loaded and ``{name: (source, reason)}`` of those
    disabled by WALLE_DISABLE_PLUGINS or failing to import. Shared by backends and pipeline stages.
    """
    disabled = flags.disabled_plugins()
    loaded: dict[str, str] = {}
    failed: dict[str, tuple[str, str]] = {}
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        source = f"entry point {dist}:{ep.value}"
        if ep.name in disabled:
            failed[ep.name] = (source, "disabled by WALLE_DISABLE_PLUGINS")
            continue
        try:
            pm.register(ep.load(), name=ep.name)
            loaded[ep.name] = source
        except Exception as exc:  # a broken plugin must not break discovery
            last = traceback.format_exception_only(exc)[-1].strip()
            failed[ep.name] = (source, f"plugin failed to load: {last}")
    return loaded, failed


class Registry:
    """The backends known to this process (built-in and third party alike)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(BackendSpec)
        self.pm.add_hookspecs(PipelineSpec)
        self._entries: dict[str, BackendEntry] = {}
        self._sources: dict[str, str] = {}
        self._load_entry_points()

    def _load_entry_points(self) -> None:
        self._sources, failed = load_entry_points(self.pm, ENTRY_POINT_GROUP)
        for name, (source, reason) in failed.items():
            self._entries[name] = _unavailable(name, source, reason)
        self._collect_backends()

    def _collect_backends(self) -> None:
        for impl in self.pm.hook.walle_backends.get_hookimpls():
            source = self._sources.get(impl.plugin_name, impl.plugin_name)
            try:
                # pluggy types hook functions as returning ``object``; a plugin may return junk,
                # which list() rejects inside this try.
                returned: Any = impl.function()
                classes = list(returned)
            except Exception as exc:
                self._entries[impl.plugin_name] = _unavailable(
                    impl.plugin_name, source, f"walle_backends() raised {exc!r}"
                )
                continue
            for cls in classes:
                entry = _probe(cls, source)
                self._entries[entry.name] = entry

    def register(self, cls: type[Backend]) -> BackendEntry:
        """Register a backend class from code (tests, notebooks) as if it came from a plugin."""
        entry = _probe(cls, "registered in process")
        self._entries[entry.name] = entry
        return entry

    def entries(self) -> list[BackendEntry]:
        order = {n: i for i, n in enumerate(PREFERENCE)}
        return sorted(self._entries.values(), key=lambda e: (order.get(e.name, len(order)), e.name))

    def available(self) -> list[Backend]:
        wanted = flags.backend_preference()
        found = [e.backend for e in self.entries() if e.backend is not None]
        if wanted:
            by_name = {b.name: b for b in found}
            return [by_name[n] for n in wanted if n in by_name]
        return found

    def get(self, name: str) -> Backend:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise BackendUnavailableError(f"unknown backend {name!r} (known: {known})")
        if entry.backend is None:
            raise BackendUnavailableError(
                f"backend {name!r} is unavailable: {entry.availability.reason}"
            )
        return entry.backend


_registry: Registry | None = None
_lock = threading.Lock()


def registry() -> Registry:
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget the shared registry, so the next :func:`registry` call rediscovers the entry points
    (after a plugin was installed into or removed from ``sys.path`` at run time)."""
    global _registry
    with _lock:
        _registry = None
