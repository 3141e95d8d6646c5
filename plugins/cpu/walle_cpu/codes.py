"""Codes shared with the C kernels, read through cffi from the one header (``csrc/wl.h``): dtype
and function numbers are written once, in C; this module names them and says which dtypes each
function supports. Everything is empty when the kernels are not built (the backend reports
itself unavailable then, so nothing here is asked for).
"""

from __future__ import annotations

import numpy as np

from walle_cpu._native import FFI


def _enum(name: str, prefix: str) -> dict[str, int]:
    """``enum name``'s constants by their lower-case names without ``prefix``."""
    if FFI is None:
        return {}
    return {k.removeprefix(prefix).lower(): int(v) for k, v in FFI.typeof(f"enum {name}").relements.items()}


_DTYPE_NAMES = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "i8": np.int8,
                "i16": np.int16, "i32": np.int32, "i64": np.int64, "u8": np.uint8, "u16": np.uint16,
                "u32": np.uint32, "u64": np.uint64, "bool": np.bool_}
DTYPES: dict[np.dtype, int] = {np.dtype(_DTYPE_NAMES[n]): v for n, v in _enum("wl_dtype", "D_").items()}
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
BOOL = np.dtype(np.bool_)
I64 = np.dtype(np.int64)
FLOATS = frozenset({F32, F64})
INTS = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                       np.uint32, np.uint64))
NUMERIC = FLOATS | INTS  # what the generic C kernels handle (no float16)

UNARY_FNS = _enum("wl_unary_fn", "U_")
PREDICATES = frozenset({"isnan", "isinf", "isposinf", "isneginf"})
INT_UNARY = frozenset({"identity", "abs", "neg", "relu", "sign", "bitwise_not"})
FLOAT_UNARY = frozenset(UNARY_FNS) - {"not", "bitwise_not"}

BINARY_FNS = _enum("wl_binary_fn", "B_")
COMPARE = frozenset({"eq", "lt", "le", "gt", "ge"})
FLOAT_BINARY = frozenset({"add", "sub", "mul", "div", "pow", "max", "min", "mod", "fmod", "atan2"}) | COMPARE
INT_BINARY = frozenset({"add", "sub", "mul", "div", "max", "min", "mod", "fmod", "bitand", "bitor",
                        "bitxor", "shl", "shr"}) | COMPARE
BOOL_BINARY = frozenset({"and", "or", "xor", "bitand", "bitor", "bitxor", "eq", "max", "min"})

REDUCE_FNS = _enum("wl_reduce_fn", "R_")
POOL_FNS = _enum("wl_pool_fn", "P_")
SCATTER_REDUCTIONS = _enum("wl_scatter_reduction", "S_")
# composites the cpu backend runs as one kernel (walle_core.decompose builds them)
COMPOSITES = frozenset({"lstm_cell", "lstm_sequence", "gru_sequence", "softmax", "log_softmax", "layer_norm",
                        "qlinear_conv", "qlinear_matmul", "qlinear_lookup", "qlinear_binary", "qlinear_bmm",
                        "quantize_linear", "dequantize_linear", "resize2d",
                        "conv_transpose2d"})
