/* The per-ISA variants of the fp32 kernels. x86 variants are compiled with per-region target
 * options (no global -m flags), so one binary runs on any x86-64 and picks at run time. */
#include <math.h>
#include <string.h>

#include "wl.h"

/* portable: plain C (128-bit generic vectors, lowered to SSE2 or NEON or scalar code) */
#define SFX _scalar
#define NC_FB 1
#define NC_P1 4
#define NC_P2 0
#define NC_P3 0
#define NC_P4 0
#define VW 4
#define MR 4
#define ISA_NAME "scalar"
#include "nchwc.inc"
#include "simd.inc"
#undef SFX
#undef NC_FB
#undef NC_P1
#undef NC_P2
#undef NC_P3
#undef NC_P4
#undef VW
#undef MR
#undef ISA_NAME

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SFX _avx2
#define NC_FB 1
#define NC_P1 6
#define NC_P2 0
#define NC_P3 0
#define NC_P4 0
#define VW 8
#define MR 6
#define ISA_NAME "avx2"
#include "nchwc.inc"
#include "simd.inc"
#undef SFX
#undef NC_FB
#undef NC_P1
#undef NC_P2
#undef NC_P3
#undef NC_P4
#undef VW
#undef MR
#undef ISA_NAME
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#define SFX _avx512
#define NC_FB 4
#define NC_P1 12
#define NC_P2 12
#define NC_P3 8
#define NC_P4 6
#define VW 16
#define MR 8
#define ISA_NAME "avx512"
#include "nchwc.inc"
#include "simd.inc"
#undef SFX
#undef NC_FB
#undef NC_P1
#undef NC_P2
#undef NC_P3
#undef NC_P4
#undef VW
#undef MR
#undef ISA_NAME
#pragma GCC pop_options
#endif

#if defined(__aarch64__)
/* AArch64 always has Advanced SIMD (NEON): 128-bit vectors, 32 registers. */
#define SFX _neon
#define NC_FB 1
#define NC_P1 6
#define NC_P2 0
#define NC_P3 0
#define NC_P4 0
#define VW 4
#define MR 8
#define ISA_NAME "neon"
#include "nchwc.inc"
#include "simd.inc"
#undef SFX
#undef NC_FB
#undef NC_P1
#undef NC_P2
#undef NC_P3
#undef NC_P4
#undef VW
#undef MR
#undef ISA_NAME
#endif
