/* GatherScatter: rows picked by int64 indices (negative ones count from the end), copied out
 * (gather) or written into a copy of the data (scatter), optionally reduced into it. */
#include <string.h>

#include "internal.h"

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
                if (red == S_ADD) d[j] = (T)(d[j] + s[j]);                                      \
                else if (red == S_MUL) d[j] = (T)(d[j] * s[j]);                                 \
                else if (red == S_MAX) { NANMAX(d[j], s[j]); }                                  \
                else { NANMIN(d[j], s[j]); }                                                    \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    break;

int wl_gather(const wl_op *op, const wl_exec *ex) {
    const wl_gather_params *p = &op->gather;
    int64_t rows = p->rows, block = p->block, k = p->k, es = p->esize;
    int red = (int)p->reduction;
    const int64_t *idx = (const int64_t *)wl_in(op, ex, 1);
    for (int64_t i = 0; i < k; i++) {
        if (idx[i] < -rows || idx[i] >= rows)
            return wl_fail(ex, "index %lld out of range [%lld, %lld) in %s", (long long)idx[i],
                           (long long)-rows, (long long)rows, p->scatter ? "scatter" : "gather");
    }
    const char *data = wl_in(op, ex, 0);
    char *out = wl_out(op, ex);
    if (!p->scatter) {
        gather_ctx c = {data, idx, out, rows, block * es, 0, k};
        int64_t tasks = k * block * es >= 262144 ? wl_chunks(k, 1, ex->nthreads, &c.chunk)
                                                  : (c.chunk = k, 1);
        wl_parallel_for(tasks, gather_task, &c, ex->nthreads);
        return 0;
    }
    if (out != data) memcpy(out, data, (size_t)(rows * block * es));
    const char *upd = wl_in(op, ex, 2);
    if (red == S_NONE) {
        for (int64_t i = 0; i < k; i++) {
            int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];
            memcpy(out + r * block * es, upd + i * block * es, (size_t)(block * es));
        }
        return 0;
    }
    switch (op->dtype) {
    case D_F32: SCATTER_T(float)
    case D_F64: SCATTER_T(double)
    case D_I32: SCATTER_T(int32_t)
    case D_I64: SCATTER_T(int64_t)
    default: return wl_fail(ex, "unsupported scatter reduction dtype %d", op->dtype);
    }
    return 0;
}
