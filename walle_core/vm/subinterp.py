"""Subinterpreter mode (Python 3.12+): pure-Python task code on a per-interpreter GIL.

Tasks run in isolated subinterpreters (own GIL, own modules), so pure-Python feature code of
several tasks runs truly in parallel; numpy and the engine cannot be imported there (they do not
support subinterpreters), so tasks in this mode see a reduced facade: ``events``, ``output``
(JSON values), ``log``, ``task``. The interpreter executes ``guard.py`` itself, so the same
allow-list and restricted builtins apply.

Pooling: creating an interpreter costs milliseconds (it imports its own ``json``, ``threading``
and the guard), as much as a small task's whole run, so an :class:`Interpreter` is created once
per worker and runs many tasks, one at a time. Each run gets a *fresh task namespace*: a new
``__main__`` module for the entry script, a new private table for the task's own ``.py`` files,
a new copy of the restricted builtins and a new ``walle`` facade (its own outputs, logs, events).
What stays in a pooled interpreter between runs: imported standard-library modules
(``sys.modules``, exactly as in thread mode, where every task shares the host's modules), the
guard's cache of checked, compiled code objects (immutable), and the bootstrap's own functions.
A run that timed out, or whose bootstrap broke, retires its interpreter; the next run on that
worker gets a new one. :func:`run` keeps the one-shot form (a fresh interpreter per call).

Wall time: an exception cannot be injected across interpreters, so a watchdog thread *inside* the
subinterpreter switches on ``sys.monitoring`` JUMP and PY_START events at the deadline; the
callback raises in the task's thread at its next loop iteration or call. Monitoring costs nothing
until it is switched on, and is switched off again before the run returns.

This module is standard-library only and may be loaded by file path from an interpreter that has
no numpy (the benchmarks and tests do that with the pyenv 3.12/3.13 builds).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _module() -> Any:
    try:
        import _interpreters as mod  # type: ignore[import-not-found]  # 3.13+
    except ImportError:
        try:
            import _xxsubinterpreters as mod  # type: ignore[import-not-found]  # 3.12
        except ImportError:
            return None
    return mod


def available() -> bool:
    return sys.version_info >= (3, 12) and _module() is not None


def _create(mod: Any) -> Any:
    if mod.__name__ == "_interpreters":
        return mod.create("isolated")
    return mod.create(isolated=True)


# Runs once per interpreter, in its __main__; GUARD_SOURCE is prepended as a literal.
_BOOTSTRAP = r'''
import json, sys, threading, time, types
_g = {"__name__": "walle_guard"}
exec(compile(GUARD_SOURCE, "walle_core/vm/guard.py", "exec"), _g)
del GUARD_SOURCE


class TaskSecurityError(Exception):
    pass


class OutputQuotaError(Exception):
    pass


class _Stop(BaseException):
    pass


_TOOL = 4  # the watchdog's sys.monitoring tool id


def _walle_run(P):
    # One task run: every piece of task-visible state below is created here, per run.
    violations, logs, outputs, size = [], [], {}, [0]

    def output(name, value):
        text = json.dumps(value, allow_nan=False)
        previous = len(json.dumps(outputs[name])) if name in outputs else 0
        if size[0] - previous + len(text) > P["output_bytes"]:
            raise OutputQuotaError(f"task {P['name']!r}: outputs exceed {P['output_bytes']} bytes")
        size[0] += len(text) - previous
        outputs[name] = json.loads(text)

    facade = types.ModuleType("walle")
    facade.events = lambda: json.loads(P["events"])
    facade.output = output
    facade.log = lambda *parts: logs.append(" ".join(str(p) for p in parts))
    facade.task = P["name"]
    guard = _g["Guard"](P["name"], P["root"], error=TaskSecurityError, on_violation=violations.append,
                        facade=facade, allowed=_g["ALLOWED_MODULES"] - {"numpy"})

    task_thread = threading.get_ident()
    armed, fired = [False], [False]
    done = threading.Event()
    M = sys.monitoring

    prefix = P["name"] + "/"  # the task's code objects carry this filename prefix

    def on_event(code, *_args):
        # Only in the task's own code: a handler that swallows the stop is stopped again at its
        # next jump or call, while the bootstrap's unwinding (and weakref callbacks) run free.
        if armed[0] and threading.get_ident() == task_thread and code.co_filename.startswith(prefix):
            raise _Stop()

    def watch():
        if not done.wait(P["wall_time_s"]):
            M.use_tool_id(_TOOL, "walle-watchdog")
            M.register_callback(_TOOL, M.events.JUMP, on_event)
            M.register_callback(_TOOL, M.events.PY_START, on_event)
            armed[0] = fired[0] = True
            M.set_events(_TOOL, M.events.JUMP | M.events.PY_START)

    status, error = "ok", None
    t0 = time.perf_counter()
    watcher = threading.Thread(target=watch)  # subinterpreters refuse daemon threads
    watcher.start()
    module = None
    try:
        module = guard.new_module("__main__")
        with open(P["entry_path"], encoding="utf-8") as fh:
            code = guard.check_source(fh.read(), P["name"] + "/" + P["entry"])
        exec(code, vars(module))
        if callable(vars(module).get("main")):
            vars(module)["main"]()
    except _Stop:
        status = "timeout"
        error = f"task {P['name']!r} ran past its {P['wall_time_s']:g} s wall-time quota and was stopped"
    except BaseException as exc:
        status = {"TaskSecurityError": "security", "OutputQuotaError": "output_quota",
                  "MemoryError": "memory"}.get(type(exc).__name__, "failed")
        error = f"{type(exc).__name__}: {exc}"
    armed[0] = False  # first: nothing below may be interrupted
    done.set()
    watcher.join()
    if fired[0]:
        M.set_events(_TOOL, 0)
        M.register_callback(_TOOL, M.events.JUMP, None)
        M.register_callback(_TOOL, M.events.PY_START, None)
        M.free_tool_id(_TOOL)
    if status == "ok" and violations:
        status, error = "security", "TaskSecurityError: " + violations[0]
    if module is not None:
        vars(module).clear()  # the run's namespace goes with the run (breaks reference cycles)
    guard.modules.clear()
    with open(P["result_path"], "w", encoding="utf-8") as fh:
        json.dump({"status": status, "error": error, "outputs": outputs, "logs": logs,
                   "violations": violations, "task_s": time.perf_counter() - t0}, fh)
'''


def _params(name: str, root: str, entry: str, events: list[dict[str, Any]], wall_time_s: float,
            output_bytes: int, result_path: str) -> str:
    return json.dumps({
        "name": name, "root": root, "entry": entry, "entry_path": os.path.join(root, entry),
        "events": json.dumps(events), "wall_time_s": wall_time_s, "output_bytes": output_bytes,
        "result_path": result_path,
    })


def _run_string(mod: Any, interp: Any, script: str) -> object:
    """None when the script ran; otherwise what went wrong (raised in 3.12, returned in 3.13)."""
    try:
        failure: object = mod.run_string(interp, script)
    except Exception as exc:
        failure = exc
    return failure


class Interpreter:
    """One isolated subinterpreter that runs many tasks, one at a time (see the module notes).

    Not thread-safe: give each worker thread its own (:class:`InterpreterPool` does).
    """

    def __init__(self) -> None:
        mod = _module()
        if mod is None or sys.version_info < (3, 12):
            raise RuntimeError("subinterpreters need Python 3.12+")
        self._mod: Any = mod
        fd, path = tempfile.mkstemp(prefix="walle-si-", suffix=".json")
        os.close(fd)
        self._result_path: str = path
        self.runs: int = 0
        self.id: Any = _create(mod)
        guard_source = Path(__file__).with_name("guard.py").read_text("utf-8")
        failure = _run_string(mod, self.id, f"GUARD_SOURCE = {guard_source!r}\n{_BOOTSTRAP}")
        if failure is not None:
            self.close()
            raise RuntimeError(f"subinterpreter bootstrap failed: {failure}")

    def run(self, name: str, root: str, entry: str, events: list[dict[str, Any]], *,
            wall_time_s: float, output_bytes: int) -> dict[str, Any]:
        """Run one task in a fresh namespace of this interpreter; a result dict."""
        if self.id is None:
            raise RuntimeError("interpreter is closed")
        t0 = time.perf_counter()
        with open(self._result_path, "w", encoding="utf-8"):
            pass  # no stale result from the previous run
        params = _params(name, root, entry, events, wall_time_s, output_bytes, self._result_path)
        failure = _run_string(self._mod, self.id, f"_walle_run(json.loads({params!r}))")
        try:
            with open(self._result_path, encoding="utf-8") as fh:
                result: dict[str, Any] = json.load(fh)
        except (OSError, ValueError):
            result = {"status": "failed", "error": f"subinterpreter failed: {failure}", "outputs": {},
                      "logs": [], "violations": [], "broken": True}
        self.runs += 1
        result["wall_s"] = time.perf_counter() - t0
        return result

    def close(self) -> None:
        if self.id is not None:
            self._mod.destroy(self.id)
            self.id = None
        if os.path.exists(self._result_path):
            os.unlink(self._result_path)

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InterpreterPool:
    """One pooled :class:`Interpreter` per calling thread, created on that thread's first run.

    A run that timed out or broke its interpreter retires it. A worker thread calls
    :meth:`close_current` before it exits (the :class:`~walle_core.vm.Scheduler` does).
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.created = 0

    def run(self, name: str, root: str, entry: str, events: list[dict[str, Any]], *,
            wall_time_s: float, output_bytes: int) -> dict[str, Any]:
        interp: Interpreter | None = getattr(self._local, "interp", None)
        if interp is None:
            interp = self._local.interp = Interpreter()
            with self._lock:
                self.created += 1
        result = interp.run(name, root, entry, events, wall_time_s=wall_time_s, output_bytes=output_bytes)
        if result["status"] == "timeout" or result.get("broken"):
            self.close_current()
        return result

    def close_current(self) -> None:
        """Destroy the calling thread's interpreter, if it has one."""
        interp: Interpreter | None = getattr(self._local, "interp", None)
        self._local.interp = None
        if interp is not None:
            interp.close()


def run(name: str, root: str, entry: str, events: list[dict[str, Any]], *, wall_time_s: float,
        output_bytes: int) -> dict[str, Any]:
    """Run one task in a fresh isolated subinterpreter from the calling thread; a result dict."""
    t0 = time.perf_counter()
    with Interpreter() as interp:
        result = interp.run(name, root, entry, events, wall_time_s=wall_time_s, output_bytes=output_bytes)
    result["wall_s"] = time.perf_counter() - t0
    return result
