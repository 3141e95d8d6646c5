"""The package layering of docs/architecture.md, read from the source: who imports whom.

Every ``import`` statement of every installed ``walle_*`` package counts (also the ones inside
functions); module-level cycles count only imports that run at module scope.
"""

from __future__ import annotations

import ast
import functools
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Which installed packages each package may import (besides itself and third-party libraries).
ALLOWED = {
    "walle_core": set(),
    "walle_reference": {"walle_core"},
    "walle_cpu": {"walle_core"},
    "walle_opencl": {"walle_core"},
    "walle_vulkan": {"walle_core"},
    "walle_metal": {"walle_core"},
    "walle_registry": {"walle_core"},
    "walle_device": {"walle_core"},
    "walle_demo": {"walle_core", "walle_device", "walle_registry"},
    "walle_bench": {"walle_core", "walle_cpu"},
    "walle_cli": {"walle_core", "walle_registry", "walle_device", "walle_demo", "walle_bench"},
}


def modules() -> dict[str, Path]:
    """Module name -> file, for every package folder ``pyproject.toml`` maps."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: dict[str, Path] = {}
    for where in config["tool"]["setuptools"]["packages"]["find"]["where"]:
        for init in sorted((ROOT / where).glob("walle_*/__init__.py")):
            base = init.parent.parent
            for f in init.parent.rglob("*.py"):
                parts = f.relative_to(base).with_suffix("").parts
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


MODULES = modules()


@functools.cache
def bound_names(module: str) -> frozenset[str]:
    """Names a module binds at module scope (so ``from module import name`` needs no submodule)."""
    names: set[str] = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return frozenset(names)


def source_of(mod: str, name: str) -> str:
    """The module ``from mod import name`` loads: mod itself when it binds ``name``, else mod.name."""
    if mod in MODULES and name in bound_names(mod):
        return mod
    return f"{mod}.{name}" if f"{mod}.{name}" in MODULES else mod


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module scope?) for every import statement of one module."""
    tree = ast.parse(path.read_text())
    scoped = {id(n) for n in tree.body}
    scoped |= {id(c) for n in tree.body if isinstance(n, ast.If | ast.Try) for c in n.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                mod = ".".join(pkg[: len(pkg) - node.level + 1] + ([mod] if mod else []))
            targets = [source_of(mod, a.name) for a in node.names]
        else:
            continue
        found += [(t, id(node) in scoped) for t in targets]
    return found


def test_every_package_imports_only_the_layers_below_it() -> None:
    assert set(ALLOWED) <= {m.split(".")[0] for m in MODULES}, "a package folder is not in pyproject.toml"
    wrong: list[str] = []
    for name, path in MODULES.items():
        own = name.split(".")[0]
        for target, _ in imports(name, path):
            top = target.split(".")[0]
            if top == "tests" or (top.startswith("walle_") and top != own and top not in ALLOWED[own]):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


# walle_core's public modules (docs/architecture.md); the rest of the engine is internal.
PUBLIC = {"walle_core", "walle_core.plugins", "walle_core.search", "walle_core.backend", "walle_core.atomic",
          "walle_core.hookspecs", "walle_core.kernels", "walle_core.task", "walle_core.vm", "walle_core.pipeline",
          "walle_core.tools", "walle_core.flags", "walle_core.errors"}


@pytest.mark.parametrize("package", ["walle_cli", "walle_device", "walle_demo"])
def test_the_cli_agent_and_demo_use_only_public_engine_modules(package: str) -> None:
    internal = sorted({f"{n} imports {t}" for n, p in MODULES.items() if n.split(".")[0] == package
                       for t, _ in imports(n, p) if t.startswith("walle_core") and t not in PUBLIC})
    assert not internal, internal


@pytest.mark.parametrize("package", ["walle_core", "walle_device"])
def test_the_engine_and_the_agent_leave_optional_dependencies_to_their_extras(package: str) -> None:
    # httpx is the device extra's: the engine must not need it; fastapi is the registry's.
    banned = {"walle_core": {"httpx", "fastapi", "typer", "rich"}, "walle_device": {"fastapi", "typer"}}[package]
    used = {t.split(".")[0] for n, p in MODULES.items() if n.split(".")[0] == package for t, _ in imports(n, p)}
    assert not used & banned


def cycles(graph: dict[str, set[str]], nodes: list[str]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively: any component of two or more is a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = stack[stack.index(v):]
                del stack[stack.index(v):]
                if len(component) > 1:
                    loops.append(sorted(component))
    return loops


def test_cycles_finds_a_loop_and_only_the_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set()}
    assert cycles(graph, sorted(graph)) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}, ["a", "b"]) == []


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, at_module_scope in imports(name, path):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if at_module_scope and target and target != name:
                graph[name].add(target)
    assert not cycles(graph, sorted(MODULES)), cycles(graph, sorted(MODULES))
