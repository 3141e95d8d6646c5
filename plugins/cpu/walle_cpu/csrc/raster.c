/* Raster: the one data-movement op. Each region copies a 3-D box between strided views of an
 * input and the output (transposes, slices, concats, pads, layout changes), after an optional
 * fill of the whole output. */
#include <string.h>

#include "internal.h"

typedef struct {
    const int64_t *r;
    const char *src;
    char *dst;
    int64_t esize, chunk, nrows;
} raster_ctx;

/* 4x4 blocks of 32-bit elements as four 16-byte vectors (SSE2 / NEON, the baseline of both
 * targets): four loads, eight shuffles, four stores for 16 elements where the scalar loop
 * moved one element per load/store pair with one side strided. */
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x4u __attribute__((vector_size(16), aligned(4)));

static inline void transpose4(const uint32_t *s, int64_t ss, uint32_t *d, int64_t ds) {
    u32x4 a = *(const u32x4u *)s, b = *(const u32x4u *)(s + ss);
    u32x4 c = *(const u32x4u *)(s + 2 * ss), e = *(const u32x4u *)(s + 3 * ss);
    u32x4 t0 = __builtin_shuffle(a, b, (u32x4){0, 4, 1, 5}), t1 = __builtin_shuffle(a, b, (u32x4){2, 6, 3, 7});
    u32x4 t2 = __builtin_shuffle(c, e, (u32x4){0, 4, 1, 5}), t3 = __builtin_shuffle(c, e, (u32x4){2, 6, 3, 7});
    *(u32x4u *)d = __builtin_shuffle(t0, t2, (u32x4){0, 1, 4, 5});
    *(u32x4u *)(d + ds) = __builtin_shuffle(t0, t2, (u32x4){2, 3, 6, 7});
    *(u32x4u *)(d + 2 * ds) = __builtin_shuffle(t1, t3, (u32x4){0, 1, 4, 5});
    *(u32x4u *)(d + 3 * ds) = __builtin_shuffle(t1, t3, (u32x4){2, 3, 6, 7});
}

/* d[y * ds + x] = s[y + x * ss] over y0 <= y < y1, x0 <= x < x1: whole 4x4 blocks vectorised,
 * the ragged edges element by element. `rows_outer`: walk y outermost (the destination's rows
 * are further apart than the source's), else x. */
static void transpose_tile(const uint32_t *s, int64_t ss, uint32_t *d, int64_t ds, int64_t y0,
                           int64_t y1, int64_t x0, int64_t x1, int rows_outer) {
    int64_t ye = y0 + (y1 - y0) / 4 * 4, xe = x0 + (x1 - x0) / 4 * 4;
    if (rows_outer) {
        for (int64_t y = y0; y < ye; y += 4)
            for (int64_t x = x0; x < xe; x += 4) transpose4(s + y + x * ss, ss, d + y * ds + x, ds);
    } else {
        for (int64_t x = x0; x < xe; x += 4)
            for (int64_t y = y0; y < ye; y += 4) transpose4(s + y + x * ss, ss, d + y * ds + x, ds);
    }
    for (int64_t y = y0; y < y1; y++) {
        int64_t xs = y < ye ? xe : x0;
        for (int64_t x = xs; x < x1; x++) d[y * ds + x] = s[y + x * ss];
    }
}

/* d[(y - y0) * r + x] = s[y * ss] for x < r: each element repeated r times; twice as two
 * vectors of four interleaved with themselves */
static void repeat32(const uint32_t *s, int64_t ss, uint32_t *d, int64_t y0, int64_t y1, int64_t r) {
    int64_t y = y0;
    if (r == 2 && ss == 1)
        for (; y + 4 <= y1; y += 4, d += 8) {
            u32x4 v = *(const u32x4u *)(s + y);
            *(u32x4u *)d = __builtin_shuffle(v, (u32x4){0, 0, 1, 1});
            *(u32x4u *)(d + 4) = __builtin_shuffle(v, (u32x4){2, 2, 3, 3});
        }
    for (; y < y1; y++) {
        uint32_t v = s[y * ss];
        for (int64_t x = 0; x < r; x++) *d++ = v;
    }
}

/* d[y * r + x] = s[y + x * ss] for y0 <= y < y1, x < r (2, 3 or 4 rows interleaved): two rows
 * as vectors unpacked pairwise, four as 4x4 transposes */
static void zip32(const uint32_t *s, int64_t ss, uint32_t *d, int64_t y0, int64_t y1, int64_t r) {
    int64_t y = y0;
    if (r == 2)
        for (; y + 4 <= y1; y += 4) {
            u32x4 a = *(const u32x4u *)(s + y), b = *(const u32x4u *)(s + y + ss);
            *(u32x4u *)(d + 2 * y) = __builtin_shuffle(a, b, (u32x4){0, 4, 1, 5});
            *(u32x4u *)(d + 2 * y + 4) = __builtin_shuffle(a, b, (u32x4){2, 6, 3, 7});
        }
    else if (r == 4)
        for (; y + 4 <= y1; y += 4) transpose4(s + y, ss, d + 4 * y, 4);
    for (; y < y1; y++)
        for (int64_t x = 0; x < r; x++) d[y * r + x] = s[y + x * ss];
}

/* y contiguous in the source, x in the destination, 32-bit elements: run as a transpose. */
static int is_transpose(const int64_t *r, int64_t es) {
    return es == 4 && r[3] == 1 && r[4] != 1 && r[8] == 1 && r[10] >= 8 && r[11] >= 8;
}

static void raster_rows(const int64_t *r, const char *src, char *dst, int64_t es, int64_t q0,
                        int64_t q1) {
    int64_t ss0 = r[2], ss1 = r[3], ss2 = r[4], ds0 = r[6], ds1 = r[7], ds2 = r[8];
    int64_t n1 = r[10], n2 = r[11];
    src += r[1] * es;
    dst += r[5] * es;
    if (q0 >= q1) return;
    /* rows q = z * n1 + y, walked without a division per row */
    int64_t z = q0 / n1, yy = q0 % n1;
    if (ss2 == 0 && ds2 == 1 && ds1 == n2 && n2 > 1) {
        /* every source element repeated n2 times into contiguous output (nearest upsampling
         * of the last axis): rows of y written whole */
        for (int64_t zz = z; zz * n1 < q1; zz++) {
            int64_t ylo = zz == z ? yy : 0, yhi = (zz + 1) * n1 <= q1 ? n1 : q1 - zz * n1;
            const char *sz = src + zz * ss0 * es;
            char *dz = dst + (zz * ds0 + ylo * n2) * es;
            if (es == 4) repeat32((const uint32_t *)sz, ss1, (uint32_t *)dz, ylo, yhi, n2);
            else
                for (int64_t y = ylo; y < yhi; y++)
                    for (int64_t x = 0; x < n2; x++, dz += es) memcpy(dz, sz + y * ss1 * es, (size_t)es);
        }
        return;
    }
    if (es == 4 && ss1 == 1 && ds2 == 1 && ds1 == n2 && n2 >= 2 && n2 <= 4 && ss2 != 1) {
        /* n2 source rows zipped into one contiguous destination (an interleave: ConvTranspose's
         * or PixelShuffle's phases innermost): d[y * n2 + x] = s[y + x * ss2] */
        for (int64_t zz = z; zz * n1 < q1; zz++) {
            int64_t ylo = zz == z ? yy : 0, yhi = (zz + 1) * n1 <= q1 ? n1 : q1 - zz * n1;
            zip32((const uint32_t *)(src + zz * ss0 * es), ss2, (uint32_t *)(dst + zz * ds0 * es), ylo, yhi, n2);
        }
        return;
    }
    int swap = n2 < 8 && n1 >= 4 * n2 && ds1 != 0 && ds2 != 0;       /* short rows */
    int tr = is_transpose(r, es);
    if (swap || tr) {
        /* a pure copy with distinct destinations may go in any order: short rows run with y
         * innermost; a transpose (y contiguous in the source, x in the destination) runs in
         * blocks of 16 y so that both sides stay within a few cache lines */
        for (int64_t zz = z; zz * n1 < q1; zz++) {
            int64_t ylo = zz == z ? yy : 0, yhi = (zz + 1) * n1 <= q1 ? n1 : q1 - zz * n1;
            const char *sz = src + zz * ss0 * es;
            char *dz = dst + zz * ds0 * es;
            if (tr) {
                /* tiles of 16 y x 64 x; inside a tile the inner loop runs along the side whose
                 * other stride is larger, so those lines are written (or read) whole in one go
                 * (the plane strides of a layout change are often multiples of 4 KiB, which
                 * the L1 cache cannot hold 16 partial lines of) */
                const uint32_t *s32 = (const uint32_t *)sz;
                uint32_t *d32 = (uint32_t *)dz;
                for (int64_t y0 = ylo; y0 < yhi; y0 += 16) {
                    int64_t y1 = y0 + 16 < yhi ? y0 + 16 : yhi;
                    for (int64_t x0 = 0; x0 < n2; x0 += 64) {
                        int64_t x1 = x0 + 64 < n2 ? x0 + 64 : n2;
                        transpose_tile(s32, ss2, d32, ds1, y0, y1, x0, x1, ds1 > ss2);
                    }
                }
                continue;
            }
            for (int64_t x = 0; x < n2; x++) {
                const char *s = sz + x * ss2 * es;
                char *d = dz + x * ds2 * es;
                switch (es) {
#define RY(T) for (int64_t y = ylo; y < yhi; y++) ((T *)d)[y * ds1] = ((const T *)s)[y * ss1]; break;
                case 1: RY(uint8_t)
                case 2: RY(uint16_t)
                case 4: RY(uint32_t)
                case 8: RY(uint64_t)
                default:
                    for (int64_t y = ylo; y < yhi; y++) memcpy(d + y * ds1 * es, s + y * ss1 * es, (size_t)es);
#undef RY
                }
            }
        }
        return;
    }
    for (int64_t q = q0; q < q1; q++) {
        const char *s = src + (z * ss0 + yy * ss1) * es;
        char *d = dst + (z * ds0 + yy * ds1) * es;
        if (++yy == n1) { yy = 0; z++; }
        if (ss2 == 1 && ds2 == 1) {
            /* one pixel of a 16-float block (the blocked layout's unit), or a run of its lanes
             * (a concat of 8 + 8 channels): a fixed-size copy the compiler inlines, not a
             * library call per pixel */
            switch (n2 * es) {
            case 64: memcpy(d, s, 64); break;
            case 48: memcpy(d, s, 48); break;
            case 32: memcpy(d, s, 32); break;
            case 16: memcpy(d, s, 16); break;
            default: memcpy(d, s, (size_t)(n2 * es));
            }
            continue;
        }
        switch (es) {
#define RC(T) for (int64_t x = 0; x < n2; x++) ((T *)d)[x * ds2] = ((const T *)s)[x * ss2]; break;
        case 1: RC(uint8_t)
        case 2: RC(uint16_t)
        case 4: RC(uint32_t)
        case 8: RC(uint64_t)
        default:
            for (int64_t x = 0; x < n2; x++) memcpy(d + x * ds2 * es, s + x * ss2 * es, (size_t)es);
#undef RC
        }
    }
}

static void raster_task(void *vp, int64_t t) {
    raster_ctx *c = vp;
    int64_t q0 = t * c->chunk, q1 = q0 + c->chunk < c->nrows ? q0 + c->chunk : c->nrows;
    raster_rows(c->r, c->src, c->dst, c->esize, q0, q1);
}

/* The same region split by columns (x): every task runs all rows over its columns. A transpose
 * with few rows (a layout change of 8 channels) would otherwise give each task one row, and
 * each would read every source line for one element of it. */
static void raster_col_task(void *vp, int64_t t) {
    raster_ctx *c = vp;
    int64_t r[12];
    memcpy(r, c->r, sizeof r);
    int64_t x0 = t * c->chunk, x1 = x0 + c->chunk < r[11] ? x0 + c->chunk : r[11];
    r[1] += x0 * r[4];
    r[5] += x0 * r[8];
    r[11] = x1 - x0;
    raster_rows(r, c->src, c->dst, c->esize, 0, c->nrows);
}

int wl_raster(const wl_op *op, const wl_exec *ex) {
    const wl_raster_params *p = &op->raster;
    int64_t es = p->esize, total = p->total;
    int nthreads = ex->nthreads;
    char *y = wl_out(op, ex);
    if (p->has_fill) {
        int64_t fill = p->fill;
        switch (es) {
        case 1: memset(y, (int)(fill & 0xff), (size_t)total); break;
#define FILL(T) { T v; memcpy(&v, &fill, sizeof v); for (int64_t i = 0; i < total; i++) ((T *)y)[i] = v; } break;
        case 2: FILL(uint16_t)
        case 4: FILL(uint32_t)
        case 8: FILL(uint64_t)
#undef FILL
        default: break;
        }
    }
    const int64_t *regs = (const int64_t *)op->aux;
    for (int64_t ri = 0; ri < p->n_regions; ri++) {
        const int64_t *r = regs + ri * 12;
        const char *src = wl_in(op, ex, r[0]);
        int64_t nrows = r[9] * r[10], elems = nrows * r[11];
        /* a transpose splits by columns, 64 (one tile) and more a task: split by rows, its
         * tasks got 2 of a layout change's 16 channel rows, too few for its 4x4 blocks */
        int tr = is_transpose(r, es);
        if (nthreads > 1 && elems * es >= 262144 &&
            (tr ? r[11] >= 128 : nrows < 8 * nthreads && r[11] >= 64 * nthreads)) {
            raster_ctx rc = {r, src, y, es, 0, nrows};
            int64_t tasks = wl_chunks(r[11], 64, nthreads, &rc.chunk);
            wl_parallel_for(tasks, raster_col_task, &rc, nthreads);
        } else if (nthreads > 1 && elems * es >= 262144 && nrows > 1) {
            raster_ctx rc = {r, src, y, es, 0, nrows};
            int64_t tasks = wl_chunks(nrows, tr ? 16 : 1, nthreads, &rc.chunk);
            wl_parallel_for(tasks, raster_task, &rc, nthreads);
        } else {
            raster_rows(r, src, y, es, 0, nrows);
        }
    }
    return 0;
}
