/* MatMul: batched (m x k) @ (k x n) on the GEMM driver (gemm.c), with an optional bias (per
 * column, or full), residual and activation in the GEMM's epilogue. Constant B comes packed by
 * the compiler (op->matmul.packed); otherwise each batch packs its B into scratch first.
 * The erf GELU runs after the GEMM instead, as one pass of the row kernel over the whole
 * output in large chunks: the epilogue applies it per tile row of a panel's 32 columns, and
 * at that grain the calls cost more than the function (whisper's 100x384 MLP: ~40 us). */
#include "internal.h"

/* a computed B of at most this many floats (an attention head's K^T or V) is read in place
 * by the direct kernel (isa/matmul.inc) instead of being packed for every batch */
#define DIRECT_B_FLOATS 16384

typedef struct {
    const wl_op *op;
    const float *a, *b, *bias, *res;
    float *y;
    int threads_inner;
    int failed;
} mm_ctx;

static void mm_batch(void *vp, int64_t bi) {
    mm_ctx *c = vp;
    const wl_matmul_params *p = &c->op->matmul;
    int64_t m = p->m, n = p->n, k = p->k;
    int ta = (int)p->trans_a, tb = (int)p->trans_b;
    const float *a = c->a + bi * p->a_batch_stride;
    const float *bsrc = c->b + bi * p->b_batch_stride;
    const float *bp;
    if (!p->packed && !ta && !tb && !c->bias && !c->res && (p->act.fn == U_IDENTITY || p->act.fn == U_GELU) &&
        k * n <= DIRECT_B_FLOATS && (c->threads_inner == 1 || m * n * k < 65536)) {
        wl_active->matmul_direct(m, n, k, a, k, bsrc, n, c->y + bi * m * n, n);
        return;
    }
    if (p->packed) {
        bp = (const float *)c->op->aux + (p->b_batch_stride ? bi : 0) * wl_packed_b_floats(k, n);
    } else {
        float *tmp = wl_scratch(0, sizeof(float) * (size_t)wl_packed_b_floats(k, n));
        if (!tmp) { c->failed = 1; return; }
        wl_pack_b_parallel(bsrc, k, n, tb ? k : n, tb, tmp, c->threads_inner);
        bp = tmp;
    }
    int64_t lda = k;
    if (ta) {
        float *at = wl_scratch(1, sizeof(float) * (size_t)(m * k + 1));
        if (!at) { c->failed = 1; return; }
        for (int64_t i = 0; i < m; i++)
            for (int64_t kk = 0; kk < k; kk++) at[i * k + kk] = a[kk * m + i];
        a = at;
    }
    int bmode = !c->bias ? BIAS_NONE : (p->bias_full ? BIAS_FULL : BIAS_COL);
    int act = p->act.fn == U_GELU ? U_IDENTITY : (int)p->act.fn;
    wl_gemm(m, n, k, a, lda, bp, c->y + bi * m * n, n, c->bias, bmode,
            c->res ? c->res + bi * m * n : NULL, act, p->act.prm, c->threads_inner);
}

#define GELU_CHUNK 4096 /* floats per task of the GELU pass */

typedef struct {
    float *y;
    int64_t total;
} gelu_ctx;

static void gelu_task(void *vp, int64_t t) {
    const gelu_ctx *g = vp;
    int64_t i0 = t * GELU_CHUNK, cnt = g->total - i0 < GELU_CHUNK ? g->total - i0 : GELU_CHUNK;
    wl_active->gelu_f32(g->y + i0, g->y + i0, cnt);
}

int wl_matmul(const wl_op *op, const wl_exec *ex) {
    const wl_matmul_params *p = &op->matmul;
    int64_t batch = p->batch, m = p->m, n = p->n, k = p->k;
    int nthreads = ex->nthreads;
    if (p->packed && p->packed_nr != wl_active->nr)
        return wl_fail(ex, "weights were packed for another ISA (nr=%lld)", (long long)p->packed_nr);
    mm_ctx c = {op, (const float *)wl_in(op, ex, 0), (const float *)wl_in(op, ex, 1),
                p->has_bias ? (const float *)wl_in(op, ex, 2) : NULL,
                wl_in_opt(op, ex, p->residual), (float *)wl_out(op, ex), nthreads, 0};
    if (batch > 1 && (batch >= 2 * nthreads || m * n * k < 262144)) {
        c.threads_inner = 1;
        wl_parallel_for(batch, mm_batch, &c, nthreads);
    } else {
        for (int64_t bi = 0; bi < batch; bi++) mm_batch(&c, bi);
    }
    if (c.failed) return wl_fail(ex, "out of memory in MatMul");
    if (p->act.fn == U_GELU) {
        gelu_ctx g = {c.y, batch * m * n};
        int64_t tasks = (g.total + GELU_CHUNK - 1) / GELU_CHUNK;
        wl_parallel_for(tasks, gelu_task, &g, tasks > 1 ? nthreads : 1);
    }
    return 0;
}
