"""Graph clean-ups on lowered ops before backend assignment.

Reshape-like copies (a Raster whose every element lands at the same linear offset it came
from) are dropped: consumers read the source buffer directly, so a reshape costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from walle_core import atomic as A


def is_identity_copy(op: A.Op) -> bool:
    if not isinstance(op, A.Raster) or op.fill is not None or len(op.inputs) != 1:
        return False
    src, dst = op.inputs[0], op.out
    if src.size != dst.size or src.dtype != dst.dtype:
        return False
    covered = 0
    for r in op.regions:
        if r.src_offset != r.dst_offset or r.src_strides != r.dst_strides:
            return False
        covered += r.size[0] * r.size[1] * r.size[2]
    return covered == dst.size


def eliminate_copies(ops: Sequence[A.Op], keep: set[int]) -> list[A.Op]:
    """Drop identity copies whose result need not exist on its own (not in ``keep``)."""
    alias: dict[int, A.Tensor] = {}
    out: list[A.Op] = []
    for op in ops:
        op.inputs = [alias.get(t.id, t) for t in op.inputs]
        if is_identity_copy(op) and op.out.id not in keep:
            alias[op.out.id] = op.inputs[0]
            continue
        out.append(op)
    return out
