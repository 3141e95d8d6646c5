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

/* ---------------------------------------------------------------- NCHW through blocks */

/* A plain depthwise conv on a narrow map or with a large kernel, one block of 16 channels a
 * task: its planes are interleaved into a zero-bordered blocked scratch (pixel-major, 16
 * channels a vector), the blocked tiles compute every output pixel with all its taps, and the
 * sums go back to the planes with the residual and the activation. The plane kernel puts one
 * row's columns in a vector with one sum chain per vector: a 4x4 map filled 4 of 16 lanes and
 * a 7x7 kernel waited on the FMA latency at every tap (a 7x7 conv on 192 channels of 4x4:
 * 42 us against 7 us blocked). */
typedef struct {
    const wl_op *op;
    const float *x, *w, *bias, *res;
    float *y;
    int64_t Wp, ncb, rows, chunks; /* padded row width, channel blocks, output rows a task */
    int failed;
} dwb_ctx;

typedef float f32x4 __attribute__((vector_size(16)));
typedef float f32x4u __attribute__((vector_size(16), aligned(4)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

/* d[j * ds + i] = s[i * ss + j] for i, j < 4: four 4-float rows in, four columns out (SSE2 and
 * NEON are the baseline vectors of the targets) */
static inline void swap4(const float *s, int64_t ss, float *d, int64_t ds) {
    f32x4 r0 = *(const f32x4u *)s, r1 = *(const f32x4u *)(s + ss);
    f32x4 r2 = *(const f32x4u *)(s + 2 * ss), r3 = *(const f32x4u *)(s + 3 * ss);
    f32x4 lo01 = __builtin_shuffle(r0, r1, (i32x4){0, 4, 1, 5});
    f32x4 hi01 = __builtin_shuffle(r0, r1, (i32x4){2, 6, 3, 7});
    f32x4 lo23 = __builtin_shuffle(r2, r3, (i32x4){0, 4, 1, 5});
    f32x4 hi23 = __builtin_shuffle(r2, r3, (i32x4){2, 6, 3, 7});
    *(f32x4u *)d = __builtin_shuffle(lo01, lo23, (i32x4){0, 1, 4, 5});
    *(f32x4u *)(d + ds) = __builtin_shuffle(lo01, lo23, (i32x4){2, 3, 6, 7});
    *(f32x4u *)(d + 2 * ds) = __builtin_shuffle(hi01, hi23, (i32x4){0, 1, 4, 5});
    *(f32x4u *)(d + 3 * ds) = __builtin_shuffle(hi01, hi23, (i32x4){2, 3, 6, 7});
}

/* d[c * dc + q * dq] = s[c * sc + q * sq] over nc channels and nq pixels, where one side has
 * its channels and the other its pixels adjacent (dc == 1, sq == 1 or the reverse): 4x4
 * blocks through swap4, the ragged edges one element at a time */
static void interleave(const float *s, int64_t sc, int64_t sq, float *d, int64_t dc, int64_t dq,
                       int64_t nc, int64_t nq) {
    int64_t c4 = nc & ~(int64_t)3, q4 = nq & ~(int64_t)3;
    for (int64_t c = 0; c < c4; c += 4)
        for (int64_t q = 0; q < q4; q += 4) {
            if (sq == 1) /* rows of the source: channels; of the destination: pixels */
                swap4(s + c * sc + q, sc, d + c + q * dq, dq);
            else
                swap4(s + c + q * sq, sq, d + c * dc + q, dc);
        }
    for (int64_t c = 0; c < nc; c++)
        for (int64_t q = c < c4 ? q4 : 0; q < nq; q++) d[c * dc + q * dq] = s[c * sc + q * sq];
}

static void via_blocks_task(void *vp, int64_t t) {
    dwb_ctx *d = vp;
    const wl_conv_params *p = &d->op->conv;
    int64_t C = p->c, H = p->h, W = p->w, OH = p->oh, OW = p->ow, KH = p->kh, KW = p->kw;
    int64_t ci = t % d->chunks, cb = t / d->chunks % d->ncb, n = t / d->chunks / d->ncb;
    int64_t c0 = cb * WL_BLK, nc = C - c0 < WL_BLK ? C - c0 : WL_BLK;
    int64_t oy0 = ci * d->rows, oy1 = oy0 + d->rows < OH ? oy0 + d->rows : OH;
    if (oy0 >= oy1) return;
    /* the padded input rows [pr0, pr0 + nrows) that output rows [oy0, oy1) read */
    int64_t pr0 = oy0 * p->stride_h, nrows = (oy1 - 1 - oy0) * p->stride_h + (KH - 1) * p->dilation_h + 1;
    int64_t Wp = d->Wp, taps = KH * KW, pt = p->pad_top, pl = p->pad_left;
    int64_t xf = nrows * Wp * WL_BLK, yf = (oy1 - oy0) * OW * WL_BLK;
    float *xb = wl_scratch(1, sizeof(float) * (size_t)(xf + yf + (taps + 1) * WL_BLK) +
                                  sizeof(int64_t) * (size_t)(2 * taps));
    if (!xb) {
        __atomic_store_n(&d->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *yb = xb + xf, *wb = yb + yf, *bb = wb + taps * WL_BLK;
    int64_t *xo = (int64_t *)(bb + WL_BLK), *wo = xo + taps;
    /* input rows [iy0, iy1) land at scratch rows from iy0 + pt - pr0; columns from pl */
    int64_t iy0 = pr0 - pt > 0 ? pr0 - pt : 0, iy1 = pr0 + nrows - pt < H ? pr0 + nrows - pt : H;
    if (iy1 < iy0) iy1 = iy0; /* a band inside the top or bottom padding reads no input row */
    int64_t cols = W < Wp - pl ? W : Wp - pl;
    /* zeros: the border, and every lane of a partial block (no stale value in its sums) */
    if (nc < WL_BLK || pl || cols < Wp || iy0 > pr0 - pt || iy1 < pr0 + nrows - pt)
        memset(xb, 0, sizeof(float) * (size_t)xf);
    memset(wb, 0, sizeof(float) * (size_t)((taps + 1) * WL_BLK));
    const float *src = d->x + (n * C + c0) * H * W;
    float *dst0 = xb + (iy0 + pt - pr0) * Wp * WL_BLK;
    if (cols == W && Wp == W) /* no column padding: the rows are one run of pixels */
        interleave(src + iy0 * W, H * W, 1, dst0, 1, WL_BLK, nc, (iy1 - iy0) * W);
    else
        for (int64_t iy = iy0; iy < iy1; iy++)
            interleave(src + iy * W, H * W, 1, dst0 + ((iy - iy0) * Wp + pl) * WL_BLK, 1, WL_BLK,
                       nc, cols);
    for (int64_t c = 0; c < nc; c++) {
        for (int64_t k = 0; k < taps; k++) wb[k * WL_BLK + c] = d->w[(c0 + c) * taps + k];
        bb[c] = d->bias ? d->bias[c0 + c] : 0.0f;
    }
    for (int64_t ky = 0; ky < KH; ky++)
        for (int64_t kx = 0; kx < KW; kx++) {
            xo[ky * KW + kx] = (ky * p->dilation_h * Wp + kx * p->dilation_w) * WL_BLK;
            wo[ky * KW + kx] = (ky * KW + kx) * WL_BLK;
        }
    int act = (int)p->act.fn, clip = act == U_RELU || act == U_CLIP;
    nc_epi e = {.final = 1};
    if (clip && !d->res) { /* (with a residual: the sum is clipped, after it is added below) */
        e.clip = 1;
        e.lo = act == U_RELU ? 0.0f : (float)p->act.prm[0];
        e.hi = act == U_RELU ? __builtin_inff() : (float)p->act.prm[1];
    }
    int64_t rs = p->stride_h * Wp * WL_BLK, step = p->stride_w * WL_BLK;
    for (int64_t oy = oy0; oy < oy1; oy++) {
        const float *xr = xb + (oy - oy0) * rs;
        float *yr = yb + (oy - oy0) * OW * WL_BLK;
        int64_t done = p->dilation_w == 1
                           ? wl_active->nc_dw_row(OW, KH * p->dilation_h == KH ? KH : 0, KW,
                                                  p->stride_w, xr, Wp * WL_BLK, wb, bb, yr, &e)
                           : 0;
        for (int64_t ox = done; ox < OW;) {
            int np = OW - ox < 8 ? (int)(OW - ox) : 8;
            wl_active->nc_dw_tile(np, taps, xo, wo, xr + ox * step, wb, bb, yr + ox * WL_BLK, step, &e);
            ox += np;
        }
    }
    /* back to the planes: residual, then the activation */
    int64_t q0 = oy0 * OW, nq = (oy1 - oy0) * OW;
    interleave(yb, 1, WL_BLK, d->y + (n * C + c0) * OH * OW + q0, OH * OW, 1, nc, nq);
    for (int64_t c = 0; c < nc; c++) {
        int64_t at = (n * C + c0 + c) * OH * OW + q0;
        float *dst = d->y + at;
        if (d->res) wl_active->binary_f32(B_ADD, dst, 1, d->res + at, 1, dst, nq);
        if (act != U_IDENTITY && (d->res || !clip)) wl_active->unary_f32(act, dst, dst, nq, p->act.prm);
    }
}

/* Whether a plain depthwise conv runs through blocks: a kernel larger than 3x3, whose plane
 * kernel waits on one sum chain per vector (1 thread, us, plane -> blocks: 5x5 on 96 x 14x14
 * 44 -> 14, on 16 x 112x112 389 -> 159; 7x7 on 192 x 4x4 38 -> 9, on 32 x 32x32 79 -> 38), or
 * an output of at most 16x16 pixels (3x3: 58 x 14x14 10 -> 7, 116 x 7x7 12 -> 4, stride 2
 * 14x14 to 7x7 4.3 -> 2.6; but 24 x 40x40 17 -> 23, stride 2 64x64 to 32x32 60 -> 91: larger
 * maps fill the plane kernel's vectors, and interleaving costs more than it saves). */
static int via_blocks(const wl_conv_params *p) {
    return p->kh * p->kw > 9 || p->oh * p->ow <= 256;
}

int wl_depthwise(const wl_op *op, const wl_exec *ex, const float *x, const float *w,
                 const float *bias, const float *res, float *y) {
    const wl_conv_params *p = &op->conv;
    if (via_blocks(p)) {
        dwb_ctx d = {op, x, w, bias, res, y, (p->ow - 1) * p->stride_w + (p->kw - 1) * p->dilation_w + 1,
                     ceil_div(p->c, WL_BLK), p->oh, 1, 0};
        /* tasks enough to balance the threads: blocks, then bands of rows (each interleaving the
         * input rows its outputs read, the kernel's extra rows twice) */
        int64_t want = ex->nthreads > 1 ? 4 * (int64_t)ex->nthreads : 1;
        if (p->n * d.ncb < want) {
            int64_t bands = ceil_div(want, p->n * d.ncb);
            d.rows = ceil_div(p->oh, bands < p->oh ? bands : p->oh);
            d.chunks = ceil_div(p->oh, d.rows);
        }
        wl_parallel_for(p->n * d.ncb * d.chunks, via_blocks_task, &d, ex->nthreads);
        if (!d.failed) return 0;
    }
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
    if (c->borders && nc_dw_own_rows(c) && dw_rows_padded(c, cb, ci * c->chunk, oy_end, w, bias, &e))
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
