"""The backend contract: everything a compute backend implements, in one small module.

A backend is a plugin (see ``docs/plugins.md``). The engine hands it a :class:`Program`, a run of
atomic ops (``walle_core.atomic``) whose tensors have concrete shapes, and gets back an
:class:`Executable`. Data crosses between backends only through host numpy arrays, so every
fallback is an explicit copy that the planner can see and cost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from walle_core.atomic import Op, Tensor


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    kind: str  # "cpu", "gpu", "npu", ...
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """Work of one op under one algorithm; the search turns it into seconds with calibrated
    per-device constants (throughput, bandwidth, launch overhead)."""

    flops: float
    bytes: float
    launches: int = 1
    efficiency: float = 1.0  # fraction of peak throughput this algorithm reaches


def default_cost(op: Op) -> Cost:
    return Cost(op.flops(), op.bytes_moved())


@dataclass(frozen=True)
class Algorithm:
    """One way a backend can run an op kind, e.g. ``im2col+gemm`` or ``winograd`` for Conv2D."""

    name: str
    cost: Callable[[Op], Cost] = default_cost


@dataclass(frozen=True)
class Rewrites:
    """The backend-neutral rewrites (``walle_core.plan.rewrite``) a backend's kernels can take;
    the planner applies them to the backend's programs. Nothing unless a backend opts in.

    ``activations``: unary functions a Conv2D or MatMul epilogue applies (``"clip"`` also takes
    Binary max/min against a scalar constant, how ReLU and ReLU6 often arrive)."""

    gelu: bool = False  # the erf spelling of GELU becomes one Unary gelu
    hardswish: bool = False  # x * clip(x + 3, 0, 6) / 6 and x * hardsigmoid(x) become one Unary hardswish
    matmul_bias: bool = False  # matmul + constant row vector becomes the MatMul's bias
    residual: bool = False  # add(conv or matmul, same-shaped r) runs in the producer's epilogue
    activations: frozenset[str] = frozenset()


@dataclass
class Program:
    """A run of ops for one backend. ``inputs`` arrive from the host in this order (graph feeds,
    constants are already in ``Tensor.value``); ``outputs`` go back to the host.

    ``offsets``/``arena_bytes`` are the planner's memory layout for the intermediate tensors
    (tensors that are neither inputs, outputs nor constants); a backend may follow it to run in
    one allocation.

    Tensors are identified by ``Tensor.id``. Reshapes are free: one id may appear in several
    ops under different shapes of the same size (the same memory), so kernels must read shapes
    from the ``Tensor`` objects of the op they run, not from the first binding of an id.
    """

    ops: list[tuple[Op, Algorithm]]
    inputs: list[Tensor]
    outputs: list[Tensor]
    offsets: dict[int, int] = field(default_factory=dict)
    arena_bytes: int = 0


class Executable(ABC):
    """A prepared program. ``run`` must be safe to call from several threads at once."""

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Take host arrays for ``Program.inputs``, return host arrays for ``Program.outputs``."""

    def last_timings(self) -> list[tuple[str, float]]:
        """Device-side seconds of each kernel launch of the last ``run`` (profiling events,
        timestamp queries); empty when the backend cannot time its kernels. The search's
        calibration prefers these over wall-clock time for kernel throughput."""
        return []


class Backend(ABC):
    """A compute backend. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    rewrites: ClassVar[Rewrites] = Rewrites()
    # A conformance oracle (the reference interpreter): correct for every op, never fast.
    # ``backend="auto"`` runs an op there only when no other backend can (a fallback, as under
    # a named backend), and never considers a whole plan on it.
    oracle: ClassVar[bool] = False

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here; when not, the reason a person can act on."""

    @abstractmethod
    def device_info(self) -> DeviceInfo: ...

    @abstractmethod
    def algorithms(self, op: Op) -> Sequence[Algorithm]:
        """The algorithms offered for ``op``; empty when the backend cannot run it."""

    def claims(self, composite: str) -> bool:
        """Whether this backend has a fused kernel for the named composite pattern."""
        return False

    @abstractmethod
    def compile(self, program: Program, *, threads: int | None = None) -> Executable: ...

    def added_ops(self, program: Program) -> list[tuple[Op, Algorithm]]:
        """Ops that compiling ``program`` adds to its own (layout changes between the layouts
        of its kernels), so that the search's cost model prices them; none by default."""
        return []

    def runs_as(self, program: Program) -> list[tuple[Op, Algorithm] | None] | None:
        """For each op of ``program``, the op and algorithm its compiled form runs (a layout
        pass may give a conv another algorithm than the one picked, or run a pool on a blocked
        tensor), or None for an op it runs inside another op's kernel at no cost of its own (an
        element-wise chain folded into a conv's epilogue), so that the search's cost model
        prices what runs; None when the backend runs each op as picked (the default)."""
        return None
