"""Subinterpreter mode (Python 3.12+): pure-Python task code on a per-interpreter GIL.

Each run gets a fresh isolated interpreter (own GIL, own modules), so pure-Python feature code
of several tasks runs truly in parallel; numpy and the engine cannot be imported there (they do
not support subinterpreters), so tasks in this mode see a reduced facade: ``events``, ``output``
(JSON values), ``log``, ``task``. The interpreter executes ``guard.py`` itself, so the same
allow-list and restricted builtins apply.

Wall time: an exception cannot be injected across interpreters, so a watchdog thread *inside* the
subinterpreter switches on ``sys.monitoring`` JUMP and PY_START events at the deadline; the
callback raises in the task's thread at its next loop iteration or call. Monitoring costs nothing
until it is switched on.

This module is standard-library only and may be loaded by file path from an interpreter that has
no numpy (the benchmarks and tests do that with the pyenv 3.12/3.13 builds).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
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


_BOOTSTRAP = r'''
import json, sys, threading, time, traceback, types
P = json.loads(PARAMS)
_g = {"__name__": "walle_guard"}
exec(compile(GUARD_SOURCE, "walle_core/vm/guard.py", "exec"), _g)

class TaskSecurityError(Exception):
    pass

class OutputQuotaError(Exception):
    pass

class _Stop(BaseException):
    pass

_violations, _logs, _outputs, _size = [], [], {}, [0]

def _output(name, value):
    text = json.dumps(value, allow_nan=False)
    previous = len(json.dumps(_outputs[name])) if name in _outputs else 0
    if _size[0] - previous + len(text) > P["output_bytes"]:
        raise OutputQuotaError(f"task {P['name']!r}: outputs exceed {P['output_bytes']} bytes")
    _size[0] += len(text) - previous
    _outputs[name] = json.loads(text)

_facade = types.ModuleType("walle")
_facade.events = lambda: json.loads(P["events"])
_facade.output = _output
_facade.log = lambda *parts: _logs.append(" ".join(str(p) for p in parts))
_facade.task = P["name"]
_guard = _g["Guard"](P["name"], P["root"], error=TaskSecurityError, on_violation=_violations.append,
                     facade=_facade, allowed=_g["ALLOWED_MODULES"] - {"numpy"})

_task_thread = threading.get_ident()
_armed = [False]
_done = threading.Event()

def _on_event(*_args):
    if _armed[0] and threading.get_ident() == _task_thread:
        raise _Stop()

def _watch():
    if not _done.wait(P["wall_time_s"]):
        _M = sys.monitoring
        _M.use_tool_id(4, "walle-watchdog")
        _M.register_callback(4, _M.events.JUMP, _on_event)
        _M.register_callback(4, _M.events.PY_START, _on_event)
        _armed[0] = True
        _M.set_events(4, _M.events.JUMP | _M.events.PY_START)

_status, _error = "ok", None
_t0 = time.perf_counter()
_watcher = threading.Thread(target=_watch)  # subinterpreters refuse daemon threads
_watcher.start()
try:
    _mod = _guard.new_module("__main__")
    with open(P["entry_path"], encoding="utf-8") as _fh:
        _code = _guard.check_source(_fh.read(), P["name"] + "/" + P["entry"])
    exec(_code, vars(_mod))
    if callable(vars(_mod).get("main")):
        vars(_mod)["main"]()
except _Stop:
    _status = "timeout"
    _error = f"task {P['name']!r} ran past its {P['wall_time_s']:g} s wall-time quota and was stopped"
except BaseException as _exc:
    _status = {"TaskSecurityError": "security", "OutputQuotaError": "output_quota",
               "MemoryError": "memory"}.get(type(_exc).__name__, "failed")
    _error = f"{type(_exc).__name__}: {_exc}"
_armed[0] = False  # first: nothing below may be interrupted
_done.set()
_watcher.join()
if _status == "ok" and _violations:
    _status, _error = "security", "TaskSecurityError: " + _violations[0]
with open(P["result_path"], "w", encoding="utf-8") as _fh:
    json.dump({"status": _status, "error": _error, "outputs": _outputs, "logs": _logs,
               "violations": _violations, "task_s": time.perf_counter() - _t0}, _fh)
'''


def run(name: str, root: str, entry: str, events: list[dict[str, Any]], *, wall_time_s: float,
        output_bytes: int) -> dict[str, Any]:
    """Run one task in a fresh isolated subinterpreter from the calling thread; a result dict."""
    mod = _module()
    if mod is None or sys.version_info < (3, 12):
        raise RuntimeError("subinterpreters need Python 3.12+")
    guard_source = Path(__file__).with_name("guard.py").read_text("utf-8")
    fd, result_path = tempfile.mkstemp(prefix="walle-si-", suffix=".json")
    os.close(fd)
    params = json.dumps({
        "name": name, "root": root, "entry": entry, "entry_path": os.path.join(root, entry),
        "events": json.dumps(events), "wall_time_s": wall_time_s, "output_bytes": output_bytes,
        "result_path": result_path,
    })
    # Parameters travel as literals in the script: portable across the 3.12 and 3.13 APIs.
    script = f"PARAMS = {params!r}\nGUARD_SOURCE = {guard_source!r}\n{_BOOTSTRAP}"
    t0 = time.perf_counter()
    interp = _create(mod)
    try:
        failure = mod.run_string(interp, script)
    except Exception as exc:  # 3.12 raises RunFailedError for an error outside the task
        failure = exc
    finally:
        mod.destroy(interp)
    try:
        with open(result_path, encoding="utf-8") as fh:
            result: dict[str, Any] = json.load(fh)
    except (OSError, ValueError):
        result = {"status": "failed", "error": f"subinterpreter failed: {failure}", "outputs": {},
                  "logs": [], "violations": []}
    finally:
        os.unlink(result_path)
    result["wall_s"] = time.perf_counter() - t0
    return result
