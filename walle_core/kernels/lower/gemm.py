"""MatMul: a tiled GEMM over local-memory tiles (the body the implicit-GEMM conv reuses) and a
naive one-thread-per-output kernel."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.lower.common import (
    MAX_GROUPS,
    Unsupported,
    common_defines,
    grid_1d,
    params_decl,
    require_types,
)
from walle_core.kernels.spec import (
    BufferDecl,
    Caps,
    KernelSpec,
    Launch,
    LocalArray,
    tag,
)

GEMM_BM, GEMM_BN, GEMM_BK = 32, 32, 16  # tiled GEMM: 8x8 threads, 4x4 outputs each


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


def gemm_locals(t: str) -> tuple[LocalArray, ...]:
    return (LocalArray("As", t, GEMM_BK * GEMM_BM), LocalArray("Bs", t, GEMM_BK * GEMM_BN))


def gemm_groups(m: int, n: int, batch: int) -> tuple[int, int, int]:
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
    require_types(caps, t)
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    m, n, k, batch = op.m, op.n, op.k, op.batch
    if m * n * batch == 0:
        return []
    a_idx = "(gk) * M + (gm)" if op.trans_a else "(gm) * K + (gk)"
    b_idx = "(gn) * K + (gk)" if op.trans_b else "(gk) * N + (gn)"
    bias_expr = ""
    if bias is not None:
        bias_expr = "v = v + x2[P[6] != 0 ? gm * N + gn : gn];"
    bufs = [params_decl(), BufferDecl("x0", t), BufferDecl("x1", t)]
    args: list[object] = [a, b]
    if bias is not None:
        bufs.append(BufferDecl("x2", t))
        args.append(bias)
    bufs.append(BufferDecl("y0", t, True))
    args.append(out)
    params = [batch, m, n, k, op.a_batch_stride, op.b_batch_stride, int(op.bias_full)]
    defines = (*common_defines(t), ("ACC", t), ("A_IDX(gm, gk)", a_idx), ("B_IDX(gk, gn)", b_idx))
    variant = f"{'t' if op.trans_a else 'n'}{'t' if op.trans_b else 'n'}{'b' if bias else ''}_{t}"
    if algorithm == "tiled":
        prelude = "  int abase = bz * P[4];\n  int bbase = bz * P[5];"
        body = gemm_body(prelude, "        v = x0[abase + A_IDX(gm, gk)];",
                         "        v = x1[bbase + B_IDX(gk, gn)];",
                         f"        {bias_expr}\n        y0[bz * M * N + gm * N + gn] = CAST(T, v);")
        spec = KernelSpec(f"gemm_tiled_{variant}", tuple(bufs), body, local_size=(8, 8, 1),
                          locals=gemm_locals(t), defines=defines)
        return [Launch(spec, args, params, gemm_groups(m, n, batch), "gemm_tiled")]
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
    return [Launch(spec, args, params, grid_1d(batch * m * n), "gemm_naive")]
