"""Decomposition of framework ops into the atomic op set, one module per op family.

Each family module registers functions with :func:`register`; a decomposer receives a
:class:`~walle_core.decompose.builder.Builder`, the node, its input tensors (None for omitted
optional inputs) and a :class:`NodeContext`, and returns the node's output tensors.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from walle_core.atomic import Tensor
from walle_core.decompose.builder import Builder, DecomposeError, NeedValue
from walle_core.errors import UnsupportedOpError
from walle_core.ir.graph import Graph, Node

SubgraphRunner = Callable[[Graph, Sequence[Tensor]], list[Tensor]]


@dataclass
class NodeContext:
    node: Node
    opset: int
    run_subgraph: SubgraphRunner

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    def unsupported(self, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.node.op_type, self.node.label(), self.opset, detail)


Decomposer = Callable[[Builder, list[Tensor | None], NodeContext], list[Tensor]]
_REGISTRY: dict[tuple[str, str], Decomposer] = {}

FAMILIES = (
    "elementwise", "movement", "reduce", "linalg", "conv", "pool", "norm", "index", "rnn",
    "control", "misc", "resize", "attention", "loss", "quant", "quant_linear", "quant_ms", "spectral",
    "stateful", "sampling", "vision", "text", "ml", "contrib",
)


def register(*op_types: str, domain: str = "") -> Callable[[Decomposer], Decomposer]:
    def deco(fn: Decomposer) -> Decomposer:
        for op in op_types:
            if (domain, op) in _REGISTRY and _REGISTRY[(domain, op)] is not fn:
                raise RuntimeError(f"{op} is decomposed twice ({_REGISTRY[(domain, op)].__module__}, {fn.__module__})")
            _REGISTRY[(domain, op)] = fn
        return fn

    return deco


_LOADED = threading.Event()
_LOAD_LOCK = threading.RLock()


def _load_families() -> None:
    # Once, under a lock: a second thread loading a model must not look ops up in a registry
    # that the first thread is still filling (the task VM loads models on several workers).
    if _LOADED.is_set():
        return
    with _LOAD_LOCK:
        if not _LOADED.is_set():
            for fam in FAMILIES:
                importlib.import_module(f"walle_core.decompose.{fam}")
            _LOADED.set()


def lookup(node: Node, opset: int) -> Decomposer:
    _load_families()
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    fn = _REGISTRY.get((domain, node.op_type))
    if fn is None:
        raise UnsupportedOpError(node.op_type, node.label(), opset, "no decomposition for this op")
    return fn


def supported_ops() -> list[str]:
    _load_families()
    return sorted(op if not d else f"{d}.{op}" for d, op in _REGISTRY)


__all__ = [
    "Builder", "DecomposeError", "NeedValue", "NodeContext", "lookup", "register", "supported_ops",
]
