/* Max pooling of 8-bit tensors (int8 models: QOperator MaxPool, and the max pools the QDQ
 * rewrite runs on the int8 tensor). One NCHW plane per task. Bytes are compared as uint8; int8
 * is flipped (x ^ 0x80) on the way in and out so one unsigned max serves both.
 * Per output row: the max over the KH input rows first, into a zero-padded row buffer
 * (contiguous, the compiler vectorises it), then the KW taps of that row with stride SW: stride 1
 * is contiguous, stride 2 takes the even bytes with SSE2 (mask + pack) or NEON (vld2q), any
 * other stride is scalar. Zero is the smallest (flipped) value, so padding never wins. */
#include <string.h>

#include "internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

typedef struct {
    const wl_op *op;
    const uint8_t *x;
    uint8_t *y;
    int64_t rowbuf; /* bytes of the padded row buffer */
} pool8_ctx;

/* y[i] = max(y[i], s[i * stride]) for i < n; s readable up to s[2 * n] for stride 2 */
static void max_taps(uint8_t *restrict y, const uint8_t *restrict s, int64_t n, int64_t stride) {
    int64_t i = 0;
    if (stride == 1) {
        for (; i < n; i++) y[i] = s[i] > y[i] ? s[i] : y[i];
        return;
    }
    if (stride == 2) {
#if defined(__SSE2__)
        const __m128i lo = _mm_set1_epi16(0x00ff);
        for (; i + 16 <= n; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + 2 * i));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + 2 * i + 16));
            __m128i ev = _mm_packus_epi16(_mm_and_si128(a, lo), _mm_and_si128(b, lo));
            __m128i *d = (__m128i *)(y + i);
            _mm_storeu_si128(d, _mm_max_epu8(_mm_loadu_si128(d), ev));
        }
#elif defined(__ARM_NEON)
        for (; i + 16 <= n; i += 16) {
            uint8x16x2_t ab = vld2q_u8(s + 2 * i);
            vst1q_u8(y + i, vmaxq_u8(vld1q_u8(y + i), ab.val[0]));
        }
#endif
    }
    for (; i < n; i++) {
        uint8_t v = s[i * stride];
        y[i] = v > y[i] ? v : y[i];
    }
}

/* without a row buffer (its allocation failed): per kernel tap, the output columns whose input
 * is in bounds form one interval, scalar */
static void pool8_plain(const wl_pool_params *p, const uint8_t *x, uint8_t *y, uint8_t flip) {
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, SW = p->stride_w;
    for (int64_t oy = 0; oy < OH; oy++) {
        uint8_t *yr = y + oy * OW;
        memset(yr, 0, (size_t)OW);
        for (int64_t ky = 0; ky < p->kh; ky++) {
            int64_t iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
            if (iy < 0 || iy >= H) continue;
            const uint8_t *xr = x + iy * W;
            for (int64_t kx = 0; kx < p->kw; kx++) {
                int64_t off = kx * p->dilation_w - p->pad_left; /* ix = ox * SW + off */
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

static void pool8_task(void *vp, int64_t t) {
    const pool8_ctx *c = vp;
    const wl_pool_params *p = &c->op->pool;
    const uint8_t flip = c->op->dtype == D_I8 ? 0x80 : 0;
    int64_t H = p->h, W = p->w, OH = p->oh, OW = p->ow, PL = p->pad_left;
    const uint8_t *x = c->x + t * H * W;
    uint8_t *y = c->y + t * OH * OW;
    uint8_t *vm = wl_scratch(1, (size_t)c->rowbuf); /* the task's thread's; no nested op uses it */
    if (!vm) {
        pool8_plain(p, x, y, flip);
        return;
    }
    memset(vm, 0, (size_t)c->rowbuf); /* the padding stays zero: only vm[PL, PL + W) is written */
    uint8_t *vr = vm + PL;
    for (int64_t oy = 0; oy < OH; oy++) {
        uint8_t *restrict yr = y + oy * OW;
        int any = 0;
        for (int64_t ky = 0; ky < p->kh; ky++) {
            int64_t iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
            if (iy < 0 || iy >= H) continue;
            const uint8_t *restrict xr = x + iy * W;
            if (!any)
                for (int64_t ix = 0; ix < W; ix++) vr[ix] = xr[ix] ^ flip;
            else
                for (int64_t ix = 0; ix < W; ix++) {
                    uint8_t v = xr[ix] ^ flip;
                    vr[ix] = v > vr[ix] ? v : vr[ix];
                }
            any = 1;
        }
        memset(yr, 0, (size_t)OW);
        if (any)
            for (int64_t kx = 0; kx < p->kw; kx++)
                max_taps(yr, vm + kx * p->dilation_w, OW, p->stride_w);
        if (flip)
            for (int64_t ox = 0; ox < OW; ox++) yr[ox] ^= flip;
    }
}

int wl_pool2d_8bit(const wl_op *op, const wl_exec *ex) {
    const wl_pool_params *p = &op->pool;
    /* every tap in bounds: up to (OW - 1) * SW + (KW - 1) * DW, plus the stride-2 vector's
     * over-read of one byte past its last even byte */
    int64_t need = (p->ow - 1) * p->stride_w + (p->kw - 1) * p->dilation_w + 2;
    int64_t have = p->pad_left + p->w;
    pool8_ctx c = {op, (const uint8_t *)wl_in(op, ex, 0), (uint8_t *)wl_out(op, ex),
                   (need > have ? need : have) + 16};
    wl_parallel_for(op->pool.n * op->pool.c, pool8_task, &c, ex->nthreads);
    return 0;
}
