"""The built-in pipeline stages, registered through the ``walle.stages`` entry point."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from walle_core.hookspecs import hookimpl
from walle_core.pipeline.errors import EventError
from walle_core.pipeline.events import Event, read_jsonl
from walle_core.pipeline.features import BUILTIN_FEATURES
from walle_core.pipeline.stages import StageDef
from walle_core.pipeline.store import Feature


def jsonl_source(path: str) -> Iterator[Event | EventError]:
    """Events from a JSON-lines file; malformed lines come out as EventError, not exceptions."""
    with Path(path).open(encoding="utf-8") as fh:
        for _, item in read_jsonl(iter(fh)):
            yield item


def jsonl_sink(path: str) -> Callable[[Feature], None]:
    """Append every produced feature to a JSON-lines file."""
    fh = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 - lives as long as the sink

    def sink(f: Feature) -> None:
        fh.write(json.dumps({"fid": f.fid, "key": f.key, "name": f.name, "ts": f.ts, "value": f.value}) + "\n")
        fh.flush()

    return sink


@hookimpl
def walle_pipeline_stages() -> list[StageDef]:
    out = [StageDef("feature", n, fn, (fn.__doc__ or "").strip()) for n, fn in BUILTIN_FEATURES.items()]
    out.append(StageDef("source", "jsonl", jsonl_source, "events from a JSON-lines file"))
    out.append(StageDef("sink", "jsonl", jsonl_sink, "features appended to a JSON-lines file"))
    return out
