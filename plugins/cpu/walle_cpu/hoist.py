"""Element-wise unaries moved ahead of the pure copies before them, so that they meet the op
that computed the data and become its epilogue.

A strided transposed conv lowered as one conv and a depth-to-space Raster (the sub-pixel
lowering), a Resize or a Concat put a copy between a conv and the ReLU or Sigmoid that follows
it; the activation then runs as its own pass over the copied tensor. ``unary(raster(x))`` is
``raster(unary(x))`` whenever the raster writes every output element from an input element (no
fill): the unary runs on ``x`` (no more elements than the raster's output: never ahead of a
slice that drops some), where the activation fusion folds it into x's producer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from walle_core import atomic as A
from walle_core.backend import Algorithm

Items = list[tuple[A.Op, Algorithm]]


def _hoistable(r: A.Op, u: A.Unary, uses: dict[int, int], produced: set[int], external: set[int]) -> bool:
    if not isinstance(r, A.Raster) or r.fill is not None or len(r.inputs) != 1 or len(r.outputs) != 1:
        return False
    x, t = r.inputs[0], r.out
    return (u.inputs[0] is t and u.out.shape == t.shape and u.out.dtype == t.dtype == x.dtype
            and uses.get(t.id, 0) == 1 and uses.get(x.id, 0) == 1 and x.id in produced
            and x.value is None and not {x.id, t.id} & external and x.size <= t.size)


def hoist_unaries(items: Sequence[tuple[A.Op, Algorithm]], external: set[int],
                  new_id: Callable[[], int]) -> Items:
    """``items`` with every unary whose input is a single-input, fill-free Raster's output
    (read by nothing else, its input read by nothing else) applied before that Raster."""
    out: list[tuple[A.Op, Algorithm] | None] = list(items)
    changed = True
    while changed:
        changed = False
        live = [it for it in out if it is not None]
        uses: dict[int, int] = {}
        for op, _ in live:
            for tid in {t.id for t in op.inputs}:
                uses[tid] = uses.get(tid, 0) + 1
        produced = {t.id for op, _ in live for t in op.outputs}
        where = {op.out.id: i for i, (op, _) in enumerate(live) if op.outputs}
        out = list(live)
        for j, (u, ualgo) in enumerate(live):
            if not isinstance(u, A.Unary) or len(u.inputs) != 1:
                continue
            i = where.get(u.inputs[0].id)
            if i is None or out[i] is None or out[j] is None:
                continue
            r, ralgo = live[i]
            if not _hoistable(r, u, uses, produced, external):
                continue
            x = r.inputs[0]
            x2 = A.Tensor(x.shape, u.out.dtype, None, "", new_id())
            out[i] = (dataclasses.replace(u, inputs=[x], outputs=[x2]), ualgo)
            out[j] = (dataclasses.replace(r, inputs=[x2], outputs=[u.out]), ralgo)
            changed = True
    return [it for it in out if it is not None]
