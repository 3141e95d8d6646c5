/* GEMM with packed B panels and register-blocked micro-tiles (isa/gemm.inc): the driver that
 * MatMul (matmul.c) and the GEMM-based Conv2D algorithms (conv.c, winograd.c) run on. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define KC 256

int64_t wl_packed_b_floats(int64_t k, int64_t n) {
    int64_t nr = wl_active->nr;
    return ((n + nr - 1) / nr) * (k > 0 ? k : 1) * nr;
}

int wl_gemm_nr(void) { return wl_active->nr; }

static void pack_b_range(const float *b, int64_t k, int64_t n, int64_t ldb, int trans_b,
                         float *out, int64_t p0, int64_t p1) {
    const int64_t nr = wl_active->nr;
    for (int64_t p = p0; p < p1; p++) {
        float *dst = out + p * k * nr;
        int64_t j0 = p * nr, nv = n - j0 < nr ? n - j0 : nr;
        if (!trans_b) {
            for (int64_t kk = 0; kk < k; kk++) {
                const float *src = b + kk * ldb + j0;
                float *d = dst + kk * nr;
                int64_t j = 0;
                for (; j < nv; j++) d[j] = src[j];
                for (; j < nr; j++) d[j] = 0.0f;
            }
        } else {
            for (int64_t j = 0; j < nr; j++) {
                if (j < nv) {
                    const float *src = b + (j0 + j) * ldb;
                    for (int64_t kk = 0; kk < k; kk++) dst[kk * nr + j] = src[kk];
                } else {
                    for (int64_t kk = 0; kk < k; kk++) dst[kk * nr + j] = 0.0f;
                }
            }
        }
    }
}

void wl_pack_b(const float *b, int64_t k, int64_t n, int trans_b, float *out) {
    int64_t nr = wl_active->nr;
    pack_b_range(b, k, n, trans_b ? k : n, trans_b, out, 0, (n + nr - 1) / nr);
}

typedef struct {
    const float *b;
    int64_t k, n, ldb, chunk;
    int trans;
    float *out;
} pack_ctx;

static void pack_task(void *vp, int64_t i) {
    pack_ctx *c = vp;
    int64_t np = (c->n + wl_active->nr - 1) / wl_active->nr;
    int64_t p0 = i * c->chunk, p1 = p0 + c->chunk < np ? p0 + c->chunk : np;
    pack_b_range(c->b, c->k, c->n, c->ldb, c->trans, c->out, p0, p1);
}

void wl_pack_b_parallel(const float *b, int64_t k, int64_t n, int64_t ldb, int trans, float *out,
                        int nthreads) {
    int64_t np = (n + wl_active->nr - 1) / wl_active->nr;
    pack_ctx c = {b, k, n, ldb, 0, trans, out};
    int64_t tasks = (k * n < 65536 || nthreads <= 1) ? 1 : nthreads * 2;
    if (tasks > np) tasks = np;
    if (tasks < 1) tasks = 1;
    c.chunk = (np + tasks - 1) / tasks;
    wl_parallel_for((np + c.chunk - 1) / c.chunk, pack_task, &c, nthreads);
}

/* ------------------------------------------------------------------ GEMM driver */

typedef struct {
    int64_t m, n, k, lda, ldc, mb, nbp, mtiles, np;
    const float *a, *bp, *bias;
    const float *res; /* residual added before the activation (layout of c), or NULL */
    float *c;
    int bias_mode, act;
    const double *act_p;
} gemm_ctx;

static void gemm_task(void *vp, int64_t t) {
    const gemm_ctx *g = vp;
    const wl_isa *isa = wl_active;
    const int64_t nr = isa->nr, mr = isa->mr;
    int64_t mt = t % g->mtiles, nt = t / g->mtiles;
    int64_t r0 = mt * g->mb, r1 = r0 + g->mb < g->m ? r0 + g->mb : g->m;
    int64_t p0 = nt * g->nbp, p1 = p0 + g->nbp < g->np ? p0 + g->nbp : g->np;
    /* ReLU and Clip ride in the tile's store; other activations are a pass per row after */
    int fused = g->act == U_RELU || g->act == U_CLIP;
    int adds = g->bias_mode != BIAS_NONE || g->res || fused;
    if (g->k == 0) { /* no K block to carry the epilogue: zeros, then the terms as a pass */
        for (int64_t r = r0; r < r1; r++)
            for (int64_t j = p0 * nr; j < g->n && j < p1 * nr; j++) g->c[r * g->ldc + j] = 0.0f;
    }
    /* K is blocked so that a panel's block serves every row tile of the task from cache; a task
     * of one row tile has no such reuse, and runs each panel's whole K in one sweep (a batch-1
     * linear layer streams its weights panel by panel, not a block of every panel in turn) */
    const int64_t kcb = r1 - r0 <= mr ? g->k : KC;
    for (int64_t kk = 0; kk < g->k; kk += kcb) {
        int64_t kc = g->k - kk < kcb ? g->k - kk : kcb;
        int last = kk + kc >= g->k && adds;
        for (int64_t p = p0; p < p1; p++) {
            const float *bp = g->bp + p * g->k * nr + kk * nr;
            int64_t j0 = p * nr;
            int nv = (int)(g->n - j0 < nr ? g->n - j0 : nr);
            /* the block's rows in tiles of near-equal height (64 rows: 6 tiles of 10-11, not
             * 5 of 12 and one of 4, whose 8 accumulators wait on the FMA latency) */
            const int64_t nt = (r1 - r0 + mr - 1) / mr, base = (r1 - r0) / nt, extra = (r1 - r0) % nt;
            for (int64_t ti = 0, r = r0; ti < nt; ti++) {
                int rows = (int)(base + (ti < extra));
                wl_tile_epi e = {
                    g->bias_mode == BIAS_COL ? g->bias + j0 : NULL,
                    g->bias_mode == BIAS_ROW ? g->bias + r : NULL,
                    g->bias_mode == BIAS_FULL ? g->bias + r * g->n + j0 : NULL,
                    g->res ? g->res + r * g->ldc + j0 : NULL, g->n, g->ldc,
                    g->act == U_RELU ? EPI_RELU : fused ? EPI_CLIP : EPI_NONE,
                    fused && g->act_p ? (float)g->act_p[0] : 0.0f,
                    fused && g->act_p ? (float)g->act_p[1] : 0.0f};
                isa->gemm_tile(rows, kc, g->a + r * g->lda + kk, g->lda, bp, g->c + r * g->ldc + j0,
                               g->ldc, kk > 0, nv, last ? &e : NULL);
                r += rows;
            }
        }
    }
    if (g->k > 0 ? g->act == U_IDENTITY || fused : !adds) return;
    int64_t j0 = p0 * nr, j1 = p1 * nr < g->n ? p1 * nr : g->n;
    for (int64_t r = r0; r < r1; r++) {
        float *row = g->c + r * g->ldc;
        if (g->k == 0) { /* the bias through the ISA's vector kernel (this file is built for
                          * the baseline ISA) */
            if (g->bias_mode == BIAS_ROW)
                isa->binary_f32(B_ADD, row + j0, 1, g->bias + r, 0, row + j0, j1 - j0);
            else if (g->bias_mode == BIAS_COL)
                isa->binary_f32(B_ADD, row + j0, 1, g->bias + j0, 1, row + j0, j1 - j0);
            else if (g->bias_mode == BIAS_FULL)
                isa->binary_f32(B_ADD, row + j0, 1, g->bias + r * g->n + j0, 1, row + j0, j1 - j0);
            if (g->res)
                isa->binary_f32(B_ADD, row + j0, 1, g->res + r * g->ldc + j0, 1, row + j0, j1 - j0);
        }
        if (g->act != U_IDENTITY && !(fused && g->k > 0))
            isa->unary_f32(g->act, row + j0, row + j0, j1 - j0, g->act_p);
    }
}

void wl_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *bp,
             float *c, int64_t ldc, const float *bias, int bias_mode, const float *res, int act,
             const double *act_p, int nthreads) {
    if (m <= 0 || n <= 0) return;
    const wl_isa *isa = wl_active;
    gemm_ctx g;
    g.m = m; g.n = n; g.k = k; g.lda = lda; g.ldc = ldc; g.a = a; g.bp = bp; g.c = c;
    g.bias = bias; g.bias_mode = bias_mode; g.res = res; g.act = act; g.act_p = act_p;
    g.np = (n + isa->nr - 1) / isa->nr;
    g.mb = isa->mr * 8;
    g.nbp = 4;
    if (nthreads <= 1 || m * n * k < 65536) nthreads = 1; /* dispatch would cost more */
    int64_t tasks = ((m + g.mb - 1) / g.mb) * ((g.np + g.nbp - 1) / g.nbp);
    if (nthreads > 1 && tasks < 4 * nthreads) { /* finer tasks only when they are shared */
        g.mb = isa->mr * 2;
        g.nbp = 1;
    }
    g.mtiles = (m + g.mb - 1) / g.mb;
    g.mb = (m + g.mtiles - 1) / g.mtiles; /* blocks of near-equal height (100 rows: 50 + 50) */
    tasks = g.mtiles * ((g.np + g.nbp - 1) / g.nbp);
    wl_parallel_for(tasks, gemm_task, &g, nthreads);
}
