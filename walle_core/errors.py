"""Every error Walle raises on purpose derives from :class:`WalleError`."""

from __future__ import annotations


class WalleError(Exception):
    """Base class of all errors raised by Walle on bad input or unmet requirements."""


class ModelLoadError(WalleError):
    """The model file is missing, corrupt, truncated or not an ONNX model."""


class UnsupportedOpError(WalleError):
    """The model uses an op, attribute or opset that Walle does not implement."""

    def __init__(self, op_type: str, node: str, opset: int, detail: str = "") -> None:
        self.op_type, self.node, self.opset = op_type, node, opset
        msg = f"unsupported op {op_type!r} (node {node!r}, opset {opset})"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class InvalidModelError(WalleError):
    """The model is well-formed ONNX but inconsistent (bad shapes, dangling names, ...)."""


class InputError(WalleError):
    """Feeds given to ``Model.run`` do not match the model's inputs."""


class BackendUnavailableError(WalleError):
    """A backend was requested that is not installed or cannot run on this machine."""


class PluginError(WalleError):
    """A backend plugin is malformed or violated the backend contract."""
