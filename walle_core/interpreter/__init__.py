"""The engine's own numpy interpreter of the atomic op set (see :mod:`.executor`)."""

from __future__ import annotations

from walle_core.interpreter.executor import Interpreter, fold, kernel_for
from walle_core.interpreter.kernels import KERNELS, Kernel, KernelError

__all__ = ["KERNELS", "Interpreter", "Kernel", "KernelError", "fold", "kernel_for"]
