"""The task VM: many tasks at once in one process, each with its own guard, facade and quotas.

Modes: ``thread`` (default; tasks share the process, compute in GIL-releasing kernels),
``subinterpreter`` (Python 3.12+: pure-Python tasks on per-interpreter GILs, one pooled
interpreter per scheduler worker) and ``process``
(a fresh interpreter per run with rlimits and its own sandbox folder: strongest, slowest).
Thread-mode runs reuse loaded models (:mod:`walle_core.vm.models`).
"""

from __future__ import annotations

from walle_core.vm.errors import (
    OutputQuotaError,
    TaskError,
    TaskMemoryError,
    TaskQuotaError,
    TaskSecurityError,
    TaskTimeoutError,
    VMModeUnavailableError,
)
from walle_core.vm.scheduler import MODES, Scheduler, run_once
from walle_core.vm.vm import TaskResult, TaskSpec, ThreadVM, run_task

__all__ = [
    "MODES",
    "OutputQuotaError",
    "Scheduler",
    "TaskError",
    "TaskMemoryError",
    "TaskQuotaError",
    "TaskResult",
    "TaskSecurityError",
    "TaskSpec",
    "TaskTimeoutError",
    "ThreadVM",
    "VMModeUnavailableError",
    "run_once",
    "run_task",
]
