"""Per-device calibration: short micro-benchmarks turn each backend's cost declarations into
seconds. Results are cached on disk, keyed by a device fingerprint and the backend version; a
stale or corrupt cache file is detected and rebuilt."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from walle_core import atomic as A
from walle_core import flags
from walle_core.backend import Backend
from walle_core.decompose.builder import Builder
from walle_core.hostinfo import cpu_model
from walle_core.search.timing import time_in_chain, time_ops, time_ops_on_device

SCHEMA = 7
CHEAP_UNARY = frozenset({"relu", "neg", "abs", "identity", "clip", "floor", "ceil", "sign", "not",
                         "leaky_relu", "bitwise_not", "round"})


def op_key(op: A.Op, algo: str) -> str:
    """The calibration bucket of an (op, algorithm): kind, a cost class within it, algorithm."""
    kind = op.kind.value
    if isinstance(op, A.Unary):
        kind += ":cheap" if op.fn in CHEAP_UNARY else ":math"
    elif isinstance(op, A.Composite):
        kind += f":{op.name}"
    elif isinstance(op, A.Reduce):
        kind += ":rows" if op.inner == 1 else ":cols"  # contiguous runs vs strided lanes
    elif isinstance(op, A.Conv2D):
        w = op.inputs[1].shape
        kind += ":dw" if op.groups > 1 and w[1] == 1 else ":1x1" if w[2] == w[3] == 1 else ":kxk"
    return f"{kind}/{algo}"


@dataclass
class Calibration:
    backend: str
    version: str
    fingerprint: str
    op_overhead_s: float
    program_overhead_s: float
    bandwidth_Bps: float
    io_Bps: float
    rates: dict[str, float] = field(default_factory=dict)  # op_key -> flops per second
    fixed: dict[str, float] = field(default_factory=dict)  # op_key -> seconds per op
    schema: int = SCHEMA

    def fixed_cost(self, key: str) -> float:
        return self.fixed.get(key, self.op_overhead_s)

    def rate(self, key: str) -> float:
        if key in self.rates:
            return self.rates[key]
        kind = key.split("/", 1)[0]
        same_kind = [r for k, r in self.rates.items() if k.split("/", 1)[0] == kind]
        pool = same_kind or list(self.rates.values()) or [1e9]
        return float(np.median(pool))


def _build_stamp(backend: Backend) -> str:
    """Size and mtime of the backend's package files (Python and compiled): a rebuilt kernel
    library invalidates calibrations even when the backend forgot to bump its version."""
    try:
        pkg = Path(inspect.getfile(type(backend))).parent
        files = sorted(p for p in pkg.iterdir() if p.suffix in (".py", ".so", ".spv", ".cl"))
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


def cache_path(backend: Backend) -> Path:
    return flags.cache_dir() / "calibration" / f"{backend.name}-{fingerprint(backend)}.json"


def load_cached(backend: Backend) -> Calibration | None:
    """The cached calibration, or None when missing, corrupt or made for another version."""
    path = cache_path(backend)
    try:
        raw = json.loads(path.read_text())
        cal = Calibration(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if cal.schema != SCHEMA or cal.version != backend.version or cal.fingerprint != fingerprint(backend):
        return None
    if not all(np.isfinite(v) and v > 0 for v in cal.rates.values()):
        return None
    return cal


def save(cal: Calibration, backend: Backend) -> None:
    path = cache_path(backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cal), indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half file behind


# ----------------------------------------------------------------------------- micro-benchmarks


def _builder() -> Builder:
    def no_fold(op: A.Op) -> None:
        raise AssertionError("calibration ops take run-time inputs")

    return Builder(no_fold)


def _probe_ops(large: bool) -> list[A.Op]:
    """Representative ops at two sizes; the pair fits a fixed and a per-flop cost per bucket."""
    b = _builder()
    f32 = np.float32
    n, side, tr, mm, ch, hw = ((1 << 20, 1024, 512, 256, 32, 56) if large else (1 << 12, 64, 32, 32, 8, 8))
    x = b.tensor((n,), f32)
    b.unary("relu", x)
    b.unary("exp", x)
    m = b.tensor((side, side), f32)
    b.binary("add", m, b.tensor((side,), f32))
    b.select(b.tensor((n,), bool), x, b.tensor((n,), f32))
    b.cast(x, np.int32)
    b.reduce_axis(m, 1, "sum")
    b.reduce_axis(m, 0, "sum")
    b.transpose(b.tensor((tr, tr), f32), (1, 0))
    b.matmul(b.tensor((mm, mm), f32), b.const(np.ones((mm, mm), f32)))
    img = b.tensor((1, ch, hw, hw), f32)
    rng = np.random.default_rng(0)
    for shape, groups, pads in (((ch, ch, 3, 3), 1, (1, 1, 1, 1)), ((ch, ch, 1, 1), 1, (0, 0, 0, 0)),
                                ((ch, 1, 3, 3), ch, (1, 1, 1, 1))):
        out = b.tensor((1, ch, hw, hw), f32)
        w = b.const(rng.standard_normal(shape).astype(f32))
        b.emit(A.Conv2D([img, w], [out], pads=pads, groups=groups))
    b.emit(A.Pool2D([img], [b.tensor((1, ch, hw // 2, hw // 2), f32)], fn="max", kernel=(3, 3),
                    strides=(2, 2), pads=(1, 1, 1, 1)))
    rows, block = (8192, 256) if large else (64, 16)
    b.gather_rows(b.tensor((rows, block), f32), b.tensor((rows // 2,), np.int64), rows, block)
    b.argsort(b.tensor((64, 1024) if large else (4, 32), f32), 1, False)
    return b.ops


def _tiny_chain(n: int) -> list[A.Op]:
    b = _builder()
    t = b.tensor((1,), np.float32)
    for _ in range(n):
        t = b.unary("relu", t)
    return b.ops


def calibrate(backend: Backend, progress: Callable[[str], None] | None = None) -> Calibration:
    """Run the micro-benchmarks (a few seconds) and return the fitted constants."""
    def step(msg: str) -> None:
        if progress:
            progress(msg)

    step("dispatch overhead")
    one = _tiny_chain(1)
    many = _tiny_chain(33)
    if not backend.algorithms(one[0]):
        raise ValueError(f"backend {backend.name} cannot run a Unary op; nothing to calibrate")
    algo = backend.algorithms(one[0])[0]
    t1 = time_ops(backend, [(one[0], algo)], repeat=30, budget_s=0.3, best=True)
    t33 = time_ops(backend, [(o, algo) for o in many], repeat=30, budget_s=0.3, best=True)
    op_over = max((t33 - t1) / 32, 1e-8)
    prog_over = max(t1 - op_over, 1e-8)

    step("memory bandwidth")
    big = next(o for o in _probe_ops(True) if isinstance(o, A.Unary) and o.fn == "relu")
    t_bw = time_ops(backend, [(big, algo)], repeat=5, best=True)
    bw = big.bytes_moved() / max(t_bw - t1, 1e-7)
    copy = _builder()
    src = copy.tensor((1 << 20,), np.float32)
    copy.strided(src, (1 << 20,), (1,))
    raster = copy.ops[0]
    io = 1e12
    if backend.algorithms(raster):
        t_io = time_ops(backend, [(raster, backend.algorithms(raster)[0])], repeat=5, best=True)
        spent = t_io - t1 - raster.bytes_moved() / bw
        if spent > 0:
            io = min(io, raster.bytes_moved() / spent)

    cal = Calibration(backend.name, backend.version, fingerprint(backend), op_over, prog_over, bw, io)
    for small, large in zip(_probe_ops(False), _probe_ops(True), strict=True):
        for alg in backend.algorithms(large):
            key = op_key(large, alg.name)
            if key in cal.rates:  # the first probe of a bucket is its representative
                continue
            step(key)
            points = []
            for op in (small, large):
                wall, device = time_ops_on_device(backend, [(op, alg)], repeat=5)
                # Kernel time measured on the device (events, timestamps) when the backend
                # reports it; else, for an op that can follow itself, its time in a chain (what
                # a backend does at a program's edges, such as layout changes, cancels out);
                # else wall time less dispatch overhead. Less memory traffic either way.
                steady = None if device is not None else time_in_chain(backend, op, alg)
                if device is not None:
                    t = device
                elif steady is not None:
                    t = steady - op.bytes_moved() / bw
                else:
                    t = wall - prog_over - op.bytes_moved() / bw
                points.append((max(op.flops(), 1.0), t))
            (w0, t0), (w1, t1_) = points
            per_flop = max((t1_ - t0) / (w1 - w0), 1e-15) if w1 > w0 else max(t1_, 1e-9) / w1
            cal.rates[key] = 1.0 / per_flop
            cal.fixed[key] = max(t0 - w0 * per_flop, 0.0)
    return cal


def calibration_for(backend: Backend, *, refresh: bool = False,
                    progress: Callable[[str], None] | None = None) -> Calibration:
    """The cached calibration, or a fresh one (then cached) when missing, stale or corrupt."""
    if not refresh:
        cached = load_cached(backend)
        if cached is not None:
            return cached
    cal = calibrate(backend, progress)
    save(cal, backend)
    return cal
