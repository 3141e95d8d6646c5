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


class MemoryLimitError(WalleError):
    """A tensor, the folded constants or a plan's arena would pass the engine's memory limit
    (``WALLE_MAX_MEMORY``, or the quota of the task whose run this is). Raised at plan time,
    before anything of that size is allocated."""

    def __init__(self, what: str, nbytes: int, limit: int, source: str) -> None:
        self.what, self.nbytes, self.limit, self.source = what, nbytes, limit, source
        super().__init__(f"{what} needs {_size(nbytes)}, over the memory limit of {_size(limit)} ({source})")

    def at(self, where: str) -> MemoryLimitError:
        """The same error naming the model node it came from (``where`` goes first)."""
        return MemoryLimitError(f"{where}: {self.what}", self.nbytes, self.limit, self.source)


def _size(nbytes: int) -> str:
    """``3.6 TiB (4,000,000,000,000 bytes)``: readable, and exact for scripts that grep."""
    value, unit = float(nbytes), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{nbytes:,} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({nbytes:,} bytes)"
