"""Store, windows, features, bad input, stage plugins and user functions of the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from walle_core.hookspecs import hookimpl
from walle_core.pipeline import Event, EventError, Matcher, Pattern, TriggerSpecError, compile_spec
from walle_core.pipeline.engine import Match
from walle_core.pipeline.events import parse_event_line, read_jsonl
from walle_core.pipeline.runtime import Pipeline
from walle_core.pipeline.stages import StageDef, StageRegistry, stage_registry
from walle_core.pipeline.store import Store
from walle_core.pipeline.windows import WindowSet

FUNCS = stage_registry().functions()


def ev(eid: str, ts: int, key: str = "u", page: str = "p", **args: Any) -> dict[str, Any]:
    return {"event_id": eid, "page": page, "timestamp_ms": ts, "args": args, "key": key}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"page": "p", "timestamp_ms": 1}', "missing 'event_id'"),
        ('{"event_id": "a", "timestamp_ms": "soon"}', "timestamp_ms must be an integer"),
        ('{"event_id": "a", "timestamp_ms": -5}', ">= 0"),
        ('{"event_id": true, "timestamp_ms": 1}', "event_id must be a string or an integer"),
        ('{"event_id": "a", "timestamp_ms": 1, "args": [1]}', "args must be a JSON object"),
        ('{"event_id": "a", "timestamp_ms": 1, "colour": "red"}', "unknown event field"),
    ],
)
def test_malformed_events_get_clear_errors(line: str, message: str) -> None:
    with pytest.raises(EventError, match=message) as info:
        parse_event_line(line, 3)
    assert str(info.value).startswith("line 3: ")


def test_integer_ids_are_strings() -> None:
    assert parse_event_line('{"event_id": 2001, "timestamp_ms": 5.0}').event_id == "2001"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "must be a JSON object"),
        ({"pattern": [{"event": "a"}]}, "'id' must be a non-empty string"),
        ({"id": "t", "pattern": []}, "non-empty list"),
        ({"id": "t", "pattern": [{"event": "a", "contiguity": "next"}]}, "first stage is 'begin'"),
        ({"id": "t", "pattern": [{"event": "a"}, {"event": "b", "contiguity": "soon"}]}, "unknown contiguity"),
        ({"id": "t", "pattern": [{"event": "a", "times": 0}]}, "1 <= n <= m"),
        ({"id": "t", "pattern": [{"event": "a", "times": [3, 2]}]}, "1 <= n <= m"),
        ({"id": "t", "pattern": [{"event": "a", "where": [{"field": "args.x", "op": "~", "value": 1}]}]}, "unknown op"),
        ({"id": "t", "pattern": [{"event": "a", "where": [{"field": "colour", "op": "==", "value": 1}]}]}, "where field"),
        ({"id": "t", "pattern": [{"event": "a"}, {"contiguity": "not_followed_by", "event": "b"}]}, "needs within_ms"),
        ({"id": "t", "pattern": [{"event": "a", "optional": True}, {"contiguity": "not_next", "event": "b"},
                                 {"event": "c"}]}, "cannot follow an optional"),
        ({"id": "t", "pattern": [{"event": "a", "optional": True}]}, "at least one stage"),
        ({"id": "t", "within_ms": 0, "pattern": [{"event": "a"}]}, "within_ms must be a positive"),
        ({"id": "t", "pattern": [{"event": "a", "name": "x"}, {"event": "b", "name": "x"}]}, "unique"),
        ({"id": "t", "pattern": [{"event": "a", "colour": 1}]}, "unknown field"),
    ],
)
def test_malformed_trigger_specs_get_clear_errors(spec: Any, message: str) -> None:
    with pytest.raises(TriggerSpecError, match=message):
        compile_spec(spec)


def test_bad_events_never_stop_the_stream(tmp_path: Path) -> None:
    p = Pipeline(tmp_path, triggers=[Pattern.begin("a", event="a").next("b", event="b").to_spec("ab")])
    report = p.ingest_many([ev("a", 1), {"event_id": "b"}, "junk", ev("b", 2), ev("a", 0), ev("a", 3)])
    assert report.accepted == 3 and len(report.errors) == 3
    assert "missing 'timestamp_ms'" in report.errors[0] and "late event" in report.errors[2]
    assert [f.name for f in report.outputs] == ["ab"]
    assert len(p.store.dead_letters()) == 3
    with pytest.raises(EventError, match="late event"):
        p.ingest(ev("a", 2))
    lines = ['{"event_id": "a", "timestamp_ms": 1}', "oops", "", '{"event_id": "b", "timestamp_ms": 2}']
    kinds = [type(x).__name__ for _, x in read_jsonl(lines)]
    assert kinds == ["Event", "EventError", "Event"]


def test_where_on_incomparable_values_is_false_not_an_exception() -> None:
    m = Matcher([Pattern.begin("a", event="a").where("args.n", ">", 3).to_spec("t")])
    out = m.process_many([Event("a", "p", 0, {"n": "x"}), Event("a", "p", 1, {"n": {"deep": 1}}),
                          Event("a", "p", 2, {}), Event("a", "p", 3, {"n": 4})])
    assert len(out) == 1


# --------------------------------------------------------------------------- store


def test_store_is_wal_and_evicts_by_time_and_size(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite", retention_ms=1000, max_events=5)
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with s.transaction():
        for i in range(10):
            s.add_event(Event("e", "p", i * 100))
    assert s.count_events() == 10
    assert s.evict(now_ms=1250) == 5  # 2 older than 250 ms, then 3 more beyond 5 rows
    assert [e.timestamp_ms for e in s.events()] == [500, 600, 700, 800, 900]
    with s.transaction():
        _, new = s.add_event(Event("e", "p", 900))
    assert not new  # the same event again is de-duplicated


def test_feature_store_query_by_key_and_time(tmp_path: Path) -> None:
    windows = [{"name": "t", "type": "tumbling", "size_ms": 10, "features": {"n": {"fn": "count"}}}]
    p = Pipeline(tmp_path, windows=windows)
    p.ingest_many([ev("a", 1, "u1"), ev("a", 2, "u2"), ev("a", 12, "u1"), ev("a", 25, "u1")])
    p.advance_time(100)
    got = [(f.key, f.ts, f.value["n"]) for f in p.features(key="u1")]
    assert got == [("u1", 10, 1), ("u1", 20, 1), ("u1", 30, 1)]
    assert [f.ts for f in p.features(key="u1", since_ms=15, until_ms=30)] == [20]
    assert [f.key for f in p.features(since_ms=0, until_ms=11)] == ["u1", "u2"]


# --------------------------------------------------------------------------- windows and features


def run_windows(spec: dict[str, Any], events: list[Event], end: int = 10**9) -> list[tuple[int, int, Any]]:
    ws = WindowSet([spec], FUNCS)
    out = [r for e in events for r in ws.process(e)] + ws.advance_time(end)
    return [(r.start_ms, r.end_ms, r.values) for r in out]


def evs(*pairs: tuple[str, int]) -> list[Event]:
    return [Event(i, "home" if i == "a" else "item", t, {"price": t}) for i, t in pairs]


def test_tumbling_window_closes_on_the_clock() -> None:
    spec = {"name": "w", "type": "tumbling", "size_ms": 10, "features": {"n": {"fn": "count"}}}
    ws = WindowSet([spec], FUNCS)
    assert ws.process(Event("a", "p", 3)) == []
    assert ws.advance_time(9) == []
    assert [(r.start_ms, r.end_ms) for r in ws.advance_time(10)] == [(0, 10)]


def test_sliding_window() -> None:
    spec = {"name": "w", "type": "sliding", "size_ms": 10, "slide_ms": 5, "features": {"n": {"fn": "count"}}}
    got = run_windows(spec, evs(("a", 1), ("b", 6), ("c", 12), ("d", 40)))
    assert got == [(-5, 5, {"n": 1}), (0, 10, {"n": 2}), (5, 15, {"n": 2}), (10, 20, {"n": 1}),
                   (35, 45, {"n": 1}), (40, 50, {"n": 1})]


def test_session_window_and_count_window() -> None:
    spec = {"name": "s", "type": "session", "gap_ms": 5, "features": {"n": {"fn": "count"}, "dwell": {"fn": "dwell_time"}}}
    assert run_windows(spec, evs(("a", 0), ("b", 3), ("c", 7), ("d", 20))) == [
        (0, 12, {"n": 3, "dwell": 7}), (20, 25, {"n": 1, "dwell": 0})]
    cnt = {"name": "c", "type": "count", "size": 2, "features": {"seq": {"fn": "last_n", "n": 2}}}
    assert [v for _, _, v in run_windows(cnt, evs(("a", 0), ("b", 1), ("c", 2)))] == [{"seq": ["a", "b"]}]


def test_feature_library() -> None:
    e = evs(("a", 0), ("b", 1000), ("a", 3000), ("c", 4000))
    assert FUNCS["count"](e) == 4 and FUNCS["count"](e, event="a") == 2
    assert FUNCS["distinct_count"](e) == 3 and FUNCS["distinct_count"](e, field="page") == 2
    assert FUNCS["dwell_time"](e, page="home") == 2000 and FUNCS["dwell_time"](e) == 4000
    assert FUNCS["last_n"](e, n=2) == ["a", "c"] and FUNCS["last_n"](e, n=2, field="args.price") == [3000, 4000]
    assert FUNCS["rate"](e) == 1.0 and FUNCS["rate"](e, per_ms=60_000, event="a") == 30.0
    assert FUNCS["sum"](e, field="args.price") == 8000.0


def test_window_spec_errors() -> None:
    with pytest.raises(TriggerSpecError, match="'type' must be one of"):
        WindowSet([{"name": "w", "type": "hopping"}], FUNCS)
    with pytest.raises(TriggerSpecError, match="size_ms"):
        WindowSet([{"name": "w", "type": "tumbling", "features": {"n": {"fn": "count"}}}], FUNCS)
    with pytest.raises(TriggerSpecError, match="known functions"):
        WindowSet([{"name": "w", "type": "count", "size": 2, "features": {"n": {"fn": "median"}}}], FUNCS)


# --------------------------------------------------------------------------- user functions


def test_user_function_runs_once_per_match_even_across_restarts(tmp_path: Path) -> None:
    calls: list[tuple[str, ...]] = []

    def task(m: Match) -> dict[str, Any]:
        calls.append(tuple(e.event_id for e in m.events))
        return {"score": len(m.events)}

    spec = {**Pattern.begin("a", event="a").followed_by("b", event="b").to_spec("ab"),
            "features": {"pages": {"fn": "distinct_count", "field": "page"}}}
    p = Pipeline(tmp_path, triggers=[spec], user_functions={"ab": task})
    p.ingest(ev("a", 1))
    res = p.ingest(ev("b", 2, page="cart"))
    assert calls == [("a", "b")]
    value = res.outputs[0].value
    assert value["user"] == {"score": 2} and value["features"] == {"pages": 2} and value["events"] == [1, 2]
    p.close()
    again = Pipeline(tmp_path, triggers=[spec], user_functions={"ab": task})
    assert again.recovered == 2 and calls == [("a", "b")]  # replay did not re-run the task
    again.ingest(ev("b", 3))
    assert calls == [("a", "b")]  # followed_by took the first b only


def test_failing_user_function_is_reported_not_fatal(tmp_path: Path) -> None:
    def boom(m: Match) -> dict[str, Any]:
        raise RuntimeError("model missing")

    p = Pipeline(tmp_path)
    p.add_trigger(Pattern.begin("a", event="a").to_spec("t"), boom)
    out = p.ingest(ev("a", 1)).outputs
    assert out[0].value["user"] == {"error": "RuntimeError: model missing"}
    assert p.ingest(ev("a", 2)).outputs  # the stream goes on


# --------------------------------------------------------------------------- stage plugins


def test_builtin_stages_come_from_the_entry_point() -> None:
    reg = StageRegistry()
    builtin = {(e.stage.kind, e.stage.name) for e in reg.entries if e.stage and e.plugin == "builtin"}
    assert {("feature", "count"), ("feature", "dwell_time"), ("source", "jsonl"), ("sink", "jsonl")} <= builtin
    assert all(e.source.startswith("entry point walle:") for e in reg.entries if e.plugin == "builtin")


def test_third_party_and_broken_stage_plugins(tmp_path: Path) -> None:
    class Good:
        @hookimpl
        def walle_pipeline_stages(self) -> list[Any]:
            return [StageDef("feature", "first_page", lambda events: events[0].page if events else None),
                    {"kind": "sink", "name": "mem", "fn": lambda: print}]

    class Junk:
        @hookimpl
        def walle_pipeline_stages(self) -> list[Any]:
            return [{"kind": "oracle", "name": "x", "fn": len}]

    class Raises:
        @hookimpl
        def walle_pipeline_stages(self) -> list[Any]:
            raise ImportError("no such sdk")

    reg = StageRegistry()
    reg.register(Good(), "good")
    reg.register(Junk(), "junk")
    reg.register(Raises(), "raises")
    errors = {e.plugin: e.error for e in reg.entries if e.stage is None}
    assert "needs kind in" in errors["junk"] and "no such sdk" in errors["raises"]
    assert "first_page" in reg.functions("feature") and "count" in reg.functions("feature")
    windows = [{"name": "c", "type": "count", "size": 1, "features": {"fp": {"fn": "first_page"}}}]
    p = Pipeline(tmp_path, windows=windows, stages=reg)
    assert p.ingest(ev("a", 1, page="home")).outputs[0].value["fp"] == "home"


def test_jsonl_sink_receives_features(tmp_path: Path) -> None:
    sink = stage_registry().get("sink", "jsonl")(str(tmp_path / "out.jsonl"))
    p = Pipeline(tmp_path / "db", triggers=[Pattern.begin("a", event="a").to_spec("t")], sinks=[sink])
    p.ingest(ev("a", 1))
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["t"]
