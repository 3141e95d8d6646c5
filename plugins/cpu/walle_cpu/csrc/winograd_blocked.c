/* Conv2D by Winograd F(m x m, 3x3), m = 4 or 2 (op->conv.packed_nr), on the blocked layout
 * (NCHW16c in and out), algorithm C_WINOGRAD_NCHWC: 3x3, stride 1, dilation 1, one group, a
 * blocked input, constant weights.
 *
 * An output tile of m x m pixels reads a T x T input tile (T = m + 2); transformed (B^T d B),
 * its T^2 points each meet their own transformed weights (G g G^T: T^2 per input and output
 * channel instead of 9) in a product over the input channels, and A^T M A turns the sums back
 * into m^2 outputs. F(4, 3): 36 multiplies per 16 outputs and input channel where direct
 * convolution does 144; F(2, 3): 16 per 4 (36), with 16 weights instead of 36 (small maps,
 * where the weights' traffic decides).
 *
 * The tiles of an image run in strips sized so that a strip's transformed inputs and sums stay
 * in the L2 cache. Where there are strips for every thread and the transformed weights are
 * small (up to 1 MB), each thread runs whole strips on its own scratch: one parallel region for
 * the conv (super_resolution's 64 -> 32 conv on 48x64: 6 strips, 18 regions before). Else a
 * strip is three parallel passes:
 *   1. input transform, per (input block, run of tiles): v[point][block][tile][16];
 *   2. per (point, group of filter blocks): m[point][out block][tile] = v[point] x u[point], a
 *      blocked 1x1 convolution whose "pixels" are the strip's tiles, run by the blocked conv's
 *      register-tiled micro-kernel (wl_active->nc_conv_tile) over the real input channels only
 *      (a padding channel's value is never read: it may be anything);
 *   3. output transform, per (output block, run of tiles), with the blocked conv's epilogue
 *      (bias, residual, clip, PRelu; other activations as a pass over the stored rows).
 *
 * Descriptor: op->conv (packed_nr: m); aux: per point, the transformed weights packed as a 1x1
 * blocked conv's (groups of filter_blocks filter blocks, input channels padded to whole
 * blocks); aux2: the bias padded to whole blocks (then, with prelu, the slopes). */
#include "blocked.h"

#define WB_STRIP_BYTES (512 * 1024) /* a strip's transformed inputs and sums */
#define WB_RUN 8                     /* tiles per task of the transforms */
#define WB_WHOLE_U_BYTES (1024 * 1024) /* transformed weights read by whole-strip tasks */

typedef struct {
    const wl_op *op;
    const float *x, *u, *bias, *res;
    float *y, *v, *sums;
    const int64_t *xo, *wo_full, *wo_last; /* the GEMM's (input, weight) offsets */
    int64_t C, H, W, O, OH, OW, pt, pl, cbn, obn, tw, fb, ngroups;
    int m, points; /* output tile m x m, (m + 2)^2 points */
    int64_t n, t0, nt, cap; /* image, the strip's first tile and tiles, tiles per strip buffer */
    int64_t tiles, strips;  /* tiles of an image, strips of an image (whole-strip tasks) */
    int failed;             /* a whole-strip task found no memory */
    nc_epi epi;
    int pass_act;
} wb_ctx;

static void in_task(void *vp, int64_t t) {
    const wb_ctx *c = vp;
    int64_t runs = ceil_div(c->nt, WB_RUN), cb = t / runs, r0 = t % runs * WB_RUN;
    int64_t r1 = r0 + WB_RUN < c->nt ? r0 + WB_RUN : c->nt, vs = c->cbn * c->cap * WL_BLK;
    const float *x = c->x + (c->n * c->cbn + cb) * c->H * c->W * WL_BLK;
    for (int64_t r = r0; r < r1; r++) {
        int64_t tile = c->t0 + r, ty = tile / c->tw, tx = tile % c->tw;
        wl_active->wino_in(c->m, x, c->H, c->W, ty * c->m - c->pt, tx * c->m - c->pl,
                           c->v + (cb * c->cap + r) * WL_BLK, vs);
    }
}

static void gemm_task(void *vp, int64_t t) {
    static const float zeros[4 * WL_BLK];
    static const nc_epi plain; /* raw sums: no load, no epilogue */
    const wb_ctx *c = vp;
    int64_t k = t / c->ngroups, g = t % c->ngroups, ob0 = g * c->fb;
    int64_t fb = c->obn - ob0 < c->fb ? c->obn - ob0 : c->fb;
    const int64_t *wo = fb == c->fb ? c->wo_full : c->wo_last;
    const float *v = c->v + k * c->cbn * c->cap * WL_BLK;
    const float *u = c->u + (k * c->obn + ob0) * c->cbn * WL_BLK * WL_BLK;
    float *m = c->sums + (k * c->obn + ob0) * c->cap * WL_BLK;
    int64_t po[12], pmax = wl_active->nc_p[fb];
    for (int64_t p = 0; p < 12; p++) po[p] = p * WL_BLK;
    for (int64_t q = 0; q < c->nt;) {
        int64_t left = c->nt - q, np = ceil_div(left, ceil_div(left, pmax));
        wl_active->nc_conv_tile((int)fb, (int)np, c->C, c->xo, wo, v + q * WL_BLK, u, zeros,
                                m + q * WL_BLK, c->cap * WL_BLK, po, &plain);
        q += np;
    }
}

static void out_task(void *vp, int64_t t) {
    const wb_ctx *c = vp;
    int64_t runs = ceil_div(c->nt, WB_RUN), ob = t / runs, r0 = t % runs * WB_RUN;
    int64_t r1 = r0 + WB_RUN < c->nt ? r0 + WB_RUN : c->nt, ms = c->obn * c->cap * WL_BLK;
    int64_t plane = c->OH * c->OW * WL_BLK, ys = c->OW * WL_BLK;
    float *y = c->y + (c->n * c->obn + ob) * plane;
    const float *res = c->res ? c->res + (c->n * c->obn + ob) * plane : NULL;
    nc_epi e = c->epi;
    if (e.slope) e.slope += ob * WL_BLK;
    const wl_conv_params *p = &c->op->conv;
    for (int64_t r = r0; r < r1; r++) {
        int64_t tile = c->t0 + r, oy = tile / c->tw * c->m, ox = tile % c->tw * c->m;
        int rows = (int)(c->OH - oy < c->m ? c->OH - oy : c->m);
        int cols = (int)(c->OW - ox < c->m ? c->OW - ox : c->m);
        int64_t at = oy * ys + ox * WL_BLK;
        wl_active->wino_out(c->m, c->sums + (ob * c->cap + r) * WL_BLK, ms, c->bias + ob * WL_BLK,
                            y + at, ys, rows, cols, res ? res + at : NULL, &e);
        if (c->pass_act)
            for (int i = 0; i < rows; i++)
                wl_active->unary_f32((int)p->act.fn, y + at + i * ys, y + at + i * ys,
                                     cols * WL_BLK, p->act.prm);
    }
}

/* One whole strip (image t / strips), its three passes in turn on this thread's scratch. */
static void strip_task(void *vp, int64_t t) {
    wb_ctx *shared = vp, c = *shared;
    c.n = t / c.strips, c.t0 = t % c.strips * c.cap;
    c.nt = c.tiles - c.t0 < c.cap ? c.tiles - c.t0 : c.cap;
    if (c.nt <= 0) return;
    c.v = wl_scratch(2, sizeof(float) * (size_t)(c.points * c.cbn * c.cap * WL_BLK));
    c.sums = wl_scratch(3, sizeof(float) * (size_t)(c.points * c.obn * c.cap * WL_BLK));
    if (!c.v || !c.sums) {
        __atomic_store_n(&shared->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    int64_t runs = ceil_div(c.nt, WB_RUN);
    for (int64_t i = 0; i < c.cbn * runs; i++) in_task(&c, i);
    for (int64_t i = 0; i < c.points * c.ngroups; i++) gemm_task(&c, i);
    for (int64_t i = 0; i < c.obn * runs; i++) out_task(&c, i);
}

int wl_conv_winograd_blocked(const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                             float *y) {
    const wl_conv_params *p = &op->conv;
    if (p->filter_blocks != wl_active->nc_fb)
        return wl_fail(ex, "Winograd blocked conv weights prepared for another ISA");
    if (p->kh != 3 || p->kw != 3 || p->stride_h != 1 || p->stride_w != 1 || p->dilation_h != 1 ||
        p->dilation_w != 1 || p->groups != 1 || !p->blocked_input ||
        (p->packed_nr != 2 && p->packed_nr != 4))
        return wl_fail(ex, "Winograd blocked conv: not a 3x3 stride-1 conv on a blocked input "
                           "with 2x2 or 4x4 output tiles");
    if (p->n * p->o * p->oh * p->ow == 0) return 0;
    wb_ctx c = {.op = op, .x = x, .u = (const float *)op->aux, .bias = (const float *)op->aux2,
                .res = res, .y = y, .C = p->c, .H = p->h, .W = p->w, .O = p->o, .OH = p->oh,
                .OW = p->ow, .pt = p->pad_top, .pl = p->pad_left, .cbn = ceil_div(p->c, WL_BLK),
                .obn = ceil_div(p->o, WL_BLK), .fb = p->filter_blocks};
    c.ngroups = ceil_div(c.obn, c.fb);
    c.m = (int)p->packed_nr;
    c.points = (c.m + 2) * (c.m + 2);
    c.tw = ceil_div(c.OW, c.m);
    int64_t tiles = ceil_div(c.OH, c.m) * c.tw;
    int act = (int)p->act.fn;
    if (act == U_RELU || act == U_CLIP) {
        c.epi.clip = 1;
        c.epi.lo = act == U_RELU ? 0.0f : (float)p->act.prm[0];
        c.epi.hi = act == U_RELU ? __builtin_inff() : (float)p->act.prm[1];
    } else {
        c.pass_act = act != U_IDENTITY;
    }
    if (p->prelu) c.epi.slope = c.bias + c.obn * WL_BLK;
    /* tiles per strip: its v and m within WB_STRIP_BYTES, but at least a few register tiles */
    int64_t per_tile = c.points * (c.cbn + c.obn) * WL_BLK * (int64_t)sizeof(float);
    c.cap = WB_STRIP_BYTES / per_tile;
    if (c.cap < 24) c.cap = 24;
    if (c.cap > tiles) c.cap = tiles;
    /* Strips to go round (at least one per thread) and transformed weights that stay in the
     * L2 cache beside a strip: each thread runs whole strips, one parallel region in all. Else
     * (a map of a strip or two: the weights, read once per strip, decide) the threads share
     * each pass of each strip, three regions a strip. */
    int64_t strips = ceil_div(tiles, c.cap);
    int64_t u_bytes = c.points * c.cbn * c.obn * WL_BLK * WL_BLK * (int64_t)sizeof(float);
    int whole = ex->nthreads > 1 && p->n * strips >= ex->nthreads && u_bytes <= WB_WHOLE_U_BYTES;
    if (whole) { /* a multiple of the threads, if the image has strips enough */
        if (strips >= ex->nthreads) strips = ceil_div(strips, ex->nthreads) * ex->nthreads;
        c.cap = ceil_div(tiles, strips);
        c.tiles = tiles, c.strips = ceil_div(tiles, c.cap);
    }
    float *v = wl_scratch(2, sizeof(float) * (size_t)(c.points * c.cbn * c.cap * WL_BLK));
    float *m = wl_scratch(3, sizeof(float) * (size_t)(c.points * c.obn * c.cap * WL_BLK));
    int64_t *tab = wl_scratch(0, sizeof(int64_t) * (size_t)(3 * c.C));
    if (!v || !m || !tab) return wl_fail(ex, "out of memory in Winograd blocked conv");
    /* the GEMM's reduction over the real input channels: channel ci of block cb */
    int64_t last = c.obn - (c.ngroups - 1) * c.fb;
    for (int64_t ch = 0; ch < c.C; ch++) {
        int64_t cb = ch / WL_BLK, ci = ch % WL_BLK;
        tab[ch] = cb * c.cap * WL_BLK + ci;
        tab[c.C + ch] = ch * c.fb * WL_BLK;
        tab[2 * c.C + ch] = ch * last * WL_BLK;
    }
    c.v = v, c.sums = m, c.xo = tab, c.wo_full = tab + c.C, c.wo_last = tab + 2 * c.C;
    if (whole) {
        wl_parallel_for(p->n * c.strips, strip_task, &c, ex->nthreads);
        return c.failed ? wl_fail(ex, "out of memory in Winograd blocked conv") : 0;
    }
    for (int64_t n = 0; n < p->n; n++)
        for (int64_t t0 = 0; t0 < tiles; t0 += c.cap) {
            c.n = n, c.t0 = t0, c.nt = tiles - t0 < c.cap ? tiles - t0 : c.cap;
            int64_t runs = ceil_div(c.nt, WB_RUN);
            wl_parallel_for(c.cbn * runs, in_task, &c, ex->nthreads);
            wl_parallel_for(c.points * c.ngroups, gemm_task, &c, ex->nthreads);
            wl_parallel_for(c.obn * runs, out_task, &c, ex->nthreads);
        }
    return 0;
}
