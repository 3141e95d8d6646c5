"""Subgroup reductions in the shared kernel description: the work-group reduce reduces within
subgroups where the device's :class:`~walle_core.kernels.spec.Caps` report subgroup arithmetic
and keeps the local-memory tree otherwise (and for prod and types without subgroup arithmetic on
every dialect). Checked on the generated source of all three dialects (compiled by glslc, and by
clang for OpenCL C where it is installed) and on every available OpenCL/Vulkan device for both
paths (the caps forced off to run the tree on the same device), against numpy, with NaN, odd
lengths, rows shorter than a subgroup and rows not a multiple of the work-group size.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Algorithm, Backend, Program
from walle_core.kernels import Caps, KernelSpec, lower_op, render
from walle_core.kernels.lower.common import WG
from walle_core.plugins import registry

AVAILABLE = {b.name: b for b in registry().available()}
GPUS = [n for n in ("opencl", "vulkan") if n in AVAILABLE]
TYPES = frozenset("f16 f32 f64 i8 i16 i32 i64 u8 u16 u32 u64".split())
WITH_SG = Caps(TYPES, subgroup=8)
WITHOUT_SG = Caps(TYPES)
RNG = np.random.default_rng(16)

# (outer, n, inner): long rows with a remainder, rows shorter than a subgroup, one element,
# one past the group size, odd lengths with strided lanes
SHAPES = [(3, 5000, 2), (2, 3, 1), (4, 1, 3), (2, WG + 1, 1), (3, 7, 5), (1, 301, 1), (5, 130, 3)]


def _reduce(fn: str, dtype: Any, shape: tuple[int, int, int]) -> A.Reduce:
    outer, n, inner = shape
    x = A.Tensor((outer, n, inner), np.dtype(dtype), id=1)
    out = A.Tensor((outer, 1, inner), np.dtype(dtype), id=2)
    return A.Reduce([x], [out], fn=fn, outer=outer, n=n, inner=inner)


def _spec(op: A.Reduce, caps: Caps) -> KernelSpec:
    (launch,) = lower_op(op, caps, "workgroup")
    return launch.spec


# --------------------------------------------------------------------------- the lowering


@pytest.mark.parametrize("fn", ["sum", "max", "min"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint32, np.float16])
def test_subgroup_path_when_caps_report_it(fn: str, dtype: Any) -> None:
    op = _reduce(fn, dtype, (2, 1000, 1))
    sub, tree = _spec(op, WITH_SG), _spec(op, WITHOUT_SG)
    assert sub.subgroups and sub.name.startswith("reduce_sg_")
    assert f"SG_{'ADD' if fn == 'sum' else fn.upper()}(acc)" in sub.body
    assert sub.body.count("BARRIER()") == 1 and "LSIZE_X / 2" not in sub.body  # no tree
    assert not tree.subgroups and tree.name.startswith("reduce_wg_") and "SG_" not in tree.body
    assert "LSIZE_X / 2" in tree.body
    # NaN must survive max/min whatever the device's subgroup max/min do with it
    assert ("nan_" in sub.body) == (fn != "sum" and np.dtype(dtype).kind == "f")
    primitives = {"opencl": ("cl_khr_subgroups", f"sub_group_reduce_{'add' if fn == 'sum' else fn}"),
                  "glsl": ("GL_KHR_shader_subgroup_arithmetic", "subgroupAdd" if fn == "sum" else f"subgroup{fn.title()}"),
                  "msl": ("thread_index_in_simdgroup", "simd_sum" if fn == "sum" else f"simd_{fn}")}
    for dialect, words in primitives.items():
        src, plain = render(sub, dialect), render(tree, dialect)
        assert all(w in src for w in words), dialect
        assert not any(w in plain for w in words), dialect


@pytest.mark.parametrize(("fn", "dtype"), [("prod", np.float32), ("sum", np.int64), ("max", np.int8),
                                           ("min", np.uint16), ("sum", np.uint64)])
def test_tree_where_a_dialect_lacks_the_subgroup_op(fn: str, dtype: Any) -> None:
    spec = _spec(_reduce(fn, dtype, (2, 1000, 1)), WITH_SG)
    assert not spec.subgroups and spec.name.startswith("reduce_wg_") and "LSIZE_X / 2" in spec.body


def _subgroup_specs() -> list[KernelSpec]:
    return [_spec(_reduce(fn, dt, (2, 1000, 1)), WITH_SG)
            for fn in ("sum", "max", "min") for dt in (np.float32, np.float64, np.int32, np.uint32)]


@pytest.mark.skipif(shutil.which("glslc") is None, reason="glslc is needed")
def test_subgroup_glsl_compiles() -> None:
    from walle_vulkan.shaders import compile_glsl

    for spec in _subgroup_specs():
        assert compile_glsl(render(spec, "glsl"))[:4] == b"\x03\x02\x23\x07", spec.name


@pytest.mark.skipif(shutil.which("clang-15") is None and shutil.which("clang") is None,
                    reason="clang is needed to check OpenCL C without a subgroup device")
@pytest.mark.parametrize("std", ["CL1.2", "CL3.0"])
def test_subgroup_opencl_c_compiles(tmp_path: Path, std: str) -> None:
    clang = shutil.which("clang-15") or shutil.which("clang")
    assert clang is not None
    for spec in _subgroup_specs():
        path = tmp_path / f"{spec.name}.cl"
        path.write_text(render(spec, "opencl"))
        proc = subprocess.run([clang, f"-cl-std={std}", "-Xclang", "-finclude-default-header", "-target", "spir64",
                               "-fsyntax-only", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{spec.name}: {proc.stderr[:800]}"


# --------------------------------------------------------------------------- device reports


def _cl_device(extensions: str, version: str, features: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(extensions=extensions, version=version,
                           opencl_c_features=[SimpleNamespace(name=f) for f in features])


def test_opencl_subgroup_support_rules() -> None:
    pytest.importorskip("pyopencl")
    from walle_opencl.plugin import subgroup_stds

    assert subgroup_stds(_cl_device("cl_khr_fp64 cl_khr_subgroups", "OpenCL 2.0 X")) == ["CL1.2"]
    assert subgroup_stds(_cl_device("cl_intel_subgroups", "OpenCL 1.2 X")) == ["CL1.2"]
    assert subgroup_stds(_cl_device("cl_khr_fp64", "OpenCL 2.1 X")) == ["CL2.0"]
    assert subgroup_stds(_cl_device("", "OpenCL 3.0 X", ("__opencl_c_subgroups",))) == ["CL3.0"]
    # PoCL's CPU device: OpenCL 3.0 without the subgroup feature or extension
    assert subgroup_stds(_cl_device("cl_khr_fp64 cl_khr_spir", "OpenCL 3.0 PoCL", ("__opencl_c_fp64",))) == []
    assert subgroup_stds(_cl_device("cl_khr_fp64", "OpenCL 1.2 X")) == []


@pytest.mark.skipif("opencl" not in AVAILABLE, reason="no OpenCL device")
def test_opencl_caps_follow_the_probe() -> None:
    from walle_opencl.plugin import subgroup_stds

    dev = AVAILABLE["opencl"]._dev  # type: ignore[attr-defined]
    width = dev.caps.subgroup
    assert width >= 0 and (width == 0) == (dev.subgroup_std == "")
    if not subgroup_stds(dev.device):
        assert width == 0


@pytest.mark.skipif("opencl" not in AVAILABLE, reason="no OpenCL device")
def test_opencl_probe_failure_means_no_subgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device naming subgroups whose compiler cannot build them keeps the tree."""
    import walle_opencl.plugin as plugin

    dev = AVAILABLE["opencl"]._dev  # type: ignore[attr-defined]
    if plugin.subgroup_stds(dev.device):
        pytest.skip("this OpenCL device has subgroups")
    monkeypatch.setattr(plugin, "subgroup_stds", lambda _device: ["CL1.2", "CL3.0"])
    assert dev._probe_subgroups() == ("", 0)


@pytest.mark.skipif("vulkan" not in AVAILABLE, reason="no Vulkan device")
def test_vulkan_reports_subgroups() -> None:
    dev = AVAILABLE["vulkan"]._dev  # type: ignore[attr-defined]
    width = dev.caps.subgroup
    assert width == 0 or width & (width - 1) == 0  # a power of two
    if "llvmpipe" in dev.props.deviceName:
        assert width > 0  # lavapipe has subgroup arithmetic in compute shaders


# --------------------------------------------------------------------------- numerics on devices


def _data(fn: str, dtype: Any, shape: tuple[int, int, int]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        x = RNG.standard_normal(shape).astype(dt)
        if fn != "sum":
            flat = x.reshape(-1)
            flat[RNG.choice(flat.size, size=max(1, flat.size // 97), replace=False)] = np.nan
            x[0, -1, 0] = np.nan  # the row's last element: the last lane's share
            if shape[0] > 1:
                x[1] = np.inf if fn == "max" else -np.inf
                x[1, 0, :] = np.nan  # the first element: the max/min's starting value
            if shape[0] > 2:
                x[2] = -1.0 if fn == "max" else 1.0  # no NaN in this row
                x[2, shape[1] // 2, :] = 2.0 if fn == "max" else -2.0
        return x
    lo = 0 if dt.kind == "u" else -1000
    return RNG.integers(lo, 1000, size=shape).astype(dt)


def _run(backend: Backend, op: A.Reduce, x: np.ndarray) -> np.ndarray:
    prog = Program([(op, Algorithm("workgroup"))], [op.inputs[0]], [op.out])
    (got,) = backend.compile(prog).run([x])
    return got


def _paths(name: str) -> list[Any]:
    return [pytest.param(name, True, id=f"{name}-subgroups"), pytest.param(name, False, id=f"{name}-tree")]


@pytest.mark.parametrize(("name", "subgroups"), [p for n in GPUS for p in _paths(n)])
@pytest.mark.parametrize("fn", ["sum", "max", "min"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint32])
def test_workgroup_reduce_matches_numpy(monkeypatch: pytest.MonkeyPatch, name: str, subgroups: bool, fn: str,
                                        dtype: Any) -> None:
    backend = AVAILABLE[name]
    dev = backend._dev  # type: ignore[attr-defined]
    if subgroups and not dev.caps.subgroup:
        pytest.skip(f"{name} reports no subgroup arithmetic here")
    if np.dtype(dtype) == np.float64 and "f64" not in dev.caps.types:
        pytest.skip(f"{name} has no float64")
    if not subgroups:
        monkeypatch.setattr(dev, "caps", dataclasses.replace(dev.caps, subgroup=0))
    for shape in SHAPES:
        op = _reduce(fn, dtype, shape)
        assert _spec(op, dev.caps).subgroups == subgroups  # the path under test is the one run
        x = _data(fn, dtype, shape)
        got = _run(backend, op, x)
        want = getattr(np, fn)(x, axis=1, keepdims=True)
        if fn == "sum" and np.dtype(dtype).kind == "f":
            scale = np.finfo(dtype).eps * 4 * np.abs(x).sum(axis=1, keepdims=True).max()
            np.testing.assert_allclose(got, want, rtol=0, atol=scale, err_msg=f"{shape}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{shape}")
