"""What a model is made of, as plain data: the public answer to "what is in this file?".

:func:`describe` reads a model file without preparing any backend (``walle inspect`` prints it);
:meth:`Model.describe <walle_core.Model.describe>` and :meth:`Model.describe_plan
<walle_core.Model.describe_plan>` give the same facts for a loaded model and its plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from walle_core.errors import InputError, WalleError
from walle_core.ir.graph import Graph, ValueInfo, subgraphs


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: its name, declared type (``float32[batch,8]``) and, for an input,
    whether it has a default value (an initializer) so that feeding it is optional."""

    name: str
    type: str
    has_default: bool = False


@dataclass(frozen=True)
class StepInfo:
    """One program of a plan: the backend that runs it, its atomic ops and its arena size."""

    backend: str
    ops: int
    arena_bytes: int


@dataclass(frozen=True)
class PlanInfo:
    """The plan for one input signature (its first stage when a sync point follows)."""

    shapes: dict[str, tuple[int, ...]]  # the input shapes it was planned for
    complete: bool  # False: a data-dependent sync point follows this stage
    n_ops: int
    peak_bytes: int
    steps: list[StepInfo]
    kinds: dict[str, int]  # atomic op kind -> count, after the planner's clean-ups
    flops: float


@dataclass(frozen=True)
class ModelInfo:
    """A model's graph: op types (domain-qualified outside the default domain, control-flow
    bodies included), parameters, inputs and outputs."""

    name: str
    opset: int
    op_types: dict[str, int]
    nested_nodes: int  # how many of the nodes sit inside control-flow bodies
    parameters: int  # values over all initializers
    parameter_bytes: int
    parameter_tensors: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    plan: PlanInfo | None = None  # set by describe(..., backend=...) when planning succeeded
    plan_error: str = ""  # why there is no plan, when planning was asked for and failed

    @property
    def nodes(self) -> int:
        return sum(self.op_types.values())


def count_op_types(graph: Graph) -> tuple[Counter[str], int]:
    """Op-type counts over the graph and its control-flow bodies, and how many sit in bodies."""
    counts: Counter[str] = Counter()
    nested = 0
    stack: list[tuple[Graph, bool]] = [(graph, False)]
    while stack:
        g, inner = stack.pop()
        for node in g.nodes:
            custom = node.domain not in ("", "ai.onnx")
            counts[f"{node.domain}.{node.op_type}" if custom else node.op_type] += 1
            nested += inner
            stack.extend((sub, True) for sub in subgraphs(node))
    return counts, nested


def describe_graph(graph: Graph) -> ModelInfo:
    counts, nested = count_op_types(graph)
    defaults = set(graph.initializers)

    def info(values: list[ValueInfo], with_defaults: bool) -> list[TensorInfo]:
        return [TensorInfo(v.name, v.type.describe(), with_defaults and v.name in defaults) for v in values]

    return ModelInfo(
        name=graph.name, opset=graph.opset,
        op_types=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), nested_nodes=nested,
        parameters=sum(int(a.size) for a in graph.initializers.values()),
        parameter_bytes=sum(int(a.nbytes) for a in graph.initializers.values()),
        parameter_tensors=len(graph.initializers),
        inputs=info(graph.inputs, True), outputs=info(graph.outputs, False),
    )


def example_feeds(inputs: list[ValueInfo],
                  shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Zero arrays of the declared shapes: ``shapes`` overrides an input's shape; a symbolic or
    unknown dim is 1. An input of unknown rank needs an override."""
    shapes = shapes or {}
    feeds: dict[str, np.ndarray] = {}
    for vi in inputs:
        if vi.name in shapes:
            shape = tuple(shapes[vi.name])
        elif vi.type.shape is None:
            raise InputError(f"input {vi.name!r} has no declared shape; pass its shape to plan for")
        else:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in vi.type.shape)
        feeds[vi.name] = np.zeros(shape, vi.type.dtype)
    return feeds


def describe(model: str | Path | bytes, *, backend: str | None = None) -> ModelInfo:
    """Read ``model`` (ONNX or TFLite, path or bytes) and describe it. With ``backend``, also plan it for
    :meth:`~walle_core.Model.example_feeds` on that backend (``"auto"``: the search); a model
    that cannot be planned still gets its description, with ``plan_error`` saying why."""
    from walle_core.frontend import import_graph
    from walle_core.runtime.model import Model  # model.py imports this module

    graph = import_graph(model)
    info = describe_graph(graph)
    if backend is None:
        return info
    try:
        loaded = Model(graph, backend=backend)
        return replace(info, plan=loaded.describe_plan(loaded.example_feeds()))
    except WalleError as exc:
        return replace(info, plan_error=str(exc))
