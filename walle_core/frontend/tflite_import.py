"""TFLite front end: ``.tflite`` flatbuffers -> Walle's high-level IR (``walle_core.ir.graph``).

The model is read with the ``tflite`` package (accessors generated from TFLite's published
schema) by ``walle_core.frontend.tflite.reader``, and each operator is mapped onto ONNX op types
(``walle_core.frontend.tflite.ops_*``), so decomposition, search, planning and backends are the
ONNX path's. Layouts and quantisation are handled in ``walle_core.frontend.tflite.convert``.
"""

from __future__ import annotations

from pathlib import Path

from walle_core.frontend.tflite.importer import convert
from walle_core.frontend.tflite.reader import is_tflite_bytes, read_model
from walle_core.ir.graph import Graph

SUFFIXES = (".tflite", ".lite")


def is_tflite(model: str | Path | bytes | bytearray) -> bool:
    """Whether ``model`` (bytes or a path) is a TFLite flatbuffer: by its file identifier, or for
    a path that cannot be read, by its suffix."""
    if isinstance(model, bytes | bytearray):
        return is_tflite_bytes(bytes(model[:8]))
    path = Path(model)
    try:
        with path.open("rb") as fh:
            return is_tflite_bytes(fh.read(8)) or path.suffix.lower() in SUFFIXES
    except OSError:
        return path.suffix.lower() in SUFFIXES


def import_model(model: str | Path | bytes | bytearray, signature: str | None = None) -> Graph:
    """Read a ``.tflite`` model; ``signature`` picks a signature by key (default: the one of
    the main subgraph). Corrupt files raise ``ModelLoadError``, unsupported operators
    ``UnsupportedOpError`` naming the operator, its index and op code."""
    return convert(read_model(model), signature)
