"""Lower a high-level graph, for concrete input shapes, into a list of atomic ops.

Lowering is deterministic: the same graph, input signature and known run-time values produce
the same ops over the same tensor ids. That is what makes sync points cheap to support: when a
decomposition needs a run-time value (``NeedValue``: a data-dependent shape, an ``If``
condition, a ``Loop`` trip count), the planner runs the ops emitted so far, reads the value and
lowers again with it known; the replayed prefix is recognised by id and skipped.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, lookup
from walle_core.decompose.builder import Builder, DecomposeError, FoldFn, NeedValue
from walle_core.errors import InvalidModelError, MemoryLimitError, UnsupportedOpError, WalleError
from walle_core.ir.graph import Graph, Node
from walle_core.plan.rewrite.bn_fold import fold_batch_norms
from walle_core.plan.rewrite.layer_norm import fuse_layer_norm
from walle_core.plan.rewrite.qdq import fuse_qdq

Env = MutableMapping[str, A.Tensor]


@dataclass
class Lowered:
    ops: list[A.Op]
    inputs: dict[str, A.Tensor]
    outputs: list[A.Tensor]
    complete: bool  # False: stopped at a sync point, ``need`` lists the tensors to read
    need: list[A.Tensor]


class Lowering:
    def __init__(self, graph: Graph, fold: FoldFn, known: dict[int, np.ndarray], qdq: bool = True) -> None:
        # QDQ islands become integer ops first (``qdq=False`` lowers the graph as written);
        # spelled-out layer norms become LayerNormalization nodes (their composite), inference
        # BatchNormalizations, and Mul/Add/Sub of per-channel constants, after a conv become
        # part of its weights (rewrite.bn_fold)
        self.graph = fold_batch_norms(fuse_layer_norm(fuse_qdq(graph)[0] if qdq else graph))
        self.b = Builder(fold, known)

    def run(self, signature: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> Lowered:
        env: dict[str, A.Tensor] = {}
        inputs: dict[str, A.Tensor] = {}
        for name, value in self.graph.initializers.items():
            env[name] = self.b.const(value)
        for vi in self.graph.inputs:
            if vi.name in signature:
                shape, dtype = signature[vi.name]
                t = self.b.tensor(shape, dtype)
                t.name = vi.name
                env[vi.name] = inputs[vi.name] = t
        try:
            outputs = self.lower_graph(self.graph, env)
        except NeedValue as need:
            return Lowered(self.b.ops, inputs, [], False, need.tensors)
        return Lowered(self.b.ops, inputs, outputs, True, [])

    def lower_graph(self, graph: Graph, env: Env) -> list[A.Tensor]:
        for node in graph.nodes:
            self.lower_node(node, env, graph.opset)
        missing = [v.name for v in graph.outputs if v.name not in env]
        if missing:
            raise InvalidModelError(f"graph {graph.name!r} never produces outputs {missing}")
        return [env[v.name] for v in graph.outputs]

    def lower_node(self, node: Node, env: Env, opset: int) -> None:
        try:
            ins = [self._lookup(env, name, node) if name else None for name in node.inputs]
        except KeyError as exc:
            raise InvalidModelError(f"node {node.label()!r} reads undefined value {exc}") from None
        fn = lookup(node, opset)

        def run_subgraph(sub: Graph, args: Sequence[A.Tensor]) -> list[A.Tensor]:
            scope: Env = ChainMap({}, env)
            for vi, t in zip(sub.inputs, args, strict=False):
                scope[vi.name] = t
            for name, value in sub.initializers.items():
                scope[name] = self.b.const(value)
            return self.lower_graph(sub, scope)

        ctx = NodeContext(node, opset, run_subgraph)
        try:
            outs = fn(self.b, ins, ctx)
        except (NeedValue, UnsupportedOpError):
            raise
        except MemoryLimitError as exc:  # name the innermost node only (bodies nest)
            raise (exc if exc.what.startswith("node ") else exc.at(f"node {node.label()!r} ({node.op_type})")) from None
        except DecomposeError as exc:
            raise InvalidModelError(f"node {node.label()!r} ({node.op_type}): {exc}") from None
        except WalleError:
            raise
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError) as exc:
            shapes = [None if t is None else list(t.shape) for t in ins]
            raise InvalidModelError(
                f"node {node.label()!r} ({node.op_type}) rejected inputs {shapes}: {exc}"
            ) from exc
        for name, t in zip(node.outputs, outs, strict=False):
            if name:
                env[name] = t

    @staticmethod
    def _lookup(env: Env, name: str, node: Node) -> A.Tensor:
        return env[name]
