"""Pipeline throughput: K triggers of 2-4 steps on one core, against a hand-written state machine.

    python bench/bench_pipeline.py --triggers 100 --events 500000

Prints the JSON of ``walle bench pipeline --json`` (events_per_s, latency percentiles, the
hand-written single-trigger machine on the same events and the ratios).
"""

from __future__ import annotations

import argparse
import json

from walle_bench.pipeline import run_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, default=100)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(run_bench(args.triggers, args.events, repeat=args.repeat), indent=2))


if __name__ == "__main__":
    main()
