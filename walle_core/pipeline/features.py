"""Built-in feature functions: ``fn(events, **params) -> JSON value`` over a window or a match."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from walle_core.pipeline.errors import TriggerSpecError
from walle_core.pipeline.events import Event


def _field(ev: Event, path: str) -> Any:
    if path in ("event_id", "page", "timestamp_ms", "key"):
        return getattr(ev, path)
    if path.startswith("args."):
        value: Any = ev.args
        for part in path[5:].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value
    raise TriggerSpecError(f"feature field {path!r}: expected event_id, page, timestamp_ms, key or args.<name>")


def count(events: Sequence[Event], event: str | None = None) -> int:
    """Number of events (with id ``event`` only, if given)."""
    return sum(1 for e in events if event is None or e.event_id == event)


def distinct_count(events: Sequence[Event], field: str = "event_id") -> int:
    """Number of distinct values of ``field`` (missing values are not counted)."""
    return len({v for e in events if (v := _field(e, field)) is not None and not isinstance(v, dict | list)})


def dwell_time(events: Sequence[Event], page: str | None = None) -> int:
    """Milliseconds spent on ``page`` (or anywhere): the gap from each event to the next one."""
    total = 0
    for a, b in itertools.pairwise(events):
        if page is None or a.page == page:
            total += b.timestamp_ms - a.timestamp_ms
    return total


def last_n(events: Sequence[Event], n: int = 5, field: str = "event_id") -> list[Any]:
    """The last ``n`` values of ``field``, oldest first (a behaviour sequence for a model)."""
    return [_field(e, field) for e in events[-n:]] if n > 0 else []


def rate(events: Sequence[Event], per_ms: int = 1000, event: str | None = None) -> float:
    """Events per ``per_ms`` over the span the events cover (0 for fewer than two events)."""
    sel = [e for e in events if event is None or e.event_id == event]
    if len(events) < 2:
        return 0.0
    span = events[-1].timestamp_ms - events[0].timestamp_ms
    return len(sel) * per_ms / span if span > 0 else 0.0


def total(events: Sequence[Event], field: str) -> float:
    """Sum of a numeric field (non-numbers are skipped: a bad event never stops the stream)."""
    return float(sum(v for e in events if isinstance(v := _field(e, field), int | float) and not isinstance(v, bool)))


BUILTIN_FEATURES: dict[str, Any] = {
    "count": count,
    "distinct_count": distinct_count,
    "dwell_time": dwell_time,
    "last_n": last_n,
    "rate": rate,
    "sum": total,
}
