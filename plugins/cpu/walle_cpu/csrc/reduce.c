/* Reduce (sum, prod, max, min, argmax, argmin, cumsum, cumprod) over the middle axis of
 * (outer, n, inner), for float32, float64 and the integers. */
#include "internal.h"

typedef struct {
    const wl_op *op;
    const char *x;
    char *y;
    int64_t chunk; /* outer indices per task of reduce_chunk_task */
} red_ctx;

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
    int64_t nn = op->reduce.n, inner = op->reduce.inner;
    int fn = op->fn, last = (int)op->reduce.last_index;
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
    int64_t outer = c->op->reduce.outer;
    int64_t o0 = t * c->chunk, o1 = o0 + c->chunk < outer ? o0 + c->chunk : outer;
    for (int64_t o = o0; o < o1; o++) reduce_task(vp, o);
}

int wl_reduce(const wl_op *op, const wl_exec *ex) {
    const wl_reduce_params *p = &op->reduce;
    int64_t per = p->n * p->inner; /* elements read per outer index */
    red_ctx c = {op, wl_in(op, ex, 0), wl_out(op, ex), 1};
    int nt = p->outer * per >= 65536 ? ex->nthreads : 1;
    /* group outer indices into tasks of >= ~8K elements: a task per small slice costs more in
     * scheduling than its reduction */
    if (per < 8192) c.chunk = (8192 + per - 1) / (per > 0 ? per : 1);
    if (nt > 1 && c.chunk * nt * 4 > p->outer) c.chunk = (p->outer + nt * 4 - 1) / (nt * 4);
    if (c.chunk < 1) c.chunk = 1;
    if (c.chunk == 1) wl_parallel_for(p->outer, reduce_task, &c, nt);
    else wl_parallel_for((p->outer + c.chunk - 1) / c.chunk, reduce_chunk_task, &c, nt);
    return 0;
}
