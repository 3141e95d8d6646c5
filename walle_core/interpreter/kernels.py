"""numpy kernels for every atomic op kind: what constant folding evaluates, and (through the
``reference`` plugin) the correctness oracle of all other backends.

Kernels read and write dense arrays; broadcasting inputs arrive as stride views built from the
op's element strides.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from walle_core import atomic as A
from walle_core.errors import WalleError

Kernel = Callable[[A.Op, list[np.ndarray], list[np.ndarray]], None]


class KernelError(WalleError):
    """A kernel met data it cannot process (e.g. an out-of-range gather index)."""


def view(arr: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...], offset: int = 0) -> np.ndarray:
    flat = arr.reshape(-1)
    if flat.size == 0:
        return np.zeros(shape, arr.dtype)
    return as_strided(flat[offset:], shape, [s * arr.itemsize for s in strides], writeable=False)


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[x.dtype])(x) if x.size else x.copy()


def _gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x erfc(-x / sqrt2) in float64: 1 + erf(x / sqrt2) cancels on the left tail."""
    from math import erfc, sqrt

    if not x.size:
        return x.copy()
    wide = x.astype(np.float64)
    return (0.5 * wide * np.vectorize(erfc, otypes=[np.float64])(wide * -(1 / sqrt(2)))).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x))).astype(x.dtype)


def _float(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.asarray(fn(x)).astype(x.dtype, copy=False)


def _softplus(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))).astype(x.dtype)


UNARY: dict[str, Callable[[np.ndarray, tuple[float, ...]], np.ndarray]] = {
    "identity": lambda x, p: x.copy(),
    "abs": lambda x, p: np.abs(x),
    "neg": lambda x, p: np.negative(x),
    "exp": lambda x, p: np.exp(x),
    "log": lambda x, p: np.log(x),
    "sqrt": lambda x, p: np.sqrt(x),
    "rsqrt": lambda x, p: 1 / np.sqrt(x),
    "reciprocal": lambda x, p: np.reciprocal(x),
    "sin": lambda x, p: np.sin(x),
    "cos": lambda x, p: np.cos(x),
    "tan": lambda x, p: np.tan(x),
    "asin": lambda x, p: np.arcsin(x),
    "acos": lambda x, p: np.arccos(x),
    "atan": lambda x, p: np.arctan(x),
    "sinh": lambda x, p: np.sinh(x),
    "cosh": lambda x, p: np.cosh(x),
    "tanh": lambda x, p: np.tanh(x),
    "asinh": lambda x, p: np.arcsinh(x),
    "acosh": lambda x, p: np.arccosh(x),
    "atanh": lambda x, p: np.arctanh(x),
    "sigmoid": lambda x, p: _sigmoid(x),
    "relu": lambda x, p: np.maximum(x, np.zeros((), x.dtype)),
    "erf": lambda x, p: _erf(x),
    "floor": lambda x, p: np.floor(x),
    "ceil": lambda x, p: np.ceil(x),
    "round": lambda x, p: np.round(x),
    "sign": lambda x, p: np.sign(x),
    "not": lambda x, p: np.logical_not(x),
    "bitwise_not": lambda x, p: np.invert(x),
    "isnan": lambda x, p: np.isnan(x),
    "isinf": lambda x, p: np.isinf(x),
    "isposinf": lambda x, p: np.isposinf(x),
    "isneginf": lambda x, p: np.isneginf(x),
    "softplus": lambda x, p: _softplus(x),
    "softsign": lambda x, p: x / (1 + np.abs(x)),
    "gelu": lambda x, p: _gelu(x),
    "gelu_tanh": lambda x, p: _float(
        x, lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
    ),
    "hardswish": lambda x, p: _float(x, lambda v: v * np.clip(v / 6 + 0.5, 0, 1)),
    "hardsigmoid": lambda x, p: _float(x, lambda v: np.clip(p[0] * v + p[1], 0, 1)),
    "leaky_relu": lambda x, p: _float(x, lambda v: np.where(v >= 0, v, p[0] * v)),
    "elu": lambda x, p: _float(x, lambda v: np.where(v > 0, v, p[0] * np.expm1(np.minimum(v, 0)))),
    "selu": lambda x, p: _float(
        x, lambda v: p[1] * np.where(v > 0, v, p[0] * np.expm1(np.minimum(v, 0)))
    ),
    "celu": lambda x, p: _float(
        x, lambda v: np.maximum(0, v) + np.minimum(0, p[0] * np.expm1(np.minimum(v, 0) / p[0]))
    ),
    "clip": lambda x, p: np.clip(x, np.asarray(p[0]).astype(x.dtype), np.asarray(p[1]).astype(x.dtype))
    if x.dtype.kind != "f" else np.clip(x, x.dtype.type(p[0]), x.dtype.type(p[1])),
    "mish": lambda x, p: _float(x, lambda v: v * np.tanh(_softplus(v))),
    "thresholded_relu": lambda x, p: _float(x, lambda v: np.where(v > p[0], v, 0)),
}


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise KernelError("integer division by zero")
        q = np.abs(a) // np.abs(b)
        return (np.sign(a) * np.sign(b) * q).astype(a.dtype)
    return a / b


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
    return np.power(a, b.astype(a.dtype))


def _mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise KernelError("integer modulo by zero")
    return np.mod(a, b)


BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": _int_div,
    "pow": _pow,
    "max": np.maximum,
    "min": np.minimum,
    "mod": _mod,
    "fmod": np.fmod,
    "eq": np.equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
    "bitand": np.bitwise_and,
    "bitor": np.bitwise_or,
    "bitxor": np.bitwise_xor,
    "shl": np.left_shift,
    "shr": np.right_shift,
    "atan2": np.arctan2,
}


def raster(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Raster)
    dst = outs[0].reshape(-1)
    if op.fill is not None:
        dst[...] = op.fill
    for r in op.regions:
        src = view(ins[r.src], r.size, r.src_strides, r.src_offset)
        d = as_strided(dst[r.dst_offset :], r.size, [s * dst.itemsize for s in r.dst_strides])
        d[...] = src


def unary(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Unary)
    with np.errstate(all="ignore"):
        res = UNARY[op.fn](ins[0], op.params)
    outs[0][...] = np.asarray(res).reshape(outs[0].shape)


def _operands(op: A.Binary | A.Select, ins: list[np.ndarray]) -> list[np.ndarray]:
    shape = op.out.shape
    return [view(x, shape, st) for x, st in zip(ins, op.strides, strict=True)]


def binary(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Binary)
    a, b = _operands(op, ins)
    with np.errstate(all="ignore"):
        outs[0][...] = BINARY[op.fn](a, b)


def select(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Select)
    c, a, b = _operands(op, ins)
    outs[0][...] = np.where(c, a, b)


def cast(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    with np.errstate(all="ignore"):
        x = ins[0]
        if x.dtype.kind == "f" and outs[0].dtype.kind in "iu":
            x = np.trunc(x)
        outs[0][...] = x.astype(outs[0].dtype).reshape(outs[0].shape)  # input may be a reshape alias


_REDUCERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sum": lambda x: np.sum(x, axis=1, dtype=x.dtype),
    "prod": lambda x: np.prod(x, axis=1, dtype=x.dtype),
    "max": lambda x: np.max(x, axis=1),
    "min": lambda x: np.min(x, axis=1),
}


def reduce(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Reduce)
    x = ins[0].reshape(op.outer, op.n, op.inner)
    fn = op.fn
    with np.errstate(all="ignore"):
        if fn in ("argmax", "argmin"):
            pick = np.argmax if fn == "argmax" else np.argmin
            if op.last_index:
                r = op.n - 1 - pick(x[:, ::-1, :], axis=1)
            else:
                r = pick(x, axis=1)
        elif fn == "cumsum":
            r = np.cumsum(x, axis=1, dtype=x.dtype)
        elif fn == "cumprod":
            r = np.cumprod(x, axis=1, dtype=x.dtype)
        else:
            r = _REDUCERS[fn](x)
    outs[0][...] = np.asarray(r).reshape(outs[0].shape)


def matmul(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.MatMul)
    ar, ac = (op.k, op.m) if op.trans_a else (op.m, op.k)
    br, bc = (op.n, op.k) if op.trans_b else (op.k, op.n)
    a = view(ins[0], (op.batch, ar, ac), (op.a_batch_stride, ac, 1))
    b = view(ins[1], (op.batch, br, bc), (op.b_batch_stride, bc, 1))
    if op.trans_a:
        a = a.transpose(0, 2, 1)
    if op.trans_b:
        b = b.transpose(0, 2, 1)
    r = np.matmul(a, b)
    if len(ins) > 2:
        bias = ins[2].reshape((op.m, op.n) if op.bias_full else (1, op.n))
        r = r + bias
    outs[0][...] = r.reshape(outs[0].shape).astype(outs[0].dtype, copy=False)


def apply_activation(y: np.ndarray, act: A.Activation) -> np.ndarray:
    if act.fn == "identity":
        return y
    return np.asarray(UNARY[act.fn](y, act.params))


def conv2d(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Conv2D)
    # Inputs may be reshape aliases: view them with the op's declared shapes.
    x, w = ins[0].reshape(op.inputs[0].shape), ins[1].reshape(op.inputs[1].shape)
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    g = op.groups
    pt, pl, pb, pr = op.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    _, _, oh, ow = outs[0].shape
    sh, sw = op.strides
    dh, dw = op.dilations
    # im2col as a strided view: (n, c, kh, kw, oh, ow)
    s = xp.strides
    cols = as_strided(xp, (n, c, kh, kw, oh, ow),
                      (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw), writeable=False)
    cols = cols.reshape(n, g, cg * kh * kw, oh * ow)
    wg = w.reshape(g, o // g, cg * kh * kw)
    y = np.einsum("gok,ngkp->ngop", wg, cols, optimize=True).reshape(n, o, oh, ow)
    if len(ins) > 2:
        y = y + ins[2].reshape(1, o, 1, 1)
    outs[0][...] = apply_activation(y, op.act).astype(outs[0].dtype, copy=False)


def pool2d(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Pool2D)
    x = ins[0].reshape(op.inputs[0].shape)  # the input may be a reshape alias
    n, c, _h, _w = x.shape
    _, _, oh, ow = outs[0].shape
    pt, pl, pb, pr = op.pads
    kh, kw = op.kernel
    sh, sw = op.strides
    dh, dw = op.dilations
    # Pad to cover every window the output shape implies (ceil mode may reach past the pads).
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    extra_h = max(0, need_h - (x.shape[2] + pt + pb))
    extra_w = max(0, need_w - (x.shape[3] + pl + pr))
    pad = ((0, 0), (0, 0), (pt, pb + extra_h), (pl, pr + extra_w))
    fill = -np.inf if op.fn == "max" else 0
    xp = np.pad(x.astype(np.float64), pad, constant_values=fill)
    valid = np.pad(np.ones(x.shape[2:], np.float64), pad[2:], constant_values=0)
    pads_only = np.pad(np.ones(x.shape[2:], np.float64), ((pt, pb), (pl, pr)), constant_values=1)
    pads_only = np.pad(pads_only, ((0, extra_h), (0, extra_w)), constant_values=0)
    s = xp.strides
    win = as_strided(xp, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw))
    vs = valid.strides
    vwin = as_strided(valid, (oh, ow, kh, kw), (vs[0] * sh, vs[1] * sw, vs[0] * dh, vs[1] * dw))
    ps = pads_only.strides
    pwin = as_strided(pads_only, (oh, ow, kh, kw), (ps[0] * sh, ps[1] * sw, ps[0] * dh, ps[1] * dw))
    if op.fn == "max":
        y = win.max(axis=(4, 5))
    elif op.fn == "avg":
        total = win.sum(axis=(4, 5))
        count = (pwin if op.count_include_pad else vwin).sum(axis=(2, 3))
        y = total / np.maximum(count, 1)
    else:
        y = np.power(np.sum(np.power(np.abs(win), op.p), axis=(4, 5)), 1.0 / op.p)
    outs[0][...] = y.astype(outs[0].dtype)


def gather_scatter(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.GatherScatter)
    data = ins[0].reshape(op.rows, op.block)
    idx = ins[1].reshape(-1).astype(np.int64)
    if idx.size and (idx.min() < -op.rows or idx.max() >= op.rows):
        raise KernelError(f"index out of range [{-op.rows}, {op.rows}) in {op.mode}")
    idx = np.where(idx < 0, idx + op.rows, idx)
    if op.mode == "gather":
        outs[0][...] = data[idx].reshape(outs[0].shape)
        return
    out = data.copy()
    upd = ins[2].reshape(idx.size, op.block)
    if op.reduction == "none":
        out[idx] = upd
    else:
        ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[op.reduction]
        ufunc.at(out, idx, upd)
    outs[0][...] = out.reshape(outs[0].shape)


def sort(op: A.Op, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    assert isinstance(op, A.Sort)
    x = ins[0].reshape(op.outer, op.n, op.inner)
    if op.descending:
        # Stable descending: sort the reversed axis ascending by negated rank, keep first index.
        order = np.argsort(-_rankable(x), axis=1, kind="stable")
    else:
        order = np.argsort(_rankable(x), axis=1, kind="stable")
    outs[0][...] = order.reshape(outs[0].shape)


def _rankable(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "b":
        return x.astype(np.int8)
    if x.dtype.kind == "u":  # negation (descending order) must not wrap around
        return x.astype(np.float64)
    return x


KERNELS: dict[A.Kind, Kernel] = {
    A.Kind.RASTER: raster,
    A.Kind.UNARY: unary,
    A.Kind.BINARY: binary,
    A.Kind.SELECT: select,
    A.Kind.CAST: cast,
    A.Kind.REDUCE: reduce,
    A.Kind.MATMUL: matmul,
    A.Kind.CONV2D: conv2d,
    A.Kind.POOL2D: pool2d,
    A.Kind.GATHER_SCATTER: gather_scatter,
    A.Kind.SORT: sort,
}

