"""The trigger matcher: every active trigger compiled into one shared NFA over event ids.

One pass over the stream advances all triggers at once. The shared structure has two parts:

* a global *start index* ``event id -> [(trigger, stage)]`` (plus the stages that accept any id),
  so an event only looks at the triggers that can begin with it;
* per key, an *interest index* over live partial matches (runs): ``event id -> [run]``, runs that
  accept any id, and runs that must see the very next event (strict contiguity, ``not_next``).

An event therefore touches only the runs it can change; a run that merely waits (relaxed
contiguity) costs nothing. Time-outs come from a heap of deadlines advanced by the clock
(:meth:`Matcher.advance_time`), so ``within`` and a trailing ``not_followed_by`` resolve without
waiting for another event. Semantics are defined in docs/pipeline.md and checked against
``tests/pipeline_reference.py``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from walle_core.pipeline.errors import EventError, TriggerSpecError
from walle_core.pipeline.events import Event
from walle_core.pipeline.spec import ANY, STRICT, CompiledTrigger, Condition, Stage, compile_spec

# Generous defaults: partial-match state is bounded per key and expires even without ``within``.
DEFAULT_MAX_RUNS_PER_KEY = 10_000
DEFAULT_STATE_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Match:
    """A complete match (``kind="match"``) or a partial one that timed out (``kind="timeout"``)."""

    trigger_id: str
    key: str
    events: tuple[Event, ...]
    stages: tuple[str, ...]  # the stage name that took each event
    fired_at_ms: int
    kind: str = "match"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "trigger": self.trigger_id,
            "key": self.key,
            "fired_at_ms": self.fired_at_ms,
            "events": [
                {"stage": s, **e.to_json()} for s, e in zip(self.stages, self.events, strict=True)
            ],
        }


class _Trig:
    """A trigger's compiled pattern plus the per-state tables the hot loop reads."""

    __slots__ = ("active", "c", "can_complete", "conds", "id", "interest", "reach", "stages", "ttl")

    def __init__(self, c: CompiledTrigger, ttl_ms: int) -> None:
        self.c = c
        self.id = c.id
        self.active = True
        self.stages: tuple[Stage, ...] = c.stages
        self.conds: tuple[Condition, ...] = tuple(s.cond for s in c.stages)
        n = len(c.stages)
        reach = [c.reachable(j) for j in range(-1, n)]
        # Indexed by j + 1 so that the start (j = -1) is entry 0.
        self.reach: tuple[int, ...] = tuple(sum(1 << k for k in r[0]) for r in reach)
        self.can_complete: tuple[bool, ...] = tuple(r[1] for r in reach)
        self.ttl = c.within_ms if c.within_ms is not None else ttl_ms
        self.interest: dict[tuple[int, bool, int, int], tuple[bool, frozenset[str] | None]] = {}


class _Run:
    """A partial match: the events taken so far and which continuations are still open."""

    __slots__ = (
        "alive",
        "c",
        "deadline",
        "events",
        "j",
        "key",
        "labels",
        "last_seq",
        "loop",
        "prox",
        "stamp",
        "start",
        "t",
        "tail",
    )

    def __init__(self) -> None:
        self.alive = True
        self.stamp = -1

    t: _Trig
    key: _KeyState
    j: int  # stage of the last taken event
    c: int  # events taken by stage j so far
    loop: bool  # may stage j take another event
    prox: int  # bit k: may stage k take the next event
    tail: int  # 0 none, 1 pending trailing not_next, 2 pending trailing not_followed_by
    start: int
    deadline: int
    last_seq: int
    events: tuple[Event, ...]
    labels: tuple[int, ...]


@dataclass
class _KeyState:
    key: str
    seq: int = 0
    by_id: dict[str, list[_Run]] = field(default_factory=dict)
    wild: list[_Run] = field(default_factory=list)
    adj: list[_Run] = field(default_factory=list)
    runs: deque[_Run] = field(default_factory=deque)
    live: int = 0
    dead: int = 0  # runs that died since the last compaction (stale index entries)


@dataclass
class MatcherStats:
    events: int = 0
    late_events: int = 0
    runs_started: int = 0
    runs_dropped: int = 0  # evicted by the per-key bound
    runs_expired: int = 0
    matches: int = 0
    timeouts: int = 0


class Matcher:
    """Runs any number of triggers over one event stream (see module doc)."""

    def __init__(
        self,
        triggers: Iterable[Mapping[str, Any] | CompiledTrigger] = (),
        *,
        max_runs_per_key: int = DEFAULT_MAX_RUNS_PER_KEY,
        state_ttl_ms: int = DEFAULT_STATE_TTL_MS,
    ) -> None:
        self.max_runs_per_key = max_runs_per_key
        self.state_ttl_ms = state_ttl_ms
        self.stats = MatcherStats()
        self._triggers: dict[str, _Trig] = {}
        self._start_by_id: dict[str, list[tuple[_Trig, int, Condition]]] = {}
        self._start_wild: list[tuple[_Trig, int, Condition]] = []
        self._keys: dict[str, _KeyState] = {}
        self._heap: list[tuple[int, int, _Run]] = []
        self._tick = itertools.count()
        self._clock = -1
        self._out: list[Match] = []
        for t in triggers:
            self.add_trigger(t)

    # ------------------------------------------------------------------ triggers

    @property
    def clock_ms(self) -> int:
        return self._clock

    def triggers(self) -> list[str]:
        return list(self._triggers)

    def add_trigger(self, spec: Mapping[str, Any] | CompiledTrigger) -> str:
        """Add (or replace) a trigger while the stream runs; new runs start at the next event."""
        compiled = spec if isinstance(spec, CompiledTrigger) else compile_spec(spec)
        if compiled.id in self._triggers:
            self.remove_trigger(compiled.id)
        t = _Trig(compiled, self.state_ttl_ms)
        self._triggers[t.id] = t
        for k in range(len(t.stages)):
            if t.reach[0] >> k & 1:
                cond = t.conds[k]
                entry = (t, k, cond)
                if cond.ids is None:
                    self._start_wild.append(entry)
                else:
                    for eid in cond.ids:
                        self._start_by_id.setdefault(eid, []).append(entry)
        return t.id

    def remove_trigger(self, trigger_id: str) -> None:
        """Remove a trigger; its partial matches are dropped (lazily, as the index meets them)."""
        t = self._triggers.pop(trigger_id, None)
        if t is None:
            raise TriggerSpecError(f"no active trigger {trigger_id!r}")
        t.active = False
        self._start_wild = [e for e in self._start_wild if e[0] is not t]
        for eid in [eid for eid, lst in self._start_by_id.items() if any(e[0] is t for e in lst)]:
            kept = [e for e in self._start_by_id[eid] if e[0] is not t]
            if kept:
                self._start_by_id[eid] = kept
            else:
                del self._start_by_id[eid]

    # ------------------------------------------------------------------ stream

    def process(self, ev: Event) -> list[Match]:
        """Feed one event; return the matches (and time-outs) it caused, in firing order."""
        self._process(ev)
        out, self._out = self._out, []
        return out

    def process_many(self, events: Iterable[Event]) -> list[Match]:
        """Feed events in order. A late event is counted and skipped, never stops the batch."""
        proc = self._process
        for ev in events:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per event
                proc(ev)
            except EventError:
                pass
        out, self._out = self._out, []
        return out

    def advance_time(self, now_ms: int) -> list[Match]:
        """Move the clock: expire runs whose window closed and fire trailing ``not_followed_by``."""
        if now_ms > self._clock:
            if self._heap and self._heap[0][0] <= now_ms:
                self._expire(now_ms)
            self._clock = now_ms
        out, self._out = self._out, []
        return out

    def live_runs(self) -> int:
        return sum(ks.live for ks in self._keys.values())

    def _process(self, ev: Event) -> None:
        ts = ev.timestamp_ms
        if ts > self._clock:
            if self._heap and self._heap[0][0] <= ts:
                self._expire(ts)
            self._clock = ts
        elif ts < self._clock:
            self.stats.late_events += 1
            raise EventError(
                f"late event {ev.event_id!r} at {ts} ms: the clock is already at {self._clock} ms"
            )
        self.stats.events += 1
        ks = self._keys.get(ev.key)
        if ks is None:
            ks = self._keys[ev.key] = _KeyState(ev.key)
        ks.seq = s = ks.seq + 1
        eid = ev.event_id
        spawned: list[_Run] = []
        step = self._step
        if ks.adj:
            adj, ks.adj = ks.adj, []
            for r in adj:
                if r.stamp != s:
                    step(r, ev, s, spawned)
        lst = ks.by_id.get(eid)
        if lst:
            for r in lst:
                if r.stamp != s:
                    step(r, ev, s, spawned)
            kept = [r for r in lst if r.alive and self._wants(r, eid)]
            if kept:
                ks.by_id[eid] = kept
            else:
                del ks.by_id[eid]
        if ks.wild:
            for r in ks.wild:
                if r.stamp != s:
                    step(r, ev, s, spawned)
            ks.wild = [r for r in ks.wild if r.alive]
        starts = self._start_by_id.get(eid)
        if starts:
            for t, k, cond in starts:
                if cond.test is None or cond.test(ev):
                    self._spawn(None, t, k, 1, ev, s, ks, spawned)
        if self._start_wild:
            for t, k, cond in self._start_wild:
                if cond.test is None or cond.test(ev):
                    self._spawn(None, t, k, 1, ev, s, ks, spawned)
        for r in spawned:
            self._index(r, ks)
        if ks.dead > 2 * ks.live + 256:
            self._compact(ks)

    def _step(self, r: _Run, ev: Event, s: int, spawned: list[_Run]) -> None:
        """Advance one run by one event of its key (the semantics live here)."""
        r.stamp = s
        if not r.alive:
            return
        t = r.t
        if not t.active:
            self._kill(r)
            return
        adjacent = s == r.last_seq + 1
        if r.loop:
            st = t.stages[r.j]
            if (adjacent or st.inner != STRICT) and st.cond(ev):
                self._spawn(r, t, r.j, r.c + 1, ev, s, r.key, spawned)
                if st.inner != ANY:
                    r.loop = False
            elif st.inner == STRICT:
                r.loop = False
        prox = r.prox
        if prox:
            k = 0
            while prox >> k:
                if prox >> k & 1:
                    sk = t.stages[k]
                    if sk.neg_next is not None and adjacent and sk.neg_next(ev):
                        prox &= ~(1 << k)
                    elif (adjacent or sk.contiguity != STRICT) and sk.cond(ev):
                        self._spawn(r, t, k, 1, ev, s, r.key, spawned)
                        if sk.contiguity != ANY or (sk.neg_follow is not None and sk.neg_follow(ev)):
                            prox &= ~(1 << k)
                    elif sk.contiguity == STRICT or (sk.neg_follow is not None and sk.neg_follow(ev)):
                        prox &= ~(1 << k)
                k += 1
            r.prox = prox
        if r.tail == 1:
            if adjacent:
                neg = t.c.tail_neg_next
                assert neg is not None
                if not neg(ev):
                    self._emit(r, ev.timestamp_ms, "match")
                r.tail = 0
        elif r.tail == 2:
            neg = t.c.tail_neg_follow
            assert neg is not None
            if neg(ev):
                r.tail = 0
        if not (r.loop or r.prox or r.tail):
            self._kill(r)

    def _spawn(
        self, parent: _Run | None, t: _Trig, k: int, c: int, ev: Event, s: int, ks: _KeyState,
        spawned: list[_Run],
    ) -> None:
        st = t.stages[k]
        loop = st.max is None or c < st.max
        enough = c >= st.min
        prox = t.reach[k + 1] if enough else 0
        tail = 0
        ts = ev.timestamp_ms
        events: tuple[Event, ...]
        labels: tuple[int, ...]
        if parent is None:
            start, events, labels = ts, (ev,), (k,)
        else:
            start, events, labels = parent.start, (*parent.events, ev), (*parent.labels, k)
        if enough and t.can_complete[k + 1]:
            cc = t.c
            if cc.tail_neg_next is not None:
                tail = 1
            elif cc.tail_neg_follow is not None:
                tail = 2
            else:
                self._out.append(Match(t.id, ks.key, events, tuple(t.stages[i].name for i in labels), ts))
                self.stats.matches += 1
        if not (loop or prox or tail):
            return
        r = _Run()
        r.t, r.key, r.j, r.c, r.loop, r.prox, r.tail = t, ks, k, c, loop, prox, tail
        r.start, r.deadline, r.last_seq, r.events, r.labels = start, start + t.ttl, s, events, labels
        r.stamp = s  # a run never sees the event that created it
        spawned.append(r)
        self.stats.runs_started += 1
        ks.live += 1
        ks.runs.append(r)
        heapq.heappush(self._heap, (r.deadline, next(self._tick), r))
        if ks.live > self.max_runs_per_key:
            while ks.runs:
                old = ks.runs.popleft()
                if old.alive:
                    self._kill(old)
                    self.stats.runs_dropped += 1
                    break

    def _interest(self, r: _Run) -> tuple[bool, frozenset[str] | None]:
        """(needs the next event whatever it is, event ids it waits for; None = any id)."""
        t = r.t
        memo = (r.j, r.loop, r.prox, r.tail)
        got = t.interest.get(memo)
        if got is not None:
            return got
        adj = False
        ids: set[str] | None = set()
        conds: list[Condition] = []
        if r.loop:
            st = t.stages[r.j]
            if st.inner == STRICT:
                adj = True
            else:
                conds.append(st.cond)
        for k, sk in enumerate(t.stages):
            if r.prox >> k & 1:
                if sk.contiguity == STRICT:
                    adj = True
                else:
                    conds.append(sk.cond)
                if sk.neg_next is not None:
                    adj = True
                if sk.neg_follow is not None:
                    conds.append(sk.neg_follow)
        if r.tail == 1:
            adj = True
        elif r.tail == 2 and t.c.tail_neg_follow is not None:
            conds.append(t.c.tail_neg_follow)
        for cond in conds:
            if cond.ids is None or ids is None:
                ids = None
            else:
                ids |= cond.ids
        got = (adj, None if ids is None else frozenset(ids))
        t.interest[memo] = got
        return got

    def _wants(self, r: _Run, eid: str) -> bool:
        ids = self._interest(r)[1]
        return ids is None or eid in ids

    def _index(self, r: _Run, ks: _KeyState) -> None:
        adj, ids = self._interest(r)
        if adj:
            ks.adj.append(r)
        if ids is None:
            ks.wild.append(r)
        else:
            for eid in ids:
                lst = ks.by_id.get(eid)
                if lst is None:
                    ks.by_id[eid] = [r]
                else:
                    lst.append(r)

    def _kill(self, r: _Run) -> None:
        if r.alive:
            r.alive = False
            r.key.live -= 1
            r.key.dead += 1

    def _emit(self, r: _Run, at: int, kind: str) -> None:
        t = r.t
        self._out.append(
            Match(t.id, r.key.key, r.events, tuple(t.stages[i].name for i in r.labels), at, kind)
        )
        if kind == "match":
            self.stats.matches += 1
        else:
            self.stats.timeouts += 1

    def _expire(self, now: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, r = heapq.heappop(heap)
            if not r.alive:
                continue
            if r.t.active:
                if r.tail == 2:
                    self._emit(r, deadline, "match")
                elif r.t.c.emit_timeouts and r.t.c.within_ms is not None:
                    self._emit(r, deadline, "timeout")
            self.stats.runs_expired += 1
            self._kill(r)

    def _compact(self, ks: _KeyState) -> None:
        """Drop index entries of dead runs (they are skipped lazily until this runs)."""
        ks.by_id = {e: kept for e, lst in ks.by_id.items() if (kept := [r for r in lst if r.alive])}
        ks.wild = [r for r in ks.wild if r.alive]
        ks.adj = [r for r in ks.adj if r.alive]
        ks.runs = deque(r for r in ks.runs if r.alive)
        ks.dead = 0
