"""Backend-specific checks of the GPU-style backends (OpenCL, Vulkan, Metal) and of the shared
kernel description they render. Numeric conformance of every atomic kind lives in
``test_conformance.py`` (parametrised over every available
backend); this file covers what only these backends have: device selection, program and SPIR-V
caches, the buffer pool, staging, one submit per run, timing, fallbacks with copies, and the three
dialects (every kernel rendered to OpenCL C, GLSL and MSL and compiled by a real compiler: the
driver's OpenCL compiler, ``glslc``, and for MSL a C++14 syntax check against a small stub of
``metal_stdlib``; Metal execution itself is tested on macOS only).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Backend, Program
from walle_core.errors import WalleError
from walle_core.kernels import Caps, KernelSpec, Unsupported, algorithms_for, lower_op, render
from walle_core.plugins import registry

F32 = np.dtype(np.float32)
RNG = np.random.default_rng(11)
AVAILABLE = {b.name: b for b in registry().available()}
GPU_NAMES = [n for n in ("opencl", "vulkan", "metal") if n in AVAILABLE]
ALL_TYPES = Caps(frozenset("f32 f64 i8 i16 i32 i64 u8 u16 u32 u64".split()))

needs_opencl = pytest.mark.skipif("opencl" not in AVAILABLE, reason="no OpenCL device")
needs_vulkan = pytest.mark.skipif("vulkan" not in AVAILABLE, reason="no Vulkan device")


def _t(shape: tuple[int, ...], dtype: Any = F32, tid: int = 0) -> A.Tensor:
    return A.Tensor(tuple(shape), np.dtype(dtype), id=tid)


def _run(backend: Backend, ops: list[A.Op], inputs: list[A.Tensor], outputs: list[A.Tensor],
         feeds: list[np.ndarray], algo: str | None = None) -> list[np.ndarray]:
    items = []
    for op in ops:
        algos = backend.algorithms(op)
        assert algos, f"{backend.name} offers nothing for {op.kind.value}"
        items.append((op, next((a for a in algos if a.name == algo), algos[0])))
    return backend.compile(Program(items, inputs, outputs)).run(feeds)


def _reference(ops: list[A.Op], inputs: list[A.Tensor], outputs: list[A.Tensor],
               feeds: list[np.ndarray]) -> list[np.ndarray]:
    return _run(registry().get("reference"), ops, inputs, outputs, feeds)


# --------------------------------------------------------------------------- kernel catalogue


def catalogue() -> list[A.Op]:
    """One op per (kind, function, dtype class, algorithm-relevant variant): every kernel shape."""
    ops: list[A.Op] = []
    x = _t((4, 5), F32, 1)
    xi = _t((4, 5), np.int32, 2)
    xb = _t((4, 5), np.bool_, 3)
    xl = _t((4, 5), np.int64, 4)
    xd = _t((4, 5), np.float64, 5)
    from walle_core.kernels.library import (
        BOOL_BINARY,
        COMPARE,
        FLOAT_BINARY,
        FLOAT_PREDICATES,
        FLOAT_UNARY,
        INT_BINARY,
        INT_UNARY,
    )

    params = {"hardsigmoid": (0.2, 0.5), "leaky_relu": (0.1,), "elu": (1.0,), "selu": (1.6, 1.05),
              "celu": (1.0,), "clip": (-1.0, 1.0), "thresholded_relu": (1.0,)}
    for fn in FLOAT_UNARY:
        ops.append(A.Unary([x], [_t((4, 5))], fn=fn, params=params.get(fn, ())))
    for fn in ("sqrt", "floor", "clip", "relu"):
        ops.append(A.Unary([xd], [_t((4, 5), np.float64)], fn=fn, params=params.get(fn, ())))
    for fn in FLOAT_PREDICATES:
        ops.append(A.Unary([x], [_t((4, 5), np.bool_)], fn=fn))
    for fn in INT_UNARY:
        ops.append(A.Unary([xi], [_t((4, 5), np.int32)], fn=fn, params=params.get(fn, ())))
    ops.append(A.Unary([xb], [_t((4, 5), np.bool_)], fn="not"))
    st = [(5, 1), (0, 1)]
    for fn in FLOAT_BINARY:
        ops.append(A.Binary([x, _t((5,))], [_t((4, 5))], fn=fn, strides=st))
    for fn in INT_BINARY:
        ops.append(A.Binary([xi, _t((5,), np.int32)], [_t((4, 5), np.int32)], fn=fn, strides=st))
    ops.append(A.Binary([xl, _t((5,), np.int64)], [_t((4, 5), np.int64)], fn="mod", strides=st))
    for fn in BOOL_BINARY:
        ops.append(A.Binary([xb, _t((5,), np.bool_)], [_t((4, 5), np.bool_)], fn=fn, strides=st))
    for fn in COMPARE:
        ops.append(A.Binary([x, _t((5,))], [_t((4, 5), np.bool_)], fn=fn, strides=st))
    ops.append(A.Select([xb, x, _t((5,))], [_t((4, 5))], strides=[(5, 1), (5, 1), (0, 1)]))
    for src, dst in [(F32, np.int32), (np.int64, F32), (F32, np.bool_), (np.uint8, np.float64),
                     (np.int8, np.uint16)]:
        ops.append(A.Cast([_t((4, 5), src)], [_t((4, 5), dst)]))
    for dt in (F32, np.int64, np.uint8, np.float16):
        ops.append(A.Raster([_t((4, 5), dt)], [_t((5, 4), dt)],
                            regions=[A.Region(0, 0, (0, 1, 5), 0, (0, 4, 1), (1, 4, 5))], fill=0.0))
    for fn in ("sum", "prod", "max", "min", "argmax", "argmin", "cumsum", "cumprod"):
        out = _t((2, 1, 5), np.int64 if fn.startswith("arg") else F32) if "cum" not in fn else _t((2, 300, 5))
        ops.append(A.Reduce([_t((2, 300, 5))], [out], fn=fn, outer=2, n=300, inner=5,
                            last_index=fn == "argmin"))
    ops.append(A.Reduce([_t((1, 4096, 1))], [_t((1, 1, 1))], fn="sum", outer=1, n=4096, inner=1))
    for ta, tb, bias in [(False, False, False), (True, False, True), (False, True, True), (True, True, False)]:
        ins = [_t((3, 40, 24)), _t((24, 36))] + ([_t((36,))] if bias else [])
        ops.append(A.MatMul(ins, [_t((3, 40, 36))], batch=3, m=40, n=36, k=24, trans_a=ta, trans_b=tb,
                            a_batch_stride=960, b_batch_stride=0))
    ops.append(A.MatMul([_t((2, 3)), _t((3, 2)), _t((2, 2))], [_t((1, 2, 2))], batch=1, m=2, n=2, k=3,
                        bias_full=True))
    for act in (A.Activation(), A.Activation("relu"), A.Activation("clip", (0.0, 6.0)),
                A.Activation("sigmoid")):
        ops.append(A.Conv2D([_t((1, 4, 9, 9)), _t((16, 2, 3, 3)), _t((16,))], [_t((1, 16, 5, 5))],
                            strides=(2, 2), pads=(1, 1, 1, 1), groups=2, act=act))
    ops.append(A.Conv2D([_t((2, 8, 7, 7)), _t((8, 1, 3, 3))], [_t((2, 8, 7, 7))], pads=(1, 1, 1, 1),
                        groups=8))
    # outputs that fill the large register-blocked tile; a pointwise conv (GEMM without im2col)
    ops.append(A.MatMul([_t((130, 20)), _t((20, 100))], [_t((1, 130, 100))], m=130, n=100, k=20))
    ops.append(A.Conv2D([_t((1, 8, 12, 12)), _t((100, 8, 1, 1))], [_t((1, 100, 12, 12))]))
    for fn, p in (("max", 2), ("avg", 2), ("lp", 1), ("lp", 2), ("lp", 3)):
        ops.append(A.Pool2D([_t((1, 3, 6, 6))], [_t((1, 3, 3, 3))], fn=fn, kernel=(3, 3), strides=(2, 2),
                            pads=(1, 1, 1, 1), count_include_pad=fn == "avg", p=p))
    data, idx = _t((6, 3)), _t((4,), np.int64)
    ops.append(A.GatherScatter([data, idx], [_t((4, 3))], mode="gather", rows=6, block=3))
    for red in ("none", "add", "mul", "max", "min"):
        ops.append(A.GatherScatter([data, idx, _t((4, 3))], [_t((6, 3))], mode="scatter", rows=6, block=3,
                                   reduction=red))
    for dt, desc in ((F32, False), (F32, True), (np.int32, True), (np.bool_, False)):
        ops.append(A.Sort([_t((2, 7, 3), dt)], [_t((2, 7, 3), np.int64)], outer=2, n=7, inner=3,
                          descending=desc))
    return ops


def catalogue_specs(caps: Caps) -> list[KernelSpec]:
    specs: dict[str, KernelSpec] = {}
    for op in catalogue():
        for algo in algorithms_for(op):
            try:
                launches = lower_op(op, caps, algo)
            except Unsupported:
                continue
            for la in launches:
                specs.setdefault(la.spec.key, la.spec)
    return list(specs.values())


def test_catalogue_covers_every_atomic_kind() -> None:
    kinds = {op.kind for op in catalogue()}
    assert kinds == set(A.Kind) - {A.Kind.COMPOSITE}
    names = {s.name.split("_")[0] for s in catalogue_specs(ALL_TYPES)}
    assert {"copy3d", "fill", "unary", "binary", "select", "cast", "reduce", "gemm", "conv", "pool",
            "gather", "scatter", "argsort"} <= names
    specs = catalogue_specs(ALL_TYPES)
    assert any(s.locals and s.name.startswith("gemm_tiled") for s in specs)  # local-memory GEMM
    assert any(s.locals and s.name.startswith("conv_igemm") for s in specs)  # local-memory conv
    assert any(s.name.startswith("gemm_tiled_t128") for s in specs)  # register-blocked 128x128
    assert any(s.name.startswith("conv_igemm1x1") for s in specs)  # pointwise conv: no im2col
    assert any(s.name.startswith("conv_depthwise") for s in specs)
    assert any(s.locals and s.name.startswith("reduce_wg") for s in specs)
    with_subgroups = catalogue_specs(dataclasses.replace(ALL_TYPES, subgroup=32))
    assert any(s.subgroups and s.name.startswith("reduce_sg") for s in with_subgroups)


# --------------------------------------------------------------------------- three dialects


_METAL_STUB = """#pragma once
#include <cmath>
#include <cstring>
#define kernel
#define device
#define threadgroup
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef float half;
namespace metal {
struct uint3 { uint x, y, z; };
struct float4 { float x, y, z, w; };
enum class mem_flags { mem_none, mem_device, mem_threadgroup };
inline void threadgroup_barrier(mem_flags) {}
template <class T, class U> T as_type(U u) { T t; std::memcpy(&t, &u, sizeof t); return t; }
template <class T> T simd_sum(T x) { return x; }
template <class T> T simd_max(T x) { return x; }
template <class T> T simd_min(T x) { return x; }
using std::isnan; using std::isinf; using std::rint; using std::trunc; using std::fmod; using std::atan2;
using std::exp; using std::log; using std::sqrt; using std::pow; using std::sin; using std::cos;
using std::tan; using std::asin; using std::acos; using std::atan; using std::sinh; using std::cosh;
using std::tanh; using std::asinh; using std::acosh; using std::atanh; using std::floor; using std::ceil;
}
"""


def _msl_structure(spec: KernelSpec, src: str) -> None:
    assert src.count("{") == src.count("}"), "unbalanced braces"
    assert src.count("(") == src.count(")"), "unbalanced parentheses"
    assert f"kernel void {spec.name}(" in src
    assert spec.body in src, "the shared body must appear verbatim"
    for i, b in enumerate(spec.buffers):
        const = "" if b.writable else "const "
        assert f"device {const}{b.type}* {b.name} [[buffer({i})]]" in src
    for a in spec.locals:
        assert f"threadgroup {a.type} {a.name}[{a.count}];" in src
    assert ("uint _sgl [[thread_index_in_simdgroup]]" in src) == spec.subgroups
    for h in spec.helpers:
        if h not in ("w_fmod", "w_atan", "w_asin", "w_acos", "w_atan2"):  # GLSL-only helpers
            assert f" {h}(" in src


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to syntax-check MSL")
def test_msl_every_kernel_renders_and_parses(tmp_path: Path) -> None:
    from walle_metal.plugin import METAL_CAPS, render_msl

    (tmp_path / "metal_stdlib").write_text(_METAL_STUB)
    specs = catalogue_specs(METAL_CAPS)
    assert len(specs) > 100
    assert not any("f64" in s.types for s in specs), "Metal has no float64"
    assert any(s.subgroups for s in specs), "Metal reduces in SIMD groups"

    def check(i_spec: tuple[int, KernelSpec]) -> str:
        i, spec = i_spec
        src = render_msl(spec)
        _msl_structure(spec, src)
        path = tmp_path / f"k{i}.metal"
        path.write_text(src)
        proc = subprocess.run(["g++", "-std=c++14", "-fsyntax-only", "-Wno-attributes", "-x", "c++",
                               "-I", str(tmp_path), str(path)], capture_output=True, text=True, check=False)
        return "" if proc.returncode == 0 else f"{spec.name}: {proc.stderr[:800]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = [e for e in pool.map(check, enumerate(specs)) if e]
    assert not errors, "\n".join(errors[:5])


@pytest.mark.skipif(shutil.which("glslc") is None, reason="glslc is needed")
def test_glsl_every_kernel_compiles_to_spirv(tmp_path: Path) -> None:
    from walle_vulkan.shaders import compile_glsl

    specs = catalogue_specs(AVAILABLE["vulkan"].caps if "vulkan" in AVAILABLE  # type: ignore[attr-defined]
                            else Caps(ALL_TYPES.types, f64_math=False))
    with ThreadPoolExecutor(max_workers=4) as pool:
        spirv = list(pool.map(lambda s: compile_glsl(render(s, "glsl")), specs))
    assert all(code[:4] == b"\x03\x02\x23\x07" for code in spirv)  # SPIR-V magic


@needs_opencl
def test_opencl_every_kernel_builds() -> None:
    backend = AVAILABLE["opencl"]
    dev = backend._dev  # type: ignore[attr-defined]
    for spec in catalogue_specs(dev.caps):
        dev.build(spec)


def test_dialects_share_one_body() -> None:
    op = catalogue()[-12]
    for spec in {la.spec.key: la.spec for la in lower_op(op, ALL_TYPES)}.values():
        for dialect in ("opencl", "glsl", "msl"):
            assert spec.body in render(spec, dialect)


# --------------------------------------------------------------------------- numerics beyond the suites


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
@pytest.mark.parametrize("algo", ["tiled", "naive"])
def test_gemm_large_odd_shapes(name: str, algo: str) -> None:
    b, m, n, k = 3, 70, 45, 133
    a_t, b_t, bias_t, out = _t((b, k, m), tid=1), _t((n, k), tid=2), _t((n,), tid=3), _t((b, m, n), tid=4)
    op = A.MatMul([a_t, b_t, bias_t], [out], batch=b, m=m, n=n, k=k, trans_a=True, trans_b=True,
                  a_batch_stride=k * m, b_batch_stride=0)
    feeds = [RNG.standard_normal(t.shape).astype(np.float32) for t in (a_t, b_t, bias_t)]
    (got,) = _run(AVAILABLE[name], [op], [a_t, b_t, bias_t], [out], feeds, algo)
    want = np.einsum("bkm,nk->bmn", feeds[0], feeds[1]) + feeds[2]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
@pytest.mark.parametrize("algo", ["implicit_gemm", "direct", "depthwise"])
def test_conv_algorithms(name: str, algo: str) -> None:
    if algo == "depthwise":
        x, w = _t((2, 6, 11, 9), tid=1), _t((12, 1, 3, 3), tid=2)
        out = _t((2, 12, 6, 5), tid=4)
        op = A.Conv2D([x, w, _t((12,), tid=3)], [out], strides=(2, 2), pads=(1, 1, 1, 1), groups=6,
                      act=A.Activation("leaky_relu", (0.1,)))
    else:
        x, w = _t((2, 6, 11, 9), tid=1), _t((10, 3, 3, 2), tid=2)
        out = _t((2, 10, 7, 8), tid=4)
        op = A.Conv2D([x, w, _t((10,), tid=3)], [out], dilations=(2, 1), pads=(1, 0, 0, 1), groups=2,
                      act=A.Activation("relu"))
    ins = op.inputs
    feeds = [RNG.standard_normal(t.shape).astype(np.float32) for t in ins]
    (got,) = _run(AVAILABLE[name], [op], ins, [out], feeds, algo)
    (want,) = _reference([op], ins, [out], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dims", [(1, 131, 197, 37), (2, 132, 196, 36)], ids=["ragged", "aligned"])
def test_gemm_register_blocked_tile(name: str, trans: tuple[bool, bool], dims: tuple[int, int, int, int]) -> None:
    """Outputs large enough for the 128x128 tile (8x8 per thread, double-buffered K steps): ragged
    edges in M, N and K with scalar fetches, and dimensions in fours with four-wide fetches (a
    batch of A against one shared B), for every transpose."""
    ta, tb = trans
    batch, m, n, k = dims
    a_t = _t((batch, k, m) if ta else (batch, m, k), tid=1)
    b_t = _t((n, k) if tb else (k, n), tid=2)
    out = _t((batch, m, n), tid=3)
    op = A.MatMul([a_t, b_t], [out], batch=batch, m=m, n=n, k=k, trans_a=ta, trans_b=tb,
                  a_batch_stride=m * k, b_batch_stride=0)
    (launch,) = lower_op(op, AVAILABLE[name].caps, "tiled")  # type: ignore[attr-defined]
    vectors = "_vv_" if m % 4 == 0 else "_ss_"
    assert launch.spec.name.startswith("gemm_tiled_t128") and vectors in launch.spec.name
    feeds = [RNG.standard_normal(t.shape).astype(np.float32) for t in (a_t, b_t)]
    (got,) = _run(AVAILABLE[name], [op], [a_t, b_t], [out], feeds, "tiled")
    a_host = np.swapaxes(feeds[0], 1, 2) if ta else feeds[0]
    want = a_host @ (feeds[1].T if tb else feeds[1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
@pytest.mark.parametrize("shape", ["3x3_large_tile", "1x1_pointwise", "1x1_pointwise_aligned", "1x1_strided"])
def test_conv_gemm_tiles(name: str, shape: str) -> None:
    k, stride, pads = (3, 1, (1, 1, 1, 1)) if shape.startswith("3x3") else (1, 2 if "strided" in shape else 1,
                                                                               (0, 0, 0, 0))
    c, h = (8, 12) if "aligned" in shape else (9, 13)  # aligned: channels and pixels in fours
    x, w, b = _t((2, c, h, 11), tid=1), _t((100, c, k, k), tid=2), _t((100,), tid=3)
    oh, ow = (h - k + pads[0] + pads[2]) // stride + 1, (11 - k + pads[1] + pads[3]) // stride + 1
    out = _t((2, 100, oh, ow), tid=4)
    op = A.Conv2D([x, w, b], [out], strides=(stride, stride), pads=pads, act=A.Activation("relu"))
    (launch,) = lower_op(op, AVAILABLE[name].caps, "implicit_gemm")  # type: ignore[attr-defined]
    assert ("igemm1x1" in launch.spec.name) == shape.startswith("1x1_pointwise")
    assert ("_vv_" in launch.spec.name) == (shape == "1x1_pointwise_aligned")
    feeds = [RNG.standard_normal(t.shape).astype(np.float32) for t in (x, w, b)]
    (got,) = _run(AVAILABLE[name], [op], [x, w, b], [out], feeds, "implicit_gemm")
    (want,) = _reference([op], [x, w, b], [out], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
@pytest.mark.parametrize("geometry", [(3, 1, 1, 40), (5, 2, 1, 30), (3, 1, 2, 13), (3, 2, 1, 7)],
                         ids=["3x3s1_wide", "5x5s2", "3x3_dilated", "3x3s2_small"])
def test_depthwise_tiles(name: str, geometry: tuple[int, int, int, int]) -> None:
    """The depthwise kernel stages the input patch under a block of outputs in local memory:
    blocks of 8, 16 and 32 columns, strides, dilation, padding at every edge, batch, and a
    channel multiplier of two."""
    k, s, d, size = geometry
    pad = d * (k - 1) // 2
    out_hw = (size + 2 * pad - d * (k - 1) - 1) // s + 1
    x, w, b = _t((2, 5, size, size + 3), tid=1), _t((10, 1, k, k), tid=2), _t((10,), tid=3)
    out = _t((2, 10, out_hw, (size + 3 + 2 * pad - d * (k - 1) - 1) // s + 1), tid=4)
    op = A.Conv2D([x, w, b], [out], strides=(s, s), dilations=(d, d), pads=(pad,) * 4, groups=5,
                  act=A.Activation("clip", (0.0, 6.0)))
    (launch,) = lower_op(op, AVAILABLE[name].caps, "depthwise")  # type: ignore[attr-defined]
    assert launch.spec.locals and launch.spec.name.startswith("conv_depthwise")
    feeds = [RNG.standard_normal(t.shape).astype(np.float32) for t in (x, w, b)]
    (got,) = _run(AVAILABLE[name], [op], [x, w, b], [out], feeds, "depthwise")
    (want,) = _reference([op], [x, w, b], [out], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
def test_run_timings_and_transfer_timing(name: str) -> None:
    """Each run reports device-clock seconds per launch, the span of the launches, and the
    host->device and device->host moves separately; the backend times bare transfers too."""
    backend = AVAILABLE[name]
    x, h, y = _t((256, 64), tid=1), _t((256, 64), tid=2), _t((256, 64), tid=3)
    ops = [A.Unary([x], [h], fn="exp"), A.Unary([h], [y], fn="neg")]
    exe = backend.compile(Program([(op, backend.algorithms(op)[0]) for op in ops], [x], [y]))
    exe.run([RNG.standard_normal((256, 64)).astype(np.float32)])
    t = exe.last_run_timings()  # type: ignore[attr-defined]
    assert [label for label, _ in t.dispatches] == ["exp", "neg"]
    assert t.upload_bytes == t.download_bytes == 256 * 64 * 4
    assert t.upload_s > 0 and t.download_s > 0
    assert t.span_s >= max(sec for _, sec in t.dispatches) > 0
    small, large = backend.time_transfers(1 << 12), backend.time_transfers(1 << 22)  # type: ignore[attr-defined]
    assert small.upload_s > 0 and small.download_s > 0
    assert large.upload_s > small.upload_s and large.download_s > small.download_s


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
def test_workgroup_reduce(name: str) -> None:
    x, out = _t((3, 5000, 2), tid=1), _t((3, 1, 2), tid=2)
    feeds = [RNG.standard_normal(x.shape).astype(np.float32)]
    for fn in ("sum", "max"):
        op = A.Reduce([x], [out], fn=fn, outer=3, n=5000, inner=2)
        assert AVAILABLE[name].algorithms(op)[0].name == "workgroup"
        (got,) = _run(AVAILABLE[name], [op], [x], [out], feeds, "workgroup")
        (want,) = _reference([op], [x], [out], feeds)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(feeds[0]).sum(1).max())


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
def test_gather_out_of_range_raises(name: str) -> None:
    data, idx, out = _t((4, 2), tid=1), _t((2,), np.int64, 2), _t((2, 2), tid=3)
    op = A.GatherScatter([data, idx], [out], mode="gather", rows=4, block=2)
    exe = AVAILABLE[name].compile(Program([(op, AVAILABLE[name].algorithms(op)[0])], [data, idx], [out]))
    ok = exe.run([np.ones((4, 2), np.float32), np.array([0, -4])])
    np.testing.assert_array_equal(ok[0], np.ones((2, 2)))
    with pytest.raises(WalleError, match="out of range"):
        exe.run([np.ones((4, 2), np.float32), np.array([0, 4])])
    exe.run([np.ones((4, 2), np.float32), np.array([1, 2])])  # the flag resets per run


# --------------------------------------------------------------------------- opt-in half precision


def _half_backend(name: str) -> Backend:
    backend = type(AVAILABLE[name])(precision="fp16")  # type: ignore[call-arg]
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    return backend


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
def test_fp16_storage_with_float32_sums(name: str) -> None:
    """precision="fp16": float32 tensors live on the device as float16 (half the bytes moved),
    math widens to float32 and sums accumulate in it; the host still sees float32."""
    backend = _half_backend(name)
    x, w, b = _t((2, 16, 20, 20), tid=1), _t((24, 16, 3, 3), tid=2), _t((24,), tid=3)
    c, p, m = _t((2, 24, 20, 20), tid=4), _t((2, 24, 10, 10), tid=5), _t((2, 24, 1, 1), tid=6)
    w.value = (RNG.standard_normal(w.shape) * 0.1).astype(np.float32)
    b.value = RNG.standard_normal(b.shape).astype(np.float32)
    ops = [A.Conv2D([x, w, b], [c], pads=(1, 1, 1, 1), act=A.Activation("gelu")),
           A.Pool2D([c], [p], fn="avg", kernel=(2, 2), strides=(2, 2)),
           A.Reduce([_t((48, 100, 1), tid=5)], [_t((48, 1, 1), tid=6)], fn="sum", outer=48, n=100, inner=1)]
    program = Program([(op, backend.algorithms(op)[0]) for op in ops], [x], [m])
    exe = backend.compile(program)
    feeds = [RNG.standard_normal(x.shape).astype(np.float32)]
    (got,) = exe.run(feeds)
    (want,) = _reference(ops, [x], [m], feeds)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
    assert exe.last_run_timings().upload_bytes == x.nbytes // 2  # type: ignore[attr-defined]
    assert all("f16" in la.spec.name for la in exe.plan.launches)  # type: ignore[attr-defined]


def test_precision_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from walle_opencl.plugin import OpenCLBackend

    with pytest.raises(WalleError, match="precision must be one of fp32, fp16"):
        OpenCLBackend(precision="fp8")
    monkeypatch.setenv("WALLE_GPU_PRECISION", "fp16")
    backend = OpenCLBackend()
    assert backend.precision == "fp16"
    if "opencl" in AVAILABLE and not AVAILABLE["opencl"]._dev.half:  # type: ignore[attr-defined]
        assert not backend.availability().available and "fp16" in backend.availability().reason


# --------------------------------------------------------------------------- OpenCL specifics


class _FakeDev:
    def __init__(self, name: str, type_: int) -> None:
        self.name, self.type = name, type_


class _FakePlatform:
    def __init__(self, name: str, devices: list[_FakeDev] | None) -> None:
        self.name, self._devices = name, devices

    def get_devices(self) -> list[_FakeDev]:
        if self._devices is None:
            raise RuntimeError("clGetDeviceIDs failed: broken ICD")
        return self._devices


class _FakeCL:
    class device_type:
        CPU, GPU, ACCELERATOR = 2, 4, 8

    def __init__(self, platforms: list[_FakePlatform]) -> None:
        self._platforms = platforms

    def get_platforms(self) -> list[_FakePlatform]:
        return self._platforms


def test_opencl_device_selection_rules() -> None:
    from walle_opencl.plugin import select_device

    cpu, gpu = _FakeDev("pthread-cpu", 2), _FakeDev("Radeon GPU", 4)
    cl = _FakeCL([_FakePlatform("Broken", None), _FakePlatform("PoCL", [cpu]),
                  _FakePlatform("AMD", [gpu])])
    platform_, dev, notes = select_device(cl)
    assert dev is gpu and platform_.name == "AMD"
    assert any("Broken" in n for n in notes)
    assert select_device(cl, "pthread")[1] is cpu
    assert select_device(cl, "pocl")[1] is cpu  # platform names match too
    with pytest.raises(WalleError, match="matches none"):
        select_device(cl, "nvidia")


@needs_opencl
def test_opencl_program_cache_and_buffer_pool() -> None:
    backend = AVAILABLE["opencl"]
    dev = backend._dev  # type: ignore[attr-defined]
    x, y = _t((64, 33), tid=1), _t((64, 33), tid=2)
    op = A.Unary([x], [y], fn="softsign")
    prog = Program([(op, backend.algorithms(op)[0])], [x], [y])
    exe = backend.compile(prog)
    builds = dev.builds
    exe2 = backend.compile(prog)
    assert dev.builds == builds, "a second compile of the same kernel must hit the program cache"
    assert any(dev.binaries.dir.glob("*.bin")), "program binaries are cached under walle's cache dir"
    dev.programs.clear()  # a new process: the memory cache is gone, the disk cache is not
    hits = dev.binary_hits
    backend.compile(prog)
    assert dev.binary_hits == hits + 1 and dev.builds == builds
    del exe, exe2
    gc.collect()
    reused = dev.pool.reused
    exe3 = backend.compile(prog)
    assert dev.pool.reused > reused, "freed executables return their buffers to the pool"
    feeds = [RNG.standard_normal((64, 33)).astype(np.float32)]
    (got,) = exe3.run(feeds)
    np.testing.assert_allclose(got, feeds[0] / (1 + np.abs(feeds[0])), rtol=1e-6)
    timings = exe3.last_timings()  # type: ignore[attr-defined]
    assert len(timings) == 1 and timings[0][1] > 0


def test_opencl_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from walle_opencl import plugin

    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import fails as if not installed
    backend = plugin.OpenCLBackend()
    av = backend.availability()
    assert not av.available and "pip install 'walle[opencl]'" in av.reason


# --------------------------------------------------------------------------- Vulkan specifics


@needs_vulkan
def test_vulkan_spirv_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from walle_vulkan import shaders

    src = render(catalogue_specs(ALL_TYPES)[0], "glsl")
    first = shaders.compile_glsl(src)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("glslc must not run for a cached shader")

    monkeypatch.setattr(shaders.subprocess, "run", boom)
    assert shaders.compile_glsl(src) == first


@needs_vulkan
@pytest.mark.parametrize("staging", ["0", "1"])
def test_vulkan_one_submit_per_run_and_staging(monkeypatch: pytest.MonkeyPatch, staging: str) -> None:
    monkeypatch.setenv("WALLE_VULKAN_STAGING", staging)
    backend = AVAILABLE["vulkan"]
    vk = backend._dev.vk  # type: ignore[attr-defined]
    a, b, w = _t((8, 16), tid=1), _t((8, 16), tid=2), _t((16, 5), tid=3)
    s, y = _t((8, 16), tid=4), _t((1, 8, 5), tid=5)
    w.value = RNG.standard_normal((16, 5)).astype(np.float32)  # a constant goes up once
    ops = [A.Binary([a, b], [s], fn="mul", strides=[(16, 1), (16, 1)]),
           A.MatMul([s, w], [y], m=8, n=5, k=16)]
    exe = backend.compile(Program([(op, backend.algorithms(op)[0]) for op in ops], [a, b], [y]))
    assert exe.recording.staged == (staging == "1")  # type: ignore[attr-defined]
    calls = []
    real = vk.vkQueueSubmit
    monkeypatch.setattr(vk, "vkQueueSubmit", lambda *args: calls.append(1) or real(*args))
    feeds = [RNG.standard_normal((8, 16)).astype(np.float32) for _ in range(2)]
    (got,) = exe.run(feeds)
    assert len(calls) == 1, "the whole program is one command buffer, one submit"
    np.testing.assert_allclose(got, (feeds[0] * feeds[1] @ w.value)[None], rtol=1e-5, atol=1e-5)
    timings = exe.last_timings()  # type: ignore[attr-defined]
    assert [label for label, _ in timings] == ["mul", "gemm_naive"]
    assert all(sec >= 0 for _, sec in timings)


def test_vulkan_memory_types_for_staging() -> None:
    """Readback goes through cached host memory where the driver has it (reading write-combined
    memory from the CPU made readback 0.1 GB/s on a discrete GPU); unified memory is mapped."""
    from walle_vulkan.memory import DEVICE_LOCAL as DL
    from walle_vulkan.memory import HOST_CACHED as CACHED
    from walle_vulkan.memory import HOST_COHERENT as COH
    from walle_vulkan.memory import HOST_VISIBLE as HV
    from walle_vulkan.memory import choose_memory_types

    discrete = [(0, DL), (1, HV | COH), (2, HV | COH | CACHED), (3, DL | HV | COH)]  # NVIDIA-like
    plan = choose_memory_types(discrete)
    assert (plan.device, plan.upload, plan.readback, plan.note) == (0, 1, 2, "")
    non_coherent = [(0, DL), (1, HV | COH), (2, HV | CACHED)]  # cached readback needs invalidation
    assert choose_memory_types(non_coherent).readback == 2
    unified = [(0, DL | HV | COH | CACHED)]  # lavapipe, integrated GPUs
    assert choose_memory_types(unified) == type(plan)(0, 0, 0)
    uncached = choose_memory_types([(0, DL), (1, DL | HV | COH)])
    assert uncached.readback == uncached.upload == 1 and "HOST_CACHED" in uncached.note
    with pytest.raises(WalleError, match="host-visible"):
        choose_memory_types([(0, DL)])


def test_vulkan_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from walle_vulkan import plugin

    monkeypatch.setitem(sys.modules, "vulkan", None)
    av = plugin.VulkanBackend().availability()
    assert not av.available and "pip install 'walle[vulkan]'" in av.reason


# --------------------------------------------------------------------------- fallbacks, CLI, Metal


@pytest.mark.parametrize("name", [n for n in ("opencl", "vulkan") if n in AVAILABLE])
def test_fallback_runs_elsewhere_with_copies(name: str) -> None:
    """Ops the backend lacks (here float16 arithmetic) run on reference; the planner splits the
    graph into per-backend steps whose boundaries are host copies."""
    from walle_core.decompose.builder import Builder
    from walle_core.plan.planner import build_stage, run_stage

    b = Builder(lambda op: None)
    x = b.tensor((3, 4), F32)
    h = b.cast(b.unary("exp", x), np.float16)
    h2 = b.unary("sqrt", h)  # float16 math: no GPU kernel offered
    y = b.unary("neg", b.cast(h2, np.float32))
    backend = AVAILABLE[name]
    assert not backend.algorithms(b.ops[2])
    stage = build_stage(b.ops, [backend, registry().get("reference")], {y.id}, None)
    assert [s.backend for s in stage.steps] == [name, "reference", name]
    feed = RNG.standard_normal((3, 4)).astype(np.float32)
    table = {x.id: feed}
    run_stage(stage, table)
    want = -np.sqrt(np.exp(feed).astype(np.float16)).astype(np.float32)
    np.testing.assert_allclose(table[y.id], want, rtol=1e-3)


def test_walle_backends_shows_device_names() -> None:
    env = dict(os.environ, COLUMNS="300")
    proc = subprocess.run([sys.executable, "-m", "walle_cli.app", "backends", "--json"], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        walle = shutil.which("walle")
        assert walle, proc.stderr
        proc = subprocess.run([walle, "backends", "--json"], capture_output=True, text=True, env=env, check=True)
    import json

    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    if "opencl" in AVAILABLE:
        dev = rows["opencl"]["device"]
        assert dev["name"] == AVAILABLE["opencl"].device_info().name
        if "Portable Computing Language" in dev["details"]["platform"]:
            assert "pthread" in dev["name"] or "cpu" in dev["name"].lower()
    if "vulkan" in AVAILABLE:
        assert rows["vulkan"]["device"]["name"] == AVAILABLE["vulkan"].device_info().name
        if "llvmpipe" in rows["vulkan"]["device"]["name"]:
            assert rows["vulkan"]["device"]["kind"] == "cpu"
    if platform.system() != "Darwin":
        assert rows["metal"]["available"] is False and rows["metal"]["reason"] == "Metal needs macOS"


@pytest.mark.skipif(platform.system() != "Darwin", reason="Metal needs macOS")
def test_metal_executes_catalogue() -> None:
    backend = registry().get("metal")
    for op in catalogue():
        if not backend.algorithms(op):
            continue
        feeds = [np.asarray(RNG.integers(0, 3, t.shape)).astype(t.dtype) if t.dtype.kind in "iub"
                 else RNG.standard_normal(t.shape).astype(t.dtype) for t in op.inputs]
        try:
            want = _reference([op], op.inputs, op.outputs, feeds)
        except WalleError:
            continue
        got = _run(backend, [op], op.inputs, op.outputs, feeds)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-4, atol=1e-4)
