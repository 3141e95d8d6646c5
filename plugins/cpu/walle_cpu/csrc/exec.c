/* The plan executor (one call walks all op descriptors) and the dtype-generic kernels:
 * Raster, Unary, Binary, Select, Cast, Reduce, Pool2D, GatherScatter, Sort, fused chains. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wl.h"

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


/* ------------------------------------------------------------------ generic float unary */

#define UL(EXPR) for (int64_t i = 0; i < n; i++) { T v = x[i]; (void)v; y[i] = (EXPR); } return;

#define FLOAT_UNARY(NAME, TYPE, EXP, LOG, SQRT, SIN, COS, TAN, ASIN, ACOS, ATAN, SINH, COSH, TANH,   \
                    ASINH, ACOSH, ATANH, ERF, FLOOR, CEIL, RINT, LOG1P, EXPM1, FABS)               \
    typedef TYPE NAME##_t;                                                                        \
    static void NAME(int fn, const TYPE *x, TYPE *y, int64_t n, const double *prm) {             \
        typedef TYPE T;                                                                           \
        const T p0 = (T)prm[0], p1 = (T)prm[1];                                                   \
        switch (fn) {                                                                             \
        case U_IDENTITY: UL(v)                                                                    \
        case U_ABS: UL(FABS(v))                                                                   \
        case U_NEG: UL(-v)                                                                        \
        case U_EXP: UL(EXP(v))                                                                    \
        case U_LOG: UL(LOG(v))                                                                    \
        case U_SQRT: UL(SQRT(v))                                                                  \
        case U_RSQRT: UL((T)1 / SQRT(v))                                                          \
        case U_RECIP: UL((T)1 / v)                                                                \
        case U_SIN: UL(SIN(v))                                                                    \
        case U_COS: UL(COS(v))                                                                    \
        case U_TAN: UL(TAN(v))                                                                    \
        case U_ASIN: UL(ASIN(v))                                                                  \
        case U_ACOS: UL(ACOS(v))                                                                  \
        case U_ATAN: UL(ATAN(v))                                                                  \
        case U_SINH: UL(SINH(v))                                                                  \
        case U_COSH: UL(COSH(v))                                                                  \
        case U_TANH: UL(TANH(v))                                                                  \
        case U_ASINH: UL(ASINH(v))                                                                \
        case U_ACOSH: UL(ACOSH(v))                                                                \
        case U_ATANH: UL(ATANH(v))                                                                \
        case U_SIGMOID: UL(v >= 0 ? (T)1 / ((T)1 + EXP(-v)) : EXP(v) / ((T)1 + EXP(v)))            \
        case U_RELU: UL(v <= 0 ? (T)0 : v)                                                         \
        case U_ERF: UL(ERF(v))                                                                    \
        case U_FLOOR: UL(FLOOR(v))                                                                \
        case U_CEIL: UL(CEIL(v))                                                                  \
        case U_ROUND: UL(RINT(v))                                                                 \
        case U_SIGN: UL(v > 0 ? (T)1 : (v < 0 ? (T)-1 : v))                                       \
        case U_SOFTPLUS: UL(v > 20 ? v : LOG1P(EXP(v)))                                           \
        case U_SOFTSIGN: UL(v / ((T)1 + FABS(v)))                                                 \
        case U_GELU: UL((T)0.5 * v * ((T)1 + ERF(v / (T)1.4142135623730951)))                     \
        case U_GELU_TANH:                                                                         \
            UL((T)0.5 * v * ((T)1 + TANH((T)0.7978845608028654 * (v + (T)0.044715 * v * v * v)))) \
        case U_HARDSWISH: UL(v * ((v / 6 + (T)0.5) < 0 ? (T)0 : ((v / 6 + (T)0.5) > 1 ? (T)1 : (v / 6 + (T)0.5)))) \
        case U_HARDSIGMOID:                                                                       \
            UL((p0 * v + p1) < 0 ? (T)0 : ((p0 * v + p1) > 1 ? (T)1 : (p0 * v + p1)))             \
        case U_LEAKY_RELU: UL(v >= 0 ? v : p0 * v)                                                \
        case U_ELU: UL(v > 0 ? v : p0 * EXPM1(v))                                                 \
        case U_SELU: UL(p1 * (v > 0 ? v : p0 * EXPM1(v)))                                         \
        case U_CELU:                                                                              \
            UL(v != v ? v : (v > 0 ? v : (T)0) + (p0 * EXPM1((v < 0 ? v : (T)0) / p0) < 0         \
                                          ? p0 * EXPM1((v < 0 ? v : (T)0) / p0) : (T)0))          \
        case U_CLIP: UL(v <= p0 ? p0 : (v > p1 ? p1 : v))                                         \
        case U_MISH: UL(v * TANH(v > 20 ? v : LOG1P(EXP(v))))                                     \
        case U_THRESHOLDED_RELU: UL(v > p0 ? v : (T)0)                                            \
        default: return;                                                                          \
        }                                                                                         \
    }

FLOAT_UNARY(unary_f32_impl, float, expf, logf, sqrtf, sinf, cosf, tanf, asinf, acosf, atanf, sinhf,
            coshf, tanhf, asinhf, acoshf, atanhf, erff, floorf, ceilf, nearbyintf, log1pf, expm1f,
            fabsf)
FLOAT_UNARY(unary_f64_impl, double, exp, log, sqrt, sin, cos, tan, asin, acos, atan, sinh, cosh,
            tanh, asinh, acosh, atanh, erf, floor, ceil, nearbyint, log1p, expm1, fabs)

void wl_unary_scalar_f32(int fn, const float *x, float *y, int64_t n, const double *prm) {
    unary_f32_impl(fn, x, y, n, prm);
}

typedef struct {
    const wl_op *op;
    const char *x;
    char *y;
    int64_t n, chunk;
} un_ctx;

#define IUL(EXPR) for (int64_t i = 0; i < n; i++) { T v = xs[i]; (void)v; ys[i] = (T)(EXPR); } break;
#define INT_UNARY(TYPE)                                                                           \
    {                                                                                             \
        typedef TYPE T;                                                                           \
        const T *xs = (const T *)x;                                                               \
        T *ys = (T *)y;                                                                           \
        switch (fn) {                                                                             \
        case U_IDENTITY: IUL(v)                                                                   \
        case U_ABS: IUL(v < 0 ? -v : v)                                                           \
        case U_NEG: IUL(-v)                                                                       \
        case U_RELU: IUL(v < 0 ? 0 : v)                                                           \
        case U_SIGN: IUL(v > 0 ? 1 : (v < 0 ? -1 : 0))                                            \
        case U_BITWISE_NOT: IUL(~v)                                                               \
        default: break;                                                                           \
        }                                                                                         \
    }                                                                                             \
    break;

static void unary_range(const wl_op *op, const char *x, char *y, int64_t n) {
    int fn = op->fn;
    const double *prm = op->f;
    if (fn == U_ISNAN || fn == U_ISINF || fn == U_ISPOSINF || fn == U_ISNEGINF) {
        uint8_t *o = (uint8_t *)y;
        for (int64_t i = 0; i < n; i++) {
            double v = op->dtype == D_F32 ? (double)((const float *)x)[i] : ((const double *)x)[i];
            o[i] = fn == U_ISNAN ? isnan(v) : fn == U_ISINF ? isinf(v) != 0
                                          : fn == U_ISPOSINF ? (isinf(v) && v > 0) : (isinf(v) && v < 0);
        }
        return;
    }
    switch (op->dtype) {
    case D_F32: wl_active->unary_f32(fn, (const float *)x, (float *)y, n, prm); break;
    case D_F64: unary_f64_impl(fn, (const double *)x, (double *)y, n, prm); break;
    case D_I8: INT_UNARY(int8_t)
    case D_I16: INT_UNARY(int16_t)
    case D_I32: INT_UNARY(int32_t)
    case D_I64: INT_UNARY(int64_t)
    case D_U8: INT_UNARY(uint8_t)
    case D_U16: INT_UNARY(uint16_t)
    case D_U32: INT_UNARY(uint32_t)
    case D_U64: INT_UNARY(uint64_t)
    case D_BOOL: {
        const uint8_t *xs = (const uint8_t *)x;
        uint8_t *ys = (uint8_t *)y;
        for (int64_t i = 0; i < n; i++) ys[i] = fn == U_NOT ? !xs[i] : xs[i];
        break;
    }
    default: break;
    }
}

static void unary_task(void *vp, int64_t t) {
    un_ctx *c = vp;
    int64_t i0 = t * c->chunk, i1 = i0 + c->chunk < c->n ? i0 + c->chunk : c->n;
    int64_t es = c->op->p[1], eo = c->op->p[2];
    unary_range(c->op, c->x + i0 * es, c->y + i0 * eo, i1 - i0);
}

static int64_t chunks_for(int64_t n, int64_t grain, int nthreads, int64_t *chunk) {
    int64_t tasks = nthreads <= 1 || n < grain ? 1 : (n + grain - 1) / grain;
    if (tasks > 4 * nthreads) tasks = 4 * nthreads;
    if (tasks < 1) tasks = 1;
    *chunk = (n + tasks - 1) / tasks;
    if (*chunk < 1) *chunk = 1;
    return (n + *chunk - 1) / *chunk;
}

/* ------------------------------------------------------------------ N-D broadcasting loops */

#define BLOOP(TO, EXPR)                                                                         \
    {                                                                                           \
        TO *py = (TO *)y;                                                                       \
        for (int64_t i = 0; i < n; i++) { T av = pa[i * sa], bv = pb[i * sb]; py[i] = (TO)(EXPR); } \
    }                                                                                           \
    return 0;

#define CMP_CASES                                                                               \
    case B_EQ: BLOOP(uint8_t, av == bv)                                                         \
    case B_LT: BLOOP(uint8_t, av < bv)                                                          \
    case B_LE: BLOOP(uint8_t, av <= bv)                                                         \
    case B_GT: BLOOP(uint8_t, av > bv)                                                          \
    case B_GE: BLOOP(uint8_t, av >= bv)

#define FLOAT_BIN(TYPE, FMOD, POW, ATAN2)                                                       \
    {                                                                                           \
        typedef TYPE T;                                                                         \
        const T *pa = (const T *)a, *pb = (const T *)b;                                         \
        switch (fn) {                                                                           \
        case B_ADD: BLOOP(T, av + bv)                                                           \
        case B_SUB: BLOOP(T, av - bv)                                                           \
        case B_MUL: BLOOP(T, av * bv)                                                           \
        case B_DIV: BLOOP(T, av / bv)                                                           \
        case B_POW: BLOOP(T, POW(av, bv))                                                       \
        case B_MAX: BLOOP(T, (av > bv || av != av) ? av : bv)                                   \
        case B_MIN: BLOOP(T, (av < bv || av != av) ? av : bv)                                   \
        case B_FMOD: BLOOP(T, FMOD(av, bv))                                                     \
        case B_ATAN2: BLOOP(T, ATAN2(av, bv))                                                   \
        case B_MOD: {                                                                           \
            T *py = (T *)y;                                                                     \
            for (int64_t i = 0; i < n; i++) {                                                   \
                T av = pa[i * sa], bv = pb[i * sb];                                             \
                T r = FMOD(av, bv);                                                             \
                if (r != 0) { if ((bv < 0) != (r < 0)) r += bv; }                               \
                else r = copysign(0.0, (double)bv);                                             \
                py[i] = r;                                                                      \
            }                                                                                   \
            return 0;                                                                           \
        }                                                                                       \
        CMP_CASES                                                                               \
        default: return 2;                                                                      \
        }                                                                                       \
    }

#define INT_BIN(TYPE, BITS, SIGNED)                                                             \
    {                                                                                           \
        typedef TYPE T;                                                                         \
        const T *pa = (const T *)a, *pb = (const T *)b;                                         \
        switch (fn) {                                                                           \
        case B_ADD: BLOOP(T, (T)(av + bv))                                                      \
        case B_SUB: BLOOP(T, (T)(av - bv))                                                      \
        case B_MUL: BLOOP(T, (T)(av * bv))                                                      \
        case B_MAX: BLOOP(T, av > bv ? av : bv)                                                 \
        case B_MIN: BLOOP(T, av < bv ? av : bv)                                                 \
        case B_BITAND: BLOOP(T, av & bv)                                                        \
        case B_BITOR: BLOOP(T, av | bv)                                                         \
        case B_BITXOR: BLOOP(T, av ^ bv)                                                        \
        case B_SHL: BLOOP(T, (bv < 0 || bv >= BITS) ? (T)0 : (T)(av << bv))                     \
        case B_SHR: BLOOP(T, (bv < 0 || bv >= BITS) ? (T)(SIGNED && av < 0 ? -1 : 0) : (T)(av >> bv)) \
        case B_FMOD: BLOOP(T, bv == 0 ? (T)0 : (T)(av % bv))                                    \
        case B_DIV: case B_MOD: {                                                               \
            T *py = (T *)y;                                                                     \
            for (int64_t i = 0; i < n; i++) {                                                   \
                T av = pa[i * sa], bv = pb[i * sb];                                             \
                if (bv == 0) return 1;                                                          \
                T r;                                                                            \
                if (fn == B_DIV) r = (T)(av / bv);                                              \
                else { r = (T)(av % bv); if (r != 0 && ((r < 0) != (bv < 0))) r = (T)(r + bv); } \
                py[i] = r;                                                                      \
            }                                                                                   \
            return 0;                                                                           \
        }                                                                                       \
        CMP_CASES                                                                               \
        default: return 2;                                                                      \
        }                                                                                       \
    }

/* returns 0 ok, 1 integer division by zero, 2 unsupported */
static int binary_row(int fn, int dt, const char *a, int64_t sa, const char *b, int64_t sb,
                      char *y, int64_t n) {
    switch (dt) {
    case D_F32:
        if ((sa == 0 || sa == 1) && (sb == 0 || sb == 1) &&
            wl_active->binary_f32(fn, (const float *)a, sa, (const float *)b, sb, (float *)y, n))
            return 0;
        FLOAT_BIN(float, fmodf, powf, atan2f)
    case D_F64: FLOAT_BIN(double, fmod, pow, atan2)
    case D_I8: INT_BIN(int8_t, 8, 1)
    case D_I16: INT_BIN(int16_t, 16, 1)
    case D_I32: INT_BIN(int32_t, 32, 1)
    case D_I64: INT_BIN(int64_t, 64, 1)
    case D_U8: INT_BIN(uint8_t, 8, 0)
    case D_U16: INT_BIN(uint16_t, 16, 0)
    case D_U32: INT_BIN(uint32_t, 32, 0)
    case D_U64: INT_BIN(uint64_t, 64, 0)
    case D_BOOL: {
        typedef uint8_t T;
        const T *pa = (const T *)a, *pb = (const T *)b;
        switch (fn) {
        case B_AND: case B_BITAND: BLOOP(uint8_t, av && bv)
        case B_OR: case B_BITOR: BLOOP(uint8_t, av || bv)
        case B_XOR: case B_BITXOR: BLOOP(uint8_t, (!av) != (!bv))
        case B_EQ: BLOOP(uint8_t, (!av) == (!bv))
        case B_MAX: BLOOP(uint8_t, av || bv)
        case B_MIN: BLOOP(uint8_t, av && bv)
        default: return 2;
        }
    }
    default: return 2;
    }
}

/* N-D iteration shared by Binary and Select: p[0] ndim, p[1..8] shape, operand strides at
 * p[9 + 8*i ..]. Rows are the last axis. */
typedef struct {
    const wl_op *op;
    const char *in[3];
    char *y;
    int64_t rows, chunk, esize_in, esize_out;
    int status;
} nd_ctx;

static void nd_task(void *vp, int64_t t) {
    nd_ctx *c = vp;
    const wl_op *op = c->op;
    int nd = (int)op->p[0];
    const int64_t *shape = op->p + 1;
    int64_t r0 = t * c->chunk, r1 = r0 + c->chunk < c->rows ? r0 + c->chunk : c->rows;
    int64_t last = shape[nd - 1];
    int nin = op->kind == WL_SELECT ? 3 : 2;
    for (int64_t r = r0; r < r1; r++) {
        int64_t rem = r, off[3] = {0, 0, 0};
        for (int d = nd - 2; d >= 0; d--) {
            int64_t idx = rem % shape[d];
            rem /= shape[d];
            for (int i = 0; i < nin; i++) off[i] += idx * op->p[9 + 8 * i + d];
        }
        int64_t s[3];
        for (int i = 0; i < nin; i++) s[i] = op->p[9 + 8 * i + nd - 1];
        char *y = c->y + r * last * c->esize_out;
        if (op->kind == WL_BINARY) {
            int st = binary_row(op->fn, op->dtype, c->in[0] + off[0] * c->esize_in, s[0],
                                c->in[1] + off[1] * c->esize_in, s[1], y, last);
            if (st) c->status = st;
        } else {
            const uint8_t *cond = (const uint8_t *)c->in[0] + off[0];
            const char *a = c->in[1] + off[1] * c->esize_in, *b = c->in[2] + off[2] * c->esize_in;
            switch (c->esize_in) {
#define SEL(T)                                                                                   \
    for (int64_t i = 0; i < last; i++)                                                           \
        ((T *)y)[i] = cond[i * s[0]] ? ((const T *)a)[i * s[1]] : ((const T *)b)[i * s[2]];      \
    break;
            case 1: SEL(uint8_t)
            case 2: SEL(uint16_t)
            case 4: SEL(uint32_t)
            case 8: SEL(uint64_t)
#undef SEL
            default: c->status = 2;
            }
        }
    }
}

/* ------------------------------------------------------------------ Cast */

#define CAST_LOOP(TS, TD, EXPR) \
    { const TS *s = (const TS *)x; TD *d = (TD *)y; for (int64_t i = 0; i < n; i++) { TS v = s[i]; d[i] = (TD)(EXPR); } } return 0;

#define IS_FLOAT_T(TS) ((TS)0.5 != 0)
#define CAST_TO(TS)                                                                              \
    switch (dto) {                                                                               \
    case D_F32: CAST_LOOP(TS, float, v)                                                          \
    case D_F64: CAST_LOOP(TS, double, v)                                                         \
    case D_I8: CAST_LOOP(TS, int8_t, v)                                                          \
    case D_I16: CAST_LOOP(TS, int16_t, v)                                                        \
    case D_I32: CAST_LOOP(TS, int32_t, v)                                                        \
    case D_I64: CAST_LOOP(TS, int64_t, v)                                                        \
    case D_U8: CAST_LOOP(TS, uint8_t, IS_FLOAT_T(TS) ? (uint8_t)(int64_t)v : (uint8_t)v)          \
    case D_U16: CAST_LOOP(TS, uint16_t, IS_FLOAT_T(TS) ? (uint16_t)(int64_t)v : (uint16_t)v)      \
    case D_U32: CAST_LOOP(TS, uint32_t, IS_FLOAT_T(TS) ? (uint32_t)(int64_t)v : (uint32_t)v)      \
    case D_U64: CAST_LOOP(TS, uint64_t, v)                                                       \
    case D_BOOL: CAST_LOOP(TS, uint8_t, v != 0)                                                  \
    default: return 2;                                                                           \
    }

static int cast_range(int dfrom, int dto, const char *x, char *y, int64_t n) {
    switch (dfrom) {
    case D_F32: CAST_TO(float)
    case D_F64: CAST_TO(double)
    case D_I8: CAST_TO(int8_t)
    case D_I16: CAST_TO(int16_t)
    case D_I32: CAST_TO(int32_t)
    case D_I64: CAST_TO(int64_t)
    case D_U8: CAST_TO(uint8_t)
    case D_U16: CAST_TO(uint16_t)
    case D_U32: CAST_TO(uint32_t)
    case D_U64: CAST_TO(uint64_t)
    case D_BOOL: CAST_TO(uint8_t)
    default: return 2;
    }
}

/* ------------------------------------------------------------------ Reduce */

typedef struct {
    const wl_op *op;
    const char *x;
    char *y;
    int64_t chunk; /* outer indices per task of reduce_chunk_task */
} red_ctx;

#define NANMAX(acc, v) if ((v) > (acc) || (v) != (v)) acc = (v)
#define NANMIN(acc, v) if ((v) < (acc) || (v) != (v)) acc = (v)

#define REDUCE_T(T, ACC)                                                                        \
    {                                                                                           \
        const T *x = (const T *)c->x + o * nn * inner;                                          \
        if (fn == R_ARGMAX || fn == R_ARGMIN) {                                                 \
            int64_t *y = (int64_t *)c->y + o * inner;                                           \
            for (int64_t i = 0; i < inner; i++) {                                               \
                int64_t best = last ? nn - 1 : 0;                                               \
                T bv = x[best * inner + i];                                                     \
                for (int64_t s = 1; s < nn; s++) {                                              \
                    int64_t j = last ? nn - 1 - s : s;                                          \
                    T v = x[j * inner + i];                                                     \
                    int better = fn == R_ARGMAX ? (v > bv || (v != v && bv == bv))              \
                                                : (v < bv || (v != v && bv == bv));              \
                    if (better) { bv = v; best = j; }                                           \
                }                                                                               \
                y[i] = best;                                                                    \
            }                                                                                   \
            return;                                                                             \
        }                                                                                       \
        if (fn == R_CUMSUM || fn == R_CUMPROD) {                                                \
            T *y = (T *)c->y + o * nn * inner;                                                  \
            for (int64_t i = 0; i < inner; i++) {                                               \
                T acc = fn == R_CUMSUM ? (T)0 : (T)1;                                           \
                for (int64_t j = 0; j < nn; j++) {                                              \
                    acc = fn == R_CUMSUM ? (T)(acc + x[j * inner + i]) : (T)(acc * x[j * inner + i]); \
                    y[j * inner + i] = acc;                                                     \
                }                                                                               \
            }                                                                                   \
            return;                                                                             \
        }                                                                                       \
        T *y = (T *)c->y + o * inner;                                                           \
        if (inner == 1) {                                                                       \
            ACC acc = fn == R_PROD ? (ACC)1 : (ACC)0;                                           \
            if (fn == R_MAX || fn == R_MIN) acc = (ACC)x[0];                                    \
            for (int64_t j = 0; j < nn; j++) {                                                  \
                ACC v = (ACC)x[j];                                                              \
                if (fn == R_SUM) acc += v;                                                      \
                else if (fn == R_PROD) acc *= v;                                                \
                else if (fn == R_MAX) { NANMAX(acc, v); }                                       \
                else { NANMIN(acc, v); }                                                        \
            }                                                                                   \
            y[0] = (T)acc;                                                                      \
            return;                                                                             \
        }                                                                                       \
        for (int64_t i = 0; i < inner; i++)                                                     \
            y[i] = fn == R_SUM ? (T)0 : fn == R_PROD ? (T)1 : x[i];                             \
        for (int64_t j = 0; j < nn; j++) {                                                      \
            const T *xr = x + j * inner;                                                        \
            if (fn == R_SUM) for (int64_t i = 0; i < inner; i++) y[i] = (T)(y[i] + xr[i]);      \
            else if (fn == R_PROD) for (int64_t i = 0; i < inner; i++) y[i] = (T)(y[i] * xr[i]); \
            else if (fn == R_MAX) for (int64_t i = 0; i < inner; i++) { NANMAX(y[i], xr[i]); }  \
            else for (int64_t i = 0; i < inner; i++) { NANMIN(y[i], xr[i]); }                   \
        }                                                                                       \
        return;                                                                                 \
    }

static void reduce_task(void *vp, int64_t o) {
    red_ctx *c = vp;
    const wl_op *op = c->op;
    int64_t nn = op->p[1], inner = op->p[2];
    int fn = op->fn, last = (int)op->p[3];
    if (op->dtype == D_F32 && inner == 1 && (fn == R_SUM || fn == R_MAX || fn == R_MIN)) {
        ((float *)c->y)[o] = (float)wl_active->reduce_f32(fn, (const float *)c->x + o * nn, nn);
        return;
    }
    switch (op->dtype) {
    case D_F32: REDUCE_T(float, double)
    case D_F64: REDUCE_T(double, double)
    case D_I8: REDUCE_T(int8_t, int8_t)
    case D_I16: REDUCE_T(int16_t, int16_t)
    case D_I32: REDUCE_T(int32_t, int32_t)
    case D_I64: REDUCE_T(int64_t, int64_t)
    case D_U8: REDUCE_T(uint8_t, uint8_t)
    case D_U16: REDUCE_T(uint16_t, uint16_t)
    case D_U32: REDUCE_T(uint32_t, uint32_t)
    case D_U64: REDUCE_T(uint64_t, uint64_t)
    default: return;
    }
}

static void reduce_chunk_task(void *vp, int64_t t) {
    red_ctx *c = vp;
    int64_t o0 = t * c->chunk, o1 = o0 + c->chunk < c->op->p[0] ? o0 + c->chunk : c->op->p[0];
    for (int64_t o = o0; o < o1; o++) reduce_task(vp, o);
}

/* ------------------------------------------------------------------ Pool2D */

typedef struct {
    const wl_op *op;
    const float *x;
    float *y;
} pool_ctx;

static void pool_task(void *vp, int64_t t) {
    pool_ctx *c = vp;
    const int64_t *p = c->op->p;
    int64_t H = p[2], W = p[3], OH = p[4], OW = p[5], KH = p[6], KW = p[7], SH = p[8], SW = p[9];
    int64_t PT = p[10], PL = p[11], PB = p[12], PR = p[13], DH = p[14], DW = p[15];
    int fn = (int)p[16], cip = (int)p[17];
    double lp = (double)p[18];
    const float *x = c->x + t * H * W;
    float *y = c->y + t * OH * OW;
    if (fn == P_MAX && SW > 1 && W <= 8192) {
        /* strided windows: the max over the KH input rows first (contiguous, vectorises), then
         * KW strided taps of that row instead of KH * KW strided taps per output */
        float vm[W];
        for (int64_t oy = 0; oy < OH; oy++) {
            float *yr = y + oy * OW;
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] = -INFINITY;
            int any = 0;
            for (int64_t ky = 0; ky < KH; ky++) {
                int64_t iy = oy * SH - PT + ky * DH;
                if (iy < 0 || iy >= H) continue;
                const float *xr = x + iy * W;
                if (!any) {
                    memcpy(vm, xr, sizeof(float) * (size_t)W);
                    any = 1;
                    continue;
                }
                for (int64_t ix = 0; ix < W; ix++) {
                    float v = xr[ix], m = vm[ix];
                    vm[ix] = (v > m || v != v) ? v : m;
                }
            }
            if (!any) continue;
            for (int64_t kx = 0; kx < KW; kx++) {
                int64_t off = kx * DW - PL; /* ix = ox * SW + off */
                int64_t lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
                int64_t hi = (W - 1 - off) < 0 ? 0 : (W - 1 - off) / SW + 1;
                if (hi > OW) hi = OW;
                for (int64_t ox = lo; ox < hi; ox++) {
                    float v = vm[ox * SW + off], m = yr[ox];
                    yr[ox] = (v > m || v != v) ? v : m;
                }
            }
        }
        return;
    }
    if (fn == P_MAX) {
        /* row-wise: for each kernel tap, the output columns whose input is in bounds form one
         * interval, so the inner loop is branch-free (and vectorises when SW == 1) */
        for (int64_t oy = 0; oy < OH; oy++) {
            float *yr = y + oy * OW;
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] = -INFINITY;
            for (int64_t ky = 0; ky < KH; ky++) {
                int64_t iy = oy * SH - PT + ky * DH;
                if (iy < 0 || iy >= H) continue;
                const float *xr = x + iy * W;
                for (int64_t kx = 0; kx < KW; kx++) {
                    int64_t off = kx * DW - PL; /* ix = ox * SW + off */
                    int64_t lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
                    int64_t hi = (W - 1 - off) < 0 ? 0 : (W - 1 - off) / SW + 1;
                    if (hi > OW) hi = OW;
                    if (SW == 1) {
                        const float *xs = xr + off;
                        for (int64_t ox = lo; ox < hi; ox++) {
                            float v = xs[ox], m = yr[ox];
                            yr[ox] = (v > m || v != v) ? v : m;
                        }
                    } else {
                        for (int64_t ox = lo; ox < hi; ox++) {
                            float v = xr[ox * SW + off], m = yr[ox];
                            yr[ox] = (v > m || v != v) ? v : m;
                        }
                    }
                }
            }
        }
        return;
    }
    for (int64_t oy = 0; oy < OH; oy++) {
        for (int64_t ox = 0; ox < OW; ox++) {
            float m = -INFINITY;
            double s = 0;
            int64_t valid = 0, padded = 0;
            for (int64_t ky = 0; ky < KH; ky++) {
                int64_t iy = oy * SH - PT + ky * DH;
                int yin = iy >= 0 && iy < H, yp = iy >= -PT && iy < H + PB;
                for (int64_t kx = 0; kx < KW; kx++) {
                    int64_t ix = ox * SW - PL + kx * DW;
                    int xin = ix >= 0 && ix < W, xp = ix >= -PL && ix < W + PR;
                    padded += yp && xp;
                    if (!(yin && xin)) continue;
                    valid++;
                    float v = x[iy * W + ix];
                    if (fn == P_MAX) { NANMAX(m, v); }
                    else if (fn == P_AVG) s += v;
                    else {
                        double av = fabs((double)v);
                        s += lp == 2 ? av * av : lp == 1 ? av : pow(av, lp);
                    }
                }
            }
            float r;
            if (fn == P_MAX) r = m;
            else if (fn == P_AVG) {
                int64_t cnt = cip ? padded : valid;
                r = (float)(s / (double)(cnt > 1 ? cnt : 1));
            } else r = (float)(lp == 2 ? sqrt(s) : lp == 1 ? s : pow(s, 1.0 / lp));
            y[oy * OW + ox] = r;
        }
    }
}

/* ------------------------------------------------------------------ Sort (stable merge sort) */

typedef struct {
    const wl_op *op;
    const char *x;
    int64_t *y;
} sort_ctx;

#define SORT_T(T)                                                                               \
    {                                                                                           \
        const T *x = (const T *)c->x;                                                           \
        T *v = (T *)buf;                                                                        \
        T *v2 = v + nn;                                                                         \
        int64_t *ix = (int64_t *)(v2 + nn), *ix2 = ix + nn;                                     \
        for (int64_t j = 0; j < nn; j++) { v[j] = x[(o * nn + j) * inner + i]; ix[j] = j; }     \
        for (int64_t w = 1; w < nn; w *= 2) {                                                   \
            for (int64_t lo = 0; lo < nn; lo += 2 * w) {                                        \
                int64_t mid = lo + w < nn ? lo + w : nn, hi = lo + 2 * w < nn ? lo + 2 * w : nn; \
                int64_t a = lo, b = mid, k = lo;                                                \
                while (a < mid && b < hi) {                                                     \
                    T va = v[a], vb = v[b];                                                     \
                    int take_b = desc ? (vb > va || (va != va && vb == vb))                     \
                                      : (vb < va || (va != va && vb == vb));                     \
                    if (take_b) { v2[k] = vb; ix2[k++] = ix[b++]; }                             \
                    else { v2[k] = va; ix2[k++] = ix[a++]; }                                    \
                }                                                                               \
                while (a < mid) { v2[k] = v[a]; ix2[k++] = ix[a++]; }                           \
                while (b < hi) { v2[k] = v[b]; ix2[k++] = ix[b++]; }                            \
            }                                                                                   \
            T *tv = v; v = v2; v2 = tv;                                                         \
            int64_t *ti = ix; ix = ix2; ix2 = ti;                                               \
        }                                                                                       \
        for (int64_t j = 0; j < nn; j++) c->y[(o * nn + j) * inner + i] = ix[j];                \
    }                                                                                           \
    break;

static void sort_task(void *vp, int64_t t) {
    sort_ctx *c = vp;
    const wl_op *op = c->op;
    int64_t nn = op->p[1], inner = op->p[2];
    int desc = (int)op->p[3];
    int64_t o = t / inner, i = t % inner;
    char *buf = wl_scratch(1, (size_t)nn * 32 + 64);
    if (!buf) return;
    switch (op->dtype) {
    case D_F32: SORT_T(float)
    case D_F64: SORT_T(double)
    case D_I8: SORT_T(int8_t)
    case D_I16: SORT_T(int16_t)
    case D_I32: SORT_T(int32_t)
    case D_I64: SORT_T(int64_t)
    case D_U8: SORT_T(uint8_t)
    case D_U16: SORT_T(uint16_t)
    case D_U32: SORT_T(uint32_t)
    case D_U64: SORT_T(uint64_t)
    case D_BOOL: SORT_T(uint8_t)
    default: break;
    }
}

/* ------------------------------------------------------------------ GatherScatter */

typedef struct {
    const char *data;
    const int64_t *idx;
    char *y;
    int64_t rows, row_bytes, chunk, k;
} gather_ctx;

static void gather_task(void *vp, int64_t t) {
    gather_ctx *c = vp;
    int64_t i0 = t * c->chunk, i1 = i0 + c->chunk < c->k ? i0 + c->chunk : c->k;
    for (int64_t i = i0; i < i1; i++) {
        int64_t r = c->idx[i] < 0 ? c->idx[i] + c->rows : c->idx[i];
        memcpy(c->y + i * c->row_bytes, c->data + r * c->row_bytes, (size_t)c->row_bytes);
    }
}

#define SCATTER_T(T)                                                                            \
    {                                                                                           \
        T *o = (T *)out;                                                                        \
        const T *u = (const T *)upd;                                                            \
        for (int64_t i = 0; i < k; i++) {                                                       \
            int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];                                    \
            T *d = o + r * block;                                                               \
            const T *s = u + i * block;                                                         \
            for (int64_t j = 0; j < block; j++) {                                               \
                if (red == 1) d[j] = (T)(d[j] + s[j]);                                          \
                else if (red == 2) d[j] = (T)(d[j] * s[j]);                                     \
                else if (red == 3) { NANMAX(d[j], s[j]); }                                      \
                else { NANMIN(d[j], s[j]); }                                                    \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    break;

/* ------------------------------------------------------------------ Raster */

typedef struct {
    const int64_t *r;
    const char *src;
    char *dst;
    int64_t esize, chunk, nrows;
} raster_ctx;

static void raster_rows(const int64_t *r, const char *src, char *dst, int64_t es, int64_t q0,
                        int64_t q1) {
    int64_t ss0 = r[2], ss1 = r[3], ss2 = r[4], ds0 = r[6], ds1 = r[7], ds2 = r[8];
    int64_t n1 = r[10], n2 = r[11];
    src += r[1] * es;
    dst += r[5] * es;
    if (q0 >= q1) return;
    /* rows q = z * n1 + y, walked without a division per row */
    int64_t z = q0 / n1, yy = q0 % n1;
    int swap = n2 < 8 && n1 >= 4 * n2 && ds1 != 0 && ds2 != 0;       /* short rows */
    int tr = es == 4 && ss1 == 1 && ss2 != 1 && ds2 == 1 && n1 >= 8 && n2 >= 8; /* transpose */
    if (swap || tr) {
        /* a pure copy with distinct destinations may go in any order: short rows run with y
         * innermost; a transpose (y contiguous in the source, x in the destination) runs in
         * blocks of 16 y so that both sides stay within a few cache lines */
        for (int64_t zz = z; zz * n1 < q1; zz++) {
            int64_t ylo = zz == z ? yy : 0, yhi = (zz + 1) * n1 <= q1 ? n1 : q1 - zz * n1;
            const char *sz = src + zz * ss0 * es;
            char *dz = dst + zz * ds0 * es;
            if (tr) {
                /* tiles of 16 y x 64 x; inside a tile the inner loop runs along the side whose
                 * other stride is larger, so those lines are written (or read) whole in one go
                 * (the plane strides of a layout change are often multiples of 4 KiB, which
                 * the L1 cache cannot hold 16 partial lines of) */
                const uint32_t *s32 = (const uint32_t *)sz;
                uint32_t *d32 = (uint32_t *)dz;
                for (int64_t y0 = ylo; y0 < yhi; y0 += 16) {
                    int64_t y1 = y0 + 16 < yhi ? y0 + 16 : yhi;
                    for (int64_t x0 = 0; x0 < n2; x0 += 64) {
                        int64_t x1 = x0 + 64 < n2 ? x0 + 64 : n2;
                        if (ds1 > ss2) {
                            for (int64_t y = y0; y < y1; y++)
                                for (int64_t x = x0; x < x1; x++) d32[y * ds1 + x] = s32[y + x * ss2];
                        } else {
                            for (int64_t x = x0; x < x1; x++)
                                for (int64_t y = y0; y < y1; y++) d32[y * ds1 + x] = s32[y + x * ss2];
                        }
                    }
                }
                continue;
            }
            for (int64_t x = 0; x < n2; x++) {
                const char *s = sz + x * ss2 * es;
                char *d = dz + x * ds2 * es;
                switch (es) {
#define RY(T) for (int64_t y = ylo; y < yhi; y++) ((T *)d)[y * ds1] = ((const T *)s)[y * ss1]; break;
                case 1: RY(uint8_t)
                case 2: RY(uint16_t)
                case 4: RY(uint32_t)
                case 8: RY(uint64_t)
                default:
                    for (int64_t y = ylo; y < yhi; y++) memcpy(d + y * ds1 * es, s + y * ss1 * es, (size_t)es);
#undef RY
                }
            }
        }
        return;
    }
    for (int64_t q = q0; q < q1; q++) {
        const char *s = src + (z * ss0 + yy * ss1) * es;
        char *d = dst + (z * ds0 + yy * ds1) * es;
        if (++yy == n1) { yy = 0; z++; }
        if (ss2 == 1 && ds2 == 1) {
            memcpy(d, s, (size_t)(n2 * es));
            continue;
        }
        switch (es) {
#define RC(T) for (int64_t x = 0; x < n2; x++) ((T *)d)[x * ds2] = ((const T *)s)[x * ss2]; break;
        case 1: RC(uint8_t)
        case 2: RC(uint16_t)
        case 4: RC(uint32_t)
        case 8: RC(uint64_t)
        default:
            for (int64_t x = 0; x < n2; x++) memcpy(d + x * ds2 * es, s + x * ss2 * es, (size_t)es);
#undef RC
        }
    }
}

static void raster_task(void *vp, int64_t t) {
    raster_ctx *c = vp;
    int64_t q0 = t * c->chunk, q1 = q0 + c->chunk < c->nrows ? q0 + c->chunk : c->nrows;
    raster_rows(c->r, c->src, c->dst, c->esize, q0, q1);
}

/* The same region split by columns (x): every task runs all rows over its columns. A transpose
 * with few rows (a layout change of 8 channels) would otherwise give each task one row, and
 * each would read every source line for one element of it. */
static void raster_col_task(void *vp, int64_t t) {
    raster_ctx *c = vp;
    int64_t r[12];
    memcpy(r, c->r, sizeof r);
    int64_t x0 = t * c->chunk, x1 = x0 + c->chunk < r[11] ? x0 + c->chunk : r[11];
    r[1] += x0 * r[4];
    r[5] += x0 * r[8];
    r[11] = x1 - x0;
    raster_rows(r, c->src, c->dst, c->esize, 0, c->nrows);
}

/* ------------------------------------------------------------------ softmax / log_softmax */
/* x viewed as (outer, n, inner), over n: y = exp(x - max) / sum, or (x - max) - log(sum), with
 * the kernels (and order of operations) of the expansion: max and sum as Reduce computes
 * them, exp as Unary does. A line with inner > 1 is gathered into a scratch row first. */
typedef struct {
    const wl_op *op;
    const float *x;
    float *y;
    int64_t chunk;
    int failed;
} softmax_ctx;

/* e: n floats of scratch for log_softmax's exponentials (NULL for softmax) */
static void softmax_line(float *e, const float *x, float *y, int64_t n) {
    static const double noprm[4] = {0, 0, 0, 0};
    float m = (float)wl_active->reduce_f32(R_MAX, x, n);
    wl_active->binary_f32(B_SUB, x, 1, &m, 0, y, n);
    if (e) {
        wl_active->unary_f32(U_EXP, y, e, n, noprm);
        float l = logf((float)wl_active->reduce_f32(R_SUM, e, n));
        wl_active->binary_f32(B_SUB, y, 1, &l, 0, y, n);
        return;
    }
    wl_active->unary_f32(U_EXP, y, y, n, noprm);
    float s = (float)wl_active->reduce_f32(R_SUM, y, n);
    wl_active->binary_f32(B_DIV, y, 1, &s, 0, y, n);
}

static void softmax_task(void *vp, int64_t t) {
    softmax_ctx *c = vp;
    const int64_t *p = c->op->p;
    int64_t n = p[1], inner = p[2], lines = p[0] * inner;
    float *row = inner > 1 ? wl_scratch(1, sizeof(float) * (size_t)(2 * n)) : NULL;
    float *e = p[3] ? wl_scratch(2, sizeof(float) * (size_t)(n > 0 ? n : 1)) : NULL;
    if ((inner > 1 && !row) || (p[3] && !e)) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t l = t * c->chunk; l < lines && l < (t + 1) * c->chunk; l++) {
        int64_t o = l / inner, i = l % inner;
        const float *x = c->x + o * n * inner + i;
        float *y = c->y + o * n * inner + i;
        if (inner == 1) {
            softmax_line(e, x, y, n);
            continue;
        }
        for (int64_t j = 0; j < n; j++) row[j] = x[j * inner];
        softmax_line(e, row, row + n, n);
        for (int64_t j = 0; j < n; j++) y[j * inner] = row[n + j];
    }
}

/* ------------------------------------------------------------------ fused element-wise chain */
/* aux: int64 steps[n_steps * 4] = (kind, fn, operand, unused); f-params in aux2 as double[4*n].
 * kind 0: unary fn on the register; kind 1: reg = reg (fn) operand; kind 2: reg = operand (fn) reg.
 * Operands (ins[1..]) are f32 with per-axis strides given like Binary at p[9 + 8*i]. */
#define CHAIN_BLOCK 512

typedef struct {
    const wl_op *op;
    char **slots;
    int64_t rows, chunk;  /* rows, rows per task */
    int64_t cols, cchunk; /* columns, columns per task (a row is split when rows are few) */
} chain_ctx;

static void chain_task(void *vp, int64_t t) {
    chain_ctx *c = vp;
    const wl_op *op = c->op;
    int nd = (int)op->p[0];
    const int64_t *shape = op->p + 1;
    int64_t last = shape[nd - 1];
    const int64_t *steps = (const int64_t *)op->aux;
    const double *prm = (const double *)op->aux2;
    int nsteps = (int)op->p[53];
    int nin = op->n_in;
    float reg[CHAIN_BLOCK];
    int64_t cblocks = (last + c->cchunk - 1) / c->cchunk, cb = t % cblocks;
    t /= cblocks;
    int64_t r0 = t * c->chunk, r1 = r0 + c->chunk < c->rows ? r0 + c->chunk : c->rows;
    int64_t c0 = cb * c->cchunk, c1 = c0 + c->cchunk < last ? c0 + c->cchunk : last;
    float *yb = (float *)(c->slots[op->out.slot] + op->out.off);
    for (int64_t r = r0; r < r1; r++) {
        int64_t rem = r, off[5] = {0, 0, 0, 0, 0};
        for (int d = nd - 2; d >= 0; d--) {
            int64_t idx = rem % shape[d];
            rem /= shape[d];
            for (int i = 0; i < nin; i++) off[i] += idx * op->p[9 + 8 * i + d];
        }
        const float *base[5];
        int64_t s[5];
        for (int i = 0; i < nin; i++) {
            base[i] = (const float *)(c->slots[op->ins[i].slot] + op->ins[i].off) + off[i];
            s[i] = op->p[9 + 8 * i + nd - 1];
        }
        float *y = yb + r * last;
        for (int64_t x0 = c0; x0 < c1; x0 += CHAIN_BLOCK) {
            int64_t nb = c1 - x0 < CHAIN_BLOCK ? c1 - x0 : CHAIN_BLOCK;
            if (s[0] == 1) memcpy(reg, base[0] + x0, (size_t)nb * 4);
            else for (int64_t i = 0; i < nb; i++) reg[i] = base[0][(x0 + i) * s[0]];
            for (int st = 0; st < nsteps; st++) {
                int kind = (int)steps[st * 4], fn = (int)steps[st * 4 + 1], oi = (int)steps[st * 4 + 2];
                if (kind == 0) {
                    wl_active->unary_f32(fn, reg, reg, nb, prm + st * 4);
                } else {
                    const float *ob = base[oi] + x0 * s[oi];
                    int64_t so = s[oi];
                    if (so > 1) {  /* rare: gather the operand first */
                        float tmp[CHAIN_BLOCK];
                        for (int64_t i = 0; i < nb; i++) tmp[i] = ob[i * so];
                        if (kind == 1) binary_row(fn, D_F32, (const char *)reg, 1, (const char *)tmp, 1, (char *)reg, nb);
                        else binary_row(fn, D_F32, (const char *)tmp, 1, (const char *)reg, 1, (char *)reg, nb);
                    } else if (kind == 1) {
                        binary_row(fn, D_F32, (const char *)reg, 1, (const char *)ob, so, (char *)reg, nb);
                    } else {
                        binary_row(fn, D_F32, (const char *)ob, so, (const char *)reg, 1, (char *)reg, nb);
                    }
                }
            }
            memcpy(y + x0, reg, (size_t)nb * 4);
        }
    }
}

/* ------------------------------------------------------------------ executor */

#define PTR(ref) (slots[(ref).slot] + (ref).off)

static int run_op(const wl_op *op, int oi, char **slots, int nthreads, char *err, int errlen);

/* Debug profiling (WALLE_CPU_PROFILE tooling): when set, wl_run adds each op's wall time in
 * seconds to prof[op index]. Not thread-safe by design: profile one run at a time. */
static double *prof = NULL;
void wl_set_profile(double *buf) { prof = buf; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int wl_run(const wl_op *ops, int n_ops, char **slots, int nthreads, char *err, int errlen) {
    if (nthreads < 1) nthreads = 1;
    double *pb = prof;
    for (int oi = 0; oi < n_ops; oi++) {
        double t0 = pb ? now_s() : 0.0;
        int rc = run_op(&ops[oi], oi, slots, nthreads, err, errlen);
        if (rc) return rc;
        if (pb) pb[oi] += now_s() - t0;
    }
    return 0;
}

static int run_op(const wl_op *op, int oi, char **slots, int nthreads, char *err, int errlen) {
    {
        char *y = PTR(op->out);
        switch (op->kind) {
        case WL_RASTER: {
            int64_t es = op->p[1], total = op->p[3];
            if (op->p[2]) {
                int64_t fill = op->p[4];
                switch (es) {
                case 1: memset(y, (int)(fill & 0xff), (size_t)total); break;
#define FILL(T) { T v; memcpy(&v, &fill, sizeof v); for (int64_t i = 0; i < total; i++) ((T *)y)[i] = v; } break;
                case 2: FILL(uint16_t)
                case 4: FILL(uint32_t)
                case 8: FILL(uint64_t)
#undef FILL
                default: break;
                }
            }
            const int64_t *regs = (const int64_t *)op->aux;
            for (int64_t ri = 0; ri < op->p[0]; ri++) {
                const int64_t *r = regs + ri * 12;
                const char *src = PTR(op->ins[r[0]]);
                int64_t nrows = r[9] * r[10], elems = nrows * r[11];
                if (nthreads > 1 && elems * es >= 262144 && nrows < 8 * nthreads && r[11] >= 64 * nthreads) {
                    raster_ctx rc = {r, src, y, es, 0, nrows};
                    int64_t tasks = chunks_for(r[11], 64, nthreads, &rc.chunk);
                    wl_parallel_for(tasks, raster_col_task, &rc, nthreads);
                } else if (nthreads > 1 && elems * es >= 262144 && nrows > 1) {
                    raster_ctx rc = {r, src, y, es, 0, nrows};
                    int64_t tasks = chunks_for(nrows, 1, nthreads, &rc.chunk);
                    wl_parallel_for(tasks, raster_task, &rc, nthreads);
                } else {
                    raster_rows(r, src, y, es, 0, nrows);
                }
            }
            break;
        }
        case WL_UNARY: {
            un_ctx c = {op, PTR(op->ins[0]), y, op->p[0], 0};
            int64_t tasks = chunks_for(c.n, 32768, nthreads, &c.chunk);
            wl_parallel_for(tasks, unary_task, &c, nthreads);
            break;
        }
        case WL_BINARY:
        case WL_SELECT: {
            nd_ctx c;
            c.op = op;
            c.y = y;
            for (int i = 0; i < op->n_in; i++) c.in[i] = PTR(op->ins[i]);
            c.rows = op->p[50];
            c.esize_in = op->p[51];
            c.esize_out = op->p[52];
            c.status = 0;
            int64_t total = c.rows * op->p[(int)op->p[0]];
            int64_t tasks = total >= 65536 ? chunks_for(c.rows, 1, nthreads, &c.chunk)
                                           : (c.chunk = c.rows, 1);
            wl_parallel_for(tasks, nd_task, &c, nthreads);
            if (c.status == 1) {
                snprintf(err, errlen, "integer division by zero");
                return oi + 1;
            }
            if (c.status) {
                snprintf(err, errlen, "unsupported element-wise function %d for dtype %d", op->fn, op->dtype);
                return oi + 1;
            }
            break;
        }
        case WL_CHAIN: {
            int64_t last = op->p[(int)op->p[0]];
            chain_ctx c = {op, slots, op->p[50], 0, last, last};
            int64_t total = c.rows * last, tasks = 1;
            if (total < 32768) {
                c.chunk = c.rows;
            } else if (c.rows >= 2 * nthreads) {
                tasks = chunks_for(c.rows, 1, nthreads, &c.chunk);
            } else { /* few long rows (collapsed dims): split the columns too */
                c.chunk = 1;
                int64_t per = (4 * nthreads + c.rows - 1) / c.rows; /* column blocks per row */
                c.cchunk = ((last + per - 1) / per + CHAIN_BLOCK - 1) / CHAIN_BLOCK * CHAIN_BLOCK;
                tasks = c.rows * ((last + c.cchunk - 1) / c.cchunk);
            }
            wl_parallel_for(tasks, chain_task, &c, nthreads);
            break;
        }
        case WL_SOFTMAX: {
            softmax_ctx c = {op, (const float *)PTR(op->ins[0]), (float *)y, 0};
            int64_t lines = op->p[0] * op->p[2];
            int64_t tasks = op->p[0] * op->p[1] * op->p[2] >= 32768
                                ? chunks_for(lines, 1, nthreads, &c.chunk)
                                : (c.chunk = lines, 1);
            wl_parallel_for(tasks, softmax_task, &c, nthreads);
            if (c.failed) {
                snprintf(err, errlen, "out of memory in softmax");
                return oi + 1;
            }
            break;
        }
        case WL_LSTM_CELL: {
            /* (gates iofc, c_prev; c_out as ins[2]) -> h: c = f*c_prev + i*tanh(g), h = o*tanh(c),
             * with the same kernels (and order of operations) as the expanded cell */
            int64_t B = op->p[0], H = op->p[1];
            const float *g = (const float *)PTR(op->ins[0]), *cp = (const float *)PTR(op->ins[1]);
            float *co = (float *)PTR(op->ins[2]), *h = (float *)y;
            float *t = wl_scratch(1, sizeof(float) * (size_t)(5 * H + 1));
            if (!t) {
                snprintf(err, errlen, "out of memory in an LSTM cell");
                return oi + 1;
            }
            static const double noprm[4] = {0, 0, 0, 0};
            for (int64_t b = 0; b < B; b++) {
                const float *gb = g + b * 4 * H;
                wl_active->unary_f32(U_SIGMOID, gb, t, 3 * H, noprm);     /* i, o, f */
                wl_active->unary_f32(U_TANH, gb + 3 * H, t + 3 * H, H, noprm);
                for (int64_t j = 0; j < H; j++)
                    co[b * H + j] = t[2 * H + j] * cp[b * H + j] + t[j] * t[3 * H + j];
                wl_active->unary_f32(U_TANH, co + b * H, t + 4 * H, H, noprm);
                for (int64_t j = 0; j < H; j++) h[b * H + j] = t[H + j] * t[4 * H + j];
            }
            break;
        }
        case WL_CAST:
            if (cast_range(op->dtype, op->dtype2, PTR(op->ins[0]), y, op->p[0])) {
                snprintf(err, errlen, "unsupported cast %d -> %d", op->dtype, op->dtype2);
                return oi + 1;
            }
            break;
        case WL_REDUCE: {
            int64_t per = op->p[1] * op->p[2]; /* elements read per outer index */
            red_ctx c = {op, PTR(op->ins[0]), y, 1};
            int nt = op->p[0] * per >= 65536 ? nthreads : 1;
            /* group outer indices into tasks of >= ~8K elements: a task per small slice costs
             * more in scheduling than its reduction */
            if (per < 8192) c.chunk = (8192 + per - 1) / (per > 0 ? per : 1);
            if (nt > 1 && c.chunk * nt * 4 > op->p[0]) c.chunk = (op->p[0] + nt * 4 - 1) / (nt * 4);
            if (c.chunk < 1) c.chunk = 1;
            if (c.chunk == 1) wl_parallel_for(op->p[0], reduce_task, &c, nt);
            else wl_parallel_for((op->p[0] + c.chunk - 1) / c.chunk, reduce_chunk_task, &c, nt);
            break;
        }
        case WL_MATMUL:
            if (wl_matmul(op, (const float *)PTR(op->ins[0]), (const float *)PTR(op->ins[1]),
                          op->p[8] ? (const float *)PTR(op->ins[2]) : NULL,
                          op->p[12] ? (const float *)PTR(op->ins[op->p[12]]) : NULL, (float *)y,
                          nthreads, err, errlen))
                return oi + 1;
            break;
        case WL_CONV:
            if (op->algo == C_NCHWC) {
                if (wl_conv_nchwc(op, (const float *)PTR(op->ins[0]),
                                  op->p[19] ? (const float *)PTR(op->ins[op->p[19]]) : NULL,
                                  (float *)y, nthreads, err, errlen))
                    return oi + 1;
                break;
            }
            if (wl_conv(op, (const float *)PTR(op->ins[0]), (const float *)PTR(op->ins[1]),
                        op->p[16] ? (const float *)PTR(op->ins[2]) : NULL,
                        op->p[19] ? (const float *)PTR(op->ins[op->p[19]]) : NULL, (float *)y,
                        nthreads, err, errlen))
                return oi + 1;
            break;
        case WL_POOL: {
            if (op->p[19]) {
                wl_pool_nchwc(op, (const float *)PTR(op->ins[0]), (float *)y, nthreads);
                break;
            }
            pool_ctx c = {op, (const float *)PTR(op->ins[0]), (float *)y};
            wl_parallel_for(op->p[0] * op->p[1], pool_task, &c, nthreads);
            break;
        }
        case WL_SORT: {
            sort_ctx c = {op, PTR(op->ins[0]), (int64_t *)y};
            wl_parallel_for(op->p[0] * op->p[2], sort_task, &c, op->p[1] >= 64 ? nthreads : 1);
            break;
        }
        case WL_GATHER: {
            int64_t mode = op->p[0], rows = op->p[1], block = op->p[2], k = op->p[3], es = op->p[4];
            int red = (int)op->p[5];
            const int64_t *idx = (const int64_t *)PTR(op->ins[1]);
            for (int64_t i = 0; i < k; i++) {
                if (idx[i] < -rows || idx[i] >= rows) {
                    snprintf(err, errlen, "index %lld out of range [%lld, %lld) in %s",
                             (long long)idx[i], (long long)-rows, (long long)rows,
                             mode ? "scatter" : "gather");
                    return oi + 1;
                }
            }
            const char *data = PTR(op->ins[0]);
            if (mode == 0) {
                gather_ctx c = {data, idx, y, rows, block * es, 0, k};
                int64_t tasks = k * block * es >= 262144 ? chunks_for(k, 1, nthreads, &c.chunk)
                                                          : (c.chunk = k, 1);
                wl_parallel_for(tasks, gather_task, &c, nthreads);
                break;
            }
            if (y != data) memcpy(y, data, (size_t)(rows * block * es));
            const char *upd = PTR(op->ins[2]);
            char *out = y;
            if (red == 0) {
                for (int64_t i = 0; i < k; i++) {
                    int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];
                    memcpy(out + r * block * es, upd + i * block * es, (size_t)(block * es));
                }
                break;
            }
            switch (op->dtype) {
            case D_F32: SCATTER_T(float)
            case D_F64: SCATTER_T(double)
            case D_I32: SCATTER_T(int32_t)
            case D_I64: SCATTER_T(int64_t)
            default:
                snprintf(err, errlen, "unsupported scatter reduction dtype %d", op->dtype);
                return oi + 1;
            }
            break;
        }
        default:
            snprintf(err, errlen, "unknown op kind %d", op->kind);
            return oi + 1;
        }
    }
    return 0;
}
