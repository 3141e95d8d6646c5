"""The kernel description shared by the OpenCL, Vulkan (GLSL) and Metal backends.

A :class:`KernelSpec` is data: its buffers (binding order), work-group size, work-group local
arrays and a body written once in a small portable C subset. The subset is plain C expressions
and statements plus these macros, which every dialect's prelude defines:

* scalar types ``f32 f64 i8 i16 i32 i64 u8 u16 u32 u64`` (bool tensors are ``u8``);
* ``CAST(T, x)`` (C cast, GLSL/MSL constructor);
* ``GID_X/Y/Z`` (global id), ``LID_X/Y/Z`` (id in the group), ``GRP_X/Y/Z`` (group id),
  ``NGRP_X/Y/Z`` (groups in the grid), ``GSIZE_X`` (threads along x), all ``int``;
* ``BARRIER()``: work-group barrier with local-memory fence;
* subgroup arithmetic, only in a spec with ``subgroups=True`` (lowered so only for a device whose
  :attr:`Caps.subgroup` is non-zero): ``SG_ADD(x) SG_MAX(x) SG_MIN(x)`` (the sum, maximum or
  minimum of ``x`` over the calling subgroup, every lane of which must reach the call; f32, f64,
  i32 and u32 only; what max/min give for NaN is the device's, so callers guard NaN themselves),
  ``SG_LANE`` (lane in the subgroup), ``SG_ID`` (subgroup in the group), ``SG_COUNT`` (subgroups
  in the group) and ``SG_SIZE`` (lanes in this subgroup), all ``int``;
* ``f32x4`` and ``LOAD4(<buffer>_v4, i)``: a four-wide float32 load from a buffer declared with
  ``vec4`` (OpenCL ``vload4``, a GLSL ``vec4`` block aliasing the binding, an MSL ``float4``
  pointer);
* ``PF(k)``: float32 parameter stored as bits in ``P[k]``; ``PL(k)``: int64 from ``P[k], P[k+1]``;
  ``PU64(k)``: the same bits as u64;
* math: ``W_RINT W_ATAN2 W_FMOD W_ERF W_ERFC W_TRUNC`` and the helper functions of
  :data:`walle_core.kernels.library.HELPERS`.

Buffer 0 of every kernel is ``P``, an int32 parameter block (shapes, strides, float params as
bits), so one compiled kernel serves every op of the same kind/dtype/function.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# numpy dtype -> portable scalar type name (bool is stored as one byte, 0 or 1)
DTYPE_TAG: dict[str, str] = {
    "float32": "f32", "float64": "f64", "float16": "f16",
    "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64", "bool": "u8",
}
# unsigned integer of the same width: data movement copies bits
BITS_TAG: dict[int, str] = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}
FLOAT_TAGS = frozenset({"f16", "f32", "f64"})


def tag(dtype: np.dtype) -> str:
    try:
        return DTYPE_TAG[np.dtype(dtype).name]
    except KeyError:
        raise KeyError(f"no kernel type for dtype {dtype}") from None


@dataclass(frozen=True)
class BufferDecl:
    """A kernel buffer. ``vec4`` (float32 only): the body may also read it four elements at a
    time, ``LOAD4(<name>_v4, i)`` giving elements 4i..4i+3 as an ``f32x4`` (``.x .y .z .w``)."""

    name: str
    type: str  # scalar type tag
    writable: bool = False
    vec4: bool = False


@dataclass(frozen=True)
class LocalArray:
    name: str
    type: str
    count: int


@dataclass(frozen=True)
class KernelSpec:
    """One kernel, written once. ``buffers[0]`` is always the int32 parameter block ``P``."""

    name: str
    buffers: tuple[BufferDecl, ...]
    body: str
    local_size: tuple[int, int, int] = (64, 1, 1)
    locals: tuple[LocalArray, ...] = ()
    defines: tuple[tuple[str, str], ...] = ()  # kernel-specific macros, e.g. ("T", "f32")
    helpers: tuple[str, ...] = ()  # names from library.HELPERS this kernel calls
    float_type: str = "f32"  # the type helper functions are instantiated at
    subgroups: bool = False  # the body uses the SG_* subgroup macros

    @property
    def types(self) -> frozenset[str]:
        used = {b.type for b in self.buffers} | {a.type for a in self.locals}
        used |= {v for _, v in self.defines if v in DTYPE_TAG.values()}
        if self.helpers:
            used.add(self.float_type)
        return frozenset(used)

    @property
    def key(self) -> str:
        """Stable digest of the description (the dialect renderers add their own name)."""
        h = hashlib.sha256(repr(self).encode())
        return h.hexdigest()[:20]


@dataclass(frozen=True)
class Caps:
    """What a device can run: the scalar types its kernels may use, whether float64 has
    transcendental functions (GLSL's double has none), and ``subgroup``: the width of the
    device's subgroups (SIMD groups, warps) where compute kernels have subgroup reductions
    (the ``SG_*`` macros), 0 where they have none. Kernels using them must not depend on the
    width: it is what the device reports, and some devices vary it per kernel."""

    types: frozenset[str]
    f64_math: bool = True
    max_local: int = 256
    local_mem: int = 16384
    subgroup: int = 0

    def has(self, *tags: str) -> bool:
        return all(t in self.types for t in tags)


@dataclass
class Launch:
    """One dispatch of a kernel: buffers by role, the parameter block, the grid in groups."""

    spec: KernelSpec
    args: list[object]  # per buffers[1:]: a walle_core.atomic.Tensor, or the string "status"
    params: list[int]
    groups: tuple[int, int, int]
    label: str = ""
    extra: dict[str, object] = field(default_factory=dict)
