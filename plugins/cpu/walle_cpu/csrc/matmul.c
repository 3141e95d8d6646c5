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
    int64_t m; /* rows per batch: the op's m, or batch * m when the batches run as one GEMM */
    int threads_inner;
    int failed;
} mm_ctx;

/* Few rows (a transformer's tokens, a batch-1 linear layer's handful): each panel of B is
 * used by only m rows, so B streams from L3 or memory and its traffic sets the time (minilm's
 * 24 x 1536 x 384: 2.4 MB of B for 14 M FMAs). wl_gemm shares such a product among threads by
 * row tiles and panels alike, and two threads on the same panel each read it. Split by columns
 * only instead: every thread owns whole panels and reads each once, its rows reusing it from
 * cache. Worth it while B outweighs A (m < k would do; the row bound keeps A's per-task re-read
 * small) and there are panels enough to share. */
#define COL_SPLIT_MAX_ROWS 256
#define COL_TASKS_PER_THREAD 3 /* column tasks per thread, for balance */

static int split_columns(int64_t m, int64_t n, int64_t k, int nthreads) {
    int64_t panels = (n + wl_active->nr - 1) / wl_active->nr;
    return m <= COL_SPLIT_MAX_ROWS && m < 2 * k && panels >= 2 * nthreads && m * n * k >= 65536;
}

typedef struct {
    int64_t m, n, k, lda, tasks; /* the tasks the panels are shared by */
    const float *a, *bp, *bias, *res;
    float *y;
    int bmode, act;
    const double *prm;
} cols_ctx;

static void cols_task(void *vp, int64_t t) {
    const cols_ctx *c = vp;
    /* task t owns panels [t * P / T, (t + 1) * P / T): counts differ by one at most (32 panels
     * in chunks of 6 left a task of 2, and one thread 18 panels to the other's 14) */
    const int64_t nr = wl_active->nr, panels = (c->n + nr - 1) / nr;
    const int64_t j0 = t * panels / c->tasks * nr, j1 = (t + 1) * panels / c->tasks * nr;
    int64_t nc = (c->n < j1 ? c->n : j1) - j0;
    wl_gemm(c->m, nc, c->k, c->a, c->lda, c->bp + j0 * c->k, c->y + j0, c->n,
            c->bias ? c->bias + j0 : NULL, c->bmode, c->res ? c->res + j0 : NULL, c->act, c->prm, 1);
}

static void gemm_cols(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *bp, float *y, const float *bias, int bmode, const float *res,
                      int act, const double *prm, int nthreads) {
    const int64_t panels = (n + wl_active->nr - 1) / wl_active->nr;
    int64_t tasks = (int64_t)nthreads * COL_TASKS_PER_THREAD;
    if (tasks > panels) tasks = panels;
    cols_ctx c = {m, n, k, lda, tasks, a, bp, bias, res, y, bmode, act, prm};
    wl_parallel_for(tasks, cols_task, &c, nthreads);
}

static void mm_batch(void *vp, int64_t bi) {
    mm_ctx *c = vp;
    const wl_matmul_params *p = &c->op->matmul;
    int64_t m = c->m, n = p->n, k = p->k;
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
    const float *res = c->res ? c->res + bi * m * n : NULL;
    float *y = c->y + bi * m * n;
    if (c->threads_inner > 1 && bmode != BIAS_FULL && split_columns(m, n, k, c->threads_inner)) {
        gemm_cols(m, n, k, a, lda, bp, y, c->bias, bmode, res, act, p->act.prm, c->threads_inner);
        return;
    }
    wl_gemm(m, n, k, a, lda, bp, y, n, c->bias, bmode, res, act, p->act.prm, c->threads_inner);
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
    /* one B for every batch (a linear layer on (batch, tokens, features), mobilevit's and
     * swin's patches): the batches' rows are consecutive in A and in the output, so they run
     * as one GEMM of batch * m rows; per batch, each B panel was streamed again for m rows
     * (mobilevit: 4 x 4 rows of an 80 x 80 B). A full bias is per batch row: not merged. */
    if (batch > 1 && p->b_batch_stride == 0 && !p->trans_a && p->a_batch_stride == m * k &&
        !(p->has_bias && p->bias_full)) {
        m *= batch;
        batch = 1;
    }
    mm_ctx c = {op, (const float *)wl_in(op, ex, 0), (const float *)wl_in(op, ex, 1),
                p->has_bias ? (const float *)wl_in(op, ex, 2) : NULL,
                wl_in_opt(op, ex, p->residual), (float *)wl_out(op, ex), m, nthreads, 0};
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
