"""The cpu backend's op kinds, one module each, named like their C kernel in ``csrc/``: what
each supports, the algorithms it offers and how it fills its descriptor."""

from __future__ import annotations

from collections.abc import Sequence

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_cpu.ops.chain import CHAIN, PRELU_CONV
from walle_cpu.ops.composite import COMPOSITE
from walle_cpu.ops.conv import CONV
from walle_cpu.ops.deconv import KERNEL as DECONV
from walle_cpu.ops.deconv import NAME as DECONV_NAME
from walle_cpu.ops.elementwise import BINARY, CAST, UNARY
from walle_cpu.ops.gather import GATHER
from walle_cpu.ops.kernel import OpKernel
from walle_cpu.ops.matmul import MATMUL
from walle_cpu.ops.pool2d import POOL2D
from walle_cpu.ops.quant import NAMES as QUANT_COMPOSITES
from walle_cpu.ops.quant import QUANT
from walle_cpu.ops.raster import RASTER
from walle_cpu.ops.reduce import REDUCE
from walle_cpu.ops.resize import KERNEL as RESIZE
from walle_cpu.ops.resize import NAME as RESIZE_NAME
from walle_cpu.ops.sort import SORT

KERNELS: tuple[OpKernel, ...] = (COMPOSITE, RASTER, UNARY, BINARY, CAST, REDUCE, MATMUL, PRELU_CONV, CONV,
                                 POOL2D, GATHER, SORT, CHAIN)


def kernel_for(op: A.Op) -> OpKernel | None:
    if isinstance(op, A.Composite) and op.name in QUANT_COMPOSITES:
        return QUANT  # the int8 composites have their own kernels
    if isinstance(op, A.Composite) and op.name == RESIZE_NAME:
        return RESIZE
    if isinstance(op, A.Composite) and op.name == DECONV_NAME:
        return DECONV
    return next((k for k in KERNELS if isinstance(op, k.kinds)), None)


def algorithms(op: A.Op) -> Sequence[Algorithm]:
    """What the cpu backend offers for ``op``: nothing unless its kind's C kernel implements
    it exactly (the planner then gives it to another backend)."""
    k = kernel_for(op)
    return k.algorithms(op) if k is not None and k.supports(op) else ()
