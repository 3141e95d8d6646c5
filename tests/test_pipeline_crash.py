"""Crash test: SIGKILL a pipeline process mid-stream, restart it, lose and duplicate nothing.

The child ingests events one by one and prints each acknowledged event's number after
``ingest`` returns (i.e. after commit). The parent kills it with SIGKILL part-way, restarts it,
and the producer re-sends from the first unacknowledged event (possibly one the dead child had
already committed). Afterwards the stored events and features must equal those of an
uninterrupted run over the same events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from walle_core.pipeline.errors import EventError
from walle_core.pipeline.runtime import Pipeline

TRIGGERS = [
    {"id": "ab", "within_ms": 5000, "pattern": [
        {"name": "a", "event": "a"}, {"name": "b", "contiguity": "followed_by", "event": "b"}],
     "features": {"n": {"fn": "count"}}},
    {"id": "quiet", "within_ms": 3000, "pattern": [
        {"name": "c", "event": "c"}, {"name": "x", "contiguity": "not_followed_by", "event": "a"}]},
]
WINDOWS = [
    {"name": "tumble", "type": "tumbling", "size_ms": 2000, "features": {"n": {"fn": "count"}}},
    {"name": "every5", "type": "count", "size": 5, "features": {"last": {"fn": "last_n", "n": 5}}},
]

CHILD = textwrap.dedent(
    """
    import json, sys
    from walle_core.pipeline.runtime import Pipeline
    directory, events_file, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = json.loads(open(events_file + ".cfg").read())
    p = Pipeline(directory, triggers=cfg["triggers"], windows=cfg["windows"], device="dev")
    events = [json.loads(l) for l in open(events_file)]
    for i in range(start, len(events)):
        p.ingest(events[i])
        print(i, flush=True)  # the acknowledgement: only after the commit
    p.advance_time(10**12)
    print("done", flush=True)
    """
)


def make_events(n: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(7)
    ts, out = 0, []
    for _ in range(n):
        ts += rng.randint(0, 400)
        out.append({"event_id": rng.choice("abcd"), "page": rng.choice(["home", "item"]), "timestamp_ms": ts,
                    "args": {"v": rng.randint(0, 9)}, "key": rng.choice(["u1", "u2"])})
    return out


def snapshot(p: Pipeline) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    events = [(e.seq, e.key, e.event_id, e.timestamp_ms) for e in p.store.events()]
    feats = [(f.fid, f.key, f.name, f.ts, json.dumps(f.value, sort_keys=True)) for f in p.features()]
    return events, feats, p.store.outbox_size()


def test_sigkill_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    events = make_events(400)
    ev_file = tmp_path / "events.jsonl"
    ev_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    Path(str(ev_file) + ".cfg").write_text(json.dumps({"triggers": TRIGGERS, "windows": WINDOWS}))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "WALLE_PIPELINE_SYNC": "normal"}
    crashed = tmp_path / "crashed"
    start, kills = 0, 0
    for kill_after in (60, 150, 275, None):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(crashed), str(ev_file), str(start)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        assert proc.stdout is not None
        acked = start - 1
        for line in proc.stdout:
            if line.strip() == "done":
                break
            acked = int(line)
            if kill_after is not None and acked >= kill_after:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
        proc.wait(timeout=60)
        if kill_after is None:
            assert proc.returncode == 0
        else:
            assert proc.returncode == -signal.SIGKILL
        start = acked + 1  # the producer re-sends everything not acknowledged
    assert kills == 3

    clean = Pipeline(tmp_path / "clean", triggers=TRIGGERS, windows=WINDOWS, device="dev")
    for e in events:
        clean.ingest(e)
    clean.advance_time(10**12)
    after = Pipeline(crashed, triggers=TRIGGERS, windows=WINDOWS, device="dev")
    after.advance_time(10**12)

    got_events, got_feats, got_outbox = snapshot(after)
    want_events, want_feats, want_outbox = snapshot(clean)
    assert [e[1:] for e in got_events] == [e[1:] for e in want_events]  # every event exactly once
    assert len(got_events) == len(events)
    # Features: same set, none duplicated (fids are unique keys; compare values too).
    assert len(want_feats) > 50
    assert {f[0] for f in got_feats} == {f[0] for f in want_feats}
    assert sorted(f[1:] for f in got_feats) == sorted(f[1:] for f in want_feats)
    assert got_outbox == want_outbox == len(want_feats)
    names = {f[2] for f in want_feats}
    assert {"ab", "quiet", "tumble", "every5"} <= names


def test_resent_events_behind_the_clock_are_duplicates_not_late(tmp_path: Path) -> None:
    """After a crash the producer re-sends from its last acknowledgement, which can be far
    behind what the dead process committed: those events are duplicates (not late events, and
    not new sequence numbers), so the outcome equals an uninterrupted run."""
    events = make_events(400)
    clean = Pipeline(tmp_path / "clean", triggers=TRIGGERS, windows=WINDOWS, device="dev")
    for e in events:
        clean.ingest(e)
    clean.advance_time(10**12)
    start = 0
    for stop, resend_from in ((75, 61), (160, 120)):
        p = Pipeline(tmp_path / "crashed", triggers=TRIGGERS, windows=WINDOWS, device="dev")
        for e in events[start:stop]:
            p.ingest(e)
        start = resend_from
    again = Pipeline(tmp_path / "crashed", triggers=TRIGGERS, windows=WINDOWS, device="dev")
    assert all(again.ingest(e).duplicate for e in events[start:160])
    for e in events[160:]:
        again.ingest(e)
    again.advance_time(10**12)
    assert snapshot(again) == snapshot(clean)
    with pytest.raises(EventError, match="late event"):
        again.ingest({**events[5], "args": {"v": 99}})
