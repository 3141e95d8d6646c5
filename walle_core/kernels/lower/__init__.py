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
from typing import Any

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


Lowering = Callable[[Any, Caps, str], list[Launch]]


def _one_algorithm(lower: Callable[[Any, Caps], list[Launch]]) -> Lowering:
    return lambda op, caps, _algorithm: lower(op, caps)


# op kind -> (its lowering, the algorithm "default" stands for)
_LOWERINGS: dict[type[A.Op], tuple[Lowering, str]] = {
    A.Raster: (_one_algorithm(lower_raster), "default"),
    A.Unary: (_one_algorithm(lower_unary), "default"),
    A.Binary: (_one_algorithm(lower_binary), "default"),
    A.Select: (_one_algorithm(lower_select), "default"),
    A.Cast: (_one_algorithm(lower_cast), "default"),
    A.Reduce: (lower_reduce, "serial"),
    A.MatMul: (lower_matmul, "tiled"),
    A.Conv2D: (lower_conv, "implicit_gemm"),
    A.Pool2D: (_one_algorithm(lower_pool), "default"),
    A.GatherScatter: (_one_algorithm(lower_gather_scatter), "default"),
    A.Sort: (_one_algorithm(lower_sort), "default"),
}


def lower_op(op: A.Op, caps: Caps, algorithm: str = "default") -> list[Launch]:
    """The launches that run ``op``; raises :class:`Unsupported` when the caps do not allow it."""
    entry = _LOWERINGS.get(type(op))
    if entry is None:
        raise Unsupported(f"no kernels for {op.kind.value}")
    lower, default = entry
    try:
        return lower(op, caps, default if algorithm == "default" else algorithm)
    except KeyError as exc:  # a dtype with no kernel type (complex, strings, ...)
        raise Unsupported(str(exc)) from None


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
