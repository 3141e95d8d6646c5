/* The row loop of Binary for every dtype, shared by Binary and Select (binary.c) and fused chains
 * (chain.c). Static on purpose: each including file gets its own copy, which the compiler
 * specialises for its caller (the N-D loop inlines it, a chain gets its float32 clone). */
#ifndef WALLE_CPU_BINARY_ROW_H
#define WALLE_CPU_BINARY_ROW_H

#include <math.h>

#include "internal.h"

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
        case B_POW: /* a constant exponent 2 (variances, squared errors) is one multiply, as numpy's \
                     * power computes it: the product is exact to one rounding, like powf's */ \
            if (sb == 0 && pb[0] == (T)2) {                                                     \
                T *py = (T *)y;                                                                 \
                for (int64_t i = 0; i < n; i++) { T av = pa[i * sa]; py[i] = av * av; }        \
                return 0;                                                                       \
            }                                                                                   \
            /* and a cube (the tanh GELU's x^3) as two: within an ulp of powf, ~30x faster */   \
            if (sb == 0 && pb[0] == (T)3) {                                                     \
                T *py = (T *)y;                                                                 \
                for (int64_t i = 0; i < n; i++) { T av = pa[i * sa]; py[i] = av * av * av; }   \
                return 0;                                                                       \
            }                                                                                   \
            BLOOP(T, POW(av, bv))                                                               \
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

/* y = a (fn) b over n elements of dtype dt at element strides sa, sb.
 * Returns 0 ok, 1 integer division by zero, 2 unsupported. */
static int binary_row(int fn, int dt, const char *a, int64_t sa, const char *b, int64_t sb, char *y,
                      int64_t n) {
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

#endif
