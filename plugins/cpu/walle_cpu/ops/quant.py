"""int8 convolution and matrix product on the cpu backend (``qgemm.c``, ``qconv.c``): the
``qlinear_conv`` and ``qlinear_matmul`` composites (``walle_core.decompose.quant_linear``) with
constant weights, packed here once for the active int8 variant together with their zero points,
bias and requantisation (the composite's attributes, documented in docs/quantization.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_cpu._native import FFI, LIB
from walle_cpu.ops.kernel import Binder, OpKernel

NAMES = frozenset({"qlinear_conv", "qlinear_matmul"})
_BYTES = frozenset({np.dtype(np.uint8), np.dtype(np.int8)})
_I32 = np.dtype(np.int32)
_OUT = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, _I32: 2}  # enum wl_q_out


def is_depthwise(op: A.Composite) -> bool:
    x, w = op.inputs
    return op.name == "qlinear_conv" and int(op.attrs["groups"]) == x.shape[1] == w.shape[0] > 1  # type: ignore[call-overload]


def _supported(op: A.Op) -> bool:
    if not isinstance(op, A.Composite) or op.name not in NAMES or len(op.inputs) != 2:
        return False
    x, w = op.inputs
    if x.dtype not in _BYTES or w.dtype not in _BYTES or w.value is None or op.out.dtype not in _OUT:
        return False
    if ("scale" in op.attrs) != (op.out.dtype in _BYTES):
        return False
    if op.name == "qlinear_conv":
        return len(x.shape) == 4 and len(w.shape) == 4
    return len(w.shape) == 2 and len(x.shape) >= 2 and x.shape[-1] == w.shape[0]


def _cost(op: A.Op) -> Cost:
    """u8 x s8 dot products retire four multiply-adds per 32-bit lane (vpdpbusd, sdot): measured
    at ~2.5x the fp32 GEMM's flop rate on AVX-512 VNNI, less the im2col packing; the direct
    depthwise kernel is bound by its int32 rows."""
    assert isinstance(op, A.Composite)
    eff = 0.4 if is_depthwise(op) else 1.6
    return Cost(op.flops(), op.bytes_moved(), 1, eff)


INT8_GEMM = Algorithm("int8-gemm", _cost)


def _weights(op: A.Composite) -> np.ndarray:
    """The GEMM rows: a conv's (O, C/g*KH*KW), a matmul's B transposed (N, K)."""
    w = op.inputs[1].value
    assert w is not None
    return np.ascontiguousarray(w.reshape(w.shape[0], -1) if op.name == "qlinear_conv" else w.T)


def _pack(op: A.Composite, b: Binder) -> Any:
    """A wl_qweights and its arrays, in one block the executable keeps alive."""
    rows_w = _weights(op)
    rows, k = rows_w.shape
    head = (FFI.sizeof("wl_qweights") + 63) // 64 * 64
    block = b.aux(np.zeros(head + int(LIB.wl_q_weight_bytes(rows, k)) + 64, np.uint8))
    base = FFI.cast("char*", block)
    mem = base + head + (-int(FFI.cast("uintptr_t", base + head))) % 64
    scale = op.attrs.get("scale")
    scale_ptr = FFI.NULL if scale is None else FFI.cast(  # one per row, also when per tensor
        "float*", b.aux(np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (rows,))))
    wz = np.ascontiguousarray(op.attrs["w_zero"], np.int32)
    bias = np.ascontiguousarray(op.attrs["bias"], np.int32)
    x = op.inputs[0]
    q = FFI.cast("wl_qweights*", base)
    LIB.wl_q_pack_weights(
        q, mem, FFI.from_buffer(rows_w), int(rows_w.dtype == np.int8), rows, k,
        FFI.cast("int32_t*", FFI.from_buffer(wz)), FFI.cast("int32_t*", FFI.from_buffer(bias)),
        int(op.attrs["x_zero"]), int(x.dtype == np.int8), scale_ptr,  # type: ignore[call-overload]
        int(op.attrs.get("y_zero", 0)), int(op.attrs.get("lo", 0)), int(op.attrs.get("hi", 0)),  # type: ignore[call-overload]
        _OUT[op.out.dtype])
    return q


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Composite)
    x = op.inputs[0]
    b.bind(d, op, [x])  # the weights travel packed in aux
    d.aux = _pack(op, b)
    if op.name == "qlinear_matmul":
        d.kind = LIB.WL_QMATMUL
        d.qmatmul.m = math.prod(x.shape[:-1])
        return
    d.kind = LIB.WL_QCONV
    p = d.qconv
    w = op.inputs[1]
    p.n, p.c, p.h, p.w = x.shape
    p.o, p.oh, p.ow = op.out.shape[1], op.out.shape[2], op.out.shape[3]
    p.kh, p.kw = w.shape[2], w.shape[3]
    p.stride_h, p.stride_w = op.attrs["strides"]  # type: ignore[misc]
    pads = op.attrs["pads"]
    p.pad_top, p.pad_left = pads[0], pads[1]  # type: ignore[index]
    p.dilation_h, p.dilation_w = op.attrs["dilations"]  # type: ignore[misc]
    p.groups = int(op.attrs["groups"])  # type: ignore[call-overload]


QUANT = OpKernel((A.Composite,), _supported, _encode, lambda op: (INT8_GEMM,))
