/* 8-bit max pooling (pool8.c) below Python: odd shapes, strides 1-3 (the contiguous, the
 * SSE2 / NEON stride-2 and the scalar taps), dilation, padding, ceil-mode extents, uint8 and
 * int8, compared exactly with naive loops. Built natively and for aarch64 (run under qemu) by
 * tests/test_quant_kernels.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static unsigned long long rng = 0x9E3779B97F4A7C15ULL;
static int rnd(int lo, int hi) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (int)((rng >> 11) % (unsigned long long)(hi - lo + 1));
}

static int check(int sgn, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                 int64_t d, int64_t pad, int ceil_extra, int threads) {
    int64_t span = (k - 1) * d + 1;
    int64_t oh = (h + 2 * pad - span) / s + 1 + ceil_extra, ow = (w + 2 * pad - span) / s + 1 + ceil_extra;
    int64_t nx = n * c * h * w, ny = n * c * oh * ow;
    uint8_t *x = malloc((size_t)nx), *y = malloc((size_t)ny);
    for (int64_t i = 0; i < nx; i++) x[i] = (uint8_t)rnd(0, 255);
    wl_ref ins[1] = {{0, 0}};
    wl_op op;
    memset(&op, 0, sizeof op);
    op.dtype = sgn ? D_I8 : D_U8;
    op.ins = ins;
    op.out = (wl_ref){1, 0};
    op.pool = (wl_pool_params){n, c, h, w, oh, ow, k, k, s, s, pad, pad, pad, pad, d, d, 0, 0, 0};
    char *slots[2] = {(char *)x, (char *)y};
    wl_exec ex = {slots, threads, NULL, 0};
    wl_pool2d_8bit(&op, &ex);
    int bad = 0;
    for (int64_t p = 0; p < n * c && !bad; p++)
        for (int64_t oy = 0; oy < oh && !bad; oy++)
            for (int64_t ox = 0; ox < ow && !bad; ox++) {
                int m = sgn ? -128 : 0;
                for (int64_t i = 0; i < k; i++)
                    for (int64_t j = 0; j < k; j++) {
                        int64_t iy = oy * s - pad + i * d, ix = ox * s - pad + j * d;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                        uint8_t b = x[(p * h + iy) * w + ix];
                        int v = sgn ? (int8_t)b : b;
                        m = v > m ? v : m;
                    }
                uint8_t got = y[(p * oh + oy) * ow + ox];
                int g = sgn ? (int8_t)got : got;
                if (g != m) {
                    printf("FAIL sgn=%d c=%ld %ldx%ld k=%ld s=%ld d=%ld pad=%ld at (%ld,%ld,%ld): %d != %d\n",
                           sgn, (long)c, (long)h, (long)w, (long)k, (long)s, (long)d, (long)pad,
                           (long)p, (long)oy, (long)ox, g, m);
                    bad = 1;
                }
            }
    free(x);
    free(y);
    return bad;
}

int main(void) {
    int fails = 0;
    for (int sgn = 0; sgn < 2; sgn++) {
        fails += check(sgn, 1, 4, 112, 112, 3, 2, 1, 1, 0, 2); /* resnet stem pool */
        fails += check(sgn, 2, 3, 33, 65, 2, 2, 1, 0, 0, 2);   /* stride 2, odd width */
        fails += check(sgn, 1, 2, 20, 50, 3, 3, 1, 1, 1, 1);   /* stride 3, ceil-mode extent */
        fails += check(sgn, 1, 2, 9, 70, 3, 1, 2, 1, 0, 1);    /* stride 1, dilated */
        fails += check(sgn, 1, 3, 40, 67, 3, 2, 2, 1, 1, 2);   /* stride 2, dilated, ceil extent */
        fails += check(sgn, 1, 1, 5, 5, 5, 1, 1, 0, 0, 1);     /* the whole plane */
        for (int r = 0; r < 40; r++) {
            int k = rnd(1, 4), s = rnd(1, 3), d = rnd(1, 2), pad = rnd(0, k - 1);
            int h = rnd((k - 1) * d + 1, 30), w = rnd((k - 1) * d + 1, 90);
            fails += check(sgn, rnd(1, 2), rnd(1, 5), h, w, k, s, d, pad, rnd(0, 1) && pad > 0, rnd(1, 2));
        }
    }
    printf(fails ? "FAILED %d\n" : "ALL OK\n", fails);
    return fails ? 1 : 0;
}
