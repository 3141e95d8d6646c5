"""Layer norms that exporters spelled out before opset 17 become ``LayerNormalization`` nodes.

torch (and most exporters) write a LayerNorm below opset 17 as nine nodes::

    mean = ReduceMean(x, axes=trailing, keepdims=1)
    d    = Sub(x, mean)
    sq   = Pow(d, 2)              (or Mul(d, d))
    var  = ReduceMean(sq, axes=trailing, keepdims=1)
    s    = Sqrt(Add(var, eps))    (eps a scalar constant, either side of the Add)
    y    = Div(d, s)
    out  = Add(Mul(y, scale), bias)    (the Mul and the Add optional, either operand order)

The fused node decomposes (``walle_core.decompose.norm``) into a ``layer_norm`` composite whose
expansion is the same arithmetic, broadcasting included, so every backend still runs it and a
backend with a layer-norm kernel runs one pass per row instead of seven element-wise passes and
two reductions. The axes must be the trailing ones written as negative numbers (the rank is not
known here); every intermediate must have no other reader and not be a graph output.
"""

from __future__ import annotations

import numpy as np

from walle_core.ir.graph import Graph, Node
from walle_core.plan.rewrite.graph_cache import once_per_graph

_CACHE_ATTR = "_walle_layer_norm_fused"


class _Index:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producer = graph.producers()
        self.readers: dict[str, list[Node]] = {}
        for n in graph.nodes:
            for name in dict.fromkeys(n.inputs):  # a node reading a value twice counts once
                if name:
                    self.readers.setdefault(name, []).append(n)
        self.outputs = {v.name for v in graph.outputs}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant, also behind Identity nodes (torch shares
        equal initializers that way: every LayerNorm's initial weight of ones)."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity" and node.inputs:
            name = node.inputs[0]
            node = self.producer.get(name)
        if name in self.graph.initializers:
            return np.asarray(self.graph.initializers[name])
        if node is None or node.op_type != "Constant":
            return None
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        return None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def only(self, name: str, op_type: str, readers: int = 1) -> Node | None:
        """The node producing ``name`` when it is ``op_type`` and ``name`` is an intermediate
        read by exactly ``readers`` nodes."""
        node = self.producer.get(name)
        if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
            return None
        if name in self.outputs or len(self.readers.get(name, [])) != readers:
            return None
        return node

    def sole_reader(self, name: str, op_type: str) -> Node | None:
        rs = self.readers.get(name, [])
        if len(rs) != 1 or name in self.outputs or rs[0].op_type != op_type:
            return None
        return rs[0]


def _trailing_axes(ix: _Index, node: Node, opset: int) -> int | None:
    """The first axis (negative) of a ReduceMean over trailing axes with kept dims."""
    if int(node.attrs.get("keepdims", 1)) != 1:
        return None
    if opset >= 18 or "axes" not in node.attrs:
        if len(node.inputs) < 2 or not node.inputs[1]:
            return None
        v = ix.const(node.inputs[1])
        axes = None if v is None else [int(a) for a in v.reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs["axes"]]
    if not axes or sorted(axes) != list(range(-len(axes), 0)):
        return None
    return -len(axes)


def _match(ix: _Index, div: Node, opset: int) -> tuple[list[Node], Node] | None:
    """For ``Div(d, Sqrt(Add(var, eps)))``: the nodes replaced and the LayerNormalization
    node that replaces the last of them."""
    d_name, s_name = div.inputs[0], div.inputs[1]
    sqrt = ix.only(s_name, "Sqrt")
    add_eps = None if sqrt is None else ix.only(sqrt.inputs[0], "Add")
    if sqrt is None or add_eps is None:
        return None
    var_side = next((k for k in (0, 1) if ix.scalar(add_eps.inputs[1 - k]) is not None), None)
    if var_side is None:
        return None
    eps = ix.scalar(add_eps.inputs[1 - var_side])
    var = ix.only(add_eps.inputs[var_side], "ReduceMean")
    sub = ix.only(d_name, "Sub", readers=2)
    if var is None or sub is None or eps is None:
        return None
    sq = ix.only(var.inputs[0], "Pow") or ix.only(var.inputs[0], "Mul")
    if sq is None:
        return None
    if sq.op_type == "Pow" and not (sq.inputs[0] == d_name and ix.scalar(sq.inputs[1]) == 2.0):
        return None
    if sq.op_type == "Mul" and sq.inputs != [d_name, d_name]:
        return None
    if {id(n) for n in ix.readers[d_name]} != {id(div), id(sq)}:
        return None
    x_name = sub.inputs[0]
    mean = ix.only(sub.inputs[1], "ReduceMean")
    if mean is None or mean.inputs[0] != x_name:
        return None
    axis = _trailing_axes(ix, mean, opset)
    if axis is None or _trailing_axes(ix, var, opset) != axis:
        return None
    nodes = [mean, sub, sq, var, add_eps, sqrt, div]
    last, scale, bias = div, None, None
    mul = ix.sole_reader(div.outputs[0], "Mul")
    if mul is not None:
        k = mul.inputs.index(div.outputs[0])
        scale, last = mul.inputs[1 - k], mul
        nodes.append(mul)
        add = ix.sole_reader(mul.outputs[0], "Add")
        if add is not None and ix.const(add.inputs[1 - add.inputs.index(mul.outputs[0])]) is not None:
            bias, last = add.inputs[1 - add.inputs.index(mul.outputs[0])], add
            nodes.append(add)
    if scale is None or ix.const(scale) is None:
        return None  # LayerNormalization needs a scale; a computed one stays as written
    inputs = [x_name, scale] + ([bias] if bias is not None else [])
    fused = Node("LayerNormalization", inputs, [last.outputs[0]], {"axis": axis, "epsilon": eps},
                 name=f"{last.label()}/layer_norm")
    return nodes, fused


def fuse_layer_norm(graph: Graph) -> Graph:
    """``graph`` with its spelled-out layer norms as ``LayerNormalization`` nodes (the same
    graph object when it has none). Computed once per graph object."""
    return once_per_graph(graph, _CACHE_ATTR, _rewrite)


def _rewrite(graph: Graph) -> Graph:
    if not any(n.op_type == "ReduceMean" for n in graph.nodes):
        return graph
    ix = _Index(graph)
    replace: dict[int, Node | None] = {}  # id(node) -> its replacement (None: dropped)
    for node in graph.nodes:
        if node.op_type != "Div" or id(node) in replace or node.domain not in ("", "ai.onnx"):
            continue
        found = _match(ix, node, graph.opset)
        if found is None or any(id(n) in replace for n in found[0]):
            continue
        nodes, fused = found
        for n in nodes:
            replace[id(n)] = None
        replace[id(nodes[-1])] = fused
    if not replace:
        return graph
    nodes = [r for n in graph.nodes if (r := replace.get(id(n), n)) is not None]
    # LayerNormalization needs opset 17; below it the decomposer is registered all the same
    return Graph(nodes, graph.inputs, graph.outputs, graph.initializers, graph.opset, graph.name)
