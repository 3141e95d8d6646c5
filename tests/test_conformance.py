"""Conformance: every atomic op kind on every available backend against the numpy reference.

Shapes come from hypothesis: odd sizes, broadcasting (stride-0) operands, empty tensors, every
dtype a kind accepts. An op a backend offers no algorithm for is skipped for that backend (the
planner runs it on the reference backend, which is the designed fallback), except that the
``cpu`` backend must implement every float32 case.

Tolerances (float32 unless stated):
* element-wise, data movement, index ops: exact for integers/bool; ``rtol=1e-5, atol=1e-6`` for
  floats (transcendentals such as exp/tanh/erf/sigmoid are evaluated by different code than
  numpy's, within a few ulp; the ``atol`` covers results that cross zero, e.g. ``sin(pi)``);
* accumulations (MatMul, Conv2D, Reduce sum/prod, avg/lp Pool2D) sum in a different order than
  numpy, so the error bound is ``1e-5 * sum(|terms|)`` per output element (plus ``rtol=1e-5``);
* chains of element-wise ops (what fusion runs) compound rounding, so on top of the above a
  backend may be as far from the exact (float64) result as numpy's float32 answer is, twice;
* GELU is held to the element-wise bound on its left tail too: backends compute
  ``0.5 x erfc(-x / sqrt 2)``, never ``1 + erf(x / sqrt 2)``, which cancels below ``x = -2``;
* float64 uses the same bounds (the kernels are at least as accurate there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Backend, Program
from walle_core.decompose.builder import Builder
from walle_core.errors import WalleError
from walle_core.plugins import registry

REFERENCE = registry().get("reference")
BACKENDS = [b for b in registry().available() if b.name != "reference"]
KINDS = ["Raster", "Unary", "Binary", "Select", "Cast", "Reduce", "MatMul", "Conv2D", "Pool2D",
         "GatherScatter", "Sort", "Chain", "Residual"]
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

F32 = np.dtype(np.float32)
TRANSCENDENTAL = {"exp", "log", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh",
                  "asinh", "acosh", "atanh", "sigmoid", "erf", "softplus", "gelu", "gelu_tanh",
                  "elu", "selu", "celu", "mish", "pow", "atan2"}


# --------------------------------------------------------------------------- helpers


class Case:
    """Ops built with a Builder, the runtime feeds, and a per-output error bound."""

    def __init__(self) -> None:
        self.b = Builder(fold=lambda op: None)
        self.feeds: list[tuple[A.Tensor, np.ndarray]] = []
        self.outputs: list[A.Tensor] = []
        self.bound: Callable[[list[np.ndarray]], list[np.ndarray | None]] | None = None
        self.must_support = False  # the cpu backend has to implement this case

    def input(self, arr: np.ndarray) -> A.Tensor:
        t = self.b.tensor(arr.shape, arr.dtype)
        self.feeds.append((t, arr))
        return t

    def const(self, arr: np.ndarray) -> A.Tensor:
        return self.b.const(arr)


def values(draw: st.DrawFn, shape: Sequence[int], dtype: np.dtype, lo: float = -5, hi: float = 5,
           specials: bool = False) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    size = math.prod(shape)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(size).reshape(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        a, b = max(int(lo), int(info.min)), min(int(hi), int(info.max))
        return rng.integers(a, b + 1, size=size).astype(dtype).reshape(shape)
    x = rng.uniform(lo, hi, size=size)
    if draw(st.booleans()):  # ties and exact integers
        x = np.round(x * 2) / 2
    if specials and size and draw(st.booleans()):
        pick = rng.integers(0, size, size=min(size, 3))
        x[pick] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], size=pick.size)
    return x.astype(dtype).reshape(shape)


def shapes(rank_max: int = 4, dim_max: int = 6, allow_empty: bool = True) -> st.SearchStrategy[tuple[int, ...]]:
    lo = 0 if allow_empty else 1
    return st.lists(st.integers(lo, dim_max), min_size=0, max_size=rank_max).map(tuple)


@st.composite
def broadcast_pair(draw: st.DrawFn, n: int = 2) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    out = draw(shapes())
    ins = []
    for _ in range(n):
        drop = draw(st.integers(0, len(out)))
        s = list(out[drop:])
        for i in range(len(s)):
            if draw(st.integers(0, 3)) == 0:
                s[i] = 1
        ins.append(tuple(s))
    return out, ins


def run_program(backend: Backend, case: Case, algo_name: str | None = None) -> list[np.ndarray] | None:
    ops = case.b.ops
    items = []
    for op in ops:
        algos = backend.algorithms(op)
        if not algos:
            return None
        pick = next((a for a in algos if a.name == algo_name), algos[0])
        items.append((op, pick))
    prog = Program(items, [t for t, _ in case.feeds], list(case.outputs))
    return backend.compile(prog, threads=2).run([v for _, v in case.feeds])


def reference(case: Case) -> list[np.ndarray]:
    items = [(op, REFERENCE.algorithms(op)[0]) for op in case.b.ops]
    prog = Program(items, [t for t, _ in case.feeds], list(case.outputs))
    return REFERENCE.compile(prog).run([v for _, v in case.feeds])


def compare(got: list[np.ndarray], want: list[np.ndarray], bounds: list[np.ndarray | None],
            rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for g, w, bound in zip(got, want, bounds, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        if w.dtype.kind in "fc":
            wf, gf = w.astype(np.float64), g.astype(np.float64)
            same_nan = np.isnan(wf) == np.isnan(gf)
            assert same_nan.all(), f"NaN mismatch\n got {g}\nwant {w}"
            fin = ~np.isnan(wf)
            inf = np.isinf(wf) & fin
            assert (gf[inf] == wf[inf]).all(), "infinity mismatch"
            ok = fin & ~inf
            tol = atol + rtol * np.abs(wf)
            if bound is not None:
                tol = tol + 1e-5 * np.broadcast_to(bound, wf.shape)
            err = np.abs(gf - wf)
            bad = ok & (err > tol)
            assert not bad.any(), (
                f"max err {err[bad].max()} at {np.argwhere(bad)[:3].tolist()}\n got {g[bad][:5]}\nwant {w[bad][:5]}")
        else:
            np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------- per-kind cases


def case_raster(draw: st.DrawFn) -> Case:
    c = Case()
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_, np.float16, np.int16])))
    c.must_support = True
    shape = draw(shapes())
    x = c.input(values(draw, shape, dtype))
    how = draw(st.sampled_from(["transpose", "slice", "pad", "concat", "expand", "reshape"]))
    b = c.b
    if how == "transpose" and len(shape) >= 2:
        perm = draw(st.permutations(range(len(shape))))
        y = b.transpose(x, perm)
    elif how == "slice" and shape:
        starts, sizes, steps = [], [], []
        for d in shape:
            step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
            if d == 0:
                starts.append(0)
                sizes.append(0)
                steps.append(1)
                continue
            start = draw(st.integers(0, d - 1))
            room = start + 1 if step < 0 else d - start
            size = draw(st.integers(0, (room - 1) // abs(step) + 1))
            starts.append(start)
            sizes.append(size)
            steps.append(step)
        y = b.slice(x, starts, sizes, steps)
    elif how == "pad" and shape:
        before = [draw(st.integers(0, 2)) for _ in shape]
        after = [draw(st.integers(0, 2)) for _ in shape]
        fills = [0.0, 1.0] if dtype.kind in "ub" else [0.0, 1.0, -2.5]
        y = b.pad(x, before, after, draw(st.sampled_from(fills)))
    elif how == "concat" and shape:
        axis = draw(st.integers(0, len(shape) - 1))
        others = []
        for _ in range(draw(st.integers(1, 2))):
            s = list(shape)
            s[axis] = draw(st.integers(0, 4))
            others.append(c.input(values(draw, s, dtype)))
        y = b.concat([x, *others], axis)
    elif how == "expand":
        out = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))) + tuple(
            draw(st.sampled_from([d, d])) if d != 1 else draw(st.integers(1, 4)) for d in shape)
        y = b.expand(x, out)
    else:
        y = b.strided(x, (math.prod(shape),), [1])
    c.outputs = [y]
    return c


UNARY_DOMAIN: dict[str, tuple[float, float]] = {
    "log": (0.01, 50), "sqrt": (0, 50), "rsqrt": (0.01, 50), "acosh": (1, 20), "atanh": (-0.99, 0.99),
    "asin": (-1, 1), "acos": (-1, 1), "reciprocal": (0.1, 10), "exp": (-90, 90), "sinh": (-10, 10),
    "cosh": (-10, 10), "tan": (-1.5, 1.5), "tanh": (-12, 12), "sigmoid": (-30, 30),
}


def case_unary(draw: st.DrawFn) -> Case:
    c = Case()
    dtype = np.dtype(draw(st.sampled_from([np.float32] * 4 + [np.float64, np.int32, np.int64, np.bool_])))
    if dtype.kind == "f":
        fn = draw(st.sampled_from(sorted(A.UNARY_KINDS - {"not", "bitwise_not"})))
    elif dtype == np.bool_:
        fn = draw(st.sampled_from(["not", "identity"]))
    else:
        fn = draw(st.sampled_from(["identity", "abs", "neg", "relu", "sign", "bitwise_not"]))
    lo, hi = UNARY_DOMAIN.get(fn, (-6, 6))
    shape = draw(shapes(dim_max=40))
    x = c.input(values(draw, shape, dtype, lo, hi, specials=True))
    params: tuple[float, ...] = ()
    if fn in ("leaky_relu", "elu", "celu", "thresholded_relu"):
        params = (draw(st.sampled_from([0.01, 0.2, 1.0, 1.5])),)
    elif fn == "selu":
        params = (1.6732632423543772, 1.0507009873554805)
    elif fn == "hardsigmoid":
        params = (0.2, 0.5)
    elif fn == "clip":
        params = (draw(st.sampled_from([-1.0, 0.0, -6.0])), draw(st.sampled_from([1.0, 6.0])))
    c.outputs = [c.b.unary(fn, x, *params)]
    c.must_support = dtype == F32
    return c


FLOAT_BIN = ["add", "sub", "mul", "div", "pow", "max", "min", "mod", "fmod", "eq", "lt", "le", "gt",
             "ge", "atan2"]
INT_BIN = ["add", "sub", "mul", "div", "max", "min", "mod", "fmod", "eq", "lt", "le", "gt", "ge",
           "bitand", "bitor", "bitxor", "shl", "shr"]


def case_binary(draw: st.DrawFn) -> Case:
    c = Case()
    dtype = np.dtype(draw(st.sampled_from([np.float32] * 4 + [np.float64, np.int32, np.int64, np.uint8,
                                                              np.int8, np.bool_])))
    if dtype.kind == "f":
        fn = draw(st.sampled_from(FLOAT_BIN))
    elif dtype == np.bool_:
        fn = draw(st.sampled_from(["and", "or", "xor", "bitand", "bitor", "bitxor", "eq"]))
    else:
        fn = draw(st.sampled_from(INT_BIN))
    _out, (sa, sb) = draw(broadcast_pair())
    lo, hi = (0, 100) if dtype.kind == "u" else (-50, 50)
    if dtype.kind == "f":
        lo, hi = (-4, 4)
    av = values(draw, sa, dtype, lo, hi, specials=fn not in ("pow",))
    bv = values(draw, sb, dtype, lo, hi, specials=fn not in ("pow",))
    if fn in ("shl", "shr"):
        bv = values(draw, sb, dtype, 0, dtype.itemsize * 8 - 1)
        av = values(draw, sa, dtype, 0 if dtype.kind == "u" else -20, 20)
    if dtype.kind in "iu" and fn in ("div", "mod"):
        bv = np.where(bv == 0, 1, bv).astype(dtype)
    if fn == "pow":
        av = np.abs(av)
        bv = np.clip(bv, -3, 3)
    a = c.input(av) if draw(st.booleans()) or bv.size == 0 else c.const(av)
    b = c.input(bv) if a.value is not None or draw(st.booleans()) else c.const(bv)
    c.outputs = [c.b.binary(fn, a, b)]
    c.must_support = dtype == F32
    return c


def case_select(draw: st.DrawFn) -> Case:
    c = Case()
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_])))
    _out, (sc, sa, sb) = draw(broadcast_pair(3))
    cond = c.input(values(draw, sc, np.dtype(np.bool_)))
    a = c.input(values(draw, sa, dtype))
    b = c.input(values(draw, sb, dtype))
    c.outputs = [c.b.select(cond, a, b)]
    c.must_support = True
    return c


def case_cast(draw: st.DrawFn) -> Case:
    c = Case()
    kinds = [np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_]
    src = np.dtype(draw(st.sampled_from(kinds)))
    dst = np.dtype(draw(st.sampled_from([k for k in kinds if np.dtype(k) != src])))
    lo, hi = (0, 120) if dst.kind in "ub" or src.kind == "u" else (-120, 120)
    x = c.input(values(draw, draw(shapes(dim_max=20)), src, lo, hi))
    c.outputs = [c.b.cast(x, dst)]
    c.must_support = True
    return c


def case_reduce(draw: st.DrawFn) -> Case:
    c = Case()
    dtype = np.dtype(draw(st.sampled_from([np.float32] * 3 + [np.float64, np.int32, np.int64])))
    fn = draw(st.sampled_from(sorted(A.REDUCE_KINDS)))
    shape = draw(shapes(dim_max=9).filter(lambda s: len(s) >= 1))
    axis = draw(st.integers(0, len(shape) - 1))
    assume(shape[axis] > 0 or fn not in ("max", "min", "argmax", "argmin"))
    lo, hi = (-2, 2) if fn in ("prod", "cumprod") else (-20, 20)
    if fn in ("prod", "cumprod") and dtype.kind == "f":
        lo, hi = (0.5, 1.5)
    xv = values(draw, shape, dtype, lo, hi, specials=fn in ("max", "min", "argmax", "argmin"))
    x = c.input(xv)
    last = draw(st.booleans())
    y = c.b.reduce_axis(x, axis, fn, last_index=last)
    if y.value is not None:  # an empty reduction folds at build time; nothing to run
        assume(False)
    c.outputs = [y]
    if fn in ("sum", "cumsum", "prod", "cumprod") and dtype.kind == "f":
        absx = np.abs(xv.astype(np.float64))
        if fn == "sum":
            mag = absx.sum(axis=axis, keepdims=True)
        elif fn == "cumsum":
            mag = np.cumsum(absx, axis=axis)
        elif fn == "prod":
            mag = 8 * absx.prod(axis=axis, keepdims=True) * shape[axis]
        else:
            mag = 8 * np.cumprod(absx, axis=axis) * shape[axis]
        c.bound = lambda outs, m=mag: [m]
    c.must_support = dtype == F32
    return c


def case_matmul(draw: st.DrawFn) -> Case:
    c = Case()
    batch = draw(st.integers(1, 3))
    m, n, k = (draw(st.integers(0, 37)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a_shared = batch > 1 and draw(st.booleans())
    b_shared = batch > 1 and draw(st.booleans())
    ash = (1 if a_shared else batch, *((k, m) if ta else (m, k)))
    bsh = (1 if b_shared else batch, *((n, k) if tb else (k, n)))
    av = values(draw, ash, F32, -1, 1)
    bv = values(draw, bsh, F32, -1, 1)
    a = c.input(av)
    b = c.const(bv) if draw(st.booleans()) else c.input(bv)
    ins = [a, b]
    bias_kind = draw(st.sampled_from(["none", "n", "full"]))
    biasv = None
    if bias_kind != "none":
        biasv = values(draw, (m * n,) if bias_kind == "full" else (n,), F32, -1, 1)
        ins.append(c.const(biasv) if draw(st.booleans()) else c.input(biasv))
    out = c.b.tensor((batch, m, n), F32)
    op = A.MatMul(ins, [out], batch=batch, m=m, n=n, k=k, trans_a=ta, trans_b=tb,
                  a_batch_stride=0 if a_shared else m * k, b_batch_stride=0 if b_shared else k * n,
                  bias_full=bias_kind == "full")
    c.b.emit(op)
    c.outputs = [out]
    a3 = np.broadcast_to(np.abs(av), (batch, *ash[1:]))
    b3 = np.broadcast_to(np.abs(bv), (batch, *bsh[1:]))
    mag = (a3.transpose(0, 2, 1) if ta else a3) @ (b3.transpose(0, 2, 1) if tb else b3)
    if biasv is not None:
        mag = mag + np.abs(biasv).reshape((m, n) if bias_kind == "full" else (1, n))
    c.bound = lambda outs, mg=mag: [mg]
    c.must_support = True
    return c


ACTS = [A.Activation(), A.Activation("relu"), A.Activation("clip", (0.0, 6.0)),
        A.Activation("hardswish"), A.Activation("sigmoid"), A.Activation("leaky_relu", (0.1,)),
        A.Activation("gelu"), A.Activation("tanh")]


def case_conv(draw: st.DrawFn, fused_act: bool = True) -> Case:
    c = Case()
    style = draw(st.sampled_from(["general", "depthwise", "winograd", "1x1"]))
    n = draw(st.integers(1, 2))
    if style == "depthwise":
        cin = draw(st.integers(1, 8))
        groups, cout = cin, cin
    else:
        groups = draw(st.sampled_from([1, 1, 1, 2])) if style == "general" else 1
        cin = groups * draw(st.integers(1, 5))
        cout = groups * draw(st.integers(1, 6))
    if style == "winograd":
        kh = kw = 3
        strides, dil = (1, 1), (1, 1)
        cin, cout = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    elif style == "1x1":
        kh = kw = 1
        strides, dil = (1, 1), (1, 1)
    else:
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = (0, 0, 0, 0) if style == "1x1" else tuple(draw(st.integers(0, 2)) for _ in range(4))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    oh = (h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    assume(oh >= 1 and ow >= 1)
    xv = values(draw, (n, cin, h, w), F32, -1, 1)
    wv = values(draw, (cout, cin // groups, kh, kw), F32, -1, 1)
    x = c.input(xv)
    wt = c.const(wv) if style == "winograd" or draw(st.booleans()) else c.input(wv)
    ins = [x, wt]
    biasv = None
    if draw(st.booleans()):
        biasv = values(draw, (cout,), F32, -1, 1)
        ins.append(c.const(biasv))
    act = draw(st.sampled_from(ACTS)) if fused_act else A.Activation()
    out = c.b.tensor((n, cout, oh, ow), F32)
    op = A.Conv2D(ins, [out], strides=strides, pads=pads, dilations=dil, groups=groups, act=act)  # type: ignore[arg-type]
    c.b.emit(op)
    c.outputs = [out]
    # |x| * |w| (+|bias|) through the reference: the scale of the accumulated terms.
    mag_case = Case()
    ax = mag_case.input(np.abs(xv))
    mout = mag_case.b.tensor(out.shape, F32)
    mag_case.b.emit(A.Conv2D([ax, mag_case.const(np.abs(wv))], [mout], strides=strides, pads=pads,  # type: ignore[arg-type]
                             dilations=dil, groups=groups))
    mag_case.outputs = [mout]
    mag = reference(mag_case)[0].astype(np.float64)
    if biasv is not None:
        mag = mag + np.abs(biasv).reshape(1, -1, 1, 1)
    c.bound = lambda outs, mg=mag: [2 * mg]
    c.must_support = True
    return c


def case_pool(draw: st.DrawFn) -> Case:
    c = Case()
    fn = draw(st.sampled_from(["max", "avg", "lp"]))
    n, ch = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
            draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
    ceil = draw(st.booleans())
    rnd = math.ceil if ceil else math.floor
    oh = int(rnd((h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) / strides[0])) + 1
    ow = int(rnd((w + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) / strides[1])) + 1
    assume(oh >= 1 and ow >= 1)
    xv = values(draw, (n, ch, h, w), F32, -3, 3)
    x = c.input(xv)
    out = c.b.tensor((n, ch, oh, ow), F32)
    c.b.emit(A.Pool2D([x], [out], fn=fn, kernel=(kh, kw), strides=strides, pads=pads, dilations=dil,
                      count_include_pad=draw(st.booleans()), p=draw(st.sampled_from([1, 2, 3]))))
    c.outputs = [out]
    c.must_support = True
    return c


def case_gather_scatter(draw: st.DrawFn) -> Case:
    c = Case()
    mode = draw(st.sampled_from(["gather", "scatter"]))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.int64, np.uint8, np.float64, np.int32])))
    rows, block, k = draw(st.integers(1, 8)), draw(st.integers(0, 5)), draw(st.integers(0, 8))
    bad = draw(st.integers(0, 9)) == 0 and k > 0
    idx = values(draw, (k,), np.dtype(np.int64), -rows, rows - 1)
    if bad:
        idx[draw(st.integers(0, k - 1))] = draw(st.sampled_from([rows, -rows - 1, rows + 5]))
    data = c.input(values(draw, (rows, block), dtype, -9, 9))
    it = c.input(idx) if draw(st.booleans()) else c.const(idx)
    if mode == "gather":
        y = c.b.gather_rows(data, it, rows, block)
    else:
        red = draw(st.sampled_from(["none", "add", "mul", "max", "min"]))
        if dtype == np.uint8:
            red = "none"
        upd = c.input(values(draw, (k, block), dtype, 0 if dtype.kind == "u" else -9, 9))
        y = c.b.scatter_rows(data, it, upd, rows, block, red)
    c.outputs = [y]
    c.must_support = dtype == F32
    return c


def case_sort(draw: st.DrawFn) -> Case:
    c = Case()
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float32, np.int32, np.uint8, np.bool_, np.float64])))
    shape = draw(shapes(dim_max=12).filter(lambda s: len(s) >= 1))
    axis = draw(st.integers(0, len(shape) - 1))
    x = c.input(values(draw, shape, dtype, -4, 4, specials=True))
    c.outputs = [c.b.argsort(x, axis, draw(st.booleans()))]
    c.must_support = True
    return c


CHAIN_UNARY = ["relu", "sigmoid", "tanh", "exp", "neg", "abs", "hardswish", "clip", "gelu", "sqrt"]


def case_chain(draw: st.DrawFn) -> Case:
    """A run of fp32 Unary/Binary ops (what element-wise fusion works on)."""
    c = Case()
    out_shape, ins = draw(broadcast_pair(4))
    x = c.input(values(draw, out_shape, F32, -3, 3))
    cur = x
    for i in range(draw(st.integers(2, 5))):
        if draw(st.booleans()):
            fn = draw(st.sampled_from(CHAIN_UNARY))
            if fn == "sqrt":
                cur = c.b.unary("abs", cur)
            params = (0.0, 6.0) if fn == "clip" else ()
            cur = c.b.unary(fn, cur, *params)
        else:
            fn = draw(st.sampled_from(["add", "sub", "mul", "max", "min", "div"]))
            other = c.input(values(draw, ins[i % len(ins)], F32, 0.5, 2))
            cur = c.b.binary(fn, cur, other) if draw(st.booleans()) else c.b.binary(fn, other, cur)
    c.outputs = [cur]
    c.must_support = True
    c.bound = lambda want: [(2 * np.abs(want[0].astype(np.float64) - exact_chain(c))
                             + chain_sensitivity(c, CHAIN_ULPS * 2.0 ** -24)) / 1e-5]
    return c


CHAIN_ULPS = 8  # what each fp32 op of a chain may be off by (the transcendentals: a few ulp)


def chain_sensitivity(c: Case, rel: float) -> np.ndarray:
    """First-order error bound of the chain when each op's result is off by ``rel`` of itself:
    the sum, over ops, of how far the exact output moves when only that op's result is scaled
    by 1 + rel. exp(exp(x)) turns a few ulp of the inner exp into 50x more at the outer one;
    the float32 oracle may round luckily there, so its own distance is not a bound alone."""
    base = exact_chain(c)
    total = np.zeros_like(base)
    for i in range(len(c.b.ops)):
        with np.errstate(all="ignore"):
            total += np.nan_to_num(np.abs(exact_chain(c, scale_op=(i, 1 + rel)) - base), posinf=0.0)
    return total


def exact_chain(c: Case, scale_op: tuple[int, float] | None = None) -> np.ndarray:
    """The chain evaluated in float64 with the reference's formulas (``scale_op``: op i's result
    multiplied by a factor). A chain compounds rounding (exp(exp(x)) multiplies an earlier
    relative error by x), so the backend is held to the float32 oracle's own distance from the
    exact value plus the chain's first-order sensitivity to a few ulp per op."""
    from walle_core.interpreter.kernels import BINARY, UNARY

    vals: dict[int, np.ndarray] = {t.id: v.astype(np.float64) for t, v in c.feeds}
    for i, op in enumerate(c.b.ops):
        ins = [vals[t.id] if t.value is None else t.value.astype(np.float64) for t in op.inputs]
        with np.errstate(all="ignore"):
            if isinstance(op, A.Unary):
                vals[op.out.id] = np.asarray(UNARY[op.fn](ins[0], op.params), np.float64)
            else:
                assert isinstance(op, A.Binary)
                vals[op.out.id] = np.asarray(BINARY[op.fn](ins[0], ins[1]), np.float64)
        if scale_op is not None and scale_op[0] == i:
            vals[op.out.id] = vals[op.out.id] * scale_op[1]
    return np.broadcast_to(vals[c.outputs[0].id], c.outputs[0].shape)


RESIDUAL_ACTS = ["none", "relu", "max0", "clip6", "tanh", "hardswish"]


def case_residual(draw: st.DrawFn) -> Case:
    """Conv2D (every algorithm, via case_conv) or MatMul, then ``add`` of a tensor of the
    output's shape in either operand order, then optionally an activation: what the cpu
    backend folds into the conv/GEMM epilogue (ResNet's conv -> add(identity) -> relu). The
    residual is a program input, a constant, the conv's own input (identity shortcut), or the
    result of an op emitted after the conv (so the fused op must run at the add's place)."""
    producer = draw(st.sampled_from(["conv", "conv", "matmul"]))
    c = case_conv(draw, fused_act=False) if producer == "conv" else case_matmul(draw)
    y = c.outputs[0]
    base = c.bound
    assert base is not None
    rv = values(draw, y.shape, F32, -1, 1)
    how = draw(st.sampled_from(["input", "const", "after", "shortcut"]))
    x = c.b.ops[0].inputs[0]
    if how == "shortcut" and x.shape == y.shape:
        r = x
        rv = next(v for t, v in c.feeds if t is x)
    elif how == "const":
        r = c.const(rv)
    elif how == "after":
        r = c.b.unary("neg", c.input(-rv))
    else:
        r = c.input(rv)
    z = c.b.binary("add", y, r) if draw(st.booleans()) else c.b.binary("add", r, y)
    act = draw(st.sampled_from(RESIDUAL_ACTS))
    if act in ("relu", "tanh", "hardswish"):
        z = c.b.unary(act, z)
    elif act in ("max0", "clip6"):
        z = c.b.binary("max", z, c.const(np.zeros((), F32)))
        if act == "clip6":
            z = c.b.binary("min", c.const(np.full((), 6, F32)), z)
    c.outputs = [z]
    # the add's terms on top of the producer's bound; activations here are at most
    # 1.5-Lipschitz (hardswish), covered by the factor 2
    rmag = np.abs(rv).astype(np.float64)
    c.bound = lambda want, f=base, ra=rmag: [2 * (f(want)[0] + ra)]
    return c


CASES: dict[str, Callable[[st.DrawFn], Case]] = {
    "Raster": case_raster, "Unary": case_unary, "Binary": case_binary, "Select": case_select,
    "Cast": case_cast, "Reduce": case_reduce, "MatMul": case_matmul, "Conv2D": case_conv,
    "Pool2D": case_pool, "GatherScatter": case_gather_scatter, "Sort": case_sort, "Chain": case_chain,
    "Residual": case_residual,
}


def test_the_cpu_backend_is_among_those_tested() -> None:
    """The cpu plugin ships with Walle and is built by setup: a build or import failure would
    otherwise drop it from BACKENDS and this whole conformance run would pass without it."""
    if flags.backend_preference() and "cpu" not in flags.backend_preference():
        pytest.skip("WALLE_BACKENDS leaves the cpu out")
    entry = {e.name: e for e in registry().entries()}.get("cpu")
    assert entry is not None, "no cpu plugin is installed (its entry point is missing)"
    assert entry.backend is not None, f"the cpu backend did not load: {entry.availability.reason}"


# --------------------------------------------------------------------------- the test


@pytest.mark.skipif(not BACKENDS, reason="no backend other than reference is available")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@SETTINGS
@given(data=st.data())
def test_conformance(backend: Backend, kind: str, data: st.DataObject) -> None:
    case = CASES[kind](data.draw)  # type: ignore[arg-type]
    if not case.b.ops:
        return  # everything folded at build time (e.g. an empty slice): nothing reaches a backend
    try:
        want = reference(case)
    except WalleError as exc:  # the oracle rejects the data (e.g. gather index out of range)
        with pytest.raises(WalleError):
            run_program(backend, case)
        assert str(exc)
        return
    algos = {a.name for op in case.b.ops for a in backend.algorithms(op)} or {None}
    for name in sorted(algos, key=str):
        got = run_program(backend, case, name)
        if got is None:
            assert not (case.must_support and backend.name == "cpu"), (
                f"cpu offers no algorithm for {[op.kind.value for op in case.b.ops]}")
            return
        bounds = case.bound(want) if case.bound else [None] * len(want)
        compare(got, want, bounds)


@pytest.mark.skipif("cpu" not in {b.name for b in BACKENDS}, reason="cpu backend not built")
@pytest.mark.parametrize("order", ["conv_first", "residual_first"])
@pytest.mark.parametrize("act", ["none", "relu"])
@pytest.mark.parametrize("producer", ["conv", "matmul"])
def test_cpu_fuses_residual_add(producer: str, act: str, order: str) -> None:
    """The residual case above really runs fused on cpu (one op, labelled +residual), for
    every conv algorithm, and matches the reference."""
    cpu = next(b for b in BACKENDS if b.name == "cpu")
    rng = np.random.default_rng(7)
    c = Case()
    if producer == "conv":
        xv = rng.uniform(-1, 1, (1, 8, 9, 9)).astype(F32)
        x = c.input(xv)
        y = c.b.tensor((1, 8, 9, 9), F32)
        w = c.const(rng.uniform(-1, 1, (8, 8, 3, 3)).astype(F32))
        c.b.emit(A.Conv2D([x, w, c.const(rng.uniform(-1, 1, 8).astype(F32))], [y], pads=(1, 1, 1, 1)))
        r = x
    else:
        av = rng.uniform(-1, 1, (1, 5, 7)).astype(F32)
        a = c.input(av)
        y = c.b.tensor((1, 5, 6), F32)
        c.b.emit(A.MatMul([a, c.const(rng.uniform(-1, 1, (1, 7, 6)).astype(F32))], [y], m=5, n=6, k=7,
                          a_batch_stride=35, b_batch_stride=42))
        r = c.input(rng.uniform(-1, 1, (1, 5, 6)).astype(F32))
    z = c.b.binary("add", y, r) if order == "conv_first" else c.b.binary("add", r, y)
    if act == "relu":
        z = c.b.unary("relu", z)
    c.outputs = [z]
    want = reference(c)
    algos = [a.name for a in cpu.algorithms(c.b.ops[0])]
    for name in algos:
        items = [(op, next((a for a in cpu.algorithms(op) if a.name == name), cpu.algorithms(op)[0]))
                 for op in c.b.ops]
        ex = cpu.compile(Program(items, [t for t, _ in c.feeds], [z]), threads=2)
        # (the blocked-layout algorithm adds its layout changes around the one fused op)
        labels = [x for x in ex._labels if not x.startswith("Raster layout")]  # type: ignore[attr-defined]
        assert len(labels) == 1 and "+residual" in labels[0], labels
        assert act == "none" or "+relu" in labels[0], labels
        no_bound: list[np.ndarray | None] = [None]
        compare(ex.run([v for _, v in c.feeds]), want, no_bound, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("producer", ["unary", "matmul"])
@pytest.mark.parametrize("backend", [*BACKENDS, REFERENCE], ids=lambda b: b.name)
def test_gelu_is_relatively_accurate_on_its_left_tail(backend: Backend, producer: str) -> None:
    """GELU below x = -2 is small and must stay accurate relative to itself (a chain that divides
    by it, or a later LayerNorm, scales its error up): 0.5 x (1 + erf(x / sqrt2)) in float32
    cancels (3e-3 relative error at x = -3.5, zero from x = -5.5). As a Unary and as the GELU
    a MatMul carries (the cpu fuses it into the GEMM's row pass)."""
    xs = np.concatenate([np.linspace(-12, 4, 1601), [0.0, -0.0]]).astype(F32)
    c = Case()
    if producer == "unary":
        x = c.input(xs.reshape(1, -1))
    else:  # (n, 1) @ ones(1, 4): every column is x again
        a = c.input(xs.reshape(1, -1, 1))
        x = c.b.tensor((1, xs.size, 4), F32)
        c.b.emit(A.MatMul([a, c.const(np.ones((1, 1, 4), F32))], [x], m=xs.size, n=4, k=1,
                          a_batch_stride=xs.size, b_batch_stride=4))
    c.outputs = [c.b.unary("gelu", x)]
    got = run_program(backend, c)
    if got is None:
        pytest.skip(f"{backend.name} offers no algorithm for this program")
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in xs.astype(np.float64)])
    g = got[0].astype(np.float64).reshape(xs.size, -1)
    normal = np.abs(exact) > 1e-30  # (below, float32 is denormal or zero)
    # the exponent -x^2 / 2 rounds in float32: 1e-5 relative while |x| <= 8, a few 1e-5 beyond
    rtol = np.where(xs >= -8, 1e-5, 1e-4)[normal][:, None]
    rel = np.abs(g - exact[:, None])[normal] / np.abs(exact[:, None][normal])
    worst = int(np.argmax((rel / rtol).max(axis=1)))
    assert np.all(rel <= rtol), f"relative error {rel[worst].max():.2e} at x = {xs[normal][worst]}"
    assert np.all(np.abs(g[~normal]) <= 1e-30)
