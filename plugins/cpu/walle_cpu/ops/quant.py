"""The int8 composites on the cpu backend. ``qlinear_conv`` and ``qlinear_matmul``
(``walle_core.decompose.quant_linear``; ``qgemm.c``, ``qconv.c``) with constant weights, packed
here once for the active int8 variant together with their zero points, bias and requantisation
(the composite's attributes, documented in docs/quantization.md); ``qlinear_lookup`` and
``qlinear_binary`` (``walle_core.decompose.quant_ms``; ``qelementwise.c``) in one pass each."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_cpu._native import FFI, LIB
from walle_cpu.ops.kernel import Binder, OpKernel

CONVERT = frozenset({"quantize_linear", "dequantize_linear"})
NAMES = frozenset({"qlinear_conv", "qlinear_matmul", "qlinear_lookup", "qlinear_binary", "qlinear_bmm"}) | CONVERT
ELEMENTWISE = frozenset({"qlinear_lookup", "qlinear_binary"}) | CONVERT
_BYTES = frozenset({np.dtype(np.uint8), np.dtype(np.int8)})
_I32 = np.dtype(np.int32)
_OUT = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, _I32: 2}  # enum wl_q_out


def is_depthwise(op: A.Composite) -> bool:
    x, w = op.inputs
    return op.name == "qlinear_conv" and int(op.attrs["groups"]) == x.shape[1] == w.shape[0] > 1  # type: ignore[call-overload]


def _elementwise_supported(op: A.Composite) -> bool:
    if op.name in CONVERT:  # float32 <-> 8 bits, one input
        (x,) = op.inputs
        low, high = (op.out, x) if op.name == "quantize_linear" else (x, op.out)
        return low.dtype in _BYTES and high.dtype == np.float32 and x.size == op.out.size
    if any(t.dtype not in _BYTES for t in (*op.inputs, op.out)):
        return False
    if op.name == "qlinear_lookup":
        return len(op.inputs) == 1 and np.asarray(op.attrs["table"]).size == 256
    a, b = op.inputs
    inner = int(op.attrs.get("inner", 1))  # type: ignore[call-overload]
    return a.shape == op.out.shape and a.size % (b.size * inner) == 0


def _supported(op: A.Op) -> bool:
    if not isinstance(op, A.Composite) or op.name not in NAMES:
        return False
    if op.name in ELEMENTWISE:
        return _elementwise_supported(op)
    if len(op.inputs) != 2:
        return False
    if op.name == "qlinear_bmm":  # two 8-bit inputs, per-tensor parameters, equal batch dims
        a, w = op.inputs
        return all(t.dtype in _BYTES for t in (a, w, op.out)) and len(a.shape) == len(w.shape) >= 2 \
            and a.shape[:-2] == w.shape[:-2]
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
    if op.name in ELEMENTWISE:
        return Cost(op.flops(), op.bytes_moved(), 1, 0.5)
    eff = 0.4 if is_depthwise(op) else 1.6
    return Cost(op.flops(), op.bytes_moved(), 1, eff)


INT8_GEMM = Algorithm("int8-gemm", _cost)
INT8_DIRECT = Algorithm("int8-direct", _cost)


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
        _OUT[op.out.dtype], op.out.size // rows)  # columns: a conv's n*oh*ow, a matmul's m
    return q


def _encode_elementwise(d: Any, op: A.Composite, b: Binder) -> None:
    b.bind(d, op)
    a = op.inputs[0]
    if op.name in CONVERT:  # WL_QLOOKUP modes 1 (quantize) and 2 (dequantize)
        d.kind = LIB.WL_QLOOKUP
        q = d.qlookup
        low = op.out if op.name == "quantize_linear" else a
        info = np.iinfo(low.dtype)
        q.n, q.flip, q.mode = a.size, 0x80 if low.dtype == np.int8 else 0, 1 if op.name == "quantize_linear" else 2
        q.zero, q.lo, q.hi = int(op.attrs["zero"]), int(info.min), int(info.max)  # type: ignore[call-overload]
        q.scale = float(op.attrs["scale"])  # type: ignore[arg-type]
        return
    if op.name == "qlinear_lookup":
        d.kind = LIB.WL_QLOOKUP
        d.aux = b.aux(np.asarray(op.attrs["table"]).view(np.uint8))
        d.qlookup.n, d.qlookup.flip, d.qlookup.mode = a.size, 0x80 if a.dtype == np.int8 else 0, 0
        return
    d.kind = LIB.WL_QBINARY
    p = d.qbinary
    lo, hi = np.iinfo(op.out.dtype).min, np.iinfo(op.out.dtype).max
    p.n, p.lo, p.hi = a.size, int(lo), int(hi)
    p.a_zero, p.b_zero, p.c_zero = (int(op.attrs[k]) for k in ("a_zero", "b_zero", "c_zero"))  # type: ignore[call-overload]
    p.a_signed, p.b_signed = int(a.dtype == np.int8), int(op.inputs[1].dtype == np.int8)
    p.mul = int(op.attrs["fn"] == "mul")
    p.inner = int(op.attrs.get("inner", 1))  # type: ignore[call-overload]
    p.nb = op.inputs[1].size
    p.ra, p.rb = float(op.attrs["ra"]), float(op.attrs["rb"])  # type: ignore[arg-type]


def _encode_bmm(d: Any, op: A.Composite, b: Binder) -> None:
    """Both operands are inputs: the per-tensor parameters travel in the descriptor and the C
    kernel packs B per run."""
    x, w = op.inputs
    b.bind(d, op)
    d.kind = LIB.WL_QMATMUL
    p = d.qmatmul
    trans_b = bool(op.attrs.get("trans_b", 0))
    p.dyn, p.trans_b = 1, int(trans_b)
    p.batch, p.m, p.k = math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]
    p.n = w.shape[-2] if trans_b else w.shape[-1]
    p.x_signed, p.w_signed = int(x.dtype == np.int8), int(w.dtype == np.int8)
    p.x_zero = int(op.attrs["x_zero"])  # type: ignore[call-overload]
    p.w_zero = int(np.asarray(op.attrs["w_zero"]).reshape(-1)[0])
    p.y_zero, p.lo, p.hi = (int(op.attrs[k]) for k in ("y_zero", "lo", "hi"))  # type: ignore[call-overload]
    p.out = _OUT[op.out.dtype]
    p.scale = float(np.asarray(op.attrs["scale"], np.float32).reshape(-1)[0])


def _encode(d: Any, op: A.Op, algo: Algorithm, b: Binder) -> None:
    assert isinstance(op, A.Composite)
    if op.name in ELEMENTWISE:
        _encode_elementwise(d, op, b)
        return
    x = op.inputs[0]
    if op.name == "qlinear_bmm":
        _encode_bmm(d, op, b)
        return
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


QUANT = OpKernel((A.Composite,), _supported, _encode,
                 lambda op: (INT8_DIRECT if getattr(op, "name", "") in ELEMENTWISE else INT8_GEMM,))
