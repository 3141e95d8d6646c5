"""Pool2D: max, average and Lp pooling, one thread per output."""

from __future__ import annotations

import math

from walle_core import atomic as A
from walle_core.kernels.lower.common import (
    Unsupported,
    common_defines,
    compute_type,
    grid_1d,
    param_read,
    param_words,
    params_decl,
    require_types,
)
from walle_core.kernels.spec import FLOAT_TAGS, BufferDecl, Caps, KernelSpec, Launch, tag


def lower_pool(op: A.Pool2D, caps: Caps) -> list[Launch]:
    x, out = op.inputs[0], op.out
    t = tag(out.dtype)
    if t not in FLOAT_TAGS or x.dtype != out.dtype:
        raise Unsupported("pool on non-float types")
    require_types(caps, t)
    if op.fn == "lp" and t == "f64" and not caps.f64_math and op.p not in (1, 2):
        raise Unsupported("lp pool needs float64 pow")
    if out.size == 0:
        return []
    _n, c, h, w = x.shape
    _, _, oh, ow = out.shape
    pt, pl, pb, pr = op.pads
    init_words = param_words(-math.inf, compute_type(t))
    params = [out.size, c, h, w, oh, ow, *op.kernel, *op.strides, pt, pl, *op.dilations, pb, pr,
              int(op.count_include_pad), op.p, *init_words]
    if op.fn == "max":
        init, step, fin = f"{param_read(compute_type(t), 18)}", "acc = (v > acc || v != v) ? v : acc;", "acc"
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
    y0[i] = CAST(TO, {fin});
  }}"""
    spec = KernelSpec(f"pool_{op.fn}{op.p if op.fn == 'lp' else ''}_{t}",
                      (params_decl(), BufferDecl("x0", t), BufferDecl("y0", t, True)), body,
                      defines=(*common_defines(compute_type(t)), ("TO", t)))
    return [Launch(spec, [x, out], params, grid_1d(out.size), f"pool_{op.fn}")]
