"""MatMul on the cpu backend (``matmul.c`` on ``gemm.c``): constant weights are packed into GEMM
panels once, here; bias, residual and activation run in the GEMM's epilogue."""

from __future__ import annotations

from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.plan.rewrite.fused import MatMulRes
from walle_cpu import codes as K
from walle_cpu._native import FFI, LIB
from walle_cpu.ops.kernel import Binder, OpKernel, direct_cost, set_act

GEMM = Algorithm("packed-gemm", direct_cost(0.7))


def _supported(op: A.Op) -> bool:
    return all(t.dtype == K.F32 for t in (*op.inputs, op.out))


def pack_panels(b: np.ndarray, k: int, n: int, trans_b: bool = False) -> np.ndarray:
    """A constant (k x n) B (or n x k with ``trans_b``) packed into the active ISA's GEMM
    panels (``wl_pack_b``): ``wl_packed_b_floats(k, n)`` floats."""
    packed = np.zeros(max(1, int(LIB.wl_packed_b_floats(k, n))), np.float32)
    src = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    if src.size == 0:
        src = np.zeros(1, np.float32)
    LIB.wl_pack_b(FFI.cast("float*", FFI.from_buffer(src)), k, n, int(trans_b),
                  FFI.cast("float*", FFI.from_buffer(packed)))
    return packed


def _pack(b: np.ndarray, op: A.MatMul) -> np.ndarray:
    """Constant B of every batch packed into panels for the active ISA's GEMM tiles."""
    nb = op.batch if op.b_batch_stride else 1
    per = int(LIB.wl_packed_b_floats(op.k, op.n))
    packed = np.zeros(max(1, nb * per), np.float32)
    src = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    for i in range(nb):
        lo = i * op.b_batch_stride
        packed[i * per : (i + 1) * per] = pack_panels(src[lo : lo + op.k * op.n], op.k, op.n, op.trans_b)[:per]
    return packed


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.MatMul)
    d.kind = LIB.WL_MATMUL
    b.bind(d, op)
    p = d.matmul
    res = isinstance(op, MatMulRes)
    p.batch, p.m, p.n, p.k = op.batch, op.m, op.n, op.k
    p.trans_a, p.trans_b = int(op.trans_a), int(op.trans_b)
    p.a_batch_stride, p.b_batch_stride = op.a_batch_stride, op.b_batch_stride
    p.has_bias, p.bias_full = int(len(op.inputs) - res > 2), int(op.bias_full)
    if res:
        b.apart(op.inputs[-1], op.out)
        p.residual = len(op.inputs) - 1
    act = getattr(op, "act", None)  # MatMulAct, MatMulRes
    set_act(p.act, act if isinstance(act, A.Activation) else A.Activation())
    w = op.inputs[1]
    if w.value is not None:  # constant weights: pack once, here
        d.aux = b.aux(_pack(w.value, op))
        p.packed = 1
        p.packed_nr = int(LIB.wl_gemm_nr())


MATMUL = OpKernel((A.MatMul,), _supported, _encode, lambda op: (GEMM,))
