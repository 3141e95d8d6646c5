"""The pipeline throughput workload shared by ``walle bench pipeline`` and bench/bench_pipeline.py.

K triggers of 2-4 steps over a vocabulary of event ids, N events of one device user, timestamps
about 100 ms apart (a busy app session). Also a hand-written single-trigger state machine over the
same events, the yardstick the issue quotes.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from walle_core.pipeline import Event, Matcher

VOCABULARY = 500
WITHIN_MS = 30_000


def make_triggers(k: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    specs = []
    for i in range(k):
        steps = rng.randint(2, 4)
        pattern: list[dict[str, Any]] = [{"name": "s0", "event": f"e{rng.randrange(VOCABULARY)}"}]
        for j in range(1, steps):
            contiguity = rng.choice(["followed_by", "followed_by", "followed_by", "next", "followed_by_any"])
            pattern.append({"name": f"s{j}", "contiguity": contiguity, "event": f"e{rng.randrange(VOCABULARY)}"})
        specs.append({"id": f"t{i}", "within_ms": WITHIN_MS, "pattern": pattern})
    return specs


def make_events(n: int, seed: int = 2) -> list[Event]:
    rng = random.Random(seed)
    ids = [f"e{i}" for i in range(VOCABULARY)]
    ts = 0
    out = []
    for _ in range(n):
        ts += rng.randint(50, 150)
        out.append(Event(rng.choice(ids), "page", ts, {}, "user"))
    return out


def hand_written(events: Sequence[Event], first: str, second: str, within: int) -> int:
    """One trigger ``first followed_by second within`` as a plain Python state machine."""
    pending: deque[int] = deque()
    matches = 0
    for ev in events:
        eid = ev.event_id
        if eid == first:
            pending.append(ev.timestamp_ms)
        elif eid == second and pending:
            ts = ev.timestamp_ms
            while pending and ts - pending[0] >= within:
                pending.popleft()
            matches += len(pending)
            pending.clear()
    return matches


def run_bench(triggers: int, events: int, repeat: int = 3, batch: int = 1000) -> dict[str, Any]:
    """Throughput of the matcher (best of ``repeat``) and per-batch latency percentiles."""
    specs = make_triggers(triggers)
    evs = make_events(events)
    best = float("inf")
    latencies: list[float] = []
    matches = 0
    for _ in range(repeat):
        m = Matcher(specs)
        lat: list[float] = []
        got = 0
        t0 = time.perf_counter()
        for i in range(0, len(evs), batch):
            b0 = time.perf_counter()
            got += len(m.process_many(evs[i : i + batch]))
            lat.append((time.perf_counter() - b0) / min(batch, len(evs) - i))
        elapsed = time.perf_counter() - t0
        if elapsed < best:
            best, latencies, matches = elapsed, lat, got
    first = specs[0]["pattern"][0]["event"]
    second = specs[0]["pattern"][1]["event"]
    hand_best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        hand_written(evs, first, second, WITHIN_MS)
        hand_best = min(hand_best, time.perf_counter() - t0)
    # The matcher running only the hand-written machine's trigger: the like-for-like ratio.
    one = Matcher([{"id": "one", "within_ms": WITHIN_MS, "pattern": [
        {"name": "a", "event": first}, {"name": "b", "contiguity": "followed_by", "event": second}]}])
    t0 = time.perf_counter()
    one.process_many(evs)
    one_eps = events / (time.perf_counter() - t0)
    qs = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    eps = events / best
    hand_eps = events / hand_best
    return {
        "triggers": triggers,
        "events": events,
        "events_per_s": round(eps),
        "matches": matches,
        "latency_us_per_event": {"p50": qs[49] * 1e6, "p90": qs[89] * 1e6, "p99": qs[98] * 1e6},
        "batch": batch,
        "hand_written_single_trigger_events_per_s": round(hand_eps),
        "ratio_vs_hand_written": eps / hand_eps,
        "engine_single_trigger_events_per_s": round(one_eps),
        "single_trigger_ratio_vs_hand_written": one_eps / hand_eps,
    }
