"""A parsed TFLite model -> :class:`Graph`: picks the subgraph (by signature), names inputs and
outputs after the signature, and runs every operator's mapper."""

from __future__ import annotations

from walle_core.errors import ModelLoadError
from walle_core.frontend.tflite import (  # noqa: F401  (register mappers)
    ops_control,
    ops_detection,
    ops_elementwise,
    ops_nn,
    ops_rnn,
    ops_shape,
)
from walle_core.frontend.tflite.context import run_operators
from walle_core.frontend.tflite.convert import NATIVE, OPSET, Emitter, tensor_type
from walle_core.frontend.tflite.reader import TflModel, TflSignature, TflSubgraph
from walle_core.ir.graph import Graph, Node, ValueInfo, remove_dead_nodes, subgraphs


def pick_signature(model: TflModel, key: str | None) -> TflSignature | None:
    if key is not None:
        for s in model.signatures:
            if s.key == key:
                return s
        known = ", ".join(repr(s.key) for s in model.signatures) or "none"
        raise ModelLoadError(f"TFLite model has no signature {key!r} (signatures: {known})")
    for s in model.signatures:
        if s.subgraph == 0:
            return s
    return model.signatures[0] if model.signatures else None


def convert(model: TflModel, signature: str | None = None) -> Graph:
    sig = pick_signature(model, signature)
    sub = model.subgraphs[sig.subgraph if sig is not None else 0]
    if sig is not None:
        inputs, outputs = sig.inputs, sig.outputs
    else:
        inputs = [(sub.tensors[t].name, t) for t in sub.inputs]
        outputs = [(sub.tensors[t].name, t) for t in sub.outputs]
    graph = convert_subgraph(model, sub, inputs, outputs)
    if sig is not None and sig.key:
        graph.name = sig.key
    return graph


def convert_subgraph(model: TflModel, sub: TflSubgraph, inputs: list[tuple[str, int]],
                     outputs: list[tuple[str, int]]) -> Graph:
    names = [n for n, _ in inputs + outputs]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"TFLite subgraph {sub.index} names an input or output twice: {names}")
    em = Emitter(model, sub, set(names))
    in_infos = [ValueInfo(name, tensor_type(sub.tensors[t], name)) for name, t in inputs]
    # A signature may list the subgraph's inputs in another order: bind by tensor, not position.
    by_tensor = {t: name for name, t in inputs}
    missing = [sub.tensors[t].name for t in sub.inputs if t not in by_tensor]
    if missing:
        raise ModelLoadError(f"TFLite signature does not name the subgraph inputs {missing}")
    results = run_operators(em, [by_tensor[t] for t in sub.inputs])
    produced = dict(zip(sub.outputs, results, strict=True))
    out_infos = []
    final: dict[str, str] = {}  # IR name -> the output name it was renamed to
    for name, t in outputs:
        src = produced[t] if t in produced else em.value(t, NATIVE, real=False)
        producer = next((n for n in em.nodes if src in n.outputs), None)
        if src in final:
            em.nodes.append(Node("Identity", [final[src]], [name], {}, name))
        elif producer is not None:
            _rename(em.nodes, src, name)  # the producing node writes the output name directly
            final[src] = name
        else:  # an input or a constant passed straight through
            em.nodes.append(Node("Identity", [src], [name], {}, name))
        out_infos.append(ValueInfo(name, tensor_type(sub.tensors[t], name)))
    graph = Graph(em.nodes, in_infos, out_infos, em.inits, OPSET, sub.name)
    remove_dead_nodes(graph)
    return graph


def _rename(nodes: list[Node], old: str, new: str) -> None:
    """Rename a value everywhere, control-flow bodies included (they read enclosing names)."""
    for n in nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        n.outputs = [new if o == old else o for o in n.outputs]
        for body in subgraphs(n):
            _rename(body.nodes, old, new)
            body.outputs = [ValueInfo(new, v.type) if v.name == old else v for v in body.outputs]
