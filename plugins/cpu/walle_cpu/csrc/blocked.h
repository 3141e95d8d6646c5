/* The blocked channel layout (NCHW16c) shared by its kernels: the blocked conv (conv_blocked.c),
 * blocked depthwise (depthwise.c) and blocked pooling (pool2d.c). A tensor (N, C, H, W) is
 * stored as (N, ceil(C/16), H, W, 16), so one 16-float vector holds one pixel of 16 channels.
 *
 * The conv kernels walk a reduction over the taps of a window of valid taps, given as a table
 * of (input offset, weight offset) pairs per tap; a task caches a few of them (interior,
 * borders). */
#ifndef WALLE_CPU_BLOCKED_H
#define WALLE_CPU_BLOCKED_H

#include <string.h>

#include "internal.h"

/* (the helpers below are static: each kernel file gets its own copy, inlined as before) */
/* tap windows cached per task: a row's interior and border columns (7x7 pad 3: seven), and
 * the previous row's while the next one starts */
#define NC_TABLES 8

typedef struct {
    const wl_op *op;
    const float *x, *w, *bias, *res;
    float *y;
    int64_t C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw;
    int64_t bi, ncb, xcb, xci, xrow, xpix, xn; /* input: channels per block, blocks, strides */
    int64_t ob, fb, ngroups, chunk;            /* output blocks, weight groups, work per task */
    int blockdiag;                             /* group gi reads input block gi only */
    int64_t tmax;                              /* entries of the largest offset table (taps) */
    nc_epi epi;                                /* residual pointer unset: set per tile */
    int pass_act;                              /* an activation the tiles cannot apply */
    int borders;                               /* some output pixels read only part of their taps */
    int failed;                                /* a task found no memory for its tables */
} nc_ctx;

typedef struct {
    int64_t key[5];
    int64_t n;            /* entries (taps) */
    int64_t used;         /* last use, for replacement */
    int64_t clock;        /* (cache[0]'s: lookups so far) */
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

/* The offset table for taps [ky0, ky1) x [kx0, kx1), in (ky, kx) order: the input offset and
 * the weight offset of each tap (depthwise: its 16 weights; a conv with fbw filter blocks per
 * weight group: its first input channel's, channels fbw * 16 floats apart), or on a plain
 * (NCHW) input of each tap and channel (ci inner: channel planes are not one float apart),
 * from a small per-task cache. */
static const nc_table *table(const nc_ctx *c, nc_table *cache, int depthwise, int64_t fbw,
                             int64_t ky0, int64_t ky1, int64_t kx0, int64_t kx1) {
    int64_t key[5] = {fbw, ky0, ky1, kx0, kx1};
    /* one pass, plain compares (the lookup runs per border pixel of a depthwise row: with a
     * pass for the clock and a memcmp per slot, a 56-wide row's two border pixels cost a sixth
     * of the row); cache[0].clock counts uses */
    int64_t clock = ++cache[0].clock;
    nc_table *t = &cache[0];
    for (int i = 0; i < NC_TABLES; i++) {
        nc_table *ci = &cache[i];
        if (ci->n >= 0 && ci->key[1] == ky0 && ci->key[3] == kx0 && ci->key[2] == ky1 &&
            ci->key[4] == kx1 && ci->key[0] == fbw) {
            ci->used = clock;
            return ci;
        }
        if (ci->used < t->used) t = ci; /* the least recently used slot (empty ones first) */
    }
    t->used = clock;
    memcpy(t->key, key, sizeof key);
    int64_t n = 0, xpix = depthwise ? WL_BLK : c->xpix, cn = depthwise || c->xci == 1 ? 1 : c->bi;
    int64_t wtap = depthwise ? WL_BLK : c->bi * fbw * WL_BLK;
    for (int64_t ky = ky0; ky < ky1; ky++)
        for (int64_t kx = kx0; kx < kx1; kx++)
            for (int64_t ci = 0; ci < cn; ci++, n++) {
                t->xo[n] = ky * c->dh * c->xrow + kx * c->dw * xpix + ci * c->xci;
                t->wo[n] = (ky * c->KW + kx) * wtap + ci * fbw * WL_BLK;
            }
    t->n = n;
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
        cache[i].used = cache[i].clock = 0;
        cache[i].xo = buf + 2 * i * c->tmax;
        cache[i].wo = cache[i].xo + c->tmax;
    }
    return cache;
}


/* Output columns [lo, hi) whose taps all lie inside the input row. */
static void interior(const nc_ctx *c, int64_t *lo, int64_t *hi) {
    *lo = ceil_div(c->pl, c->sw);
    int64_t last = c->W - 1 + c->pl - (c->KW - 1) * c->dw; /* ox * sw <= last */
    *hi = last < 0 ? 0 : last / c->sw + 1;
    if (*hi > c->OW) *hi = c->OW;
    if (*lo > *hi) *lo = *hi;
}

/* Whether a blocked depthwise conv's tasks copy the input rows they read into a zero-bordered
 * scratch of their own (depthwise.c: a narrow map, dilation 1, a kernel the ISA's row tiles
 * take). Those maps get no shared padded copy first: one thread wrote it and the others read
 * it back from that core's cache (a 5x5 on 15 blocks of 6x6: 6.3 us on 1 thread, 17.3 on 2). */
static inline int nc_dw_own_rows(const nc_ctx *c) {
    return c->OW < (c->sw * c->sh == 1 ? 32 : 9) && c->dw == 1 && c->dh == 1 &&
           (c->KW == 3 || c->KW == 5) && c->sw <= 2 && c->KH <= c->KW;
}

/* Fills c for the blocked conv or depthwise conv `op` (x, res, y bound): geometry, input
 * strides, the epilogue, and for small padded maps a zero-bordered copy of the input.
 * Returns 1 after wl_fail. (conv_blocked.c) */
int wl_nc_prepare(nc_ctx *c, const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                  float *y);

#endif
