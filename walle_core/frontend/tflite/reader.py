"""Read a ``.tflite`` flatbuffer into plain Python records.

The flatbuffer accessors come from the ``tflite`` package (code generated from TFLite's
published schema). Flatbuffers are not verified by their Python accessors, so every count and
offset read here is bounds-checked and every failure becomes a :class:`ModelLoadError`: a corrupt
or truncated file is reported as such, never as a ``struct.error`` from deep inside.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from walle_core.errors import ModelLoadError, WalleError

FILE_IDENTIFIER = b"TFL3"

# TFLite TensorType -> numpy; None marks types Walle cannot hold (their tensors fail when used).
TENSOR_TYPES: dict[int, tuple[str, np.dtype | None]] = {
    0: ("FLOAT32", np.dtype(np.float32)),
    1: ("FLOAT16", np.dtype(np.float16)),
    2: ("INT32", np.dtype(np.int32)),
    3: ("UINT8", np.dtype(np.uint8)),
    4: ("INT64", np.dtype(np.int64)),
    5: ("STRING", None),
    6: ("BOOL", np.dtype(np.bool_)),
    7: ("INT16", np.dtype(np.int16)),
    8: ("COMPLEX64", None),
    9: ("INT8", np.dtype(np.int8)),
    10: ("FLOAT64", np.dtype(np.float64)),
    11: ("COMPLEX128", None),
    12: ("UINT64", np.dtype(np.uint64)),
    13: ("RESOURCE", None),
    14: ("VARIANT", None),
    15: ("UINT32", np.dtype(np.uint32)),
    16: ("UINT16", np.dtype(np.uint16)),
    17: ("INT4", None),
    18: ("BFLOAT16", None),
}


def tflite_schema() -> Any:
    """The ``tflite`` package (generated schema accessors), or a clear error without it."""
    try:
        return importlib.import_module("tflite")
    except ImportError:
        raise ModelLoadError(
            "reading .tflite models needs the 'tflite' package: pip install 'walle[tflite]'"
        ) from None


@cache
def _option_classes() -> dict[int, str]:
    enum = tflite_schema().BuiltinOptions
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@cache
def builtin_names() -> dict[int, str]:
    enum = tflite_schema().BuiltinOperator
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class Quant:
    """Affine quantisation ``real = (q - zero_point) * scale``; several scales: per channel
    along ``axis``."""

    scale: np.ndarray  # float32, (1,) or (channels,)
    zero_point: np.ndarray  # int64, same length
    axis: int

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class TflTensor:
    index: int
    name: str
    type_name: str
    dtype: np.dtype | None
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None  # shape_signature: -1 marks a dynamic dim
    data: np.ndarray | None  # constant contents in the stored type
    quant: Quant | None
    sparsity: Any = None  # tflite.SparsityParameters of a sparse constant
    is_variable: bool = False

    def dynamic_axes(self) -> list[int]:
        return [] if self.signature is None else [i for i, d in enumerate(self.signature) if d < 0]


@dataclass
class TflOperator:
    index: int
    code: int
    name: str  # builtin name, or CUSTOM:<custom code>
    version: int
    inputs: list[int]  # -1: omitted optional input
    outputs: list[int]
    options: dict[str, Any] | None  # builtin options by schema accessor name ("StrideW"), or None
    custom_options: bytes = b""


@dataclass
class TflSubgraph:
    index: int
    name: str
    tensors: list[TflTensor]
    operators: list[TflOperator]
    inputs: list[int]
    outputs: list[int]


@dataclass
class TflSignature:
    key: str
    subgraph: int
    inputs: list[tuple[str, int]]  # (signature name, tensor index)
    outputs: list[tuple[str, int]]


@dataclass
class TflModel:
    version: int
    description: str
    subgraphs: list[TflSubgraph]
    signatures: list[TflSignature] = field(default_factory=list)


_NOT_FIELDS = ("Init",)  # the table's own initialiser (InitSubgraphIndex is a field)


def _option_values(table: Any) -> dict[str, Any]:
    """Every field of a builtin-options table, read now (inside the reader's error handling,
    so a corrupt offset surfaces as a load error): scalars as values, vectors as lists."""
    values: dict[str, Any] = {}
    cls = type(table)
    for name in dir(cls):
        if name.startswith("_") or name in _NOT_FIELDS or name.endswith(("AsNumpy", "Length", "IsNone")):
            continue
        if isinstance(inspect.getattr_static(cls, name), classmethod | staticmethod):
            continue  # GetRootAs..., ...BufferHasIdentifier: not fields
        if hasattr(table, name + "AsNumpy"):
            n = getattr(table, name + "Length")()
            values[name] = [v.item() for v in getattr(table, name + "AsNumpy")()] if n else []
        else:
            values[name] = getattr(table, name)()
    return values


def is_tflite_bytes(head: bytes) -> bool:
    """A flatbuffer with TFLite's file identifier (bytes 4-8)."""
    return len(head) >= 8 and head[4:8] == FILE_IDENTIFIER


def read_bytes(model: str | Path | bytes | bytearray) -> bytes:
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return path.read_bytes()


def read_model(model: str | Path | bytes | bytearray) -> TflModel:
    data = read_bytes(model)
    if len(data) < 8:
        raise ModelLoadError(f"not a TFLite model: {len(data)} bytes is too short for a flatbuffer")
    if not is_tflite_bytes(data):
        raise ModelLoadError(
            f"not a TFLite model: file identifier {data[4:8]!r}, expected {FILE_IDENTIFIER!r}"
        )
    try:
        return _Reader(data).model()
    except WalleError:
        raise
    except Exception as exc:  # struct.error, IndexError, ValueError from out-of-range offsets
        raise ModelLoadError(
            f"corrupt or truncated TFLite model ({type(exc).__name__}: {exc})"
        ) from None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.schema = tflite_schema()

    def count(self, n: int, what: str, item_bytes: int = 1) -> int:
        # A vector cannot hold more elements than the file has bytes: a larger count is corrupt
        # (and would otherwise make us loop over garbage for a long time).
        if n < 0 or n * item_bytes > len(self.data):
            raise ModelLoadError(f"corrupt TFLite model: {what} claims {n} entries")
        return n

    def model(self) -> TflModel:
        m = self.schema.Model.GetRootAsModel(self.data, 0)
        version = int(m.Version())
        if version != 3:
            raise ModelLoadError(f"unsupported TFLite schema version {version} (expected 3)")
        buffers = [self.buffer(m.Buffers(i), i) for i in range(self.count(m.BuffersLength(), "buffers", 4))]
        codes = [self.opcode(m.OperatorCodes(i)) for i in range(self.count(m.OperatorCodesLength(), "operator codes", 4))]
        n_sub = self.count(m.SubgraphsLength(), "subgraphs", 4)
        if n_sub == 0:
            raise ModelLoadError("TFLite model has no subgraph")
        subgraphs = [self.subgraph(m.Subgraphs(i), i, buffers, codes) for i in range(n_sub)]
        signatures = [self.signature(m.SignatureDefs(i), subgraphs)
                      for i in range(self.count(m.SignatureDefsLength(), "signatures", 4))]
        desc = m.Description()
        return TflModel(version, desc.decode("utf-8", "replace") if desc else "", subgraphs, signatures)

    def buffer(self, buf: Any, index: int) -> np.ndarray | None:
        offset, size = int(buf.Offset()), int(buf.Size())
        if offset > 1:  # large models keep buffers after the flatbuffer, addressed by offset
            if offset + size > len(self.data):
                raise ModelLoadError(f"truncated TFLite model: buffer {index} lies past the end of the file")
            return np.frombuffer(self.data, np.uint8, size, offset)
        if buf.DataIsNone() or buf.DataLength() == 0:
            return None
        self.count(buf.DataLength(), f"buffer {index}")
        arr = buf.DataAsNumpy()
        return arr if isinstance(arr, np.ndarray) else None

    def opcode(self, oc: Any) -> tuple[int, str, int]:
        # builtin_code superseded the int8 deprecated_builtin_code at 127 ops; the larger wins.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == 32:  # CUSTOM
            custom = oc.CustomCode()
            name = "CUSTOM:" + (custom.decode("utf-8", "replace") if custom else "?")
        else:
            name = builtin_names().get(code, f"BUILTIN_{code}")
        return code, name, int(oc.Version())

    def tensor(self, t: Any, index: int, buffers: list[np.ndarray | None]) -> TflTensor:
        raw_name = t.Name()
        name = raw_name.decode("utf-8", "replace") if raw_name else f"tensor_{index}"
        type_name, dtype = TENSOR_TYPES.get(int(t.Type()), (f"TYPE_{t.Type()}", None))
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        signature = (tuple(int(d) for d in t.ShapeSignatureAsNumpy())
                     if t.ShapeSignatureLength() else None)
        if any(d < 0 for d in shape):
            raise ModelLoadError(f"corrupt TFLite model: tensor {name!r} has shape {list(shape)}")
        b = int(t.Buffer())
        if not 0 <= b < len(buffers):
            raise ModelLoadError(f"corrupt TFLite model: tensor {name!r} refers to buffer {b} of {len(buffers)}")
        sparsity = t.Sparsity()
        raw = buffers[b]
        data = None
        if raw is not None and dtype is not None:
            if sparsity is not None:
                data = np.frombuffer(raw.tobytes(), dtype)  # values only; densified by the importer
            else:
                n = int(np.prod(shape, dtype=np.int64))
                if raw.size != n * dtype.itemsize:
                    raise ModelLoadError(
                        f"corrupt TFLite model: tensor {name!r} {type_name}{list(shape)} needs "
                        f"{n * dtype.itemsize} bytes, its buffer has {raw.size}")
                data = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
        return TflTensor(index, name, type_name, dtype, shape, signature, data,
                         self.quant(t.Quantization(), shape, name), sparsity, bool(t.IsVariable()))

    def quant(self, q: Any, shape: tuple[int, ...], name: str) -> Quant | None:
        if q is None or q.ScaleLength() == 0:
            return None
        scale = np.asarray(q.ScaleAsNumpy(), np.float32).reshape(-1)
        zp = (np.asarray(q.ZeroPointAsNumpy(), np.int64).reshape(-1) if q.ZeroPointLength()
              else np.zeros(scale.size, np.int64))
        axis = int(q.QuantizedDimension())
        if zp.size == 1 and scale.size > 1:
            zp = np.repeat(zp, scale.size)
        if zp.size != scale.size or (scale.size > 1 and (axis >= len(shape) or shape[axis] != scale.size)):
            raise ModelLoadError(
                f"corrupt TFLite model: tensor {name!r} has {scale.size} scales and {zp.size} zero "
                f"points for shape {list(shape)} (axis {axis})")
        return Quant(scale, zp, axis)

    def operator(self, op: Any, index: int, codes: list[tuple[int, str, int]], n_tensors: int,
                 where: str) -> TflOperator:
        ci = int(op.OpcodeIndex())
        if not 0 <= ci < len(codes):
            raise ModelLoadError(f"corrupt TFLite model: operator #{index} of {where} has opcode index {ci}")
        code, name, version = codes[ci]
        ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
        for t in ins + outs:
            if not -1 <= t < n_tensors:
                raise ModelLoadError(f"corrupt TFLite model: operator #{index} ({name}) of {where} "
                                     f"refers to tensor {t} of {n_tensors}")
        options = None
        kind = int(op.BuiltinOptionsType())
        if kind:
            cls_name = _option_classes().get(kind)
            table = op.BuiltinOptions()
            if cls_name is not None and table is not None:
                typed = getattr(self.schema, cls_name)()
                typed.Init(table.Bytes, table.Pos)
                options = _option_values(typed)
        custom = op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b""
        return TflOperator(index, code, name, version, ins, outs, options, custom)

    def subgraph(self, g: Any, index: int, buffers: list[np.ndarray | None],
                 codes: list[tuple[int, str, int]]) -> TflSubgraph:
        raw_name = g.Name()
        name = raw_name.decode("utf-8", "replace") if raw_name else f"subgraph_{index}"
        tensors = [self.tensor(g.Tensors(i), i, buffers) for i in range(self.count(g.TensorsLength(), "tensors", 4))]
        where = f"subgraph {index}"
        ops = [self.operator(g.Operators(i), i, codes, len(tensors), where)
               for i in range(self.count(g.OperatorsLength(), "operators", 4))]
        ins = [int(i) for i in g.InputsAsNumpy()] if g.InputsLength() else []
        outs = [int(i) for i in g.OutputsAsNumpy()] if g.OutputsLength() else []
        for t in ins + outs:
            if not 0 <= t < len(tensors):
                raise ModelLoadError(f"corrupt TFLite model: {where} lists tensor {t} of {len(tensors)} as input or output")
        return TflSubgraph(index, name, tensors, ops, ins, outs)

    def signature(self, s: Any, subgraphs: list[TflSubgraph]) -> TflSignature:
        key = s.SignatureKey()
        sub = int(s.SubgraphIndex())
        if not 0 <= sub < len(subgraphs):
            raise ModelLoadError(f"corrupt TFLite model: signature refers to subgraph {sub}")
        n_tensors = len(subgraphs[sub].tensors)

        def pairs(n: int, get: Any) -> list[tuple[str, int]]:
            found = []
            for i in range(self.count(n, "signature tensors", 4)):
                m = get(i)
                t = int(m.TensorIndex())
                if not 0 <= t < n_tensors:
                    raise ModelLoadError(f"corrupt TFLite model: signature refers to tensor {t}")
                found.append((m.Name().decode("utf-8", "replace"), t))
            return found

        return TflSignature(key.decode("utf-8", "replace") if key else "", sub,
                            pairs(s.InputsLength(), s.Inputs), pairs(s.OutputsLength(), s.Outputs))
