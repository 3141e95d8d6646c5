"""The high-level IR: a graph of framework-level nodes (ONNX op types) over named values.

Shapes here may be symbolic (a ``str`` dim); the planner makes them concrete per run signature
and decomposes every node into the atomic op set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str | None


@dataclass(frozen=True)
class TensorType:
    dtype: np.dtype
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"

    def matches(self, shape: tuple[int, ...]) -> bool:
        if self.shape is None:
            return True
        if len(self.shape) != len(shape):
            return False
        return all(not isinstance(d, int) or d == s for d, s in zip(self.shape, shape, strict=True))


@dataclass(frozen=True)
class ValueInfo:
    name: str
    type: TensorType


@dataclass
class Node:
    op_type: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    def label(self) -> str:
        return self.name or f"{self.op_type}->{','.join(self.outputs)}"


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    name: str = "graph"

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def outer_names(self) -> set[str]:
        """Names a subgraph reads from enclosing scopes (used neither as input nor produced)."""
        local = {v.name for v in self.inputs} | set(self.initializers)
        local |= {o for n in self.nodes for o in n.outputs}
        needed: set[str] = set()
        for n in self.nodes:
            needed |= {i for i in n.inputs if i}
            for sub in subgraphs(n):
                needed |= sub.outer_names()
        needed |= {v.name for v in self.outputs}
        return needed - local


def subgraphs(node: Node) -> list[Graph]:
    found: list[Graph] = []
    for value in node.attrs.values():
        if isinstance(value, Graph):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, Graph))
    return found


def remove_dead_nodes(graph: Graph) -> int:
    """Drop nodes whose outputs reach no graph output. Returns how many were removed."""
    live = {v.name for v in graph.outputs}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs if o):
            kept.append(node)
            live.update(i for i in node.inputs if i)
            for sub in subgraphs(node):
                live |= sub.outer_names()
    removed = len(graph.nodes) - len(kept)
    graph.nodes = list(reversed(kept))
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in live}
    return removed
