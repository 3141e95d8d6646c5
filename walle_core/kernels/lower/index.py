"""Index-driven kinds: Gather/Scatter (bad indices raise the status word) and Sort (argsort
by rank counting)."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.lower.common import Unsupported, grid_1d, params_decl, require_types
from walle_core.kernels.lower.raster import copy_launch
from walle_core.kernels.spec import BITS_TAG, BufferDecl, Caps, KernelSpec, Launch, tag

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
        require_types(caps, bt, "i64")
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
        spec = KernelSpec(f"gather_{bt}", (params_decl(), BufferDecl("x0", bt), BufferDecl("x1", "i64"),
                                          BufferDecl("y0", bt, True), BufferDecl("st", "i32", True)), body)
        n = k * max(block, 1)  # zero-width rows still have their indices checked
        return [Launch(spec, [data, idx, out, "status"], [n, block, rows], grid_1d(n), "gather")] if n else []
    upd = op.inputs[2]
    red = op.reduction
    if red == "none":
        t = BITS_TAG[out.dtype.itemsize]
    else:
        t = tag(out.dtype)
        if out.dtype == np.bool_ or red not in _SCATTER_STEP:
            raise Unsupported(f"scatter reduction {red} on {out.dtype}")
    require_types(caps, t, "i64")
    launches: list[Launch] = []
    if out.size:
        launches.append(copy_launch(data, out, (1, 1, out.size), 0, (0, 0, 1), 0, (0, 0, 1)))
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
    spec = KernelSpec(f"scatter_{red}_{t}", (params_decl(), BufferDecl("x1", "i64"), BufferDecl("x2", t),
                                           BufferDecl("y0", t, True), BufferDecl("st", "i32", True)),
                      body, defines=(("T", t),))
    if k:
        launches.append(Launch(spec, [idx, upd, out, "status"], [k, block, rows], grid_1d(max(block, 1)),
                               "scatter"))
    return launches


def lower_sort(op: A.Sort, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t = tag(x.dtype)
    if x.dtype == np.bool_:
        t = "u8"
    require_types(caps, t, "i64")
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
                      (params_decl(), BufferDecl("x0", t), BufferDecl("y0", "i64", True)), body,
                      defines=(("T", t),))
    return [Launch(spec, [x, out], [op.outer, op.n, op.inner], grid_1d(out.size), "argsort")]
