"""Render a :class:`KernelSpec` to OpenCL C, GLSL 4.50 compute (for SPIR-V) or Metal Shading
Language. The kernel body is emitted verbatim; only the prelude (types, macros), the signature
and the placement of local arrays differ between dialects."""

from __future__ import annotations

from collections.abc import Callable

from walle_core.kernels.library import GLSL_EXP, HELPERS
from walle_core.kernels.spec import KernelSpec

DIALECTS = ("opencl", "glsl", "msl")

_CL_TYPES = {"f16": "half", "f32": "float", "f64": "double", "i8": "char", "i16": "short",
             "i32": "int", "i64": "long", "u8": "uchar", "u16": "ushort", "u32": "uint",
             "u64": "ulong"}
_GLSL_TYPES = {"f16": "float16_t", "f32": "float", "f64": "double", "i8": "int8_t",
               "i16": "int16_t", "i32": "int", "i64": "int64_t", "u8": "uint8_t",
               "u16": "uint16_t", "u32": "uint", "u64": "uint64_t"}
_MSL_TYPES = {"f16": "half", "f32": "float", "f64": "double", "i8": "char", "i16": "short",
              "i32": "int", "i64": "long", "u8": "uchar", "u16": "ushort", "u32": "uint",
              "u64": "ulong"}


# The subgroup primitives of a spec with ``subgroups=True``: the lines enabling them (placed with
# the other extensions) and the SG_* macros (see walle_core.kernels.spec).
_SUBGROUP_ENABLE: dict[str, tuple[str, ...]] = {
    "opencl": ("#ifdef cl_khr_subgroups", "#pragma OPENCL EXTENSION cl_khr_subgroups : enable", "#endif"),
    "glsl": ("#extension GL_KHR_shader_subgroup_arithmetic : enable",),
    "msl": (),  # simd_sum & co. are part of metal_stdlib
}
_SUBGROUP_MACROS: dict[str, dict[str, str]] = {
    "opencl": {"SG_ADD(x)": "sub_group_reduce_add(x)", "SG_MAX(x)": "sub_group_reduce_max(x)",
               "SG_MIN(x)": "sub_group_reduce_min(x)", "SG_LANE": "((int)get_sub_group_local_id())",
               "SG_ID": "((int)get_sub_group_id())", "SG_COUNT": "((int)get_num_sub_groups())",
               "SG_SIZE": "((int)get_sub_group_size())"},
    "glsl": {"SG_ADD(x)": "subgroupAdd(x)", "SG_MAX(x)": "subgroupMax(x)", "SG_MIN(x)": "subgroupMin(x)",
             "SG_LANE": "int(gl_SubgroupInvocationID)", "SG_ID": "int(gl_SubgroupID)",
             "SG_COUNT": "int(gl_NumSubgroups)", "SG_SIZE": "int(gl_SubgroupSize)"},
    "msl": {"SG_ADD(x)": "simd_sum(x)", "SG_MAX(x)": "simd_max(x)", "SG_MIN(x)": "simd_min(x)",
            "SG_LANE": "int(_sgl)", "SG_ID": "int(_sgi)", "SG_COUNT": "int(_nsg)", "SG_SIZE": "int(_sgs)"},
}
# MSL has the subgroup indices as kernel arguments, not built-in variables
_MSL_SUBGROUP_ARGS = ("uint _sgl [[thread_index_in_simdgroup]]", "uint _sgi [[simdgroup_index_in_threadgroup]]",
                      "uint _nsg [[simdgroups_per_threadgroup]]", "uint _sgs [[threads_per_simdgroup]]")


def _subgroup_enable(spec: KernelSpec, dialect: str) -> list[str]:
    return list(_SUBGROUP_ENABLE[dialect]) if spec.subgroups else []


def _subgroup_macros(spec: KernelSpec, dialect: str) -> list[str]:
    table = _SUBGROUP_MACROS[dialect] if spec.subgroups else {}
    return [f"#define {k} {v}" for k, v in table.items()]


def _type_macros(table: dict[str, str]) -> list[str]:
    return [f"#define {k} {v}" for k, v in table.items()]


def _common_macros() -> list[str]:
    return [
        "#define PL(k) (CAST(i64, CAST(u32, P[k])) | (CAST(i64, P[(k) + 1]) << 32))",
        "#define PU64(k) (CAST(u64, CAST(u32, P[k])) | (CAST(u64, CAST(u32, P[(k) + 1])) << 32))",
        "#define GSIZE_X (NGRP_X * LSIZE_X)",
    ]


def _spec_macros(spec: KernelSpec) -> list[str]:
    lx, ly, lz = spec.local_size
    lines = [f"#define LSIZE_X {lx}", f"#define LSIZE_Y {ly}", f"#define LSIZE_Z {lz}",
             f"#define HT {spec.float_type}"]
    lines += [f"#define {k} {v}" for k, v in spec.defines]
    return lines


def _vector_aliases(spec: KernelSpec) -> list[str]:
    """OpenCL and MSL load vectors through the scalar pointer itself (GLSL declares a block)."""
    return [f"#define {b.name}_v4 {b.name}" for b in spec.buffers if b.vec4]


def _helpers(spec: KernelSpec, dialect: str) -> list[str]:
    out: list[str] = []
    for name in spec.helpers:
        out.append(HELPERS[name](dialect))
    return out


def render_opencl(spec: KernelSpec) -> str:
    lines = []
    if "f64" in spec.types:
        lines.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    if "f16" in spec.types:
        lines.append("#pragma OPENCL EXTENSION cl_khr_fp16 : enable")
    lines += _subgroup_enable(spec, "opencl")
    lines += _type_macros(_CL_TYPES)
    lines += [
        "#define CAST(T, x) ((T)(x))",
        "#define GID_X ((int)get_global_id(0))", "#define GID_Y ((int)get_global_id(1))",
        "#define GID_Z ((int)get_global_id(2))",
        "#define LID_X ((int)get_local_id(0))", "#define LID_Y ((int)get_local_id(1))",
        "#define LID_Z ((int)get_local_id(2))",
        "#define GRP_X ((int)get_group_id(0))", "#define GRP_Y ((int)get_group_id(1))",
        "#define GRP_Z ((int)get_group_id(2))",
        "#define NGRP_X ((int)get_num_groups(0))", "#define NGRP_Y ((int)get_num_groups(1))",
        "#define NGRP_Z ((int)get_num_groups(2))",
        "#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE)", "#define PRECISE",
        "#define PF(k) as_float(P[k])",
        "#define PD(k) as_double(PL(k))",
        "#define W_RINT(x) rint(x)", "#define W_ATAN2(a, b) atan2(a, b)",
        "#define W_FMOD(a, b) fmod(a, b)", "#define W_TRUNC(x) trunc(x)",
        "#define W_ERF(x) erf(x)", "#define W_ERFC(x) erfc(x)",
        "#define W_ASIN(x) asin(x)", "#define W_ACOS(x) acos(x)", "#define W_ATAN(x) atan(x)",
        "#define f32x4 float4", "#define LOAD4(b, i) vload4(i, b)",
    ]
    lines += _vector_aliases(spec) + _subgroup_macros(spec, "opencl")
    lines += _common_macros() + _spec_macros(spec) + _helpers(spec, "opencl")
    params = []
    for b in spec.buffers:
        const = "" if b.writable else "const "
        params.append(f"__global {const}{b.type}* {b.name}")
    lx, ly, lz = spec.local_size
    lines.append(f"__kernel __attribute__((reqd_work_group_size({lx}, {ly}, {lz})))")
    lines.append(f"void {spec.name}({', '.join(params)}) {{")
    lines += [f"  __local {a.type} {a.name}[{a.count}];" for a in spec.locals]
    lines.append(spec.body)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_glsl(spec: KernelSpec) -> str:
    types = spec.types
    lines = ["#version 450"]
    if types & {"i8", "u8", "i16", "u16", "f16", "i64", "u64"}:
        lines.append("#extension GL_EXT_shader_explicit_arithmetic_types : require")
    if types & {"i8", "u8"}:
        lines.append("#extension GL_EXT_shader_8bit_storage : require")
    if types & {"i16", "u16", "f16"}:
        lines.append("#extension GL_EXT_shader_16bit_storage : require")
    lines += _subgroup_enable(spec, "glsl")
    lx, ly, lz = spec.local_size
    lines.append(f"layout(local_size_x = {lx}, local_size_y = {ly}, local_size_z = {lz}) in;")
    lines += _type_macros(_GLSL_TYPES)
    for i, b in enumerate(spec.buffers):
        qual = "" if b.writable else "readonly "
        lines.append(f"layout(std430, binding = {i}) {qual}buffer B{i} {{ {b.type} {b.name}[]; }};")
        if b.vec4:  # a second block on the same binding: the same memory seen as vec4
            lines.append(f"layout(std430, binding = {i}) {qual}buffer B{i}v {{ vec4 {b.name}_v4[]; }};")
    lines += [f"shared {a.type} {a.name}[{a.count}];" for a in spec.locals]
    lines += [
        "#define CAST(T, x) T(x)",
        "#define GID_X int(gl_GlobalInvocationID.x)", "#define GID_Y int(gl_GlobalInvocationID.y)",
        "#define GID_Z int(gl_GlobalInvocationID.z)",
        "#define LID_X int(gl_LocalInvocationID.x)", "#define LID_Y int(gl_LocalInvocationID.y)",
        "#define LID_Z int(gl_LocalInvocationID.z)",
        "#define GRP_X int(gl_WorkGroupID.x)", "#define GRP_Y int(gl_WorkGroupID.y)",
        "#define GRP_Z int(gl_WorkGroupID.z)",
        "#define NGRP_X int(gl_NumWorkGroups.x)", "#define NGRP_Y int(gl_NumWorkGroups.y)",
        "#define NGRP_Z int(gl_NumWorkGroups.z)",
        "#define BARRIER() memoryBarrierShared(); barrier()", "#define PRECISE precise",
        "#define PF(k) intBitsToFloat(P[k])",
        "#define PD(k) packDouble2x32(uvec2(uint(P[k]), uint(P[(k) + 1])))",
        "#define W_RINT(x) roundEven(x)", "#define W_ATAN2(a, b) w_atan2(a, b)",
        "#define W_ASIN(x) w_asin(x)", "#define W_ACOS(x) w_acos(x)", "#define W_ATAN(x) w_atan(x)",
        "#define W_FMOD(a, b) w_fmod(a, b)", "#define W_TRUNC(x) trunc(x)",
        "#define W_ERF(x) w_erf(x)", "#define W_ERFC(x) w_erfc(x)",
        "#define f32x4 vec4", "#define LOAD4(b, i) b[i]",
    ]
    lines += _subgroup_macros(spec, "glsl") + _common_macros() + _spec_macros(spec)
    helpers = _helpers(spec, "glsl")
    if spec.float_type == "f32" and "exp(" in spec.body + "".join(helpers):
        lines.append(GLSL_EXP)
    lines += helpers
    lines.append("void main() {")
    lines.append(spec.body)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_msl(spec: KernelSpec) -> str:
    lines = ["#include <metal_stdlib>", "using namespace metal;"]
    lines += _type_macros(_MSL_TYPES)
    lines += [
        "#define CAST(T, x) static_cast<T>(x)",
        "#define GID_X int(_gid.x)", "#define GID_Y int(_gid.y)", "#define GID_Z int(_gid.z)",
        "#define LID_X int(_lid.x)", "#define LID_Y int(_lid.y)", "#define LID_Z int(_lid.z)",
        "#define GRP_X int(_grp.x)", "#define GRP_Y int(_grp.y)", "#define GRP_Z int(_grp.z)",
        "#define NGRP_X int(_ngrp.x)", "#define NGRP_Y int(_ngrp.y)", "#define NGRP_Z int(_ngrp.z)",
        "#define BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)", "#define PRECISE",
        "#define PF(k) as_type<float>(P[k])",
        "#define PD(k) as_type<double>(PL(k))",
        "#define W_RINT(x) rint(x)", "#define W_ATAN2(a, b) atan2(a, b)",
        "#define W_FMOD(a, b) fmod(a, b)", "#define W_TRUNC(x) trunc(x)",
        "#define W_ERF(x) w_erf(x)", "#define W_ERFC(x) w_erfc(x)",
        "#define W_ASIN(x) asin(x)", "#define W_ACOS(x) acos(x)", "#define W_ATAN(x) atan(x)",
        "#define f32x4 float4", "#define LOAD4(b, i) (reinterpret_cast<device const float4*>(b))[i]",
    ]
    lines += _vector_aliases(spec) + _subgroup_macros(spec, "msl")
    lines += _common_macros() + _spec_macros(spec) + _helpers(spec, "msl")
    params = []
    for i, b in enumerate(spec.buffers):
        const = "" if b.writable else "const "
        params.append(f"device {const}{b.type}* {b.name} [[buffer({i})]]")
    params += ["uint3 _gid [[thread_position_in_grid]]",
               "uint3 _lid [[thread_position_in_threadgroup]]",
               "uint3 _grp [[threadgroup_position_in_grid]]",
               "uint3 _ngrp [[threadgroups_per_grid]]"]
    params += _MSL_SUBGROUP_ARGS if spec.subgroups else ()
    lines.append(f"kernel void {spec.name}({', '.join(params)}) {{")
    lines += [f"  threadgroup {a.type} {a.name}[{a.count}];" for a in spec.locals]
    lines.append(spec.body)
    lines.append("}")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[KernelSpec], str]] = {
    "opencl": render_opencl, "glsl": render_glsl, "msl": render_msl,
}


def render(spec: KernelSpec, dialect: str) -> str:
    return RENDERERS[dialect](spec)
