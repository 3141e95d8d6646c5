"""Conv2D: implicit GEMM (the tiled GEMM body with an im2col load), depthwise and direct."""

from __future__ import annotations

from walle_core import atomic as A
from walle_core.kernels.lower.common import (
    Unsupported,
    common_defines,
    fused_activation,
    grid_1d,
    helper_closure,
    params_decl,
    require_types,
)
from walle_core.kernels.lower.gemm import Operand, gemm_body, gemm_groups, gemm_locals, pick_tile
from walle_core.kernels.spec import (
    FLOAT_TAGS,
    BufferDecl,
    Caps,
    KernelSpec,
    Launch,
    tag,
)

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
    require_types(caps, t)
    n_, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = out.shape
    g = op.groups
    if out.size == 0:
        return []
    og = o // g
    act_stmt, act_helpers, act_words, act_decls = fused_activation(op.act, t, caps, 20)
    params = [n_, og, oh * ow, cg * kh * kw, c, h, wd, oh, ow, kh, kw, *op.strides,
              op.pads[0], op.pads[1], *op.dilations, g, o, 0, *act_words]
    bufs = [params_decl(), BufferDecl("x0", t), BufferDecl("x1", t)]
    args: list[object] = [x, w]
    bias_stmt = ""
    if bias is not None:
        bufs.append(BufferDecl("x2", t))
        args.append(bias)
        bias_stmt = "v = v + x2[oc];"
    bufs.append(BufferDecl("y0", t, True))
    args.append(out)
    defines = (*common_defines(t), ("ACC", t))
    helpers = helper_closure(act_helpers)
    variant = f"{'b' if bias else ''}_{op.act.fn}_{t}"
    if algorithm == "implicit_gemm":
        prelude = f"""{_CONV_HEAD}
{act_decls}
  int nb = bz / G;
  int g = bz % G;
  int cg = C / G;
  int KHW = KH * KW;"""
        load_a = "        v = x1[(g * M + gm) * K + gk];"
        # a 1x1 conv with unit stride and no padding is a plain GEMM over the pixels: no im2col
        pointwise = kh == kw == 1 and op.strides == (1, 1) and not any(op.pads)
        load_b = "        v = x0[(nb * C + g * cg + gk) * N + gn];" if pointwise else """        int ci = gk / KHW;
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
        tile = pick_tile(og, oh * ow, caps, out.dtype.itemsize)
        vec_a = t == "f32" and cg * kh * kw % 4 == 0
        vec_b = t == "f32" and pointwise and oh * ow % 4 == 0
        bufs[1:3] = [BufferDecl("x0", t, vec4=vec_b), BufferDecl("x1", t, vec4=vec_a)]
        a_op = Operand(load_a, True, "x1" if vec_a else "", "(g * M + gm) * K + gk")
        b_op = Operand(load_b, False, "x0" if vec_b else "", "(nb * C + g * cg + gk) * N + gn")
        body = gemm_body(prelude, a_op, b_op, store, tile)
        kind = "igemm1x1" if pointwise else "igemm"
        vec = f"{'v' if vec_a else 's'}{'v' if vec_b else 's'}"
        spec = KernelSpec(f"conv_{kind}_{tile.name}_{vec}_{variant}", tuple(bufs), body, local_size=tile.local_size,
                          locals=gemm_locals(t, tile), defines=defines, helpers=helpers, float_type=t)
        return [Launch(spec, args, params, gemm_groups(og, oh * ow, n_ * g, tile), "conv_implicit_gemm")]
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
    return [Launch(spec, args, params, grid_1d(out.size), f"conv_{algorithm}")]
