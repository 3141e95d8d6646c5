"""What the cpu backend knows about one op kind: whether its C kernel runs an op, the
algorithms (with costs) it offers, and how an op becomes that kernel's descriptor (the named
parameters of its member of ``wl_op``'s union, from ``csrc/wl.h``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_cpu import codes as K


def direct_cost(efficiency: float, flop_scale: float = 1.0) -> Callable[[A.Op], Cost]:
    def cost(op: A.Op) -> Cost:
        return Cost(op.flops() * flop_scale, op.bytes_moved(), 1, efficiency)

    return cost


DIRECT = Algorithm("direct", direct_cost(0.5))


class Binder(Protocol):
    """The executable being built: binds tensors to descriptor operands and keeps memory alive."""

    def bind(self, d: Any, op: A.Op, ins: Sequence[A.Tensor] | None = None) -> None:
        """``d.ins`` from ``ins`` (default: the op's inputs) and ``d.out`` from the op's output."""

    def aux(self, arr: np.ndarray) -> Any:
        """A pointer to (a contiguous copy of) ``arr``, kept alive with the executable."""

    def apart(self, a: A.Tensor, b: A.Tensor) -> None:
        """Raise unless ``a`` and ``b`` occupy different memory (a residual and its output)."""


@dataclass(frozen=True)
class OpKernel:
    kinds: tuple[type[A.Op], ...]  # the op classes this kernel runs (subclasses included)
    supports: Callable[[A.Op], bool]  # exactly what the C kernel implements
    encode: Callable[[Any, A.Op, Algorithm, Binder], None]  # fill one wl_op descriptor
    algorithms: Callable[[A.Op], Sequence[Algorithm]] = lambda op: (DIRECT,)


def start(d: Any, b: Binder, kind: int, op: A.Op, dtype: np.dtype | None = None, fn: int = 0) -> None:
    """A descriptor's header: the kernel's kind, its function code, the dtype code of ``dtype``
    (the op's input dtype by default) and the op's operands."""
    d.kind = kind
    d.fn = fn
    d.dtype = K.DTYPES[op.inputs[0].dtype if dtype is None else dtype]
    b.bind(d, op)


def set_act(act: Any, a: A.Activation) -> None:
    """A descriptor's ``wl_act`` from an epilogue activation."""
    act.fn = K.UNARY_FNS[a.fn]
    for i, p in enumerate(a.params[:8]):
        act.prm[i] = p
