"""Pipeline stages as plugins: the ``walle.stages`` entry-point group, loaded like backends.

A plugin module implements ``walle_pipeline_stages()`` (see :mod:`walle_core.hookspecs`) and
returns :class:`StageDef` objects (or dicts with the same keys):

* ``kind="feature"``: ``fn(events, **params) -> JSON value`` usable in windows and triggers;
* ``kind="source"``: ``fn(**params) -> iterable of events`` (Event or event dicts);
* ``kind="sink"``: ``fn(**params) -> callable(Feature)`` receiving every produced feature.

Built-in stages register through the same entry-point group (``walle_core.pipeline.builtin``).
A plugin that fails to import or returns junk is listed with the reason and never breaks the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from walle_core.hookspecs import PROJECT, PipelineSpec
from walle_core.pipeline.errors import PipelineError
from walle_core.plugins import load_entry_points

ENTRY_POINT_GROUP = "walle.stages"
KINDS = ("feature", "source", "sink")


@dataclass(frozen=True)
class StageDef:
    kind: str
    name: str
    fn: Callable[..., Any]
    doc: str = ""


@dataclass(frozen=True)
class StageEntry:
    plugin: str
    source: str
    stage: StageDef | None
    error: str = ""


def _as_stage(obj: Any) -> StageDef:
    if isinstance(obj, Mapping):
        fn: Any = obj.get("fn")  # checked below
        obj = StageDef(obj.get("kind", ""), obj.get("name", ""), fn, obj.get("doc", ""))
    if not isinstance(obj, StageDef):
        raise PipelineError(f"{obj!r} is not a StageDef")
    if obj.kind not in KINDS or not obj.name or not callable(obj.fn):
        raise PipelineError(f"stage {obj.name!r}: needs kind in {KINDS}, a name and a callable fn")
    return obj


class StageRegistry:
    """Every stage this process can see, built-in and third party alike."""

    def __init__(self, load_entry_points_too: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(PipelineSpec)
        self.entries: list[StageEntry] = []
        self._by_kind: dict[str, dict[str, StageDef]] = {k: {} for k in KINDS}
        sources: dict[str, str] = {}
        if load_entry_points_too:
            sources, failed = load_entry_points(self.pm, ENTRY_POINT_GROUP)
            self.entries += [StageEntry(n, src, None, why) for n, (src, why) in failed.items()]
        for impl in self.pm.hook.walle_pipeline_stages.get_hookimpls():
            self._collect(impl.plugin_name, sources.get(impl.plugin_name, impl.plugin_name), impl.function)

    def _collect(self, plugin: str, source: str, hook: Callable[[], Any]) -> None:
        try:
            returned: Any = hook()
            items = list(returned)
        except Exception as exc:  # a broken plugin is reported, not fatal
            self.entries.append(StageEntry(plugin, source, None, f"walle_pipeline_stages() raised {exc!r}"))
            return
        for obj in items:
            try:
                st = _as_stage(obj)
            except PipelineError as exc:
                self.entries.append(StageEntry(plugin, source, None, str(exc)))
                continue
            self.entries.append(StageEntry(plugin, source, st))
            self._by_kind[st.kind][st.name] = st

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object from code (tests, notebooks) as if it came from an entry point."""
        self.pm.register(plugin, name=name)
        hook = getattr(plugin, "walle_pipeline_stages", None)
        if hook is not None:
            self._collect(name, "registered in process", hook)

    def functions(self, kind: str = "feature") -> dict[str, Callable[..., Any]]:
        return {n: s.fn for n, s in self._by_kind[kind].items()}

    def get(self, kind: str, name: str) -> Callable[..., Any]:
        st = self._by_kind[kind].get(name)
        if st is None:
            raise PipelineError(f"unknown {kind} stage {name!r} (known: {sorted(self._by_kind[kind])})")
        return st.fn


_registry: StageRegistry | None = None
_lock = threading.Lock()


def stage_registry() -> StageRegistry:
    global _registry
    with _lock:
        if _registry is None:
            _registry = StageRegistry()
        return _registry
