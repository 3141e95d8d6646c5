"""Process mode: one fresh interpreter per run, with rlimits, no network and its own sandbox folder.

The parent starts ``python -m walle_core.vm.process`` (a new process, not a fork: forking a
threaded process is unsafe), sends the job as JSON on stdin and reads ``result.json`` and
``outputs.npz`` back from the child's private folder, which it deletes afterwards. The child
lowers its *hard* limits before the task's code runs, so the task cannot raise them again:

* ``RLIMIT_AS``: the address space after start-up plus the task's memory quota (a real limit for
  everything the task allocates, numpy included; an allocation past it raises MemoryError);
* ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE``;
* a new network namespace (``unshare(CLONE_NEWNET)``, with a user namespace when unprivileged)
  where the kernel allows it: the namespace has no interfaces but a down loopback.

The child then runs the very same :class:`~walle_core.vm.vm.ThreadVM` as thread mode, so guard,
facade, wall-time and output quotas behave identically; the parent kills the child outright if it
outlives its wall time by a grace period (a task stuck in C code).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from walle_core import flags
from walle_core.vm.models import calibrate_for
from walle_core.vm.vm import FAILED, MEMORY, TIMEOUT, Events, TaskResult, TaskSpec

KILL_GRACE_S = 20.0  # start-up (imports) plus unwinding, before the parent kills the child
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def _child_env(sandbox: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k.startswith("WALLE_") or k in ("PATH", "PYTHONPATH", "LANG")}
    # One BLAS thread: the task's parallelism is the scheduler's business, and every BLAS thread
    # reserves address space that would count against RLIMIT_AS. The engine's cache stays the
    # parent's: under the sandbox HOME every run would calibrate the backends again (seconds).
    return {**keep, "HOME": str(sandbox), "TMPDIR": str(sandbox), "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "WALLE_CACHE_DIR": str(flags.cache_dir())}


def run_in_process(spec: TaskSpec, events: Events = (), *, python: str | None = None) -> TaskResult:
    calibrate_for(spec.model, spec.backend)  # in the parent, before the clock starts: the child reads the shared cache
    t0 = time.perf_counter()
    sandbox = Path(tempfile.mkdtemp(prefix=f"walle-{spec.name}-"))
    job = json.dumps({"spec": spec.to_dict(), "events": list(map(dict, events))})
    try:
        proc = subprocess.Popen(
            [python or sys.executable, "-m", "walle_core.vm.process"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=sandbox, env=_child_env(sandbox),
            start_new_session=True,  # a kill reaches nothing but the child's own group
        )
        try:
            _, stderr = proc.communicate(job.encode(), timeout=spec.quotas.wall_time_s + KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return TaskResult(spec.name, TIMEOUT, error=f"task {spec.name!r} killed after its wall time",
                              wall_s=time.perf_counter() - t0, mode="process")
        result = _read_result(sandbox, spec.name)
        if result is None:
            detail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            status = MEMORY if any("MemoryError" in line for line in detail) else FAILED
            result = TaskResult(spec.name, status, mode="process",
                                error=f"task process exited with {proc.returncode}: " + " | ".join(detail))
        result.wall_s = time.perf_counter() - t0
        return result
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def _read_result(sandbox: Path, name: str) -> TaskResult | None:
    try:
        data = json.loads((sandbox / "result.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    outputs: dict[str, Any] = data.pop("outputs")
    if data.pop("arrays"):
        import numpy as np

        with np.load(sandbox / "outputs.npz", allow_pickle=False) as npz:
            for key, out_name in data.pop("array_names").items():
                outputs[out_name] = npz[key]
    else:
        data.pop("array_names")
    return TaskResult(outputs=outputs, **data)


# ---------------------------------------------------------------------------------- child side


def _address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _isolate_network() -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return any(libc.unshare(flags) == 0 for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET))


def _limit(which: int, value: int) -> None:
    import resource

    _, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def _child_main() -> int:
    import resource

    import numpy as np

    import walle_core  # noqa: F401 - imported before the limit so start-up cost is not the task's
    from walle_core.vm.vm import ThreadVM

    job = json.loads(sys.stdin.read())
    spec = TaskSpec.from_dict(job["spec"])
    isolated = sys.platform == "linux" and _isolate_network()
    quotas = spec.quotas
    if sys.platform == "linux":
        _limit(resource.RLIMIT_AS, _address_space() + quotas.memory_bytes)
    _limit(resource.RLIMIT_CPU, math.ceil(quotas.wall_time_s) + 5)
    _limit(resource.RLIMIT_FSIZE, quotas.output_bytes + (16 << 20))
    _limit(resource.RLIMIT_NOFILE, 256)
    _limit(resource.RLIMIT_CORE, 0)
    result = ThreadVM(spec, job["events"], mode="process").run()
    if not isolated:
        result.logs.append("walle: network namespace unavailable; relying on the import guard")
    named = [(name, v) for name, v in result.outputs.items() if isinstance(v, np.ndarray)]
    # Positional arrays (arr_0, arr_1, ...): output names need not be valid keyword names.
    arrays = {f"arr_{i}": (name, v) for i, (name, v) in enumerate(named)}
    if arrays:
        with open("outputs.npz", "wb") as fh:
            np.savez(fh, *(v for _, v in named))
    doc: dict[str, Any] = {
        "name": result.name, "status": result.status, "logs": result.logs, "error": result.error,
        "violations": result.violations, "start_s": result.start_s, "memory_peak": result.memory_peak,
        "mode": "process", "arrays": bool(arrays), "array_names": {k: n for k, (n, _) in arrays.items()},
        "outputs": {k: v for k, v in result.outputs.items() if not isinstance(v, np.ndarray)},
    }
    Path("result.json").write_text(json.dumps(doc), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
