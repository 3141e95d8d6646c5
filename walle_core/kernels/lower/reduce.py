"""Reduce along one axis: one thread per output (serial) or one work-group per output row
(workgroup). The work-group form folds each lane's strided share of the row, then combines the
lanes: where the device has subgroup arithmetic (``Caps.subgroup``) and the function and type
have it on every dialect (sum/max/min of f32, f64, i32, u32), each subgroup reduces in registers,
writes one partial to local memory, and the first subgroup reduces the partials (one barrier);
otherwise, and for prod, a local-memory tree over the lanes (a barrier per halving)."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.lower.common import (
    MAX_GROUPS,
    WG,
    Unsupported,
    common_defines,
    compute_type,
    grid_1d,
    params_decl,
    require_types,
)
from walle_core.kernels.spec import FLOAT_TAGS, BufferDecl, Caps, KernelSpec, Launch, LocalArray, tag

REDUCE_INIT = {"sum": "Z", "prod": "ONE"}
REDUCE_STEP = {
    "sum": "acc = acc + v;",
    "prod": "acc = acc * v;",
    "max": "acc = (v > acc || v != v) ? v : acc;",
    "min": "acc = (v < acc || v != v) ? v : acc;",
}

# subgroup reduction of each function (prod has none on every dialect) and the types it takes
SUBGROUP_OP = {"sum": "SG_ADD", "max": "SG_MAX", "min": "SG_MIN"}
SUBGROUP_TYPES = frozenset({"f32", "f64", "i32", "u32"})


def use_subgroups(fn: str, t: str, caps: Caps) -> bool:
    """Whether the work-group reduction of ``fn`` over compute type ``t`` reduces in subgroups."""
    return caps.subgroup > 0 and fn in SUBGROUP_OP and t in SUBGROUP_TYPES


def _subgroup_fold(fn: str, t: str) -> str:
    """``acc`` replaced by its reduction over the subgroup (every lane gets it). Devices' subgroup
    max/min need not propagate NaN (they may act as fmax/fmin), so for floats a NaN in any lane is
    carried by a subgroup sum of the lanes' NaNs (zero elsewhere) and replaces the result."""
    op = SUBGROUP_OP[fn]
    if fn == "sum" or t not in FLOAT_TAGS:
        return f"acc = {op}(acc);"
    return f"{{ T nan_ = SG_ADD(acc != acc ? acc : Z); acc = {op}(acc); if (nan_ != nan_) acc = nan_; }}"


def _workgroup_body(head: str, fn: str, t: str, subgroups: bool) -> str:
    step = REDUCE_STEP[fn]
    init = REDUCE_INIT.get(fn, "x0[base]")
    lanes = f"""{head}
  int row = GRP_X;
  int o = row / inner;
  int ii = row % inner;
  int base = o * n * inner + ii;
  int lid = LID_X;
  T acc = {init};
  for (int j = lid; j < n; j += LSIZE_X) {{
    T v = x0[base + j * inner];
    {step}
  }}"""
    if subgroups:  # one partial per subgroup (red holds WG, enough for subgroups of any width)
        fold = _subgroup_fold(fn, t)
        return f"""{lanes}
  {fold}
  if (SG_LANE == 0) red[SG_ID] = acc;
  BARRIER();
  if (SG_ID == 0) {{
    acc = {REDUCE_INIT.get(fn, "red[0]")};
    for (int j = SG_LANE; j < SG_COUNT; j += SG_SIZE) {{
      T v = red[j];
      {step}
    }}
    {fold}
    if (SG_LANE == 0) y0[row] = CAST(TO, acc);
  }}"""
    return f"""{lanes}
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


def lower_reduce(op: A.Reduce, caps: Caps, algorithm: str = "serial") -> list[Launch]:
    x, out = op.inputs[0], op.out
    t, to = tag(x.dtype), tag(out.dtype)
    if x.dtype == np.bool_:
        raise Unsupported("reduce on bool")
    require_types(caps, t, to)
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
    if algorithm == "workgroup" and fn in REDUCE_STEP:
        if total > MAX_GROUPS:
            raise Unsupported("too many rows for one group per row")
        ct = compute_type(t)
        sub = use_subgroups(fn, ct, caps)
        spec = KernelSpec(f"reduce_{'sg' if sub else 'wg'}_{fn}_{t}",
                          (params_decl(), BufferDecl("x0", t), BufferDecl("y0", to, True)),
                          _workgroup_body(head, fn, ct, sub), local_size=(WG, 1, 1),
                          locals=(LocalArray("red", ct, WG),), defines=(*common_defines(ct), ("TO", to)),
                          subgroups=sub)
        return [Launch(spec, [x, out], params, (total, 1, 1), f"reduce_{fn}")]
    if fn in ("sum", "prod", "max", "min"):
        step = REDUCE_STEP[fn]
        init = REDUCE_INIT.get(fn, "x0[base]")
        loop = f"""    T acc = {init};
    for (int j = {0 if fn in REDUCE_INIT else 1}; j < n; j++) {{
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
                      (params_decl(), BufferDecl("x0", t), BufferDecl("y0", to, True)), body,
                      defines=(*common_defines(compute_type(t)), ("TO", to)))
    return [Launch(spec, [x, out], params, grid_1d(total), f"reduce_{fn}")]
