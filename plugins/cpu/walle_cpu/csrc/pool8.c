/* Max pooling of 8-bit tensors (int8 models: QOperator MaxPool, and the max pools the QDQ
 * rewrite runs on the int8 tensor). One NCHW plane per task; per kernel tap, the output columns
 * whose input is in bounds form one interval, so the inner loop is branch-free. */
#include <string.h>

#include "internal.h"

typedef struct {
    const wl_op *op;
    const uint8_t *x;
    uint8_t *y;
} pool8_ctx;

/* max of bytes read as signed (flip = 0x80: int8 compared as uint8 after flipping the top bit) */
static void pool8_task(void *vp, int64_t t) {
    const pool8_ctx *c = vp;
    const wl_pool_params *p = &c->op->pool;
    const uint8_t flip = c->op->dtype == D_I8 ? 0x80 : 0;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow;
    const uint8_t *x = c->x + t * H * W;
    uint8_t *y = c->y + t * OH * OW;
    for (int64_t oy = 0; oy < OH; oy++) {
        uint8_t *yr = y + oy * OW;
        memset(yr, 0, (size_t)OW); /* the smallest value (after the flip) */
        for (int64_t ky = 0; ky < p->kh; ky++) {
            int64_t iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
            if (iy < 0 || iy >= H) continue;
            const uint8_t *xr = x + iy * W;
            for (int64_t kx = 0; kx < p->kw; kx++) {
                int64_t off = kx * p->dilation_w - p->pad_left; /* ix = ox * stride + off */
                int64_t SW = p->stride_w;
                int64_t lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
                int64_t hi = (W - 1 - off) < 0 ? 0 : (W - 1 - off) / SW + 1;
                if (hi > OW) hi = OW;
                for (int64_t ox = lo; ox < hi; ox++) {
                    uint8_t v = xr[ox * SW + off] ^ flip;
                    yr[ox] = v > yr[ox] ? v : yr[ox];
                }
            }
        }
        if (flip)
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] ^= flip;
    }
}

int wl_pool2d_8bit(const wl_op *op, const wl_exec *ex) {
    pool8_ctx c = {op, (const uint8_t *)wl_in(op, ex, 0), (uint8_t *)wl_out(op, ex)};
    wl_parallel_for(op->pool.n * op->pool.c, pool8_task, &c, ex->nthreads);
    return 0;
}
