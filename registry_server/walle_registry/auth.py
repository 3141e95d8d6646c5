"""Credentials: publisher API tokens with scopes, device tokens, hashing and per-device rate limits.

Secrets are 32 random bytes (URL-safe base64) with a prefix saying what they are (``wpt_`` for
publisher tokens, ``wdt_`` for device tokens). The database keeps only their sha256: a secret has
256 bits of entropy, so a plain hash is enough (no salt or slow KDF is needed against guessing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

SCOPES = ("publish", "deploy", "enroll", "read", "admin")
PUBLISHER_PREFIX = "wpt_"
DEVICE_PREFIX = "wdt_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def parse_scopes(raw: str | list[str]) -> list[str]:
    items = raw.split() if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for s in items:
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; scopes are {', '.join(SCOPES)}")
        if s not in out:
            out.append(s)
    return out


@dataclass(frozen=True)
class Principal:
    """Who is calling: a publisher token (``kind='token'``) or a device (``kind='device'``)."""

    kind: str
    name: str
    scopes: frozenset[str] = frozenset()

    def has(self, scope: str) -> bool:
        """Admin implies every scope; any publisher or operator token may read, except one that
        can only enrol devices (it is handed to every device, so it must not read anything)."""
        if self.kind != "token":
            return False
        if "admin" in self.scopes or scope in self.scopes:
            return True
        return scope == "read" and bool(self.scopes - {"enroll"})


class RateLimiter:
    """A token bucket per key (device id): ``rate`` requests/s sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 when allowed, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 200_000:  # forget idle buckets (they would be full anyway)
                cutoff = now - self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] >= cutoff}
            return (1.0 - tokens) / self.rate
