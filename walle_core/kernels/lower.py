"""Atomic op -> kernel launches, shared by every GPU-style backend.

:func:`lower_op` turns one op into a list of :class:`Launch` (kernel description, buffer
bindings, int32 parameter block, grid) or ``None`` when the device's :class:`Caps` cannot run it
(the planner then falls back to another backend with explicit copies). :func:`algorithms_for`
names the algorithms a backend may offer for an op.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_core.kernels.library import (
    BOOL_BINARY,
    BOOL_UNARY,
    COMPARE,
    FLOAT_BINARY,
    FLOAT_PREDICATES,
    FLOAT_UNARY,
    HELPER_DEPS,
    HELPER_ORDER,
    INT_BINARY,
    INT_UNARY,
)
from walle_core.kernels.spec import (
    BITS_TAG,
    FLOAT_TAGS,
    BufferDecl,
    Caps,
    KernelSpec,
    Launch,
    LocalArray,
    tag,
)

MAXR = 8  # max rank of a strided element-wise view after collapsing
WG = 64  # element-wise work-group size
MAX_GROUPS = 65535
GEMM_BM, GEMM_BN, GEMM_BK = 32, 32, 16  # tiled GEMM: 8x8 threads, 4x4 outputs each


class Unsupported(Exception):
    """This op cannot run with these caps (type, function or size); not an error."""


def _P(writable: bool = False) -> BufferDecl:
    return BufferDecl("P", "i32", writable)


def _helpers(names: Sequence[str]) -> tuple[str, ...]:
    want: set[str] = set()
    for n in names:
        want.add(n)
        want.update(HELPER_DEPS.get(n, ()))
    return tuple(n for n in HELPER_ORDER if n in want)


def _groups(n: int, wg: int = WG) -> tuple[int, int, int]:
    return (max(1, min(MAX_GROUPS, math.ceil(n / wg))), 1, 1)


def f32_bits(v: float) -> int:
    return int(struct.unpack("<i", struct.pack("<f", float(v)))[0])


def _i64_words(v: int) -> list[int]:
    v &= (1 << 64) - 1
    lo, hi = v & 0xFFFFFFFF, v >> 32
    return [lo - (1 << 32) if lo >= 1 << 31 else lo, hi - (1 << 32) if hi >= 1 << 31 else hi]


def _param_words(value: float | int, t: str) -> list[int]:
    """Two int32 words holding a scalar of type ``t`` for the ``PF``/``PD``/``PL`` macros."""
    if t == "f32":
        return [f32_bits(value), 0]
    if t == "f64":
        return _i64_words(int(np.array([value], np.float64).view(np.int64)[0]))
    return _i64_words(int(value))


def _param_read(t: str, k: int) -> str:
    if t == "f32":
        return f"PF({k})"
    if t == "f64":
        return f"PD({k})"
    return f"CAST({t}, PL({k}))"


def _check(caps: Caps, *types: str) -> None:
    missing = [t for t in types if t not in caps.types]
    if missing:
        raise Unsupported(f"device lacks types {missing}")


def _common_defines(t: str) -> tuple[tuple[str, str], ...]:
    return (("T", t), ("Z", f"CAST({t}, 0)"), ("ONE", f"CAST({t}, 1)"))


# --------------------------------------------------------------------------- strided views


def collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dims that are contiguous for every operand; drop size-1 dims."""
    dims = [(s, [st[i] for st in strides]) for i, s in enumerate(shape) if s != 1]
    out_shape: list[int] = []
    out_strides: list[list[int]] = [[] for _ in strides]
    for size, sts in dims:
        if out_shape and all(o[-1] == st * size for o, st in zip(out_strides, sts, strict=True)):
            out_shape[-1] *= size
            for o, st in zip(out_strides, sts, strict=True):
                o[-1] = st
            continue
        out_shape.append(size)
        for o, st in zip(out_strides, sts, strict=True):
            o.append(st)
    if not out_shape:
        out_shape, out_strides = [1], [[0] for _ in strides]
    return out_shape, out_strides


def _strided_body(n_in: int, loads: str, store: str) -> str:
    idx = "\n".join(f"    int i{k} = 0;" for k in range(n_in))
    acc = "\n".join(f"      i{k} += c * P[2 + {MAXR * (k + 1)} + d];" for k in range(n_in))
    return f"""  int n = P[0];
  int rank = P[1];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
{idx}
    int r = i;
    for (int d = rank - 1; d >= 0; d--) {{
      int s = P[2 + d];
      int c = r % s;
      r = r / s;
{acc}
    }}
{loads}
{store}
  }}"""


def _strided_params(n: int, shape: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
    cshape, cstrides = collapse(shape, strides)
    if len(cshape) > MAXR:
        raise Unsupported(f"rank {len(cshape)} > {MAXR} after collapsing")
    params = [n, len(cshape)] + list(cshape) + [0] * (MAXR - len(cshape))
    for st in cstrides:
        params += list(st) + [0] * (MAXR - len(st))
    return params


# --------------------------------------------------------------------------- Raster


def _copy_spec(bt: str) -> KernelSpec:
    body = """  int n = P[0];
  int n1 = P[1];
  int n2 = P[2];
  for (int i = GID_X; i < n; i += GSIZE_X) {
    int z = i / (n1 * n2);
    int y = (i / n2) % n1;
    int x = i % n2;
    y0[P[7] + z * P[8] + y * P[9] + x * P[10]] = x0[P[3] + z * P[4] + y * P[5] + x * P[6]];
  }"""
    return KernelSpec(f"copy3d_{bt}", (_P(), BufferDecl("x0", bt), BufferDecl("y0", bt, True)), body)


def _fill_spec(bt: str) -> KernelSpec:
    value = "CAST(u64, PU64(1))" if bt == "u64" else f"CAST({bt}, P[1])"
    body = f"""  int n = P[0];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
    y0[i] = {value};
  }}"""
    return KernelSpec(f"fill_{bt}", (_P(), BufferDecl("y0", bt, True)), body)


def _fill_launch(out: A.Tensor, value: float, caps: Caps) -> Launch:
    bt = BITS_TAG[out.dtype.itemsize]
    _check(caps, bt)
    bits = np.array([value]).astype(out.dtype).view(f"u{out.dtype.itemsize}")[0]
    n = out.size
    return Launch(_fill_spec(bt), [out], [n, *_i64_words(int(bits))], _groups(n), "fill")


def _copy_launch(src: A.Tensor, dst: A.Tensor, size: tuple[int, int, int], so: int,
                 ss: tuple[int, int, int], do: int, ds: tuple[int, int, int]) -> Launch:
    bt = BITS_TAG[dst.dtype.itemsize]
    n = size[0] * size[1] * size[2]
    params = [n, size[1], size[2], so, *ss, do, *ds]
    return Launch(_copy_spec(bt), [src, dst], params, _groups(n), "copy")


def lower_raster(op: A.Raster, caps: Caps) -> list[Launch]:
    out = op.out
    _check(caps, BITS_TAG[out.dtype.itemsize])
    launches: list[Launch] = []
    if op.fill is not None and out.size:
        launches.append(_fill_launch(out, op.fill, caps))
    for r in op.regions:
        if math.prod(r.size) == 0:
            continue
        launches.append(_copy_launch(op.inputs[r.src], out, r.size, r.src_offset, r.src_strides,
                                     r.dst_offset, r.dst_strides))
    return launches


# --------------------------------------------------------------------------- element-wise


def _float_param_defines(t: str, params: tuple[float, ...]) -> tuple[list[int], str]:
    words: list[int] = []
    decls = []
    for k in range(2):
        v = params[k] if k < len(params) else 0.0
        words += _param_words(v, t)
        decls.append(f"  T P{k} = {_param_read(t, 1 + 2 * k)};")
    return words, "\n".join(decls)


def unary_expr(fn: str, t: str, caps: Caps, is_bool: bool = False) -> tuple[str, tuple[str, ...], str]:
    """(expression in x, helpers, output type) for a unary kind on type ``t``."""
    if t in FLOAT_TAGS:
        if fn in FLOAT_PREDICATES:
            return FLOAT_PREDICATES[fn], (), "u8"
        if fn not in FLOAT_UNARY:
            raise Unsupported(f"unary {fn} on {t}")
        expr, helpers, math_ = FLOAT_UNARY[fn]
        if math_ and t == "f64" and not caps.f64_math:
            raise Unsupported(f"{fn} needs float64 math")
        return expr, helpers, t
    if fn == "not" or (is_bool and fn in BOOL_UNARY):
        return BOOL_UNARY[fn], (), "u8"
    if fn in INT_UNARY:
        return INT_UNARY[fn], (), t
    raise Unsupported(f"unary {fn} on {t}")


def lower_unary(op: A.Unary, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t, to = tag(x.dtype), tag(out.dtype)
    if x.dtype == np.bool_ and op.fn not in BOOL_UNARY:
        raise Unsupported(f"unary {op.fn} on bool")
    expr, helpers, _ = unary_expr(op.fn, t, caps, x.dtype == np.bool_)
    _check(caps, t, to)
    extra: tuple[tuple[str, str], ...] = ()
    if x.dtype.kind in "iub" and op.fn == "clip":
        lo, hi = (int(np.asarray(p).astype(x.dtype)) for p in op.params[:2])
        words = _i64_words(lo) + _i64_words(hi)
        decls = "  T P0 = CAST(T, PL(1));\n  T P1 = CAST(T, PL(3));"
        extra = (("PTYPE", "i64"),)  # PL needs 64-bit integers
        _check(caps, "i64")
    elif x.dtype.kind in "iub":
        words, decls = [], "  T P0 = Z;\n  T P1 = Z;"
    else:
        words, decls = _float_param_defines(t, op.params)
    body = f"""{decls}
  int n = P[0];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
    T x = x0[i];
    y0[i] = CAST(TO, {expr});
  }}"""
    spec = KernelSpec(f"unary_{op.fn}_{t}", (_P(), BufferDecl("x0", t), BufferDecl("y0", to, True)),
                      body, defines=(*_common_defines(t), ("TO", to), *extra), helpers=_helpers(helpers),
                      float_type=t)
    n = out.size
    return [Launch(spec, [x, out], [n, *words], _groups(n), op.fn)] if n else []


def binary_expr(fn: str, t: str, caps: Caps, is_bool: bool) -> tuple[str, tuple[str, ...], str]:
    if fn in COMPARE:
        return COMPARE[fn], (), "u8"
    if is_bool:
        if fn not in BOOL_BINARY:
            raise Unsupported(f"binary {fn} on bool")
        return BOOL_BINARY[fn], (), "u8"
    if fn in ("and", "or", "xor"):
        return BOOL_BINARY[fn], (), "u8"
    if t in FLOAT_TAGS:
        if fn not in FLOAT_BINARY:
            raise Unsupported(f"binary {fn} on {t}")
        expr, helpers, math_ = FLOAT_BINARY[fn]
        if math_ and t == "f64" and not caps.f64_math:
            raise Unsupported(f"{fn} needs float64 math")
        return expr, helpers, t
    if fn not in INT_BINARY:
        raise Unsupported(f"binary {fn} on {t}")
    expr, helpers = INT_BINARY[fn]
    bits = int(t[1:])
    if fn == "shl":  # numpy: shifting by the width or more (or a negative count) gives 0
        expr = f"((b < Z || b >= CAST(T, {bits})) ? Z : (a << b))"
    elif fn == "shr":
        expr = f"((b < Z || b >= CAST(T, {bits})) ? (a < Z ? Z - ONE : Z) : (a >> b))"
    return expr, helpers, t


def lower_binary(op: A.Binary, caps: Caps) -> list[Launch]:
    a, b = op.inputs
    out = op.out
    t, to = tag(a.dtype), tag(out.dtype)
    expr, helpers, _ = binary_expr(op.fn, t, caps, a.dtype == np.bool_)
    if tag(b.dtype) != t:
        raise Unsupported("mixed operand types")
    _check(caps, t, to)
    n = out.size
    if not n:
        return []
    params = _strided_params(n, out.shape, op.strides)
    body = _strided_body(2, "    T a = x0[i0];\n    T b = x1[i1];", f"    y0[i] = CAST(TO, {expr});")
    spec = KernelSpec(f"binary_{op.fn}_{t}",
                      (_P(), BufferDecl("x0", t), BufferDecl("x1", t), BufferDecl("y0", to, True)),
                      body, defines=(*_common_defines(t), ("TO", to)), helpers=_helpers(helpers),
                      float_type=t)
    return [Launch(spec, [a, b, out], params, _groups(n), op.fn)]


def lower_select(op: A.Select, caps: Caps) -> list[Launch]:
    c, a, b = op.inputs
    out = op.out
    bt = BITS_TAG[out.dtype.itemsize]
    ct = BITS_TAG[c.dtype.itemsize]
    _check(caps, bt, ct)
    n = out.size
    if not n:
        return []
    params = _strided_params(n, out.shape, op.strides)
    body = _strided_body(3, "", f"    y0[i] = x0[i0] != CAST({ct}, 0) ? x1[i1] : x2[i2];")
    spec = KernelSpec(f"select_{ct}_{bt}", (_P(), BufferDecl("x0", ct), BufferDecl("x1", bt),
                                           BufferDecl("x2", bt), BufferDecl("y0", bt, True)), body)
    return [Launch(spec, [c, a, b, out], params, _groups(n), "select")]


def lower_cast(op: A.Cast, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t, to = tag(x.dtype), tag(out.dtype)
    _check(caps, t, to)
    if "f16" in (t, to) and "f16" not in caps.types:
        raise Unsupported("float16")
    expr = "((x != CAST(TI, 0)) ? 1 : 0)" if out.dtype == np.bool_ else "x"
    body = f"""  int n = P[0];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
    TI x = x0[i];
    y0[i] = CAST(TO, {expr});
  }}"""
    spec = KernelSpec(f"cast_{t}_{to}_{'b' if out.dtype == np.bool_ else 'n'}",
                      (_P(), BufferDecl("x0", t), BufferDecl("y0", to, True)), body,
                      defines=(("TI", t), ("TO", to)))
    n = out.size
    return [Launch(spec, [x, out], [n], _groups(n), "cast")] if n else []


# --------------------------------------------------------------------------- Reduce


_REDUCE_INIT = {"sum": "Z", "prod": "ONE"}
_REDUCE_STEP = {
    "sum": "acc = acc + v;",
    "prod": "acc = acc * v;",
    "max": "acc = (v > acc || v != v) ? v : acc;",
    "min": "acc = (v < acc || v != v) ? v : acc;",
}


def lower_reduce(op: A.Reduce, caps: Caps, algorithm: str = "serial") -> list[Launch]:
    x, out = op.inputs[0], op.out
    t, to = tag(x.dtype), tag(out.dtype)
    if x.dtype == np.bool_:
        raise Unsupported("reduce on bool")
    _check(caps, t, to)
    fn = op.fn
    total = op.outer * op.inner
    if total == 0 or (op.n == 0 and fn not in ("sum", "prod", "cumsum", "cumprod")):
        if op.n == 0 and fn not in ("sum", "prod", "cumsum", "cumprod") and total:
            raise Unsupported(f"{fn} of an empty axis")
        return []
    if op.n == 0 and fn in ("cumsum", "cumprod"):
        return []
    params = [op.outer, op.n, op.inner]
    head = """  int outer = P[0];
  int n = P[1];
  int inner = P[2];"""
    if algorithm == "workgroup" and fn in _REDUCE_STEP:
        step = _REDUCE_STEP[fn]
        init = _REDUCE_INIT.get(fn, "x0[base]")
        body = f"""{head}
  int row = GRP_X;
  int o = row / inner;
  int ii = row % inner;
  int base = o * n * inner + ii;
  int lid = LID_X;
  T acc = {init};
  for (int j = lid; j < n; j += LSIZE_X) {{
    T v = x0[base + j * inner];
    {step}
  }}
  red[lid] = acc;
  BARRIER();
  for (int s = LSIZE_X / 2; s > 0; s = s / 2) {{
    if (lid < s) {{
      acc = red[lid];
      T v = red[lid + s];
      {step}
      red[lid] = acc;
    }}
    BARRIER();
  }}
  if (lid == 0) y0[row] = CAST(TO, red[0]);"""
        spec = KernelSpec(f"reduce_wg_{fn}_{t}", (_P(), BufferDecl("x0", t), BufferDecl("y0", to, True)),
                          body, local_size=(WG, 1, 1), locals=(LocalArray("red", t, WG),),
                          defines=(*_common_defines(t), ("TO", to)))
        if total > MAX_GROUPS:
            raise Unsupported("too many rows for one group per row")
        return [Launch(spec, [x, out], params, (total, 1, 1), f"reduce_{fn}")]
    if fn in ("sum", "prod", "max", "min"):
        step = _REDUCE_STEP[fn]
        init = _REDUCE_INIT.get(fn, "x0[base]")
        loop = f"""    T acc = {init};
    for (int j = {0 if fn in _REDUCE_INIT else 1}; j < n; j++) {{
      T v = x0[base + j * inner];
      {step}
    }}
    y0[i] = CAST(TO, acc);"""
    elif fn in ("argmax", "argmin"):
        cmp = ">" if fn == "argmax" else "<"
        last = "true" if op.last_index else "false"
        loop = f"""    T best = x0[base];
    int bi = 0;
    for (int j = 1; j < n; j++) {{
      T v = x0[base + j * inner];
      bool upd;
      if (best != best) upd = {last} && (v != v);
      else upd = (v != v) || ({last} ? (v {cmp}= best) : (v {cmp} best));
      if (upd) {{ best = v; bi = j; }}
    }}
    y0[i] = CAST(TO, bi);"""
    elif fn in ("cumsum", "cumprod"):
        opx = "+" if fn == "cumsum" else "*"
        loop = f"""    T acc = {"Z" if fn == "cumsum" else "ONE"};
    for (int j = 0; j < n; j++) {{
      acc = acc {opx} x0[base + j * inner];
      y0[base + j * inner] = CAST(TO, acc);
    }}"""
    else:
        raise Unsupported(f"reduce {fn}")
    body = f"""{head}
  int total = outer * inner;
  for (int i = GID_X; i < total; i += GSIZE_X) {{
    int o = i / inner;
    int ii = i % inner;
    int base = o * n * inner + ii;
{loop}
  }}"""
    spec = KernelSpec(f"reduce_{fn}_{'l' if op.last_index else 'f'}_{t}_{to}",
                      (_P(), BufferDecl("x0", t), BufferDecl("y0", to, True)), body,
                      defines=(*_common_defines(t), ("TO", to)))
    return [Launch(spec, [x, out], params, _groups(total), f"reduce_{fn}")]


# --------------------------------------------------------------------------- GEMM family


def gemm_body(prelude: str, load_a: str, load_b: str, store: str) -> str:
    """Tiled GEMM over work-group local tiles ``As``/``Bs`` (BK x BM, BK x BN): each of the 8x8
    threads accumulates 4x4 outputs. ``load_a``/``load_b`` set ``v`` from (gm, gk)/(gk, gn);
    ``store`` consumes ``v`` at (gm, gn). M, N, K come from P[1..3]; the batch is the z group."""
    return f"""  int M = P[1];
  int N = P[2];
  int K = P[3];
  int bz = GRP_Z;
  int tx = LID_X;
  int ty = LID_Y;
  int tid = ty * 8 + tx;
  int row0 = GRP_Y * {GEMM_BM};
  int col0 = GRP_X * {GEMM_BN};
{prelude}
  ACC acc[16];
  for (int r = 0; r < 16; r++) acc[r] = CAST(ACC, 0);
  for (int k0 = 0; k0 < K; k0 += {GEMM_BK}) {{
    for (int l = 0; l < 8; l++) {{
      int e = tid + l * 64;
      int kk = e / 32;
      int mm = e % 32;
      int gk = k0 + kk;
      int gm = row0 + mm;
      int gn = col0 + mm;
      ACC v = CAST(ACC, 0);
      if (gm < M && gk < K) {{
{load_a}
      }}
      As[e] = v;
      v = CAST(ACC, 0);
      if (gn < N && gk < K) {{
{load_b}
      }}
      Bs[e] = v;
    }}
    BARRIER();
    for (int kk = 0; kk < {GEMM_BK}; kk++) {{
      ACC av[4];
      ACC bv[4];
      for (int q = 0; q < 4; q++) {{
        av[q] = As[kk * 32 + ty + 8 * q];
        bv[q] = Bs[kk * 32 + tx + 8 * q];
      }}
      for (int q = 0; q < 4; q++) {{
        for (int w = 0; w < 4; w++) {{
          acc[q * 4 + w] = acc[q * 4 + w] + av[q] * bv[w];
        }}
      }}
    }}
    BARRIER();
  }}
  for (int q = 0; q < 4; q++) {{
    for (int w = 0; w < 4; w++) {{
      int gm = row0 + ty + 8 * q;
      int gn = col0 + tx + 8 * w;
      if (gm < M && gn < N) {{
        ACC v = acc[q * 4 + w];
{store}
      }}
    }}
  }}"""


def _gemm_locals(t: str) -> tuple[LocalArray, ...]:
    return (LocalArray("As", t, GEMM_BK * GEMM_BM), LocalArray("Bs", t, GEMM_BK * GEMM_BN))


def _gemm_groups(m: int, n: int, batch: int) -> tuple[int, int, int]:
    g = (math.ceil(n / GEMM_BN), math.ceil(m / GEMM_BM), batch)
    if max(g) > MAX_GROUPS:
        raise Unsupported("grid too large")
    return g


def lower_matmul(op: A.MatMul, caps: Caps, algorithm: str = "tiled") -> list[Launch]:
    a, b = op.inputs[:2]
    out = op.out
    t = tag(out.dtype)
    if a.dtype != out.dtype or b.dtype != out.dtype or (t == "u8" and out.dtype == np.bool_):
        raise Unsupported("mixed matmul types")
    _check(caps, t)
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    m, n, k, batch = op.m, op.n, op.k, op.batch
    if m * n * batch == 0:
        return []
    a_idx = "(gk) * M + (gm)" if op.trans_a else "(gm) * K + (gk)"
    b_idx = "(gn) * K + (gk)" if op.trans_b else "(gk) * N + (gn)"
    bias_expr = ""
    if bias is not None:
        bias_expr = "v = v + x2[P[6] != 0 ? gm * N + gn : gn];"
    bufs = [_P(), BufferDecl("x0", t), BufferDecl("x1", t)]
    args: list[object] = [a, b]
    if bias is not None:
        bufs.append(BufferDecl("x2", t))
        args.append(bias)
    bufs.append(BufferDecl("y0", t, True))
    args.append(out)
    params = [batch, m, n, k, op.a_batch_stride, op.b_batch_stride, int(op.bias_full)]
    defines = (*_common_defines(t), ("ACC", t), ("A_IDX(gm, gk)", a_idx), ("B_IDX(gk, gn)", b_idx))
    variant = f"{'t' if op.trans_a else 'n'}{'t' if op.trans_b else 'n'}{'b' if bias else ''}_{t}"
    if algorithm == "tiled":
        prelude = "  int abase = bz * P[4];\n  int bbase = bz * P[5];"
        body = gemm_body(prelude, "        v = x0[abase + A_IDX(gm, gk)];",
                         "        v = x1[bbase + B_IDX(gk, gn)];",
                         f"        {bias_expr}\n        y0[bz * M * N + gm * N + gn] = CAST(T, v);")
        spec = KernelSpec(f"gemm_tiled_{variant}", tuple(bufs), body, local_size=(8, 8, 1),
                          locals=_gemm_locals(t), defines=defines)
        return [Launch(spec, args, params, _gemm_groups(m, n, batch), "gemm_tiled")]
    body = f"""  int M = P[1];
  int N = P[2];
  int K = P[3];
  int total = P[0] * M * N;
  for (int i = GID_X; i < total; i += GSIZE_X) {{
    int bz = i / (M * N);
    int gm = (i / N) % M;
    int gn = i % N;
    int abase = bz * P[4];
    int bbase = bz * P[5];
    ACC v = CAST(ACC, 0);
    for (int gk = 0; gk < K; gk++) {{
      v = v + x0[abase + A_IDX(gm, gk)] * x1[bbase + B_IDX(gk, gn)];
    }}
    {bias_expr}
    y0[i] = CAST(T, v);
  }}"""
    spec = KernelSpec(f"gemm_naive_{variant}", tuple(bufs), body, defines=defines)
    return [Launch(spec, args, params, _groups(batch * m * n), "gemm_naive")]


def _activation(act: A.Activation, t: str, caps: Caps, base: int) -> tuple[str, tuple[str, ...], list[int], str]:
    """(statement applying act to v, helpers, param words, param decls) for fused activations."""
    if act.fn == "identity":
        return "", (), [0, 0, 0, 0], "  T P0 = Z;\n  T P1 = Z;"
    if t not in FLOAT_TAGS or act.fn not in FLOAT_UNARY:
        raise Unsupported(f"fused {act.fn} on {t}")
    expr, helpers, math_ = FLOAT_UNARY[act.fn]
    if math_ and t == "f64" and not caps.f64_math:
        raise Unsupported(f"{act.fn} needs float64 math")
    words: list[int] = []
    decls = []
    for k in range(2):
        v = act.params[k] if k < len(act.params) else 0.0
        words += _param_words(v, t)
        decls.append(f"  T P{k} = {_param_read(t, base + 2 * k)};")
    return f"{{ T x = CAST(T, v); v = {expr}; }}", helpers, words, "\n".join(decls)


_CONV_HEAD = """  int C = P[4];
  int H = P[5];
  int W = P[6];
  int OH = P[7];
  int OW = P[8];
  int KH = P[9];
  int KW = P[10];
  int SH = P[11];
  int SW = P[12];
  int PT = P[13];
  int PLf = P[14];
  int DH = P[15];
  int DW = P[16];
  int G = P[17];
  int O = P[18];"""


def lower_conv(op: A.Conv2D, caps: Caps, algorithm: str = "implicit_gemm") -> list[Launch]:
    x, w = op.inputs[:2]
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    out = op.out
    t = tag(out.dtype)
    if t not in FLOAT_TAGS or x.dtype != out.dtype or w.dtype != out.dtype:
        raise Unsupported("conv on non-float types")
    _check(caps, t)
    n_, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = out.shape
    g = op.groups
    if out.size == 0:
        return []
    og = o // g
    act_stmt, act_helpers, act_words, act_decls = _activation(op.act, t, caps, 20)
    params = [n_, og, oh * ow, cg * kh * kw, c, h, wd, oh, ow, kh, kw, *op.strides,
              op.pads[0], op.pads[1], *op.dilations, g, o, 0, *act_words]
    bufs = [_P(), BufferDecl("x0", t), BufferDecl("x1", t)]
    args: list[object] = [x, w]
    bias_stmt = ""
    if bias is not None:
        bufs.append(BufferDecl("x2", t))
        args.append(bias)
        bias_stmt = "v = v + x2[oc];"
    bufs.append(BufferDecl("y0", t, True))
    args.append(out)
    defines = (*_common_defines(t), ("ACC", t))
    helpers = _helpers(act_helpers)
    variant = f"{'b' if bias else ''}_{op.act.fn}_{t}"
    if algorithm == "implicit_gemm":
        prelude = f"""{_CONV_HEAD}
{act_decls}
  int nb = bz / G;
  int g = bz % G;
  int cg = C / G;
  int KHW = KH * KW;"""
        load_a = "        v = x1[(g * M + gm) * K + gk];"
        load_b = """        int ci = gk / KHW;
        int rr = gk % KHW;
        int oy = gn / OW;
        int ox = gn % OW;
        int iy = oy * SH - PT + (rr / KW) * DH;
        int ix = ox * SW - PLf + (rr % KW) * DW;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = x0[((nb * C + g * cg + ci) * H + iy) * W + ix];"""
        store = f"""        int oc = g * M + gm;
        {bias_stmt}
        {act_stmt}
        y0[(nb * O + oc) * N + gn] = CAST(T, v);"""
        spec = KernelSpec(f"conv_igemm_{variant}", tuple(bufs), gemm_body(prelude, load_a, load_b, store),
                          local_size=(8, 8, 1), locals=_gemm_locals(t), defines=defines,
                          helpers=helpers, float_type=t)
        return [Launch(spec, args, params, _gemm_groups(og, oh * ow, n_ * g), "conv_implicit_gemm")]
    if algorithm == "depthwise":
        if cg != 1:
            raise Unsupported("depthwise needs one input channel per group")
        inner = """      int ci = oc / (O / G);
      for (int ky = 0; ky < KH; ky++) {
        int iy = oy * SH - PT + ky * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; kx++) {
          int ix = ox * SW - PLf + kx * DW;
          if (ix < 0 || ix >= W) continue;
          v = v + x0[((nb * C + ci) * H + iy) * W + ix] * x1[(oc * KH + ky) * KW + kx];
        }
      }"""
    else:
        inner = """      int cg = C / G;
      int g = oc / (O / G);
      for (int ci = 0; ci < cg; ci++) {
        for (int ky = 0; ky < KH; ky++) {
          int iy = oy * SH - PT + ky * DH;
          if (iy < 0 || iy >= H) continue;
          for (int kx = 0; kx < KW; kx++) {
            int ix = ox * SW - PLf + kx * DW;
            if (ix < 0 || ix >= W) continue;
            v = v + x0[((nb * C + g * cg + ci) * H + iy) * W + ix] * x1[((oc * cg + ci) * KH + ky) * KW + kx];
          }
        }
      }"""
    body = f"""{_CONV_HEAD}
{act_decls}
  int total = P[0] * O * OH * OW;
  for (int i = GID_X; i < total; i += GSIZE_X) {{
    int ox = i % OW;
    int oy = (i / OW) % OH;
    int oc = (i / (OW * OH)) % O;
    int nb = i / (OW * OH * O);
    ACC v = CAST(ACC, 0);
{inner}
    {bias_stmt}
    {act_stmt}
    y0[i] = CAST(T, v);
  }}"""
    spec = KernelSpec(f"conv_{algorithm}_{variant}", tuple(bufs), body, defines=defines,
                      helpers=helpers, float_type=t)
    return [Launch(spec, args, params, _groups(out.size), f"conv_{algorithm}")]


# --------------------------------------------------------------------------- Pool2D


def lower_pool(op: A.Pool2D, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t = tag(out.dtype)
    if t not in FLOAT_TAGS or x.dtype != out.dtype:
        raise Unsupported("pool on non-float types")
    _check(caps, t)
    if op.fn == "lp" and t == "f64" and not caps.f64_math and op.p not in (1, 2):
        raise Unsupported("lp pool needs float64 pow")
    if out.size == 0:
        return []
    _n, c, h, w = x.shape
    _, _, oh, ow = out.shape
    pt, pl, pb, pr = op.pads
    init_words = _param_words(-math.inf, t)
    params = [out.size, c, h, w, oh, ow, *op.kernel, *op.strides, pt, pl, *op.dilations, pb, pr,
              int(op.count_include_pad), op.p, *init_words]
    if op.fn == "max":
        init, step, fin = f"{_param_read(t, 18)}", "acc = (v > acc || v != v) ? v : acc;", "acc"
    elif op.fn == "avg":
        init, step, fin = "Z", "acc = acc + v;", "acc / CAST(T, cnt > 0 ? cnt : 1)"
    else:
        if op.p == 1:
            step = "acc = acc + (v < Z ? -v : v);"
            fin = "acc"
        elif op.p == 2:
            step, fin = "acc = acc + v * v;", "sqrt(acc)"
        else:
            step, fin = "acc = acc + pow(v < Z ? -v : v, CAST(T, P[17]));", "pow(acc, ONE / CAST(T, P[17]))"
        init = "Z"
    body = f"""  int total = P[0];
  int C = P[1];
  int H = P[2];
  int W = P[3];
  int OH = P[4];
  int OW = P[5];
  int KH = P[6];
  int KW = P[7];
  int SH = P[8];
  int SW = P[9];
  int PT = P[10];
  int PLf = P[11];
  int DH = P[12];
  int DW = P[13];
  int PB = P[14];
  int PR = P[15];
  int incl = P[16];
  for (int i = GID_X; i < total; i += GSIZE_X) {{
    int ox = i % OW;
    int oy = (i / OW) % OH;
    int nc = i / (OW * OH);
    T acc = {init};
    int cnt = 0;
    for (int ky = 0; ky < KH; ky++) {{
      int iy = oy * SH - PT + ky * DH;
      for (int kx = 0; kx < KW; kx++) {{
        int ix = ox * SW - PLf + kx * DW;
        bool valid = iy >= 0 && iy < H && ix >= 0 && ix < W;
        bool padded = iy >= -PT && iy < H + PB && ix >= -PLf && ix < W + PR;
        if (incl != 0 ? padded : valid) cnt++;
        if (valid) {{
          T v = x0[(nc * H + iy) * W + ix];
          {step}
        }}
      }}
    }}
    y0[i] = CAST(T, {fin});
  }}"""
    spec = KernelSpec(f"pool_{op.fn}{op.p if op.fn == 'lp' else ''}_{t}",
                      (_P(), BufferDecl("x0", t), BufferDecl("y0", t, True)), body,
                      defines=_common_defines(t))
    return [Launch(spec, [x, out], params, _groups(out.size), f"pool_{op.fn}")]


# --------------------------------------------------------------------------- index-driven


_SCATTER_STEP = {
    "none": "y0[dst] = u;",
    "add": "y0[dst] = y0[dst] + u;",
    "mul": "y0[dst] = y0[dst] * u;",
    "max": "{ T v = y0[dst]; y0[dst] = (u > v || u != u) ? u : v; }",
    "min": "{ T v = y0[dst]; y0[dst] = (u < v || u != u) ? u : v; }",
}


def lower_gather_scatter(op: A.GatherScatter, caps: Caps) -> list[Launch]:
    data, idx = op.inputs[:2]
    out = op.out
    if idx.dtype != np.int64:
        raise Unsupported("indices must be int64")
    rows, block = op.rows, op.block
    k = idx.size
    if op.mode == "gather":
        bt = BITS_TAG[out.dtype.itemsize]
        _check(caps, bt, "i64")
        body = """  int n = P[0];
  int block = P[1];
  int rows = P[2];
  int bw = block > 0 ? block : 1;
  for (int i = GID_X; i < n; i += GSIZE_X) {
    int r = i / bw;
    int j = i % bw;
    i64 q = x1[r];
    if (q < CAST(i64, 0)) q = q + CAST(i64, rows);
    if (q < CAST(i64, 0) || q >= CAST(i64, rows)) { st[0] = 1; continue; }
    if (j < block) y0[r * block + j] = x0[CAST(int, q) * block + j];
  }"""
        spec = KernelSpec(f"gather_{bt}", (_P(), BufferDecl("x0", bt), BufferDecl("x1", "i64"),
                                          BufferDecl("y0", bt, True), BufferDecl("st", "i32", True)), body)
        n = k * max(block, 1)  # zero-width rows still have their indices checked
        return [Launch(spec, [data, idx, out, "status"], [n, block, rows], _groups(n), "gather")] if n else []
    upd = op.inputs[2]
    red = op.reduction
    if red == "none":
        t = BITS_TAG[out.dtype.itemsize]
    else:
        t = tag(out.dtype)
        if out.dtype == np.bool_ or red not in _SCATTER_STEP:
            raise Unsupported(f"scatter reduction {red} on {out.dtype}")
    _check(caps, t, "i64")
    launches: list[Launch] = []
    if out.size:
        launches.append(_copy_launch(data, out, (1, 1, out.size), 0, (0, 0, 1), 0, (0, 0, 1)))
    body = f"""  int k = P[0];
  int block = P[1];
  int rows = P[2];
  int bw = block > 0 ? block : 1;
  for (int j = GID_X; j < bw; j += GSIZE_X) {{
    for (int r = 0; r < k; r++) {{
      i64 q = x1[r];
      if (q < CAST(i64, 0)) q = q + CAST(i64, rows);
      if (q < CAST(i64, 0) || q >= CAST(i64, rows)) {{ st[0] = 1; continue; }}
      if (j >= block) continue;
      int dst = CAST(int, q) * block + j;
      T u = x2[r * block + j];
      {_SCATTER_STEP[red]}
    }}
  }}"""
    spec = KernelSpec(f"scatter_{red}_{t}", (_P(), BufferDecl("x1", "i64"), BufferDecl("x2", t),
                                           BufferDecl("y0", t, True), BufferDecl("st", "i32", True)),
                      body, defines=(("T", t),))
    if k:
        launches.append(Launch(spec, [idx, upd, out, "status"], [k, block, rows], _groups(max(block, 1)),
                               "scatter"))
    return launches


def lower_sort(op: A.Sort, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t = tag(x.dtype)
    if x.dtype == np.bool_:
        t = "u8"
    _check(caps, t, "i64")
    if out.size == 0:
        return []
    if op.descending:
        less = "(w > v || (v != v && w == w))"
    else:
        less = "(w < v || (v != v && w == w))"
    if x.dtype.kind in "iub":
        less = "(w > v)" if op.descending else "(w < v)"
    body = f"""  int outer = P[0];
  int n = P[1];
  int inner = P[2];
  int total = outer * n * inner;
  for (int i = GID_X; i < total; i += GSIZE_X) {{
    int ii = i % inner;
    int j = (i / inner) % n;
    int o = i / (inner * n);
    int base = o * n * inner + ii;
    T v = x0[i];
    int rank = 0;
    for (int q = 0; q < n; q++) {{
      T w = x0[base + q * inner];
      bool eq = (w == v) || (w != w && v != v);
      if ({less} || (eq && q < j)) rank++;
    }}
    y0[base + rank * inner] = CAST(i64, j);
  }}"""
    spec = KernelSpec(f"argsort_{'d' if op.descending else 'a'}_{t}",
                      (_P(), BufferDecl("x0", t), BufferDecl("y0", "i64", True)), body,
                      defines=(("T", t),))
    return [Launch(spec, [x, out], [op.outer, op.n, op.inner], _groups(out.size), "argsort")]


# --------------------------------------------------------------------------- entry points


def algorithms_for(op: A.Op) -> list[str]:
    """Algorithm names worth offering for an op (before checking caps)."""
    if isinstance(op, A.MatMul):
        big = op.m >= 16 and op.n >= 16 and op.k >= 8
        return ["tiled", "naive"] if big else ["naive", "tiled"]
    if isinstance(op, A.Conv2D):
        cg = op.inputs[1].shape[1]
        if op.groups > 1 and cg == 1:
            return ["depthwise", "direct"]
        og = op.inputs[1].shape[0] // max(op.groups, 1)
        return ["implicit_gemm", "direct"] if og >= 8 else ["direct", "implicit_gemm"]
    if isinstance(op, A.Reduce):
        if op.fn in _REDUCE_STEP and op.n >= 256 and op.outer * op.inner <= 4096:
            return ["workgroup", "serial"]
        return ["serial"]
    return ["default"]


def lower_op(op: A.Op, caps: Caps, algorithm: str = "default") -> list[Launch]:
    """The launches that run ``op``; raises :class:`Unsupported` when the caps do not allow it."""
    try:
        if isinstance(op, A.Raster):
            return lower_raster(op, caps)
        if isinstance(op, A.Unary):
            return lower_unary(op, caps)
        if isinstance(op, A.Binary):
            return lower_binary(op, caps)
        if isinstance(op, A.Select):
            return lower_select(op, caps)
        if isinstance(op, A.Cast):
            return lower_cast(op, caps)
        if isinstance(op, A.Reduce):
            return lower_reduce(op, caps, algorithm if algorithm != "default" else "serial")
        if isinstance(op, A.MatMul):
            return lower_matmul(op, caps, algorithm if algorithm != "default" else "tiled")
        if isinstance(op, A.Conv2D):
            return lower_conv(op, caps, algorithm if algorithm != "default" else "implicit_gemm")
        if isinstance(op, A.Pool2D):
            return lower_pool(op, caps)
        if isinstance(op, A.GatherScatter):
            return lower_gather_scatter(op, caps)
        if isinstance(op, A.Sort):
            return lower_sort(op, caps)
    except KeyError as exc:  # a dtype with no kernel type (complex, strings, ...)
        raise Unsupported(str(exc)) from None
    raise Unsupported(f"no kernels for {op.kind.value}")


# Fraction of peak each kernel variant reaches (the search's calibration refines it per device).
_EFFICIENCY = {"tiled": 0.5, "implicit_gemm": 0.5, "workgroup": 0.4, "depthwise": 0.4}


def offered(op: A.Op, caps: Caps) -> tuple[Algorithm, ...]:
    """The algorithms a backend with ``caps`` offers for ``op``: the shared answer of the
    OpenCL, Vulkan and Metal plugins to ``Backend.algorithms``."""
    return tuple(Algorithm(name, _cost(_EFFICIENCY.get(name, 0.2)))
                 for name in algorithms_for(op) if supported(op, caps, name))


def _cost(efficiency: float) -> Callable[[A.Op], Cost]:
    def cost(op: A.Op) -> Cost:
        return Cost(op.flops(), op.bytes_moved(), 1, efficiency=efficiency)

    return cost


def supported(op: A.Op, caps: Caps, algorithm: str = "default") -> bool:
    try:
        lower_op(op, caps, algorithm)
    except Unsupported:
        return False
    return True
