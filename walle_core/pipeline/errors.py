"""Errors raised by the on-device pipeline on bad input."""

from __future__ import annotations

from walle_core.errors import WalleError


class PipelineError(WalleError):
    """Base class of pipeline errors."""


class EventError(PipelineError):
    """An event is malformed (missing field, wrong type, late timestamp, ...)."""


class TriggerSpecError(PipelineError):
    """A trigger spec is malformed or uses operators in an unsupported combination."""


class UploadError(PipelineError):
    """The upload endpoint refused a batch for good (not worth retrying)."""
