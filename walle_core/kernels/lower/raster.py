"""Raster: the data-movement primitive as fill + one 3-D strided copy per region."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.lower.common import grid_1d, i64_words, params_decl, require_types
from walle_core.kernels.spec import BITS_TAG, BufferDecl, Caps, KernelSpec, Launch


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
    return KernelSpec(f"copy3d_{bt}", (params_decl(), BufferDecl("x0", bt), BufferDecl("y0", bt, True)), body)


def _fill_spec(bt: str) -> KernelSpec:
    value = "CAST(u64, PU64(1))" if bt == "u64" else f"CAST({bt}, P[1])"
    body = f"""  int n = P[0];
  for (int i = GID_X; i < n; i += GSIZE_X) {{
    y0[i] = {value};
  }}"""
    return KernelSpec(f"fill_{bt}", (params_decl(), BufferDecl("y0", bt, True)), body)


def _fill_launch(out: A.Tensor, value: float, caps: Caps) -> Launch:
    bt = BITS_TAG[out.dtype.itemsize]
    require_types(caps, bt)
    bits = np.array([value]).astype(out.dtype).view(f"u{out.dtype.itemsize}")[0]
    n = out.size
    return Launch(_fill_spec(bt), [out], [n, *i64_words(int(bits))], grid_1d(n), "fill")


def copy_launch(src: A.Tensor, dst: A.Tensor, size: tuple[int, int, int], so: int,
                 ss: tuple[int, int, int], do: int, ds: tuple[int, int, int]) -> Launch:
    bt = BITS_TAG[dst.dtype.itemsize]
    n = size[0] * size[1] * size[2]
    params = [n, size[1], size[2], so, *ss, do, *ds]
    return Launch(_copy_spec(bt), [src, dst], params, grid_1d(n), "copy")


def lower_raster(op: A.Raster, caps: Caps) -> list[Launch]:
    out = op.out
    require_types(caps, BITS_TAG[out.dtype.itemsize])
    launches: list[Launch] = []
    if op.fill is not None and out.size:
        launches.append(_fill_launch(out, op.fill, caps))
    for r in op.regions:
        if math.prod(r.size) == 0:
            continue
        launches.append(copy_launch(op.inputs[r.src], out, r.size, r.src_offset, r.src_strides,
                                     r.dst_offset, r.dst_strides))
    return launches
