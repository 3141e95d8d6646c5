/* GEMM with packed B panels and register-blocked micro-tiles; MatMul and Conv2D drivers
 * (1x1-as-GEMM, im2col+GEMM, depthwise direct, Winograd F(2,3)). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wl.h"

#define KC 256

int64_t wl_packed_b_floats(int64_t k, int64_t n) {
    int64_t nr = wl_active->nr;
    return ((n + nr - 1) / nr) * (k > 0 ? k : 1) * nr;
}

int wl_gemm_nr(void) { return wl_active->nr; }

void wl_pack_b_range(const float *b, int64_t k, int64_t n, int64_t ldb, int trans_b, float *out,
                     int64_t p0, int64_t p1) {
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
    wl_pack_b_range(b, k, n, trans_b ? k : n, trans_b, out, 0, (n + nr - 1) / nr);
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
    wl_pack_b_range(c->b, c->k, c->n, c->ldb, c->trans, c->out, p0, p1);
}

static void pack_b_parallel(const float *b, int64_t k, int64_t n, int64_t ldb, int trans, float *out,
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
    if (g->k == 0) {
        for (int64_t r = r0; r < r1; r++)
            for (int64_t j = p0 * nr; j < g->n && j < p1 * nr; j++) g->c[r * g->ldc + j] = 0.0f;
    }
    for (int64_t kk = 0; kk < g->k; kk += KC) {
        int64_t kc = g->k - kk < KC ? g->k - kk : KC;
        for (int64_t p = p0; p < p1; p++) {
            const float *bp = g->bp + p * g->k * nr + kk * nr;
            int64_t j0 = p * nr;
            int nv = (int)(g->n - j0 < nr ? g->n - j0 : nr);
            for (int64_t r = r0; r < r1; r += mr) {
                int rows = (int)(r1 - r < mr ? r1 - r : mr);
                isa->gemm_tile(rows, kc, g->a + r * g->lda + kk, g->lda, bp, g->c + r * g->ldc + j0,
                               g->ldc, kk > 0, nv);
            }
        }
    }
    if (g->bias_mode == BIAS_NONE && g->act == U_IDENTITY && !g->res) return;
    int64_t j0 = p0 * nr, j1 = p1 * nr < g->n ? p1 * nr : g->n;
    for (int64_t r = r0; r < r1; r++) {
        float *row = g->c + r * g->ldc;
        if (g->bias_mode == BIAS_ROW) {
            float bv = g->bias[r];
            for (int64_t j = j0; j < j1; j++) row[j] += bv;
        } else if (g->bias_mode == BIAS_COL) {
            for (int64_t j = j0; j < j1; j++) row[j] += g->bias[j];
        } else if (g->bias_mode == BIAS_FULL) {
            for (int64_t j = j0; j < j1; j++) row[j] += g->bias[r * g->n + j];
        }
        /* the residual never shares memory with c (the arena planner keeps an op's inputs and
         * output apart), so reading it after the tiles wrote c is safe */
        if (g->res) {
            const float *rr = g->res + r * g->ldc;
            isa->binary_f32(B_ADD, row + j0, 1, rr + j0, 1, row + j0, j1 - j0);
        }
        if (g->act != U_IDENTITY) isa->unary_f32(g->act, row + j0, row + j0, j1 - j0, g->act_p);
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
    tasks = g.mtiles * ((g.np + g.nbp - 1) / g.nbp);
    wl_parallel_for(tasks, gemm_task, &g, nthreads);
}

/* ------------------------------------------------------------------ MatMul */

typedef struct {
    const wl_op *op;
    const float *a, *b, *bias, *res;
    float *y;
    int threads_inner;
    int failed;
} mm_ctx;

static void mm_batch(void *vp, int64_t bi) {
    mm_ctx *c = vp;
    const wl_op *op = c->op;
    int64_t m = op->p[1], n = op->p[2], k = op->p[3];
    int ta = (int)op->p[4], tb = (int)op->p[5];
    const float *a = c->a + bi * op->p[6];
    const float *bsrc = c->b + bi * op->p[7];
    const float *bp;
    if (op->aux) {
        bp = (const float *)op->aux + (op->p[7] ? bi : 0) * wl_packed_b_floats(k, n);
    } else {
        float *tmp = wl_scratch(0, sizeof(float) * (size_t)wl_packed_b_floats(k, n));
        if (!tmp) { c->failed = 1; return; }
        pack_b_parallel(bsrc, k, n, tb ? k : n, tb, tmp, c->threads_inner);
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
    int bmode = !c->bias ? BIAS_NONE : (op->p[9] ? BIAS_FULL : BIAS_COL);
    wl_gemm(m, n, k, a, lda, bp, c->y + bi * m * n, n, c->bias, bmode,
            c->res ? c->res + bi * m * n : NULL, (int)op->p[13], op->f, c->threads_inner);
}

int wl_matmul(const wl_op *op, const float *a, const float *b, const float *bias,
              const float *res, float *y, int nthreads, char *err, int errlen) {
    int64_t batch = op->p[0], m = op->p[1], n = op->p[2], k = op->p[3];
    if (op->aux && op->p[11] != wl_active->nr) {
        snprintf(err, errlen, "weights were packed for another ISA (nr=%lld)", (long long)op->p[11]);
        return 1;
    }
    mm_ctx c = {op, a, b, op->p[8] ? bias : NULL, res, y, nthreads, 0};
    if (batch > 1 && (batch >= 2 * nthreads || m * n * k < 262144)) {
        c.threads_inner = 1;
        wl_parallel_for(batch, mm_batch, &c, nthreads);
    } else {
        for (int64_t bi = 0; bi < batch; bi++) mm_batch(&c, bi);
    }
    if (c.failed) {
        snprintf(err, errlen, "out of memory in MatMul");
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ Conv2D */

typedef struct {
    const wl_op *op;
    const float *x, *w, *bias, *res;
    float *y;
    float *bp;
    int64_t n_img, g, chunk, np;
} conv_ctx;

#define CP(i) (op->p[i])

static void im2col_task(void *vp, int64_t t) {
    const conv_ctx *cc = vp;
    const wl_op *op = cc->op;
    const int64_t nr = wl_active->nr;
    int64_t C = CP(1), H = CP(2), W = CP(3), OH = CP(5), OW = CP(6), KH = CP(7), KW = CP(8);
    int64_t sh = CP(9), sw = CP(10), pt = CP(11), pl = CP(12), dh = CP(13), dw = CP(14), G = CP(15);
    int64_t cg = C / G, K = cg * KH * KW, N = OH * OW;
    const float *xg = cc->x + (cc->n_img * C + cc->g * cg) * H * W;
    int64_t p0 = t * cc->chunk, p1 = p0 + cc->chunk < cc->np ? p0 + cc->chunk : cc->np;
    /* A panel's nr pixels split into runs along output rows; for each (c, ky, kx) a run reads
     * one input row at a constant stride, in bounds over one interval: copy it, zero the rest. */
    int64_t run_j[65], run_oy[65], run_ox[65], run_len[65];
    for (int64_t p = p0; p < p1; p++) {
        int nruns = 0;
        for (int64_t j = 0; j < nr;) {
            int64_t pix = p * nr + j;
            if (pix >= N) break;
            int64_t oy = pix / OW, ox = pix % OW;
            int64_t len = OW - ox < nr - j ? OW - ox : nr - j;
            if (pix + len > N) len = N - pix;
            run_j[nruns] = j; run_oy[nruns] = oy; run_ox[nruns] = ox; run_len[nruns] = len;
            nruns++;
            j += len;
        }
        int64_t filled = nruns ? run_j[nruns - 1] + run_len[nruns - 1] : 0;
        float *dst = cc->bp + p * K * nr;
        for (int64_t c = 0; c < cg; c++) {
            const float *xc = xg + c * H * W;
            for (int64_t ky = 0; ky < KH; ky++) {
                for (int64_t kx = 0; kx < KW; kx++) {
                    float *d = dst + ((c * KH + ky) * KW + kx) * nr;
                    for (int r = 0; r < nruns; r++) {
                        float *dr = d + run_j[r];
                        int64_t len = run_len[r];
                        int64_t iy = run_oy[r] * sh - pt + ky * dh;
                        if (iy < 0 || iy >= H) {
                            memset(dr, 0, sizeof(float) * (size_t)len);
                            continue;
                        }
                        int64_t ix0 = run_ox[r] * sw - pl + kx * dw; /* ix = ix0 + t * sw */
                        int64_t lo = ix0 >= 0 ? 0 : (-ix0 + sw - 1) / sw;
                        int64_t hi = ix0 > W - 1 ? 0 : (W - 1 - ix0) / sw + 1;
                        if (hi > len) hi = len;
                        if (lo > hi) lo = hi;
                        const float *xr = xc + iy * W + ix0;
                        if (sw == 1 && lo == 0 && hi == len && len == nr) {
                            /* the common case, a whole panel from one input row: a copy of a
                             * size known at compile time (inlined, no call) */
                            switch (nr) {
                            case 32: memcpy(dr, xr, 32 * sizeof(float)); continue;
                            case 16: memcpy(dr, xr, 16 * sizeof(float)); continue;
                            case 8: memcpy(dr, xr, 8 * sizeof(float)); continue;
                            default: break;
                            }
                        }
                        for (int64_t t2 = 0; t2 < lo; t2++) dr[t2] = 0.0f;
                        if (sw == 1) memcpy(dr + lo, xr + lo, sizeof(float) * (size_t)(hi - lo));
                        else for (int64_t t2 = lo; t2 < hi; t2++) dr[t2] = xr[t2 * sw];
                        for (int64_t t2 = hi; t2 < len; t2++) dr[t2] = 0.0f;
                    }
                    for (int64_t j = filled; j < nr; j++) d[j] = 0.0f;
                }
            }
        }
    }
}

/* Implicit GEMM for stride-1 convolutions: the input is copied once into a zero-bordered
 * plane per channel (row length wp), so output pixel i = oy*wp + ox of the flattened padded
 * grid reads input element i + off[k] for reduction index k = (c, ky, kx). A tile of nr
 * consecutive i is then a GEMM tile whose B rows are plain vector loads from the input: no
 * im2col matrix is written or read back. Columns ox >= OW of the grid are computed and
 * dropped (a (wp - OW)/wp overhead). */
typedef struct {
    const wl_op *op;
    const float *xp, *w, *bias, *res;
    float *y;
    const int64_t *off;
    int64_t wp, tiles, chunk, K;
    int64_t ttasks, ob; /* task t: tile chunk t % ttasks, output rows [ob * (t / ttasks), +ob) */
    int failed;
} igemm_ctx;

static void igemm_task(void *vp, int64_t t) {
    igemm_ctx *ic = vp;
    const wl_op *op = ic->op;
    const wl_isa *isa = wl_active;
    const int64_t nr = isa->nr, mr = isa->mr;
    int64_t O = CP(4), OH = CP(5), OW = CP(6), NP = OH * OW, wp = ic->wp, total = OH * wp;
    int act = (int)CP(17);
    float *tmp = wl_scratch(1, sizeof(float) * (size_t)(mr * nr));
    if (!tmp) {
        ic->failed = 1;
        return;
    }
    int64_t tc = t % ic->ttasks, o0 = (t / ic->ttasks) * ic->ob;
    int64_t o1 = o0 + ic->ob < O ? o0 + ic->ob : O;
    int64_t t0 = tc * ic->chunk, t1 = t0 + ic->chunk < ic->tiles ? t0 + ic->chunk : ic->tiles;
    for (int64_t tile = t0; tile < t1; tile++) {
        int64_t i0 = tile * nr;
        int64_t nv = total - i0 < nr ? total - i0 : nr;
        for (int64_t r = o0; r < o1; r += mr) {
            int rows = (int)(o1 - r < mr ? o1 - r : mr);
            isa->conv_tile(rows, ic->K, ic->w + r * ic->K, ic->K, ic->xp + i0, ic->off, tmp);
            /* epilogue in the tile buffer: bias (+ residual) per valid segment, then one
             * activation call over the whole tile (short per-segment calls cost more than the
             * few wasted lanes), then the valid pixels are copied out */
            for (int rr = 0; rr < rows && (ic->bias || ic->res); rr++) {
                float bv = ic->bias ? ic->bias[r + rr] : 0.0f;
                float *src = tmp + rr * nr;
                const float *ro = ic->res ? ic->res + (r + rr) * NP : NULL;
                for (int64_t j = 0; j < nv;) {
                    int64_t i = i0 + j, oy = i / wp, ox = i % wp;
                    int64_t len = wp - ox < nv - j ? wp - ox : nv - j;
                    int64_t valid = ox < OW ? (OW - ox < len ? OW - ox : len) : 0;
                    if (ro && valid > 0) {
                        const float *rv = ro + oy * OW + ox;
                        for (int64_t q = 0; q < valid; q++) src[j + q] += bv + rv[q];
                    } else {
                        for (int64_t q = 0; q < valid; q++) src[j + q] += bv;
                    }
                    j += len;
                }
            }
            if (act != U_IDENTITY) isa->unary_f32(act, tmp, tmp, rows * nr, op->f);
            for (int rr = 0; rr < rows; rr++) {
                float *yo = ic->y + (r + rr) * NP;
                const float *src = tmp + rr * nr;
                for (int64_t j = 0; j < nv;) {
                    int64_t i = i0 + j, oy = i / wp, ox = i % wp;
                    int64_t len = wp - ox < nv - j ? wp - ox : nv - j;
                    int64_t valid = ox < OW ? (OW - ox < len ? OW - ox : len) : 0;
                    if (valid > 0) memcpy(yo + oy * OW + ox, src + j, sizeof(float) * (size_t)valid);
                    j += len;
                }
            }
        }
    }
}

typedef struct {
    const float *x;
    float *xp;
    int64_t H, W, hp, wp, pt, pl;
} pad_ctx;

static void pad_task(void *vp, int64_t c) {
    const pad_ctx *pc = vp;
    float *dst = pc->xp + c * pc->hp * pc->wp;
    const float *src = pc->x + c * pc->H * pc->W;
    memset(dst, 0, sizeof(float) * (size_t)(pc->pt * pc->wp));
    for (int64_t iy = 0; iy < pc->H; iy++) {
        float *row = dst + (pc->pt + iy) * pc->wp;
        memset(row, 0, sizeof(float) * (size_t)pc->pl);
        memcpy(row + pc->pl, src + iy * pc->W, sizeof(float) * (size_t)pc->W);
        memset(row + pc->pl + pc->W, 0, sizeof(float) * (size_t)(pc->wp - pc->pl - pc->W));
    }
    int64_t below = pc->hp - pc->pt - pc->H;
    if (below > 0) memset(dst + (pc->pt + pc->H) * pc->wp, 0, sizeof(float) * (size_t)(below * pc->wp));
}

/* Strided convolutions (dilation 1) run as stride-1 ones over stride phases: phase (py, px)
 * of channel c is the plane P[a][b] = x_padded[c][a * sh + py][b * sw + px], so tap (ky, kx)
 * of output (oy, ox) is P(ky % sh, kx % sw)[oy + ky / sh][ox + kx / sw]. */
typedef struct {
    const float *x;
    float *xp;
    int64_t C, H, W, hp, wp, pt, pl, sh, sw, psh, psw; /* psh x psw phases are used */
} phase_ctx;

static void phase_task(void *vp, int64_t c) {
    const phase_ctx *pc = vp;
    const float *src = pc->x + c * pc->H * pc->W;
    int64_t plane = pc->hp * pc->wp;
    for (int64_t py = 0; py < pc->psh; py++) {
        for (int64_t px = 0; px < pc->psw; px++) {
            float *dst = pc->xp + ((py * pc->psw + px) * pc->C + c) * plane;
            /* columns b with 0 <= b * sw + px - pl < W */
            int64_t ix0 = px - pc->pl;
            int64_t lo = ix0 >= 0 ? 0 : (-ix0 + pc->sw - 1) / pc->sw;
            int64_t hi = ix0 > pc->W - 1 ? 0 : (pc->W - 1 - ix0) / pc->sw + 1;
            if (hi > pc->wp) hi = pc->wp;
            if (lo > hi) lo = hi;
            for (int64_t a = 0; a < pc->hp; a++) {
                float *row = dst + a * pc->wp;
                int64_t iy = a * pc->sh + py - pc->pt;
                if (iy < 0 || iy >= pc->H) {
                    memset(row, 0, sizeof(float) * (size_t)pc->wp);
                    continue;
                }
                const float *xr = src + iy * pc->W + ix0;
                for (int64_t b = 0; b < lo; b++) row[b] = 0.0f;
                for (int64_t b = lo; b < hi; b++) row[b] = xr[b * pc->sw];
                for (int64_t b = hi; b < pc->wp; b++) row[b] = 0.0f;
            }
        }
    }
}

static int conv_implicit(const wl_op *op, const float *x, const float *w, const float *bias,
                         const float *res, float *y, int nthreads, char *err, int errlen) {
    const int64_t nr = wl_active->nr;
    int64_t N = CP(0), C = CP(1), H = CP(2), W = CP(3), O = CP(4), OH = CP(5), OW = CP(6);
    int64_t KH = CP(7), KW = CP(8), pt = CP(11), pl = CP(12), dh = CP(13), dw = CP(14);
    int64_t sh = CP(9), sw = CP(10), strided = sh > 1 || sw > 1;
    int64_t hp, wp;
    if (strided) { /* dilation 1 (checked by the caller) */
        hp = OH + (KH - 1) / sh;
        wp = OW + (KW - 1) / sw;
    } else {
        hp = OH + (KH - 1) * dh;
        /* a row's right padding is the next row's left padding (reads past the row end land in
         * the next row's first pl zeros), so the grid is pl columns narrower than the padded
         * input: fewer wasted columns per row (3x3 pad 1: W + 1 instead of W + 2) */
        wp = OW + (KW - 1) * dw - pl;
        if (wp < OW) wp = OW;
        if (hp < pt + H) hp = pt + H;
        if (wp < pl + W) wp = pl + W;
    }
    /* a kernel narrower than the stride leaves phases unread (1x1 stride 2: only (0, 0)) */
    int64_t psh = KH < sh ? KH : sh, psw = KW < sw ? KW : sw;
    int64_t K = C * KH * KW, plane = hp * wp, planes = C * psh * psw;
    size_t xfloats = (size_t)(planes * plane + nr + wp + 64);
    float *xp = wl_scratch(2, sizeof(float) * xfloats);
    int64_t *off = wl_scratch(3, sizeof(int64_t) * (size_t)K);
    if (!xp || !off) {
        snprintf(err, errlen, "out of memory in Conv2D");
        return 1;
    }
    for (int64_t c = 0, k = 0; c < C; c++)
        for (int64_t ky = 0; ky < KH; ky++)
            for (int64_t kx = 0; kx < KW; kx++)
                off[k++] = strided ? (((ky % sh) * psw + kx % sw) * C + c) * plane + (ky / sh) * wp + kx / sw
                                   : c * plane + ky * dh * wp + kx * dw;
    int64_t tiles = (OH * wp + nr - 1) / nr;
    for (int64_t n = 0; n < N; n++) {
        if (strided) {
            phase_ctx ph = {x + n * C * H * W, xp, C, H, W, hp, wp, pt, pl, sh, sw, psh, psw};
            wl_parallel_for(C, phase_task, &ph, planes * plane >= 65536 ? nthreads : 1);
        } else {
            pad_ctx pc = {x + n * C * H * W, xp, H, W, hp, wp, pt, pl};
            /* rows of the padded grid past the input are never all needed: clip copies to hp */
            if (pc.H > hp - pt) pc.H = hp - pt;
            wl_parallel_for(C, pad_task, &pc, C * plane >= 65536 ? nthreads : 1);
        }
        memset(xp + planes * plane, 0, sizeof(float) * (xfloats - (size_t)(planes * plane)));
        igemm_ctx ic = {op, xp, w, bias, res ? res + n * O * OH * OW : NULL, y + n * O * OH * OW,
                        off, wp, tiles, 1, K, 1, O, 0};
        int nt = O * OH * OW * K < 65536 ? 1 : nthreads;
        int64_t want = nt > 1 ? nt * 8 : 1;
        int64_t ntask = want > tiles ? tiles : want;
        ic.chunk = (tiles + ntask - 1) / ntask;
        ic.ttasks = (tiles + ic.chunk - 1) / ic.chunk;
        /* few pixel tiles (7x7, 14x14 maps): split the output channels too, in whole micro-tile
         * rows, so every thread gets an even share of the work */
        if (ic.ttasks < want) {
            int64_t mr = wl_active->mr, rblocks = (O + mr - 1) / mr;
            int64_t og = (want + ic.ttasks - 1) / ic.ttasks;
            if (og > rblocks) og = rblocks;
            ic.ob = ((rblocks + og - 1) / og) * mr;
        }
        wl_parallel_for(ic.ttasks * ((O + ic.ob - 1) / ic.ob), igemm_task, &ic, nt);
        if (ic.failed) {
            snprintf(err, errlen, "out of memory in Conv2D");
            return 1;
        }
    }
    return 0;
}

static void dw_task(void *vp, int64_t t) {
    const conv_ctx *cc = vp;
    const wl_op *op = cc->op;
    int64_t C = CP(1), H = CP(2), W = CP(3), OH = CP(5), OW = CP(6), KH = CP(7), KW = CP(8);
    int64_t c = t % C;
    float bias = cc->bias ? cc->bias[c] : 0.0f;
    float *y = cc->y + t * OH * OW;
    wl_active->dw_plane(cc->x + t * H * W, H, W, cc->w + c * KH * KW, KH, KW, CP(9), CP(10),
                        CP(11), CP(12), CP(13), CP(14), bias, y, OH, OW);
    if (cc->res) wl_active->binary_f32(B_ADD, y, 1, cc->res + t * OH * OW, 1, y, OH * OW);
    if (op->p[17] != U_IDENTITY) wl_active->unary_f32((int)op->p[17], y, y, OH * OW, op->f);
}

/* Winograd F(2,3): Y = A^T [ (G g G^T) .* (B^T d B) ] A over 4x4 input tiles, 2x2 outputs. */
void wl_winograd_weights(const float *w, int64_t o, int64_t c, float *out) {
    /* out layout: [16][o][c] */
    for (int64_t oi = 0; oi < o; oi++) {
        for (int64_t ci = 0; ci < c; ci++) {
            const float *g = w + (oi * c + ci) * 9;
            float t[4][3];
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[0 * 3 + j];
                t[1][j] = 0.5f * (g[0 * 3 + j] + g[1 * 3 + j] + g[2 * 3 + j]);
                t[2][j] = 0.5f * (g[0 * 3 + j] - g[1 * 3 + j] + g[2 * 3 + j]);
                t[3][j] = g[2 * 3 + j];
            }
            for (int i = 0; i < 4; i++) {
                float u[4];
                u[0] = t[i][0];
                u[1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
                u[2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
                u[3] = t[i][2];
                for (int j = 0; j < 4; j++) out[((int64_t)(i * 4 + j) * o + oi) * c + ci] = u[j];
            }
        }
    }
}

typedef struct {
    const wl_op *op;
    const float *x, *u, *bias, *res;
    float *y, *v, *m;
    int64_t n_img, tiles_w, tiles, np, chunk;
} wino_ctx;

/* input transform of a chunk of NR-tile panels: v[16][panel][c][nr] */
static void wino_in_task(void *vp, int64_t t) {
    const wino_ctx *wc = vp;
    const wl_op *op = wc->op;
    const int64_t nr = wl_active->nr;
    int64_t C = CP(1), H = CP(2), W = CP(3), pt = CP(11), pl = CP(12);
    const float *x = wc->x + wc->n_img * C * H * W;
    int64_t p0 = t * wc->chunk, p1 = p0 + wc->chunk < wc->np ? p0 + wc->chunk : wc->np;
    int64_t pstride = C * nr;           /* floats per panel in one of the 16 planes */
    int64_t plane = wc->np * pstride;   /* floats per plane */
    for (int64_t p = p0; p < p1; p++) {
        for (int64_t j = 0; j < nr; j++) {
            int64_t tile = p * nr + j;
            int64_t ty = tile / wc->tiles_w, tx = tile % wc->tiles_w;
            int64_t y0 = ty * 2 - pt, x0 = tx * 2 - pl;
            int valid = tile < wc->tiles;
            for (int64_t c = 0; c < C; c++) {
                const float *xc = x + c * H * W;
                float d[4][4];
                for (int i = 0; i < 4; i++)
                    for (int k = 0; k < 4; k++) {
                        int64_t iy = y0 + i, ix = x0 + k;
                        d[i][k] = (valid && iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix]
                                                                                  : 0.0f;
                    }
                float s[4][4];
                for (int k = 0; k < 4; k++) {
                    s[0][k] = d[0][k] - d[2][k];
                    s[1][k] = d[1][k] + d[2][k];
                    s[2][k] = d[2][k] - d[1][k];
                    s[3][k] = d[1][k] - d[3][k];
                }
                for (int i = 0; i < 4; i++) {
                    float r[4];
                    r[0] = s[i][0] - s[i][2];
                    r[1] = s[i][1] + s[i][2];
                    r[2] = s[i][2] - s[i][1];
                    r[3] = s[i][1] - s[i][3];
                    for (int k = 0; k < 4; k++)
                        wc->v[(i * 4 + k) * plane + p * pstride + c * nr + j] = r[k];
                }
            }
        }
    }
}

static void wino_out_task(void *vp, int64_t t) {
    /* t indexes (o, tile-row) pairs: m[16][o][tiles] -> y */
    const wino_ctx *wc = vp;
    const wl_op *op = wc->op;
    int64_t O = CP(4), OH = CP(5), OW = CP(6);
    int64_t tiles_h = (OH + 1) / 2;
    int64_t o = t / tiles_h, ty = t % tiles_h;
    float *y = wc->y + (wc->n_img * O + o) * OH * OW;
    const float *res = wc->res ? wc->res + (wc->n_img * O + o) * OH * OW : NULL;
    float bias = wc->bias ? wc->bias[o] : 0.0f;
    int64_t plane = O * wc->tiles;
    for (int64_t tx = 0; tx < wc->tiles_w; tx++) {
        int64_t tile = ty * wc->tiles_w + tx;
        float mm[4][4];
        for (int i = 0; i < 16; i++) mm[i / 4][i % 4] = wc->m[i * plane + o * wc->tiles + tile];
        float s[2][4];
        for (int k = 0; k < 4; k++) {
            s[0][k] = mm[0][k] + mm[1][k] + mm[2][k];
            s[1][k] = mm[1][k] - mm[2][k] - mm[3][k];
        }
        for (int i = 0; i < 2; i++) {
            int64_t oy = ty * 2 + i;
            if (oy >= OH) break;
            float r0 = s[i][0] + s[i][1] + s[i][2] + bias;
            float r1 = s[i][1] - s[i][2] - s[i][3] + bias;
            int64_t ox = tx * 2;
            if (res) {
                r0 += res[oy * OW + ox];
                if (ox + 1 < OW) r1 += res[oy * OW + ox + 1];
            }
            y[oy * OW + ox] = r0;
            if (ox + 1 < OW) y[oy * OW + ox + 1] = r1;
        }
    }
    if (op->p[17] != U_IDENTITY) {
        int64_t r0 = ty * 2, r1 = ty * 2 + 2 < OH ? ty * 2 + 2 : OH;
        wl_active->unary_f32((int)op->p[17], y + r0 * OW, y + r0 * OW, (r1 - r0) * OW, op->f);
    }
}

typedef struct {
    wino_ctx *wc;
    int64_t k;
} wino_gemm_ctx;

int wl_conv(const wl_op *op, const float *x, const float *w, const float *bias, const float *res,
            float *y, int nthreads, char *err, int errlen) {
    const int64_t nr = wl_active->nr;
    int64_t N = CP(0), C = CP(1), H = CP(2), W = CP(3), O = CP(4), OH = CP(5), OW = CP(6);
    int64_t KH = CP(7), KW = CP(8), G = CP(15);
    int act = (int)CP(17);
    bias = CP(16) ? bias : NULL;
    if (op->algo == C_DEPTHWISE) {
        conv_ctx cc = {op, x, w, bias, res, y, NULL, 0, 0, 0, 0};
        wl_parallel_for(N * C, dw_task, &cc, nthreads);
        return 0;
    }
    if (op->algo == C_WINOGRAD) {
        if (op->p[18] != nr) {
            snprintf(err, errlen, "winograd weights prepared for another ISA");
            return 1;
        }
        int64_t tiles_h = (OH + 1) / 2, tiles_w = (OW + 1) / 2, tiles = tiles_h * tiles_w;
        int64_t np = (tiles + nr - 1) / nr;
        float *v = wl_scratch(2, sizeof(float) * (size_t)(16 * np * C * nr));
        float *m = wl_scratch(3, sizeof(float) * (size_t)(16 * O * tiles + 1));
        if (!v || !m) {
            snprintf(err, errlen, "out of memory in Winograd conv");
            return 1;
        }
        for (int64_t n = 0; n < N; n++) {
            wino_ctx wc = {op, x, (const float *)op->aux, bias, res, y, v, m, n, tiles_w, tiles, np, 1};
            int64_t ntask = nthreads > 1 ? nthreads * 4 : 1;
            if (ntask > np) ntask = np;
            wc.chunk = (np + ntask - 1) / ntask;
            wl_parallel_for((np + wc.chunk - 1) / wc.chunk, wino_in_task, &wc, nthreads);
            for (int i = 0; i < 16; i++) {
                static const double noargs[4] = {0, 0, 0, 0};
                wl_gemm(O, tiles, C, wc.u + (int64_t)i * O * C, C, v + (int64_t)i * np * C * nr,
                        m + (int64_t)i * O * tiles, tiles, NULL, BIAS_NONE, NULL, U_IDENTITY,
                        noargs, nthreads);
            }
            wl_parallel_for(O * tiles_h, wino_out_task, &wc, nthreads);
        }
        return 0;
    }
    if (op->algo == C_IM2COL && G == 1 && C > 0 &&
        ((CP(9) == 1 && CP(10) == 1) || (CP(13) == 1 && CP(14) == 1 && KH * KW > 1)))
        /* strided 1x1 stays on im2col: its gather is already a single small copy */
        return conv_implicit(op, x, w, bias, res, y, nthreads, err, errlen);
    int64_t cg = C / G, og = O / G, K = cg * KH * KW, NP = OH * OW;
    int64_t np = (NP + nr - 1) / nr;
    float *bp = wl_scratch(0, sizeof(float) * (size_t)(np * (K > 0 ? K : 1) * nr));
    if (!bp) {
        snprintf(err, errlen, "out of memory in Conv2D");
        return 1;
    }
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < G; g++) {
            if (op->algo == C_1X1) {
                pack_b_parallel(x + (n * C + g * cg) * H * W, cg, NP, H * W, 0, bp, nthreads);
            } else {
                conv_ctx cc = {op, x, w, bias, res, y, bp, n, g, 1, np};
                int64_t ntask = nthreads > 1 ? nthreads * 4 : 1;
                if (ntask > np) ntask = np;
                cc.chunk = (np + ntask - 1) / ntask;
                wl_parallel_for((np + cc.chunk - 1) / cc.chunk, im2col_task, &cc, nthreads);
            }
            wl_gemm(og, NP, K, w + g * og * K, K, bp, y + (n * O + g * og) * NP, NP,
                    bias ? bias + g * og : NULL, bias ? BIAS_ROW : BIAS_NONE,
                    res ? res + (n * O + g * og) * NP : NULL, act, op->f, nthreads);
        }
    }
    return 0;
}
