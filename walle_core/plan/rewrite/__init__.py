"""Backend-neutral rewrites of a backend's op list: pattern folds (GELU, HardSwish, MatMul bias) and
epilogue fusions (residual add, activation after a Conv2D or MatMul).

A backend opts in through ``Backend.rewrites`` (what its kernels can take); the planner applies
them to each of its programs before planning their memory. They are idempotent, so a backend
that also accepts hand-built programs (tests, the search's timing) may run :func:`apply` again
in its ``compile``: on a planned program it finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from walle_core import atomic as A
from walle_core.backend import Algorithm, Rewrites
from walle_core.plan.rewrite.epilogue import fuse_activations, fuse_residuals, readers
from walle_core.plan.rewrite.patterns import fold_gelu, fold_hardswish, fold_matmul_bias

Items = list[tuple[A.Op, Algorithm]]


def apply(items: Sequence[tuple[A.Op, Algorithm]], external: set[int], rewrites: Rewrites) -> Items:
    """``items`` rewritten as ``rewrites`` allows; ``external``: ids read outside this list
    (program outputs), which every rewrite keeps."""
    out = list(items)
    if rewrites.gelu:
        out = fold_gelu(out, external)
    if rewrites.hardswish:
        out = fold_hardswish(out, external)
    if rewrites.matmul_bias:
        out = fold_matmul_bias(out, external)
    uses = readers(out)
    if rewrites.residual:
        out = fuse_residuals(out, uses, external)
    if rewrites.activations:
        out = fuse_activations(out, uses, external, rewrites.activations)
    return out
