"""QDQ models run in integers: ``DequantizeLinear -> op -> QuantizeLinear`` becomes one integer op.

A QDQ model (what onnxruntime's ``quantize_static`` and Walle's ``walle quantize`` write) carries
float ops between DequantizeLinear and QuantizeLinear nodes. Before lowering, this rewrite turns
each such island whose quantisation parameters are constants into the op that computes the same
integers directly, so int8 tensors stay int8 from one op to the next:

| float op between DQ and Q | becomes |
| --- | --- |
| Conv (+ Relu / Clip) | ``walle.QLinearConv`` (int32 accumulation, requantized; the activation is the output clamp) |
| MatMul, Gemm (+ Relu / Clip) | ``walle.QLinearMatMul`` (int32 bias, ``trans_b``) |
| Add, Mul | ``com.microsoft.QLinearAdd`` / ``QLinearMul`` |
| Concat | ``com.microsoft.QLinearConcat`` |
| AveragePool, GlobalAveragePool | ``com.microsoft.QLinearAveragePool`` / ``QLinearGlobalAveragePool`` |
| ReduceMean (axes as an attribute) | ``walle.QLinearReduceMean``: QLinearGlobalAveragePool's int32 sum over the axes |
| Softmax | ``com.microsoft.QLinearSoftmax`` |
| one-input element-wise maps (Sigmoid, HardSwish, Tanh, LeakyRelu, ...) | ``walle.QLinearLookup``: a 256-entry table computed by the engine at plan time |
| MaxPool, Resize (nearest), Reshape, Transpose, Split, ... | the op itself on the int8 tensor (then a table for each output whose parameters differ) |

Everything else keeps its DequantizeLinear -> float op -> QuantizeLinear and runs in float, as
float ops in ``walle inspect``; :func:`fuse_qdq` reports both lists.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from walle_core.interpreter import fold
from walle_core.ir.graph import Graph, Node, ValueInfo, remove_dead_nodes
from walle_core.plan.rewrite.graph_cache import once_per_graph

MS = "com.microsoft"
WALLE = "walle"
_Q = ("QuantizeLinear",)
_DQ = ("DequantizeLinear",)
_LOOKUP_OPS = frozenset("""Sigmoid HardSwish HardSigmoid Tanh LeakyRelu Relu Elu Selu Celu Gelu
    Exp Log Softplus Softsign Mish Erf Neg Abs Sqrt Reciprocal Sin Cos Clip""".split())
# ops that move or select values without arithmetic: they commute with any monotone requantisation
_MOVE_OPS = frozenset("""MaxPool GlobalMaxPool Reshape Transpose Flatten Squeeze Unsqueeze Slice
    Split Identity DepthToSpace SpaceToDepth Gather Expand Tile ReduceMax ReduceMin""".split())
_ACTIVATIONS = ("Relu", "Clip")


@dataclass
class QdqReport:
    """What the rewrite made integer (op type -> count) and what stays float."""

    integer: Counter[str] = field(default_factory=Counter)
    float_ops: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"

        return f"integer: {fmt(self.integer)}; float: {fmt(self.float_ops)}"


@dataclass
class _DQ_:
    """A DequantizeLinear whose parameters are constants."""

    node: Node
    x: str  # the 8-bit (or int32 bias) tensor
    scale: np.ndarray
    zero: np.ndarray | None
    dtype: np.dtype | None  # the quantized type when known (zero point or initializer)
    axis: int

    @property
    def params(self) -> tuple[float, int]:
        return float(self.scale.reshape(-1)[0]), 0 if self.zero is None else int(self.zero.reshape(-1)[0])


class _Rewriter:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.init = dict(graph.initializers)  # the rewrite adds tables; the input graph stays as is
        self.producer = graph.producers()
        self.readers: dict[str, list[Node]] = {}
        for n in graph.nodes:
            for i in n.inputs:
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.outputs = {v.name for v in graph.outputs}
        # Constant nodes' tensors: exporters write Clip's bounds (ReLU6) that way
        self.constants = {n.outputs[0]: n.attrs["value"] for n in graph.nodes
                          if n.op_type == "Constant" and isinstance(n.attrs.get("value"), np.ndarray)}
        self.report = QdqReport()
        self.replaced: set[int] = set()  # ids of nodes that are replaced or absorbed
        self.pending: dict[int, list[Node]] = {}  # id(first replaced node) -> its replacement
        self.counter = 0

    # ------------------------------------------------------------------ matching helpers

    def const(self, name: str) -> np.ndarray | None:
        return self.init.get(name) if name else None

    def bound(self, name: str) -> np.ndarray | None:
        """A Clip bound: an initializer, a Constant node's tensor, or a constant behind
        [QuantizeLinear ->] DequantizeLinear (``walle quantize`` quantizes ReLU6's bounds), as
        the float32 value the float graph computes for it."""
        v = self.const(name) if name else None
        if v is not None or not name:
            return v
        d = self.dq(name)
        if d is None or d.scale.size != 1:
            return self.constants.get(name)
        q = self.const(d.x)
        zero = np.float32(0 if d.zero is None else d.zero.reshape(-1)[0])
        scale = d.scale.astype(np.float32).reshape(())
        qn = self.producer.get(d.x)
        if q is None and qn is not None and qn.op_type in _Q and d.zero is not None:
            f = self.bound(qn.inputs[0])
            info = np.iinfo(d.zero.dtype)
            qs, qz = (self.const(i) for i in (*qn.inputs[1:3], "")[:2])
            # the QuantizeLinear must use the DequantizeLinear's parameters (a plain round trip)
            if f is None or qs is None or qz is None or qs.size != 1 or qz.size != 1 \
                    or float(qs.reshape(())) != float(scale) or float(qz.reshape(())) != zero:
                return None
            q = np.clip(np.rint(f.astype(np.float32) / scale) + zero, info.min, info.max)
        if q is None:
            return None
        return (q.astype(np.float32) - zero) * scale

    def dq(self, name: str) -> _DQ_ | None:
        node = self.producer.get(name)
        if node is None or node.op_type not in _DQ or node.domain not in ("", "ai.onnx", MS):
            return None
        scale = self.const(node.inputs[1])
        zero = self.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if scale is None or (len(node.inputs) > 2 and node.inputs[2] and zero is None):
            return None
        if node.attrs.get("block_size", 0):
            return None
        x = self.const(node.inputs[0])
        dtype = zero.dtype if zero is not None else x.dtype if x is not None else None
        return _DQ_(node, node.inputs[0], scale, zero, dtype, int(node.attrs.get("axis", 1)))

    def act8(self, name: str) -> _DQ_ | None:
        """A per-tensor dequantized 8-bit activation (or constant)."""
        d = self.dq(name)
        if d is None or d.dtype is None or d.dtype.itemsize != 1 or d.scale.size != 1 \
                or (d.zero is not None and d.zero.size != 1):
            return None
        return d

    def sole_reader(self, name: str) -> Node | None:
        readers = self.readers.get(name, [])
        if name in self.outputs or len(readers) != 1:
            return None
        return readers[0]

    def q_after(self, name: str) -> Node | None:
        """The QuantizeLinear (constant per-tensor parameters) that alone reads ``name``."""
        q = self.sole_reader(name)
        if q is None or q.op_type not in _Q or q.domain not in ("", "ai.onnx", MS):
            return None
        s = self.const(q.inputs[1])
        z = self.const(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        if s is None or s.size != 1 or z is None or z.size != 1 or z.dtype.itemsize != 1:
            return None
        return q

    def activation_then_q(self, name: str) -> tuple[list[Node], Node] | None:
        """``name`` -> [Relu | Clip with constant bounds] -> QuantizeLinear."""
        q = self.q_after(name)
        if q is not None:
            return [], q
        act = self.sole_reader(name)
        if act is None or act.op_type not in _ACTIVATIONS or act.domain not in ("", "ai.onnx"):
            return None
        if act.op_type == "Clip" and any(i and self.bound(i) is None for i in act.inputs[1:]):
            return None
        q = self.q_after(act.outputs[0])
        return ([act], q) if q is not None else None

    def _bound_value(self, name: str, default: float) -> float:
        v = self.bound(name)
        return default if v is None else float(v.reshape(-1)[0])

    def clamp(self, acts: list[Node], q: Node) -> list[float] | None:
        """A fused Relu / Clip as bounds in the output's quantized units (None: no activation)."""
        if not acts:
            return None
        act = acts[0]
        scale = float(self.init[q.inputs[1]].reshape(-1)[0])
        zero = int(self.init[q.inputs[2]].reshape(-1)[0])
        if act.op_type == "Relu":
            lo, hi = 0.0, np.inf
        else:
            ins = [*act.inputs, "", ""]
            lo = float(self._bound_value(ins[1], act.attrs.get("min", -np.inf)))
            hi = float(self._bound_value(ins[2], act.attrs.get("max", np.inf)))
        f = np.float32

        def q_of(v: float) -> float:
            return float(np.rint(f(v) / f(scale)) + zero) if np.isfinite(v) else v

        return [max(q_of(lo), -1e9), min(q_of(hi), 1e9)]

    # ------------------------------------------------------------------ emitting

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}__qdq{self.counter}"

    def add_const(self, base: str, value: np.ndarray) -> str:
        n = self.name(base)
        self.init[n] = value
        return n

    def replace(self, first: Node, drop: list[Node], new: list[Node], what: str) -> None:
        self.replaced.update(id(n) for n in (first, *drop))
        self.pending[id(first)] = new
        self.report.integer[what] += 1

    # ------------------------------------------------------------------ patterns

    def conv(self, node: Node) -> bool:
        x = self.act8(node.inputs[0])
        w = self.dq(node.inputs[1])
        found = self.activation_then_q(node.outputs[0])
        if x is None or w is None or found is None or self.const(w.x) is None \
                or w.dtype is None or w.dtype.itemsize != 1:
            return False
        wv = self.init[w.x]
        if w.scale.size not in (1, wv.shape[0]) or (w.scale.size > 1 and w.axis != 0):
            return False
        bias = self._bias(node.inputs[2] if len(node.inputs) > 2 else "", x, w)
        if bias is None:
            return False
        self._linear(node, "QLinearConv", x, w, bias, found, dict(node.attrs))
        return True

    def _linear(self, node: Node, op: str, x: _DQ_, w: _DQ_, bias: str,
                found: tuple[list[Node], Node], attrs: dict[str, object]) -> None:
        """Replace ``node`` (+ activation + Q) by the walle-domain ``op`` with QLinearConv's
        inputs (x, its scale and zero, w, its scale and zero, y scale and zero, int32 bias)."""
        acts, q = found
        clamp = self.clamp(acts, q)
        if clamp is not None:
            attrs["clamp"] = clamp
        ins = [x.x, *self._params(x), w.x, *self._params(w), q.inputs[1], q.inputs[2], bias]
        self.replace(node, [*acts, q], [Node(op, ins, [q.outputs[0]], attrs, node.name, WALLE)],
                     node.op_type)

    def _bias(self, name: str, x: _DQ_, w: _DQ_) -> str | None:
        """The int32 bias input: a DequantizeLinear of int32 used as is (as onnxruntime does),
        a float constant quantized by ``x_scale * w_scale``; "" when absent, None otherwise."""
        if not name:
            return ""
        d = self.dq(name)
        if d is not None and self.const(d.x) is not None and self.init[d.x].dtype == np.int32:
            return d.x
        value = self.const(name)
        if value is None:
            return None
        f = np.float32
        step = f(x.scale.reshape(-1)[0]) * w.scale.astype(f).reshape(-1)
        return self.add_const(name, np.rint(value.astype(f) / step).astype(np.int32))

    def matmul(self, node: Node) -> bool:
        gemm = node.op_type == "Gemm"
        if gemm and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0
                     or node.attrs.get("beta", 1.0) != 1.0):
            return False
        a = self.act8(node.inputs[0])
        w = self.dq(node.inputs[1])
        found = self.activation_then_q(node.outputs[0])
        if a is None or w is None or found is None or w.dtype is None or w.dtype.itemsize != 1:
            return False
        trans_b = bool(node.attrs.get("transB", 0)) if gemm else False
        wv = self.const(w.x)
        if w.scale.size > 1:  # per output column: axis 1 of (K, N), axis 0 of a transposed B
            if wv is None or wv.ndim != 2 or w.axis % 2 != (0 if trans_b else 1):
                return False
        elif w.zero is not None and w.zero.size != 1:
            return False
        bias = self._bias(node.inputs[2] if len(node.inputs) > 2 else "", a, w) if gemm else ""
        if bias is None:
            return False
        self._linear(node, "QLinearMatMul", a, w, bias, found, {"trans_b": int(trans_b)})
        return True

    def _params(self, d: _DQ_) -> list[str]:
        return [d.node.inputs[1], d.node.inputs[2] if len(d.node.inputs) > 2 else ""]

    def binary(self, node: Node) -> bool:
        a, b = self.act8(node.inputs[0]), self.act8(node.inputs[1])
        q = self.q_after(node.outputs[0])
        if a is None or b is None or q is None:
            return False
        if self.gated(node, q, a, b) or self.gated(node, q, b, a):
            return True
        ins = [a.x, *self._params(a), b.x, *self._params(b), q.inputs[1], q.inputs[2]]
        self.replace(node, [q], [Node(f"QLinear{node.op_type}", ins, [q.outputs[0]], {}, node.name, MS)],
                     node.op_type)
        return True

    def gated(self, node: Node, q: Node, a: _DQ_, b: _DQ_) -> bool:
        """``a op DQ(Q(f(a)))`` with ``f`` a one-input map of the same 8-bit tensor (SiLU is
        ``x * sigmoid(x)``, HardSwish ``x * hardsigmoid(x)``): every operand is a function of one
        8-bit value, so the island is one table (the float graph's arithmetic on all 256 values)
        instead of a lookup and a binary pass."""
        q1 = self.producer.get(b.x)
        f = self.producer.get(q1.inputs[0]) if q1 is not None and q1.op_type in _Q else None
        if q1 is None or f is None or f.op_type not in _LOOKUP_OPS \
                or any(i and self.const(i) is None for i in f.inputs[1:]):
            return False
        fa = self.act8(f.inputs[0])
        if fa is None or fa.x != a.x or fa.params != a.params or fa.dtype != a.dtype:
            return False
        body = [n for n in (fa.node, f, q1, b.node, node) if n is not a.node]
        table = self._table(a, body, q)
        self.replace(node, [q], [Node("QLinearLookup", [a.x, self.add_const("table", table)],
                                      [q.outputs[0]], {}, node.name, WALLE)], node.op_type)
        return True

    def concat(self, node: Node) -> bool:
        parts = [self.act8(i) for i in node.inputs]
        q = self.q_after(node.outputs[0])
        if q is None or any(p is None for p in parts):
            return False
        ins = [q.inputs[1], q.inputs[2]]
        for p in parts:
            assert p is not None
            ins += [p.x, *self._params(p)]
        self.replace(node, [q], [Node("QLinearConcat", ins, [q.outputs[0]], dict(node.attrs), node.name, MS)],
                     "Concat")
        return True

    def one_input(self, node: Node, ms_op: str, extra: dict[str, object], domain: str = MS) -> bool:
        x = self.act8(node.inputs[0])
        q = self.q_after(node.outputs[0])
        if x is None or q is None or any(i for i in node.inputs[1:]):
            return False
        ins = [x.x, *self._params(x), q.inputs[1], q.inputs[2]]
        attrs = {**node.attrs, **extra}
        self.replace(node, [q], [Node(ms_op, ins, [q.outputs[0]], attrs, node.name, domain)], node.op_type)
        return True

    def lookup(self, node: Node) -> bool:
        x = self.act8(node.inputs[0])
        q = self.q_after(node.outputs[0])
        if x is None or q is None or any(i and self.const(i) is None for i in node.inputs[1:]):
            return False
        table = self._table(x, [node], q)
        self.replace(node, [q], [Node("QLinearLookup", [x.x, self.add_const("table", table)],
                                      [q.outputs[0]], {}, node.name, WALLE)], node.op_type)
        return True

    def _table(self, x: _DQ_, body: list[Node], q: Node) -> np.ndarray:
        """``Q(body(DQ(v)))`` for every 8-bit ``v``, computed by the engine's own lowering."""
        assert x.dtype is not None
        return self._evaluate(x.x, x.dtype, [x.node, *body, q])

    def _evaluate(self, x: str, dtype: np.dtype, nodes: list[Node]) -> np.ndarray:
        """The last node's output of ``nodes`` for every 8-bit value of ``x``: a 256-entry table."""
        from walle_core.decompose.quant_ms import domain_values
        from walle_core.plan.lower import Lowering

        inits = {k: self.init[k] for n in nodes for k in n.inputs if k in self.init}
        inits[x] = domain_values(dtype)
        sub = Graph(nodes, [], [ValueInfo(nodes[-1].outputs[0], None)],  # type: ignore[arg-type]
                    inits, self.g.opset, "qdq-table")
        value = Lowering(sub, fold, {}, qdq=False).run({}).outputs[0].value
        assert value is not None, "a table's inputs are all constants"
        return np.ascontiguousarray(value.reshape(256))

    def move(self, node: Node) -> bool:
        """An op that only moves or selects values runs on the 8-bit tensor itself; every output
        (Split has several) needs its own QuantizeLinear, and one whose parameters differ from
        the input's gets a requantising table."""
        x = self.act8(node.inputs[0])
        qs = [self.q_after(o) for o in node.outputs]
        if x is None or not qs or any(q is None for q in qs):
            return False
        if node.op_type == "Resize" and node.attrs.get("mode", "nearest") != "nearest":
            return False
        if node.op_type.startswith("Reduce") and len(node.inputs) > 1:
            return False
        outs: list[str] = []
        tables: list[Node] = []
        for o, q in zip(node.outputs, qs, strict=True):
            assert q is not None
            same = (float(self.init[q.inputs[1]].reshape(-1)[0]), int(self.init[q.inputs[2]].reshape(-1)[0])) \
                == x.params and self.init[q.inputs[2]].dtype == x.dtype
            outs.append(q.outputs[0] if same else self.name(o))
            if not same:
                from walle_core.decompose.quant_ms import table_of

                assert x.dtype is not None
                ys, yz = self.init[q.inputs[1]], self.init[q.inputs[2]]
                table = table_of(lambda tb, t: t, x.dtype, *x.params, float(ys.reshape(-1)[0]),
                                 int(yz.reshape(-1)[0]), yz.dtype)  # requantisation only
                tables.append(Node("QLinearLookup", [outs[-1], self.add_const("table", table)],
                                   [q.outputs[0]], {}, "", WALLE))
        moved = Node(node.op_type, [x.x, *node.inputs[1:]], outs, dict(node.attrs), node.name, node.domain)
        self.replace(node, [q for q in qs if q is not None], [moved, *tables], node.op_type)
        return True

    # ------------------------------------------------------------------ driver

    def gated_qop(self, node: Node) -> bool:
        """The QOperator form of :meth:`gated`: ``QLinearMul(x, Q(f(DQ(x))))`` or
        ``QLinearMul(x, QLinearSigmoid(x))`` (onnxruntime's quantizer writes HardSwish and SiLU so)
        is one table of the 8-bit ``x``."""
        if len(node.inputs) < 8 or any(i and self.const(i) is None for i in (*node.inputs[1:3], *node.inputs[4:8])):
            return False
        for xi, bi in ((0, 3), (3, 0)):
            x, q1 = node.inputs[xi], self.producer.get(node.inputs[bi])
            if q1 is not None and q1.domain == MS and q1.op_type in ("QLinearSigmoid", "QLinearLeakyRelu") \
                    and q1.inputs[0] == x and all(self.const(i) is not None for i in q1.inputs[1:] if i):
                zero = self.const(q1.inputs[2]) if len(q1.inputs) > 2 and q1.inputs[2] else None
                if zero is not None:  # x's type: its zero point's
                    table = self._evaluate(x, zero.dtype, [q1, node])
                    self.replace(node, [], [Node("QLinearLookup", [x, self.add_const("table", table)],
                                                 list(node.outputs), {}, node.name, WALLE)], node.op_type)
                    return True
            f = self.producer.get(q1.inputs[0]) if q1 is not None and q1.op_type in _Q else None
            fa = self.act8(f.inputs[0]) if f is not None and f.op_type in _LOOKUP_OPS else None
            if q1 is None or f is None or fa is None or fa.x != x or fa.dtype is None \
                    or any(i and self.const(i) is None for i in (*f.inputs[1:], *q1.inputs[1:])):
                continue
            table = self._evaluate(x, fa.dtype, [fa.node, f, q1, node])
            self.replace(node, [], [Node("QLinearLookup", [x, self.add_const("table", table)],
                                         list(node.outputs), {}, node.name, WALLE)], node.op_type)
            return True
        return False

    def run(self) -> Graph:
        for node in self.g.nodes:
            if id(node) not in self.replaced and node.domain == MS and node.op_type in ("QLinearMul", "QLinearAdd"):
                self.gated_qop(node)
                continue
            if id(node) in self.replaced or node.domain not in ("", "ai.onnx"):
                continue
            op = node.op_type
            done = False
            if op == "Conv":
                done = self.conv(node)
            elif op in ("MatMul", "Gemm"):
                done = self.matmul(node)
            elif op in ("Add", "Mul"):
                done = self.binary(node)
            elif op == "Concat":
                done = self.concat(node)
            elif op == "GlobalAveragePool":
                done = self.one_input(node, "QLinearGlobalAveragePool", {})
            elif op == "ReduceMean" and node.attrs.get("axes"):
                done = self.one_input(node, "QLinearReduceMean", {}, WALLE)
            elif op == "AveragePool":
                done = self.one_input(node, "QLinearAveragePool", {})
            elif op == "Softmax":
                done = self.one_input(node, "QLinearSoftmax", {"opset": self.g.opset})
            elif op in _LOOKUP_OPS:
                done = self.lookup(node)
            elif op in _MOVE_OPS or op == "Resize":
                done = self.move(node)
            if not done and op not in (*_Q, *_DQ, "Shape") and any(self.dq(i) for i in node.inputs if i):
                self.report.float_ops[op] += 1
        if not self.pending:
            return self.g
        nodes: list[Node] = []
        for node in self.g.nodes:
            nodes.extend(self.pending.get(id(node), []))
            if id(node) not in self.replaced:
                nodes.append(node)
        out = Graph(nodes, self.g.inputs, self.g.outputs, dict(self.init), self.g.opset, self.g.name)
        remove_dead_nodes(out)
        return out


_CACHE_ATTR = "_walle_qdq"


def fuse_qdq(graph: Graph) -> tuple[Graph, QdqReport]:
    """The graph with its QDQ islands made integer (the same graph when it has none), and what
    was made integer and what stays float. Computed once per graph object."""
    return once_per_graph(graph, _CACHE_ATTR, _integer_islands)


def _integer_islands(graph: Graph) -> tuple[Graph, QdqReport]:
    if not any(n.op_type in _DQ for n in graph.nodes):
        return graph, QdqReport()
    rw = _Rewriter(graph)
    return rw.run(), rw.report
