"""Control flow between TFLite subgraphs: IF -> ONNX If (branches as nested graphs reading the
operands from the enclosing scope), WHILE -> ONNX Loop (the condition subgraph is inlined once
before the loop and once at the end of the body), and resource variables: CALL_ONCE's
initialisation subgraph is evaluated at load (it may only assign constants), so that
READ_VARIABLE reads a constant. A variable assigned anywhere else would carry a value from one
run to the next, which Walle's runs (pure functions of their inputs) do not keep: refused."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from walle_core.errors import ModelLoadError
from walle_core.frontend.tflite.context import OpContext, maps, run_operators
from walle_core.frontend.tflite.convert import OPSET, Emitter, op_error, tensor_type
from walle_core.frontend.tflite.reader import TflOperator
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


def _variable_key(op: TflOperator) -> str:
    """A resource variable's identity: VAR_HANDLE's container and shared name."""
    def text(v: object) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")

    opts = op.options or {}
    return f"{text(opts.get('Container'))}/{text(opts.get('SharedName'))}"


@maps("CALL_ONCE")
def call_once(c: OpContext) -> None:
    """Runs the initialisation subgraph once per model (as LiteRT does once per interpreter), at
    load: VAR_HANDLEs and ASSIGN_VARIABLEs of constants (fp16 / sparse constants included)."""
    index = int(c.opt("InitSubgraphIndex", -1))
    if index in c.em.initialised:
        return
    em = _subgraph_emitter(c, index, None)
    if em.sub.inputs or em.sub.outputs:
        raise c.fail(f"initialisation subgraph {index} has inputs or outputs")
    em.fold_constants()
    for op in em.sub.operators:
        if op.index in em.skipped:
            continue
        if op.name == "VAR_HANDLE" and len(op.outputs) == 1:
            em.handles[op.outputs[0]] = _variable_key(op)
        elif op.name == "ASSIGN_VARIABLE" and len(op.inputs) == 2:
            handle, value = op.inputs
            if handle not in em.handles:
                raise op_error(op, em.sub, "assigns through a tensor that is not a VAR_HANDLE")
            if value not in em.consts:
                raise op_error(op, em.sub, "assigns a value computed at run time; Walle evaluates "
                                           "initialisation subgraphs at load and takes constants only")
            em.variables[em.handles[handle]] = em.consts[value]
        else:
            raise op_error(op, em.sub, f"in initialisation subgraph {index}: only VAR_HANDLE and "
                                       "ASSIGN_VARIABLE of constants are evaluated at load")
    c.em.initialised.add(index)


@maps("VAR_HANDLE")
def var_handle(c: OpContext) -> None:
    c.em.handles[c.op.outputs[0]] = _variable_key(c.op)


@maps("READ_VARIABLE")
def read_variable(c: OpContext) -> None:
    key = c.em.handles.get(c.op.inputs[0]) if c.op.inputs else None
    if key is None:
        raise c.fail("reads through a tensor that is not a VAR_HANDLE")
    value = c.em.variables.get(key)
    if value is None:
        raise c.fail(f"reads resource variable {key!r}, which no CALL_ONCE initialisation assigns")
    out = c.out_t()
    if (out.dtype is not None and out.dtype != value.raw.dtype) or \
            (out.shape and tuple(out.shape) != value.raw.shape):
        raise c.fail(f"reads {value.raw.dtype}{list(value.raw.shape)} from variable {key!r} "
                     f"into {out.type_name}{list(out.shape)}")
    c.em.consts[c.op.outputs[0]] = value


@maps("ASSIGN_VARIABLE")
def assign_variable(c: OpContext) -> None:
    key = c.em.handles.get(c.op.inputs[0], "?") if c.op.inputs else "?"
    raise c.fail(f"assigns resource variable {key!r} at run time: the value would carry over to "
                 "the next run, and Walle's runs are pure functions of their inputs")
