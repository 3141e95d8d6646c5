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

static void raster_rows(const int64_t *r, const char *src, char *dst, int64_t es, int64_t q0,
                        int64_t q1) {
    int64_t ss0 = r[2], ss1 = r[3], ss2 = r[4], ds0 = r[6], ds1 = r[7], ds2 = r[8];
    int64_t n1 = r[10], n2 = r[11];
    src += r[1] * es;
    dst += r[5] * es;
    if (q0 >= q1) return;
    /* rows q = z * n1 + y, walked without a division per row */
    int64_t z = q0 / n1, yy = q0 % n1;
    int swap = n2 < 8 && n1 >= 4 * n2 && ds1 != 0 && ds2 != 0;       /* short rows */
    int tr = es == 4 && ss1 == 1 && ss2 != 1 && ds2 == 1 && n1 >= 8 && n2 >= 8; /* transpose */
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
                        if (ds1 > ss2) {
                            for (int64_t y = y0; y < y1; y++)
                                for (int64_t x = x0; x < x1; x++) d32[y * ds1 + x] = s32[y + x * ss2];
                        } else {
                            for (int64_t x = x0; x < x1; x++)
                                for (int64_t y = y0; y < y1; y++) d32[y * ds1 + x] = s32[y + x * ss2];
                        }
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
            memcpy(d, s, (size_t)(n2 * es));
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
        if (nthreads > 1 && elems * es >= 262144 && nrows < 8 * nthreads && r[11] >= 64 * nthreads) {
            raster_ctx rc = {r, src, y, es, 0, nrows};
            int64_t tasks = wl_chunks(r[11], 64, nthreads, &rc.chunk);
            wl_parallel_for(tasks, raster_col_task, &rc, nthreads);
        } else if (nthreads > 1 && elems * es >= 262144 && nrows > 1) {
            raster_ctx rc = {r, src, y, es, 0, nrows};
            int64_t tasks = wl_chunks(nrows, 1, nthreads, &rc.chunk);
            wl_parallel_for(tasks, raster_task, &rc, nthreads);
        } else {
            raster_rows(r, src, y, es, 0, nrows);
        }
    }
    return 0;
}
