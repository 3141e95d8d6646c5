"""Times as people read them in the CLI's tables: UTC calendar time, not raw epoch numbers."""

from __future__ import annotations

from datetime import UTC, datetime

# Device clocks report event times in seconds or milliseconds since the epoch; a second count
# this large would be past the year 5000, so it is milliseconds.
_MS_THRESHOLD = 1e11


def readable_time(ts: float | None) -> str:
    """``2026-12-04 14:48:39`` (UTC) for an epoch time in seconds or milliseconds; ``-`` for none."""
    if not ts or ts < 0:
        return "-"
    seconds = ts / 1000 if ts >= _MS_THRESHOLD else ts
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g}"
