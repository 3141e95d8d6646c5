/* Binary and Select: element-wise ops over an N-D broadcast (operands with per-axis strides,
 * 0 where broadcast), walked row by row over the output's last axis. The row loop of Binary
 * (wl_binary_row) also serves fused chains (chain.c). */
#include <math.h>
#include <string.h>

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

int wl_binary_row(int fn, int dt, const char *a, int64_t sa, const char *b, int64_t sb, char *y,
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

/* N-D iteration shared by Binary and Select (op->nd). Rows are the last axis. */
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
    int nd = (int)op->nd.ndim;
    const int64_t *shape = op->nd.shape;
    int64_t r0 = t * c->chunk, r1 = r0 + c->chunk < c->rows ? r0 + c->chunk : c->rows;
    int64_t last = shape[nd - 1];
    int nin = op->kind == WL_SELECT ? 3 : 2;
    for (int64_t r = r0; r < r1; r++) {
        int64_t rem = r, off[3] = {0, 0, 0};
        for (int d = nd - 2; d >= 0; d--) {
            int64_t idx = rem % shape[d];
            rem /= shape[d];
            for (int i = 0; i < nin; i++) off[i] += idx * op->nd.strides[i][d];
        }
        int64_t s[3];
        for (int i = 0; i < nin; i++) s[i] = op->nd.strides[i][nd - 1];
        char *y = c->y + r * last * c->esize_out;
        if (op->kind == WL_BINARY) {
            int st = wl_binary_row(op->fn, op->dtype, c->in[0] + off[0] * c->esize_in, s[0],
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


int wl_binary(const wl_op *op, const wl_exec *ex) {
    const wl_nd_params *p = &op->nd;
    nd_ctx c;
    c.op = op;
    c.y = wl_out(op, ex);
    for (int i = 0; i < op->n_in; i++) c.in[i] = wl_in(op, ex, i);
    c.rows = p->rows;
    c.esize_in = p->esize_in;
    c.esize_out = p->esize_out;
    c.status = 0;
    int64_t total = c.rows * p->shape[p->ndim - 1];
    int64_t tasks = total >= 65536 ? wl_chunks(c.rows, 1, ex->nthreads, &c.chunk)
                                   : (c.chunk = c.rows, 1);
    wl_parallel_for(tasks, nd_task, &c, ex->nthreads);
    if (c.status == 1) return wl_fail(ex, "integer division by zero");
    if (c.status)
        return wl_fail(ex, "unsupported element-wise function %d for dtype %d", op->fn, op->dtype);
    return 0;
}
