"""The device-side pipeline: ingest -> store -> triggers and windows -> features -> outbox.

Each ingested event commits together with every feature it produced (one SQLite transaction),
so "acknowledged" means durable. Matcher and window state live in memory and are rebuilt on
start by replaying the retained events; outputs carry deterministic ids, so the replay re-derives
them as no-ops and user functions only run for outputs not stored yet.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walle_core import flags
from walle_core.pipeline.engine import Match, Matcher
from walle_core.pipeline.errors import EventError, PipelineError, TriggerSpecError
from walle_core.pipeline.events import parse_event
from walle_core.pipeline.spec import compile_spec
from walle_core.pipeline.stages import StageRegistry, stage_registry
from walle_core.pipeline.store import Feature, Store, event_uid
from walle_core.pipeline.tunnel import Uploader
from walle_core.pipeline.windows import FeatureFn, WindowResult, WindowSet, compute

# What a fired trigger hands to its task. The task VM plugs in here: any callable taking the
# match and returning a JSON-able mapping (or None) works, so the pipeline does not depend on it.
UserFunction = Callable[[Match], Mapping[str, Any] | None]


@dataclass
class IngestResult:
    seq: int
    duplicate: bool
    outputs: list[Feature] = field(default_factory=list)


@dataclass
class BatchReport:
    accepted: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    outputs: list[Feature] = field(default_factory=list)


def match_fid(m: Match) -> str:
    seqs = ",".join(str(e.seq) for e in m.events)
    digest = hashlib.blake2b(seqs.encode(), digest_size=12).hexdigest()
    return f"m:{m.trigger_id}:{m.key}:{m.kind}:{digest}"


class Pipeline:
    """One device's pipeline over a store directory (see module doc)."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        triggers: Iterable[Mapping[str, Any]] = (),
        windows: Sequence[Mapping[str, Any]] = (),
        user_functions: Mapping[str, UserFunction] | None = None,
        sinks: Sequence[Callable[[Feature], None]] = (),
        device: str | None = None,
        retention_ms: int | None = 7 * 24 * 3600 * 1000,
        max_events: int | None = 1_000_000,
        stages: StageRegistry | None = None,
    ) -> None:
        directory = Path(directory) if directory is not None else flags.pipeline_dir()
        self.store = Store(directory / "pipeline.db", retention_ms=retention_ms, max_events=max_events)
        self.device = device or self.store.meta("device") or f"dev-{uuid.uuid4().hex[:12]}"
        with self.store.transaction():
            self.store.set_meta("device", self.device)
        self._stages = stages or stage_registry()
        self._functions: dict[str, FeatureFn] = self._stages.functions("feature")
        self.matcher = Matcher(max_runs_per_key=flags.pipeline_max_runs_per_key())
        self._trigger_features: dict[str, dict[str, tuple[FeatureFn, dict[str, Any]]]] = {}
        self.user_functions: dict[str, UserFunction] = dict(user_functions or {})
        self.windows = WindowSet(list(windows), self._functions)
        self.sinks = list(sinks)
        for spec in triggers:
            self.add_trigger(spec)
        self.recovered = self._recover()

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ triggers

    def add_trigger(self, spec: Mapping[str, Any], user_function: UserFunction | None = None) -> str:
        compiled = compile_spec(spec)
        feats: dict[str, tuple[FeatureFn, dict[str, Any]]] = {}
        raw = spec.get("features", {})
        if not isinstance(raw, Mapping):
            raise TriggerSpecError(f"trigger {compiled.id!r}: 'features' must be an object")
        for name, f in raw.items():
            if not isinstance(f, Mapping) or f.get("fn") not in self._functions:
                raise TriggerSpecError(
                    f"trigger {compiled.id!r}: feature {name!r} needs 'fn' among {sorted(self._functions)}"
                )
            feats[name] = (self._functions[f["fn"]], {k: v for k, v in f.items() if k != "fn"})
        tid = self.matcher.add_trigger(compiled)
        self._trigger_features[tid] = feats
        if user_function is not None:
            self.user_functions[tid] = user_function
        return tid

    def remove_trigger(self, trigger_id: str) -> None:
        self.matcher.remove_trigger(trigger_id)
        self._trigger_features.pop(trigger_id, None)
        self.user_functions.pop(trigger_id, None)

    # ------------------------------------------------------------------ ingestion

    def ingest(self, obj: Any, uid: str | None = None) -> IngestResult:
        """Validate, store and process one event; durable when this returns.

        Raises :class:`EventError` for a malformed or late event (nothing is stored then).
        """
        ev = parse_event(obj)
        if ev.timestamp_ms < self.matcher.clock_ms:
            # A producer re-sending after a crash may repeat events the store already holds:
            # that is a duplicate (idempotent), not a late event.
            seq = self.store.event_seq(uid or event_uid(ev))
            if seq is not None:
                return IngestResult(seq, True)
            raise EventError(
                f"late event {ev.event_id!r} at {ev.timestamp_ms} ms: the clock is at {self.matcher.clock_ms} ms"
            )
        with self.store.transaction():
            stored, new = self.store.add_event(ev, uid)
            if not new:
                return IngestResult(stored.seq, True)
            outputs = self._outputs(self.matcher.process(stored), self.windows.process(stored))
        self._to_sinks(outputs)
        return IngestResult(stored.seq, False, outputs)

    def ingest_many(self, objs: Iterable[Any]) -> BatchReport:
        """Ingest a batch in one transaction; a bad event is recorded and skipped, never fatal."""
        report = BatchReport()
        with self.store.transaction():
            for i, obj in enumerate(objs):
                try:
                    ev = parse_event(obj)
                    if ev.timestamp_ms < self.matcher.clock_ms and self.store.event_seq(event_uid(ev)) is not None:
                        report.duplicates += 1
                        continue
                    if ev.timestamp_ms < self.matcher.clock_ms:
                        raise EventError(f"late event at {ev.timestamp_ms} ms (clock {self.matcher.clock_ms} ms)")
                except EventError as exc:
                    report.errors.append(f"event {i}: {exc}")
                    self.store.dead_letter("event", repr(obj)[:1000], str(exc))
                    continue
                stored, new = self.store.add_event(ev)
                if not new:
                    report.duplicates += 1
                    continue
                report.accepted += 1
                report.outputs += self._outputs(self.matcher.process(stored), self.windows.process(stored))
        self._to_sinks(report.outputs)
        return report

    def advance_time(self, now_ms: int | None = None) -> list[Feature]:
        """Let the clock fire: ``within`` time-outs, trailing negations, closing windows."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self.store.transaction():
            outputs = self._outputs(self.matcher.advance_time(now), self.windows.advance_time(now))
        self._to_sinks(outputs)
        return outputs

    # ------------------------------------------------------------------ outputs

    def _outputs(self, matches: list[Match], windows: list[WindowResult], replay: bool = False) -> list[Feature]:
        out: list[Feature] = []
        for m in matches:
            fid = match_fid(m)
            if replay and self.store.has_feature(fid):
                continue  # produced before the restart: do not run its user function again
            value: dict[str, Any] = {
                "trigger": m.trigger_id,
                "kind": m.kind,
                "stages": list(m.stages),
                "events": [e.seq for e in m.events],
                "first_ms": m.events[0].timestamp_ms,
                "fired_at_ms": m.fired_at_ms,
                "features": compute(self._trigger_features.get(m.trigger_id, {}), m.events),
            }
            fn = self.user_functions.get(m.trigger_id)
            if fn is not None and m.kind == "match":
                try:
                    value["user"] = dict(fn(m) or {})
                except Exception as exc:  # a failing task is reported; the stream goes on
                    value["user"] = {"error": f"{type(exc).__name__}: {exc}"}
            f = Feature(fid, m.key, m.trigger_id, m.fired_at_ms, value)
            if self.store.put_feature(f):
                out.append(f)
        for w in windows:
            value = {"start_ms": w.start_ms, "end_ms": w.end_ms, "events": len(w.events), **w.values}
            f = Feature(w.fid, w.key, w.window, w.end_ms, value)
            if self.store.put_feature(f):
                out.append(f)
        return out

    def _to_sinks(self, outputs: list[Feature]) -> None:
        for f in outputs:
            for sink in self.sinks:
                try:
                    sink(f)
                except Exception as exc:  # a broken sink must not lose the (stored) feature
                    self.store.dead_letter("sink", f.fid, f"{type(exc).__name__}: {exc}")

    def _recover(self) -> int:
        """Rebuild in-memory state from the retained events; return how many were replayed."""
        n = 0
        with self.store.transaction():
            for ev in self.store.events():
                self._outputs(self.matcher.process(ev), self.windows.process(ev), replay=True)
                n += 1
        return n

    # ------------------------------------------------------------------ queries and upload

    def features(self, key: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
                 name: str | None = None) -> list[Feature]:
        return self.store.features(key, since_ms, until_ms, name)

    def evict(self, now_ms: int | None = None) -> int:
        return self.store.evict(now_ms)

    def uploader(self, url: str | None = None, **kwargs: Any) -> Uploader:
        target = url or flags.upload_url()
        if not target:
            raise PipelineError("no upload URL: pass one or set WALLE_UPLOAD_URL")
        return Uploader(self.store, target, self.device, **kwargs)
