"""Codes shared with the C side (``csrc/wl.h``): op kinds, dtypes and function numbers."""

from __future__ import annotations

import numpy as np

(RASTER, UNARY, BINARY, SELECT, CAST, REDUCE, MATMUL, CONV, POOL, GATHER, SORT, CHAIN, LSTM_CELL,
 SOFTMAX) = range(1, 15)

DTYPES: dict[np.dtype, int] = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.int8): 3,
    np.dtype(np.int16): 4,
    np.dtype(np.int32): 5,
    np.dtype(np.int64): 6,
    np.dtype(np.uint8): 7,
    np.dtype(np.uint16): 8,
    np.dtype(np.uint32): 9,
    np.dtype(np.uint64): 10,
    np.dtype(np.bool_): 11,
}
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
BOOL = np.dtype(np.bool_)
I64 = np.dtype(np.int64)
FLOATS = frozenset({F32, F64})
INTS = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                       np.uint32, np.uint64))
NUMERIC = FLOATS | INTS  # what the generic C kernels handle (no float16)

UNARY_FNS: dict[str, int] = {
    name: i
    for i, name in enumerate(
        """identity abs neg exp log sqrt rsqrt reciprocal sin cos tan asin acos atan sinh cosh tanh
        asinh acosh atanh sigmoid relu erf floor ceil round sign not isnan isinf isposinf isneginf
        softplus softsign gelu gelu_tanh hardswish hardsigmoid leaky_relu elu selu celu clip mish
        thresholded_relu bitwise_not""".split()
    )
}
PREDICATES = frozenset({"isnan", "isinf", "isposinf", "isneginf"})
INT_UNARY = frozenset({"identity", "abs", "neg", "relu", "sign", "bitwise_not"})
FLOAT_UNARY = frozenset(UNARY_FNS) - {"not", "bitwise_not"}

BINARY_FNS: dict[str, int] = {
    name: i
    for i, name in enumerate(
        "add sub mul div pow max min mod fmod eq lt le gt ge and or xor bitand bitor bitxor shl shr "
        "atan2".split()
    )
}
COMPARE = frozenset({"eq", "lt", "le", "gt", "ge"})
FLOAT_BINARY = frozenset({"add", "sub", "mul", "div", "pow", "max", "min", "mod", "fmod", "atan2"}) | COMPARE
INT_BINARY = frozenset({"add", "sub", "mul", "div", "max", "min", "mod", "fmod", "bitand", "bitor",
                        "bitxor", "shl", "shr"}) | COMPARE
BOOL_BINARY = frozenset({"and", "or", "xor", "bitand", "bitor", "bitxor", "eq", "max", "min"})

REDUCE_FNS = {n: i for i, n in enumerate("sum prod max min argmax argmin cumsum cumprod".split())}
POOL_FNS = {"max": 0, "avg": 1, "lp": 2}
SCATTER_REDUCTIONS = {"none": 0, "add": 1, "mul": 2, "max": 3, "min": 4}
CONV_ALGOS = {"im2col+gemm": 0, "1x1-gemm": 1, "depthwise-direct": 2, "winograd-f23": 3, "nchwc": 4}
# composites the cpu backend runs as one kernel (walle_core.decompose builds them)
COMPOSITES = frozenset({"lstm_cell", "softmax", "log_softmax"})
