"""Runs task VMs on a pool of worker threads, highest priority first (FIFO within a priority)."""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from walle_core import flags
from walle_core.vm import subinterp
from walle_core.vm.errors import VMModeUnavailableError
from walle_core.vm.vm import FAILED, Events, TaskResult, TaskSpec, ThreadVM

MODES = ("thread", "subinterpreter", "process")


def run_once(spec: TaskSpec, events: Events = (), mode: str = "thread",
             interpreters: subinterp.InterpreterPool | None = None) -> TaskResult:
    """Run one task in the calling thread in ``mode``; never raises for the task's own failures.

    Subinterpreter mode uses the calling thread's interpreter from ``interpreters`` when given
    (pooled), else a fresh interpreter for this run only.
    """
    if mode == "thread":
        return ThreadVM(spec, events).run()
    if mode == "process":
        from walle_core.vm.process import run_in_process

        return run_in_process(spec, events)
    if mode == "subinterpreter":
        if not subinterp.available():
            raise VMModeUnavailableError("subinterpreter mode needs Python 3.12+ (_interpreters)")
        runner = interpreters.run if interpreters is not None else subinterp.run
        raw = runner(spec.name, str(spec.root), spec.entry, [dict(e) for e in events],
                     wall_time_s=spec.quotas.wall_time_s, output_bytes=spec.quotas.output_bytes)
        return TaskResult(spec.name, raw["status"], raw["outputs"], raw["logs"], raw["error"],
                          raw["violations"], raw["wall_s"], mode="subinterpreter")
    raise VMModeUnavailableError(f"unknown VM mode {mode!r}; expected one of {MODES}")


@dataclass(order=True)
class _Job:
    sort_key: tuple[int, int]
    spec: TaskSpec = field(compare=False)
    events: Events = field(compare=False)
    mode: str = field(compare=False)
    future: Future[TaskResult] = field(compare=False)


class Scheduler:
    """A priority queue of task runs served by ``workers`` threads.

    ``mode`` is the default VM mode; :meth:`submit` may override it per task (e.g. process mode for
    a task from a less trusted publisher). In subinterpreter mode each worker creates one
    interpreter on its first such task and reuses it for the next ones (see
    :mod:`walle_core.vm.subinterp` for what a pooled interpreter keeps between runs).
    """

    def __init__(self, workers: int | None = None, mode: str | None = None) -> None:
        self.workers = workers or flags.vm_workers() or os.cpu_count() or 1
        self.mode = mode or flags.vm_mode()
        if self.mode not in MODES:
            raise VMModeUnavailableError(f"unknown VM mode {self.mode!r}; expected one of {MODES}")
        if self.mode == "subinterpreter" and not subinterp.available():
            raise VMModeUnavailableError("subinterpreter mode needs Python 3.12+ (_interpreters)")
        self.interpreters = subinterp.InterpreterPool()
        self._heap: list[_Job] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"walle-vm-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def submit(self, spec: TaskSpec, events: Events = (), priority: int = 0,
               mode: str | None = None) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is shut down")
            heapq.heappush(self._heap, _Job((-priority, next(self._seq)), spec, events, mode or self.mode, future))
            self._cond.notify()
        return future

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            self.interpreters.close_current()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return
                job = heapq.heappop(self._heap)
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(run_once(job.spec, job.events, job.mode, self.interpreters))
            except Exception as exc:  # a VM bug or bad mode: report it as the task's failure
                job.future.set_result(TaskResult(job.spec.name, FAILED, error=f"{type(exc).__name__}: {exc}",
                                                 mode=job.mode))

    def shutdown(self, wait: bool = True) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
