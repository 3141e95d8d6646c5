"""CPU backend plugin: C SIMD kernels (AVX-512 / AVX2+FMA / NEON / portable) through cffi.

A prepared program runs as one C call that walks pre-bound op descriptors; kernels run on a
persistent pthread pool with the GIL released. Kinds or dtypes the C side does not implement get
no algorithm, so the planner runs them on the reference backend with explicit copies.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

from walle_core import atomic as A
from walle_core.backend import Algorithm, Availability, Backend, DeviceInfo, Executable, Program, Rewrites
from walle_core.errors import BackendUnavailableError
from walle_core.hookspecs import hookimpl
from walle_core.hostinfo import cpu_model
from walle_cpu import _native, codes, layout, ops
from walle_cpu.compiler import CpuExecutable, lowered
from walle_cpu.ops.chain import PreluConv

_INTERESTING = ("avx512f", "avx512_vnni", "avx512_bf16", "avx2", "fma", "neon", "asimd", "sse4_2")


def cpu_features() -> list[str]:
    """SIMD features of this CPU as the kernel announces them (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in _INTERESTING if f in flags]
    return []


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def isa() -> str:
    """The kernel variant in use ("avx512", "avx2", "neon" or "scalar"); "" when not built."""
    if _native.LIB is None:
        return ""
    return str(_native.FFI.string(_native.LIB.wl_isa_name()).decode())


def set_isa(name: str) -> None:
    """Force a kernel variant (tests, benchmarks); "auto" picks the best this CPU supports.
    Programs compiled before the switch keep weights packed for the old variant: recompile."""
    if _native.LIB is None:
        raise BackendUnavailableError(_native.LOAD_ERROR)
    if _native.LIB.wl_set_isa(name.encode()) != 0:
        raise BackendUnavailableError(f"kernel variant {name!r} is not supported by this CPU")
    _native.LIB.wl_q_set_isa(name.encode())  # the int8 kernels follow (avx512: the best int8 one)


class CpuBackend(Backend):
    name = "cpu"
    version = "0.3"
    # the planner's pattern folds and epilogue fusions: the GEMM and conv kernels apply any
    # float unary (and clips) after the bias and an optional residual
    rewrites = Rewrites(gelu=True, hardswish=True, matmul_bias=True, residual=True,
                        activations=codes.FLOAT_UNARY - codes.PREDICATES)
    _last_lowered: tuple[Program, list[tuple[A.Op, Algorithm]]] | None = None

    def availability(self) -> Availability:
        if _native.LIB is None:
            return Availability(False, _native.LOAD_ERROR)
        return Availability(True)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(
            name=cpu_model(),
            kind="cpu",
            details={"cores": str(os.cpu_count()), "arch": platform.machine(),
                     "simd": ",".join(cpu_features()), "kernels": isa() or "not built",
                     "threads": str(default_threads())},
        )

    def claims(self, composite: str) -> bool:
        return _native.LIB is not None and composite in codes.COMPOSITES

    def algorithms(self, op: A.Op) -> Sequence[Algorithm]:
        if _native.LIB is None:
            return ()
        return tuple(ops.algorithms(op))

    def compile(self, program: Program, *, threads: int | None = None) -> Executable:
        if _native.LIB is None:
            raise BackendUnavailableError(f"cpu backend is unavailable: {_native.LOAD_ERROR}")
        return CpuExecutable(program, threads or default_threads(), self.rewrites)

    def _lowered(self, program: Program) -> list[tuple[A.Op, Algorithm]]:
        """``program`` as it compiles; the last one is kept, as the search asks
        :meth:`added_ops` and then :meth:`runs_as` about the same program."""
        last = self._last_lowered
        if last is not None and last[0] is program:
            return last[1]
        ran = lowered(program, self.rewrites)
        self._last_lowered = (program, ran)
        return ran

    def added_ops(self, program: Program) -> list[tuple[A.Op, Algorithm]]:
        """The blocked layout's conversions compiling ``program`` inserts (see :mod:`layout`)."""
        if _native.LIB is None:
            return []
        return [(op, algo) for op, algo in self._lowered(program) if algo is layout.LAYOUT]

    def runs_as(self, program: Program) -> list[tuple[A.Op, Algorithm] | None] | None:
        """What the blocked layout pass makes of ``program``'s convs (the algorithm each runs:
        a blocked conv that would not pay runs plain, a plain one stays blocked between
        blocked ones), pools (on blocked tensors) and reductions (over a blocked tensor's
        pixels). The pass keeps one op per conv, pool and reduction, in order: they are
        matched up kind by kind (a kind whose count differs keeps its picks). The element-wise
        ops of a PRelu folded into a conv's epilogue (``fuse_prelu``) run at no cost of their
        own: None."""
        if _native.LIB is None:
            return None
        picks = list(program.ops)
        ran = self._lowered(program)
        out: list[tuple[A.Op, Algorithm] | None] = list(picks)
        for kind in (A.Kind.CONV2D, A.Kind.POOL2D, A.Kind.REDUCE):
            mine = [i for i, (op, _) in enumerate(picks) if op.kind is kind]
            theirs = [item for item in ran if item[0].kind is kind]
            if len(mine) != len(theirs):
                continue
            for i, (op, algo) in zip(mine, theirs, strict=True):
                picked_op, picked = picks[i]
                if kind is A.Kind.CONV2D:  # the atomic conv, with the algorithm it runs (its cost)
                    named = {a.name: a for a in self.algorithms(picked_op)}
                    out[i] = (picked_op, named.get(algo.name, picked))
                    if isinstance(op, PreluConv):
                        _folded(picks, out, picked_op.out.id)
                else:  # the pool or reduction as it runs (its blocked shapes), as picked
                    out[i] = (op, picked)
        return out


def _folded(picks: Sequence[tuple[A.Op, Algorithm]], out: list[tuple[A.Op, Algorithm] | None],
            conv_out: int) -> None:
    """Mark None in ``out`` the element-wise ops of ``picks`` that a PRelu folded into a conv's
    epilogue ran as: those after the conv computed from its output (``conv_out``) and
    constants alone (the layout pass gives the folded chain fresh tensors, so they are found
    on the picks)."""
    made = {conv_out}
    for i, (op, _) in enumerate(picks):
        live = [t.id for t in op.inputs if t.value is None]
        if isinstance(op, ELEMENTWISE) and live and all(t in made for t in live):
            out[i] = None
            made.update(t.id for t in op.outputs)


ELEMENTWISE = (A.Unary, A.Binary, A.Select, A.Cast)


@hookimpl
def walle_backends() -> list[type[Backend]]:
    return [CpuBackend]
