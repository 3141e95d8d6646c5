"""Walle's on-device data pipeline: events, triggers, windows, features, stores and upload.

See docs/pipeline.md. The pieces compose in :class:`Pipeline` (``runtime.py``); the names below
are the package's public API (the device agent and the CLI use only these).
"""

from __future__ import annotations

from walle_core.pipeline.engine import Match, Matcher
from walle_core.pipeline.errors import EventError, PipelineError, TriggerSpecError, UploadError
from walle_core.pipeline.events import Event, parse_event, parse_event_line, read_jsonl
from walle_core.pipeline.runtime import BatchReport, Pipeline
from walle_core.pipeline.spec import CompiledTrigger, Pattern, compile_spec

__all__ = [
    "BatchReport",
    "CompiledTrigger",
    "Event",
    "EventError",
    "Match",
    "Matcher",
    "Pattern",
    "Pipeline",
    "PipelineError",
    "TriggerSpecError",
    "UploadError",
    "compile_spec",
    "parse_event",
    "parse_event_line",
    "read_jsonl",
]
