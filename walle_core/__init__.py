"""Walle core: IR, atomic op set, decomposition, ONNX front end, planning and runtime.

The public Python API::

    import walle_core
    model = walle_core.load("model.onnx", backend="auto")
    outputs = model.run({"input": array})
"""

from __future__ import annotations

from walle_core.errors import (
    BackendUnavailableError,
    InputError,
    InvalidModelError,
    ModelLoadError,
    PluginError,
    UnsupportedOpError,
    WalleError,
)
from walle_core.runtime.model import Model, load

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "InputError",
    "InvalidModelError",
    "Model",
    "ModelLoadError",
    "PluginError",
    "UnsupportedOpError",
    "WalleError",
    "__version__",
    "load",
]
