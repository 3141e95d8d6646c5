"""Timing ops, programs and whole plans on a backend, with inputs that are valid for the op.

Everything is read on one :class:`~walle_core.search.clock.Clock`: the host's, or the shared
device clock of the backends involved (a simulated device's virtual time)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend, Executable, Program
from walle_core.search.clock import HOST_CLOCK, Clock, clock_for


def sample_input(t: A.Tensor, op: A.Op, rng: np.random.Generator) -> np.ndarray:
    """Random data of ``t``'s shape and dtype that ``op`` accepts (indices stay in range)."""
    if isinstance(op, A.GatherScatter) and len(op.inputs) > 1 and t is op.inputs[1]:
        return rng.integers(0, max(op.rows, 1), t.shape, dtype=np.int64)
    if t.dtype.kind == "b":
        return rng.random(t.shape) < 0.5
    if t.dtype.kind in "iu":
        return rng.integers(0, 8, t.shape).astype(t.dtype)
    if t.dtype in (np.float32, np.float64):
        return rng.standard_normal(t.shape, dtype=t.dtype)
    return rng.standard_normal(t.shape).astype(t.dtype)


def program_for(ops: Sequence[tuple[A.Op, Algorithm]]) -> Program:
    produced = {t.id for op, _ in ops for t in op.outputs}
    inputs: dict[int, A.Tensor] = {}
    for op, _ in ops:
        for t in op.inputs:
            if t.value is None and t.id not in produced:
                inputs.setdefault(t.id, t)
    last = ops[-1][0]
    return Program(list(ops), list(inputs.values()), list(last.outputs))


def feeds_for(ops: Sequence[A.Op], inputs: Sequence[A.Tensor], seed: int = 0) -> list[np.ndarray]:
    """Sampled values for ``inputs``, each valid for the first op of ``ops`` that reads it."""
    rng = np.random.default_rng(seed)
    owner: dict[int, A.Op] = {}
    for op in ops:
        for t in op.inputs:
            owner.setdefault(t.id, op)
    return [sample_input(t, owner[t.id], rng) for t in inputs]


def time_call(fn: Callable[[], object], clock: Clock = HOST_CLOCK, *, repeat: int = 5,
              budget_s: float = 0.5, warmup: bool = True) -> float:
    """Minimum seconds of ``fn`` on ``clock`` after one warm-up call (noise only ever adds time),
    stopping early when over ``budget_s`` of host time; on a noiseless clock, one call."""
    if warmup and not clock.noiseless:
        fn()
    best = float("inf")
    start = time.perf_counter()
    for _ in range(1 if clock.noiseless else repeat):
        t0 = clock.now()
        fn()
        best = min(best, clock.now() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


def time_executable(exe: Executable, feeds: list[np.ndarray], *, repeat: int = 5,
                    budget_s: float = 0.5, clock: Clock = HOST_CLOCK) -> float:
    return time_call(lambda: exe.run(feeds), clock, repeat=repeat, budget_s=budget_s)


def time_ops(backend: Backend, ops: Sequence[tuple[A.Op, Algorithm]], *, repeat: int = 5,
             budget_s: float = 0.5, seed: int = 0) -> float:
    """Best seconds of the ops as one program on ``backend`` (on its clock)."""
    return Timer(backend, clock_for([backend]), repeat=repeat, budget_s=budget_s, seed=seed).ops(ops)


def chained(op: A.Op, n: int) -> list[A.Op] | None:
    """``n`` copies of ``op``, each reading the previous one's output through the first input of
    the output's shape and dtype, or None when no input can take it (or the op is a composite)."""
    y = op.out
    slot = next((i for i, x in enumerate(op.inputs) if x.shape == y.shape and x.dtype == y.dtype
                 and x.value is None), None)
    if n < 1 or slot is None or len(op.outputs) != 1 or isinstance(op, A.Composite):
        return None
    next_id = max(t.id for t in (*op.inputs, *op.outputs)) + 1
    ops, prev = [op], y
    for i in range(n - 1):
        t = A.Tensor(y.shape, y.dtype, name=f"{y.name}:chain{i}", id=next_id + i)
        ins = list(op.inputs)
        ins[slot] = prev
        ops.append(dataclasses.replace(op, inputs=ins, outputs=[t]))
        prev = t
    return ops


def repeated(op: A.Op, n: int) -> list[A.Op]:
    """``n`` copies of ``op`` reading the same inputs, each writing fresh outputs."""
    next_id = max(t.id for t in (*op.inputs, *op.outputs)) + 1
    ops = [op]
    for i in range(n - 1):
        outs = []
        for t in op.outputs:
            outs.append(A.Tensor(t.shape, t.dtype, name=f"{t.name}:rep{i}", id=next_id))
            next_id += 1
        ops.append(dataclasses.replace(op, outputs=outs))
    return ops


# A queued timing that took under SHORT_SPAN_S for its ``repeat`` runs goes on, up to SHORT_RUNS
# times as many: noise on a loaded machine only adds time, and a few microseconds of work meet a
# scheduler's hiccup in most of five runs, so more runs bring the best one to the work's own time.
SHORT_SPAN_S = 0.002
SHORT_RUNS = 8
# A steady timing whose copies differ by under SHORT_DIFF_S is taken again with enough copies to
# differ by about that much (at most MAX_COPIES more than the short program).
SHORT_DIFF_S = 4e-5
MAX_COPIES = 32


class Timer:
    """Times programs on one backend with its clock; remembers whether the device's own kernel
    timers (``Executable.last_timings``) were used."""

    def __init__(self, backend: Backend, clock: Clock, *, repeat: int = 5, budget_s: float = 0.5,
                 seed: int = 0) -> None:
        self.backend, self.clock = backend, clock
        self.repeat, self.budget_s, self.seed = repeat, budget_s, seed
        self.device_timed = False
        self._outputs: dict[int, float] = {}  # elements -> output_s

    def _prepared(self, program: Program) -> tuple[Executable, list[np.ndarray]]:
        exe = self.backend.compile(program)
        return exe, feeds_for([op for op, _ in program.ops], program.inputs, self.seed)

    def program(self, program: Program) -> float:
        exe, feeds = self._prepared(program)
        return time_executable(exe, feeds, repeat=self.repeat, budget_s=self.budget_s, clock=self.clock)

    def ops(self, ops: Sequence[tuple[A.Op, Algorithm]]) -> float:
        return self.program(program_for(ops))

    def queued(self, lists: Sequence[tuple[list[A.Op], bool]], alg: Algorithm,
                prefix: Sequence[tuple[A.Op, Algorithm]] = ()) -> list[tuple[float, float | None]]:
        """For each (ops, every_output) program: (best seconds on the clock, best summed device
        kernel seconds or None when the backend does not time its kernels); ``every_output``:
        every op's outputs are program outputs (copies that nothing reads would otherwise be
        dead code a backend drops); ``prefix``: ops each program runs first. The programs' runs
        take turns: a load that comes and goes on a shared machine slows each alike, where
        their difference is the measurement."""
        prepared = []
        for ops, every_output in lists:
            program = program_for([*prefix, *((o, alg) for o in ops)])
            if every_output:
                program = Program(program.ops, program.inputs, [t for o in ops for t in o.outputs])
            prepared.append(self._prepared(program))
        if not self.clock.noiseless:
            for exe, feeds in prepared:
                exe.run(feeds)  # warm-up
        timed: list[bool | None] = [None] * len(prepared)
        best = [float("inf")] * len(prepared)
        device = [float("inf")] * len(prepared)
        start = time.perf_counter()
        runs = 0
        while runs < (1 if self.clock.noiseless else self.repeat * SHORT_RUNS):
            for i, (exe, feeds) in enumerate(prepared):
                t0 = self.clock.now()
                exe.run(feeds)
                best[i] = min(best[i], self.clock.now() - t0)
                timed[i] = bool(exe.last_timings()) if timed[i] is None else timed[i]
                if timed[i]:
                    device[i] = min(device[i], sum(s for _, s in exe.last_timings()))
            runs += 1
            spent = time.perf_counter() - start
            if spent > self.budget_s * len(prepared) or (runs >= self.repeat and spent > SHORT_SPAN_S * len(prepared)):
                break
        return [(b, d if t else None) for b, d, t in zip(best, device, timed, strict=True)]

    def output_s(self, nbytes: int) -> float:
        """Host seconds one more program output of ``nbytes`` costs (the backend hands it to the
        host: an allocation and a copy on a CPU, a readback on a device): a chain of float32
        copies with every link an output, over the same chain with only its end one."""
        key = max(nbytes // 4, 1)
        if key not in self._outputs:
            b = _chain_op(key)
            algos = self.backend.algorithms(b)
            ops = chained(b, 4) if algos else None
            if ops is None:
                self._outputs[key] = 0.0
            else:
                alg = algos[0]
                (last, _), (every, _) = self.queued([(ops, False), (ops, True)], alg)
                self._outputs[key] = max((every - last) / 3, 0.0)
        return self._outputs[key]

    def steady(self, op: A.Op, alg: Algorithm, *, chain: bool = True,
               prefix: Sequence[tuple[A.Op, Algorithm]] = ()) -> float:
        """Seconds of one ``op`` among queued ops like it: (4 copies - 2 copies) / 2, chained
        through its output where it can be (unless ``chain`` is False), else repeated on the same
        inputs. What a backend does at a program's edges (transfers, layout changes,
        synchronisation) cancels out. A backend that fuses chains of element-wise ops runs a
        chained copy for a fraction of a lone op's pass over memory: ``chain=False`` times the
        lone op. Repeated copies are each a program output (else a backend drops all but the
        last as dead code and the difference times nothing); what handing those outputs to the
        host costs (:meth:`output_s`) is taken off again. ``prefix``: ops both programs run
        first, producing ``op``'s input the way a model does (a conv that leaves it in the
        backend's blocked layout); their cost cancels out too."""
        lo, hi = (1, 2) if self.clock.noiseless else (2, 4)  # exact clocks need no averaging
        t, device = self._steady(op, alg, chain, lo, hi, prefix)
        if not self.clock.noiseless and not device and t * (hi - lo) < SHORT_DIFF_S:
            # a difference of a few microseconds is within a loaded machine's noise of each
            # side: take it again over enough copies to differ by SHORT_DIFF_S (same best of runs)
            more = min(MAX_COPIES, max(hi - lo, math.ceil(SHORT_DIFF_S / max(t, 1e-9))))
            t, _ = self._steady(op, alg, chain, lo, lo + more, prefix)
        return t

    def _steady(self, op: A.Op, alg: Algorithm, chain: bool, lo: int, hi: int,
                prefix: Sequence[tuple[A.Op, Algorithm]] = ()) -> tuple[float, bool]:
        """(seconds per copy from ``hi`` over ``lo`` copies, whether device timers gave it)."""
        pair = (chained(op, lo), chained(op, hi)) if chain else (None, None)
        every = pair[0] is None or pair[1] is None
        short, long = (repeated(op, lo), repeated(op, hi)) if every else (pair[0] or [], pair[1] or [])
        (w_lo, d_lo), (w_hi, d_hi) = self.queued([(short, every), (long, every)], alg, prefix)
        if d_lo is not None and d_hi is not None and d_hi > d_lo:
            self.device_timed = True
            return (d_hi - d_lo) / (hi - lo), True
        handed = sum(self.output_s(t.nbytes) for t in op.outputs) if every else 0.0
        # never more than half of the difference is taken off: two noisy timings of large outputs
        # (fresh pages on a loaded machine) must not make a pass look free
        if w_hi > w_lo:
            diff = (w_hi - w_lo) / (hi - lo)
            return max(diff - handed, diff / 2, 1e-9), False
        return max(w_hi / hi - handed, w_hi / hi / 2, 1e-9), False  # noise hid the difference: an upper bound


def _chain_op(n: int) -> A.Op:
    """A float32 relu over ``n`` elements: the link of :meth:`Timer.output_s`'s chains."""
    x = A.Tensor((n,), np.dtype(np.float32), name="out:x", id=0)
    y = A.Tensor((n,), np.dtype(np.float32), name="out:y", id=1)
    return A.Unary([x], [y], fn="relu")
