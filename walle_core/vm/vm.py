"""The thread-level task VM: run one task's script with its guard, facade, quotas and crash boundary.

Wall time is enforced by a shared watchdog thread that raises an exception *inside* the task's
thread (``PyThreadState_SetAsyncExc``) once the deadline passes, and keeps raising it until the
task has unwound, so ``except BaseException: pass`` in a loop does not save a runaway. The
exception lands at the next bytecode boundary: a single long C call (one huge matmul) finishes
first. Memory in thread mode is what the task holds through the engine and the data library
(see :class:`walle_core.vm.api.MemoryAccount`); process mode adds a real RLIMIT_AS.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import sys
import threading
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from walle_core.task.manifest import Manifest, Quotas
from walle_core.vm.api import TaskContext
from walle_core.vm.errors import OutputQuotaError, TaskMemoryError, TaskSecurityError
from walle_core.vm.guard import Guard
from walle_core.vm.models import ModelCache, calibrate_for

log = logging.getLogger("walle.vm")

Events = Sequence[Mapping[str, Any]]

# Result statuses, in the order a run checks them.
OK, FAILED, TIMEOUT, MEMORY, SECURITY, OUTPUT_QUOTA = "ok", "failed", "timeout", "memory", "security", "output_quota"


@dataclass(frozen=True)
class TaskSpec:
    """Everything a VM needs to run an installed (already verified) task."""

    name: str
    root: Path
    entry: str
    version: str = "0.0.0"
    model: str | None = None
    backend: str = "auto"
    quotas: Quotas = field(default_factory=Quotas)
    threads: int | None = 1  # kernel threads per task: parallelism comes from running tasks side by side

    @classmethod
    def from_manifest(cls, manifest: Manifest, root: Path, backend: str | None = None) -> TaskSpec:
        return cls(name=manifest.name, root=Path(root), entry=manifest.entry, version=manifest.version,
                   model=manifest.model, backend=backend or (manifest.backends[0] if manifest.backends else "auto"),
                   quotas=manifest.quotas)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        return cls(**{**data, "root": Path(data["root"]), "quotas": Quotas(**data["quotas"])})


@dataclass
class TaskResult:
    name: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    error: str | None = None
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    start_s: float = 0.0  # from run() to the task's first bytecode
    memory_peak: int = 0
    mode: str = "thread"
    engine_s: float = 0.0  # of wall_s, the time spent inside the model's run

    @property
    def ok(self) -> bool:
        return self.status == OK


STATUS_OF: dict[type[BaseException], str] = {
    TaskSecurityError: SECURITY, TaskMemoryError: MEMORY, MemoryError: MEMORY, OutputQuotaError: OUTPUT_QUOTA,
}


_ACTIVE = threading.local()  # the VM running in this thread, for _Interrupt to find


class _Interrupt(BaseException):
    """Raised asynchronously in a task's thread; a BaseException so ``except Exception`` misses it.

    Created in the task's thread when CPython raises it there, so its constructor can switch on
    the stopping VM's line tracer in that thread (see :meth:`ThreadVM._trace`).
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        vm = getattr(_ACTIVE, "vm", None)
        if vm is not None and vm._stop_reason is not None:
            vm._start_tracing()


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    # exc=None clears a pending asynchronous exception (CPython API contract).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


class Watchdog:
    """One daemon thread that fires deadlines for every running VM in the process."""

    REPEAT_S = 0.02  # re-raise period while a stopped task is still unwinding

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ThreadVM]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def arm(self, vm: ThreadVM, deadline: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, vm))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="walle-vm-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, vm = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
            if vm.interrupt("timeout"):
                self.arm(vm, time.monotonic() + self.REPEAT_S)


WATCHDOG = Watchdog()


class ThreadVM:
    """Runs one task in the calling thread. Create one per run; :meth:`run` never raises."""

    def __init__(self, spec: TaskSpec, events: Events = (), *, mode: str = "thread",
                 models: ModelCache | None = None) -> None:
        self.spec = spec
        self.models = models
        self.events = events
        self.mode = mode
        self._lock = threading.Lock()
        self._running = False
        self._thread_id = 0
        self._stop_reason: str | None = None
        self.violations: list[str] = []
        self._prefix = f"{spec.name}/"  # every code object of the task is compiled with this prefix

    def interrupt(self, reason: str) -> bool:
        """Stop the task (from any thread). False once the task has finished."""
        with self._lock:
            if not self._running:
                return False
            self._stop_reason = self._stop_reason or reason
            _raise_in_thread(self._thread_id, _Interrupt)
            return True

    def _start_tracing(self) -> None:
        # A task that swallows the stop (``except BaseException: pass`` in a loop) is re-armed on
        # every line it runs: the exception then fires at the next jump or call, and a handler
        # cannot loop back into its own try without passing one outside it, so it unwinds.
        sys.settrace(self._trace)
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.startswith(self._prefix):
                frame.f_trace, frame.f_trace_lines = self._trace, True
            frame = frame.f_back  # type: ignore[assignment]

    def _trace(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if self._stop_reason is None or not frame.f_code.co_filename.startswith(self._prefix):
            return None
        if event == "line":
            with self._lock:
                if self._running:
                    _raise_in_thread(self._thread_id, _Interrupt)
        return self._trace

    def _violation(self, message: str) -> None:
        self.violations.append(message)
        log.warning("security: %s", message)

    def run(self) -> TaskResult:
        if self.mode != "process":  # a process-mode child's parent did it, outside its limits
            calibrate_for(self.spec.model, self.spec.backend)  # the device's one-time cost, outside the task's clock
        t0 = time.perf_counter()
        spec = self.spec
        ctx = TaskContext(spec.name, spec.version, spec.root, spec.model, self.events, spec.quotas,
                          spec.backend, spec.threads, self.models)
        result = TaskResult(spec.name, OK, mode=self.mode)
        guard = Guard(spec.name, str(spec.root), error=TaskSecurityError, on_violation=self._violation,
                      facade=ctx.facade())
        module = guard.new_module(f"__walle_task_{spec.name.replace('-', '_').replace('.', '_')}__")
        module.__dict__["__name__"] = "__main__"
        try:
            source = (spec.root / spec.entry).read_text("utf-8")
            code = guard.check_source(source, f"{spec.name}/{spec.entry}")
            with self._lock:
                self._running, self._thread_id = True, threading.get_ident()
            _ACTIVE.vm = self
            WATCHDOG.arm(self, time.monotonic() + spec.quotas.wall_time_s)
            result.start_s = time.perf_counter() - t0
            exec(code, vars(module))
            main = vars(module).get("main")
            if callable(main):
                main()
        except _Interrupt:
            result.status = TIMEOUT if self._stop_reason == "timeout" else FAILED
            result.error = (f"task {spec.name!r} ran past its {spec.quotas.wall_time_s:g} s wall-time quota"
                            f" and was stopped")
        except BaseException as exc:  # the crash boundary: nothing a task raises leaves the VM
            result.status = next((STATUS_OF[c] for c in type(exc).__mro__ if c in STATUS_OF), FAILED)
            result.error = f"{type(exc).__name__}: {exc}"
            if result.status == FAILED:
                result.error += "\n" + "".join(traceback.format_exception(exc)[-6:])
        finally:
            self._finish()
        # A quota or guard that the task caught and swallowed still decides the outcome.
        if result.status == OK:
            if self.violations:
                result.status, result.error = SECURITY, f"TaskSecurityError: {self.violations[0]}"
            elif ctx.memory.exceeded:
                result.status, result.error = MEMORY, f"TaskMemoryError: task {spec.name!r} exceeded its memory quota"
            elif ctx.output_exceeded:
                result.status, result.error = OUTPUT_QUOTA, f"OutputQuotaError: task {spec.name!r} exceeded its output quota"
        ctx.release(healthy=result.status == OK)  # a stopped run may have left its model half-planned
        if result.status != OK:
            log.warning("task %s ended with %s: %s", spec.name, result.status, (result.error or "").splitlines()[0])
        result.outputs, result.logs, result.violations = ctx.outputs, ctx.logs, list(self.violations)
        result.memory_peak, result.engine_s = ctx.memory.peak, ctx.engine_s
        result.wall_s = time.perf_counter() - t0
        return result

    def _finish(self) -> None:
        # The watchdog may fire between the task's last bytecode and here: retry until we hold the
        # lock, mark the VM finished and clear any exception still pending for this thread, so it
        # can never land in the next job this worker thread runs.
        while True:
            try:
                with self._lock:
                    if self._running:
                        self._running = False
                        _raise_in_thread(self._thread_id, None)
                _ACTIVE.vm = None
                if self._stop_reason is not None:
                    sys.settrace(None)
                return
            except _Interrupt:
                continue


def run_task(spec: TaskSpec, events: Events = ()) -> TaskResult:
    """Run one task in the calling thread (thread mode)."""
    return ThreadVM(spec, events).run()
