"""Translate a :class:`~walle_core.backend.Program` into an array of C op descriptors, run by
one ``wl_run`` call per ``Executable.run`` (the GIL is released for the whole plan).

The op list goes through the planner's rewrites this backend opted into (a no-op on programs
the planner built, which arrive rewritten), then this backend's own: fused element-wise chains
and the blocked layout. The arena is planned on the final list, and each op is encoded by the
module of its kind in ``walle_cpu.ops``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Executable, Program, Rewrites
from walle_core.errors import InputError, WalleError
from walle_core.plan.memory import plan_arena
from walle_core.plan.rewrite import apply as apply_rewrites
from walle_core.plan.rewrite.fused import ConvRes, MatMulRes
from walle_cpu import concat_view, layout
from walle_cpu._native import FFI, LIB
from walle_cpu.hoist import hoist_unaries
from walle_cpu.ops import kernel_for
from walle_cpu.ops.chain import Chain, PreluConv, fuse_chains, fuse_prelu
from walle_cpu.ops.chain import label as chain_label
from walle_cpu.ops.conv import plain_algorithm
from walle_cpu.ops.raster import encode_empty

_PTR_BYTES = FFI.sizeof("char*") if FFI is not None else 8


class KernelError(WalleError):
    """A C kernel met data it cannot process (out-of-range index, integer division by zero)."""


def lowered(program: Program, rewrites: Rewrites) -> list[tuple[A.Op, Algorithm]]:
    """The op list a program runs as: unaries ahead of copies, rewrites, fused element-wise
    chains, blocked layout."""
    external = {t.id for t in program.outputs}
    last_id = max((t.id for op, _ in program.ops for t in (*op.inputs, *op.outputs)), default=0)
    fresh = itertools.count(last_id + 1)
    # activations ahead of the copies before them first, so that they fuse into their producers
    ops = hoist_unaries(program.ops, external, lambda: next(fresh))
    ops = fuse_chains(apply_rewrites(ops, external, rewrites), external)
    return fuse_prelu(layout.apply(ops, external, lambda: next(fresh), plain_algorithm), external)


class CpuExecutable(Executable):
    def __init__(self, program: Program, threads: int, rewrites: Rewrites) -> None:
        if LIB is None or FFI is None:  # pragma: no cover - guarded by availability()
            raise WalleError("cpu kernels are not built")
        self.program = program
        self.threads = max(1, int(threads))
        self._keep: list[Any] = []  # numpy arrays and cdata the descriptors point into
        self._slot_of: dict[int, tuple[int, int]] = {}  # tensor id -> (slot, byte offset)
        self._const_ptrs: list[tuple[int, Any]] = []
        self._nslots = 1
        self._input_slots: list[int] = []
        self._output_slots: list[int] = []
        for t in program.inputs:
            self._input_slots.append(self._new_slot(t))
        for t in program.outputs:
            if t.id in self._slot_of:  # an input returned as is
                self._output_slots.append(-1)
                continue
            self._output_slots.append(self._new_slot(t))
        fixed = {t.id for t in program.inputs} | {t.id for t in program.outputs}
        # concats of whole inputs are views: their parts are written in place (concat_view)
        ops, self._alias = concat_view.elide(lowered(program, rewrites), fixed)
        # fusion and the layout change lifetimes and add tensors: the arena is planned on the
        # final list
        arena = plan_arena(concat_view.planning_ops([op for op, _ in ops], self._alias), fixed)
        self._offsets = arena.offsets
        self._arena_bytes = arena.arena_bytes
        self._n_ops = len(ops)
        self._labels = [_label(op, algo) for op, algo in ops]
        self._ops = FFI.new("wl_op[]", max(1, len(ops)))
        for i, (op, algo) in enumerate(ops):
            self._encode(self._ops[i], op, algo)
        self._template = FFI.new("char*[]", self._nslots)
        for slot, ptr in self._const_ptrs:
            self._template[slot] = ptr
        self._local = threading.local()
        # per input: slot, shape, dtype, whether a fitting array can be bound without a copy
        self._in_specs = [(s, t.shape, np.dtype(t.dtype), t.size > 0)
                          for t, s in zip(program.inputs, self._input_slots, strict=True)]
        in_pos = {t.id: i for i, t in enumerate(program.inputs)}
        # per output: slot (-1: an input returned as is), shape, dtype, that input's position
        self._out_specs = [(s, t.shape, np.dtype(t.dtype), in_pos.get(t.id, -1))
                           for t, s in zip(program.outputs, self._output_slots, strict=True)]

    # ------------------------------------------------------------------ tensors (ops.Binder)

    def _new_slot(self, t: A.Tensor) -> int:
        s = self._nslots
        self._nslots += 1
        self._slot_of[t.id] = (s, 0)
        return s

    def _ref(self, t: A.Tensor) -> tuple[int, int]:
        got = self._slot_of.get(t.id)
        if got is not None:
            return got
        target, at = concat_view.resolve(t.id, self._alias)
        if target is not None:  # a part of a concat: in its target's memory
            slot, base = self._ref(target)
            self._slot_of[t.id] = (slot, base + at)
            return (slot, base + at)
        if t.value is not None:
            arr = np.ascontiguousarray(np.asarray(t.value, dtype=t.dtype)).reshape(-1)
            if arr.size == 0:
                arr = np.zeros(1, t.dtype)
            self._keep.append(arr)
            s = self._nslots
            self._nslots += 1
            self._const_ptrs.append((s, FFI.cast("char*", FFI.from_buffer(arr))))
            self._slot_of[t.id] = (s, 0)
            return (s, 0)
        off = self._offsets.get(t.id)
        if off is None:  # an intermediate the arena plan does not know (hand-built programs)
            off = (self._arena_bytes + 63) // 64 * 64
            self._arena_bytes = off + max(t.nbytes, 1)
        self._slot_of[t.id] = (0, off)
        return (0, off)

    def bind(self, d: Any, op: A.Op, ins: Sequence[A.Tensor] | None = None) -> None:
        ins = list(op.inputs) if ins is None else list(ins)
        refs = FFI.new("wl_ref[]", max(1, len(ins)))
        for i, t in enumerate(ins):
            refs[i].slot, refs[i].off = self._ref(t)
        self._keep.append(refs)
        d.ins = refs
        d.n_in = len(ins)
        d.out.slot, d.out.off = self._ref(op.out)

    def aux(self, arr: np.ndarray) -> Any:
        arr = np.ascontiguousarray(arr)
        if arr.ctypes.data % 64:
            # numpy's large arrays start 16 bytes past a page: every 64-byte vector load of
            # packed weights would straddle two cache lines; copy onto a 64-byte boundary
            buf = np.empty(arr.nbytes + 64, np.uint8)
            start = -buf.ctypes.data % 64
            aligned = buf[start:start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
            aligned[...] = arr
            arr = aligned
        self._keep.append(arr)
        return FFI.cast("void*", FFI.from_buffer(arr))

    def apart(self, a: A.Tensor, b: A.Tensor) -> None:
        """The kernels read a residual after writing parts of the output: never aliased."""
        ao, bo = self._offsets.get(a.id), self._offsets.get(b.id)
        if a.id == b.id or (ao is not None and bo is not None
                            and ao < bo + max(b.nbytes, 1) and bo < ao + max(a.nbytes, 1)):
            raise WalleError("fused residual shares memory with the output")  # arena prevents it

    def _encode(self, d: Any, op: A.Op, algo: Algorithm) -> None:
        if op.out.size == 0 and not isinstance(op, Chain | A.GatherScatter):  # index checks still run
            encode_empty(d, op, self)
            return
        k = kernel_for(op)
        if k is None:  # pragma: no cover - algorithms() never offers other kinds
            raise WalleError(f"cpu backend cannot run {op.kind.value}")
        k.encode(d, op, algo, self)

    # ------------------------------------------------------------------ running

    def _thread_state(self) -> _ThreadState:
        """This thread's slot table (constants and arena pointer filled in once), arena and
        message buffer: runs on several Python threads at once never share them."""
        st = _ThreadState()
        st.arena = np.empty(max(64, self._arena_bytes), np.uint8)
        st.slots = FFI.new("char*[]", self._nslots)
        FFI.memmove(st.slots, self._template, self._nslots * _PTR_BYTES)
        st.slots[0] = FFI.from_buffer(st.arena)
        st.err = FFI.new("char[]", 256)
        self._local.state = st
        return st

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # the per-run Python cost shows on small models (a 2-layer LSTM runs in 0.1 ms): an
        # input that already is a C-contiguous array of the program's shape and dtype is bound
        # as is, each output is one np.empty, and the slot table is this thread's, kept
        try:
            st: _ThreadState = self._local.state
        except AttributeError:
            st = self._thread_state()
        if len(inputs) != len(self._in_specs):
            raise InputError(f"program takes {len(self._in_specs)} inputs, got {len(inputs)}")
        slots = st.slots
        from_buffer = FFI.from_buffer
        keep: list[np.ndarray] = []  # converted inputs, alive until wl_run returns
        for (s, shape, dtype, direct), arr in zip(self._in_specs, inputs, strict=True):
            if direct and arr.__class__ is np.ndarray and arr.shape == shape and arr.dtype == dtype:
                try:
                    slots[s] = from_buffer(arr)
                    continue
                except ValueError:  # not C-contiguous
                    pass
            a = np.ascontiguousarray(arr, dtype=dtype).reshape(shape)
            keep.append(a)
            slots[s] = from_buffer(a if a.size else np.zeros(1, dtype))
        outs: list[np.ndarray] = []
        for s, shape, dtype, i in self._out_specs:
            if s < 0:  # an input returned as is: a copy, never the caller's array
                outs.append(np.array(inputs[i], dtype=dtype, order="C").reshape(shape))
                continue
            o = np.empty(shape, dtype)
            outs.append(o)
            slots[s] = from_buffer(o if o.size else np.zeros(1, dtype))
        if st.profile is None:
            rc = LIB.wl_run(self._ops, self._n_ops, slots, self.threads, st.err, 256)
        else:
            LIB.wl_set_profile(st.profile)
            try:
                rc = LIB.wl_run(self._ops, self._n_ops, slots, self.threads, st.err, 256)
            finally:
                LIB.wl_set_profile(FFI.NULL)
        if rc:
            op = self._describe(rc - 1)
            raise KernelError(f"{FFI.string(st.err).decode()} (in {op})")
        return outs

    def _describe(self, i: int) -> str:
        return f"op {i} of {self._n_ops}: {self._labels[i]}"

    def profile(self, inputs: Sequence[np.ndarray], runs: int = 10) -> list[tuple[str, float]]:
        """Per-op wall time (seconds, mean over ``runs``) of this program's C ops, in plan order
        (a debugging aid: ``python -m bench.profile_cpu``)."""
        buf = FFI.new("double[]", max(1, self._n_ops))
        try:
            st: _ThreadState = self._local.state
        except AttributeError:
            st = self._thread_state()
        st.profile = buf
        try:
            for _ in range(runs):
                self.run(inputs)
        finally:
            st.profile = None
        return [(self._labels[i], buf[i] / runs) for i in range(self._n_ops)]


class _ThreadState:
    """What one Python thread's runs of one executable reuse."""

    __slots__ = ("arena", "err", "profile", "slots")

    def __init__(self) -> None:
        self.arena: np.ndarray
        self.slots: Any
        self.err: Any
        self.profile: Any = None


def _label(op: A.Op, algo: Algorithm) -> str:
    if isinstance(op, Chain):
        return chain_label(op)
    fn = getattr(op, "fn", "")
    ins = " ".join(str(list(t.shape)) for t in op.inputs[:2])
    res = isinstance(op, ConvRes | MatMulRes) or (isinstance(op, layout.BlockedConv) and op.residual)
    extra = "+residual" if res else ""
    act = getattr(op, "act", None)
    if isinstance(act, A.Activation) and act.fn != "identity":
        extra += f"+{act.fn}"
    if isinstance(op, PreluConv):
        extra += "+prelu"
    return (f"{op.kind.value}{'/' + fn if isinstance(fn, str) and fn else ''}{extra} {algo.name} {ins}"
            f" -> {list(op.out.shape)}")
