"""A graph rewrite's result kept on the graph object it was computed from, so it lives exactly as
long as the graph and every plan built from that graph shares one rewrite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar, cast

from walle_core.ir.graph import Graph

T = TypeVar("T")
_LOCK = threading.RLock()  # re-entrant: one rewrite may call another on the same graph


def once_per_graph(graph: Graph, attr: str, compute: Callable[[Graph], T]) -> T:
    """``compute(graph)``, computed once per graph object and stored on it under ``attr``."""
    cached = graph.__dict__.get(attr)
    if cached is not None:
        return cast(T, cached)
    with _LOCK:
        cached = graph.__dict__.get(attr)
        if cached is None:
            cached = compute(graph)
            graph.__dict__[attr] = cached
    return cast(T, cached)
