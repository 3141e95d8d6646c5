"""MatMul: a register-blocked GEMM over double-buffered local-memory tiles (the body the
implicit-GEMM conv reuses; 32x32 or 128x128 tiles by output size) and a naive
one-thread-per-output kernel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.lower.common import (
    MAX_GROUPS,
    Unsupported,
    bind_operands,
    common_defines,
    compute_type,
    grid_1d,
    require_types,
)
from walle_core.kernels.spec import Caps, KernelSpec, Launch, LocalArray, tag


@dataclass(frozen=True)
class GemmTile:
    """A work-group computes a ``bm x bn`` output tile, ``tm x tn`` outputs per thread (register
    blocking), stepping K by ``bk`` through two local-memory buffers per operand (double
    buffering: the next step's tile is fetched into registers while this one is multiplied)."""

    name: str
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> tuple[int, int]:  # (x: along N, y: along M)
        return self.bn // self.tn, self.bm // self.tm

    @property
    def local_size(self) -> tuple[int, int, int]:
        return (*self.threads, 1)

    def local_bytes(self, itemsize: int) -> int:
        return 2 * self.bk * (self.bm + self.bn) * itemsize


SMALL_TILE = GemmTile("t32", 32, 32, 16, 4, 4)  # 64 threads, 4x4 outputs each
LARGE_TILE = GemmTile("t128", 128, 128, 8, 8, 8)  # 256 threads, 8x8 outputs each


def pick_tile(m: int, n: int, caps: Caps, itemsize: int) -> GemmTile:
    """The large register-blocked tile where the output fills it and the device has the room."""
    big = LARGE_TILE
    fits = caps.max_local >= big.threads[0] * big.threads[1] and caps.local_mem >= big.local_bytes(itemsize)
    return big if fits and m >= 96 and n >= 96 else SMALL_TILE


@dataclass(frozen=True)
class Operand:
    """How a GEMM operand tile is fetched from global memory.

    ``load`` sets ``v`` from (gm, gk) for A or (gk, gn) for B. ``fast_k``: the operand is
    contiguous along K (else along M / N), so consecutive threads fetch consecutive K. With
    ``vector`` (a buffer name), four consecutive elements along the contiguous axis come in one
    vector load ``LOAD4(<vector>_v4, index / 4)`` where ``index`` is the element index of the
    first: the lowering offers it only where that axis' length and every other stride are
    multiples of four (so a vector is either wholly inside the operand or wholly outside).
    """

    load: str
    fast_k: bool
    vector: str = ""
    index: str = ""

    @property
    def width(self) -> int:
        return 4 if self.vector else 1


def _layout(tile: GemmTile, rows: int, op: Operand, c: int) -> tuple[str, str]:
    """(k offset, row offset) in the tile of component ``c`` of fetch slot ``e``."""
    w = op.width
    if op.fast_k:
        kq = tile.bk // w
        return (f"e % {kq}" if w == 1 else f"{w} * (e % {kq}) + {c}"), f"e / {kq}"
    rq = rows // w
    return f"e / {rq}", (f"e % {rq}" if w == 1 else f"{w} * (e % {rq}) + {c}")


def _fetch(tile: GemmTile, operand: str, op: Operand) -> str:
    """Registers ``ra``/``rb`` <- this thread's share of the operand tile at K offset ``k0``."""
    rows, idx, lim = (tile.bm, "gm", "M") if operand == "a" else (tile.bn, "gn", "N")
    base = "row0" if operand == "a" else "col0"
    nt = tile.threads[0] * tile.threads[1]
    kk, rr = _layout(tile, rows, op, 0)
    reg = f"r{operand}"
    if op.vector:
        zero, after = "\n".join(f"      {reg}[4 * l + {c}] = CAST(ACC, 0);" for c in range(4)), ""
        load = f"""        f32x4 q = LOAD4({op.vector}_v4, ({op.index}) / 4);
        {reg}[4 * l] = q.x;
        {reg}[4 * l + 1] = q.y;
        {reg}[4 * l + 2] = q.z;
        {reg}[4 * l + 3] = q.w;"""
    else:
        zero, load, after = "      ACC v = CAST(ACC, 0);", op.load, f"\n      {reg}[l] = v;"
    return f"""    for (int l = 0; l < {rows * tile.bk // nt // op.width}; l++) {{
      int e = tid + l * {nt};
      int gk = k0 + {kk};
      int {idx} = {base} + {rr};
{zero}
      if ({idx} < {lim} && gk < K) {{
{load}
      }}{after}
    }}"""


def _commit(tile: GemmTile, operand: str, op: Operand) -> str:
    """Local buffer ``nxt`` of the operand <- the registers fetched by :func:`_fetch`."""
    rows = tile.bm if operand == "a" else tile.bn
    nt = tile.threads[0] * tile.threads[1]
    arr = "As" if operand == "a" else "Bs"
    stores = []
    for c in range(op.width):
        kk, rr = _layout(tile, rows, op, c)
        reg = f"r{operand}[l]" if op.width == 1 else f"r{operand}[4 * l + {c}]"
        stores.append(f"      {arr}[nxt * {tile.bk * rows} + ({kk}) * {rows} + {rr}] = {reg};")
    stores_text = "\n".join(stores)
    return f"""    for (int l = 0; l < {rows * tile.bk // nt // op.width}; l++) {{
      int e = tid + l * {nt};
{stores_text}
    }}"""


def gemm_body(prelude: str, a: Operand, b: Operand, store: str, tile: GemmTile = SMALL_TILE) -> str:
    """Tiled GEMM over double-buffered local tiles ``As``/``Bs`` (2 x BK x BM, 2 x BK x BN) of
    the operands ``a`` (M x K) and ``b`` (K x N); ``store`` consumes ``v`` at (gm, gn). M, N, K
    come from P[1..3]; the batch is the z group."""
    tx_n, ty_n = tile.threads
    nt = tx_n * ty_n
    fetch = _fetch(tile, "a", a) + "\n" + _fetch(tile, "b", b)
    commit = _commit(tile, "a", a) + "\n" + _commit(tile, "b", b)
    return f"""  int M = P[1];
  int N = P[2];
  int K = P[3];
  int bz = GRP_Z;
  int tx = LID_X;
  int ty = LID_Y;
  int tid = ty * {tx_n} + tx;
  int row0 = GRP_Y * {tile.bm};
  int col0 = GRP_X * {tile.bn};
{prelude}
  ACC acc[{tile.tm * tile.tn}];
  for (int r = 0; r < {tile.tm * tile.tn}; r++) acc[r] = CAST(ACC, 0);
  ACC ra[{tile.bm * tile.bk // nt}];
  ACC rb[{tile.bn * tile.bk // nt}];
  int steps = (K + {tile.bk - 1}) / {tile.bk};
  int k0 = 0;
  int nxt = 0;
{fetch}
{commit}
  BARRIER();
  for (int step = 0; step < steps; step++) {{
    int cur = step % 2;
    nxt = 1 - cur;
    k0 = (step + 1) * {tile.bk};
    if (step + 1 < steps) {{
{fetch}
    }}
    for (int kk = 0; kk < {tile.bk}; kk++) {{
      ACC av[{tile.tm}];
      ACC bv[{tile.tn}];
      for (int q = 0; q < {tile.tm}; q++) av[q] = As[cur * {tile.bk * tile.bm} + kk * {tile.bm} + ty + {ty_n} * q];
      for (int w = 0; w < {tile.tn}; w++) bv[w] = Bs[cur * {tile.bk * tile.bn} + kk * {tile.bn} + tx + {tx_n} * w];
      for (int q = 0; q < {tile.tm}; q++) {{
        for (int w = 0; w < {tile.tn}; w++) {{
          acc[q * {tile.tn} + w] = acc[q * {tile.tn} + w] + av[q] * bv[w];
        }}
      }}
    }}
    if (step + 1 < steps) {{
{commit}
    }}
    BARRIER();
  }}
  for (int q = 0; q < {tile.tm}; q++) {{
    for (int w = 0; w < {tile.tn}; w++) {{
      int gm = row0 + ty + {ty_n} * q;
      int gn = col0 + tx + {tx_n} * w;
      if (gm < M && gn < N) {{
        ACC v = acc[q * {tile.tn} + w];
{store}
      }}
    }}
  }}"""


def gemm_locals(t: str, tile: GemmTile = SMALL_TILE) -> tuple[LocalArray, ...]:
    return (LocalArray("As", t, 2 * tile.bk * tile.bm), LocalArray("Bs", t, 2 * tile.bk * tile.bn))


def gemm_groups(m: int, n: int, batch: int, tile: GemmTile = SMALL_TILE) -> tuple[int, int, int]:
    g = (math.ceil(n / tile.bn), math.ceil(m / tile.bm), batch)
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
    # four-wide loads along the operand's contiguous axis where every stride keeps them aligned
    vec_a = algorithm == "tiled" and t == "f32" and (m if op.trans_a else k) % 4 == 0 and op.a_batch_stride % 4 == 0
    vec_b = algorithm == "tiled" and t == "f32" and (k if op.trans_b else n) % 4 == 0 and op.b_batch_stride % 4 == 0
    bufs, args = bind_operands(op, t, (vec_a, vec_b))
    params = [batch, m, n, k, op.a_batch_stride, op.b_batch_stride, int(op.bias_full)]
    ct = compute_type(t)
    defines = (*common_defines(ct), ("ACC", ct), ("TS", t), ("A_IDX(gm, gk)", a_idx), ("B_IDX(gk, gn)", b_idx))
    variant = f"{'t' if op.trans_a else 'n'}{'t' if op.trans_b else 'n'}{'b' if bias else ''}_{t}"
    if algorithm == "tiled":
        tile = pick_tile(m, n, caps, out.dtype.itemsize)
        prelude = "  int abase = bz * P[4];\n  int bbase = bz * P[5];"
        a_op = Operand("        v = x0[abase + A_IDX(gm, gk)];", not op.trans_a, "x0" if vec_a else "",
                       "abase + A_IDX(gm, gk)")
        b_op = Operand("        v = x1[bbase + B_IDX(gk, gn)];", op.trans_b, "x1" if vec_b else "",
                       "bbase + B_IDX(gk, gn)")
        body = gemm_body(prelude, a_op, b_op,
                         f"        {bias_expr}\n        y0[bz * M * N + gm * N + gn] = CAST(TS, v);", tile)
        vec = f"{'v' if vec_a else 's'}{'v' if vec_b else 's'}"
        spec = KernelSpec(f"gemm_tiled_{tile.name}_{vec}_{variant}", tuple(bufs), body, local_size=tile.local_size,
                          locals=gemm_locals(ct, tile), defines=defines)
        return [Launch(spec, args, params, gemm_groups(m, n, batch, tile), "gemm_tiled")]
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
    y0[i] = CAST(TS, v);
  }}"""
    spec = KernelSpec(f"gemm_naive_{variant}", tuple(bufs), body, defines=defines)
    return [Launch(spec, args, params, grid_1d(batch * m * n), "gemm_naive")]
