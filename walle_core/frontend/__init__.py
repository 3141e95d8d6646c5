"""Model front ends: ONNX (``onnx_import``) and TFLite (``tflite_import``), both producing the
high-level IR of ``walle_core.ir.graph``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from walle_core.ir.graph import Graph


def import_graph(model: str | Path | bytes | Any) -> Graph:
    """Read a model with the front end its content (or, unreadable, its suffix) calls for: a
    TFLite flatbuffer (``TFL3`` identifier, ``.tflite``) or else ONNX."""
    from walle_core.frontend.tflite_import import is_tflite

    if isinstance(model, str | Path | bytes | bytearray) and is_tflite(model):
        from walle_core.frontend.tflite_import import import_model as import_tflite

        return import_tflite(model)
    from walle_core.frontend.onnx_import import import_model as import_onnx

    return import_onnx(model)
