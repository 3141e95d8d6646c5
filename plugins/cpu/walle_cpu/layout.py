"""The blocked channel layout (NCHW16c) of the cpu backend.

A plain tensor (N, C, H, W) is stored blocked as (N, ceil(C/16), H, W, 16): the 16 channels of
a block are adjacent, so one SIMD vector holds one pixel of 16 channels and a conv's inner step
is one broadcast times one vector. Convs that the search gave the ``nchwc`` algorithm run on
blocked tensors; runs of them stay blocked, and the layout changes at the edges of a run are
plain ``Raster`` ops (a transpose with a zero fill for the padding channels), placed just before
the first reader that needs the other layout. Global pooling (a spatial ``Reduce``) reads the
blocked tensor directly, so a run ends with a tiny (N, C) conversion.

Padding channels (``C % 16``) of a blocked tensor hold zeros after a conversion and are never
read into real channels (kernels stop at the real channel count), so their values never matter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from walle_core import atomic as A
from walle_core.backend import Algorithm
from walle_core.decompose.builder import contiguous
from walle_core.plan.rewrite.fused import ConvRes
from walle_cpu.blocked_raster import Moved, compose, element_map, regions_from_codes

BLK = 16
PLAIN_INPUT_MAX = 4  # a conv reads a plain input this narrow directly (the RGB stem)
NCHWC = "nchwc"
WINOGRAD_NCHWC = "winograd-nchwc"  # F(4x4, 3x3) on blocked tensors (ops/conv.py)
BLOCKED_CONVS = frozenset({NCHWC, WINOGRAD_NCHWC})  # conv algorithms that run blocked
_DIRECT = Algorithm("direct")
_BLOCKED = Algorithm(NCHWC)
LAYOUT = Algorithm("layout")  # the Raster ops that change layout (a label for profiles)
_REDUCE_FNS = frozenset({"sum", "prod", "max", "min"})


@dataclasses.dataclass(eq=False)
class BlockedConv(A.Conv2D):
    """Conv2D with a blocked output, a blocked (or, for few channels, plain) input and, when
    ``residual``, a blocked residual as the last input. ``plain_in``/``plain_out`` are the
    logical NCHW shapes."""

    plain_in: tuple[int, int, int, int] = (0, 0, 0, 0)
    plain_out: tuple[int, int, int, int] = (0, 0, 0, 0)
    blocked_input: bool = True
    residual: bool = False


@dataclasses.dataclass(eq=False)
class BlockedPool(A.Pool2D):
    """Pool2D (max or avg) from a blocked input to a blocked output."""

    plain_in: tuple[int, int, int, int] = (0, 0, 0, 0)
    plain_out: tuple[int, int, int, int] = (0, 0, 0, 0)


def blocks(c: int) -> int:
    return -(-c // BLK)


def blocked_shape(shape: Sequence[int]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, blocks(c), h, w, BLK)


def is_depthwise(op: A.Conv2D) -> bool:
    c, o = op.inputs[0].shape[1], op.out.shape[1]
    return op.groups == c == o and op.inputs[1].shape[1] == 1


def is_blockdiag(op: A.Conv2D) -> bool:
    """A grouped conv whose groups (as many inputs as outputs, a divisor of 16 each, not one)
    each lie within one 16-channel block: per block a dense 16 x 16 conv with zero weights
    across groups, 16 / g times the multiply-adds but on whole vectors (RegNet's and ResNeXt's
    groups of 8 ran as one short GEMM per group)."""
    o, g = op.inputs[1].shape[:2]  # (the weights: a blocked conv's input and output are 5-D)
    return op.groups > 1 and g > 1 and o == g * op.groups and BLK % g == 0


def reads_blocks_only(op: A.Conv2D) -> bool:
    """Blocked convs that never read a plain input (the stem path is for dense convs)."""
    return is_depthwise(op) or is_blockdiag(op)


def offers_blocked(op: A.Conv2D) -> bool:
    """Convs the blocked kernels run: constant weights (packed once) and bias, one group,
    depthwise or block-diagonal groups, a 4-D NCHW input."""
    bias_ok = len(op.inputs) < 3 or op.inputs[2].value is not None
    return (len(op.inputs[0].shape) == 4 and op.inputs[1].value is not None and bias_ok
            and (op.groups == 1 or is_depthwise(op) or is_blockdiag(op)))


def _regions(n: int, c: int, hw: int, to_blocked: bool) -> list[A.Region]:
    """Per image: one region for the whole blocks and one for the partial last block. Written
    with channels as the middle axis and pixels innermost on the plain side, so the raster
    kernel runs them as cache-blocked transposes."""
    cb, rem = divmod(c, BLK)
    out: list[A.Region] = []
    for i in range(n):
        plain0, blk0 = i * c * hw, i * blocks(c) * hw * BLK
        for z0, zs, width in ((0, cb, BLK), (cb, 1, rem)):
            if zs == 0 or width == 0:
                continue
            plain = (plain0 + z0 * BLK * hw, (BLK * hw, 1, hw))
            blk = (blk0 + z0 * hw * BLK, (hw * BLK, 16, 1))
            if to_blocked:  # (block, pixel, channel): pixels contiguous in the source
                out.append(A.Region(0, plain[0], plain[1], blk[0], blk[1], (zs, hw, width)))
            else:  # (block, channel, pixel): channels contiguous in the source
                out.append(A.Region(0, blk[0], (hw * BLK, 1, BLK), plain[0], (BLK * hw, hw, 1),
                                    (zs, width, hw)))
    return out


def to_blocked(src: A.Tensor, plain: Sequence[int], dst: A.Tensor) -> A.Raster:
    n, c, h, w = plain
    fill = 0.0 if c % BLK else None
    return A.Raster([src], [dst], regions=_regions(n, c, h * w, True), fill=fill)


def from_blocked(src: A.Tensor, plain: Sequence[int], dst: A.Tensor) -> A.Raster:
    n, c, h, w = plain
    return A.Raster([src], [dst], regions=_regions(n, c, h * w, False))


def _strides(op: A.Op) -> list[tuple[int, ...]]:
    """Per-input element strides over the output (a Unary reads its input densely), 0 along
    the output's size-1 axes (where a stride never matters)."""
    shape = op.out.shape
    given = op.strides if isinstance(op, A.Binary | A.Select) else [_dense(shape)]
    return [tuple(0 if n == 1 else st for st, n in zip(s, shape, strict=True)) for s in given]


def _dense(shape: Sequence[int]) -> list[int]:
    """Contiguous strides, 0 along size-1 axes (as ``_strides`` gives them)."""
    out, acc = [], 1
    for n in reversed(shape):
        out.append(0 if n == 1 else acc)
        acc *= n
    return out[::-1]


def _channel_vector(t: A.Tensor, strides: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """``t`` is a constant per-channel vector broadcast over N, H and W (PRelu's slope, a
    bias): stride 1 along C, 0 (or a size-1 axis) elsewhere."""
    return t.value is not None and t.size == shape[1] > 1 and strides[1] == 1 \
        and not any(st for k, st in enumerate(strides) if k != 1)


def _pixel_vector(t: A.Tensor, strides: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """``t`` is one channel vector per image, (N, C, 1, 1), broadcast over H and W."""
    n, c = shape[0], shape[1]
    return t.shape == (n, c, 1, 1) and c > 1 and strides == (c if n > 1 else 0, 1, 0, 0)


def _is_chain(op: A.Op) -> bool:
    from walle_cpu.ops.chain import Chain  # walle_cpu.ops imports this module

    return isinstance(op, Chain)


def _plain(t: A.Tensor) -> tuple[int, int, int, int]:
    return (t.shape[0], t.shape[1], t.shape[2], t.shape[3])


def _is_resize(op: A.Op) -> bool:
    from walle_cpu.ops.resize import NAME  # walle_cpu.ops imports this module

    return isinstance(op, A.Composite) and op.name == NAME and op.out.dtype == np.float32


def _is_deconv(op: A.Op) -> bool:
    from walle_cpu.ops.deconv import NAME  # walle_cpu.ops imports this module

    return isinstance(op, A.Composite) and op.name == NAME


def _pools_blocked(op: A.Op) -> bool:
    return isinstance(op, A.Pool2D) and op.fn in ("max", "avg") and op.out.dtype == np.float32 \
        and len(op.inputs[0].shape) == 4


class _Rewriter:
    def __init__(self, external: set[int], new_id: Callable[[], int],
                 fallback: Callable[[A.Conv2D], Algorithm]) -> None:
        self.external = external
        self.new_id = new_id
        self.fallback = fallback
        self.readers: dict[int, list[tuple[A.Op, Algorithm]]] = {}
        self.out: list[tuple[A.Op, Algorithm]] = []
        # plain id -> (blocked tensor, logical NCHW shape); `pending`: no plain copy made yet
        self.blocked: dict[int, tuple[A.Tensor, tuple[int, int, int, int]]] = {}
        self.pending: set[int] = set()
        self.vectors: dict[int, A.Tensor] = {}  # constant channel vector id -> padded copy
        self.moved: dict[int, Moved] = {}  # output id of a blocked raster -> its element map
        self.dropped: set[int] = set()  # ids of the blocked tensors of rasters folded into others

    def tensor(self, plain: Sequence[int], like: A.Tensor) -> A.Tensor:
        return A.Tensor(blocked_shape(plain), like.dtype, name=f"{like.name}:nchw16c",
                        id=self.new_id())

    def as_blocked(self, t: A.Tensor) -> A.Tensor:
        got = self.blocked.get(t.id)
        if got is not None and got[1] == t.shape:
            return got[0]
        self.as_plain(t)  # a reshaped view of a blocked value: via its plain copy
        plain = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
        b = self.tensor(plain, t)
        self.out.append((to_blocked(t, plain, b), LAYOUT))
        self.blocked[t.id] = (b, plain)
        return b

    def as_plain(self, t: A.Tensor) -> None:
        if t.id in self.pending:
            b, plain = self.blocked[t.id]
            self.out.append((from_blocked(b, plain, A.Tensor(plain, t.dtype, name=t.name, id=t.id)),
                             LAYOUT))
            self.pending.discard(t.id)

    def produced(self, t: A.Tensor, b: A.Tensor, plain: tuple[int, int, int, int]) -> None:
        self.blocked[t.id] = (b, plain)
        self.pending.add(t.id)
        if t.id in self.external:
            self.as_plain(t)

    def conv(self, op: A.Conv2D, algo: Algorithm) -> None:
        x = op.inputs[0]
        residual = isinstance(op, ConvRes)
        w_and_bias = op.inputs[1:len(op.inputs) - residual]
        plain_in = (not reads_blocks_only(op) and x.shape[1] <= PLAIN_INPUT_MAX
                    and not (x.id in self.blocked and self.blocked[x.id][1] == x.shape))
        xb = x if plain_in else self.as_blocked(x)
        ins = [xb, *w_and_bias]
        if residual:
            ins.append(self.as_blocked(op.inputs[-1]))
        shp = op.out.shape
        plain_out = (shp[0], shp[1], shp[2], shp[3])
        yb = self.tensor(plain_out, op.out)
        fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(A.Conv2D) if f.init}
        fields.update(inputs=ins, outputs=[yb], plain_in=tuple(x.shape), plain_out=plain_out,
                      blocked_input=not plain_in, residual=residual)
        self.out.append((BlockedConv(**fields), algo))
        self.produced(op.out, yb, plain_out)

    def wasteful(self, out: A.Tensor) -> bool:
        """A value of at most a quarter block of channels (a one-channel mask or logit map)
        that no blocked conv reads later is cheaper plain: blocked, every pixel moves and
        computes all 16 lanes; one change of layout reads them once."""
        return out.shape[1] * 4 <= BLK and not self.feeds_blocked_conv(out)

    def feeds_blocked_conv(self, t: A.Tensor, depth: int = 4, any_conv: bool = False) -> bool:
        """Whether ``t`` reaches a blocked conv (``any_conv``: any conv, which a blocked input
        may keep blocked) through readers that keep it blocked (pools, block-moving rasters,
        element-wise ops): only then does changing its layout once pay."""
        for op, algo in self.readers.get(t.id, ()):
            if (isinstance(op, A.Conv2D) and (any_conv or algo.name in BLOCKED_CONVS)
                    and op.inputs[1] is not t) or (_is_deconv(op) and op.inputs[0] is t):
                return True
            through = _pools_blocked(op) or _is_resize(op) or (
                (type(op) in (A.Raster, A.Unary, A.Binary, A.Select) or _is_chain(op))
                and len(op.out.shape) == 4)
            if through and depth > 0 and self.feeds_blocked_conv(op.out, depth - 1, any_conv):
                return True
        return False

    def raster(self, op: A.Raster) -> bool:
        """A raster moving whole channel blocks of a blocked value runs blocked."""
        if not any(t.id in self.pending for t in op.inputs) or len(op.out.shape) != 4 or \
                op.out.dtype != np.float32 or any(len(t.shape) != 4 for t in op.inputs) or \
                self.wasteful(op.out):
            return False
        moved = element_map(op)
        if moved is None:
            return False
        # a blocked raster whose output only this one reads is folded in: one pass
        producers = {t.id: self.moved[t.id] for t in op.inputs if t.id in self.moved
                     and len(self.readers.get(t.id, ())) == 1 and t.id not in self.external
                     and not (self.moved[t.id].codes < 0).any()}
        regions = None
        if producers:
            whole = compose(moved, producers)
            regions = regions_from_codes(whole.codes, op.out.shape, [_plain(t) for t in whole.inputs])
            if regions is not None:
                moved = whole
                for tid in producers:
                    self.dropped.add(id(self.blocked[tid][0]))
                    del self.blocked[tid]
                    self.pending.discard(tid)
        if regions is None:
            regions = regions_from_codes(moved.codes, op.out.shape, [_plain(t) for t in moved.inputs])
        if regions is None:
            return False
        ins = [self.as_blocked(t) for t in moved.inputs]
        shp = op.out.shape
        plain_out = (shp[0], shp[1], shp[2], shp[3])
        yb = self.tensor(plain_out, op.out)
        self.out.append((A.Raster(ins, [yb], regions=regions, fill=op.fill), _DIRECT))
        self.produced(op.out, yb, plain_out)
        self.moved[op.out.id] = moved
        return True

    def pays(self, op: A.Conv2D) -> bool:
        """A blocked conv whose input needs a layout change pays only when its output goes on
        to another blocked conv; else the changes around it (and around the pools between)
        cost more than the kernel saves: run it plain. (A narrow plain input needs no change:
        the stem conv reads it directly; but an output narrower than a block that no conv
        reads is padding computed, then moved out again: a lone 4-channel conv ran 20 us that
        way against 12 us plain.)"""
        x = op.inputs[0]
        if x.id in self.blocked and self.blocked[x.id][1] == x.shape:
            return True
        if not reads_blocks_only(op) and x.shape[1] <= PLAIN_INPUT_MAX:
            return op.out.shape[1] >= BLK or self.feeds_blocked_conv(op.out, any_conv=True)
        return self.feeds_blocked_conv(op.out)

    def stays_blocked(self, op: A.Conv2D) -> bool:
        """A conv that picked a plain algorithm runs blocked anyway when its input is a blocked
        value with no plain copy yet, and either its output goes on to a blocked conv or the
        padding channels it would compute (8 outputs as 16) cost less than moving its input
        out of the layout (~32 flops per element moved): the per-op costs do not see the
        layout changes a plain kernel needs around it."""
        x = op.inputs[0]
        got = self.blocked.get(x.id)
        if not (offers_blocked(op) and op.out.dtype == np.float32 and x.id in self.pending
                and got is not None and got[1] == x.shape):
            return False
        o = op.out.shape[1]
        wasted = op.flops() * (blocks(o) * BLK - o) / max(o, 1)
        return wasted <= 32 * x.size or self.feeds_blocked_conv(op.out)

    def pool(self, op: A.Pool2D) -> bool:
        x = op.inputs[0]
        got = self.blocked.get(x.id)
        if got is None or got[1] != x.shape or x.id not in self.pending or not _pools_blocked(op):
            return False
        shp = op.out.shape
        plain_out = (shp[0], shp[1], shp[2], shp[3])
        yb = self.tensor(plain_out, op.out)
        fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(A.Pool2D) if f.init}
        fields.update(inputs=[got[0]], outputs=[yb], plain_in=got[1], plain_out=plain_out)
        self.out.append((BlockedPool(**fields), _DIRECT))
        self.produced(op.out, yb, plain_out)
        return True

    def resize(self, op: A.Composite) -> bool:
        """A 2-D resize (``resize2d``) of a blocked value runs on the blocked tensors."""
        from walle_cpu.ops.resize import blocked  # walle_cpu.ops imports this module

        x = op.inputs[0]
        got = self.blocked.get(x.id)
        if not _is_resize(op) or got is None or got[1] != x.shape or x.id not in self.pending \
                or self.wasteful(op.out):
            return False
        shp = op.out.shape
        plain_out = (shp[0], shp[1], shp[2], shp[3])
        yb = self.tensor(plain_out, op.out)
        self.out.append((blocked(op, got[0], yb, got[1], plain_out), _DIRECT))
        self.produced(op.out, yb, plain_out)
        return True

    def deconv(self, op: A.Composite) -> bool:
        """A transposed conv (``conv_transpose2d``) runs blocked only (a plain input changes
        layout first)."""
        from walle_cpu.ops.deconv import blocked  # walle_cpu.ops imports this module

        if not _is_deconv(op):
            return False
        x = op.inputs[0]
        plain_in = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        xb = self.as_blocked(x)
        shp = op.out.shape
        plain_out = (shp[0], shp[1], shp[2], shp[3])
        yb = self.tensor(plain_out, op.out)
        self.out.append((blocked(op, xb, yb, plain_in, plain_out), _BLOCKED))
        self.produced(op.out, yb, plain_out)
        return True

    def spatial_reduce(self, op: A.Reduce) -> bool:
        """A Reduce over H (then W) or H*W of a blocked value reduces the blocked tensor."""
        x = op.inputs[0]
        got = self.blocked.get(x.id)
        if got is None or x.id not in self.pending or op.fn not in _REDUCE_FNS:
            return False
        b, (n, c, h, w) = got
        if op.outer != n * c or (op.n, op.inner) not in ((h, w), (h * w, 1)):
            return False
        plain = (n, c, 1, op.inner)
        yb = self.tensor(plain, op.out)
        self.out.append((dataclasses.replace(op, inputs=[b], outputs=[yb], outer=n * blocks(c),
                                             inner=op.inner * BLK), _DIRECT))
        self.produced(op.out, yb, plain)
        return True

    def elementwise(self, op: A.Op, algo: Algorithm) -> bool:
        """A Unary, Binary, Select or fused chain of them over a blocked value runs on the
        blocked tensors when every other operand is blocked too, a scalar, a constant
        per-channel vector (padded to whole blocks) or a blocked (N, C, 1, 1) value: PRelu, the
        activations no epilogue took (SiLU as x * sigmoid(x)) and squeeze-excite's gating
        multiply stay in the layout. Padding channels compute values no kernel
        reads into real channels."""
        from walle_cpu.ops.chain import Chain, fits  # walle_cpu.ops imports this module

        shp = op.out.shape
        steps = op.ops if isinstance(op, Chain) else [op]
        if not all(type(s) in (A.Unary, A.Binary, A.Select) for s in steps) or len(shp) != 4 or \
                not any(t.id in self.pending for t in op.inputs) or self.wasteful(op.out):
            return False
        plain_out = (shp[0], shp[1], shp[2], shp[3])
        yb = self.tensor(plain_out, op.out)
        local: dict[int, A.Tensor] = {}  # a chain's intermediates, blocked (never stored)
        new_steps: list[A.Op] = []
        for k, step in enumerate(steps):
            out = yb if k == len(steps) - 1 else \
                A.Tensor(yb.shape, step.out.dtype, name=f"{step.out.name}:nchw16c", id=self.new_id())
            new = self._blocked_step(step, out, local)
            if new is None:
                return False
            local[step.out.id] = out
            new_steps.append(new)
        if isinstance(op, Chain) and not fits(new_steps):
            return False
        self.out.append((Chain(new_steps) if isinstance(op, Chain) else new_steps[0], algo))
        self.produced(op.out, yb, plain_out)
        return True

    def padded_vector(self, t: A.Tensor, nb: int) -> A.Tensor:
        """The constant channel vector ``t`` zero-padded to ``nb`` channels (one per constant)."""
        got = self.vectors.get(t.id)
        if got is None:
            padded = np.zeros(nb, t.dtype)
            padded[:t.size] = np.asarray(t.value).reshape(-1)
            got = A.Tensor((nb,), t.dtype, value=padded, name=f"{t.name}:nchw16c", id=self.new_id())
            self.vectors[t.id] = got
        return got

    def _blocked_step(self, op: A.Op, out: A.Tensor, local: dict[int, A.Tensor]) -> A.Op | None:
        """``op`` (same 4-D output shape) rewritten to write ``out`` from blocked operands."""
        shp = op.out.shape
        nb = blocks(shp[1]) * BLK
        dense_b = tuple(contiguous(out.shape))
        ins: list[A.Tensor] = []
        strides: list[tuple[int, ...]] = []
        for t, st in zip(op.inputs, _strides(op), strict=True):
            got = self.blocked.get(t.id)
            dense = t.shape == shp and st == tuple(_dense(shp))
            if dense and t.id in local:
                ins.append(local[t.id])
                strides.append(dense_b)
            elif dense and got is not None and got[1] == shp:
                ins.append(got[0])
                strides.append(dense_b)
            elif not any(st):
                ins.append(t)
                strides.append((0,) * 5)
            elif _channel_vector(t, st, shp):
                ins.append(self.padded_vector(t, nb))
                strides.append((0, BLK, 0, 0, 1))
            elif _pixel_vector(t, st, shp) and got is not None and got[1] == t.shape:
                # a blocked (N, C, 1, 1) value broadcast over H and W: squeeze-excite's gate
                ins.append(got[0])
                strides.append((nb if shp[0] > 1 else 0, BLK, 0, 0, 1))
            else:
                return None
        new: A.Op = dataclasses.replace(op, inputs=ins, outputs=[out])
        if isinstance(new, A.Binary | A.Select):
            new.strides = strides
        return new

    def run(self, items: Sequence[tuple[A.Op, Algorithm]]) -> list[tuple[A.Op, Algorithm]]:
        for op, algo in items:
            for t in op.inputs:
                self.readers.setdefault(t.id, []).append((op, algo))
        for op, algo in items:
            if isinstance(op, A.Conv2D) and algo.name in BLOCKED_CONVS:
                if self.pays(op):
                    self.conv(op, algo)
                    continue
                algo = self.fallback(op)
            elif isinstance(op, A.Conv2D) and self.stays_blocked(op):
                self.conv(op, _BLOCKED)
                continue
            elif (isinstance(op, A.Reduce) and self.spatial_reduce(op)) or \
                    (isinstance(op, A.Pool2D) and self.pool(op)) or \
                    (isinstance(op, A.Composite) and (self.resize(op) or self.deconv(op))) or \
                    (isinstance(op, A.Raster) and self.raster(op)) or self.elementwise(op, algo):
                continue
            for t in op.inputs:
                self.as_plain(t)
            self.out.append((op, algo))
        return [(op, algo) for op, algo in self.out if id(op.out) not in self.dropped]


def apply(items: Sequence[tuple[A.Op, Algorithm]], external: set[int], new_id: Callable[[], int],
          fallback: Callable[[A.Conv2D], Algorithm]) -> list[tuple[A.Op, Algorithm]]:
    """Rewrite the ``nchwc`` convs of a fused op list onto blocked tensors, with Raster layout
    changes where a value crosses between blocked and plain readers. A blocked conv that would
    need a conversion on both sides runs with ``fallback(op)`` instead."""
    return _Rewriter(external, new_id, fallback).run(items)


def pack_weights(w: np.ndarray, fb: int, plain_input: bool) -> np.ndarray:
    """(O, C, KH, KW) -> groups of ``fb`` filter blocks, each laid out (cb, ky, kx, ci, f, 16)
    with zero padding channels; a plain input is one block of all C channels."""
    o, c, kh, kw = w.shape
    bi = c if plain_input else BLK
    cb, ob = -(-c // bi), blocks(o)
    full = np.zeros((ob * BLK, cb * bi, kh, kw), np.float32)
    full[:o, :c] = w
    full = full.reshape(ob, BLK, cb, bi, kh, kw)
    groups = [full[g:g + fb].transpose(2, 4, 5, 3, 0, 1).reshape(-1) for g in range(0, ob, fb)]
    return np.ascontiguousarray(np.concatenate(groups))


def pack_depthwise(w: np.ndarray) -> np.ndarray:
    """(C, 1, KH, KW) -> (cb, ky, kx, 16)."""
    c, _, kh, kw = w.shape
    full = np.zeros((blocks(c) * BLK, kh, kw), np.float32)
    full[:c] = w[:, 0]
    return np.ascontiguousarray(full.reshape(blocks(c), BLK, kh, kw).transpose(0, 2, 3, 1))


def pad_bias(b: np.ndarray | None, o: int) -> np.ndarray:
    out = np.zeros(blocks(o) * BLK, np.float32)
    if b is not None:
        out[:o] = np.asarray(b, np.float32).reshape(-1)
    return out


def pack_blockdiag(w: np.ndarray) -> np.ndarray:
    """(O, g, KH, KW) of groups of g channels -> per output block its dense 16 x 16 weights,
    laid out as ``pack_weights``' single filter blocks over one input block (ky, kx, ci, 16):
    output channel o reads the g inputs of its group, at their places in its own block."""
    o, g, kh, kw = w.shape
    full = np.zeros((blocks(o), BLK, BLK, kh, kw), np.float32)
    for ch in range(o):
        first = (ch // g) * g % BLK  # the group's first input channel, within the block
        full[ch // BLK, ch % BLK, first:first + g] = w[ch]
    return np.ascontiguousarray(full.transpose(0, 3, 4, 2, 1).reshape(-1))


def blocked_cost_bytes(op: A.Conv2D) -> float:
    """Bytes the blocked conv moves: its operands with channels padded to whole blocks."""
    n, c, h, w = op.inputs[0].shape
    _, o, oh, ow = op.out.shape
    return 4.0 * (n * blocks(c) * BLK * h * w + n * blocks(o) * BLK * oh * ow
                  + math.prod(op.inputs[1].shape))
