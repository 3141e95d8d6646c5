"""Atomic op -> kernel launches, shared by every GPU-style backend; one module per op kind.

:func:`lower_op` turns one op into a list of :class:`~walle_core.kernels.spec.Launch` (kernel
description, buffer bindings, int32 parameter block, grid) or raises :class:`Unsupported` when the
device's :class:`~walle_core.kernels.spec.Caps` cannot run it (the planner then falls back to
another backend with explicit copies). :func:`algorithms_for` names the algorithms a backend may
offer for an op; :func:`offered` is the shared answer of the GPU plugins to
``Backend.algorithms``.

Where an op kind's kernels live: ``raster.py`` (Raster), ``elementwise.py`` (Unary, Binary,
Select, Cast), ``reduce.py``, ``gemm.py`` (MatMul), ``conv.py`` (Conv2D), ``pool.py`` (Pool2D),
``index.py`` (Gather/Scatter, Sort); ``common.py`` holds what they share.
"""

from __future__ import annotations

from collections.abc import Callable

from walle_core import atomic as A
from walle_core.backend import Algorithm, Cost
from walle_core.kernels.lower.common import Unsupported
from walle_core.kernels.lower.conv import lower_conv
from walle_core.kernels.lower.elementwise import lower_binary, lower_cast, lower_select, lower_unary
from walle_core.kernels.lower.gemm import lower_matmul
from walle_core.kernels.lower.index import lower_gather_scatter, lower_sort
from walle_core.kernels.lower.pool import lower_pool
from walle_core.kernels.lower.raster import lower_raster
from walle_core.kernels.lower.reduce import REDUCE_STEP, lower_reduce
from walle_core.kernels.spec import Caps, Launch

__all__ = ["Unsupported", "algorithms_for", "lower_op", "offered", "supported"]


def algorithms_for(op: A.Op) -> list[str]:
    """Algorithm names worth offering for an op (before checking caps)."""
    if isinstance(op, A.MatMul):
        big = op.m >= 16 and op.n >= 16 and op.k >= 8
        return ["tiled", "naive"] if big else ["naive", "tiled"]
    if isinstance(op, A.Conv2D):
        cg = op.inputs[1].shape[1]
        if op.groups > 1 and cg == 1:
            return ["depthwise", "direct"]
        og = op.inputs[1].shape[0] // max(op.groups, 1)
        return ["implicit_gemm", "direct"] if og >= 8 else ["direct", "implicit_gemm"]
    if isinstance(op, A.Reduce):
        if op.fn in REDUCE_STEP and op.n >= 256 and op.outer * op.inner <= 4096:
            return ["workgroup", "serial"]
        return ["serial"]
    return ["default"]


def lower_op(op: A.Op, caps: Caps, algorithm: str = "default") -> list[Launch]:
    """The launches that run ``op``; raises :class:`Unsupported` when the caps do not allow it."""
    try:
        if isinstance(op, A.Raster):
            return lower_raster(op, caps)
        if isinstance(op, A.Unary):
            return lower_unary(op, caps)
        if isinstance(op, A.Binary):
            return lower_binary(op, caps)
        if isinstance(op, A.Select):
            return lower_select(op, caps)
        if isinstance(op, A.Cast):
            return lower_cast(op, caps)
        if isinstance(op, A.Reduce):
            return lower_reduce(op, caps, algorithm if algorithm != "default" else "serial")
        if isinstance(op, A.MatMul):
            return lower_matmul(op, caps, algorithm if algorithm != "default" else "tiled")
        if isinstance(op, A.Conv2D):
            return lower_conv(op, caps, algorithm if algorithm != "default" else "implicit_gemm")
        if isinstance(op, A.Pool2D):
            return lower_pool(op, caps)
        if isinstance(op, A.GatherScatter):
            return lower_gather_scatter(op, caps)
        if isinstance(op, A.Sort):
            return lower_sort(op, caps)
    except KeyError as exc:  # a dtype with no kernel type (complex, strings, ...)
        raise Unsupported(str(exc)) from None
    raise Unsupported(f"no kernels for {op.kind.value}")


# Fraction of peak each kernel variant reaches (the search's calibration refines it per device).
_EFFICIENCY = {"tiled": 0.5, "implicit_gemm": 0.5, "workgroup": 0.4, "depthwise": 0.4}


def offered(op: A.Op, caps: Caps) -> tuple[Algorithm, ...]:
    """The algorithms a backend with ``caps`` offers for ``op``: the shared answer of the
    OpenCL, Vulkan and Metal plugins to ``Backend.algorithms``."""
    return tuple(Algorithm(name, _cost(_EFFICIENCY.get(name, 0.2)))
                 for name in algorithms_for(op) if supported(op, caps, name))


def _cost(efficiency: float) -> Callable[[A.Op], Cost]:
    def cost(op: A.Op) -> Cost:
        return Cost(op.flops(), op.bytes_moved(), 1, efficiency=efficiency)

    return cost


def supported(op: A.Op, caps: Caps, algorithm: str = "default") -> bool:
    try:
        lower_op(op, caps, algorithm)
    except Unsupported:
        return False
    return True
