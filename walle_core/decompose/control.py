"""Control flow: If, Loop and Scan are inlined at plan time; conditions and trip counts that
depend on data become sync points (see ``walle_core.plan.lower``)."""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


@register("If")
def if_(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    cond = bool(np.asarray(b.value(req(ins[0], "cond"))).reshape(-1)[0])
    branch = ctx.attr("then_branch" if cond else "else_branch")
    return ctx.run_subgraph(branch, [])
