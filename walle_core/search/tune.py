"""Measure mode: time the leading candidates of the costliest ops on the real backends, within a
time budget, and keep the winners in a tuning cache keyed by op signature and device."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from walle_core import flags
from walle_core.backend import Backend
from walle_core.search.assign import Candidate, Decision, op_signature
from walle_core.search.calibrate import fingerprint
from walle_core.search.timing import time_in_chain, time_ops


class TuningCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, float]] = {}
        try:
            raw = json.loads(path.read_text())
            if isinstance(raw, dict):
                self.entries = {k: {a: float(s) for a, s in v.items()} for k, v in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self.entries = {}  # missing or corrupt: start over, it is only a cache

    @classmethod
    def for_backends(cls, backends: Sequence[Backend]) -> TuningCache:
        key = hashlib.sha256("|".join(sorted(fingerprint(b) for b in backends)).encode()).hexdigest()[:16]
        return cls(flags.cache_dir() / "tuning" / f"{key}.json")

    def measured(self) -> dict[tuple[str, str], float]:
        return {(sig, label): s for sig, runs in self.entries.items() for label, s in runs.items()}

    def record(self, sig: str, label: str, seconds: float) -> None:
        self.entries.setdefault(sig, {})[label] = seconds

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)


def measure(decisions: Sequence[Decision], cache: TuningCache, *, budget_s: float,
            top_k: int = 3) -> int:
    """Time up to ``top_k`` candidates of the costliest ops first until the budget is spent.
    Returns how many (op, candidate) timings were taken."""
    deadline = time.perf_counter() + budget_s
    taken = 0
    order = sorted(decisions, key=lambda d: d.chosen.seconds, reverse=True)
    for d in order:
        sig = op_signature(d.op)
        # Every algorithm of every candidate backend, the predicted-best first, at most top_k.
        labels: list[Candidate] = []
        for c in d.candidates:
            labels.append(c)
            labels += [Candidate(c.backend, alg, c.predicted_s)
                       for alg in c.backend.algorithms(d.op) if alg.name != c.algorithm.name]
        labels = labels[:top_k]
        for c in labels:
            if time.perf_counter() > deadline:
                cache.save()
                return taken
            if c.label in cache.entries.get(sig, {}):
                continue
            secs = time_in_chain(c.backend, d.op, c.algorithm) or \
                time_ops(c.backend, [(d.op, c.algorithm)], repeat=5, budget_s=0.2, best=True)
            cache.record(sig, c.label, secs)
            taken += 1
    cache.save()
    return taken
