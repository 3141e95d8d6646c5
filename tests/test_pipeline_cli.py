"""``walle pipeline replay`` and ``walle bench pipeline``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from walle_cli.app import app

runner = CliRunner()


def write(tmp: Path) -> tuple[Path, Path]:
    ev = tmp / "ev.jsonl"
    ev.write_text("\n".join([
        '{"event_id": "a", "timestamp_ms": 1}', "garbage", '{"event_id": "b", "timestamp_ms": 2}',
        '{"event_id": "b", "timestamp_ms": 3}', '{"event_id": "a", "timestamp_ms": 0}',
    ]))
    spec = tmp / "t.json"
    spec.write_text(json.dumps({"id": "ab", "within_ms": 100, "pattern": [
        {"name": "a", "event": "a"}, {"name": "b", "contiguity": "followed_by_any", "event": "b"}]}))
    return ev, spec


def test_replay_prints_matches_and_skips_bad_lines(tmp_path: Path) -> None:
    ev, spec = write(tmp_path)
    res = runner.invoke(app, ["pipeline", "replay", str(ev), "--trigger", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [[e["timestamp_ms"] for e in r["events"]] for r in rows] == [[1, 2], [1, 3]]
    assert "line 2: not valid JSON" in res.stderr and "line 5: late event" in res.stderr


def test_replay_rejects_a_bad_spec(tmp_path: Path) -> None:
    ev, spec = write(tmp_path)
    spec.write_text('{"id": "x", "pattern": [{"event": "a"}, {"event": "b", "contiguity": "later"}]}')
    res = runner.invoke(app, ["pipeline", "replay", str(ev), "--trigger", str(spec)])
    assert res.exit_code == 2 and "unknown contiguity 'later'" in res.stderr


def test_bench_pipeline_json() -> None:
    res = runner.invoke(app, ["bench", "pipeline", "--triggers", "10", "--events", "3000", "--repeat", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["events_per_s"] > 0 and set(data["latency_us_per_event"]) == {"p50", "p90", "p99"}
