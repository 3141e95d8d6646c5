"""User-behaviour events: the record every pipeline stage sees, and its strict parser."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from walle_core.pipeline.errors import EventError

_FIELDS = ("event_id", "page", "timestamp_ms", "args", "key")


@dataclass(frozen=True, slots=True)
class Event:
    """One user-behaviour event.

    ``event_id`` names what happened (ids are strings; integer ids are converted), ``page`` where,
    ``timestamp_ms`` when (event time, milliseconds), ``args`` free key/values and ``key`` the
    session/user the event belongs to (patterns and windows are evaluated per key).
    """

    event_id: str
    page: str
    timestamp_ms: int
    args: Mapping[str, Any] = field(default_factory=dict)
    key: str = ""
    # Position in the on-device store (0: not stored); gives outputs their deterministic ids.
    seq: int = field(default=0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "page": self.page,
            "timestamp_ms": self.timestamp_ms,
            "args": dict(self.args),
            "key": self.key,
        }


def _id(value: Any, what: str) -> str:
    # bool is an int subclass; True as an event id is a bug, not id "1".
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError(f"{what} must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise EventError(f"{what} must not be empty")
    return text


def parse_event(obj: Any) -> Event:
    """Validate a decoded JSON object and build an :class:`Event`; raise :class:`EventError`."""
    if isinstance(obj, Event):
        return obj
    if not isinstance(obj, Mapping):
        raise EventError(f"an event must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise EventError(f"unknown event field(s) {unknown}; expected {list(_FIELDS)}")
    for name in ("event_id", "timestamp_ms"):
        if name not in obj:
            raise EventError(f"event is missing {name!r}")
    event_id = _id(obj["event_id"], "event_id")
    page = obj.get("page", "")
    if not isinstance(page, str):
        raise EventError(f"page must be a string, got {type(page).__name__}")
    ts = obj["timestamp_ms"]
    if isinstance(ts, float) and math.isfinite(ts) and ts.is_integer():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise EventError(f"timestamp_ms must be an integer (milliseconds), got {ts!r}")
    if ts < 0:
        raise EventError(f"timestamp_ms must be >= 0, got {ts}")
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise EventError(f"args must be a JSON object, got {type(args).__name__}")
    try:
        # The event is stored and uploaded as JSON: reject what JSON cannot carry up front.
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EventError(f"args must be JSON-serialisable: {exc}") from None
    key = obj.get("key", "")
    key = "" if key is None else _id(key, "key") if key != "" else ""
    return Event(event_id, page, ts, dict(args), key)


def parse_event_line(line: str, lineno: int = 0) -> Event:
    """Parse one JSON-lines record; the error names the line."""
    where = f"line {lineno}: " if lineno else ""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventError(f"{where}not valid JSON ({exc.msg} at column {exc.colno})") from None
    try:
        return parse_event(obj)
    except EventError as exc:
        raise EventError(f"{where}{exc}") from None


def read_jsonl(lines: Iterator[str] | list[str]) -> Iterator[tuple[int, Event | EventError]]:
    """Yield ``(line number, event or error)``; blank lines are skipped, bad lines never stop it."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, parse_event_line(line, lineno)
        except EventError as exc:
            yield lineno, exc
