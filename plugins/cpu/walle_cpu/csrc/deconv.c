/* Transposed 2-D convolution (ConvTranspose, one group) on the blocked layout NCHW16c,
 * gathered per output pixel: output (oy, ox) sums the taps (ky, kx) for which oy + pt - ky and
 * ox + pl - kx are multiples of the strides, each reading input pixel ((oy + pt - ky) / sh,
 * (ox + pl - kx) / sw). The output columns of one phase (ox % sw) read consecutive input
 * pixels with the same taps, so a row runs phase by phase in tiles of 8 pixels (the ISA's
 * nc_deconv_px in isa/deconv.inc), each pixel written once with its bias and clamp straight
 * into the blocked output: no zero-inserted input, no per-phase convs, no interleave pass.
 * ins = (x); aux: weights (ob, kh, kw, cb, 16 ci, 16 co), aux2: bias padded to whole blocks. */
#include <math.h>

#include "internal.h"

typedef struct {
    const wl_op *op;
    const float *x, *w, *bias;
    float *y;
    float lo, hi;
} dc_ctx;

static int64_t blocks16(int64_t c) { return (c + WL_BLK - 1) / WL_BLK; }
static int64_t mod_pos(int64_t a, int64_t b) { int64_t r = a % b; return r < 0 ? r + b : r; }

/* task t: output row oy of block ob of image n */
static void deconv_task(void *vp, int64_t t) {
    const dc_ctx *c = vp;
    const wl_conv_params *p = &c->op->conv;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, KH = p->kh, KW = p->kw;
    int64_t SH = p->stride_h, SW = p->stride_w, PT = p->pad_top, PL = p->pad_left;
    int64_t ncb = blocks16(p->c), OB = blocks16(p->o), last = p->c - (ncb - 1) * WL_BLK;
    int64_t oy = t % OH, ob = (t / OH) % OB, n = t / (OH * OB);
    const float *x = c->x + n * ncb * H * W * WL_BLK;
    const float *w = c->w + ob * KH * KW * ncb * 256;
    const float *bias = c->bias + ob * WL_BLK;
    float *y = c->y + ((n * OB + ob) * OH + oy) * OW * WL_BLK;
    int64_t xcb = H * W * WL_BLK, nk = KH * KW;
    int64_t xo[nk], wo[nk], off[nk], exo[nk], ewo[nk];
    for (int64_t r = 0; r < SW && r < OW; r++) {
        int64_t jn = (OW - r + SW - 1) / SW, jlo = 0, jhi = jn, nt = 0;
        for (int64_t ky = mod_pos(oy + PT, SH); ky < KH; ky += SH) {
            int64_t iy = (oy + PT - ky) / SH;
            if (iy < 0 || iy >= H) continue;
            for (int64_t kx = mod_pos(r + PL, SW); kx < KW; kx += SW) {
                int64_t o = (r + PL - kx) / SW; /* input column of phase output j: j + o */
                xo[nt] = (iy * W + o) * WL_BLK;
                wo[nt] = (ky * KW + kx) * ncb * 256;
                off[nt++] = o;
                if (-o > jlo) jlo = -o;
                if (W - o < jhi) jhi = W - o;
            }
        }
        float *yr = y + r * WL_BLK;
        int64_t ys = SW * WL_BLK;
        for (int64_t j = 0; j < jn;) {
            if (j >= jlo && j + 8 <= jhi) {
                wl_active->nc_deconv_px(8, nt, xo, wo, x + j * WL_BLK, WL_BLK, ncb, xcb, last, w,
                                        bias, c->lo, c->hi, yr + j * ys, ys);
                j += 8;
                continue;
            }
            /* a border pixel (or the row's last few): its own in-range taps */
            int64_t ne = 0;
            for (int64_t k = 0; k < nt; k++)
                if (j + off[k] >= 0 && j + off[k] < W) {
                    exo[ne] = xo[k];
                    ewo[ne++] = wo[k];
                }
            int np = j >= jlo && j + 4 <= jhi ? 4 : 1;
            wl_active->nc_deconv_px(np, ne, exo, ewo, x + j * WL_BLK, WL_BLK, ncb, xcb, last, w,
                                    bias, c->lo, c->hi, yr + j * ys, ys);
            j += np;
        }
    }
}

int wl_deconv(const wl_op *op, const wl_exec *ex) {
    const wl_conv_params *p = &op->conv;
    dc_ctx c = {op, (const float *)wl_in(op, ex, 0), (const float *)op->aux,
                (const float *)op->aux2, (float *)wl_out(op, ex), -INFINITY, INFINITY};
    if (p->act.fn == U_RELU) c.lo = 0.0f;
    else if (p->act.fn == U_CLIP) {
        c.lo = (float)p->act.prm[0];
        c.hi = (float)p->act.prm[1];
    }
    int64_t rows = p->n * blocks16(p->o) * p->oh;
    if (rows * p->ow == 0) return 0;
    wl_parallel_for(rows, deconv_task, &c, ex->nthreads);
    return 0;
}
