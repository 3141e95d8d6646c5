/* Conv2D by implicit GEMM (algorithm im2col+gemm with stride 1, or dilation 1 and a kernel wider
 * than 1x1; one group, or groups of several outputs): no im2col matrix, the GEMM tiles read
 * shifted views of a padded copy of the input (the ISA's conv_tile in isa/gemm.inc). */
#include <string.h>

#include "internal.h"

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
    int64_t wp, tiles, chunk, K; /* K: one group's reduction (cg * KH * KW) */
    int64_t og, gstride;          /* outputs per group; floats from one group's planes to the next */
    int64_t ttasks, ob; /* task t: tile chunk t % ttasks, output rows [ob * (t / ttasks), +ob) */
    int failed;
} igemm_ctx;

static void igemm_task(void *vp, int64_t t) {
    igemm_ctx *ic = vp;
    const wl_op *op = ic->op;
    const wl_conv_params *cp = &op->conv;
    const wl_isa *isa = wl_active;
    const int64_t nr = isa->nr, mr = isa->mr;
    int64_t O = cp->o, OH = cp->oh, OW = cp->ow, NP = OH * OW, wp = ic->wp;
    int64_t total = (OH - 1) * wp + OW; /* the grid up to the last valid pixel */
    int act = (int)cp->act.fn;
    /* a tile whose pixels are one run of an output row is stored there by the tile itself,
     * with bias, residual and ReLU / Clip; others go through tmp and the passes below */
    int direct = act == U_IDENTITY || act == U_RELU || act == U_CLIP;
    int epi_act = act == U_RELU ? EPI_RELU : act == U_CLIP ? EPI_CLIP : EPI_NONE;
    float lo = act == U_CLIP ? (float)cp->act.prm[0] : 0.0f, hi = act == U_CLIP ? (float)cp->act.prm[1] : 0.0f;
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
        for (int64_t r = o0, rows; r < o1; r += rows) {
            /* a micro-tile's rows never cross a group: the group picks the input planes */
            int64_t g = r / ic->og, end = (g + 1) * ic->og < o1 ? (g + 1) * ic->og : o1;
            rows = end - r < mr ? end - r : mr;
            const float *xg = ic->xp + g * ic->gstride + i0;
            int64_t oy = i0 / wp, ox = i0 % wp;
            if (direct && ox + nv <= OW) { /* every pixel valid, in one output row */
                int64_t at = r * NP + oy * OW + ox;
                wl_tile_epi e = {NULL, ic->bias ? ic->bias + r : NULL, NULL,
                                 ic->res ? ic->res + at : NULL, 0, NP, epi_act, lo, hi};
                isa->conv_tile((int)rows, ic->K, ic->w + r * ic->K, ic->K, xg, ic->off, ic->y + at,
                               NP, (int)nv, &e);
                continue;
            }
            isa->conv_tile((int)rows, ic->K, ic->w + r * ic->K, ic->K, xg, ic->off, tmp, nr,
                           (int)nr, NULL);
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
            if (act != U_IDENTITY) isa->unary_f32(act, tmp, tmp, rows * nr, cp->act.prm);
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

int wl_conv_implicit(const wl_op *op, const wl_exec *ex, const float *x, const float *w,
                     const float *bias, const float *res, float *y) {
    const wl_conv_params *cp = &op->conv;
    const int64_t nr = wl_active->nr;
    int nthreads = ex->nthreads;
    int64_t N = cp->n, C = cp->c, H = cp->h, W = cp->w, O = cp->o, OH = cp->oh, OW = cp->ow;
    int64_t KH = cp->kh, KW = cp->kw, pt = cp->pad_top, pl = cp->pad_left;
    int64_t dh = cp->dilation_h, dw = cp->dilation_w;
    int64_t sh = cp->stride_h, sw = cp->stride_w, strided = sh > 1 || sw > 1;
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
    int64_t G = cp->groups, cg = C / G, K = cg * KH * KW, plane = hp * wp, planes = C * psh * psw;
    size_t xfloats = (size_t)(planes * plane + nr + wp + 64);
    float *xp = wl_scratch(2, sizeof(float) * xfloats);
    int64_t *off = wl_scratch(3, sizeof(int64_t) * (size_t)K);
    if (!xp || !off) {
        return wl_fail(ex, "out of memory in Conv2D");
    }
    for (int64_t c = 0, k = 0; c < cg; c++) /* group 0's; group g's are g * cg planes on */
        for (int64_t ky = 0; ky < KH; ky++)
            for (int64_t kx = 0; kx < KW; kx++)
                off[k++] = strided ? (((ky % sh) * psw + kx % sw) * C + c) * plane + (ky / sh) * wp + kx / sw
                                   : c * plane + ky * dh * wp + kx * dw;
    /* the last row's dropped columns are never computed: a 1-D conv of 96 outputs (k 7, pad 3,
     * a 99-wide grid) takes 3 tiles of 32 pixels, not 4 with one of 3 */
    int64_t tiles = ((OH - 1) * wp + OW + nr - 1) / nr;
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
                        off, wp, tiles, 1, K, O / G, cg * plane, 1, O, 0};
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
            return wl_fail(ex, "out of memory in Conv2D");
        }
    }
    return 0;
}
