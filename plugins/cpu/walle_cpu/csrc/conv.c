/* Conv2D: picks the kernel of the descriptor's algorithm, and runs the two GEMM ones itself:
 * 1x1-gemm (the input planes are the GEMM's B) and im2col+gemm (pixel panels gathered into
 * scratch). Stride-1 (or dilation-1) im2col convs run as implicit GEMM (conv_implicit.c), one
 * group or groups of 4 or more outputs; the others live in winograd.c, depthwise.c and
 * conv_blocked.c. */
#include <string.h>

#include "internal.h"

typedef struct {
    const wl_op *op;
    const float *x, *w, *bias, *res;
    float *y;
    float *bp;
    int64_t n_img, g, chunk, np;
} conv_ctx;

static void im2col_task(void *vp, int64_t t) {
    const conv_ctx *cc = vp;
    const wl_op *op = cc->op;
    const wl_conv_params *cp = &op->conv;
    const int64_t nr = wl_active->nr;
    int64_t C = cp->c, H = cp->h, W = cp->w, OH = cp->oh, OW = cp->ow, KH = cp->kh, KW = cp->kw;
    int64_t sh = cp->stride_h, sw = cp->stride_w, pt = cp->pad_top, pl = cp->pad_left;
    int64_t dh = cp->dilation_h, dw = cp->dilation_w, G = cp->groups;
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

static int im2col_gemm(const wl_op *op, const wl_exec *ex, const float *x, const float *w,
                       const float *bias, const float *res, float *y) {
    const wl_conv_params *cp = &op->conv;
    const int64_t nr = wl_active->nr;
    int nthreads = ex->nthreads;
    int64_t N = cp->n, C = cp->c, H = cp->h, W = cp->w, O = cp->o, OH = cp->oh, OW = cp->ow;
    int64_t G = cp->groups, cg = C / G, og = O / G, K = cg * cp->kh * cp->kw, NP = OH * OW;
    int64_t np = (NP + nr - 1) / nr;
    float *bp = wl_scratch(0, sizeof(float) * (size_t)(np * (K > 0 ? K : 1) * nr));
    if (!bp) return wl_fail(ex, "out of memory in Conv2D");
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < G; g++) {
            if (op->algo == C_1X1) {
                wl_pack_b_parallel(x + (n * C + g * cg) * H * W, cg, NP, H * W, 0, bp, nthreads);
            } else {
                conv_ctx cc = {op, x, w, bias, res, y, bp, n, g, 1, np};
                int64_t ntask = nthreads > 1 ? nthreads * 4 : 1;
                if (ntask > np) ntask = np;
                cc.chunk = (np + ntask - 1) / ntask;
                wl_parallel_for((np + cc.chunk - 1) / cc.chunk, im2col_task, &cc, nthreads);
            }
            wl_gemm(og, NP, K, w + g * og * K, K, bp, y + (n * O + g * og) * NP, NP,
                    bias ? bias + g * og : NULL, bias ? BIAS_ROW : BIAS_NONE,
                    res ? res + (n * O + g * og) * NP : NULL, (int)cp->act.fn, cp->act.prm,
                    nthreads);
        }
    }
    return 0;
}

int wl_conv(const wl_op *op, const wl_exec *ex) {
    const wl_conv_params *cp = &op->conv;
    const float *x = (const float *)wl_in(op, ex, 0);
    const float *res = wl_in_opt(op, ex, cp->residual);
    float *y = (float *)wl_out(op, ex);
    if (op->algo == C_WINOGRAD_NCHWC) /* winograd_blocked.c */
        return wl_conv_winograd_blocked(op, ex, x, res, y);
    if (op->algo == C_NCHWC) /* weights and bias packed by the compiler (aux, aux2) */
        return cp->groups > 1 && !cp->blockdiag ? wl_depthwise_blocked(op, ex, x, res, y)
                              : wl_conv_blocked(op, ex, x, res, y);
    const float *w = (const float *)wl_in(op, ex, 1);
    const float *bias = cp->has_bias ? (const float *)wl_in(op, ex, 2) : NULL;
    switch (op->algo) {
    case C_DEPTHWISE: return wl_depthwise(op, ex, x, w, bias, res, y);
    case C_WINOGRAD: return wl_conv_winograd(op, ex, x, bias, res, y);
    case C_IM2COL:
        /* strided 1x1 stays on im2col: its gather is already a single small copy */
        /* grouped too, when a group has outputs enough to fill micro-tile rows (RegNet's,
         * ResNeXt's 8-channel groups); few per group (depthwise-like) stay on im2col */
        if ((cp->groups == 1 || cp->o / cp->groups >= 4) && cp->c > 0 &&
            ((cp->stride_h == 1 && cp->stride_w == 1) ||
             (cp->dilation_h == 1 && cp->dilation_w == 1 && cp->kh * cp->kw > 1)))
            return wl_conv_implicit(op, ex, x, w, bias, res, y);
        return im2col_gemm(op, ex, x, w, bias, res, y);
    case C_1X1: return im2col_gemm(op, ex, x, w, bias, res, y);
    default: return wl_fail(ex, "unknown Conv2D algorithm %d", op->algo);
    }
}
