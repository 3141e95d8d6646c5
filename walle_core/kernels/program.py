"""A backend :class:`~walle_core.backend.Program` as kernel launches plus the buffers they bind."""

from __future__ import annotations

from dataclasses import dataclass, field

from walle_core import atomic as A
from walle_core.backend import Program
from walle_core.kernels.lower import lower_op
from walle_core.kernels.spec import Caps, Launch


@dataclass
class PlannedProgram:
    launches: list[Launch]
    sizes: dict[int, int]  # tensor id -> bytes (largest alias)
    constants: dict[int, A.Tensor] = field(default_factory=dict)  # ids with plan-time values
    uses_status: bool = False
    per_op: list[int] = field(default_factory=list)  # launches per op, in program order


def plan_program(program: Program, caps: Caps) -> PlannedProgram:
    """Lower every op with its chosen algorithm; raises ``Unsupported`` if one cannot run."""
    launches: list[Launch] = []
    per_op: list[int] = []
    sizes: dict[int, int] = {}
    constants: dict[int, A.Tensor] = {}

    def note(t: A.Tensor) -> None:
        sizes[t.id] = max(sizes.get(t.id, 0), t.nbytes)
        if t.value is not None:
            constants.setdefault(t.id, t)

    for t in [*program.inputs, *program.outputs]:
        note(t)
    for op, algo in program.ops:
        for t in [*op.inputs, *op.outputs]:
            note(t)
        ls = lower_op(op, caps, algo.name)
        launches += ls
        per_op.append(len(ls))
    uses_status = any(a == "status" for la in launches for a in la.args)
    return PlannedProgram(launches, sizes, constants, uses_status, per_op)
