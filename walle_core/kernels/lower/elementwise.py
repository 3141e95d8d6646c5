"""Element-wise kinds (Unary, Binary, Select, Cast) over strided views: one thread per output
element, operand indices from collapsed shapes and strides in the parameter block."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.library import (
    BOOL_BINARY,
    BOOL_UNARY,
    COMPARE,
    FLOAT_BINARY,
    FLOAT_PREDICATES,
    FLOAT_UNARY,
    INT_BINARY,
    INT_UNARY,
)
from walle_core.kernels.lower.common import (
    MAXR,
    Unsupported,
    common_defines,
    compute_type,
    grid_1d,
    helper_closure,
    i64_words,
    param_read,
    param_words,
    params_decl,
    require_types,
)
from walle_core.kernels.spec import BITS_TAG, FLOAT_TAGS, BufferDecl, Caps, KernelSpec, Launch, tag


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


def strided_body(n_in: int, loads: str, store: str) -> str:
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


def strided_params(n: int, shape: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
    cshape, cstrides = collapse(shape, strides)
    if len(cshape) > MAXR:
        raise Unsupported(f"rank {len(cshape)} > {MAXR} after collapsing")
    params = [n, len(cshape)] + list(cshape) + [0] * (MAXR - len(cshape))
    for st in cstrides:
        params += list(st) + [0] * (MAXR - len(st))
    return params


def _float_param_defines(t: str, params: tuple[float, ...]) -> tuple[list[int], str]:
    words: list[int] = []
    decls = []
    for k in range(2):
        v = params[k] if k < len(params) else 0.0
        words += param_words(v, t)
        decls.append(f"  T P{k} = {param_read(t, 1 + 2 * k)};")
    return words, "\n".join(decls)


def _float_entry(table: dict[str, tuple[str, tuple[str, ...], bool]], kind: str, fn: str, t: str,
                 caps: Caps) -> tuple[str, tuple[str, ...], str]:
    """(expression, helpers, output type) for float op `fn` from `table`; raises when missing or needing f64 math."""
    if fn not in table:
        raise Unsupported(f"{kind} {fn} on {t}")
    expr, helpers, math_ = table[fn]
    if math_ and t == "f64" and not caps.f64_math:
        raise Unsupported(f"{fn} needs float64 math")
    return expr, helpers, t


def unary_expr(fn: str, t: str, caps: Caps, is_bool: bool = False) -> tuple[str, tuple[str, ...], str]:
    """(expression in x, helpers, output type) for a unary kind on type ``t``."""
    if t in FLOAT_TAGS:
        if fn in FLOAT_PREDICATES:
            return FLOAT_PREDICATES[fn], (), "u8"
        return _float_entry(FLOAT_UNARY, "unary", fn, t, caps)
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
    ct = compute_type(t)
    expr, helpers, _ = unary_expr(op.fn, ct, caps, x.dtype == np.bool_)
    require_types(caps, t, to)
    extra: tuple[tuple[str, str], ...] = ()
    if x.dtype.kind in "iub" and op.fn == "clip":
        lo, hi = (int(np.asarray(p).astype(x.dtype)) for p in op.params[:2])
        words = i64_words(lo) + i64_words(hi)
        decls = "  T P0 = CAST(T, PL(1));\n  T P1 = CAST(T, PL(3));"
        extra = (("PTYPE", "i64"),)  # PL needs 64-bit integers
        require_types(caps, "i64")
    elif x.dtype.kind in "iub":
        words, decls = [], "  T P0 = Z;\n  T P1 = Z;"
    else:
        words, decls = _float_param_defines(ct, op.params)
    body = f"""{decls}
  int n = P[0];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
    T x = x0[i];
    y0[i] = CAST(TO, {expr});
  }}"""
    spec = KernelSpec(f"unary_{op.fn}_{t}", (params_decl(), BufferDecl("x0", t), BufferDecl("y0", to, True)),
                      body, defines=(*common_defines(ct), ("TO", to), *extra), helpers=helper_closure(helpers),
                      float_type=ct)
    n = out.size
    return [Launch(spec, [x, out], [n, *words], grid_1d(n), op.fn)] if n else []


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
        return _float_entry(FLOAT_BINARY, "binary", fn, t, caps)
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
    ct = compute_type(t)
    expr, helpers, _ = binary_expr(op.fn, ct, caps, a.dtype == np.bool_)
    if tag(b.dtype) != t:
        raise Unsupported("mixed operand types")
    require_types(caps, t, to)
    n = out.size
    if not n:
        return []
    params = strided_params(n, out.shape, op.strides)
    body = strided_body(2, "    T a = x0[i0];\n    T b = x1[i1];", f"    y0[i] = CAST(TO, {expr});")
    spec = KernelSpec(f"binary_{op.fn}_{t}",
                      (params_decl(), BufferDecl("x0", t), BufferDecl("x1", t), BufferDecl("y0", to, True)),
                      body, defines=(*common_defines(ct), ("TO", to)), helpers=helper_closure(helpers),
                      float_type=ct)
    return [Launch(spec, [a, b, out], params, grid_1d(n), op.fn)]


def lower_select(op: A.Select, caps: Caps) -> list[Launch]:
    c, a, b = op.inputs
    out = op.out
    bt = BITS_TAG[out.dtype.itemsize]
    ct = BITS_TAG[c.dtype.itemsize]
    require_types(caps, bt, ct)
    n = out.size
    if not n:
        return []
    params = strided_params(n, out.shape, op.strides)
    body = strided_body(3, "", f"    y0[i] = x0[i0] != CAST({ct}, 0) ? x1[i1] : x2[i2];")
    spec = KernelSpec(f"select_{ct}_{bt}", (params_decl(), BufferDecl("x0", ct), BufferDecl("x1", bt),
                                           BufferDecl("x2", bt), BufferDecl("y0", bt, True)), body)
    return [Launch(spec, [c, a, b, out], params, grid_1d(n), "select")]


def lower_cast(op: A.Cast, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t, to = tag(x.dtype), tag(out.dtype)
    require_types(caps, t, to)
    if "f16" in (t, to) and "f16" not in caps.types:
        raise Unsupported("float16")
    expr = "((x != CAST(TI, 0)) ? 1 : 0)" if out.dtype == np.bool_ else "x"
    body = f"""  int n = P[0];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
    TI x = x0[i];
    y0[i] = CAST(TO, {expr});
  }}"""
    spec = KernelSpec(f"cast_{t}_{to}_{'b' if out.dtype == np.bool_ else 'n'}",
                      (params_decl(), BufferDecl("x0", t), BufferDecl("y0", to, True)), body,
                      defines=(("TI", t), ("TO", to)))
    n = out.size
    return [Launch(spec, [x, out], [n], grid_1d(n), "cast")] if n else []
