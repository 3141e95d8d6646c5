"""Per-key windows: tumbling, sliding, session and count windows that compute features on close.

A window spec is data, like a trigger::

    {"name": "minute", "type": "tumbling", "size_ms": 60000,
     "event": ["view", "click"],                 # optional id filter
     "features": {"n": {"fn": "count"}, "pages": {"fn": "distinct_count", "field": "page"}}}

Time windows close when the clock passes their end (an event of any key or
:meth:`WindowSet.advance_time`), so a quiet key still gets its features.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from walle_core.pipeline.errors import TriggerSpecError
from walle_core.pipeline.events import Event

FeatureFn = Callable[..., Any]
WINDOW_TYPES = ("tumbling", "sliding", "session", "count")


@dataclass(frozen=True)
class WindowResult:
    window: str
    key: str
    start_ms: int
    end_ms: int  # exclusive; for count windows the last event's timestamp + 1
    values: dict[str, Any]
    events: tuple[Event, ...]

    @property
    def fid(self) -> str:
        first = self.events[0].seq if self.events else 0
        return f"w:{self.window}:{self.key}:{self.start_ms}:{self.end_ms}:{first}"


@dataclass
class _Window:
    name: str
    type: str
    size: int  # ms, or events for count windows
    slide: int
    gap: int
    ids: frozenset[str] | None
    features: dict[str, tuple[FeatureFn, dict[str, Any]]]


def _pos_int(spec: Mapping[str, Any], name: str, ctx: str) -> int:
    v = spec.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise TriggerSpecError(f"{ctx}: {name!r} must be a positive integer")
    return v


def compile_window(spec: Any, functions: Mapping[str, FeatureFn]) -> _Window:
    if not isinstance(spec, Mapping):
        raise TriggerSpecError("a window spec must be a JSON object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise TriggerSpecError("window 'name' must be a non-empty string")
    ctx = f"window {name!r}"
    kind = spec.get("type")
    if kind not in WINDOW_TYPES:
        raise TriggerSpecError(f"{ctx}: 'type' must be one of {list(WINDOW_TYPES)}, got {kind!r}")
    size = slide = gap = 0
    if kind == "tumbling":
        size = slide = _pos_int(spec, "size_ms", ctx)
    elif kind == "sliding":
        size, slide = _pos_int(spec, "size_ms", ctx), _pos_int(spec, "slide_ms", ctx)
    elif kind == "session":
        gap = _pos_int(spec, "gap_ms", ctx)
    else:
        size = _pos_int(spec, "size", ctx)
    ev = spec.get("event")
    ids = None if ev is None else frozenset(str(e) for e in (ev if isinstance(ev, list) else [ev]))
    feats: dict[str, tuple[FeatureFn, dict[str, Any]]] = {}
    raw = spec.get("features", {})
    if not isinstance(raw, Mapping) or not raw:
        raise TriggerSpecError(f"{ctx}: 'features' must map output names to {{fn, ...params}}")
    for out, f in raw.items():
        if not isinstance(f, Mapping) or f.get("fn") not in functions:
            raise TriggerSpecError(
                f"{ctx}: feature {out!r} needs 'fn' among the known functions {sorted(functions)}"
            )
        feats[out] = (functions[f["fn"]], {k: v for k, v in f.items() if k != "fn"})
    return _Window(name, kind, size, slide, gap, ids, feats)


def compute(features: Mapping[str, tuple[FeatureFn, dict[str, Any]]], events: Sequence[Event]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (fn, params) in features.items():
        try:
            out[name] = fn(events, **params)
        except Exception as exc:  # a feature bug is reported in the output, the stream goes on
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


@dataclass
class _KeyBuf:
    events: deque[Event] = field(default_factory=deque)
    next_end: int | None = None  # end of the next time window to close


class WindowSet:
    """All windows of a pipeline, evaluated per key."""

    def __init__(self, specs: Sequence[Any], functions: Mapping[str, FeatureFn]) -> None:
        self.windows = [compile_window(s, functions) for s in specs]
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names):
            raise TriggerSpecError(f"window names must be unique, got {names}")
        self._bufs: dict[tuple[str, str], _KeyBuf] = {}
        self._clock = -1

    def process(self, ev: Event) -> list[WindowResult]:
        out = self.advance_time(ev.timestamp_ms)
        for w in self.windows:
            if w.ids is not None and ev.event_id not in w.ids:
                continue
            buf = self._bufs.setdefault((w.name, ev.key), _KeyBuf())
            if w.type == "count":
                buf.events.append(ev)
                if len(buf.events) == w.size:
                    out.append(self._result(w, ev.key, buf.events[0].timestamp_ms, ev.timestamp_ms + 1, list(buf.events)))
                    buf.events.clear()
                continue
            if w.type == "session":
                buf.events.append(ev)
                buf.next_end = ev.timestamp_ms + w.gap
                continue
            if buf.next_end is None:
                # The first window end after this event on the slide grid.
                buf.next_end = (ev.timestamp_ms // w.slide + 1) * w.slide
            buf.events.append(ev)
        return out

    def advance_time(self, now_ms: int) -> list[WindowResult]:
        """Close every time window whose end is <= ``now_ms``."""
        out: list[WindowResult] = []
        if now_ms <= self._clock:
            return out
        self._clock = now_ms
        for w in self.windows:
            if w.type == "count":
                continue
            for (name, key), buf in list(self._bufs.items()):
                if name != w.name:
                    continue
                if w.type == "session":
                    if buf.next_end is not None and buf.next_end <= now_ms:
                        evs = list(buf.events)
                        out.append(self._result(w, key, evs[0].timestamp_ms, buf.next_end, evs))
                        del self._bufs[(name, key)]
                    continue
                while buf.next_end is not None and buf.next_end <= now_ms:
                    end = buf.next_end
                    start = end - w.size
                    evs = [e for e in buf.events if start <= e.timestamp_ms < end]
                    if evs:
                        out.append(self._result(w, key, start, end, evs))
                    while buf.events and buf.events[0].timestamp_ms < end + w.slide - w.size:
                        buf.events.popleft()
                    if not buf.events:
                        buf.next_end = None
                    else:
                        # Skip empty stretches: jump to the first window holding the oldest event.
                        nxt = end + w.slide
                        first = buf.events[0].timestamp_ms
                        if nxt <= first:
                            nxt = (first // w.slide + 1) * w.slide
                        buf.next_end = nxt
                if buf.next_end is None:
                    del self._bufs[(name, key)]
        return out

    def _result(self, w: _Window, key: str, start: int, end: int, evs: list[Event]) -> WindowResult:
        return WindowResult(w.name, key, start, end, compute(w.features, evs), tuple(evs))
