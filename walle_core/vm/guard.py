"""The import allow-list and the restricted builtins a task's code runs with.

This is a guard rail, not a security boundary: CPython cannot isolate code inside one process,
and a determined task can find a way around any of these checks. It stops honest mistakes and
makes abuse visible (every refusal is logged with the task's name); the trust boundary is the
bundle signature. See docs/tasks.md.

The module is deliberately standard-library only and takes its error class as a parameter: the
subinterpreter mode executes this very file inside a fresh interpreter, where neither numpy nor
``walle_core`` can be imported.
"""

from __future__ import annotations

import ast
import builtins
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

# Top-level modules a task may import. Their own internal imports (numpy importing os, ...) are
# not affected: the guard only sits in the task's builtins.
ALLOWED_MODULES = frozenset({
    "numpy", "math", "cmath", "json", "re", "collections", "itertools", "functools", "operator",
    "statistics", "random", "time", "datetime", "dataclasses", "typing", "enum", "heapq", "bisect",
    "string", "copy", "decimal", "fractions", "base64", "hashlib", "struct", "zlib", "walle",
})
# Attribute and from-import names refused in task code: numpy's file I/O and its ctypes bridges
# reach the file system and raw memory without going through the task's guarded ``open``.
DENIED_NAMES = frozenset({
    "ctypes", "ctypeslib", "f2py", "distutils", "testing", "fromfile", "tofile", "memmap", "load",
    "loadtxt", "save", "savez", "savez_compressed", "savetxt", "genfromtxt", "fromregex", "DataSource",
})
# Builtins that would hand out the real interpreter (code execution, frames, the debugger).
DENIED_BUILTINS = ("exec", "eval", "compile", "breakpoint", "input", "globals", "locals", "vars",
                   "help", "exit", "quit")
WRITE_MODES = frozenset("wax+")
# CPython 3.11/3.12 keep the AST converter's recursion depth per interpreter, not per thread:
# two threads parsing or compiling an AST at once fail with "AST constructor recursion depth
# mismatch" (a SystemError). VMs on several threads therefore take turns for these two calls.
_AST_LOCK = threading.Lock()
SCRATCH = "scratch"
# Code objects of sources that passed the check, keyed by (filename, source text): a task that
# fires again skips parsing, checking and compiling (immutable code objects; nothing of a run's
# state is kept). Refused sources are never cached, so every attempt is refused and logged.
_CODE_CACHE: dict[tuple[str, str], types.CodeType] = {}
_CODE_CACHE_MAX = 256


class Guard:
    """One task's guard: its builtins, its private module table and its sandbox folder."""

    def __init__(
        self,
        task: str,
        root: str,
        *,
        error: type[Exception],
        on_violation: Callable[[str], None],
        facade: types.ModuleType | None,
        allowed: Iterable[str] = ALLOWED_MODULES,
    ) -> None:
        self.task = task
        self.root = os.path.realpath(root)
        self.scratch = os.path.join(self.root, SCRATCH)
        self.error = error
        self.on_violation = on_violation
        self.facade = facade
        self.allowed = frozenset(allowed)
        self.modules: dict[str, types.ModuleType] = {}  # the task's own .py files, never sys.modules
        self.builtins = self._make_builtins()

    # ------------------------------------------------------------------ refusals

    def deny(self, detail: str) -> Exception:
        message = f"task {self.task!r}: {detail}"
        self.on_violation(message)
        return self.error(message)

    def check_source(self, source: str, filename: str) -> types.CodeType:
        """Compile task source after refusing private attributes and denied names statically."""
        cached = _CODE_CACHE.get((filename, source))
        if cached is not None:
            return cached
        with _AST_LOCK:
            tree = ast.parse(source, filename)
        for node in ast.walk(tree):
            line = getattr(node, "lineno", 0)
            if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr in DENIED_NAMES):
                raise self.deny(f"access to attribute {node.attr!r} is not allowed ({filename}:{line})")
            if isinstance(node, ast.Name) and node.id.startswith("__") and node.id != "__name__":
                raise self.deny(f"name {node.id!r} is not allowed ({filename}:{line})")
            if isinstance(node, ast.ImportFrom) and node.level:
                raise self.deny(f"relative imports are not allowed ({filename}:{line})")
        with _AST_LOCK:
            code = compile(tree, filename, "exec")
        if len(_CODE_CACHE) >= _CODE_CACHE_MAX:
            _CODE_CACHE.clear()
        _CODE_CACHE[(filename, source)] = code
        return code

    # ------------------------------------------------------------------ builtins

    def _make_builtins(self) -> dict[str, Any]:
        table = dict(vars(builtins))
        for name in DENIED_BUILTINS:
            table[name] = self._refuser(name)
        table["__import__"] = self._import
        table["open"] = self._open
        table["getattr"] = self._getattr
        table["hasattr"] = self._hasattr
        table["setattr"] = self._setattr
        table["delattr"] = self._delattr
        return table

    def _refuser(self, name: str) -> Callable[..., Any]:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise self.deny(f"builtin {name}() is not available to tasks")

        return refuse

    def _check_attr(self, name: object) -> None:
        if not isinstance(name, str) or name.startswith("_") or name in DENIED_NAMES:
            raise self.deny(f"access to attribute {name!r} is not allowed")

    def _getattr(self, obj: Any, name: str, *default: Any) -> Any:
        self._check_attr(name)
        return getattr(obj, name, *default)

    def _hasattr(self, obj: Any, name: str) -> bool:
        self._check_attr(name)
        return hasattr(obj, name)

    def _setattr(self, obj: Any, name: str, value: Any) -> None:
        self._check_attr(name)
        setattr(obj, name, value)

    def _delattr(self, obj: Any, name: str) -> None:
        self._check_attr(name)
        delattr(obj, name)

    def _open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, str):
            raise self.deny(f"open() takes a path inside the task folder, not {type(file).__name__}")
        # Relative paths are relative to the task folder, never to the process's cwd.
        path = os.path.realpath(os.path.join(self.root, file))
        writing = bool(WRITE_MODES & set(mode))
        inside = path == self.root or path.startswith(self.root + os.sep)
        if not inside:
            raise self.deny(f"open({file!r}) is outside the task folder")
        if writing and not path.startswith(self.scratch + os.sep):
            raise self.deny(f"open({file!r}, {mode!r}): tasks may only write under {SCRATCH}/")
        if writing:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, mode, *args, **kwargs)

    def _import(
        self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if level:
            raise self.deny("relative imports are not allowed")
        top = name.partition(".")[0]
        if top == "walle" and self.facade is not None:
            if name != "walle" and name.partition(".")[2] not in vars(self.facade):
                raise self.deny(f"import of {name!r} is not allowed")
            return self.facade
        # C code (ndarray.sum -> numpy._core._methods) imports through the *calling frame's*
        # builtins, i.e. this guard, with fromlist ["__doc__"]: private submodules that are
        # already loaded are therefore let through; loading new private ones is not.
        for part in name.split(".")[1:]:
            if part in DENIED_NAMES or (part.startswith("_") and name not in sys.modules):
                raise self.deny(f"import of {name!r} (name {part!r}) is not allowed")
        for part in fromlist or ():
            if part in DENIED_NAMES or (part.startswith("_") and not part.endswith("__")):
                raise self.deny(f"import of {name!r} (name {part!r}) is not allowed")
        if top in self.allowed:
            return builtins.__import__(name, globals, locals, fromlist, level)
        local = self._local(top)
        if local is not None:
            if name != top:
                raise self.deny(f"import of {name!r}: task modules are flat files")
            return local
        raise self.deny(f"import of {name!r} is not allowed (allowed: {', '.join(sorted(self.allowed))})")

    def _local(self, name: str) -> types.ModuleType | None:
        """A .py file of the task itself, loaded into the task's private module table."""
        if name in self.modules:
            return self.modules[name]
        if not name.isidentifier():
            return None
        path = os.path.join(self.root, name + ".py")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as fh:
            code = self.check_source(fh.read(), f"{self.task}/{name}.py")
        module = self.new_module(name)
        self.modules[name] = module  # before exec: lets two task modules import each other
        exec(code, vars(module))
        return module

    def new_module(self, name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__dict__["__builtins__"] = self.builtins
        return module
