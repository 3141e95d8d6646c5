/* softmax / log_softmax (a composite the cpu backend claims). */
#include <math.h>

#include "internal.h"

/* x viewed as (outer, n, inner), over n: y = exp(x - max) / sum, or (x - max) - log(sum), with
 * the arithmetic of the expansion (max and sum as Reduce computes them, exp as Unary does) in
 * one explicit-vector row kernel (isa/reduce.inc: two passes over a line for log_softmax,
 * three for softmax). With inner >= a vector, the lines run a vector of adjacent columns at a
 * time (softmax_cols); a line with 1 < inner < a vector is gathered into a scratch row. */
typedef struct {
    const wl_op *op;
    const float *x;
    float *y;
    int64_t chunk;
    int failed;
} softmax_ctx;

/* inner >= one vector: blocks of VW adjacent lines, their columns in vector lanes */
static void softmax_cols_task(void *vp, int64_t t) {
    softmax_ctx *c = vp;
    const wl_softmax_params *p = &c->op->softmax;
    const int64_t n = p->n, inner = p->inner, vw = wl_active->nr / 2;
    const int64_t per = (inner + vw - 1) / vw, blocks = p->outer * per;
    for (int64_t bl = t * c->chunk; bl < blocks && bl < (t + 1) * c->chunk; bl++) {
        int64_t o = bl / per, i = bl % per * vw;
        int64_t off = o * n * inner + i, cnt = inner - i < vw ? inner - i : vw;
        wl_active->softmax_cols(c->x + off, c->y + off, n, inner, cnt, (int)p->log);
    }
}

static void softmax_task(void *vp, int64_t t) {
    softmax_ctx *c = vp;
    const wl_softmax_params *p = &c->op->softmax;
    int64_t n = p->n, inner = p->inner, lines = p->outer * inner;
    float *row = inner > 1 ? wl_scratch(1, sizeof(float) * (size_t)(2 * n)) : NULL;
    if (inner > 1 && !row) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t l = t * c->chunk; l < lines && l < (t + 1) * c->chunk; l++) {
        int64_t o = l / inner, i = l % inner;
        const float *x = c->x + o * n * inner + i;
        float *y = c->y + o * n * inner + i;
        if (inner == 1) {
            wl_active->softmax_row(x, y, n, (int)p->log);
            continue;
        }
        for (int64_t j = 0; j < n; j++) row[j] = x[j * inner];
        wl_active->softmax_row(row, row + n, n, (int)p->log);
        for (int64_t j = 0; j < n; j++) y[j * inner] = row[n + j];
    }
}

int wl_softmax(const wl_op *op, const wl_exec *ex) {
    const wl_softmax_params *p = &op->softmax;
    softmax_ctx c = {op, (const float *)wl_in(op, ex, 0), (float *)wl_out(op, ex), 0, 0};
    const int64_t vw = wl_active->nr / 2;
    if (p->inner >= vw) {
        int64_t blocks = p->outer * ((p->inner + vw - 1) / vw);
        int64_t tasks = p->outer * p->n * p->inner >= 32768 ? wl_chunks(blocks, 1, ex->nthreads, &c.chunk)
                                                            : (c.chunk = blocks, 1);
        wl_parallel_for(tasks, softmax_cols_task, &c, ex->nthreads);
        return 0;
    }
    int64_t lines = p->outer * p->inner;
    int64_t tasks = p->outer * p->n * p->inner >= 32768 ? wl_chunks(lines, 1, ex->nthreads, &c.chunk)
                                                        : (c.chunk = lines, 1);
    wl_parallel_for(tasks, softmax_task, &c, ex->nthreads);
    if (c.failed) return wl_fail(ex, "out of memory in softmax");
    return 0;
}
