"""Model tools around the engine: post-training quantization (``quantize``, ``calibration``)
and half-precision weights (``fp16``). They read and write ONNX with the ``onnx`` package.

The names below are the package's public API (``walle quantize`` and ``walle convert`` use only
these); the modules behind them are internal.
"""

from __future__ import annotations

from pathlib import Path

from walle_core.frontend import import_graph
from walle_core.frontend.onnx_import import read_model_proto
from walle_core.plan.rewrite.qdq import QdqReport, fuse_qdq
from walle_core.tools.calibration import METHODS
from walle_core.tools.fp16 import weights_to_fp16
from walle_core.tools.quantize import (
    QuantizeOptions,
    accuracy,
    load_batches,
    model_inputs,
    quantize,
    random_batches,
)


def integer_report(model: str | Path | bytes) -> QdqReport:
    """How the engine runs a quantized model: which QDQ islands become integer ops, which stay float."""
    return fuse_qdq(import_graph(model))[1]


__all__ = [
    "METHODS",
    "QdqReport",
    "QuantizeOptions",
    "accuracy",
    "integer_report",
    "load_batches",
    "model_inputs",
    "quantize",
    "random_batches",
    "read_model_proto",
    "weights_to_fp16",
]
