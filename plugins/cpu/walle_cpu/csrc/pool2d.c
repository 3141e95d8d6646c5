/* Pool2D (max, avg, lp) on NCHW planes, and max/avg on the blocked layout NCHW16c (one vector
 * of 16 channels per output pixel, the ISA's nc_pool_px in isa/pool2d.inc); and the separable
 * 2-D resize (fn P_RESIZE: nearest or linear, on either layout), a windowed sampling too. */
#include <math.h>

#include "blocked.h"

/* ---------------------------------------------------------------- NCHW: one plane per task */

typedef struct {
    const wl_op *op;
    const float *x;
    float *y;
    int64_t chunk; /* blocked: output rows per task */
} pool_ctx;

static void pool_task(void *vp, int64_t t) {
    pool_ctx *c = vp;
    const wl_pool_params *p = &c->op->pool;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, KH = p->kh, KW = p->kw;
    int64_t SH = p->stride_h, SW = p->stride_w, PT = p->pad_top, PL = p->pad_left;
    int64_t PB = p->pad_bottom, PR = p->pad_right, DH = p->dilation_h, DW = p->dilation_w;
    int fn = c->op->fn, cip = (int)p->count_include_pad;
    double lp = (double)p->lp;
    const float *x = c->x + t * H * W;
    float *y = c->y + t * OH * OW;
    if (fn == P_MAX && SW > 1 && W <= 8192) {
        /* strided windows: the max over the KH input rows first (contiguous, vectorises), then
         * KW strided taps of that row instead of KH * KW strided taps per output */
        float vm[W];
        for (int64_t oy = 0; oy < OH; oy++) {
            float *yr = y + oy * OW;
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] = -INFINITY;
            int any = 0;
            for (int64_t ky = 0; ky < KH; ky++) {
                int64_t iy = oy * SH - PT + ky * DH;
                if (iy < 0 || iy >= H) continue;
                const float *xr = x + iy * W;
                if (!any) {
                    memcpy(vm, xr, sizeof(float) * (size_t)W);
                    any = 1;
                    continue;
                }
                for (int64_t ix = 0; ix < W; ix++) {
                    float v = xr[ix], m = vm[ix];
                    vm[ix] = (v > m || v != v) ? v : m;
                }
            }
            if (!any) continue;
            for (int64_t kx = 0; kx < KW; kx++) {
                int64_t off = kx * DW - PL; /* ix = ox * SW + off */
                int64_t lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
                int64_t hi = (W - 1 - off) < 0 ? 0 : (W - 1 - off) / SW + 1;
                if (hi > OW) hi = OW;
                for (int64_t ox = lo; ox < hi; ox++) {
                    float v = vm[ox * SW + off], m = yr[ox];
                    yr[ox] = (v > m || v != v) ? v : m;
                }
            }
        }
        return;
    }
    if (fn == P_MAX) {
        /* row-wise: for each kernel tap, the output columns whose input is in bounds form one
         * interval, so the inner loop is branch-free (and vectorises when SW == 1) */
        for (int64_t oy = 0; oy < OH; oy++) {
            float *yr = y + oy * OW;
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] = -INFINITY;
            for (int64_t ky = 0; ky < KH; ky++) {
                int64_t iy = oy * SH - PT + ky * DH;
                if (iy < 0 || iy >= H) continue;
                const float *xr = x + iy * W;
                for (int64_t kx = 0; kx < KW; kx++) {
                    int64_t off = kx * DW - PL; /* ix = ox * SW + off */
                    int64_t lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
                    int64_t hi = (W - 1 - off) < 0 ? 0 : (W - 1 - off) / SW + 1;
                    if (hi > OW) hi = OW;
                    if (SW == 1) {
                        const float *xs = xr + off;
                        for (int64_t ox = lo; ox < hi; ox++) {
                            float v = xs[ox], m = yr[ox];
                            yr[ox] = (v > m || v != v) ? v : m;
                        }
                    } else {
                        for (int64_t ox = lo; ox < hi; ox++) {
                            float v = xr[ox * SW + off], m = yr[ox];
                            yr[ox] = (v > m || v != v) ? v : m;
                        }
                    }
                }
            }
        }
        return;
    }
    for (int64_t oy = 0; oy < OH; oy++) {
        for (int64_t ox = 0; ox < OW; ox++) {
            float m = -INFINITY;
            double s = 0;
            int64_t valid = 0, padded = 0;
            for (int64_t ky = 0; ky < KH; ky++) {
                int64_t iy = oy * SH - PT + ky * DH;
                int yin = iy >= 0 && iy < H, yp = iy >= -PT && iy < H + PB;
                for (int64_t kx = 0; kx < KW; kx++) {
                    int64_t ix = ox * SW - PL + kx * DW;
                    int xin = ix >= 0 && ix < W, xp = ix >= -PL && ix < W + PR;
                    padded += yp && xp;
                    if (!(yin && xin)) continue;
                    valid++;
                    float v = x[iy * W + ix];
                    if (fn == P_MAX) { NANMAX(m, v); }
                    else if (fn == P_AVG) s += v;
                    else {
                        double av = fabs((double)v);
                        s += lp == 2 ? av * av : lp == 1 ? av : pow(av, lp);
                    }
                }
            }
            float r;
            if (fn == P_MAX) r = m;
            else if (fn == P_AVG) {
                int64_t cnt = cip ? padded : valid;
                r = (float)(s / (double)(cnt > 1 ? cnt : 1));
            } else r = (float)(lp == 2 ? sqrt(s) : lp == 1 ? s : pow(s, 1.0 / lp));
            y[oy * OW + ox] = r;
        }
    }
}

/* ---------------------------------------------------------------- blocked */

static void blocked_task(void *vp, int64_t t) {
    const pool_ctx *c = vp;
    const wl_pool_params *p = &c->op->pool;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, KH = p->kh, KW = p->kw;
    int64_t SH = p->stride_h, SW = p->stride_w, PT = p->pad_top, PL = p->pad_left;
    int64_t PB = p->pad_bottom, PR = p->pad_right, DH = p->dilation_h, DW = p->dilation_w;
    int avg = c->op->fn == P_AVG, cip = (int)p->count_include_pad;
    int64_t chunks = ceil_div(OH, c->chunk), b = t / chunks; /* b runs over n * blocks */
    const float *x = c->x + b * H * W * WL_BLK;
    for (int64_t oy = (t % chunks) * c->chunk; oy < OH && oy < (t % chunks + 1) * c->chunk; oy++) {
        int64_t iy = oy * SH - PT, ky0, ky1, py0, py1;
        valid_taps(iy, DH, KH, H, &ky0, &ky1);
        valid_taps(iy + PT, DH, KH, H + PT + PB, &py0, &py1); /* taps inside the padding */
        float *yr = c->y + (b * OH + oy) * OW * WL_BLK;
        for (int64_t ox = 0; ox < OW; ox++) {
            int64_t ix = ox * SW - PL, kx0, kx1, px0, px1;
            valid_taps(ix, DW, KW, W, &kx0, &kx1);
            valid_taps(ix + PL, DW, KW, W + PL + PR, &px0, &px1);
            int64_t cnt = cip ? (py1 - py0) * (px1 - px0) : (ky1 - ky0) * (kx1 - kx0);
            wl_active->nc_pool_px(avg, x + ((iy + ky0 * DH) * W + ix + kx0 * DW) * WL_BLK,
                                  DH * W * WL_BLK, DW * WL_BLK, ky1 - ky0, kx1 - kx0,
                                  yr + ox * WL_BLK, 1.0f / (float)(cnt > 1 ? cnt : 1));
        }
    }
}

static void pool_blocked(const wl_op *op, const float *x, float *y, int nthreads) {
    int64_t lanes = op->pool.n * ceil_div(op->pool.c, WL_BLK), OH = op->pool.oh;
    if (lanes * OH * op->pool.ow == 0) return;
    int64_t chunks = ceil_div(8 * (int64_t)nthreads, lanes);
    if (chunks > OH) chunks = OH;
    pool_ctx c = {op, x, y, ceil_div(OH, chunks)};
    wl_parallel_for(lanes * ceil_div(OH, c.chunk), blocked_task, &c, nthreads);
}

/* ---------------------------------------------------------------- resize (fn P_RESIZE) */

/* Rows [oy0, oy1) of one plane (a channel of NCHW, or a 16-channel block of NCHW16c) of a
 * separable two-tap resize: every output element reads its two source rows and, in each, its
 * two pixels once; one pass instead of a gather, a subtract, a multiply and an add per axis. */
static void resize_task(void *vp, int64_t t) {
    const pool_ctx *c = vp;
    const wl_pool_params *p = &c->op->pool;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, chunks = ceil_div(OH, c->chunk);
    int64_t plane = t / chunks, oy0 = (t % chunks) * c->chunk;
    int64_t oy1 = oy0 + c->chunk < OH ? oy0 + c->chunk : OH, lanes = p->blocked ? WL_BLK : 1;
    const int64_t *yi = (const int64_t *)c->op->aux, *xo = yi + 2 * OH;
    const float *fy = (const float *)c->op->aux2, *fx = fy + OH;
    const float *x = c->x + plane * H * W * lanes;
    int near = p->kh == 1;
    for (int64_t oy = oy0; oy < oy1; oy++) {
        const float *r0 = x + yi[2 * oy] * W * lanes, *r1 = x + yi[2 * oy + 1] * W * lanes;
        float *yr = c->y + (plane * OH + oy) * OW * lanes, f = fy[oy];
        if (p->blocked) {
            wl_active->nc_resize_row(r0, r1, f, xo, fx, OW, yr, near);
        } else if (near) {
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] = r0[xo[2 * ox]];
        } else if (W <= 8192) {
            /* the rows' blend first (contiguous: vectorises), then the columns from it */
            float row[W];
            if (f != 0.0f) {
                for (int64_t i = 0; i < W; i++) row[i] = r0[i] + (r1[i] - r0[i]) * f;
                r0 = row;
            }
            for (int64_t ox = 0; ox < OW; ox++) {
                float a = r0[xo[2 * ox]], b = r0[xo[2 * ox + 1]];
                yr[ox] = a + (b - a) * fx[ox];
            }
        } else {
            for (int64_t ox = 0; ox < OW; ox++) {
                int64_t i = xo[2 * ox], j = xo[2 * ox + 1];
                float top = r0[i] + (r0[j] - r0[i]) * fx[ox], bot = r1[i] + (r1[j] - r1[i]) * fx[ox];
                yr[ox] = top + (bot - top) * f;
            }
        }
    }
}

static void resize2d(const wl_op *op, const float *x, float *y, int nthreads) {
    const wl_pool_params *p = &op->pool;
    int64_t planes = p->n * (p->blocked ? ceil_div(p->c, WL_BLK) : p->c), OH = p->oh;
    if (planes * OH * p->ow == 0) return;
    int64_t chunks = ceil_div(8 * (int64_t)nthreads, planes);
    if (chunks > OH) chunks = OH;
    pool_ctx c = {op, x, y, ceil_div(OH, chunks)};
    wl_parallel_for(planes * ceil_div(OH, c.chunk), resize_task, &c, nthreads);
}

int wl_pool2d(const wl_op *op, const wl_exec *ex) {
    if (op->dtype == D_U8 || op->dtype == D_I8) return wl_pool2d_8bit(op, ex); /* max only */
    const float *x = (const float *)wl_in(op, ex, 0);
    float *y = (float *)wl_out(op, ex);
    if (op->fn == P_RESIZE) {
        resize2d(op, x, y, ex->nthreads);
        return 0;
    }
    if (op->pool.blocked) {
        pool_blocked(op, x, y, ex->nthreads);
        return 0;
    }
    pool_ctx c = {op, x, y, 0};
    wl_parallel_for(op->pool.n * op->pool.c, pool_task, &c, ex->nthreads);
    return 0;
}
