"""The registry's module graph: resources import downwards only (no import loop), and no
module outside ``routes`` and the app factory knows about HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import walle_registry

PACKAGE = Path(walle_registry.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """walle_registry modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out & known


def module_files() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def module_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: _imports(path, known) - {name, "walle_registry"} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_registry_has_no_import_loop() -> None:
    graph = module_graph()
    assert "walle_registry.routes.deployments" in graph and "walle_registry.services.devices" in graph
    assert find_cycle(graph) is None


def test_services_do_not_know_http() -> None:
    files = module_files()
    for name, deps in module_graph().items():
        if name.startswith("walle_registry.services"):
            assert not any(d.startswith(("walle_registry.routes", "walle_registry.app")) for d in deps), name
            assert "fastapi" not in files[name].read_text(), f"{name} imports fastapi"
