"""Task VM benchmarks (issue 7): start latency, 1 vs 2 workers on inference, subinterpreters vs threads.

    python bench/bench_vm.py          # prints the JSON report (same as ``walle bench vm --json``)

All ratios come from one run on one machine; see bench/walle_bench/vm.py for what each measures.
Each timed phase reports the cores this process got and the cores other processes kept busy
(`own_busy_cores_*`, `others_busy_cores_*`): on a shared machine read those before a ratio.
Figures and the conditions they were measured under: docs/tasks.md, "Benchmarks".
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: VM parallelism, not BLAS's

import json

from walle_bench.vm import run_all

if __name__ == "__main__":
    print(json.dumps(run_all(), indent=2))
