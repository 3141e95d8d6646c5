"""Errors the service raises; the API turns each into a JSON problem with its HTTP status."""

from __future__ import annotations

import re
from pathlib import Path


class RegistryError(Exception):
    """A request the registry refuses; ``status`` is the HTTP status it maps to."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def scrub_paths(text: str, *roots: Path) -> str:
    """``text`` with every path under ``roots`` (the server's data and spool folders) replaced
    by ``<server file>``: answers never show where the server keeps things."""
    for root in roots:
        for form in {str(root), str(root.resolve())}:
            text = re.sub(re.escape(form) + r"[^\s'\"),;]*", "<server file>", text)
    return text


class NotFound(RegistryError):
    status = 404
    code = "not_found"


class Conflict(RegistryError):
    status = 409
    code = "conflict"


class Invalid(RegistryError):
    status = 422
    code = "invalid"


class Unauthorized(RegistryError):
    status = 401
    code = "unauthorized"


class Forbidden(RegistryError):
    status = 403
    code = "forbidden"


class TooLarge(RegistryError):
    status = 413
    code = "too_large"


class RateLimited(RegistryError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
