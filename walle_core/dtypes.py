"""The tensor element types Walle supports, and their ONNX codes."""

from __future__ import annotations

import numpy as np

from walle_core.errors import WalleError

# ONNX TensorProto.DataType codes -> numpy dtypes that Walle supports.
ONNX_TO_NUMPY: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
}
NUMPY_TO_ONNX: dict[np.dtype, int] = {v: k for k, v in ONNX_TO_NUMPY.items()}

SUPPORTED = frozenset(ONNX_TO_NUMPY.values())
FLOAT_TYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def from_onnx(code: int) -> np.dtype:
    try:
        return ONNX_TO_NUMPY[code]
    except KeyError:
        raise WalleError(f"unsupported ONNX element type code {code}") from None


def to_onnx(dtype: np.dtype) -> int:
    return NUMPY_TO_ONNX[np.dtype(dtype)]


def is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in FLOAT_TYPES
