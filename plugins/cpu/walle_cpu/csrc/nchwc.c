/* Conv2D on the blocked channel layout (NCHW16c), driven from here with per-ISA micro-kernels
 * in nchwc.inc.
 *
 * Regular convs: a direct convolution whose inner step is one broadcast input value times 16
 * output channels, over register tiles of up to 4 filter blocks x 12 output pixels. A padded
 * input is first copied into a zero-bordered buffer, so every output pixel reads the same taps
 * and a tile may span rows (small maps fill whole tiles). The reduction (channels x taps) runs
 * over one table of (input offset, weight offset) pairs, cut into slices whose weights stay in
 * the L2 cache while a task's pixels pass over them.
 *
 * Depthwise convs: one vector of 16 channels per pixel, row by row; border pixels read only
 * their valid taps (no padded copy: these convs are bandwidth-bound).
 *
 * Descriptor: p[0..17] as for every Conv2D (N C H W O OH OW KH KW sh sw pt pl dh dw groups
 * has_bias act), p[19] residual input index (0: none), p[20] 1 when the input is blocked
 * (else plain NCHW with few channels), p[21] filter blocks per packed weight group.
 * aux: packed weights; aux2: bias padded to whole blocks (zeros when the conv has none). */
#include <stdio.h>
#include <string.h>

#include "wl.h"

#define CP(i) (op->p[i])
#define NC_TABLES 4 /* tap windows cached per task: interior, the two borders, one spare */
#define SLICE_BYTES (160 * 1024) /* weights of one reduction slice, kept in L2 */

typedef struct {
    const wl_op *op;
    const float *x, *w, *bias, *res;
    float *y;
    int64_t C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw;
    int64_t bi, ncb, xcb, xci, xrow, xpix, xn; /* input: channels per block, blocks, strides */
    int64_t ob, fb, ngroups, chunk;            /* output blocks, weight groups, work per task */
    int64_t tmax;                              /* entries of the largest offset table */
    nc_epi epi;                                /* residual pointer unset: set per tile */
    int pass_act;                              /* an activation the tiles cannot apply */
    int borders;                               /* some output pixels read only part of their taps */
    int failed;                                /* a task found no memory for its tables */
} nc_ctx;

typedef struct {
    int64_t key[5];
    int64_t n, per_block; /* entries; entries per full input block */
    int64_t used;         /* last use, for replacement */
    int64_t *xo, *wo;
} nc_table;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* taps [k0, k1) of a window starting at input position `base` that fall inside [0, n) */
static void valid_taps(int64_t base, int64_t d, int64_t k, int64_t n, int64_t *k0, int64_t *k1) {
    int64_t lo = base < 0 ? ceil_div(-base, d) : 0, hi = k;
    while (hi > lo && base + (hi - 1) * d >= n) hi--;
    *k0 = lo;
    *k1 = hi > lo ? hi : lo;
}

/* The offset table for taps [ky0, ky1) x [kx0, kx1) with fbw filter blocks per weight group,
 * ordered (input block, ky, kx, channel), from a small per-task cache. */
static const nc_table *table(const nc_ctx *c, nc_table *cache, int depthwise, int64_t fbw,
                             int64_t ky0, int64_t ky1, int64_t kx0, int64_t kx1) {
    int64_t key[5] = {fbw, ky0, ky1, kx0, kx1}, clock = 0;
    nc_table *t = &cache[0];
    for (int i = 0; i < NC_TABLES; i++) clock = cache[i].used > clock ? cache[i].used : clock;
    for (int i = 0; i < NC_TABLES; i++)
        if (cache[i].n >= 0 && !memcmp(cache[i].key, key, sizeof key)) {
            cache[i].used = clock + 1;
            return &cache[i];
        }
    for (int i = 1; i < NC_TABLES; i++) /* the least recently used slot (empty ones first) */
        if (cache[i].used < t->used) t = &cache[i];
    t->used = clock + 1;
    memcpy(t->key, key, sizeof key);
    int64_t n = 0;
    if (depthwise) {
        for (int64_t ky = ky0; ky < ky1; ky++)
            for (int64_t kx = kx0; kx < kx1; kx++, n++) {
                t->xo[n] = ky * c->dh * c->xrow + kx * c->dw * WL_BLK;
                t->wo[n] = (ky * c->KW + kx) * WL_BLK;
            }
    } else {
        for (int64_t cb = 0; cb < c->ncb; cb++) {
            int64_t cib = c->C - cb * c->bi < c->bi ? c->C - cb * c->bi : c->bi;
            for (int64_t ky = ky0; ky < ky1; ky++)
                for (int64_t kx = kx0; kx < kx1; kx++) {
                    int64_t xo = cb * c->xcb + ky * c->dh * c->xrow + kx * c->dw * c->xpix;
                    int64_t wo = (((cb * c->KH + ky) * c->KW + kx) * c->bi) * fbw * WL_BLK;
                    for (int64_t ci = 0; ci < cib; ci++, n++) {
                        t->xo[n] = xo + ci * c->xci;
                        t->wo[n] = wo + ci * fbw * WL_BLK;
                    }
                }
        }
    }
    t->n = n;
    t->per_block = (ky1 - ky0) * (kx1 - kx0) * c->bi;
    return t;
}

static nc_table *task_tables(nc_ctx *c, nc_table *cache) {
    int64_t *buf = wl_scratch(4, sizeof(int64_t) * (size_t)(2 * NC_TABLES * c->tmax + 2));
    if (!buf) {
        __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (int i = 0; i < NC_TABLES; i++) {
        cache[i].n = -1;
        cache[i].used = 0;
        cache[i].xo = buf + 2 * i * c->tmax;
        cache[i].wo = cache[i].xo + c->tmax;
    }
    return cache;
}

/* ---------------------------------------------------------------- regular convs: flat tiles */

/* Output columns [lo, hi) whose taps all lie inside the input row. */
static void interior(const nc_ctx *c, int64_t *lo, int64_t *hi) {
    *lo = ceil_div(c->pl, c->sw);
    int64_t last = c->W - 1 + c->pl - (c->KW - 1) * c->dw; /* ox * sw <= last */
    *hi = last < 0 ? 0 : last / c->sw + 1;
    if (*hi > c->OW) *hi = c->OW;
    if (*lo > *hi) *lo = *hi;
}

/* The next tile of a run of `left` pixels: runs split into equal tiles of at most pmax (62
 * pixels as 11,11,10,10,10,10 rather than 12 x 5 and a latency-bound tile of 2). */
static int64_t even_tile(int64_t left, int64_t pmax) {
    int64_t tiles = ceil_div(left, pmax);
    return ceil_div(left, tiles);
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
    const float *x = c->x + n * c->xn, *bias = c->bias + ob0 * WL_BLK;
    int64_t ys = npx * WL_BLK, yimg = (n * c->ob + ob0) * ys, lo, hi;
    interior(c, &lo, &hi);
    /* input blocks per slice: the slice's weights for this group fit SLICE_BYTES */
    int64_t blk_bytes = c->KH * c->KW * c->bi * fb * WL_BLK * (int64_t)sizeof(float);
    int64_t kcb = SLICE_BYTES / blk_bytes;
    if (kcb < 1) kcb = 1;
    int pmax = wl_active->nc_p[fb];
    nc_epi e = c->epi;
    for (int64_t k0 = 0; k0 < c->ncb; k0 += kcb) {
        int64_t k1 = k0 + kcb < c->ncb ? k0 + kcb : c->ncb;
        e.load = k0 > 0;
        e.final = k1 == c->ncb;
        for (int64_t q = q0; q < q1;) {
            /* a tile: pixels with one tap window; without borders it may span rows */
            int64_t oy = q / c->OW, ox = q % c->OW, iy = oy * c->sh - c->pt, ky0, ky1;
            int64_t ix = ox * c->sw - c->pl, kx0 = 0, kx1 = c->KW, np, po[12];
            valid_taps(iy, c->dh, c->KH, c->H, &ky0, &ky1);
            if (!c->borders) {
                np = even_tile(q1 - q, pmax);
            } else if (ox >= lo && ox < hi) {
                np = even_tile(q1 - q < hi - ox ? q1 - q : hi - ox, pmax);
            } else {
                np = 1;
                valid_taps(ix, c->dw, c->KW, c->W, &kx0, &kx1);
            }
            for (int64_t p = 0, py = 0, px = 0; p < np; p++) { /* (row, column) from the tile's first */
                po[p] = py * c->sh * c->xrow + px * c->sw * c->xpix;
                if (++px + ox == c->OW) {
                    px = -ox;
                    py++;
                }
            }
            const nc_table *tb = table(c, cache, 0, fb, ky0, ky1, kx0, kx1);
            int64_t s0 = k0 * tb->per_block, s1 = k1 == c->ncb ? tb->n : k1 * tb->per_block;
            e.res = c->res ? c->res + yimg + q * WL_BLK : NULL;
            wl_active->nc_conv_tile((int)fb, (int)np, s1 - s0, tb->xo + s0, tb->wo + s0,
                                    x + iy * c->xrow + ix * c->xpix, w, bias,
                                    c->y + yimg + q * WL_BLK, ys, po, &e);
            q += np;
        }
    }
    if (c->pass_act)
        for (int64_t f = 0; f < fb; f++) {
            float *yr = c->y + yimg + f * ys + q0 * WL_BLK;
            wl_active->unary_f32((int)c->op->p[17], yr, yr, (q1 - q0) * WL_BLK, c->op->f);
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

/* ---------------------------------------------------------------- depthwise: rows */

static void dw_task(void *vp, int64_t t) {
    nc_ctx *c = vp;
    nc_table cache[NC_TABLES];
    if (!task_tables(c, cache)) return;
    int64_t chunks = ceil_div(c->OH, c->chunk);
    int64_t ci = t % chunks, cb = t / chunks; /* cb runs over n * blocks */
    const float *w = c->w + (cb % c->ob) * c->KH * c->KW * WL_BLK;
    const float *bias = c->bias + (cb % c->ob) * WL_BLK;
    int64_t lo, hi;
    interior(c, &lo, &hi);
    nc_epi e = c->epi;
    e.final = 1;
    for (int64_t oy = ci * c->chunk; oy < c->OH && oy < (ci + 1) * c->chunk; oy++) {
        int64_t iy = oy * c->sh - c->pt, ky0, ky1;
        valid_taps(iy, c->dh, c->KH, c->H, &ky0, &ky1);
        const float *xr = c->x + cb * c->xcb + iy * c->xrow;
        int64_t yoff = (cb * c->OH + oy) * c->OW * WL_BLK;
        float *yr = c->y + yoff;
        for (int64_t ox = 0; ox < c->OW;) {
            int64_t ix = ox * c->sw - c->pl, kx0 = 0, kx1 = c->KW, np = 1;
            if (ox >= lo && ox < hi)
                np = hi - ox < 8 ? hi - ox : 8;
            else
                valid_taps(ix, c->dw, c->KW, c->W, &kx0, &kx1);
            const nc_table *tb = table(c, cache, 1, 1, ky0, ky1, kx0, kx1);
            e.res = c->res ? c->res + yoff + ox * WL_BLK : NULL;
            wl_active->nc_dw_tile((int)np, tb->n, tb->xo, tb->wo, xr + ix * WL_BLK, w, bias,
                                  yr + ox * WL_BLK, c->sw * WL_BLK, &e);
            ox += np;
        }
        if (c->pass_act)
            wl_active->unary_f32((int)c->op->p[17], yr, yr, c->OW * WL_BLK, c->op->f);
    }
}

/* ---------------------------------------------------------------- pooling */

typedef struct {
    const wl_op *op;
    const float *x;
    float *y;
    int64_t chunk;
} pool_ctx;

static void pool_task(void *vp, int64_t t) {
    const pool_ctx *c = vp;
    const int64_t *p = c->op->p;
    int64_t H = p[2], W = p[3], OH = p[4], OW = p[5], KH = p[6], KW = p[7], SH = p[8], SW = p[9];
    int64_t PT = p[10], PL = p[11], PB = p[12], PR = p[13], DH = p[14], DW = p[15];
    int avg = p[16] == P_AVG, cip = (int)p[17];
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

void wl_pool_nchwc(const wl_op *op, const float *x, float *y, int nthreads) {
    int64_t lanes = op->p[0] * ceil_div(op->p[1], WL_BLK), OH = op->p[4];
    if (lanes * OH * op->p[5] == 0) return;
    int64_t chunks = ceil_div(8 * (int64_t)nthreads, lanes);
    if (chunks > OH) chunks = OH;
    pool_ctx c = {op, x, y, ceil_div(OH, chunks)};
    wl_parallel_for(lanes * ceil_div(OH, c.chunk), pool_task, &c, nthreads);
}

int wl_nchwc_fb(void) { return wl_active->nc_fb; }

int wl_conv_nchwc(const wl_op *op, const float *x, const float *res, float *y, int nthreads,
                  char *err, int errlen) {
    int64_t N = CP(0), C = CP(1), H = CP(2), W = CP(3), O = CP(4), OH = CP(5), OW = CP(6);
    int depthwise = CP(15) > 1, blocked = (int)CP(20);
    if (!depthwise && CP(21) != wl_active->nc_fb) {
        snprintf(err, errlen, "blocked conv weights prepared for another ISA");
        return 1;
    }
    if (depthwise && !blocked) {
        snprintf(err, errlen, "blocked depthwise conv needs a blocked input");
        return 1;
    }
    if (N * O * OH * OW == 0) return 0;
    nc_ctx c = {.op = op, .x = x, .w = (const float *)op->aux, .bias = (const float *)op->aux2,
                .res = res, .y = y, .C = C, .H = H, .W = W, .OH = OH, .OW = OW, .KH = CP(7),
                .KW = CP(8), .sh = CP(9), .sw = CP(10), .pt = CP(11), .pl = CP(12),
                .dh = CP(13), .dw = CP(14)};
    int act = (int)CP(17);
    if (act == U_RELU || act == U_CLIP) {
        c.epi.clip = 1;
        c.epi.lo = act == U_RELU ? 0.0f : (float)op->f[0];
        c.epi.hi = act == U_RELU ? __builtin_inff() : (float)op->f[1];
    } else {
        c.pass_act = act != U_IDENTITY;
    }
    c.ob = ceil_div(O, WL_BLK);
    int64_t cbn = ceil_div(C, WL_BLK), e = blocked ? WL_BLK : 1, planes = blocked ? cbn : C;
    int64_t want = 8 * (int64_t)nthreads; /* tasks: enough to balance the threads */
    c.borders = c.pt || c.pl || (OH - 1) * c.sh + (c.KH - 1) * c.dh >= H ||
                (OW - 1) * c.sw + (c.KW - 1) * c.dw >= W;
    if (!depthwise && c.borders && OW < 32) {
        /* small maps: a zero-bordered copy, so that every output pixel reads all its taps and
         * tiles span rows (large maps keep the input and give border pixels their own taps) */
        c.borders = 0;
        int64_t Hp = (OH - 1) * c.sh + (c.KH - 1) * c.dh + 1;
        int64_t Wp = (OW - 1) * c.sw + (c.KW - 1) * c.dw + 1;
        float *xp = wl_scratch(5, sizeof(float) * (size_t)(N * planes * Hp * Wp * e));
        if (!xp) {
            snprintf(err, errlen, "out of memory in blocked Conv2D");
            return 1;
        }
        pad_ctx pc = {x, xp, N * planes, H, W, Hp, Wp, c.pt, c.pl, e};
        wl_parallel_for(N * planes * Hp, pad_task, &pc, nthreads);
        c.x = xp, c.H = Hp, c.W = Wp, c.pt = 0, c.pl = 0;
    }
    if (blocked) {
        c.bi = WL_BLK, c.ncb = cbn, c.xcb = c.H * c.W * WL_BLK, c.xci = 1;
        c.xrow = c.W * WL_BLK, c.xpix = WL_BLK, c.xn = cbn * c.H * c.W * WL_BLK;
    } else {
        c.bi = C, c.ncb = 1, c.xcb = 0, c.xci = c.H * c.W, c.xrow = c.W, c.xpix = 1;
        c.xn = C * c.H * c.W;
    }
    if (depthwise) {
        int64_t chunks = ceil_div(want, N * c.ob);
        if (chunks > OH) chunks = OH;
        c.chunk = ceil_div(OH, chunks);
        c.tmax = c.KH * c.KW;
        wl_parallel_for(N * c.ob * ceil_div(OH, c.chunk), dw_task, &c, nthreads);
    } else {
        c.fb = CP(21);
        c.ngroups = ceil_div(c.ob, c.fb);
        c.tmax = c.ncb * c.KH * c.KW * c.bi;
        /* pixels per task: a whole number of full tiles */
        int64_t pmax = wl_active->nc_p[c.fb], npx = OH * OW;
        /* each pixel chunk streams the group's weights again: split pixels only when the
         * filter groups alone cannot keep the threads busy */
        int64_t chunks = ceil_div(4 * (int64_t)nthreads, N * c.ngroups);
        c.chunk = ceil_div(ceil_div(npx, chunks), pmax) * pmax;
        wl_parallel_for(N * c.ngroups * ceil_div(npx, c.chunk), conv_task, &c, nthreads);
    }
    if (c.failed) {
        snprintf(err, errlen, "out of memory in blocked Conv2D");
        return 1;
    }
    return 0;
}
