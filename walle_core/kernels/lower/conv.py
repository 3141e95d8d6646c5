"""Conv2D: implicit GEMM (the tiled GEMM body with an im2col load, or none for pointwise convs),
depthwise over a local-memory input patch, and direct (any shape)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from walle_core import atomic as A
from walle_core.kernels.lower.common import (
    MAX_GROUPS,
    Unsupported,
    bind_operands,
    common_defines,
    compute_type,
    fused_activation,
    grid_1d,
    helper_closure,
    require_types,
)
from walle_core.kernels.lower.gemm import Operand, gemm_body, gemm_groups, gemm_locals, pick_tile
from walle_core.kernels.spec import FLOAT_TAGS, BufferDecl, Caps, KernelSpec, Launch, LocalArray, tag

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


@dataclass
class _Conv:
    """What every conv kernel shares: buffers, arguments, parameter block, epilogue."""

    op: A.Conv2D
    t: str
    bufs: list[BufferDecl]
    args: list[object]
    params: list[int]
    bias_stmt: str
    act_stmt: str
    act_decls: str
    defines: tuple[tuple[str, str], ...]
    helpers: tuple[str, ...]
    variant: str

    def spec(self, name: str, body: str, **kw: Any) -> KernelSpec:
        return KernelSpec(f"conv_{name}_{self.variant}", tuple(self.bufs), body, defines=self.defines,
                          helpers=self.helpers, float_type=compute_type(self.t), **kw)


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
    if out.size == 0:
        return []
    og = o // op.groups
    act_stmt, act_helpers, act_words, act_decls = fused_activation(op.act, compute_type(t), caps, 20)
    params = [n_, og, oh * ow, cg * kh * kw, c, h, wd, oh, ow, kh, kw, *op.strides,
              op.pads[0], op.pads[1], *op.dilations, op.groups, o, 0, *act_words]
    bufs, args = bind_operands(op, t)
    conv = _Conv(op, t, bufs, args, params, "v = v + x2[oc];" if bias is not None else "", act_stmt, act_decls,
                 (*common_defines(compute_type(t)), ("ACC", compute_type(t)), ("TS", t)), helper_closure(act_helpers),
                 f"{'b' if bias else ''}_{op.act.fn}_{t}")
    if algorithm == "implicit_gemm":
        return _implicit_gemm(conv, caps)
    if algorithm == "depthwise":
        return _depthwise(conv, caps)
    return _direct(conv, algorithm)


def _implicit_gemm(conv: _Conv, caps: Caps) -> list[Launch]:
    """The conv as a GEMM of weights (O/G x C/G*KH*KW) by im2col columns gathered on the fly."""
    op, t = conv.op, conv.t
    n_, _, _, _ = op.inputs[0].shape
    o, cg, kh, kw = op.inputs[1].shape
    _, _, oh, ow = op.out.shape
    og = o // op.groups
    prelude = f"""{_CONV_HEAD}
{conv.act_decls}
  int nb = bz / G;
  int g = bz % G;
  int cg = C / G;
  int KHW = KH * KW;"""
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
        {conv.bias_stmt}
        {conv.act_stmt}
        y0[(nb * O + oc) * N + gn] = CAST(TS, v);"""
    tile = pick_tile(og, oh * ow, caps, op.out.dtype.itemsize)
    vec_a = t == "f32" and cg * kh * kw % 4 == 0
    vec_b = t == "f32" and pointwise and oh * ow % 4 == 0
    conv.bufs[1:3] = [BufferDecl("x0", t, vec4=vec_b), BufferDecl("x1", t, vec4=vec_a)]
    a_op = Operand("        v = x1[(g * M + gm) * K + gk];", True, "x1" if vec_a else "", "(g * M + gm) * K + gk")
    b_op = Operand(load_b, False, "x0" if vec_b else "", "(nb * C + g * cg + gk) * N + gn")
    vec = f"{'v' if vec_a else 's'}{'v' if vec_b else 's'}"
    spec = conv.spec(f"{'igemm1x1' if pointwise else 'igemm'}_{tile.name}_{vec}",
                     gemm_body(prelude, a_op, b_op, store, tile), local_size=tile.local_size,
                     locals=gemm_locals(compute_type(t), tile))
    groups = gemm_groups(og, oh * ow, n_ * op.groups, tile)
    return [Launch(spec, conv.args, conv.params, groups, "conv_implicit_gemm")]


def _depthwise(conv: _Conv, caps: Caps) -> list[Launch]:
    """One input channel per group: a work-group computes a TH x TW block of one output channel
    from the input patch under it, staged once in local memory (each input pixel is read from
    global memory once per block instead of once per tap)."""
    op = conv.op
    n_, _, _, _ = op.inputs[0].shape
    o, cg, kh, kw = op.inputs[1].shape
    _, _, _, ow = op.out.shape
    if cg != 1:
        raise Unsupported("depthwise needs one input channel per group")
    tw = 32 if ow >= 24 else (16 if ow >= 12 else 8)
    th = 8
    (sh, sw), (dh, dw) = op.strides, op.dilations
    ph, pw = (th - 1) * sh + (kh - 1) * dh + 1, (tw - 1) * sw + (kw - 1) * dw + 1
    if 2 * ph * pw * op.out.dtype.itemsize > caps.local_mem or tw * th > caps.max_local:
        raise Unsupported("depthwise patch does not fit in local memory")
    if n_ * o > MAX_GROUPS:
        raise Unsupported("grid too large")
    body = f"""{_CONV_HEAD}
{conv.act_decls}
  int oc = GRP_Z % O;
  int nb = GRP_Z / O;
  int ci = oc / (O / G);
  int oy0 = GRP_Y * {th};
  int ox0 = GRP_X * {tw};
  int iy0 = oy0 * SH - PT;
  int ix0 = ox0 * SW - PLf;
  for (int e = LID_Y * {tw} + LID_X; e < {ph * pw}; e += {tw * th}) {{
    int iy = iy0 + e / {pw};
    int ix = ix0 + e % {pw};
    xs[e] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x0[((nb * C + ci) * H + iy) * W + ix] : Z;
  }}
  BARRIER();
  int oy = oy0 + LID_Y;
  int ox = ox0 + LID_X;
  if (oy < OH && ox < OW) {{
    ACC v = CAST(ACC, 0);
    for (int ky = 0; ky < KH; ky++) {{
      for (int kx = 0; kx < KW; kx++) {{
        v = v + xs[(LID_Y * SH + ky * DH) * {pw} + LID_X * SW + kx * DW] * x1[(oc * KH + ky) * KW + kx];
      }}
    }}
    {conv.bias_stmt}
    {conv.act_stmt}
    y0[((nb * O + oc) * OH + oy) * OW + ox] = CAST(TS, v);
  }}"""
    spec = conv.spec(f"depthwise_{th}x{tw}_p{ph}x{pw}", body, local_size=(tw, th, 1),
                     locals=(LocalArray("xs", compute_type(conv.t), ph * pw),))
    groups = (math.ceil(ow / tw), math.ceil(op.out.shape[2] / th), n_ * o)
    return [Launch(spec, conv.args, conv.params, groups, "conv_depthwise")]


def _direct(conv: _Conv, algorithm: str) -> list[Launch]:
    """One thread per output, every group and tap in registers: the fallback for any shape."""
    body = f"""{_CONV_HEAD}
{conv.act_decls}
  int total = P[0] * O * OH * OW;
  for (int i = GID_X; i < total; i += GSIZE_X) {{
    int ox = i % OW;
    int oy = (i / OW) % OH;
    int oc = (i / (OW * OH)) % O;
    int nb = i / (OW * OH * O);
    ACC v = CAST(ACC, 0);
    int cg = C / G;
    int g = oc / (O / G);
    for (int ci = 0; ci < cg; ci++) {{
      for (int ky = 0; ky < KH; ky++) {{
        int iy = oy * SH - PT + ky * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; kx++) {{
          int ix = ox * SW - PLf + kx * DW;
          if (ix < 0 || ix >= W) continue;
          v = v + x0[((nb * C + g * cg + ci) * H + iy) * W + ix] * x1[((oc * cg + ci) * KH + ky) * KW + kx];
        }}
      }}
    }}
    {conv.bias_stmt}
    {conv.act_stmt}
    y0[i] = CAST(TS, v);
  }}"""
    spec = conv.spec(algorithm, body)
    return [Launch(spec, conv.args, conv.params, grid_1d(conv.op.out.size), f"conv_{algorithm}")]
