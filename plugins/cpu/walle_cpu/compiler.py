"""Translate a :class:`~walle_core.backend.Program` into an array of C op descriptors, run by
one ``wl_run`` call per ``Executable.run`` (the GIL is released for the whole plan)."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm, Executable, Program
from walle_core.decompose.builder import contiguous
from walle_core.errors import InputError, WalleError
from walle_core.plan.memory import plan_arena
from walle_cpu import codes as K
from walle_cpu import layout, patterns
from walle_cpu._native import FFI, LIB
from walle_cpu.fused_ops import ConvRes, MatMulRes, with_activation, with_residual

MAX_DIMS = 8
# Unary/Binary functions a fused element-wise chain may contain (fp32 in, fp32 out).
CHAIN_BINARY = frozenset({"add", "sub", "mul", "div", "pow", "max", "min", "mod", "fmod", "atan2"})


class KernelError(WalleError):
    """A C kernel met data it cannot process (out-of-range index, integer division by zero)."""


def collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 axes and merge neighbours that stay linear for every operand."""
    dims: list[int] = []
    st: list[list[int]] = [[] for _ in strides]
    for ax, n in enumerate(shape):
        if n == 1:
            continue
        if dims and all(s[-1] == t[ax] * n for s, t in zip(st, strides, strict=True)):
            dims[-1] *= n
            for s, t in zip(st, strides, strict=True):
                s[-1] = t[ax]
        else:
            dims.append(n)
            for s, t in zip(st, strides, strict=True):
                s.append(t[ax])
    if not dims:
        dims = [1]
        st = [[0] for _ in strides]
    return dims, st


# --------------------------------------------------------------------------- support checks


def _same(ts: Sequence[A.Tensor], dtype: np.dtype) -> bool:
    return all(t.dtype == dtype for t in ts)


def supports(op: A.Op) -> bool:
    """Whether the C kernels implement this op exactly (else the planner falls back)."""
    if isinstance(op, A.Composite):
        return op.name in K.COMPOSITES and _same([*op.inputs, *op.outputs], K.F32)
    if isinstance(op, A.Raster):
        return op.out.dtype.itemsize in (1, 2, 4, 8) and all(t.dtype == op.out.dtype for t in op.inputs)
    if isinstance(op, A.Unary):
        x, y = op.inputs[0].dtype, op.out.dtype
        if op.fn in K.PREDICATES:
            return x in K.FLOATS and y == K.BOOL
        if x != y:
            return False
        if x in K.FLOATS:
            return op.fn in K.FLOAT_UNARY
        if x in K.INTS:
            return op.fn in K.INT_UNARY
        return x == K.BOOL and op.fn in ("not", "identity")
    if isinstance(op, A.Binary):
        a, b = op.inputs[0].dtype, op.inputs[1].dtype
        if a != b or len(op.out.shape) > 16:
            return False
        want = K.BOOL if op.fn in K.COMPARE else a
        if op.out.dtype != want:
            return False
        if a in K.FLOATS:
            return op.fn in K.FLOAT_BINARY
        if a in K.INTS:
            return op.fn in K.INT_BINARY
        return a == K.BOOL and op.fn in K.BOOL_BINARY
    if isinstance(op, A.Select):
        c, a, b = (t.dtype for t in op.inputs)
        return c == K.BOOL and a == b == op.out.dtype and a.itemsize in (1, 2, 4, 8)
    if isinstance(op, A.Cast):
        allowed = K.NUMERIC | {K.BOOL}
        return op.inputs[0].dtype in allowed and op.out.dtype in allowed
    if isinstance(op, A.Reduce):
        x = op.inputs[0].dtype
        want = K.I64 if op.fn in ("argmax", "argmin") else x
        return x in K.NUMERIC and op.fn in K.REDUCE_FNS and op.out.dtype == want
    if isinstance(op, A.MatMul):
        return _same([*op.inputs, op.out], K.F32)
    if isinstance(op, A.Conv2D):
        return _same([*op.inputs, op.out], K.F32) and op.act.fn in K.FLOAT_UNARY and len(op.inputs[0].shape) == 4
    if isinstance(op, A.Pool2D):
        return _same([*op.inputs, op.out], K.F32) and op.fn in K.POOL_FNS
    if isinstance(op, A.GatherScatter):
        data = op.inputs[0].dtype
        if op.inputs[1].dtype != K.I64 or data.itemsize not in (1, 2, 4, 8) or op.out.dtype != data:
            return False
        if op.mode == "gather":
            return True
        if op.inputs[2].dtype != data or op.reduction not in K.SCATTER_REDUCTIONS:
            return False
        return op.reduction == "none" or data in (K.F32, K.F64, np.dtype(np.int32), K.I64)
    if isinstance(op, A.Sort):
        return op.inputs[0].dtype in (K.NUMERIC | {K.BOOL}) and op.out.dtype == K.I64
    return False


def conv_algorithms(op: A.Conv2D) -> list[str]:
    x, w = op.inputs[0], op.inputs[1]
    c = x.shape[1]
    o, cg, kh, kw = w.shape
    algos = ["im2col+gemm"]
    if op.groups == c == o and cg == 1:
        algos.append("depthwise-direct")
    if kh == kw == 1 and op.strides == (1, 1) and op.pads == (0, 0, 0, 0):
        algos.append("1x1-gemm")
    if (kh, kw) == (3, 3) and op.strides == (1, 1) and op.dilations == (1, 1) and op.groups == 1 \
            and w.value is not None:
        algos.append("winograd-f23")
    if layout.offers_blocked(op):
        algos.append(layout.NCHWC)
    return algos


def _plain_algorithm(op: A.Conv2D) -> Algorithm:
    """The NCHW algorithm a conv runs with when its blocked one does not pay."""
    offered = conv_algorithms(op)
    name = next(n for n in ("1x1-gemm", "depthwise-direct", "im2col+gemm") if n in offered)
    return Algorithm(name)


# --------------------------------------------------------------------------- the executable


class CpuExecutable(Executable):
    def __init__(self, program: Program, threads: int) -> None:
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
        self._arena_bytes = program.arena_bytes
        for t in program.inputs:
            self._input_slots.append(self._new_slot(t))
        for t in program.outputs:
            if t.id in self._slot_of:  # an input returned as is
                self._output_slots.append(-1)
                continue
            self._output_slots.append(self._new_slot(t))
        ops = self._fuse(program.ops)
        last_id = max((t.id for op, _ in program.ops for t in (*op.inputs, *op.outputs)), default=0)
        fresh = itertools.count(last_id + 1)
        ops = layout.apply(ops, {t.id for t in program.outputs}, lambda: next(fresh), _plain_algorithm)
        # Fusion changes lifetimes (a fused op reads its first inputs while writing its last
        # output), so the planner's layout is redone on the fused list.
        arena = plan_arena([op for op, _ in ops],
                           {t.id for t in program.inputs} | {t.id for t in program.outputs})
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

    # ------------------------------------------------------------------ tensors

    def _new_slot(self, t: A.Tensor) -> int:
        s = self._nslots
        self._nslots += 1
        self._slot_of[t.id] = (s, 0)
        return s

    def _ref(self, t: A.Tensor) -> tuple[int, int]:
        got = self._slot_of.get(t.id)
        if got is not None:
            return got
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
        if off is None:  # an intermediate the planner did not place (hand-built programs)
            off = (self._arena_bytes + 63) // 64 * 64
            self._arena_bytes = off + max(t.nbytes, 1)
        self._slot_of[t.id] = (0, off)
        return (0, off)

    def _bind(self, d: Any, op: A.Op, ins: Sequence[A.Tensor] | None = None) -> None:
        ins = list(op.inputs) if ins is None else list(ins)
        refs = FFI.new("wl_ref[]", max(1, len(ins)))
        for i, t in enumerate(ins):
            refs[i].slot, refs[i].off = self._ref(t)
        self._keep.append(refs)
        d.ins = refs
        d.n_in = len(ins)
        d.out.slot, d.out.off = self._ref(op.out)

    def _aux(self, arr: np.ndarray) -> Any:
        arr = np.ascontiguousarray(arr)
        self._keep.append(arr)
        return FFI.cast("void*", FFI.from_buffer(arr))

    # ------------------------------------------------------------------ fusion

    def _fuse(self, items: Sequence[tuple[A.Op, Algorithm]]) -> list[tuple[A.Op, Algorithm]]:
        """Merge chains of fp32 Unary/Binary ops whose intermediates nobody else reads."""
        external = {t.id for t in self.program.outputs}
        items = patterns.fold_matmul_bias(patterns.fold_gelu(items, external), external)
        uses: dict[int, int] = {}
        for op, _ in items:
            for t in op.inputs:
                uses[t.id] = uses.get(t.id, 0) + 1
        out: list[tuple[A.Op, Algorithm]] = []
        chain: list[A.Op] = []

        def fusable(op: A.Op) -> bool:
            if op.out.dtype != K.F32 or op.out.size == 0:
                return False
            if isinstance(op, A.Unary):
                return op.fn in K.FLOAT_UNARY and op.fn not in K.PREDICATES and op.inputs[0].dtype == K.F32
            if isinstance(op, A.Binary):
                return op.fn in CHAIN_BINARY and op.inputs[0].dtype == K.F32 and len(op.out.shape) <= MAX_DIMS
            return False

        def continues(prev: A.Op, op: A.Op) -> bool:
            t = prev.out
            if t.id in external or uses.get(t.id, 0) != 1 or op.out.shape != t.shape:
                return False
            if isinstance(op, A.Unary):
                return op.inputs[0] is t
            assert isinstance(op, A.Binary)
            hits = [i for i, x in enumerate(op.inputs) if x is t]
            if len(hits) != 1:
                return False
            return tuple(op.strides[hits[0]]) == tuple(contiguous(t.shape)) and n_operands([*chain, op]) <= 5

        def n_operands(ops: list[A.Op]) -> int:
            ids = {x.id for x in ops[0].inputs}
            for k in range(1, len(ops)):
                ids |= {x.id for x in ops[k].inputs if x is not ops[k - 1].out}
            return len(ids)

        def flush() -> None:
            if len(chain) >= 2:
                out.append((_Chain(list(chain)), Algorithm("fused-elementwise")))
            else:
                out.extend((o, Algorithm("direct")) for o in chain)
            chain.clear()

        items = self._fuse_residuals(items, uses, external)
        items = self._fuse_activations(items, uses, external)
        for op, algo in items:
            if fusable(op) and chain and continues(chain[-1], op):
                chain.append(op)
                continue
            flush()
            if fusable(op):
                chain.append(op)
            else:
                out.append((op, algo))
        flush()
        return out

    def _overlaps(self, a: A.Tensor, b: A.Tensor) -> bool:
        """Whether two tensors share arena bytes (the planner reuses dead tensors' memory)."""
        oa, ob = self.program.offsets.get(a.id), self.program.offsets.get(b.id)
        if oa is None or ob is None:
            return False
        return oa < ob + max(b.nbytes, 1) and ob < oa + max(a.nbytes, 1)

    @staticmethod
    def _fuse_residuals(items: Sequence[tuple[A.Op, Algorithm]], uses: dict[int, int],
                        external: set[int]) -> list[tuple[A.Op, Algorithm]]:
        """Fold ``add(conv(x), r)`` (either operand order) into the Conv2D's epilogue, and
        likewise for MatMul: ``r`` must have exactly the output's shape, contiguous, float32,
        and the conv/matmul output no other reader. The fused op runs at the add's place in
        the plan (so ``r`` exists by then; the producer's inputs are immutable values, and the
        arena is re-planned on the fused list, which keeps them alive until it runs). ``r`` is
        listed as the fused op's last input, so the planner never lets the output share
        memory with it (an op's inputs and output are live at the same step): the kernels rely
        on that, reading ``r`` after parts of the output were written."""
        out: list[tuple[A.Op, Algorithm] | None] = []
        pos: dict[int, int] = {}  # id of a fusable producer's output -> its index in out
        for op, algo in items:
            if isinstance(op, A.Binary) and op.fn == "add" and len(op.inputs) == 2 \
                    and op.out.dtype == K.F32 and op.out.size > 0:
                best: tuple[int, int] | None = None
                contig = tuple(contiguous(op.out.shape))
                for k in (0, 1):
                    t, r = op.inputs[k], op.inputs[1 - k]
                    p = pos.get(t.id)
                    if p is None or r is t or t.id in external or uses.get(t.id, 0) != 1:
                        continue
                    if t.shape != op.out.shape or r.shape != op.out.shape or r.dtype != K.F32:
                        continue
                    if tuple(op.strides[k]) != contig or tuple(op.strides[1 - k]) != contig:
                        continue
                    if best is None or p > best[0]:  # the later producer: shorter lifetimes
                        best = (p, k)
                if best is not None:
                    p, k = best
                    prod = out[p]
                    assert prod is not None
                    out[p] = None
                    pos.pop(prod[0].out.id, None)
                    out.append((with_residual(prod[0], op.inputs[1 - k], op.out), prod[1]))
                    continue
            if isinstance(op, A.Conv2D | A.MatMul) and not isinstance(op, ConvRes | MatMulRes) \
                    and op.out.dtype == K.F32 and op.out.size > 0 \
                    and (not isinstance(op, A.Conv2D) or op.act.fn == "identity"):
                pos[op.out.id] = len(out)
            out.append((op, algo))
        return [x for x in out if x is not None]

    def _fuse_activations(self, items: Sequence[tuple[A.Op, Algorithm]], uses: dict[int, int],
                          external: set[int]) -> list[tuple[A.Op, Algorithm]]:
        """Fold the activation that directly follows a Conv2D or MatMul into the kernel's epilogue: a
        float Unary, or Binary max/min against a scalar constant (ReLU, ReLU6 and clips lower
        to those), taken as ``clip``. Only when the conv output has no other reader and the
        fused output does not share memory with the conv's input (the kernel would overwrite
        data it still reads)."""
        out: list[tuple[A.Op, Algorithm]] = []
        i = 0
        while i < len(items):
            op, algo = items[i]
            i += 1
            plain_mm = type(op) is A.MatMul and op.out.dtype == K.F32
            if not ((isinstance(op, A.Conv2D | MatMulRes) and op.act.fn == "identity") or plain_mm):
                out.append((op, algo))
                continue
            start = i
            fn: str = "identity"
            params: tuple[float, ...] = (-math.inf, math.inf)
            last = op.out
            while i < len(items) and last.id not in external and uses.get(last.id, 0) == 1:
                nxt = items[i][0]
                step = _activation_step(nxt, last)
                if step is None:
                    break
                if step[0] == "clip" and fn in ("identity", "clip"):
                    # max/min steps compose into one clip while the bounds stay ordered
                    lo, hi = max(params[0], step[1][0]), min(params[1], step[1][1])
                    if lo > hi:
                        break
                    fn, params = "clip", (lo, hi)
                elif fn == "identity" and step[0] != "clip":
                    fn, params = step
                else:
                    break
                last = nxt.out
                i += 1
                if fn != "clip":
                    break
            # im2col/1x1 with one image and one group pack the whole input before writing
            # (a blocked conv writes a new blocked tensor, never the input's memory)
            packs_first = isinstance(op, A.Conv2D) and (
                (algo.name in ("im2col+gemm", "1x1-gemm") and op.groups == 1
                 and op.inputs[0].shape[0] == 1) or algo.name == layout.NCHWC)
            if fn == "identity" or (isinstance(op, A.Conv2D) and self._overlaps(op.inputs[0], last)
                                    and not packs_first):
                out.append((op, algo))
                out.extend(items[start:i])  # refused: the consumed ops run as they were
                continue
            out.append((with_activation(op, A.Activation(fn, params), last), algo))
        return out

    # ------------------------------------------------------------------ descriptors

    def _encode(self, d: Any, op: A.Op, algo: Algorithm) -> None:
        d.algo = 0
        if op.out.size == 0 and not isinstance(op, _Chain | A.GatherScatter):  # index checks still run
            d.kind = K.RASTER  # nothing to write: an empty raster
            self._bind(d, op)
            d.p[0] = 0
            d.p[1] = max(1, op.out.dtype.itemsize)
            return
        if isinstance(op, _Chain):
            self._encode_chain(d, op)
        elif isinstance(op, A.Composite) and op.name == "lstm_cell":  # (gates iofc, c) -> (h, c)
            d.kind = K.LSTM_CELL
            # the second output travels as a third operand (a descriptor has one output)
            self._bind(d, op, [*op.inputs, op.outputs[1]])
            d.p[0], d.p[1] = op.out.shape[0], int(op.attrs["hidden"])  # type: ignore[call-overload]
        elif isinstance(op, A.Composite):  # softmax / log_softmax over one axis
            d.kind = K.SOFTMAX
            self._bind(d, op)
            shape, axis = op.inputs[0].shape, int(op.attrs["axis"])  # type: ignore[call-overload]
            d.p[0], d.p[1] = math.prod(shape[:axis]), shape[axis]
            d.p[2], d.p[3] = math.prod(shape[axis + 1:]), int(op.name == "log_softmax")
        elif isinstance(op, A.Raster):
            self._encode_raster(d, op)
        elif isinstance(op, A.Unary):
            d.kind = K.UNARY
            d.fn = K.UNARY_FNS[op.fn]
            d.dtype = K.DTYPES[op.inputs[0].dtype]
            self._bind(d, op)
            d.p[0] = op.out.size
            d.p[1] = op.inputs[0].dtype.itemsize
            d.p[2] = op.out.dtype.itemsize
            for i, v in enumerate(op.params[:8]):
                d.f[i] = v
        elif isinstance(op, A.Binary | A.Select):
            self._encode_nd(d, op)
        elif isinstance(op, A.Cast):
            d.kind = K.CAST
            d.dtype = K.DTYPES[op.inputs[0].dtype]
            d.dtype2 = K.DTYPES[op.out.dtype]
            self._bind(d, op)
            d.p[0] = op.out.size
        elif isinstance(op, A.Reduce):
            d.kind = K.REDUCE
            d.fn = K.REDUCE_FNS[op.fn]
            d.dtype = K.DTYPES[op.inputs[0].dtype]
            self._bind(d, op)
            d.p[0], d.p[1], d.p[2], d.p[3] = op.outer, op.n, op.inner, int(op.last_index)
        elif isinstance(op, A.MatMul):
            self._encode_matmul(d, op)
        elif isinstance(op, A.Conv2D):
            self._encode_conv(d, op, algo)
        elif isinstance(op, A.Pool2D):
            d.kind = K.POOL
            self._bind(d, op)
            blocked = isinstance(op, layout.BlockedPool)
            n, c, h, w = op.plain_in if isinstance(op, layout.BlockedPool) else op.inputs[0].shape
            _, _, oh, ow = op.plain_out if isinstance(op, layout.BlockedPool) else op.out.shape
            d.p[19] = int(blocked)
            vals = [n, c, h, w, oh, ow, *op.kernel, *op.strides, op.pads[0], op.pads[1], op.pads[2],
                    op.pads[3], *op.dilations, K.POOL_FNS[op.fn], int(op.count_include_pad), op.p]
            for i, v in enumerate(vals):
                d.p[i] = int(v)
        elif isinstance(op, A.GatherScatter):
            d.kind = K.GATHER
            d.dtype = K.DTYPES[op.inputs[0].dtype]
            self._bind(d, op)
            d.p[0] = 0 if op.mode == "gather" else 1
            d.p[1], d.p[2], d.p[3] = op.rows, op.block, op.inputs[1].size
            d.p[4] = op.inputs[0].dtype.itemsize
            d.p[5] = K.SCATTER_REDUCTIONS.get(op.reduction, 0)
        elif isinstance(op, A.Sort):
            d.kind = K.SORT
            d.dtype = K.DTYPES[op.inputs[0].dtype]
            self._bind(d, op)
            d.p[0], d.p[1], d.p[2], d.p[3] = op.outer, op.n, op.inner, int(op.descending)
        else:  # pragma: no cover - algorithms() never offers other kinds
            raise WalleError(f"cpu backend cannot run {op.kind.value}")

    def _encode_raster(self, d: Any, op: A.Raster) -> None:
        d.kind = K.RASTER
        self._bind(d, op)
        dt = op.out.dtype
        regs = np.array(
            [[r.src, r.src_offset, *r.src_strides, r.dst_offset, *r.dst_strides, *r.size]
             for r in op.regions if math.prod(r.size) > 0],
            dtype=np.int64,
        ).reshape(-1, 12)
        d.p[0] = regs.shape[0]
        d.p[1] = dt.itemsize
        d.p[3] = op.out.size
        if op.fill is not None:
            with np.errstate(all="ignore"):
                fill = np.array(op.fill).astype(dt) if dt != K.BOOL else np.array(bool(op.fill))
            raw = fill.tobytes() + b"\0" * (8 - dt.itemsize)
            d.p[2] = 1
            d.p[4] = int(np.frombuffer(raw, dtype="<i8")[0])
        d.aux = self._aux(regs)

    def _encode_nd(self, d: Any, op: A.Binary | A.Select) -> None:
        dims, st = collapse(op.out.shape, op.strides)
        if len(dims) > MAX_DIMS:
            raise WalleError("too many dimensions after collapsing")  # algorithms() prevents this
        if isinstance(op, A.Binary):
            d.kind = K.BINARY
            d.fn = K.BINARY_FNS[op.fn]
            d.dtype = K.DTYPES[op.inputs[0].dtype]
            esize_in = op.inputs[0].dtype.itemsize
        else:
            d.kind = K.SELECT
            d.dtype = K.DTYPES[op.inputs[1].dtype]
            esize_in = op.inputs[1].dtype.itemsize
        self._bind(d, op)
        self._set_nd(d, dims, st)
        d.p[51] = esize_in
        d.p[52] = op.out.dtype.itemsize

    @staticmethod
    def _set_nd(d: Any, dims: list[int], st: list[list[int]]) -> None:
        d.p[0] = len(dims)
        for i, n in enumerate(dims):
            d.p[1 + i] = n
        for k, s in enumerate(st):
            for i, v in enumerate(s):
                d.p[9 + 8 * k + i] = v
        d.p[50] = math.prod(dims[:-1])

    def _encode_chain(self, d: Any, ch: _Chain) -> None:
        first = ch.ops[0]
        shape = ch.out.shape
        contig = contiguous(shape)
        operands: list[A.Tensor] = []
        strides: list[list[int]] = []

        def operand(t: A.Tensor, st: Sequence[int]) -> int:
            for i, (o, s) in enumerate(zip(operands, strides, strict=True)):
                if o is t and list(s) == list(st):
                    return i
            operands.append(t)
            strides.append(list(st))
            return len(operands) - 1

        steps: list[list[int]] = []
        params: list[list[float]] = []
        if isinstance(first, A.Unary):
            operand(first.inputs[0], contig)
            steps.append([0, K.UNARY_FNS[first.fn], 0, 0])
            params.append(list(first.params[:4]))
        else:
            assert isinstance(first, A.Binary)
            operand(first.inputs[0], first.strides[0])
            steps.append([1, K.BINARY_FNS[first.fn], operand(first.inputs[1], first.strides[1]), 0])
            params.append([])
        prev = first.out
        for op in ch.ops[1:]:
            if isinstance(op, A.Unary):
                steps.append([0, K.UNARY_FNS[op.fn], 0, 0])
                params.append(list(op.params[:4]))
            else:
                assert isinstance(op, A.Binary)
                if op.inputs[0] is prev:
                    steps.append([1, K.BINARY_FNS[op.fn], operand(op.inputs[1], op.strides[1]), 0])
                else:
                    steps.append([2, K.BINARY_FNS[op.fn], operand(op.inputs[0], op.strides[0]), 0])
                params.append([])
            prev = op.out
        dims, st = collapse(shape, strides)
        d.kind = K.CHAIN
        self._bind(d, ch, operands)
        self._set_nd(d, dims, st)
        d.p[53] = len(steps)
        d.aux = self._aux(np.array(steps, dtype=np.int64))
        prm = np.zeros((len(steps), 4), np.float64)
        for i, p in enumerate(params):
            prm[i, : len(p)] = p
        d.aux2 = self._aux(prm)

    def _check_residual(self, op: A.Op) -> None:
        """The kernels read the residual after writing parts of the output: never aliased."""
        r, y = op.inputs[-1], op.out
        ro, yo = self._offsets.get(r.id), self._offsets.get(y.id)
        if r.id == y.id or (ro is not None and yo is not None
                            and ro < yo + max(y.nbytes, 1) and yo < ro + max(r.nbytes, 1)):
            raise WalleError("fused residual shares memory with the output")  # planner prevents it

    def _encode_matmul(self, d: Any, op: A.MatMul) -> None:
        d.kind = K.MATMUL
        self._bind(d, op)
        res = isinstance(op, MatMulRes)
        vals = [op.batch, op.m, op.n, op.k, int(op.trans_a), int(op.trans_b), op.a_batch_stride,
                op.b_batch_stride, int(len(op.inputs) - res > 2), int(op.bias_full)]
        for i, v in enumerate(vals):
            d.p[i] = v
        if isinstance(op, MatMulRes):
            self._check_residual(op)
            d.p[12] = len(op.inputs) - 1
        act = getattr(op, "act", None)
        if isinstance(act, A.Activation):
            d.p[13] = K.UNARY_FNS[act.fn]
            for i, prm in enumerate(act.params[:8]):
                d.f[i] = prm
        b = op.inputs[1]
        if b.value is not None:  # constant weights: pack once, here
            nb = op.batch if op.b_batch_stride else 1
            per = int(LIB.wl_packed_b_floats(op.k, op.n))
            packed = np.zeros(max(1, nb * per), np.float32)
            src = np.ascontiguousarray(b.value, dtype=np.float32).reshape(-1)
            for i in range(nb):
                lo = i * op.b_batch_stride
                part = src[lo : lo + op.k * op.n]
                if part.size == 0:
                    part = np.zeros(1, np.float32)
                LIB.wl_pack_b(FFI.cast("float*", FFI.from_buffer(part)), op.k, op.n, int(op.trans_b),
                              FFI.cast("float*", FFI.from_buffer(packed)) + i * per)
            d.aux = self._aux(packed)
            d.p[10] = 1
            d.p[11] = int(LIB.wl_gemm_nr())

    def _encode_blocked_conv(self, d: Any, op: layout.BlockedConv) -> None:
        d.kind = K.CONV
        d.algo = K.CONV_ALGOS[layout.NCHWC]
        self._bind(d, op)
        n, c, h, w = op.plain_in
        o, _cg, kh, kw = op.inputs[1].shape
        _, _, oh, ow = op.plain_out
        vals = [n, c, h, w, o, oh, ow, kh, kw, *op.strides, op.pads[0], op.pads[1], *op.dilations,
                op.groups, 1, K.UNARY_FNS[op.act.fn]]
        for i, v in enumerate(vals):
            d.p[i] = int(v)
        if op.residual:
            d.p[19] = len(op.inputs) - 1
        d.p[20] = int(op.blocked_input)
        wv = np.asarray(op.inputs[1].value, dtype=np.float32)
        if op.groups > 1:  # blocked convs are depthwise or have one group
            packed = layout.pack_depthwise(wv)
        else:
            d.p[21] = fb = int(LIB.wl_nchwc_fb())
            packed = layout.pack_weights(wv, fb, plain_input=not op.blocked_input)
        d.aux = self._aux(packed)
        has_bias = len(op.inputs) - op.residual > 2
        d.aux2 = self._aux(layout.pad_bias(op.inputs[2].value if has_bias else None, o))
        for i, prm in enumerate(op.act.params[:8]):
            d.f[i] = prm

    def _encode_conv(self, d: Any, op: A.Conv2D, algo: Algorithm) -> None:
        if isinstance(op, layout.BlockedConv):
            self._encode_blocked_conv(d, op)
            return
        d.kind = K.CONV
        name = algo.name if algo.name in conv_algorithms(op) else "im2col+gemm"
        d.algo = K.CONV_ALGOS[name]
        self._bind(d, op)
        n, c, h, w = op.inputs[0].shape
        o, _cg, kh, kw = op.inputs[1].shape
        _, _, oh, ow = op.out.shape
        res = isinstance(op, ConvRes)
        vals = [n, c, h, w, o, oh, ow, kh, kw, *op.strides, op.pads[0], op.pads[1], *op.dilations,
                op.groups, int(len(op.inputs) - res > 2), K.UNARY_FNS[op.act.fn]]
        for i, v in enumerate(vals):
            d.p[i] = int(v)
        if res:
            self._check_residual(op)
            d.p[19] = len(op.inputs) - 1
        for i, prm in enumerate(op.act.params[:8]):
            d.f[i] = prm
        if name == "winograd-f23":
            wv = np.ascontiguousarray(op.inputs[1].value, dtype=np.float32)
            u = np.zeros(16 * o * c, np.float32)
            LIB.wl_winograd_weights(FFI.cast("float*", FFI.from_buffer(wv)), o, c,
                                    FFI.cast("float*", FFI.from_buffer(u)))
            d.aux = self._aux(u)
            d.p[18] = int(LIB.wl_gemm_nr())

    # ------------------------------------------------------------------ running

    def _arena(self) -> np.ndarray:
        arena: np.ndarray | None = getattr(self._local, "arena", None)
        if arena is None:
            arena = np.empty(max(64, self._arena_bytes), np.uint8)
            self._local.arena = arena
        return arena

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        prog = self.program
        if len(inputs) != len(prog.inputs):
            raise InputError(f"program takes {len(prog.inputs)} inputs, got {len(inputs)}")
        ffi = FFI
        slots = ffi.new("char*[]", self._nslots)
        ffi.memmove(slots, self._template, self._nslots * ffi.sizeof("char*"))
        keep: list[Any] = []
        arena = self._arena()
        slots[0] = ffi.from_buffer(arena)
        table: dict[int, np.ndarray] = {}
        for t, arr, s in zip(prog.inputs, inputs, self._input_slots, strict=True):
            a = np.ascontiguousarray(arr, dtype=t.dtype).reshape(t.shape)
            if a.size == 0:
                a = np.zeros(t.shape, t.dtype)
            table[t.id] = a
            keep.append(a)
            slots[s] = ffi.from_buffer(a.reshape(-1) if a.size else np.zeros(1, t.dtype))
        outs: list[np.ndarray] = []
        for t, s in zip(prog.outputs, self._output_slots, strict=True):
            if s < 0:
                outs.append(table[t.id].copy())
                continue
            o = np.empty(t.shape, t.dtype)
            outs.append(o)
            slots[s] = ffi.from_buffer(o.reshape(-1) if o.size else np.zeros(1, t.dtype))
        err = ffi.new("char[]", 256)
        prof = getattr(self._local, "profile", None)
        if prof is not None:
            LIB.wl_set_profile(prof)
        try:
            rc = LIB.wl_run(self._ops, self._n_ops, slots, self.threads, err, 256)
        finally:
            if prof is not None:
                LIB.wl_set_profile(FFI.NULL)
        if rc:
            op = self._describe(rc - 1)
            raise KernelError(f"{ffi.string(err).decode()} (in {op})")
        return outs

    def _describe(self, i: int) -> str:
        return f"op {i} of {self._n_ops}: {self._labels[i]}"

    def profile(self, inputs: Sequence[np.ndarray], runs: int = 10) -> list[tuple[str, float]]:
        """Per-op wall time (seconds, mean over ``runs``) of this program's C ops, in plan order
        (a debugging aid: ``python -m walle_cpu.profile``)."""
        buf = FFI.new("double[]", max(1, self._n_ops))
        self._local.profile = buf
        try:
            for _ in range(runs):
                self.run(inputs)
        finally:
            self._local.profile = None
        return [(self._labels[i], buf[i] / runs) for i in range(self._n_ops)]


def _activation_step(op: A.Op, t: A.Tensor) -> tuple[str, tuple[float, ...]] | None:
    """``op`` as an activation of ``t``: (unary fn, params), or ("clip", (lo, hi))."""
    if op.out.shape != t.shape or op.out.dtype != K.F32:
        return None
    if isinstance(op, A.Unary):
        if op.inputs[0] is t and op.fn in K.FLOAT_UNARY and op.fn not in K.PREDICATES \
                and op.fn != "identity":
            if op.fn == "clip":
                lo, hi = (*op.params, -math.inf, math.inf)[:2]
                return "clip", (float(lo), float(hi))
            return op.fn, tuple(float(p) for p in op.params)
        return None
    if isinstance(op, A.Binary) and op.fn in ("max", "min") and len(op.inputs) == 2:
        hits = [k for k, x in enumerate(op.inputs) if x is t]
        if len(hits) != 1 or tuple(op.strides[hits[0]]) != tuple(contiguous(t.shape)):
            return None
        c = op.inputs[1 - hits[0]]
        if c.value is None or c.size != 1 or c.dtype != K.F32:
            return None
        v = float(np.asarray(c.value).reshape(-1)[0])
        if math.isnan(v):
            return None
        return ("clip", (v, math.inf)) if op.fn == "max" else ("clip", (-math.inf, v))
    return None


def _label(op: A.Op, algo: Algorithm) -> str:
    if isinstance(op, _Chain):
        names = "+".join(getattr(o, "fn", o.kind.value) for o in op.ops)
        return f"chain[{names}] {list(op.out.shape)}"
    fn = getattr(op, "fn", "")
    ins = " ".join(str(list(t.shape)) for t in op.inputs[:2])
    res = isinstance(op, ConvRes | MatMulRes) or (isinstance(op, layout.BlockedConv) and op.residual)
    extra = "+residual" if res else ""
    act = getattr(op, "act", None)
    if isinstance(act, A.Activation) and act.fn != "identity":
        extra += f"+{act.fn}"
    return (f"{op.kind.value}{'/' + fn if isinstance(fn, str) and fn else ''}{extra} {algo.name} {ins}"
            f" -> {list(op.out.shape)}")


class _Chain(A.Op):
    """A fused run of fp32 Unary/Binary ops (internal to this backend)."""

    kind = A.Kind.UNARY

    def __init__(self, ops: list[A.Op]) -> None:
        super().__init__(inputs=[t for o in ops for t in o.inputs], outputs=[ops[-1].out])
        self.ops = ops
