"""Pattern semantics: each operator by example, then the engine against the brute-force oracle.

The oracle (tests/pipeline_reference.py) checks the declarative definitions of
docs/pipeline.md on every labelled subsequence; hypothesis draws random patterns and streams.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_reference import RefMatch, reference_matches  # tests/: the oracle, not shipped

from walle_core.pipeline import Event, Matcher, Pattern, compile_spec
from walle_core.pipeline.engine import Match

# --------------------------------------------------------------------------- helpers


def stream(text: str, step: int = 1, key: str = "") -> list[Event]:
    """``"a b c"`` -> events a, b, c one ``step`` ms apart (ids are the letters)."""
    return [Event(tok, "p", i * step, {}, key) for i, tok in enumerate(text.split())]


def run(spec: dict[str, Any], events: Sequence[Event], end: int | None = None) -> list[str]:
    """Matches as compact strings ``"a0 b1"`` (id + position), sorted."""
    m = Matcher([spec])
    out = m.process_many(events)
    out += m.advance_time(end if end is not None else 10**12)
    return sorted(render(x, events) for x in out if x.kind == "match")


def render(x: Match, events: Sequence[Event]) -> str:
    idx = {id(e): i for i, e in enumerate(events)}
    return " ".join(f"{e.event_id}{idx[id(e)]}" for e in x.events)


def to_ref(matches: list[Match], events: Sequence[Event], specs: list[dict[str, Any]]) -> Counter[RefMatch]:
    pos: dict[int, int] = {}
    per_key: Counter[str] = Counter()
    for e in events:
        pos[id(e)] = per_key[e.key]
        per_key[e.key] += 1
    names = {s["id"]: [st_["name"] for st_ in s["pattern"]
                       if st_.get("contiguity") not in ("not_next", "not_followed_by")] for s in specs}
    return Counter(
        (m.trigger_id, m.key, tuple(pos[id(e)] for e in m.events),
         tuple(names[m.trigger_id].index(n) for n in m.stages))
        for m in matches if m.kind == "match"
    )


# --------------------------------------------------------------------------- operators


def test_begin_every_matching_event_starts_a_match() -> None:
    spec = Pattern.begin("a", event="a").to_spec("t")
    assert run(spec, stream("a b a")) == ["a0", "a2"]


def test_next_is_strict_contiguity() -> None:
    spec = Pattern.begin("a", event="a").next("b", event="b").to_spec("t")
    assert run(spec, stream("a b a c b a b")) == ["a0 b1", "a5 b6"]


def test_followed_by_takes_the_first_matching_event() -> None:
    spec = Pattern.begin("a", event="a").followed_by("b", event="b").to_spec("t")
    # Overlapping matches: every a starts its own match, each takes the first b after it.
    assert run(spec, stream("a c a b b")) == ["a0 b3", "a2 b3"]


def test_followed_by_any_takes_every_matching_event() -> None:
    spec = Pattern.begin("a", event="a").followed_by_any("b", event="b").to_spec("t")
    assert run(spec, stream("a c b b")) == ["a0 b2", "a0 b3"]


def test_not_next() -> None:
    spec = Pattern.begin("a", event="a").not_next("x", event="x").followed_by("b", event="b").to_spec("t")
    assert run(spec, stream("a x b a c b")) == ["a3 b5"]
    tail = Pattern.begin("a", event="a").not_next("x", event="x").to_spec("t")
    # A trailing not_next is decided by the next event of the key: the last a has none yet.
    assert run(tail, stream("a x a c a")) == ["a2"]


def test_not_followed_by_in_the_middle() -> None:
    spec = Pattern.begin("a", event="a").not_followed_by("x", event="x").followed_by("b", event="b").to_spec("t")
    assert run(spec, stream("a c x b a c b")) == ["a4 b6"]


def test_trailing_not_followed_by_fires_from_the_clock() -> None:
    spec = Pattern.begin("a", event="a").not_followed_by("x", event="x").within(10).to_spec("t")
    m = Matcher([spec])
    evs = [Event("a", "p", 0), Event("c", "p", 1), Event("a", "p", 5)]
    assert m.process_many(evs) == []
    assert m.advance_time(9) == []
    fired = m.advance_time(10)  # a@0's window [0, 10) closed without an x: fires now
    assert [(render(x, evs), x.fired_at_ms) for x in fired] == [("a0", 10)]
    assert m.process(Event("x", "p", 12)) == []  # a@5 sees an x inside its window
    assert m.advance_time(100) == []


def test_within_expires_from_the_clock_and_reports_timeouts() -> None:
    spec = Pattern.begin("a", event="a").followed_by("b", event="b").within(5).emit_timeouts().to_spec("t")
    m = Matcher([spec])
    evs = stream("a", step=1)
    assert m.process_many(evs) == []
    assert m.live_runs() == 1
    out = m.advance_time(5)  # no event arrives: the clock alone times the run out
    assert [(x.kind, x.fired_at_ms) for x in out] == [("timeout", 5)]
    assert m.live_runs() == 0
    late_b = [Event("b", "p", 6)]
    assert m.process_many(late_b) == []


def test_within_bounds_first_to_last_event() -> None:
    spec = Pattern.begin("a", event="a").followed_by("b", event="b").within(3).to_spec("t")
    assert run(spec, stream("a c a b")) == ["a2 b3"]  # a0 b3 spans 3 ms: not < 3


def test_times_exact_and_range() -> None:
    spec = Pattern.begin("a", event="a").times(2).to_spec("t")
    assert run(spec, stream("a a c a")) == ["a0 a1", "a1 a3"]
    rng = Pattern.begin("a", event="a").times(2, 3).consecutive().to_spec("t")
    assert run(rng, stream("a a a c a")) == ["a0 a1", "a0 a1 a2", "a1 a2"]


def test_one_or_more_relaxed_consecutive_and_any() -> None:
    # The Flink CEP documentation example: a b+ c over a b1 d1 b2 d2 b3 c.
    def spec(inner: str) -> dict[str, Any]:
        p = Pattern.begin("a", event="a").followed_by_any("b", event="b").one_or_more()
        if inner == "consecutive":
            p.consecutive()
        elif inner == "any":
            p.allow_combinations()
        return p.followed_by("c", event="c").to_spec("t")

    evs = stream("a b d b d b c")
    assert run(spec("consecutive"), evs) == ["a0 b1 c6", "a0 b3 c6", "a0 b5 c6"]
    relaxed = ["a0 b1 b3 b5 c6", "a0 b1 b3 c6", "a0 b1 c6", "a0 b3 b5 c6", "a0 b3 c6", "a0 b5 c6"]
    assert run(spec("relaxed"), evs) == relaxed
    assert run(spec("any"), evs) == sorted([*relaxed, "a0 b1 b5 c6"])


def test_optional() -> None:
    spec = Pattern.begin("a", event="a").followed_by("b", event="b").optional().followed_by("c", event="c").to_spec("t")
    assert run(spec, stream("a c b c")) == ["a0 b2 c3", "a0 c1"]


def test_where_conditions() -> None:
    spec = (
        Pattern.begin("view", event="view").where("args.price", ">", 100)
        .followed_by("buy", event="buy").where("page", "==", "cart").to_spec("t")
    )
    evs = [
        Event("view", "item", 0, {"price": 50}),
        Event("view", "item", 1, {"price": 150}),
        Event("view", "item", 2, {"price": "n/a"}),  # incomparable: not met, no crash
        Event("buy", "home", 3),
        Event("buy", "cart", 4),
    ]
    assert run(spec, evs) == ["view1 buy4"]


def test_matching_is_per_key() -> None:
    spec = Pattern.begin("a", event="a").next("b", event="b").to_spec("t")
    evs = [Event("a", "p", 0, {}, "u1"), Event("a", "p", 1, {}, "u2"), Event("b", "p", 2, {}, "u1")]
    assert run(spec, evs) == ["a0 b2"]


def test_triggers_added_and_removed_while_running() -> None:
    m = Matcher()
    evs = stream("a b a b a b")
    assert m.process_many(evs[:2]) == []
    m.add_trigger(Pattern.begin("a", event="a").next("b", event="b").to_spec("t"))
    assert len(m.process_many(evs[2:4])) == 1
    m.remove_trigger("t")
    assert m.process_many(evs[4:]) == []
    assert m.triggers() == []


def test_state_is_bounded_per_key() -> None:
    m = Matcher([Pattern.begin("a", event="a").followed_by("b", event="b").to_spec("t")], max_runs_per_key=10)
    m.process_many(stream("a " * 100))
    assert m.live_runs() == 10 and m.stats.runs_dropped == 90


def test_late_event_is_skipped_not_fatal() -> None:
    m = Matcher([Pattern.begin("a", event="a").to_spec("t")])
    out = m.process_many([Event("a", "p", 5), Event("a", "p", 3), Event("a", "p", 6)])
    assert len(out) == 2 and m.stats.late_events == 1


# --------------------------------------------------------------------------- oracle

IDS = ["a", "b", "c"]


@st.composite
def condition(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    choice = draw(st.integers(0, 5))
    if choice == 0:
        pass  # any event id
    elif choice == 1:
        out["event"] = draw(st.lists(st.sampled_from(IDS), min_size=2, max_size=2, unique=True))
    else:
        out["event"] = draw(st.sampled_from(IDS))
    if draw(st.integers(0, 3)) == 0:
        out["where"] = [{"field": "args.v", "op": draw(st.sampled_from(["==", "<=", ">="])), "value": 1}]
    return out


@st.composite
def spec_and_events(draw: st.DrawFn) -> tuple[dict[str, Any], list[Event]]:
    n = draw(st.integers(1, 3))
    pattern: list[dict[str, Any]] = []
    neg_pending = False
    within = draw(st.one_of(st.none(), st.integers(2, 8)))
    for i in range(n):
        stage: dict[str, Any] = {"name": f"s{i}", **draw(condition())}
        if i:
            stage["contiguity"] = draw(st.sampled_from(["next", "followed_by", "followed_by_any"]))
        q = draw(st.integers(0, 6))
        if q == 1:
            stage["times"] = draw(st.integers(1, 2))
        elif q == 2:
            stage["times"] = [1, draw(st.integers(2, 3))]
        elif q == 3:
            stage["one_or_more"] = True
        if q in (1, 2, 3):
            stage["inner"] = draw(st.sampled_from(["relaxed", "consecutive", "any"]))
        optional = not neg_pending and draw(st.integers(0, 4)) == 0
        if optional:
            stage["optional"] = True
        pattern.append(stage)
        neg_pending = False
        last = i == n - 1
        if not optional and draw(st.integers(0, 3)) == 0:
            kind = draw(st.sampled_from(["not_next", "not_followed_by"]))
            if last and kind == "not_followed_by" and within is None:
                kind = "not_next"
            pattern.append({"name": f"n{i}", "contiguity": kind, **draw(condition())})
            neg_pending = True
    if all(s.get("optional") for s in pattern):
        pattern[0].pop("optional")
    spec: dict[str, Any] = {"id": "t", "pattern": pattern}
    if within is not None:
        spec["within_ms"] = within
    compile_spec(spec)
    length = draw(st.integers(0, 9))
    keys = draw(st.sampled_from([["k"], ["k", "u"]]))
    ts = 0
    events: list[Event] = []
    for _ in range(length):
        ts += draw(st.integers(0, 2))
        events.append(Event(draw(st.sampled_from(IDS)), "p", ts, {"v": draw(st.integers(0, 2))},
                            draw(st.sampled_from(keys))))
    return spec, events


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_and_events())
def test_engine_equals_reference(case: tuple[dict[str, Any], list[Event]]) -> None:
    spec, events = case
    m = Matcher([spec])
    got = m.process_many(events)
    got += m.advance_time(10**9)
    want = reference_matches([compile_spec(spec)], events)
    assert to_ref(got, events, [spec]) == want
    assert m.live_runs() == 0  # everything expired (TTL) or resolved


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spec_and_events(), min_size=2, max_size=4))
def test_many_triggers_share_one_pass(cases: list[tuple[dict[str, Any], list[Event]]]) -> None:
    specs = [dict(s, id=f"t{i}") for i, (s, _) in enumerate(cases)]
    events = cases[0][1]
    m = Matcher(specs)
    got = m.process_many(events) + m.advance_time(10**9)
    want = reference_matches([compile_spec(s) for s in specs], events)
    assert to_ref(got, events, specs) == want


@pytest.mark.parametrize("end", [0, 3, 6])
def test_clock_position_decides_trailing_negation(end: int) -> None:
    spec = Pattern.begin("a", event="a").not_followed_by("x", event="x").within(4).to_spec("t")
    evs = stream("a c")
    m = Matcher([spec])
    got = m.process_many(evs) + m.advance_time(end)
    assert to_ref(got, evs, [spec]) == reference_matches([compile_spec(spec)], evs, end_ms=end)
