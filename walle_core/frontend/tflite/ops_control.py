"""Control flow between TFLite subgraphs: IF -> ONNX If (branches as nested graphs reading the
operands from the enclosing scope), WHILE -> ONNX Loop (the condition subgraph is inlined once
before the loop and once at the end of the body), CALL_ONCE is not mapped (it initialises
resource variables, which Walle does not hold)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from walle_core.errors import ModelLoadError
from walle_core.frontend.tflite.context import OpContext, maps, run_operators
from walle_core.frontend.tflite.convert import OPSET, Emitter, tensor_type
from walle_core.ir.graph import Graph, Node, TensorType, ValueInfo


def _subgraph_emitter(c: OpContext, index: int, into: Emitter | None) -> Emitter:
    subs = c.em.model.subgraphs
    if not 0 <= index < len(subs):
        raise c.fail(f"refers to subgraph {index} of {len(subs)}")
    if index in c.em.ancestry:
        raise ModelLoadError(f"TFLite subgraph {index} calls itself (through {list(c.em.ancestry)})")
    return Emitter(c.em.model, subs[index], c.em.used, parent=c.em, into=into)


def _graph(em: Emitter, inputs: list[ValueInfo], results: Sequence[str], types: Sequence[TensorType]) -> Graph:
    """A nested graph over ``em``'s nodes whose outputs are fresh copies of ``results`` (an
    output may be an enclosing-scope name or a body input, which a graph cannot list as its own)."""
    outs = []
    for name, ty in zip(results, types, strict=True):
        out = em.fresh(f"{name}:out")
        em.nodes.append(Node("Identity", [name], [out], {}, out))
        outs.append(ValueInfo(out, ty))
    return Graph(em.nodes, inputs, outs, em.inits, OPSET, em.sub.name)


def _scalar_bool(em: Emitter, name: str) -> str:
    return em.one("Reshape", [name, em.ints([], name + ":scalar_shape")], name + ":scalar")


@maps("IF")
def if_(c: OpContext) -> None:
    n = len(c.op.outputs)
    args = [c.stored(i) for i in range(1, len(c.op.inputs))]
    cond = _scalar_bool(c.em, c.stored(0))
    types = [tensor_type(c.out_t(j), c.out_t(j).name) for j in range(n)]
    branches = []
    for key in ("ThenSubgraphIndex", "ElseSubgraphIndex"):
        em = _subgraph_emitter(c, int(c.opt(key, -1)), None)
        results = run_operators(em, args)
        if len(results) != n:
            raise c.fail(f"{key} subgraph has {len(results)} outputs for {n}")
        branches.append(_graph(em, [], results, types))
    outs = c.node("If", [cond], n, then_branch=branches[0], else_branch=branches[1])
    for j, name in enumerate(outs):
        c.out(name, j=j, stored=True)


@maps("WHILE")
def while_(c: OpContext) -> None:
    n = len(c.op.inputs)
    if len(c.op.outputs) != n:
        raise c.fail(f"{n} loop variables but {len(c.op.outputs)} outputs")
    cond_index, body_index = int(c.opt("CondSubgraphIndex", -1)), int(c.opt("BodySubgraphIndex", -1))
    start = [c.stored(i) for i in range(n)]
    (cond0,) = run_operators(_subgraph_emitter(c, cond_index, c.em), start)  # inlined here
    body = _subgraph_emitter(c, body_index, None)
    iteration, cond_in = body.fresh("iteration"), body.fresh("cond_in")
    carried = [body.fresh(f"{c.t(i).name}:carried") for i in range(n)]
    types = [tensor_type(c.t(i), c.t(i).name) for i in range(n)]
    results = run_operators(body, carried)
    if len(results) != n:
        raise c.fail(f"body subgraph has {len(results)} outputs for {n} loop variables")
    inner = Emitter(c.em.model, c.em.model.subgraphs[cond_index], c.em.used, parent=body, into=body)
    (cond_out,) = run_operators(inner, results)
    inputs = [ValueInfo(iteration, TensorType(np.dtype(np.int64), ())),
              ValueInfo(cond_in, TensorType(np.dtype(np.bool_), ())),
              *(ValueInfo(name, ty) for name, ty in zip(carried, types, strict=True))]
    graph = _graph(body, inputs, [_scalar_bool(body, cond_out), *results],
                   [TensorType(np.dtype(np.bool_), ()), *types])
    outs = c.node("Loop", ["", _scalar_bool(c.em, cond0), *start], n, body=graph)
    for j, name in enumerate(outs):
        c.out(name, j=j, stored=True)
