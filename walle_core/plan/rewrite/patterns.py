"""Rewrites of atomic-op patterns into ops that do the same in one pass, for backends that opt
in (``Rewrites.gelu``, ``Rewrites.hardswish``, ``Rewrites.matmul_bias``); run before the
epilogue fusions:

* ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (GELU as exporters spell it before opset 20) becomes one
  ``Unary gelu``, which the activation fusion then folds into the producing MatMul or Conv2D;
* ``x * clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) and ``x * hardsigmoid(x)`` with alpha 1/6, beta
  1/2 (HardSwish as PaddlePaddle, tf2onnx and torch before opset 14 spell it) become one ``Unary
  hardswish``, likewise folded;
* ``matmul(a, b) + c`` with a constant row vector ``c`` becomes a MatMul with bias ``c``.

Every intermediate of a pattern must have no other reader and not be a program output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.decompose.builder import contiguous

Items = list[tuple[A.Op, Algorithm]]
_F32 = np.dtype(np.float32)


def _scalar(t: A.Tensor) -> float | None:
    if t.value is None or t.size != 1:
        return None
    return float(np.asarray(t.value).reshape(-1)[0])


def _other(op: A.Binary, t: A.Tensor) -> A.Tensor | None:
    """The operand of a two-input ``op`` that is not ``t`` (``t`` read once, densely)."""
    hits = [k for k, x in enumerate(op.inputs) if x.id == t.id]  # (aliases share an id)
    if len(hits) != 1 or tuple(op.strides[hits[0]]) != tuple(contiguous(op.out.shape)):
        return None
    return op.inputs[1 - hits[0]]


class _Graph:
    def __init__(self, items: Sequence[tuple[A.Op, Algorithm]], external: set[int]) -> None:
        self.items = list(items)
        self.external = external
        self.producer: dict[int, int] = {}
        self.readers: dict[int, int] = {}
        for i, (op, _) in enumerate(self.items):
            for t in op.outputs:
                self.producer[t.id] = i
            for t in op.inputs:
                self.readers[t.id] = self.readers.get(t.id, 0) + 1

    def single(self, t: A.Tensor) -> A.Op | None:
        """The producer of ``t`` when ``t`` is an intermediate with exactly one reader."""
        if t.id in self.external or self.readers.get(t.id) != 1 or t.id not in self.producer:
            return None
        return self.items[self.producer[t.id]][0]


def _binary(op: A.Op | None, fn: str) -> A.Binary | None:
    """``op`` when it is a float32 Binary ``fn``."""
    ok = isinstance(op, A.Binary) and op.fn == fn and op.out.dtype == _F32 and len(op.inputs) == 2
    return op if ok else None  # type: ignore[return-value]


def _gelu_input(g: _Graph, y_op: A.Op) -> tuple[A.Tensor, list[A.Op]] | None:
    """For ``y = (x * (1 + erf(x / sqrt2))) * 0.5``: (x, the four inner ops)."""
    y = _binary(y_op, "mul")
    if y is None:
        return None
    for half_side in (0, 1):
        if _scalar(y.inputs[half_side]) != 0.5:
            continue
        m = _binary(g.single(y.inputs[1 - half_side]), "mul")
        if m is None:
            continue
        for x_side in (0, 1):
            x, a_t = m.inputs[x_side], m.inputs[1 - x_side]
            a = _binary(g.single(a_t), "add")
            if a is None or x.shape != m.out.shape or a_t.shape != x.shape:
                continue
            e_t = next((t for t in a.inputs if _scalar(t) is None), None)
            if e_t is None or _scalar(_other(a, e_t) or e_t) != 1.0:
                continue
            e = g.single(e_t)
            if not (isinstance(e, A.Unary) and e.fn == "erf"):
                continue
            d = _binary(g.single(e.inputs[0]), "div")
            # x by id: a reshaped producer (a Conv1d's 4-D output read as 3-D) gives each
            # reader its own alias
            if d is None or d.inputs[0].id != x.id or e.inputs[0].shape != x.shape:
                continue
            root2 = _scalar(d.inputs[1])
            if root2 is None or not math.isclose(root2, math.sqrt(2.0), rel_tol=1e-6):
                continue
            return x, [d, e, a, m]
    return None


def _with_scalar(op: A.Op | None, fn: str, value: float) -> A.Tensor | None:
    """For ``op = fn(t, value)`` (either order for add and mul, ``t`` read densely): ``t``."""
    b = _binary(op, fn)
    if b is None:
        return None
    for k in ((0, 1) if fn in ("add", "mul", "max", "min") else (0,)):
        c, t = b.inputs[1 - k], b.inputs[k]
        v = _scalar(c)
        if v is not None and math.isclose(v, value, rel_tol=1e-6) and _other(b, t) is c:
            return t
    return None


def _relu6_of_plus3(g: _Graph, t: A.Tensor) -> A.Tensor | None:
    """For ``t = clip(x + 3, 0, 6)``, spelt as a Unary clip, max then min, min then max, or a
    ReLU then min: ``x``."""
    op = g.single(t)
    inner: A.Tensor | None = None
    if isinstance(op, A.Unary) and op.fn == "clip" and op.out.dtype == _F32 \
            and tuple(float(p) for p in op.params[:2]) == (0.0, 6.0):
        inner = op.inputs[0]
    else:
        for outer_fn, v_out, inner_fn, v_in in (("min", 6.0, "max", 0.0), ("max", 0.0, "min", 6.0)):
            mid = _with_scalar(op, outer_fn, v_out)
            if mid is None:
                continue
            inner = _with_scalar(g.single(mid), inner_fn, v_in)
            if inner is None and outer_fn == "min":
                r = g.single(mid)
                if isinstance(r, A.Unary) and r.fn == "relu" and r.out.dtype == _F32:
                    inner = r.inputs[0]
            if inner is not None:
                break
    if inner is None:
        return None
    return _with_scalar(g.single(inner), "add", 3.0)


def _hardsigmoid_of(g: _Graph, t: A.Tensor) -> A.Tensor | None:
    """For ``t = clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) or a Unary hardsigmoid with alpha
    1/6 and beta 1/2: ``x``."""
    op = g.single(t)
    if isinstance(op, A.Unary) and op.fn == "hardsigmoid" and op.out.dtype == _F32 \
            and len(op.params) == 2 and math.isclose(float(op.params[0]), 1 / 6, rel_tol=1e-5) \
            and float(op.params[1]) == 0.5:
        return op.inputs[0]
    r = _with_scalar(op, "div", 6.0) or _with_scalar(op, "mul", 1 / 6)
    return None if r is None else _relu6_of_plus3(g, r)


def _hardswish_input(g: _Graph, y_op: A.Op) -> A.Tensor | None:
    """For ``y = x * hardsigmoid(x)`` or ``y = (x * clip(x + 3, 0, 6)) / 6`` (or ``* (1/6)``):
    ``x``. ``x`` is matched by id: a reshaped producer gives each reader its own alias."""
    dense = tuple(contiguous(y_op.out.shape))
    scaled = _with_scalar(y_op, "div", 6.0) or _with_scalar(y_op, "mul", 1 / 6)
    for m, gate in ((_binary(y_op, "mul"), _hardsigmoid_of),
                    (_binary(g.single(scaled) if scaled is not None else None, "mul"), _relu6_of_plus3)):
        if m is None or any(tuple(st) != dense for st in m.strides):
            continue
        for k in (0, 1):
            x, a = m.inputs[k], gate(g, m.inputs[1 - k])
            if a is not None and a.id == x.id and a.shape == x.shape == y_op.out.shape:
                return x
    return None


def _inner_ops(g: _Graph, y_op: A.Op, x: A.Tensor) -> list[A.Op]:
    """The ops between ``x`` and ``y_op``'s output (all single-reader intermediates)."""
    found: list[A.Op] = []
    todo = [t for t in y_op.inputs if t.id != x.id]
    while todo:
        op = g.single(todo.pop())
        if op is not None:
            found.append(op)
            todo.extend(t for t in op.inputs if t.id != x.id)
    return found


def _fold_unary(items: Sequence[tuple[A.Op, Algorithm]], external: set[int], fn: str,
                match: Callable[[_Graph, A.Op], tuple[A.Tensor, list[A.Op]] | None]) -> Items:
    """Replace every pattern ``match`` finds (its input and inner ops) by ``Unary fn``."""
    g = _Graph(items, external)
    drop: set[int] = set()
    out: Items = []
    for op, algo in g.items:
        found = match(g, op) if id(op) not in drop else None
        if found is not None:
            x, inner = found
            drop.update(id(o) for o in inner)
            out = [(o, a) for o, a in out if id(o) not in drop]
            out.append((A.Unary([x], [op.out], fn=fn), Algorithm("direct")))
            continue
        if id(op) not in drop:
            out.append((op, algo))
    return out


def fold_gelu(items: Sequence[tuple[A.Op, Algorithm]], external: set[int]) -> Items:
    return _fold_unary(items, external, "gelu", _gelu_input)


def fold_hardswish(items: Sequence[tuple[A.Op, Algorithm]], external: set[int]) -> Items:
    def match(g: _Graph, op: A.Op) -> tuple[A.Tensor, list[A.Op]] | None:
        x = _hardswish_input(g, op)
        return None if x is None else (x, _inner_ops(g, op, x))

    return _fold_unary(items, external, "hardswish", match)


def fold_matmul_bias(items: Sequence[tuple[A.Op, Algorithm]], external: set[int]) -> Items:
    """``add(matmul(a, b), c)`` (either order) with ``c`` a constant of the MatMul's ``n``
    values broadcast over rows becomes the MatMul's bias."""
    g = _Graph(items, external)
    replaced: dict[int, A.Op] = {}  # id(matmul) -> the MatMul with bias, writing the add's output
    dropped: set[int] = set()
    for op, _ in g.items:
        if not (isinstance(op, A.Binary) and op.fn == "add" and op.out.dtype == _F32):
            continue
        for k in (0, 1):
            t, c = op.inputs[k], op.inputs[1 - k]
            mm = g.single(t)
            if not (type(mm) is A.MatMul and len(mm.inputs) == 2 and id(mm) not in replaced):
                continue
            if c.value is None or c.size != mm.n or t.shape != op.out.shape:
                continue
            # c runs along the last axis and repeats over the others (size-1 axes: any stride)
            row = all(st == (1 if ax == len(op.out.shape) - 1 else 0) or n == 1
                      for ax, (st, n) in enumerate(zip(op.strides[1 - k], op.out.shape, strict=True)))
            if tuple(op.strides[k]) != tuple(contiguous(t.shape)) or not row or op.out.shape[-1] != mm.n:
                continue
            bias = A.Tensor((mm.n,), _F32, value=np.asarray(c.value, np.float32).reshape(-1),
                            name=c.name, id=c.id)
            replaced[id(mm)] = dataclasses.replace(mm, inputs=[*mm.inputs, bias], outputs=[op.out],
                                                   bias_full=False)
            dropped.add(id(op))
            break
    return [(replaced.get(id(op), op), algo) for op, algo in g.items if id(op) not in dropped]
