"""Walle core: the engine. IR, atomic op set, decomposition, ONNX front end, planning, search,
runtime, GPU kernels and the backend contract; plus the task bundle format, the task VM and the
on-device pipeline that run tasks on it (docs/architecture.md says why those belong here).

The public Python API::

    import walle_core
    model = walle_core.load("model.onnx", backend="auto")
    outputs = model.run({"input": array})
    walle_core.describe("model.onnx")  # what the file holds, without preparing a backend

Public modules besides this one: ``walle_core.plugins`` (backend discovery), ``walle_core.search``
(its package-level names); the plugin contract ``walle_core.backend``, ``walle_core.atomic``,
``walle_core.hookspecs`` and ``walle_core.kernels`` (GPU device interface); ``walle_core.task``,
``walle_core.vm``, ``walle_core.pipeline``, ``walle_core.tools`` (its package names),
``walle_core.flags`` and ``walle_core.errors``.
Everything else is internal.
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
from walle_core.runtime.describe import ModelInfo, PlanInfo, StepInfo, TensorInfo, describe
from walle_core.runtime.model import Model, load

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "InputError",
    "InvalidModelError",
    "Model",
    "ModelInfo",
    "ModelLoadError",
    "PlanInfo",
    "PluginError",
    "StepInfo",
    "TensorInfo",
    "UnsupportedOpError",
    "WalleError",
    "__version__",
    "describe",
    "load",
]
