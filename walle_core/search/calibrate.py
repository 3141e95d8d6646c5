"""Per-device calibration: short micro-benchmarks turn each backend's cost declarations into
seconds. Results are cached on disk, keyed by a device fingerprint and the backend version; a
stale or corrupt cache file is detected and rebuilt.

What is measured (all on :func:`walle_core.search.clock.clock_for`'s clock):

* dispatch: a program of 1 and of 33 tiny ops gives the per-launch and per-program costs;
* transfers: host->device and device->host separately, each at several sizes (a program that
  reads a large input and writes one element, and one that writes a large broadcast output), plus
  the fixed cost of one more program input or output;
* work: for every algorithm and cost bucket (``Conv2D:dw``, ``MatMul``, ``Unary:math``, ...) a
  representative op at a sweep of sizes, each timed as *queued* work: the op in a chain of its
  own kind ((4 copies - 2 copies) / 2), so program edges and host round trips cancel out and a
  GPU's launches overlap its kernels as they do inside a model. Backends that report device-side
  kernel times (``Executable.last_timings``) are timed with those. Each bucket gets a
  :class:`BucketFit`: throughput as a curve over parallel items, not one number (efficiency
  changes with occupancy by orders of magnitude), and a floor.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Algorithm, Backend, Program
from walle_core.decompose.builder import Builder
from walle_core.decompose.norm import softmax_axis
from walle_core.files import atomic_write
from walle_core.hostinfo import cpu_model
from walle_core.plan import rewrite
from walle_core.plan.planner import choose, expand_composites
from walle_core.search.clock import Clock, clock_for
from walle_core.search.curve import Curve, Linear
from walle_core.search.timing import Timer, chained, repeated

SCHEMA = 35
# Binary functions whose arithmetic costs more than an addition's pass: each is charged its own
# seconds per output element beyond add's (``Binary`` is swept with add; a general pow is a
# scalar powf per element, 4-7 ns: gpt2's GELU cube ran 14 us in its chain where an addition's
# price charged 2). A ratio to add's time would not do: add's pass is bound by launches and
# memory, pow's by arithmetic. A constant exponent of POW_EXPONENTS is its own function
# (``pow:2``): backends (the cpu, numpy) run small ones as products; the general ``pow`` is
# timed by POW_GENERAL
POW_EXPONENTS = (2, 3)
POW_GENERAL = 1.5
BINARY_MATH = ("pow", *(f"pow:{e}" for e in POW_EXPONENTS), "mod", "fmod", "atan2")
BINARY_ELEMENTS = 1 << 12  # ... timed at this size (cache-resident: add's pass is short there)
CHEAP_UNARY = frozenset({"relu", "neg", "abs", "identity", "clip", "floor", "ceil", "sign", "not",
                         "leaky_relu", "bitwise_not", "round"})
LEVELS = 7  # sizes per sweep; a sweep stops early once one op takes SWEEP_CAP_S
SWEEP_CAP_S = 0.01
SATURATION_MIN_S = 5e-5  # ... between sizes that each take at least this long
SATURATED = 0.15  # a sweep also stops once throughput changes less than this between sizes
BUDGET_S = 6.0  # host seconds of sweeps per backend; larger sizes are then extrapolated
ALL_ALGORITHMS_BELOW = 3  # sweep levels at which every algorithm is timed (cheap sizes)
# Passes over the whole sweep on a host clock, each point keeping its best: a load that holds a
# core for seconds (another process on a 2-core machine) met every repeat of a probe's timing,
# and threaded probes came out 1.5-2x slow at random between calibrations (a 256 GEMM at 166 or
# 302 us; minilm's cpu plan predicted 1.30-1.79 ms, run in 1.0). A later pass meets other loads.
SWEEP_PASSES = 2
REPEAT = 5  # runs per timing (the best counts: noise on a shared machine only adds time)
PROGRAM_RUNS = 40  # runs of each whole program that sets the program factor (within 0.5 s)
TRANSFER_BYTES = (1 << 14, 1 << 18, 1 << 22)
MV_ROWS = 4  # a MatMul with at most this many rows per batch is a matrix-vector product
REDUCED = 64  # length of the reduced axis in the Reduce probes (a typical pooled or normed axis)
ELEMENTWISE = (A.Unary, A.Binary, A.Select, A.Cast)
BALANCE_SHARES = (1.0, 0.5, 0.25, 0.125, 0.0)  # weights of traffic a bucket's work measure may take
MISFIT_FACTOR = 2.0  # ... where the device's balance leaves the sweep this far off a monotone curve
# A 1x1 conv reducing over at least this many input channels is its own bucket, probed with
# DEEP_PROBE_CIN of them: at the same outputs its work per output is many times a shallow one's,
# and a shallow probe's small sizes run at a launch's floor, so one curve priced mobilenet_v2's
# late 1x1 convs (960 -> 160 channels on 7x7) 2.4x over their time on a GPU-like device
DEEP_K = 128
DEEP_PROBE_CIN = 256
# Likewise a dense kxk conv reducing over at least DEEP_KXK values (57 channels of 3x3), probed
# with DEEP_KXK_CIN channels: the shallow probes reach 32 channels (288 values), and the zoo's
# stride-2 convs of 64-128 channels ran at 2.5x the rate their curve priced them at
DEEP_KXK = 512
DEEP_KXK_CIN = 64
# A dense conv over at most STEM_CIN input channels (an image's 3, a spectrogram's 1) is a
# network's first layer: it reads the graph's input as it is, and the cpu runs it on its own
# kernel path; probed with 3 channels at maps twice the other probes'. The channel-deep probes
# priced the zoo's stems at 0.3-0.6x (stride 1) and 0.5-2.5x (stride 2) of their time.
STEM_CIN = 4
STEM_PROBE = (3, 16)  # input, output channels
# The 1x1 buckets are two depths of one curve, and so are the kxk ones (_depth_pair): a conv
# reducing over a depth between the shallow probe's and the deep one's (each read from its
# points at the op's size: the shallow probes deepen as they grow) is priced between the two
# buckets (geometric in depth): at the step between them, 64-127 channels of 1x1 ran at 0.7x
# of their shallow price and 128-255 at 1.4x of their deep one.
# Likewise a product of a constant matrix: the square probe reduces over sqrt(outputs), and a
# product reducing over fewer (a small model's 32-128 wide layers) ran 1.6-2.8x over that
# price (per-output packing and stores weigh more); the shallow probe reduces over
# SHALLOW_MM_K, and a depth between the two is priced between them
SHALLOW_MM_K = 32
CHAINED = "~chained"  # bucket-key suffix: an element-wise op fed by the op before it (fusable)


def op_key(op: A.Op, algo: str) -> str:
    """The calibration bucket of an (op, algorithm): kind, a cost class within it, algorithm."""
    kind = op.kind.value
    if isinstance(op, A.Unary):
        kind += ":cheap" if op.fn in CHEAP_UNARY else ":math"
    elif isinstance(op, A.Composite):
        kind += f":{op.name}"
    elif isinstance(op, A.Reduce):
        kind += ":rows" if op.inner == 1 else ":cols"  # contiguous runs vs strided lanes
    elif isinstance(op, A.Pool2D) and len(op.inputs[0].shape) == 5:
        kind += ":blocked"  # over a channel-blocked tensor (how a backend runs it: runs_as)
    elif isinstance(op, A.Raster) and op.regions and all(
            r.src_strides[2] == 1 and r.dst_strides[2] == 1 and r.size[2] > 1 for r in op.regions):
        kind += ":copy"  # rows copied whole (reshape, slice, concat): a transpose is far slower
    elif isinstance(op, A.MatMul):
        # matrix-vector: bound by reading the matrix; both operands computed (attention's
        # products): nothing packed ahead of the run
        # (the rows of every batch read one matrix when it is broadcast)
        rows = op.m * (op.batch if op.b_batch_stride == 0 else 1)
        kind += (":mv" if rows <= MV_ROWS else ":dyn" if op.inputs[1].value is None
                 else ":shallow" if op.k <= SHALLOW_MM_K else "")
    elif isinstance(op, A.Conv2D):
        w = op.inputs[1].shape
        kind += (":dw" if op.groups > 1 and w[1] == 1 else ":grp" if op.groups > 1
                 else (":1x1:deep" if w[1] >= DEEP_K else ":1x1") if w[2] == w[3] == 1
                 else ":stem" if w[1] <= STEM_CIN
                 else ":kxk:deep" if w[1] * w[2] * w[3] >= DEEP_KXK else ":kxk")
        if kind.endswith((":grp", ":kxk", ":kxk:deep", ":stem")) and max(op.strides) > 1:
            # strided: another kernel path (a grouped im2col runs ~2x per output; a dense
            # stride-2 conv, a stem or a downsampling stage, ran 2-3x over its stride-1 price)
            kind += ":s2"
    return f"{kind}/{algo}"


def binary_fn(op: A.Binary) -> str:
    """The function a binary op is timed as: its own, or ``pow:<e>`` for a constant exponent
    ``e`` of POW_EXPONENTS."""
    e = op.inputs[1].value
    if op.fn == "pow" and e is not None and e.size:
        known = [x for x in POW_EXPONENTS if bool(np.all(e == x))]
        if known:
            return f"pow:{known[0]}"
    return op.fn


def items(op: A.Op) -> float:
    """Parallel items of an op: the output elements a device spreads over its lanes. A grouped
    convolution (not depthwise) is ``groups`` small convolutions, each of its own few channels:
    its efficiency is that of one group's outputs (a backend runs, tiles or packs per group;
    regnet's 23 groups of 8 channels on a 3x3 map run at the rate of 72 outputs, not 1656), and
    a batched MatMul of computed operands (attention's heads) that of one batch's product."""
    n = float(max(sum(t.size for t in op.outputs), 1))
    if isinstance(op, A.Conv2D) and op.groups > 1 and op.inputs[1].shape[1] > 1:
        n = max(n / op.groups, 1.0)
    elif isinstance(op, A.MatMul) and op.batch > 1 and op.b_batch_stride != 0:
        n = float(op.m * op.n)  # likewise a product per batch, each of its own matrix (heads)
    return n


def demand(op: A.Op, algo: Algorithm) -> tuple[float, float]:
    """(arithmetic at the algorithm's declared efficiency, bytes moved) of ``op``. A gather or
    a raster reads only what it copies, however large its source (an embedding table)."""
    cost = algo.cost(op)
    nbytes = cost.bytes
    if isinstance(op, A.GatherScatter | A.Raster):
        touched = 2.0 * sum(t.nbytes for t in op.outputs) + sum(t.nbytes for t in op.inputs[1:])
        nbytes = min(nbytes, touched)
    return cost.flops / max(cost.efficiency, 1e-6), nbytes


def chain_followers(ops: Sequence[A.Op], external: set[int]) -> set[int]:
    """Indices of the element-wise ops of one program that read a value only they read, made by
    an earlier op of the program and not handed out (``external``): what a backend can fuse
    into its producer's pass (an epilogue, an element-wise chain). Calibration times them
    chained: on a backend that fuses, a fraction of a lone op; on one that does not, the same."""
    made: set[int] = set()
    readers: dict[int, int] = {}
    for op in ops:
        for t in op.inputs:
            readers[t.id] = readers.get(t.id, 0) + 1
    found: set[int] = set()
    for i, op in enumerate(ops):
        if isinstance(op, ELEMENTWISE) and any(
                t.id in made and readers[t.id] == 1 and t.id not in external for t in op.inputs):
            found.add(i)
        made.update(t.id for t in op.outputs)
    return found


def _depth_pair(op: A.Op, algo: str) -> tuple[str, str] | None:
    """For an op whose bucket is probed at two reduction depths: the (shallow, deep) bucket
    keys it is priced between (:meth:`Calibration.op_seconds`): a dense 1x1 conv, a dense kxk
    conv (not a stem; stride 1 or 2 alike), a product of a constant matrix with more than
    MV_ROWS rows. None for other ops."""
    key = op_key(op, algo)
    if isinstance(op, A.Conv2D) and op.groups == 1 and op.inputs[1].shape[2:] == (1, 1):
        return f"Conv2D:1x1/{algo}", f"Conv2D:1x1:deep/{algo}"
    if key.startswith("Conv2D:kxk"):
        kind = key.split("/", 1)[0].replace(":deep", "")
        return f"{kind}/{algo}", f"{kind.replace(':kxk', ':kxk:deep')}/{algo}"
    if isinstance(op, A.MatMul) and key.startswith("MatMul/"):
        return f"MatMul:shallow/{algo}", f"MatMul/{algo}"
    return None


def work(flops: float, nbytes: float, balance: float) -> float:
    """Roofline work in flop-equivalents: the larger of the arithmetic and the traffic, bytes
    weighted by the device's balance (flops it does in the time it moves one byte)."""
    return max(flops, balance * nbytes, 1.0)


@dataclass(frozen=True)
class BucketFit:
    """A bucket's cost: ``max(floor, work / rate(items))``. The rate is a curve over parallel
    items (occupancy: a device fills up as items grow); the floor is the quickest op the backend
    ran in the whole sweep (launch and scheduling costs)."""

    floor_s: float
    rate: Curve
    balance: float

    @classmethod
    def fit(cls, points: list[list[float]], balance: float, floor_s: float) -> BucketFit:
        """``points``: [flops, bytes, items, seconds] of each size of the sweep. The work measure
        is the one, of the device's balance and lower weights of traffic down to none, under
        which the sweep's throughput is closest to a non-decreasing curve (least squares in
        log): an algorithm's declared bytes are not all memory traffic (a Winograd kernel's
        transformed tiles stay in cache), and weighed at the device's balance they made small
        sizes look many times faster than large ones, so the monotone fit pooled the whole
        sweep into one rate that priced the large sizes at half their time. The device's balance
        stays unless it misfits grossly and another weight fits clearly better: a sweep whose
        arithmetic and traffic grow together cannot tell them apart."""
        fits = []
        for share in BALANCE_SHARES:
            rates = [(n, work(f, b, balance * share) / t) for f, b, n, t in points]
            # weights are told apart by the rise alone (a curve free to fall fits a work
            # measure that makes throughput fall with size as well as the right one)
            curve = Curve.fit(rates, falls=False)
            misfit = sum((math.log(curve(n)) - math.log(r)) ** 2 for n, r in rates if r > 0)
            fits.append((misfit, share, rates))
        best = min(fits, key=lambda f: f[0])
        # another weight only where the balance leaves the sweep's points a factor of
        # MISFIT_FACTOR off its monotone fit (root mean square in log): noise moves points by
        # 10-30%, and moderate misfits do not tell the weights apart (probes whose channels
        # grew with their maps picked weights that priced the zoo's convs 20-35% low)
        worst = len(points) * math.log(MISFIT_FACTOR) ** 2
        _, share, rates = best if fits[0][0] > worst and best[0] < fits[0][0] / 2 else fits[0]
        return cls(floor_s, Curve.fit(rates), balance * share)

    def __call__(self, flops: float, nbytes: float, items: float) -> float:
        return max(self.floor_s, work(flops, nbytes, self.balance) / self.rate(items))

    def work(self, flops: float, nbytes: float) -> float:
        return work(flops, nbytes, self.balance)


@dataclass
class Calibration:
    backend: str
    version: str
    fingerprint: str
    op_overhead_s: float  # per launch inside a program (queued)
    program_overhead_s: float  # per program run, less its transfers
    bandwidth_Bps: float  # device memory, large element-wise op
    h2d_latency_s: float  # each program input
    h2d_Bps: float
    d2h_latency_s: float  # each program output
    d2h_Bps: float
    # op_key -> [[flops, bytes, items, seconds] per size of the sweep]
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # op_key -> flop/s at the largest size
    device_timed: bool = False  # kernel times came from the device's own timers
    # measured / predicted time of a small whole network run as one program: what running ops
    # together costs beyond their queued times (layout changes, caches, synchronisation)
    program_factor: float = 1.0
    # a math function's lone pass over its probe's time for exp (``Unary:math`` is swept with
    # exp; erf, tanh or sqrt cost up to 10x apart at the same size)
    unary_weights: dict[str, float] = field(default_factory=dict)
    # seconds per output element a BINARY_MATH function costs beyond an addition
    binary_extra_s: dict[str, float] = field(default_factory=dict)
    # host seconds a model's run costs beyond its programs (checking feeds, handing back outputs)
    run_overhead_s: float = 0.0
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        balance = self.balance()
        floor = min((p[3] for pts in self.curves.values() for p in pts), default=0.0)
        self._curves = {k: BucketFit.fit(pts, balance, floor) for k, pts in self.curves.items() if pts}

    def balance(self) -> float:
        """Flops per byte of memory traffic: the best MatMul rate measured over the element-wise
        bandwidth, within what real devices show (1 to 64; 1 when there is no GEMM to tell)."""
        peaks = [f / t for k, pts in self.curves.items() if k.startswith("MatMul/")
                 for f, _, _, t in pts]
        return min(max(max(peaks) / self.bandwidth_Bps, 1.0), 64.0) if peaks else 1.0

    def curve(self, key: str) -> BucketFit | None:
        """The bucket's curve; for an uncalibrated bucket, one of the same op kind (another
        algorithm or cost class), else None."""
        found = self._curves.get(key)
        if found is not None:
            return found
        kind, _, algo = key.partition("/")
        base = kind.split(":", 1)[0]
        if base == A.Kind.COMPOSITE.value:
            return None  # one composite says nothing of another: see Calibration._fused
        plain = sorted((k, c) for k, c in self._curves.items() if not k.endswith(CHAINED))
        same = [c for k, c in plain if k.split("/", 1)[1] == algo
                and k.split(":", 1)[0].split("/", 1)[0] == base]
        same = same or [c for k, c in plain if k.split(":", 1)[0].split("/", 1)[0] == base]
        return same[0] if same else None

    def op_seconds(self, op: A.Op, algo: Algorithm, *, chained: bool = False) -> float:
        """Seconds of ``op`` queued in a program, from its bucket's fit (before the program
        factor); ``chained``: an element-wise op fed by its producer's pass (see
        :func:`chain_followers`). Fits timed on the host clock include the op's launches; kernel
        times from the device's own timers do not, and a launch never takes less than the
        launch overhead. A composite without a bucket of its own costs its expansion."""
        flops, nbytes = demand(op, algo)
        key = op_key(op, algo.name)
        fit = (self._curves.get(key + CHAINED) if chained else None) or self.curve(key)
        if fit is None and isinstance(op, A.Composite) and op.expansion:
            return self._fused(op)
        own = fit(flops, nbytes, items(op)) if fit is not None else nbytes / self.bandwidth_Bps
        pair = _depth_pair(op, algo.name)
        if pair is not None and not (chained and key + CHAINED in self._curves):
            # between two probed depths of its bucket: between their prices
            shallow, deep = (self._curves.get(k) for k in pair)
            if shallow is not None and deep is not None:
                n = items(op)
                share = self._depth_share(flops / n, n, *pair)
                own = shallow(flops, nbytes, n) ** (1 - share) * deep(flops, nbytes, n) ** share
        own = own * self.weight(op) + self.extra_s(op)
        if self.device_timed:
            own = max(own, self.op_overhead_s * max(algo.cost(op).launches, 1))
        return own

    def _probe_depth(self, key: str, n: float) -> float:
        """Work per parallel item of bucket ``key``'s probe at its swept size nearest ``n``
        parallel items (in log): the depth it reduced over there (probes deepen as they grow)."""
        near = {p[2]: p[0] / p[2] for p in self.curves[key]}
        at = min(near, key=lambda m: abs(math.log(m / n)))
        return near[at]

    def _depth_share(self, depth: float, n: float, shallow: str, deep: str) -> float:
        """Where work ``depth`` per item lies between the shallow and the deep probe's depths at
        ``n`` items: 0 at the shallow one's or less, 1 at the deep one's or more, geometric
        between. Read from the probes' points, not their nominal channels: the shallow kxk
        probe reduced over 72 values at 1.5K outputs and 144 at 12K, and kws_conv1d's 1-D convs
        (324-432 values on 1-2K outputs) were priced at its rate there, 1.4-1.6x over their time."""
        lo, hi = self._probe_depth(shallow, n), self._probe_depth(deep, n)
        if hi <= lo:
            return 1.0 if depth >= hi else 0.0
        return min(max(math.log(max(depth, 1e-9) / lo) / math.log(hi / lo), 0.0), 1.0)

    def _fused(self, op: A.Composite, parallel: float = 0.0) -> float:
        """A composite the backend runs as one kernel, without a bucket of its own: its
        expansion's work, each op at its bucket's rate for the composite's parallel items (one
        kernel over the whole output, however small its steps), no launches and no copies of
        its own, plus one launch. Constant operands (a recurrence's weights) are read once for
        the kernel, not once per step: they stay in cache between its steps."""
        parallel = parallel or items(op)
        total, floor = sum(t.nbytes for t in op.inputs if t.value is not None) / self.bandwidth_Bps, 0.0
        for inner in op.expansion:
            if isinstance(inner, A.Raster):
                continue  # the fused kernel indexes in place
            if isinstance(inner, A.Composite):
                total += self._fused(inner, parallel)
                continue
            flops, nbytes = demand(inner, _EXPANDED)
            nbytes -= sum(t.nbytes for t in inner.inputs if t.value is not None)
            fit = self.curve(op_key(inner, _EXPANDED.name))
            if fit is None:
                total += nbytes / self.bandwidth_Bps
            else:
                total += fit.work(flops, nbytes) / fit.rate(parallel) * self.weight(inner)
                total += self.extra_s(inner)
                floor = max(floor, fit.floor_s)
        return total + floor

    def weight(self, op: A.Op) -> float:
        """How much more (or less) a math function costs than its bucket's probe (exp)."""
        return self.unary_weights.get(op.fn, 1.0) if isinstance(op, A.Unary) else 1.0

    def extra_s(self, op: A.Op) -> float:
        """Seconds a binary function's arithmetic adds to its bucket's probe's (add), fused or
        not: it is computed per element either way."""
        if not isinstance(op, A.Binary):
            return 0.0
        return self.binary_extra_s.get(binary_fn(op), 0.0) * op.out.size

    def upload(self, nbytes: float) -> float:
        return self.h2d_latency_s + nbytes / self.h2d_Bps

    def download(self, nbytes: float) -> float:
        return self.d2h_latency_s + nbytes / self.d2h_Bps


_EXPANDED = Algorithm("expanded")  # the ops of a composite's expansion: their kind's buckets


def lowering_seconds(backend: Backend, program: Program, price: Callable[..., float]) -> float:
    """Seconds compiling ``program`` adds to the sum of its picks, each (op, algorithm) at
    ``price`` (``chained=True``: fed by its producer's pass): the ops the backend adds
    (:meth:`~walle_core.backend.Backend.added_ops`: layout changes), and for each op it
    rewrites (:meth:`~walle_core.backend.Backend.runs_as`: a pool or reduction on a blocked
    tensor), the rewritten op less the picked one; an op it runs inside another's kernel (a
    PRelu in a conv's epilogue: mobilefacenet's, charged 60 µs of its 290) less what the plan
    charged for it. An algorithm the backend substitutes (a blocked conv that would not pay
    runs plain) keeps the pick's price: the substitute's bucket is probed on square maps at few
    sizes, and priced kws_conv1d's and byte_classifier's 1-D convs 3-4x under their time."""
    total = 0.0
    try:
        extra = backend.added_ops(program)
        runs = backend.runs_as(program)
    except Exception:  # a backend that cannot lower this program prices nothing extra
        return 0.0
    total += sum(price(op, algo) for op, algo in extra)
    fused = chain_followers([op for op, _ in program.ops], {t.id for t in program.outputs})
    for i, ((op, algo), run) in enumerate(zip(program.ops, runs or [], strict=False)):
        if run is None:  # folded into another op's kernel: what the plan charged it is saved
            own = price(op, algo)
            total -= min(own, price(op, algo, chained=True)) if i in fused else own
        elif run[0] is not op:  # rewritten (a pool on a blocked tensor): priced as it runs
            total += price(run[0], algo) - price(op, algo)
    return total


def rewrite_seconds(picks: Sequence[tuple[A.Op, Algorithm]],
                    rewritten: Sequence[tuple[A.Op, Algorithm]], external: set[int],
                    price: Callable[[A.Op, Algorithm, bool], float]) -> float:
    """Seconds the planner's rewrites (``walle_core.plan.rewrite``: activations, residual adds,
    biases and GELU folded into a conv's or product's epilogue) change a program by, at
    ``price``: the ops they make, less the ops they replace as :func:`~walle_core.search.cost.plan_cost` charged them
    (chained where :func:`chain_followers` says so); an
    element-wise op folded into an epilogue still costs its arithmetic there, what it costs
    chained (fed by its producer's pass: a GELU's erf is not free in a product's epilogue)."""
    before = {id(op) for op, _ in picks}
    after = {id(op) for op, _ in rewritten}
    fused = chain_followers([op for op, _ in picks], external)
    total = sum(price(op, algo, False) for op, algo in rewritten if id(op) not in before)
    for i, (op, algo) in enumerate(picks):
        if id(op) in after:
            continue
        own, chained = price(op, algo, False), price(op, algo, True)
        charged = min(own, chained) if i in fused else own
        total += (min(own, chained) if isinstance(op, ELEMENTWISE) else 0.0) - charged
    return total


def _build_stamp(backend: Backend) -> str:
    """Size and mtime of the backend's package files (Python and compiled): a rebuilt kernel
    library invalidates calibrations even when the backend forgot to bump its version."""
    try:
        pkg = Path(inspect.getfile(type(backend))).parent
        files = sorted(p for p in pkg.iterdir() if p.suffix in (".py", ".so", ".spv", ".cl", ".json"))
        return ",".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)
    except (OSError, TypeError):
        return "?"


def fingerprint(backend: Backend) -> str:
    try:
        info = backend.device_info()
        device = f"{info.name}|{info.kind}|{sorted(info.details.items())}"
    except Exception:  # a backend without a describable device still gets a stable key
        device = "?"
    raw = (f"{backend.name}|{backend.version}|{_build_stamp(backend)}|{device}|{platform.machine()}"
           f"|{cpu_model()}|{os.cpu_count()}")
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def cache_path(backend: Backend, fp: str | None = None) -> Path:
    """Where ``backend``'s calibration is cached; ``fp``: its :func:`fingerprint`, when known."""
    return flags.cache_dir() / "calibration" / f"{backend.name}-{fp or fingerprint(backend)}.json"


def load_cached(backend: Backend) -> Calibration | None:
    """The cached calibration, or None when missing, corrupt or made for another version."""
    fp = fingerprint(backend)
    path = cache_path(backend, fp)
    try:
        raw = json.loads(path.read_text())
        cal = Calibration(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if cal.schema != SCHEMA or cal.version != backend.version or cal.fingerprint != fp:
        return None
    if not all(np.isfinite(v) and v > 0 for v in cal.rates.values()):
        return None
    return cal


def save(cal: Calibration, backend: Backend) -> None:
    # atomic: a crash mid-write never leaves a half file behind
    atomic_write(cache_path(backend), json.dumps(asdict(cal), indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- micro-benchmarks


def _builder() -> Builder:
    def no_fold(op: A.Op) -> None:
        raise AssertionError("calibration ops take run-time inputs")

    return Builder(no_fold)


def _probes(level: int) -> list[A.Op]:
    """One representative op per bucket at sweep ``level`` (0: tiny ... LEVELS - 1: large)."""
    b = _builder()
    f32 = np.float32
    n = 1 << round(8 + 14 * level / (LEVELS - 1))  # elements of element-wise ops: 256 ... 4M
    side = 1 << (4 + level)  # 16 ... 1024
    cols = min(n, 256)
    lanes = max(n // REDUCED, 1)
    x = b.tensor((n,), f32)
    b.unary("relu", x)
    b.unary("exp", x)
    m = b.tensor((n // cols, cols), f32)
    b.binary("add", m, b.tensor((cols,), f32))
    b.select(b.tensor((n,), bool), b.tensor((n,), f32), x)
    b.cast(x, np.int32)
    b.reduce_axis(b.tensor((lanes, REDUCED), f32), 1, "sum")
    b.reduce_axis(b.tensor((REDUCED, lanes), f32), 0, "sum")
    softmax_axis(b, b.tensor((lanes, REDUCED), f32), 1, False)  # a composite backends claim
    b.transpose(b.tensor((side, side), f32), (1, 0))
    b.strided(b.tensor((side, side + 16), f32), (side, side), (side + 16, 1))  # rows of a slice
    mm = 16 << level  # 16 ... 1024
    b.matmul(b.tensor((mm, mm), f32), b.const(np.ones((mm, mm), f32)))
    b.matmul(b.tensor((mm, SHALLOW_MM_K), f32), b.const(np.ones((SHALLOW_MM_K, mm), f32)))
    b.matmul(b.tensor((1, mm), f32), b.const(np.ones((mm, mm), f32)))
    heads = max(1024 // mm, 1)  # batched products of two computed operands: attention's heads
    b.matmul(b.tensor((heads, mm, 64), f32), b.tensor((heads, 64, mm), f32))
    imgs, ch, hw = ((1, 4, 8), (1, 8, 14), (1, 16, 28), (1, 32, 28), (1, 32, 56), (4, 32, 56),
                    (16, 32, 56))[level]
    img = b.tensor((imgs, ch, hw, hw), f32)
    rng = np.random.default_rng(0)
    # Beyond the smallest sizes a 3x3 probe may be claimed by a Winograd algorithm: the 5x5 one
    # sweeps the direct one. (Probes stay chainable, stride 1: a copy that cannot read its
    # predecessor's output reads a plain program input, and the cpu runs such a lone conv
    # plain, not blocked.) Grouped convs run plain: their strided probe is their own bucket.
    # grouped: 8 channels per group, from many groups on a small map (a late stage's few outputs
    # per group) up to the large sizes; its parallel items are one group's outputs
    gch, ghw = ((64, 3), (64, 7), (64, 14), (32, 28), (32, 56), (32, 56), (32, 56))[level]
    grouped = b.tensor((imgs, gch, ghw, ghw), f32)
    # the deep 1x1 probe's outputs are the plain probe's (its largest size would read 200 MB)
    deep = b.tensor((imgs, DEEP_PROBE_CIN, hw, hw), f32) if level < LEVELS - 1 else None
    deep_kxk = b.tensor((imgs, DEEP_KXK_CIN, hw, hw), f32) if level < LEVELS - 2 else None
    stem = b.tensor((imgs, STEM_PROBE[0], 2 * hw, 2 * hw), f32)
    for x, shape, groups, stride in ((img, (ch, ch, 3, 3), 1, 1),
                                     (img, (ch, ch, 5, 5), 1, 1),  # one no Winograd takes
                                     (img, (ch, ch, 3, 3), 1, 2),  # a downsampling conv
                                     (img, (ch, ch, 1, 1), 1, 1),
                                     *([(deep, (ch, DEEP_PROBE_CIN, 1, 1), 1, 1)] if deep else []),
                                     *([(deep_kxk, (DEEP_KXK_CIN, DEEP_KXK_CIN, 3, 3), 1, 1),
                                        (deep_kxk, (DEEP_KXK_CIN, DEEP_KXK_CIN, 3, 3), 1, 2)]
                                       if deep_kxk else []),
                                     (stem, (STEM_PROBE[1], STEM_PROBE[0], 3, 3), 1, 1),
                                     (stem, (STEM_PROBE[1], STEM_PROBE[0], 3, 3), 1, 2),
                                     (img, (ch, 1, 3, 3), ch, 1),
                                     (grouped, (gch, 8, 3, 3), gch // 8, 1),
                                     (grouped, (gch, 8, 3, 3), gch // 8, 2)):
        k = shape[2] // 2
        n, _c, h, w = x.shape
        out = b.tensor((n, shape[0], (h + 2 * k - shape[2]) // stride + 1,
                        (w + 2 * k - shape[3]) // stride + 1), f32)
        wt = b.const(rng.standard_normal(shape).astype(f32))
        b.emit(A.Conv2D([x, wt], [out], strides=(stride, stride), pads=(k, k, k, k), groups=groups))
    b.emit(A.Pool2D([img], [b.tensor((imgs, ch, hw // 2, hw // 2), f32)], fn="max", kernel=(3, 3),
                    strides=(2, 2), pads=(1, 1, 1, 1)))
    rows, block = 16 << level, 16 << min(level, 4)
    b.gather_rows(b.tensor((rows, block), f32), b.tensor((rows // 2,), np.int64), rows, block)
    b.argsort(b.tensor((4 << level, 32 << min(level, 5)), f32), 1, False)
    return b.ops


def _tiny_chain(n: int) -> list[A.Op]:
    b = _builder()
    t = b.tensor((1,), np.float32)
    for _ in range(n):
        t = b.unary("relu", t)
    return b.ops


def _fan_in(backend: Backend, inputs: int, ops: int) -> Program | None:
    """``ops`` tiny additions reading ``inputs`` distinct program inputs (at least 2); None when
    the backend has no addition."""
    b = _builder()
    xs = [b.tensor((1,), np.float32) for _ in range(inputs)]
    acc = b.binary("add", xs[0], xs[1])
    for i in range(ops - 1):
        acc = b.binary("add", acc, xs[2 + i % (inputs - 2)] if inputs > 2 else xs[1])
    algos = backend.algorithms(b.ops[0])
    return Program([(op, algos[0]) for op in b.ops], xs, [acc]) if algos else None


def _fan_out(outputs: int, algo: Algorithm) -> Program:
    """``outputs`` tiny ops on one input, each a program output."""
    b = _builder()
    x = b.tensor((1,), np.float32)
    ys = [b.unary("relu", x) for _ in range(outputs)]
    return Program([(op, algo) for op in b.ops], [x], ys)


Probe = tuple[int, A.Op, Algorithm, bool, list[tuple[A.Op, Algorithm]], A.Op]


def _sweep(backend: Backend) -> Iterator[Probe]:
    """(level, op, algorithm, chained) for every bucket and algorithm, smallest sizes first; the
    first probe of a bucket (at a level) is its representative. Element-wise buckets are swept
    twice: a lone op (its own pass over memory) and chained copies (fused where the backend
    fuses); other ops only chained. Beyond the small sizes only the algorithm the backend picks
    for the probe is swept: the search runs a backend's own pick (another algorithm only once
    measure mode timed it), so the large sizes of the others would only cost time."""
    for level in range(LEVELS):
        seen: set[str] = set()
        for op in _probes(level):
            algos = backend.algorithms(op)
            own = choose(op, [backend])[1].name if algos else ""
            for alg in algos:
                key = op_key(op, alg.name)
                # a conv bucket takes a probe per channel depth (its intensities)
                tag = key + (f"|{op.inputs[0].shape[1]}" if isinstance(op, A.Conv2D) else "")
                if tag not in seen and (level < ALL_ALGORITHMS_BELOW or alg.name == own):
                    seen.add(tag)
                    if isinstance(op, ELEMENTWISE):
                        yield level, op, alg, False, [], op
                    yield level, op, alg, True, _producer(backend, op), op
        yield from _fed(backend, level)
        yield from _recurrences(backend, level)


def _producer(backend: Backend, op: A.Op) -> list[tuple[A.Op, Algorithm]]:
    """For a conv probe whose copies cannot chain (a strided conv's output is not its input's
    shape, so each copy reads the program's input): a 3x3 conv producing that input, as a
    model's previous layer does, that both programs of the steady timing run first. Read
    from a program input, a backend with its own layout may run the copies otherwise than
    picked: the cpu ran the stride-2 probes picked blocked on plain im2col+gemm, and their
    bucket priced the zoo's blocked stride-2 convs 1.2-2.5x over. None otherwise."""
    if not isinstance(op, A.Conv2D) or chained(op, 2) is not None or op.inputs[1].shape[1] <= STEM_CIN:
        return []  # (a stem reads the graph's input, as its probe does)
    x = op.inputs[0]
    b = _builder()
    src = b.tensor((x.shape[0], 4, *x.shape[2:]), np.float32)  # narrow: read as it is
    w = b.const(np.random.default_rng(5).standard_normal((x.shape[1], 4, 3, 3)).astype(np.float32))
    pre = b.emit(A.Conv2D([src, w], [x], pads=(1, 1, 1, 1)))
    return [(pre, choose(pre, [backend])[1])] if backend.algorithms(pre) else []


RECURRENCES = (("GRU", 3), ("LSTM", 4))  # ONNX node, gates


def _recurrences(backend: Backend, level: int) -> Iterator[Probe]:
    """A whole-sequence GRU and LSTM as the ONNX frontend lowers them (their composite), for a
    backend that claims it: a recurrence's steps are serial, its cost is not its expansion's
    work at the composite's parallelism (gru_speech's GRU ran 20-30% over that)."""
    from walle_core.interpreter import fold
    from walle_core.ir.graph import Graph, Node, TensorType, ValueInfo
    from walle_core.plan.lower import Lowering

    seq, hidden = ((4, 16), (8, 32), (16, 32), (32, 64), (64, 64), (64, 128), (128, 128))[level]
    rng = np.random.default_rng(4)
    for node, gates in RECURRENCES:
        def weight(*shape: int) -> np.ndarray:
            return (rng.standard_normal(shape) / np.sqrt(hidden)).astype(np.float32)

        x = ValueInfo("x", TensorType(np.dtype(np.float32), (seq, 1, hidden)))
        y = ValueInfo("y", TensorType(np.dtype(np.float32), (seq, 1, 1, hidden)))
        graph = Graph([Node(node, ["x", "w", "r", "b"], ["y"], {"hidden_size": hidden})], [x], [y],
                      {"w": weight(1, gates * hidden, hidden), "r": weight(1, gates * hidden, hidden),
                       "b": weight(1, 2 * gates * hidden)})
        try:
            ops = Lowering(graph, fold, {}).run({"x": ((seq, 1, hidden), np.dtype(np.float32))}).ops
        except Exception:  # a frontend without the node: nothing to probe
            continue
        for op in ops:
            if isinstance(op, A.Composite) and backend.algorithms(op):
                yield level, op, choose(op, [backend])[1], True, [], op


def _fed(backend: Backend, level: int) -> Iterator[Probe]:
    """Probes fed by a producer the way models feed them (a pool after a conv), for a backend
    that runs them otherwise then (:meth:`~walle_core.backend.Backend.runs_as`: a pool on the
    conv's blocked output): a bucket of what it runs, timed with the producer ahead of both
    programs of the steady timing. None where the backend runs the probe as it is."""
    b = _builder()
    f32 = np.float32
    hw = (4, 8, 14, 28, 56, 112, 112)[level]
    imgs = 4 if level == LEVELS - 1 else 1
    x = b.tensor((imgs, 4, hw, hw), f32)  # narrow: a blocked conv reads it as it is
    y = b.tensor((imgs, 32, hw, hw), f32)
    w = b.const(np.random.default_rng(3).standard_normal((32, 4, 3, 3)).astype(f32))
    conv = b.emit(A.Conv2D([x, w], [y], pads=(1, 1, 1, 1)))
    pool = b.emit(A.Pool2D([y], [b.tensor(y.shape, f32)], fn="max", kernel=(3, 3), pads=(1, 1, 1, 1)))
    if not backend.algorithms(conv) or not backend.algorithms(pool):
        return
    prefix = [(conv, choose(conv, [backend])[1])]
    alg = choose(pool, [backend])[1]
    try:
        runs = backend.runs_as(Program([*prefix, (pool, alg)], [x], list(pool.outputs)))
    except Exception:  # a backend that cannot lower it prices nothing of its own
        return
    last = runs[-1] if runs else None
    if last is not None and op_key(last[0], alg.name) != op_key(pool, alg.name):
        yield level, pool, alg, True, prefix, last[0]


def calibrate(backend: Backend, progress: Callable[[str], None] | None = None) -> Calibration:
    """Run the micro-benchmarks (seconds on a CPU, more on a slow device) and fit the constants."""
    def step(msg: str) -> None:
        if progress:
            progress(msg)

    clock: Clock = clock_for([backend])
    timer = Timer(backend, clock, repeat=REPEAT)
    step("dispatch overhead")
    one = _tiny_chain(1)
    if not backend.algorithms(one[0]):
        raise ValueError(f"backend {backend.name} cannot run a Unary op; nothing to calibrate")
    algo = backend.algorithms(one[0])[0]
    t1 = timer.ops([(one[0], algo)])
    # copies on the same input: a backend that fuses element-wise chains cannot merge them
    op_over = max((timer.ops([(o, algo) for o in repeated(one[0], 33)]) - t1) / 32, 1e-8)

    step("program inputs and outputs")
    # One more input (output) costs what a wide program costs over a narrow one doing the same.
    lat_h = 0.0
    wide, narrow = _fan_in(backend, 8, 7), _fan_in(backend, 2, 7)
    if wide is not None and narrow is not None:
        lat_h = max((timer.program(wide) - timer.program(narrow)) / 6, 0.0)
    lone8 = [(o, algo) for o in repeated(one[0], 8)]  # the same ops, one output
    lat_d = max((timer.program(_fan_out(8, algo)) - timer.ops(lone8)) / 7, 0.0)
    prog_over = max(t1 - op_over - lat_h - lat_d, 1e-8)

    step("memory bandwidth")
    bw = _bandwidth(backend, timer)

    step("host transfers")
    h2d, d2h = _transfers(backend, timer, t1, bw)

    cal = Calibration(backend.name, backend.version, fingerprint(backend), op_over, prog_over, bw,
                      lat_h, h2d.Bps, lat_d, d2h.Bps, device_timed=timer.device_timed)
    # whole programs timed before the sweep as well as after it (:func:`_program_factor`)
    programs = [_compiled(backend, *net()) for net in NETWORKS]
    before = [] if clock.noiseless else _program_times(backend, timer, programs)
    # a probe (a bucket's probe of one channel depth: conv buckets take two) and its points
    stopped: set[tuple[str, int]] = set()
    swept: dict[tuple[str, int], list[list[float]]] = {}  # first pass: what stops a sweep
    points: dict[tuple[str, int], dict[int, list[float]]] = {}  # probe -> level -> its point
    flops: dict[tuple[str, int], float] = {}  # the probe's own flops at its last level
    for sweep in range(1 if clock.noiseless else SWEEP_PASSES):
        deadline = time.perf_counter() + BUDGET_S
        for level, op, alg, chain, prefix, priced in _sweep(backend):
            key = op_key(priced, alg.name) + (CHAINED if chain and isinstance(op, ELEMENTWISE) else "")
            probe = (key, priced.inputs[0].shape[1] if isinstance(priced, A.Conv2D) else 0)
            late = level > 1 and not clock.noiseless and time.perf_counter() > deadline
            # later passes retime what the first one timed, and only that
            if late or (probe in stopped if sweep == 0 else level not in points.get(probe, {})):
                continue
            step(f"{key} size {level + 1}/{LEVELS}" + (f", pass {sweep + 1}" if sweep else ""))
            try:
                t = timer.steady(op, alg, chain=chain, prefix=prefix)
            except Exception:  # a size the backend cannot run (memory, limits): the sweep ends here
                stopped.add(probe)
                continue
            at = points.setdefault(probe, {})
            if level in at:
                at[level][3] = min(at[level][3], t)
                continue
            at[level] = [*demand(priced, alg), items(priced), t]
            flops[probe] = max(op.flops(), 1.0)
            own = swept.setdefault(probe, [])
            if not own or t >= own[-1][3]:
                own.append(at[level])
            if t > SWEEP_CAP_S or _saturated(own):
                stopped.add(probe)
    for probe, at in points.items():
        kept: list[list[float]] = []
        for level in sorted(at):
            # a larger size of the same probe never runs faster: noise hid the difference of
            # its copies. Kept at the smaller size's time it made a rate of many times the
            # device's (a 1024 GEMM at 2.4 TFLOP/s on 2 cores) and priced large products low
            if not kept or at[level][3] >= kept[-1][3]:
                kept.append(at[level])
        cal.curves.setdefault(probe[0], []).extend(kept)
        cal.rates[probe[0]] = flops[probe] / max(kept[-1][3], 1e-12)
    cal.device_timed = timer.device_timed  # known once the sweep has asked the device's timers
    step("math functions")
    cal.unary_weights = _unary_weights(backend, timer)
    cal.binary_extra_s = _binary_extra(backend, timer)
    step("a model's run")
    cal.run_overhead_s = _run_overhead(backend, timer)
    cal = Calibration(**asdict(cal))  # refits the curves from the points
    step("a whole program")
    cal.program_factor = _program_factor(backend, timer, cal, programs, before)
    return cal


BANDWIDTH_ELEMENTS = (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22)  # float32 arrays: 64 KB ... 16 MB
BANDWIDTH_ROUNDS = 3
BANDWIDTH_CHAIN = (4, 12)  # additions in the short and the long program of the difference


def _bandwidth(backend: Backend, timer: Timer) -> float:
    """Bytes per second of element-wise passes over memory: the median, over BANDWIDTH_ROUNDS
    rounds, of the fastest size of a sweep from 64 KB arrays up (a CPU's caches hold a model's
    activations; a GPU's device memory wants large passes, small ones are launch-bound), each
    size (12 - 4 additions) / 8 of a chain ``c = a + c`` whose every value two additions read:
    no backend can fuse such a chain into one pass, none of it is dead code, and nothing is
    handed to the host. (A lone pass with each copy a program output timed the hand-off of
    fresh pages as much as the pass: 13-167 GB/s for 1 MB between calibrations here, and the
    roofline balance, GEMM rate over this, moved every bucket's work measure 10x.) A sweep
    stops at the first size slower than the one before it, or that takes over 20 ms."""
    def chain(n: int, k: int) -> list[A.Op]:
        b = _builder()
        a, c = b.tensor((n,), np.float32), b.tensor((n,), np.float32)
        for _ in range(k):
            a, c = c, b.binary("add", c, a)
        return b.ops

    lo, hi = BANDWIDTH_CHAIN
    probe = chain(BANDWIDTH_ELEMENTS[0], lo)
    algos = backend.algorithms(probe[0])
    if not algos:
        return 1e10  # no addition to time: a nominal 10 GB/s
    alg = choose(probe[0], [backend])[1]
    best: list[float] = []
    for _ in range(1 if timer.clock.noiseless else BANDWIDTH_ROUNDS):
        found = 0.0
        for n in BANDWIDTH_ELEMENTS:
            try:
                (short, d_lo), (long, d_hi) = timer.queued([(chain(n, lo), False), (chain(n, hi), False)], alg)
            except Exception:  # a size the device cannot hold
                break
            if d_lo is not None and d_hi is not None and d_hi > d_lo:
                short, long = d_lo, d_hi
            rate = (hi - lo) * 12.0 * n / max(long - short, 1e-12)
            if rate < found:
                break
            found = rate
            if long > 0.02:
                break
        best.append(found)
    return float(np.median(best)) if best and max(best) > 0 else 1e10


WEIGHT_ELEMENTS = 1 << 16  # size at which math functions are timed against exp


def _lone_times(backend: Backend, timer: Timer, make: Callable[[Builder, str], object],
                fns: Sequence[str]) -> dict[str, float]:
    """Seconds of a lone pass of each function the backend runs, its op emitted by ``make``."""
    times: dict[str, float] = {}
    for fn in fns:
        b = _builder()
        make(b, fn)
        op = b.ops[-1]
        if not backend.algorithms(op):
            continue
        try:
            times[fn] = timer.steady(op, choose(op, [backend])[1], chain=False)
        except Exception:  # a function this backend lowers differently or cannot run
            continue
    return times


def _unary_weights(backend: Backend, timer: Timer) -> dict[str, float]:
    """Each math function's lone pass over exp's at WEIGHT_ELEMENTS, within [0.05, 50]: one
    ``Unary:math`` bucket is swept (with exp), the functions in it differ by up to 10x."""
    def make(b: Builder, fn: str) -> None:
        b.unary(fn, b.tensor((WEIGHT_ELEMENTS,), np.float32))

    times = _lone_times(backend, timer, make, ["exp", *sorted(A.UNARY_KINDS - CHEAP_UNARY - {"exp"})])
    base = times.pop("exp", None)
    return {fn: min(max(t / base, 0.05), 50.0) for fn, t in times.items()} if base else {}


def _binary_extra(backend: Backend, timer: Timer) -> dict[str, float]:
    """Each BINARY_MATH function's lone pass less add's, per element, at BINARY_ELEMENTS, by a
    constant operand as models use them (POW_GENERAL for pow's general path, ``e`` for
    ``pow:<e>``, 3 otherwise); at least 0."""
    def make(b: Builder, fn: str) -> None:
        name, _, operand = fn.partition(":")
        other = float(operand) if operand else POW_GENERAL if name == "pow" else 3.0
        b.binary(name, b.tensor((BINARY_ELEMENTS,), np.float32), b.const(other, np.float32))

    times = _lone_times(backend, timer, make, ["add", *BINARY_MATH])
    base = times.pop("add", None)
    return {fn: max(t - base, 0.0) / BINARY_ELEMENTS for fn, t in times.items()} if base else {}


def _run_overhead(backend: Backend, timer: Timer) -> float:
    """Host seconds a model's :meth:`~walle_core.Model.run` of one one-op program costs beyond
    running the program: feeds checked, the plan looked up, outputs handed back. Timed on a
    one-node graph on ``backend`` when it is the registry's backend of its name, interleaved
    with its program's own runs (best of each); 0 on a device clock (it times no host work)."""
    if timer.clock.noiseless:
        return 0.0
    from walle_core.ir.graph import Graph, Node, TensorType, ValueInfo
    from walle_core.plugins import registry
    from walle_core.runtime.model import Model

    try:
        if registry().get(backend.name) is not backend:
            return 0.0
        vt = TensorType(np.dtype(np.float32), (16,))
        graph = Graph([Node("Relu", ["x"], ["y"])], [ValueInfo("x", vt)], [ValueInfo("y", vt)])
        model = Model(graph, backend=backend.name)
        feeds = {"x": np.ones(16, np.float32)}
        model.run(feeds)
        steps = model.plan_for(feeds).stage.steps
        if len(steps) != 1:
            return 0.0
        exe, x = steps[0].executable, [feeds["x"]]
        whole, alone = _interleaved_best(lambda: model.run(feeds), lambda: exe.run(x))
    except Exception:  # no registry entry, or a backend that cannot run Relu: nothing to add
        return 0.0
    return max(whole - alone, 0.0)


def _interleaved_best(*fns: Callable[[], object], rounds: int = 15, per: int = 20,
                      budget_s: float = 1.0) -> list[float]:
    """Best mean seconds of ``per`` calls of each function, taking turns for ``rounds`` rounds
    (fewer once ``budget_s`` is spent: a slow device): load on a shared machine then hits every
    function alike."""
    best = [float("inf")] * len(fns)
    start = time.perf_counter()
    for r in range(rounds):
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(per):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / per)
    return best


def _network() -> tuple[list[A.Op], A.Tensor]:
    """A small network of the common buckets (conv, depthwise, 1x1, activations, a residual
    add, pooling, a reshape and a GEMM), and its input."""
    b = _builder()
    rng = np.random.default_rng(1)
    f32 = np.float32
    ch, hw = 32, 28
    img = b.tensor((1, ch, hw, hw), f32)
    x = img
    for shape, groups, pads in (((ch, ch, 3, 3), 1, (1, 1, 1, 1)), ((ch, 1, 3, 3), ch, (1, 1, 1, 1)),
                                ((ch, ch, 1, 1), 1, (0, 0, 0, 0))):
        out = b.tensor((1, ch, hw, hw), f32)
        b.emit(A.Conv2D([x, b.const(rng.standard_normal(shape).astype(f32))], [out], pads=pads,
                        groups=groups))
        x = b.unary("relu", out)
    x = b.binary("add", x, img)
    pooled = b.tensor((1, ch, hw // 2, hw // 2), f32)
    b.emit(A.Pool2D([x], [pooled], fn="max", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)))
    flat = b.reshape(pooled, (ch, (hw // 2) ** 2))
    b.matmul(flat, b.const(rng.standard_normal(((hw // 2) ** 2, 64)).astype(f32)))
    return b.ops, img


def _attention_block() -> tuple[list[A.Op], A.Tensor]:
    """A small transformer block (projections, attention with softmax, residual, a norm's
    reductions, an MLP with a tanh), and its input: the other family of networks."""
    b = _builder()
    rng = np.random.default_rng(2)
    tokens, d = 32, 128

    def w(*shape: int) -> A.Tensor:
        return b.const((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

    x = b.tensor((tokens, d), np.float32)
    q, k, v = b.matmul(x, w(d, d)), b.matmul(x, w(d, d)), b.matmul(x, w(d, d))
    att = softmax_axis(b, b.matmul(q, b.transpose(k, (1, 0))), 1, False)
    h = b.binary("add", b.matmul(b.matmul(att, v), w(d, d)), x)
    mean = b.reduce_axis(h, 1, "sum")
    h = b.binary("sub", h, mean)
    b.matmul(b.unary("tanh", b.matmul(h, w(d, 4 * d))), w(4 * d, d))
    return b.ops, x


NETWORKS = (_network, _attention_block)  # the whole programs that set the program factor


Compiled = tuple[list[tuple[A.Op, Algorithm]], Program]  # a network's picks and its program


def _program_factor(backend: Backend, timer: Timer, cal: Calibration,
                    programs: Sequence[Compiled | None], before: Sequence[float | None] = ()) -> float:
    """Measured over predicted seconds of whole programs, :func:`_network` and
    :func:`_attention_block` (their geometric mean: one network's few buckets would carry their
    noise into every prediction), within [0.5, 8] (at least 1 on the host's clock); 1 when the
    backend runs neither. ``programs``: NETWORKS compiled (:func:`_compiled`); ``before``: their times measured before the sweep (the best of both
    counts: as each probe's, a program's time is best of runs apart in time; one whose 40 runs
    all met another process's load made a factor of 1.53 here, every op priced that much over)."""
    now = _program_times(backend, timer, programs)
    ratios = []
    for built, t, early in zip(programs, now, list(before) or [None] * len(now), strict=True):
        predicted = None if built is None else _predicted(backend, cal, built)
        measured = min((x for x in (t, early) if x is not None), default=None)
        if predicted is not None and measured is not None:
            ratios.append(measured / predicted)
    if not ratios:
        return 1.0
    # On the host's clock never under 1: a program measured under its prediction there says its
    # buckets' probes ran slow (a loaded machine), and spread over every op that noise moved the
    # zoo's cpu plans by 0.80-0.97x between calibrations, while their runs took 1.1x their
    # buckets' sum in each. A device's own timers or an exact clock have no such noise, and a
    # GPU's program may well overlap what its ops' queued timings each paid (the simulated H200:
    # 0.8)
    low = 0.5 if timer.clock.noiseless or timer.device_timed else 1.0
    return min(max(float(np.exp(np.mean(np.log(ratios)))), low), 8.0)


def _compiled(backend: Backend, ops: list[A.Op], img: A.Tensor) -> Compiled | None:
    """A network's picks as the search's candidates run them, and its program as the planner
    compiles it (epilogues folded); None when the backend cannot run an op of it."""
    ops = expand_composites(ops, backend)  # those it does not claim, as the planner would
    picks: list[tuple[A.Op, Algorithm]] = []
    for op in ops:
        if not backend.algorithms(op):
            return None
        picks.append((op, choose(op, [backend])[1]))
    out = ops[-1].outputs
    return picks, Program(rewrite.apply(picks, {t.id for t in out}, backend.rewrites), [img], list(out))


def _program_times(backend: Backend, timer: Timer, programs: Sequence[Compiled | None]) -> list[float | None]:
    """Best seconds of each compiled program, or None where it cannot be built or run."""
    times: list[float | None] = []
    for built in programs:
        try:
            # many runs: one program's best of five still swung 0.8-1.1x of its prediction under load
            times.append(None if built is None else
                         Timer(backend, timer.clock, repeat=PROGRAM_RUNS).program(built[1]))
        except Exception:  # a backend that cannot build it keeps the per-op costs as they are
            times.append(None)
    return times


def _predicted(backend: Backend, cal: Calibration, built: Compiled) -> float:
    """A compiled network priced as the search prices it (cost.added_cost): its ops, what the
    rewrites change, what lowering the rewritten program adds."""
    picks, program = built
    out_ids = {t.id for t in program.outputs}
    fused = chain_followers([op for op, _ in picks], out_ids)
    return (cal.program_overhead_s
            + sum(cal.op_seconds(op, alg, chained=i in fused) for i, (op, alg) in enumerate(picks))
            + rewrite_seconds(picks, program.ops, out_ids,
                              lambda op, alg, chained: cal.op_seconds(op, alg, chained=chained))
            + lowering_seconds(backend, program, cal.op_seconds)
            + sum(cal.upload(t.nbytes) for t in program.inputs)
            + sum(cal.download(t.nbytes) for t in program.outputs))


def _saturated(points: list[list[float]]) -> bool:
    """Throughput (work per second) of the last two sizes within SATURATED of each other: the
    device is full, larger sizes scale linearly. Sizes that take a few launches' time do not
    count: their throughput is the launch cost (and its noise), not the device filling up."""
    if len(points) < 3 or points[-2][3] < SATURATION_MIN_S:
        return False
    (f0, b0, _, t0), (f1, b1, _, t1) = points[-2], points[-1]
    return abs(((f1 + b1) / t1) / ((f0 + b0) / t0) - 1.0) < SATURATED


def _transfers(backend: Backend, timer: Timer, t1: float, bw: float) -> tuple[Linear, Linear]:
    """Host->device: a program reading n bytes and writing one element; device->host: one
    reading one element and writing n bytes (a broadcast, less its device-side writes)."""
    ups: list[tuple[float, float]] = []
    downs: list[tuple[float, float]] = []
    for nbytes in TRANSFER_BYTES:
        b = _builder()
        x = b.tensor((nbytes // 4,), np.float32)
        b.strided(x, (1,), (1,))
        b.expand(b.tensor((1,), np.float32), (nbytes // 4,))
        read, write = b.ops
        for op, into, extra in ((read, ups, 0.0), (write, downs, nbytes / bw)):
            algos = backend.algorithms(op)
            if algos:
                into.append((float(nbytes), max(timer.ops([(op, algos[0])]) - t1 - extra, 1e-9)))
    fallback = Linear(0.0, 1e12)  # a backend that cannot copy has nothing to transfer
    return (Linear.fit(ups) if len(ups) > 1 else fallback, Linear.fit(downs) if len(downs) > 1 else fallback)


_CALIBRATING = threading.Lock()


def calibration_for(backend: Backend, *, refresh: bool = False,
                    progress: Callable[[str], None] | None = None) -> Calibration:
    """The cached calibration, or a fresh one (then cached) when missing, stale or corrupt.

    One calibration at a time per process and per cache file across processes: many models
    loading at once (a device installing several tasks, a fleet simulated in one process) wait
    for the first calibration and read its result instead of each timing the backend again,
    which would also skew every one of their measurements."""
    if not refresh:
        cached = load_cached(backend)
        if cached is not None:
            return cached
    path = cache_path(backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _CALIBRATING, open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not refresh:
                cached = load_cached(backend)  # another thread or process finished it meanwhile
                if cached is not None:
                    return cached
            cal = calibrate(backend, progress)
            save(cal, backend)
            return cal
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
