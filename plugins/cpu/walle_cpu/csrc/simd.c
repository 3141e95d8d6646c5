/* The per-ISA variants of the fp32 kernels (the isa/ includes, built once per variant) and the choice
 * among them. x86 variants are compiled with per-region target options (no global -m flags),
 * so one binary runs on any x86-64 and picks at run time. */
#include <math.h>
#include <string.h>

#include "internal.h"

/* portable: plain C (128-bit generic vectors, lowered to SSE2 or NEON or scalar code) */
#define SFX _scalar
#define ISA_NAME "scalar"
#define VW 4
#define MR 4
#define NC_FB 1
#define NC_P1 4
#define NC_P2 0
#define NC_P3 0
#define NC_P4 0
#include "isa/variant.inc"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SFX _avx2
#define ISA_NAME "avx2"
#define VW 8
#define MR 6
#define NC_FB 1
#define NC_P1 6
#define NC_P2 0
#define NC_P3 0
#define NC_P4 0
#include "isa/variant.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#define SFX _avx512
#define ISA_NAME "avx512"
#define VW 16
#define MR 12 /* 24 accumulators of 32: isa/gemm.inc */
#define NC_FB 4
#define NC_P1 12
#define NC_P2 12
#define NC_P3 8
#define NC_P4 6
#include "isa/variant.inc"
#pragma GCC pop_options
#endif

#if defined(__aarch64__)
/* AArch64 always has Advanced SIMD (NEON): 128-bit vectors, 32 registers. */
#define SFX _neon
#define ISA_NAME "neon"
#define VW 4
#define MR 8
#define NC_FB 1
#define NC_P1 6
#define NC_P2 0
#define NC_P3 0
#define NC_P4 0
#include "isa/variant.inc"
#endif

/* ------------------------------------------------------------------ choosing a variant */

const wl_isa *wl_active = &wl_isa_scalar;

static const wl_isa *detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return &wl_isa_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &wl_isa_avx2;
#endif
#if defined(__aarch64__)
    return &wl_isa_neon;
#endif
    return &wl_isa_scalar;
}

int wl_set_isa(const char *name) {
    const wl_isa *best = detect();
    if (!name || !*name || !strcmp(name, "auto")) { wl_active = best; return 0; }
    if (!strcmp(name, "scalar")) { wl_active = &wl_isa_scalar; return 0; }
#if defined(__x86_64__) || defined(__i386__)
    if (!strcmp(name, "avx2") && (best == &wl_isa_avx2 || best == &wl_isa_avx512)) {
        wl_active = &wl_isa_avx2;
        return 0;
    }
    if (!strcmp(name, "avx512") && best == &wl_isa_avx512) { wl_active = &wl_isa_avx512; return 0; }
#endif
#if defined(__aarch64__)
    if (!strcmp(name, "neon")) { wl_active = &wl_isa_neon; return 0; }
#endif
    return 1;
}

/* the best variant by default; WALLE_CPU_ISA is read in Python (walle_core.flags) */
__attribute__((constructor)) static void wl_init(void) { wl_active = detect(); }

const char *wl_isa_name(void) { return wl_active->name; }
