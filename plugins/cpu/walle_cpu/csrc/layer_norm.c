/* layer norm (a composite the cpu backend claims): each row of n floats normalised by its own
 * mean and variance, then scaled and shifted, in one kernel call per row (isa/reduce.inc). */
#include "internal.h"

typedef struct {
    const wl_op *op;
    const float *x, *g, *b;
    float *y;
    int64_t chunk;
} ln_ctx;

static void ln_task(void *vp, int64_t t) {
    const ln_ctx *c = vp;
    const wl_layer_norm_params *p = &c->op->layer_norm;
    const int64_t n = p->n;
    const float eps = (float)p->eps;
    for (int64_t r = t * c->chunk; r < p->rows && r < (t + 1) * c->chunk; r++)
        wl_active->layer_norm_row(c->x + r * n, c->g, c->b, c->y + r * n, n, eps);
}

int wl_layer_norm(const wl_op *op, const wl_exec *ex) {
    const wl_layer_norm_params *p = &op->layer_norm;
    ln_ctx c = {op, (const float *)wl_in(op, ex, 0), (const float *)wl_in(op, ex, 1),
                p->has_bias ? (const float *)wl_in(op, ex, 2) : NULL, (float *)wl_out(op, ex), 0};
    /* a row is a few hundred floats: split rows across threads only when there is enough */
    int64_t tasks = p->rows * p->n >= 32768 ? wl_chunks(p->rows, 1, ex->nthreads, &c.chunk)
                                             : (c.chunk = p->rows, 1);
    wl_parallel_for(tasks, ln_task, &c, ex->nthreads);
    return 0;
}
