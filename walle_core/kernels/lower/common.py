"""Pieces every lowering shares: the parameter block, helper closure, grids, parameter words
and the fused activations of GEMM and conv epilogues."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.kernels.library import FLOAT_UNARY, HELPER_DEPS, HELPER_ORDER
from walle_core.kernels.spec import FLOAT_TAGS, BufferDecl, Caps

MAXR = 8  # max rank of a strided element-wise view after collapsing
WG = 64  # element-wise work-group size
MAX_GROUPS = 65535


class Unsupported(Exception):
    """This op cannot run with these caps (type, function or size); not an error."""


def params_decl(writable: bool = False) -> BufferDecl:
    return BufferDecl("P", "i32", writable)


def bind_operands(op: A.Op, t: str, vec4: tuple[bool, bool] = (False, False)) -> tuple[list[BufferDecl], list[object]]:
    """Buffers and tensors of a kernel over two operands, an optional third (a bias) and one
    output: ``P, x0, x1[, x2], y0``."""
    bufs = [params_decl(), BufferDecl("x0", t, vec4=vec4[0]), BufferDecl("x1", t, vec4=vec4[1])]
    args: list[object] = list(op.inputs[:2])
    if len(op.inputs) > 2:
        bufs.append(BufferDecl("x2", t))
        args.append(op.inputs[2])
    bufs.append(BufferDecl("y0", t, True))
    args.append(op.out)
    return bufs, args


def helper_closure(names: Sequence[str]) -> tuple[str, ...]:
    want: set[str] = set()
    for n in names:
        want.add(n)
        want.update(HELPER_DEPS.get(n, ()))
    return tuple(n for n in HELPER_ORDER if n in want)


def grid_1d(n: int, wg: int = WG) -> tuple[int, int, int]:
    return (max(1, min(MAX_GROUPS, math.ceil(n / wg))), 1, 1)


def f32_bits(v: float) -> int:
    return int(struct.unpack("<i", struct.pack("<f", float(v)))[0])


def i64_words(v: int) -> list[int]:
    v &= (1 << 64) - 1
    lo, hi = v & 0xFFFFFFFF, v >> 32
    return [lo - (1 << 32) if lo >= 1 << 31 else lo, hi - (1 << 32) if hi >= 1 << 31 else hi]


def param_words(value: float | int, t: str) -> list[int]:
    """Two int32 words holding a scalar of type ``t`` for the ``PF``/``PD``/``PL`` macros."""
    if t == "f32":
        return [f32_bits(value), 0]
    if t == "f64":
        return i64_words(int(np.array([value], np.float64).view(np.int64)[0]))
    return i64_words(int(value))


def param_read(t: str, k: int) -> str:
    if t == "f32":
        return f"PF({k})"
    if t == "f64":
        return f"PD({k})"
    return f"CAST({t}, PL({k}))"


def require_types(caps: Caps, *types: str) -> None:
    missing = [t for t in types if t not in caps.types]
    if missing:
        raise Unsupported(f"device lacks types {missing}")


def compute_type(t: str) -> str:
    """The type a kernel computes in for data stored as ``t``: float16 data (the opt-in half
    precision) is widened to float32 on load and rounded once on store."""
    return "f32" if t == "f16" else t


def common_defines(t: str) -> tuple[tuple[str, str], ...]:
    return (("T", t), ("Z", f"CAST({t}, 0)"), ("ONE", f"CAST({t}, 1)"))



def fused_activation(act: A.Activation, t: str, caps: Caps, base: int) -> tuple[str, tuple[str, ...], list[int], str]:
    """(statement applying act to v, helpers, param words, param decls) for fused activations."""
    if act.fn == "identity":
        return "", (), [0, 0, 0, 0], "  T P0 = Z;\n  T P1 = Z;"
    if t not in FLOAT_TAGS or act.fn not in FLOAT_UNARY:
        raise Unsupported(f"fused {act.fn} on {t}")
    expr, helpers, math_ = FLOAT_UNARY[act.fn]
    if math_ and t == "f64" and not caps.f64_math:
        raise Unsupported(f"{act.fn} needs float64 math")
    words: list[int] = []
    decls = []
    for k in range(2):
        v = act.params[k] if k < len(act.params) else 0.0
        words += param_words(v, t)
        decls.append(f"  T P{k} = {param_read(t, base + 2 * k)};")
    return f"{{ T x = CAST(T, v); v = {expr}; }}", helpers, words, "\n".join(decls)

