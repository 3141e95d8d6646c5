/* Depthwise Conv2D (groups == channels == outputs): per channel plane on NCHW (algorithm
 * C_DEPTHWISE, the ISA's dw_plane in isa/depthwise.inc), or on the blocked layout NCHW16c
 * (algorithm C_NCHWC with groups > 1) as one vector of 16 channels per pixel, row by row;
 * border pixels read only their valid taps (no padded copy: these convs are bandwidth-bound). */
#include "blocked.h"

/* ---------------------------------------------------------------- NCHW: one plane per task */

typedef struct {
    const wl_op *op;
    const float *x, *w, *bias, *res;
    float *y;
} dw_ctx;

static void plane_task(void *vp, int64_t t) {
    const dw_ctx *dc = vp;
    const wl_conv_params *p = &dc->op->conv;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, KH = p->kh, KW = p->kw;
    int64_t c = t % p->c;
    float bias = dc->bias ? dc->bias[c] : 0.0f;
    float *y = dc->y + t * OH * OW;
    wl_active->dw_plane(dc->x + t * H * W, H, W, dc->w + c * KH * KW, KH, KW, p->stride_h,
                        p->stride_w, p->pad_top, p->pad_left, p->dilation_h, p->dilation_w, bias,
                        y, OH, OW);
    if (dc->res) wl_active->binary_f32(B_ADD, y, 1, dc->res + t * OH * OW, 1, y, OH * OW);
    if (p->act.fn != U_IDENTITY) wl_active->unary_f32((int)p->act.fn, y, y, OH * OW, p->act.prm);
}

int wl_depthwise(const wl_op *op, const wl_exec *ex, const float *x, const float *w,
                 const float *bias, const float *res, float *y) {
    dw_ctx dc = {op, x, w, bias, res, y};
    wl_parallel_for(op->conv.n * op->conv.c, plane_task, &dc, ex->nthreads);
    return 0;
}

/* ---------------------------------------------------------------- blocked: rows */

/* Output rows [oy0, oy1) of block cb on a small map with borders: the input rows they read are
 * copied into a zero-bordered scratch (this block only, (OW - 1) * sw + KW pixels wide), so every
 * pixel of every row is an interior pixel of the register tiles with all KH kernel rows (on an
 * 8x8 map, 3x3 pad 1, a quarter of the pixels were border pixels with tap tables of their own and
 * a quarter of the rows partial). Returns 0, having stored nothing, where the ISA has no row
 * tiles for the kernel or the scratch cannot be allocated. */
static int dw_rows_padded(const nc_ctx *c, int64_t cb, int64_t oy0, int64_t oy1, const float *w,
                          const float *bias, nc_epi *e) {
    int64_t rf = ((c->OW - 1) * c->sw + c->KW) * WL_BLK; /* floats per padded row */
    int64_t iy0 = oy0 * c->sh - c->pt, nrows = (oy1 - 1 - oy0) * c->sh + c->KH;
    int64_t left = c->pl * WL_BLK, keep = c->W * WL_BLK;
    if (left > rf) left = rf;
    if (keep > rf - left) keep = rf - left;
    float *xp = wl_scratch(1, sizeof(float) * (size_t)(nrows * rf));
    if (!xp) return 0;
    const float *xb = c->x + cb * c->xcb;
    for (int64_t r = 0; r < nrows; r++) {
        float *d = xp + r * rf;
        int64_t iy = iy0 + r;
        if (iy < 0 || iy >= c->H) {
            memset(d, 0, sizeof(float) * (size_t)rf);
            continue;
        }
        memset(d, 0, sizeof(float) * (size_t)left);
        memcpy(d + left, xb + iy * c->xrow, sizeof(float) * (size_t)keep);
        memset(d + left + keep, 0, sizeof(float) * (size_t)(rf - left - keep));
    }
    for (int64_t oy = oy0; oy < oy1; oy++) {
        int64_t yoff = (cb * c->OH + oy) * c->OW * WL_BLK;
        e->res = c->res ? c->res + yoff : NULL;
        float *yr = c->y + yoff;
        /* the same kernel, stride and row count for every row: the first row decides */
        if (!wl_active->nc_dw_row(c->OW, c->KH, c->KW, c->sw, xp + (oy - oy0) * c->sh * rf, rf, w,
                                  bias, yr, e))
            return 0;
        if (c->pass_act)
            wl_active->unary_f32((int)c->op->conv.act.fn, yr, yr, c->OW * WL_BLK, c->op->conv.act.prm);
    }
    return 1;
}

static void dw_task(void *vp, int64_t t) {
    nc_ctx *c = vp;
    int64_t chunks = ceil_div(c->OH, c->chunk);
    int64_t ci = t % chunks, cb = t / chunks; /* cb runs over n * blocks */
    const float *w = c->w + (cb % c->ob) * c->KH * c->KW * WL_BLK;
    const float *bias = c->bias + (cb % c->ob) * WL_BLK;
    nc_epi e = c->epi;
    e.final = 1;
    if (e.slope) e.slope += (cb % c->ob) * WL_BLK;
    int64_t oy_end = (ci + 1) * c->chunk < c->OH ? (ci + 1) * c->chunk : c->OH;
    /* (copied rows cost about one pixel per output pixel at stride 1, four at stride 2: there
     * the copy pays only on maps whose interior holds less than one whole tile) */
    if (c->borders && c->OW < (c->sw * c->sh == 1 ? 32 : 9) && c->dw == 1 && c->dh == 1 &&
        dw_rows_padded(c, cb, ci * c->chunk, oy_end, w, bias, &e))
        return;
    nc_table cache[NC_TABLES];
    if (!task_tables(c, cache)) return;
    int64_t lo, hi;
    interior(c, &lo, &hi);
    for (int64_t oy = ci * c->chunk; oy < oy_end; oy++) {
        int64_t iy = oy * c->sh - c->pt, ky0, ky1;
        valid_taps(iy, c->dh, c->KH, c->H, &ky0, &ky1);
        const float *xr = c->x + cb * c->xcb + iy * c->xrow;
        int64_t yoff = (cb * c->OH + oy) * c->OW * WL_BLK;
        float *yr = c->y + yoff;
        /* the interior in register tiles where the ISA has them (dilation 1 along the row) */
        int64_t done = 0;
        if (c->dw == 1 && hi > lo && ky1 > ky0) {
            e.res = c->res ? c->res + yoff + lo * WL_BLK : NULL;
            done = wl_active->nc_dw_row(hi - lo, ky1 - ky0, c->KW, c->sw,
                                        xr + ky0 * c->dh * c->xrow + (lo * c->sw - c->pl) * WL_BLK,
                                        c->dh * c->xrow, w + ky0 * c->KW * WL_BLK, bias,
                                        yr + lo * WL_BLK, &e);
        }
        for (int64_t ox = 0; ox < c->OW;) {
            int64_t ix = ox * c->sw - c->pl, kx0 = 0, kx1 = c->KW, np = 1;
            if (ox >= lo && ox < hi) {
                if (ox < lo + done) {
                    ox = lo + done;
                    continue;
                }
                np = hi - ox < 8 ? hi - ox : 8;
            } else {
                valid_taps(ix, c->dw, c->KW, c->W, &kx0, &kx1);
            }
            const nc_table *tb = table(c, cache, 1, 1, ky0, ky1, kx0, kx1);
            e.res = c->res ? c->res + yoff + ox * WL_BLK : NULL;
            wl_active->nc_dw_tile((int)np, tb->n, tb->xo, tb->wo, xr + ix * WL_BLK, w, bias,
                                  yr + ox * WL_BLK, c->sw * WL_BLK, &e);
            ox += np;
        }
        if (c->pass_act)
            wl_active->unary_f32((int)c->op->conv.act.fn, yr, yr, c->OW * WL_BLK, c->op->conv.act.prm);
    }
}

int wl_depthwise_blocked(const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                         float *y) {
    const wl_conv_params *p = &op->conv;
    if (!p->blocked_input) return wl_fail(ex, "blocked depthwise conv needs a blocked input");
    if (p->n * p->o * p->oh * p->ow == 0) return 0;
    nc_ctx c;
    if (wl_nc_prepare(&c, op, ex, x, res, y)) return 1;
    int64_t want = 8 * (int64_t)ex->nthreads; /* tasks: enough to balance the threads */
    int64_t chunks = ceil_div(want, p->n * c.ob);
    if (chunks > p->oh) chunks = p->oh;
    c.chunk = ceil_div(p->oh, chunks);
    c.tmax = c.KH * c.KW;
    wl_parallel_for(p->n * c.ob * ceil_div(p->oh, c.chunk), dw_task, &c, ex->nthreads);
    if (c.failed) return wl_fail(ex, "out of memory in blocked Conv2D");
    return 0;
}
