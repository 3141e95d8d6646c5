"""Inference ``BatchNormalization`` after a ``Conv`` or ``ConvTranspose`` with constant weights
becomes part of that node's weights and bias; so do a ``Mul``, ``Add`` or ``Sub`` of a constant
that is one value or one value per output channel (PaddlePaddle's re-parameterised blocks and
learnable affine blocks, and converters that spell a BatchNorm out, write these).

torch folds a BatchNorm into the Conv before it when it exports in eval mode, but not into a
ConvTranspose (a decoder's or a segmentation head's upsampling: ConvTranspose, BatchNorm,
ReLU), and other exporters or training-mode exports leave it after either. As its own node it
is a per-channel multiply-add pass over the layer's output after the conv wrote it, and it
stands between the conv and its activation, which a backend would otherwise fuse as the
conv's epilogue. Folded: ``w'[o] = w[o] * k[o]``, ``b' = b * k + (beta - mean * k)`` with
``k = gamma / sqrt(var + eps)`` (in float64, then the weights' dtype).

The conv's output must have the BatchNormalization as its only reader and not be a graph
output; the statistics, scale, bias, weights and any conv bias must be constants (initializers,
``Constant`` nodes, or ``Identity`` nodes of them: those stay for any other reader).
"""

from __future__ import annotations

import numpy as np

from walle_core.ir.graph import Graph, Node
from walle_core.plan.rewrite.graph_cache import once_per_graph

_CACHE_ATTR = "_walle_batch_norm_folded"
_CONVS = ("Conv", "ConvTranspose")


def fold_batch_norms(graph: Graph) -> Graph:
    """``graph`` with every foldable BatchNormalization merged into the conv before it (the
    same graph object when there is none). Computed once per graph object."""
    return once_per_graph(graph, _CACHE_ATTR, _rewrite)


def _scaled(conv: Node, w: np.ndarray, k: np.ndarray) -> np.ndarray | None:
    """The conv's weights with output channel ``o`` scaled by ``k[o]``."""
    group = int(conv.attrs.get("group", 1))
    if conv.op_type == "Conv":
        if w.shape[0] != k.size:
            return None
        return w * k.reshape((-1,) + (1,) * (w.ndim - 1))
    # ConvTranspose: (C_in, C_out / group, ...); output channel g * (C_out / group) + j
    per = w.shape[1]
    if per * group != k.size or w.shape[0] % group:
        return None
    ws = w.reshape((group, w.shape[0] // group, per, *w.shape[2:]))
    ks = k.reshape((group, 1, per) + (1,) * (w.ndim - 2))
    return (ws * ks).reshape(w.shape)


def _constant(name: str, init: dict[str, np.ndarray], producer: dict[str, Node]) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer, a ``Constant`` node's ``value`` or an
    ``Identity`` of one (torch writes an initializer shared by two layers once, the second
    layer reading it through an Identity)."""
    for _ in range(8):
        if name in init:
            return init[name]
        node = producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant" and isinstance(node.attrs.get("value"), np.ndarray):
            return np.asarray(node.attrs["value"])
        if node.op_type != "Identity" or not node.inputs:
            return None
        name = node.inputs[0]
    return None


def _conv_constants(conv: Node, init: dict[str, np.ndarray],
                    producer: dict[str, Node]) -> tuple[np.ndarray, np.ndarray] | None:
    """A conv's constant float weights (rank 3 or more) and its bias as float64, one per output
    channel (zeros when it has none), else None."""
    w = _constant(conv.inputs[1], init, producer) if len(conv.inputs) > 1 else None
    has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2])
    b0 = _constant(conv.inputs[2], init, producer) if has_bias else None
    if w is None or w.dtype.kind != "f" or w.ndim < 3 or (has_bias and b0 is None):
        return None
    n = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * int(conv.attrs.get("group", 1))
    bias = np.zeros(n) if b0 is None else np.asarray(b0, np.float64).reshape(-1)
    return (w, bias) if bias.size == n else None


def _fold(bn: Node, conv: Node, init: dict[str, np.ndarray], producer: dict[str, Node],
          taken: set[str]) -> Node | None:
    """The conv with ``bn`` folded in (its new initializers added to ``init``), or None."""
    names = list(bn.inputs)
    if len(names) != 5 or bn.attrs.get("training_mode", 0):
        return None
    if int(bn.attrs.get("spatial", 1)) != 1 or any(o for o in bn.outputs[1:]):
        return None
    stats = [_constant(n, init, producer) for n in names[1:]]
    if any(v is None for v in stats):
        return None
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in stats)
    if not gamma.size == beta.size == mean.size == var.size:
        return None
    found = _conv_constants(conv, init, producer)
    if found is None:
        return None
    w, bias = found
    k = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    wk = _scaled(conv, w.astype(np.float64), k)
    if wk is None:
        return None
    return _with_weights(conv, bn, w.dtype, wk, bias * k + (beta - mean * k), init, taken)


def _with_weights(conv: Node, after: Node, dtype: np.dtype, w: np.ndarray, b: np.ndarray,
                  init: dict[str, np.ndarray], taken: set[str]) -> Node:
    """``conv`` with weights ``w`` and bias ``b`` (new initializers) writing ``after``'s output."""
    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    wn, bn_name = fresh(f"{conv.inputs[1]}/folded"), fresh(f"{after.label()}/bias_folded")
    init[wn] = w.astype(dtype)
    init[bn_name] = b.astype(dtype)
    return Node(conv.op_type, [conv.inputs[0], wn, bn_name], [after.outputs[0]], dict(conv.attrs),
                name=f"{conv.label()}/{after.op_type.lower()}_folded", domain=conv.domain)


def _channel_constant(value: np.ndarray | None, rank: int, channels: int) -> np.ndarray | None:
    """A constant operand that broadcasts against a conv output of ``rank`` dims as one value
    per output channel (axis 1): its ``channels`` values (float64), else None."""
    if value is None or value.dtype.kind != "f" or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for ax, d in enumerate(shape) if ax != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (channels,)).copy()


def _fold_affine(op: Node, x: str, conv: Node, init: dict[str, np.ndarray], producer: dict[str, Node],
                 taken: set[str]) -> Node | None:
    """The conv with ``op`` (``Mul``, ``Add`` or ``Sub`` of the conv's output ``x`` and a
    per-channel constant) folded in, or None."""
    if len(op.inputs) != 2 or op.inputs[0] == op.inputs[1] or len(conv.inputs) < 2:
        return None
    if op.op_type == "Sub" and op.inputs[0] != x:
        return None  # c - conv(x) would negate the weights too: left as it is
    found = _conv_constants(conv, init, producer)
    if found is None:
        return None
    w, bias = found
    other = op.inputs[1] if op.inputs[0] == x else op.inputs[0]
    c = _channel_constant(_constant(other, init, producer), w.ndim, bias.size)
    if c is None:
        return None
    w64 = w.astype(np.float64)
    if op.op_type == "Mul":
        wk = _scaled(conv, w64, c)
        if wk is None:
            return None
        return _with_weights(conv, op, w.dtype, wk, bias * c, init, taken)
    return _with_weights(conv, op, w.dtype, w64, bias + (c if op.op_type == "Add" else -c), init, taken)


_AFFINE = ("Mul", "Add", "Sub")


def _unpadded(conv: Node, kernel: tuple[int, ...]) -> bool:
    """The conv reads no padding (zero pads, VALID, or a SAME of 1x1 kernels)."""
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in kernel)
    return auto == "VALID" or not any(int(p) for p in conv.attrs.get("pads", ()))


def _fold_input_affine(op: Node, conv: Node, init: dict[str, np.ndarray], producer: dict[str, Node],
                       taken: set[str]) -> Node | None:
    """``conv`` reading ``t * c``, ``t + c`` or ``t - c`` (``c`` one constant value, of lower
    rank than the conv's input so that ``t`` has the input's shape) with ``t`` and folded
    weights and bias, or None: ``conv(t * c) = conv_{w c}(t)``, and without padding (every
    value a window reads is then shifted) ``conv(t + c) = conv(t) + c * sum(w)`` per output."""
    if len(op.inputs) != 2 or op.inputs[0] == op.inputs[1] or len(conv.inputs) < 2:
        return None
    found = _conv_constants(conv, init, producer)
    if found is None:
        return None
    w, bias = found
    if op.op_type != "Mul" and not _unpadded(conv, tuple(w.shape[2:])):
        return None  # padding's zeros would be shifted too (a scale keeps them zero)
    for k in (1, 0):
        c = _constant(op.inputs[k], init, producer)
        if c is not None:
            break
    if c is None or c.dtype.kind != "f" or c.size != 1 or c.ndim >= w.ndim or (op.op_type == "Sub" and k == 0):
        return None
    v = float(np.asarray(c, np.float64).reshape(-1)[0])
    w64 = w.astype(np.float64)
    if op.op_type == "Mul":
        w64, b = w64 * v, bias
    else:
        b = bias + (v if op.op_type == "Add" else -v) * w64.reshape(w.shape[0], -1).sum(axis=1)
    folded = _with_weights(conv, conv, w.dtype, w64, b, init, taken)
    folded.inputs[0] = op.inputs[1 - k]
    return folded


def _rewrite(graph: Graph) -> Graph:
    # each pass folds one node into each conv: a Mul then an Add takes two
    for _ in range(4):
        folded = _rewrite_once(graph)
        if folded is graph:
            break
        graph = folded
    return graph


def _rewrite_once(graph: Graph) -> Graph:
    if not any(n.op_type in ("BatchNormalization", *_AFFINE) for n in graph.nodes):
        return graph
    producer = graph.producers()
    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for name in dict.fromkeys(n.inputs):
            if name:
                consumers.setdefault(name, []).append(n)
    outputs = {v.name for v in graph.outputs}
    init = dict(graph.initializers)
    taken = set(init) | {o for n in graph.nodes for o in n.outputs} | {v.name for v in graph.inputs}
    replace: dict[int, Node | None] = {}
    for bn in graph.nodes:
        if bn.op_type not in ("BatchNormalization", *_AFFINE) or bn.domain not in ("", "ai.onnx") \
                or not bn.inputs:
            continue
        x = next((i for i in bn.inputs[:2] if (p := producer.get(i)) is not None and p.op_type in _CONVS),
                 bn.inputs[0]) if bn.op_type in _AFFINE else bn.inputs[0]
        conv = producer.get(x)
        if conv is None or conv.op_type not in _CONVS or conv.domain not in ("", "ai.onnx") \
                or len(consumers.get(x, ())) != 1 or x in outputs or id(conv) in replace:
            continue
        fused = (_fold(bn, conv, init, producer, taken) if bn.op_type == "BatchNormalization"
                 else _fold_affine(bn, x, conv, init, producer, taken))
        if fused is None:
            continue
        replace[id(conv)] = None
        replace[id(bn)] = fused
    for op in graph.nodes:  # a scalar affine before a conv with no padding: into its weights
        if op.op_type not in _AFFINE or op.domain not in ("", "ai.onnx") or id(op) in replace \
                or len(op.outputs) != 1 or op.outputs[0] in outputs:
            continue
        (conv, *more) = consumers.get(op.outputs[0], [None])
        if more or conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") \
                or id(conv) in replace or conv.inputs[0] != op.outputs[0]:
            continue
        fused = _fold_input_affine(op, conv, init, producer, taken)
        if fused is not None:
            replace[id(op)] = None
            replace[id(conv)] = fused
    if not replace:
        return graph
    nodes = [r for n in graph.nodes if (r := replace.get(id(n), n)) is not None]
    return Graph(nodes, graph.inputs, graph.outputs, init, graph.opset, graph.name)
