/* Conv2D on the blocked channel layout (NCHW16c), algorithm C_NCHWC with one group, driven
 * from here with per-ISA micro-kernels in isa/conv_blocked.inc (depthwise ones: depthwise.c).
 *
 * A direct convolution whose inner step is one broadcast input value times 16 output channels,
 * over register tiles of up to 4 filter blocks x 12 output pixels. A padded input of a small
 * map (output under 32 wide, 16 when strided) or of a stem (a plain input) is first copied
 * into a zero-bordered buffer, so every output pixel reads the same taps; tiles span rows on
 * narrow maps (which then fill whole tiles) and stay in one row on wide ones (one base pointer,
 * constant displacements); other wide maps keep their input, and a tile at a row's edge runs
 * in passes over the column taps its pixels share (border_tile). The reduction runs over input blocks, each over a
 * table of (input offset, weight offset) pairs, one per tap, and each tap over the block's 16
 * channels (unrolled: no table entry per channel); it is cut into slices of input blocks whose
 * weights stay in the L2 cache while a task's pixels pass over them.
 *
 * A block-diagonal grouped conv (blockdiag) is one filter block a group, each reducing over
 * its own input block (the channels of other groups weigh zero).
 *
 * Descriptor: op->conv; aux: packed weights (groups of filter_blocks filter blocks); aux2: the
 * bias padded to whole blocks (zeros when the conv has none). */
#include "blocked.h"

#define SLICE_BYTES (160 * 1024) /* weights of one reduction slice, kept in L2 */
#define ROW_TILES_MIN 2 /* tiles per output row from which tiles stay within rows */

/* The next tile of a run of `left` pixels: runs split into equal tiles of at most pmax (62
 * pixels as 11,11,10,10,10,10 rather than 12 x 5 and a latency-bound tile of 2). */
static int64_t even_tile(int64_t left, int64_t pmax) {
    int64_t tiles = ceil_div(left, pmax);
    return ceil_div(left, tiles);
}

/* One pass of nrun tiles along a row: np pixels each (pixel p at xt + po[p], the next tile's
 * np * sw pixels on) over taps [ky0, ky1) x [kx0, kx1) of input blocks [k0, k1), into y. */
static void tile_pass(const nc_ctx *c, nc_table *cache, int64_t fb, int64_t np, int64_t nrun,
                      int64_t k0, int64_t k1, int64_t ky0, int64_t ky1, int64_t kx0, int64_t kx1,
                      const float *xt, const float *w, const float *bias, float *y,
                      const int64_t *po, const nc_epi *e) {
    nc_red r = {.nb = 0};
    if (k1 > k0) {
        const nc_table *tb = table(c, cache, 0, fb, ky0, ky1, kx0, kx1);
        /* (a plain input's channels are entries of the table: one channel each) */
        int64_t cib = c->xci == 1 ? c->bi : 1;
        r = (nc_red){.xo = tb->xo, .wo = tb->wo, .nb = k1 - k0, .nt = tb->n, .cib = cib,
                     .cil = k1 == c->ncb && cib > 1 ? c->C - (c->ncb - 1) * c->bi : cib,
                     .xcb = c->xcb, .wcb = c->KH * c->KW * c->bi * fb * WL_BLK};
        xt += k0 * r.xcb;
        w += k0 * r.wcb;
    }
    wl_active->nc_conv_run((int)fb, (int)np, nrun, np * c->sw * c->xpix, &r, xt, w, bias, y,
                           c->OH * c->OW * WL_BLK, po, e);
}

/* A tile of np pixels of one row that reaches into the left or right padding: each column tap
 * kx is valid for a contiguous run of the tile's pixels, so taps with the same run form one
 * pass of a narrower tile. The pass over all np pixels (or, when none has them all, a pass
 * with no taps) starts the sums; the others add to them; a last pass with no taps applies the
 * epilogue to every pixel. (One-pixel tiles for the border columns ran 4x below the FMA rate:
 * 5% of a 3x3 conv on a 56x56 map.) */
static void border_tile(const nc_ctx *c, nc_table *cache, const nc_epi *slice, int64_t fb,
                        int64_t k0, int64_t k1, int64_t q, int64_t np, int64_t ky0, int64_t ky1,
                        const float *x, const float *w, const float *bias, int64_t yimg) {
    int64_t oy = q / c->OW, ox = q % c->OW;
    int64_t iy = oy * c->sh - c->pt, ix = ox * c->sw - c->pl;
    int64_t run0[16], run1[16], from[16], to[16], nruns = 0, full = -1;
    for (int64_t kx = 0; kx < c->KW; kx++) {
        /* pixels j of the tile with 0 <= ix + j * sw + kx * dw < W */
        int64_t base = ix + kx * c->dw, a = base >= 0 ? 0 : ceil_div(-base, c->sw);
        int64_t b = base > c->W - 1 ? 0 : (c->W - 1 - base) / c->sw + 1;
        if (b > np) b = np;
        if (a >= b) continue;
        if (nruns && run0[nruns - 1] == a && run1[nruns - 1] == b && to[nruns - 1] == kx) {
            to[nruns - 1] = kx + 1;
            continue;
        }
        if (nruns == 16) break; /* (not with kernels up to 16 wide; the rest add no runs) */
        run0[nruns] = a, run1[nruns] = b, from[nruns] = kx, to[nruns] = kx + 1;
        if (a == 0 && b == np) full = nruns;
        nruns++;
    }
    int64_t unit[12];
    for (int64_t p = 0; p < np; p++) unit[p] = p * c->sw * c->xpix;
    nc_epi e = *slice;
    e.final = 0;
    e.res = NULL;
    float *y = c->y + yimg + q * WL_BLK;
    const float *xt = x + iy * c->xrow + ix * c->xpix;
    if (full < 0) /* no tap reaches every pixel: start from the bias (or the last slice) */
        tile_pass(c, cache, fb, np, 1, k0, k0, ky0, ky1, 0, 0, xt, w, bias, y, unit, &e);
    else
        tile_pass(c, cache, fb, np, 1, k0, k1, ky0, ky1, from[full], to[full], xt, w, bias, y, unit, &e);
    e.load = 1;
    for (int64_t r = 0; r < nruns; r++)
        if (r != full)
            tile_pass(c, cache, fb, run1[r] - run0[r], 1, k0, k1, ky0, ky1, from[r], to[r],
                      xt + run0[r] * c->sw * c->xpix, w, bias, y + run0[r] * WL_BLK, unit, &e);
    if (slice->final) {
        e.final = 1;
        e.res = c->res ? c->res + yimg + q * WL_BLK : NULL;
        tile_pass(c, cache, fb, np, 1, k0, k0, ky0, ky1, 0, 0, xt, w, bias, y, unit, &e);
    }
}

static void conv_task(void *vp, int64_t t) {
    nc_ctx *c = vp;
    nc_table cache[NC_TABLES];
    if (!task_tables(c, cache)) return;
    int64_t npx = c->OH * c->OW, chunks = ceil_div(npx, c->chunk);
    int64_t qi = t % chunks, gi = (t / chunks) % c->ngroups, n = t / chunks / c->ngroups;
    int64_t ob0 = gi * c->fb, fb = c->ob - ob0 < c->fb ? c->ob - ob0 : c->fb;
    int64_t q0 = qi * c->chunk, q1 = q0 + c->chunk < npx ? q0 + c->chunk : npx;
    const float *w = c->w + ob0 * c->ncb * c->KH * c->KW * c->bi * WL_BLK;
    nc_ctx own;
    if (c->blockdiag) { /* group gi reduces over the real channels of input block gi */
        own = *c;
        own.C = c->C - gi * WL_BLK < WL_BLK ? c->C - gi * WL_BLK : WL_BLK;
        c = &own;
    }
    const float *x = c->x + n * c->xn + (c->blockdiag ? gi * c->xcb : 0), *bias = c->bias + ob0 * WL_BLK;
    int64_t ys = npx * WL_BLK, yimg = (n * c->ob + ob0) * ys, lo, hi;
    interior(c, &lo, &hi);
    /* input blocks per slice: the slice's weights for this group fit SLICE_BYTES */
    int64_t blk_bytes = c->KH * c->KW * c->bi * fb * WL_BLK * (int64_t)sizeof(float);
    int64_t kcb = SLICE_BYTES / blk_bytes;
    if (kcb < 1) kcb = 1;
    int pmax = wl_active->nc_p[fb];
    nc_epi e = c->epi;
    if (e.slope) e.slope += ob0 * WL_BLK;
    /* rows whose input follows on from the previous row's (a 1x1 conv without padding): the
     * task's pixels are one run of pixels sw * xpix floats apart */
    int flat = !c->borders && c->sh * c->xrow == c->OW * c->sw * c->xpix;
    /* tiles within one row (each pixel sw * xpix floats on: one base, constant displacements)
     * where rows hold several tiles; rows of a narrow map are joined into full tiles, each
     * pixel with a pointer of its own (a 1x1 stride-2 conv of 64 to 128 channels, 56x56 to
     * 28x28, 1 thread: 81 us with tiles across rows, 77 within them) */
    int rows = c->borders || (!flat && c->OW >= ROW_TILES_MIN * pmax);
    int64_t po[12];
    for (int64_t k0 = 0; k0 < c->ncb; k0 += kcb) {
        int64_t k1 = k0 + kcb < c->ncb ? k0 + kcb : c->ncb;
        e.load = k0 > 0;
        e.final = k1 == c->ncb;
        for (int64_t q = q0; q < q1;) {
            /* a tile: pixels of one row, or on a narrow map a run that may span rows */
            int64_t oy = q / c->OW, ox = q % c->OW, iy = oy * c->sh - c->pt, ky0, ky1, np;
            valid_taps(iy, c->dh, c->KH, c->H, &ky0, &ky1);
            /* the pixels left in this row (or the task) split into even tiles; consecutive
             * interior tiles of one size run as one call */
            int64_t left = rows && c->OW - ox < q1 - q ? c->OW - ox : q1 - q;
            np = even_tile(left, pmax);
            int64_t nrun = 1;
            if (c->borders && (ox < lo || ox + np > hi)) { /* border columns in the tile */
                border_tile(c, cache, &e, fb, k0, k1, q, np, ky0, ky1, x, w, bias, yimg);
                q += np;
                continue;
            }
            if (rows || flat) {
                /* tiles of np pixels: those before the split's smaller ones, and (borders)
                 * before the right border columns */
                int64_t tiles = ceil_div(left, pmax), nbig = left - (np - 1) * tiles;
                nrun = np * tiles == left ? tiles : nbig;
                if (c->borders && ox + nrun * np > hi) nrun = (hi - ox) / np;
                for (int64_t p = 0; p < np; p++) po[p] = p * c->sw * c->xpix;
            } else {
                for (int64_t p = 0, py = 0, px = 0; p < np; p++) { /* (row, column) from the first */
                    po[p] = py * c->sh * c->xrow + px * c->sw * c->xpix;
                    if (++px + ox == c->OW) {
                        px = -ox;
                        py++;
                    }
                }
            }
            e.res = c->res ? c->res + yimg + q * WL_BLK : NULL;
            tile_pass(c, cache, fb, np, nrun, k0, k1, ky0, ky1, 0, c->KW,
                      x + iy * c->xrow + (ox * c->sw - c->pl) * c->xpix, w, bias,
                      c->y + yimg + q * WL_BLK, po, &e);
            q += np * nrun;
        }
    }
    if (c->pass_act)
        for (int64_t f = 0; f < fb; f++) {
            float *yr = c->y + yimg + f * ys + q0 * WL_BLK;
            wl_active->unary_f32((int)c->op->conv.act.fn, yr, yr, (q1 - q0) * WL_BLK,
                                 c->op->conv.act.prm);
        }
}

typedef struct {
    const float *x;
    float *xp;
    int64_t planes, H, W, Hp, Wp, pt, pl, e; /* e: floats per pixel (16 blocked, 1 plain) */
} pad_ctx;

static void pad_task(void *vp, int64_t t) {
    const pad_ctx *p = vp;
    int64_t plane = t / p->Hp, iy = t % p->Hp - p->pt, rowf = p->Wp * p->e;
    float *d = p->xp + t * rowf;
    if (iy < 0 || iy >= p->H) {
        memset(d, 0, sizeof(float) * (size_t)rowf);
        return;
    }
    int64_t left = p->pl * p->e, keep = p->W * p->e;
    if (left + keep > rowf) keep = rowf - left;
    memset(d, 0, sizeof(float) * (size_t)left);
    memcpy(d + left, p->x + (plane * p->H + iy) * p->W * p->e, sizeof(float) * (size_t)keep);
    memset(d + left + keep, 0, sizeof(float) * (size_t)(rowf - left - keep));
}

int wl_nc_prepare(nc_ctx *c, const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                  float *y) {
    const wl_conv_params *p = &op->conv;
    int64_t N = p->n, C = p->c, H = p->h, W = p->w, O = p->o, OH = p->oh, OW = p->ow;
    int depthwise = p->groups > 1 && !p->blockdiag, blocked = (int)p->blocked_input;
    *c = (nc_ctx){.op = op, .x = x, .w = (const float *)op->aux, .bias = (const float *)op->aux2,
                  .res = res, .y = y, .C = C, .H = H, .W = W, .OH = OH, .OW = OW, .KH = p->kh,
                  .KW = p->kw, .sh = p->stride_h, .sw = p->stride_w, .pt = p->pad_top,
                  .pl = p->pad_left, .dh = p->dilation_h, .dw = p->dilation_w};
    int act = (int)p->act.fn;
    if (act == U_RELU || act == U_CLIP) {
        c->epi.clip = 1;
        c->epi.lo = act == U_RELU ? 0.0f : (float)p->act.prm[0];
        c->epi.hi = act == U_RELU ? __builtin_inff() : (float)p->act.prm[1];
    } else {
        c->pass_act = act != U_IDENTITY;
    }
    c->ob = ceil_div(O, WL_BLK);
    if (p->prelu) c->epi.slope = c->bias + c->ob * WL_BLK; /* block 0's; tasks move it on */
    int64_t cbn = ceil_div(C, WL_BLK), e = blocked ? WL_BLK : 1, planes = blocked ? cbn : C;
    c->borders = c->pt || c->pl || (OH - 1) * c->sh + (c->KH - 1) * c->dh >= H ||
                 (OW - 1) * c->sw + (c->KW - 1) * c->dw >= W;
    int64_t lo, hi;
    interior(c, &lo, &hi);
    /* depthwise rows on a small map keep their border taps when a row has one border column
     * per side (3x3); with more (5x5 pad 2: two per side) most pixels of a small map are
     * border pixels, one-pixel tiles, and the padded copy lets them run as interior tiles */
    int few_borders = 1 + lo + (OW - hi) <= 3;
    /* (a strided conv copies sh * sw input pixels per output pixel: at stride 2 the copy of a
     * 56x56 map cost more than the border tiles of its 28x28 output, 3-6% of a 3x3 conv of
     * 64 to 128 channels) */
    int64_t narrow = c->sh * c->sw > 1 ? 16 : 32;
    /* a plain input (a stem: a few channel planes) is always copied: its copy reads sh * sw
     * floats per output pixel and channel, against KH * KW * O multiply-adds, and it spares
     * the border tiles their passes over each column tap (a 5x5 stem of 1 to 64 channels on
     * 48x64, 1 thread: 84 us -> 68; onnxruntime 55-60) */
    int stem = !blocked && !depthwise;
    if (c->borders && (OW < narrow || stem) && (!depthwise || !(few_borders || nc_dw_own_rows(c)))) {
        /* small maps: a zero-bordered copy, so that every output pixel reads all its taps and
         * tiles span rows (large maps keep the input and give border pixels their own taps) */
        c->borders = 0;
        int64_t Hp = (OH - 1) * c->sh + (c->KH - 1) * c->dh + 1;
        int64_t Wp = (OW - 1) * c->sw + (c->KW - 1) * c->dw + 1;
        float *xp = wl_scratch(5, sizeof(float) * (size_t)(N * planes * Hp * Wp * e));
        if (!xp) return wl_fail(ex, "out of memory in blocked Conv2D");
        pad_ctx pc = {x, xp, N * planes, H, W, Hp, Wp, c->pt, c->pl, e};
        /* one row a task: on a small map hundreds of tiny rows made the threads contend for
         * the task counter longer than the copy takes (a 5x5 depthwise on 3x3: 4x slower on 2) */
        int64_t copied = N * planes * Hp * Wp * e;
        wl_parallel_for(N * planes * Hp, pad_task, &pc, copied >= 65536 ? ex->nthreads : 1);
        c->x = xp, c->H = Hp, c->W = Wp, c->pt = 0, c->pl = 0;
    }
    if (blocked) {
        c->bi = WL_BLK, c->ncb = cbn, c->xcb = c->H * c->W * WL_BLK, c->xci = 1;
        c->xrow = c->W * WL_BLK, c->xpix = WL_BLK, c->xn = cbn * c->H * c->W * WL_BLK;
    } else {
        c->bi = C, c->ncb = 1, c->xcb = 0, c->xci = c->H * c->W, c->xrow = c->W, c->xpix = 1;
        c->xn = C * c->H * c->W;
    }
    return 0;
}

int wl_nchwc_fb(void) { return wl_active->nc_fb; }

int wl_conv_blocked(const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                    float *y) {
    const wl_conv_params *p = &op->conv;
    if (p->filter_blocks != (p->blockdiag ? 1 : wl_active->nc_fb))
        return wl_fail(ex, "blocked conv weights prepared for another ISA");
    if (p->blockdiag && !p->blocked_input)
        return wl_fail(ex, "a block-diagonal conv reads a blocked input");
    if (p->n * p->o * p->oh * p->ow == 0) return 0;
    nc_ctx c;
    if (wl_nc_prepare(&c, op, ex, x, res, y)) return 1;
    c.fb = p->filter_blocks;
    c.ngroups = ceil_div(c.ob, c.fb);
    if (p->blockdiag) { /* each group one input block of 16 channels (zero-padded past C) */
        c.blockdiag = 1;
        c.ncb = 1;
    }
    c.tmax = c.KH * c.KW * (c.xci == 1 ? 1 : c.bi);
    /* pixels per task: a whole number of full tiles */
    int64_t pmax = wl_active->nc_p[c.fb], npx = p->oh * p->ow;
    /* each pixel chunk streams the group's weights again: split pixels only when the filter
     * groups alone cannot keep the threads busy */
    int64_t chunks = ceil_div(4 * (int64_t)ex->nthreads, p->n * c.ngroups);
    c.chunk = ceil_div(ceil_div(npx, chunks), pmax) * pmax;
    wl_parallel_for(p->n * c.ngroups * ceil_div(npx, c.chunk), conv_task, &c, ex->nthreads);
    if (c.failed) return wl_fail(ex, "out of memory in blocked Conv2D");
    return 0;
}
