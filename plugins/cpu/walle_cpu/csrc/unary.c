/* Unary: every unary function for float32, float64, the integers and bool. fp32 runs the active
 * ISA's vector loops (isa/elementwise.inc), which fall back to the scalar loops here for rare
 * functions. */
#include <math.h>
#include <string.h>

#include "internal.h"

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
        case U_RECIPROCAL: UL((T)1 / v)                                                                \
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
        case U_CLIP: UL(v < p0 ? p0 : (v > p1 ? p1 : v))                                          \
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
    const double *prm = op->unary.prm;
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
    int64_t es = c->op->unary.esize_in, eo = c->op->unary.esize_out;
    unary_range(c->op, c->x + i0 * es, c->y + i0 * eo, i1 - i0);
}

int wl_unary(const wl_op *op, const wl_exec *ex) {
    un_ctx c = {op, wl_in(op, ex, 0), wl_out(op, ex), op->unary.n, 0};
    int64_t tasks = wl_chunks(c.n, WL_EW_GRAIN, ex->nthreads, &c.chunk);
    wl_parallel_for(tasks, unary_task, &c, ex->nthreads);
    return 0;
}
