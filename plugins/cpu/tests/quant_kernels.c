/* int8 kernel tests (qgemm.c) below Python: every variant named on the command line runs
 * convolutions (regular, 1x1, strided/dilated/padded, grouped, depthwise) and matrix products
 * on odd shapes, uint8 and int8 activations and weights, per-tensor and per-channel zero points
 * and scales, fused clamps and int32 output, compared exactly with naive loops that use the
 * same requantisation (rintf of float32(acc) * scale). Built natively and for aarch64 (run under
 * qemu) by tests/test_quant_kernels.py. Exit 2: the CPU lacks the variant. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

static int failures = 0;
static unsigned long long rng = 88172645463325252ULL;

static int rnd(int lo, int hi) { /* inclusive */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (int)((rng >> 11) % (unsigned long long)(hi - lo + 1));
}

typedef struct {
    int x_signed, w_signed, out, per_channel, wz_nonzero;
} q_case;

static int32_t requant(int64_t acc, float scale, int32_t zp, int32_t lo, int32_t hi) {
    float f = (float)(int32_t)acc * scale;
    int32_t v = (int32_t)rintf(f) + zp;
    return v < lo ? lo : v > hi ? hi : v;
}

static void fill_bytes(uint8_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = (uint8_t)rnd(0, 255);
}

static int32_t xval(const uint8_t *x, int64_t i, int sgn) { return sgn ? (int8_t)x[i] : x[i]; }

/* the per-row parameters both the kernel and the naive loops use */
typedef struct {
    int32_t *wz, *bias, xz, yz, lo, hi;
    float *scale;
} q_params;

static q_params params(const q_case *c, int64_t rows) {
    q_params p;
    p.wz = malloc(sizeof(int32_t) * rows);
    p.bias = malloc(sizeof(int32_t) * rows);
    p.scale = malloc(sizeof(float) * rows);
    int32_t wz0 = c->wz_nonzero ? rnd(c->w_signed ? -20 : 100, c->w_signed ? 20 : 150) : (c->w_signed ? 0 : 128);
    float s0 = 0.0005f * (float)rnd(1, 40);
    for (int64_t r = 0; r < rows; r++) {
        p.wz[r] = c->per_channel && c->wz_nonzero ? wz0 + rnd(-3, 3) : wz0;
        p.bias[r] = rnd(-3000, 3000);
        p.scale[r] = c->per_channel ? 0.0005f * (float)rnd(1, 40) : s0;
    }
    p.xz = c->x_signed ? rnd(-30, 30) : rnd(90, 160);
    int s = c->out == Q_S8;
    p.yz = s ? rnd(-20, 20) : rnd(100, 150);
    p.lo = s ? -128 : 0;
    p.hi = s ? 127 : 255;
    if (rnd(0, 2) == 0) p.lo = p.yz; /* a fused ReLU */
    return p;
}

/* the weights packed for the case (mem: their arrays, freed by the caller) */
static wl_qweights pack(const q_case *c, const q_params *p, const uint8_t *wt, int64_t rows,
                        int64_t k, void **mem) {
    wl_qweights q;
    *mem = aligned_alloc(64, (size_t)((wl_q_weight_bytes(rows, k) + 63) / 64 * 64));
    wl_q_pack_weights(&q, *mem, wt, c->w_signed, rows, k, p->wz, p->bias, p->xz, c->x_signed,
                      c->out == Q_S32 ? NULL : p->scale, p->yz, p->lo, p->hi, c->out, 0);
    return q;
}

static void check(const char *what, const void *got, const int32_t *want, int64_t n, int out) {
    for (int64_t i = 0; i < n; i++) {
        int32_t g = out == Q_S32 ? ((const int32_t *)got)[i]
                    : out == Q_S8 ? ((const int8_t *)got)[i] : ((const uint8_t *)got)[i];
        if (g != want[i]) {
            printf("FAIL %s [%lld]: got %d want %d\n", what, (long long)i, g, want[i]);
            failures++;
            return;
        }
    }
    printf("ok   %s (%lld values)\n", what, (long long)n);
}

static void test_conv(const q_case *c, int64_t n, int64_t ch, int64_t h, int64_t w, int64_t o,
                      int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t groups) {
    wl_qconv_params s = {n, ch, h, w, o, 0, 0, k, k, stride, stride, pad, pad, dil, dil, groups};
    s.oh = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
    s.ow = (w + 2 * pad - dil * (k - 1) - 1) / stride + 1;
    int64_t cg = ch / groups, og = o / groups, K = cg * k * k, P = s.oh * s.ow;
    uint8_t *x = malloc(n * ch * h * w + 1), *wt = malloc(o * K + 1);
    fill_bytes(x, n * ch * h * w);
    fill_bytes(wt, o * K);
    q_params p = params(c, o);
    void *mem;
    wl_qweights q = pack(c, &p, wt, o, K, &mem);
    int es = c->out == Q_S32 ? 4 : 1;
    void *y = malloc(n * o * P * es + 4);
    int32_t *want = malloc(sizeof(int32_t) * (n * o * P + 1));
    wl_qconv(&s, &q, x, y, 2);
    for (int64_t b = 0; b < n; b++)
        for (int64_t oc = 0; oc < o; oc++) {
            int64_t g = oc / og;
            for (int64_t oy = 0; oy < s.oh; oy++)
                for (int64_t ox = 0; ox < s.ow; ox++) {
                    int64_t acc = p.bias[oc];
                    for (int64_t ci = 0; ci < cg; ci++)
                        for (int64_t i = 0; i < k; i++)
                            for (int64_t j = 0; j < k; j++) {
                                int64_t iy = oy * stride - pad + i * dil, ix = ox * stride - pad + j * dil;
                                int32_t xv = (iy < 0 || iy >= h || ix < 0 || ix >= w)
                                    ? p.xz : xval(x, ((b * ch + g * cg + ci) * h + iy) * w + ix, c->x_signed);
                                int32_t wv = xval(wt, (oc * cg + ci) * k * k + i * k + j, c->w_signed);
                                acc += (int64_t)(xv - p.xz) * (wv - p.wz[oc]);
                            }
                    int64_t at = ((b * o + oc) * s.oh + oy) * s.ow + ox;
                    want[at] = c->out == Q_S32 ? (int32_t)acc : requant(acc, p.scale[oc], p.yz, p.lo, p.hi);
                }
        }
    char name[160];
    snprintf(name, sizeof name, "conv n%lld c%lld %lldx%lld o%lld k%lld s%lld p%lld d%lld g%lld x%c w%c out%d pc%d wz%d",
             (long long)n, (long long)ch, (long long)h, (long long)w, (long long)o, (long long)k,
             (long long)stride, (long long)pad, (long long)dil, (long long)groups,
             c->x_signed ? 's' : 'u', c->w_signed ? 's' : 'u', c->out, c->per_channel, c->wz_nonzero);
    check(name, y, want, n * o * P, c->out);
    free(x); free(wt); free(mem); free(y); free(want);
    free(p.wz); free(p.bias); free(p.scale);
}

static void test_matmul(const q_case *c, int64_t m, int64_t k, int64_t nn) {
    uint8_t *a = malloc(m * k + 1), *wt = malloc(nn * k + 1);
    fill_bytes(a, m * k);
    fill_bytes(wt, nn * k); /* rows of q = columns of B: row j is B[:, j] */
    q_params p = params(c, nn);
    void *mem;
    wl_qweights q = pack(c, &p, wt, nn, k, &mem);
    int es = c->out == Q_S32 ? 4 : 1;
    void *y = malloc(m * nn * es + 4);
    int32_t *want = malloc(sizeof(int32_t) * (m * nn + 1));
    wl_qmatmul(m, &q, a, y, 2);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < nn; j++) {
            int64_t acc = p.bias[j];
            for (int64_t kk = 0; kk < k; kk++)
                acc += (int64_t)(xval(a, i * k + kk, c->x_signed) - p.xz) *
                       (xval(wt, j * k + kk, c->w_signed) - p.wz[j]);
            want[i * nn + j] = c->out == Q_S32 ? (int32_t)acc : requant(acc, p.scale[j], p.yz, p.lo, p.hi);
        }
    char name[120];
    snprintf(name, sizeof name, "matmul %lldx%lldx%lld x%c w%c out%d pc%d wz%d", (long long)m,
             (long long)k, (long long)nn, c->x_signed ? 's' : 'u', c->w_signed ? 's' : 'u', c->out,
             c->per_channel, c->wz_nonzero);
    check(name, y, want, m * nn, c->out);
    free(a); free(wt); free(mem); free(y); free(want);
    free(p.wz); free(p.bias); free(p.scale);
}

/* both operands inputs (attention's Q K^T and scores x V): per-tensor parameters, b (k, n) or
 * transposed (n, k), batched */
static void test_matmul_dyn(const q_case *c, int64_t batch, int64_t m, int64_t k, int64_t nn, int trans_b) {
    uint8_t *a = malloc(batch * m * k + 1), *bm = malloc(batch * k * nn + 1);
    fill_bytes(a, batch * m * k);
    fill_bytes(bm, batch * k * nn);
    q_params p = params(c, 1);
    wl_qmatmul_params d = {m, 1, batch, k, nn, trans_b, c->x_signed, c->w_signed, p.xz, p.wz[0],
                           p.yz, p.lo, p.hi, c->out, p.scale[0]};
    int es = c->out == Q_S32 ? 4 : 1;
    void *y = malloc(batch * m * nn * es + 4);
    int32_t *want = malloc(sizeof(int32_t) * (batch * m * nn + 1));
    if (wl_qmatmul_dyn(&d, a, bm, y, 2)) failures++;
    for (int64_t t = 0; t < batch; t++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < nn; j++) {
                int64_t acc = 0;
                for (int64_t kk = 0; kk < k; kk++) {
                    int64_t bi = t * k * nn + (trans_b ? j * k + kk : kk * nn + j);
                    acc += (int64_t)(xval(a, (t * m + i) * k + kk, c->x_signed) - p.xz) *
                           (xval(bm, bi, c->w_signed) - p.wz[0]);
                }
                want[(t * m + i) * nn + j] = c->out == Q_S32 ? (int32_t)acc : requant(acc, p.scale[0], p.yz, p.lo, p.hi);
            }
    char name[120];
    snprintf(name, sizeof name, "matmul2 %lldx%lldx%lldx%lld t%d x%c w%c out%d wz%d", (long long)batch,
             (long long)m, (long long)k, (long long)nn, trans_b, c->x_signed ? 's' : 'u',
             c->w_signed ? 's' : 'u', c->out, c->wz_nonzero);
    check(name, y, want, batch * m * nn, c->out);
    free(a); free(bm); free(y); free(want);
    free(p.wz); free(p.bias); free(p.scale);
}

int main(int argc, char **argv) {
    const char *isa = argc > 1 ? argv[1] : "auto";
    if (wl_q_set_isa(isa) != 0) {
        printf("this CPU lacks %s\n", isa);
        return 2;
    }
    printf("isa: %s\n", wl_q_isa_name());
    static const q_case cases[] = {
        {0, 1, Q_U8, 0, 0}, {0, 1, Q_U8, 1, 0}, {1, 1, Q_S8, 1, 0}, {0, 0, Q_U8, 0, 1},
        {1, 1, Q_S8, 1, 1}, {0, 1, Q_S32, 0, 1}, {1, 0, Q_U8, 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const q_case *c = &cases[i];
        test_conv(c, 1, 3, 11, 13, 8, 3, 1, 1, 1, 1);   /* stem-like, odd sizes */
        test_conv(c, 2, 16, 7, 9, 19, 1, 1, 0, 1, 1);   /* 1x1, rows not a tile multiple */
        test_conv(c, 1, 12, 15, 10, 10, 3, 2, 1, 1, 2); /* strided, grouped */
        test_conv(c, 1, 5, 9, 9, 7, 3, 1, 2, 2, 1);     /* dilated, wide padding */
        test_conv(c, 1, 5, 9, 40, 7, 3, 2, 1, 1, 1);    /* stride 2, rows of 20 columns */
        test_conv(c, 1, 4, 5, 33, 6, 3, 2, 0, 1, 1);    /* stride 2 unpadded: reads end at the last byte */
        test_conv(c, 1, 24, 9, 11, 24, 3, 1, 1, 1, 24); /* depthwise */
        test_conv(c, 1, 8, 10, 10, 8, 5, 2, 2, 1, 8);   /* depthwise 5x5 stride 2 */
        test_conv(c, 2, 6, 5, 37, 6, 3, 1, 0, 1, 6);    /* depthwise, no padding, partial block */
        test_conv(c, 1, 4, 11, 40, 4, 3, 3, 1, 2, 4);   /* depthwise stride 3, dilated */
        test_conv(c, 1, 4, 9, 45, 4, 3, 2, 1, 1, 4);    /* depthwise stride 2, ow over a block */
        test_conv(c, 2, 16, 7, 7, 16, 3, 1, 1, 1, 16);  /* depthwise, small planes (flattened blocks) */
        test_conv(c, 1, 8, 14, 14, 8, 3, 2, 1, 1, 8);   /* depthwise stride 2, 7 columns */
        test_conv(c, 1, 6, 28, 28, 6, 3, 2, 1, 1, 6);   /* depthwise stride 2, 14 columns */
        test_conv(c, 1, 5, 14, 14, 5, 5, 1, 2, 1, 5);   /* depthwise 5x5, small planes */
        test_conv(c, 1, 3, 6, 41, 3, 5, 1, 2, 1, 3);    /* depthwise 5x5, padded row blocks */
        test_conv(c, 1, 3, 12, 12, 3, 7, 1, 3, 1, 3);   /* depthwise 7x7 */
        test_conv(c, 2, 9, 3, 3, 9, 5, 1, 2, 1, 9);     /* depthwise 5x5 on 3x3 planes (one 64-byte plane) */
        test_conv(c, 1, 7, 6, 6, 7, 3, 2, 1, 1, 7);     /* depthwise stride 2 on 6x6 */
        test_conv(c, 1, 5, 8, 8, 5, 3, 1, 1, 1, 5);     /* depthwise on 8x8: 64 bytes exactly */
        test_conv(c, 1, 4, 5, 9, 4, 3, 1, 2, 2, 4);     /* depthwise dilated on 5x9, wide padding */
        test_matmul(c, 37, 21, 45);
        test_matmul(c, 5, 64, 17);
        test_matmul(c, 70, 130, 9);
        test_matmul(c, 1, 300, 70);  /* matrix-vector: masked depth, partial row blocks */
        test_matmul(c, 3, 64, 130);
        test_matmul(c, 4, 7, 17);
        /* large enough to run on 2 threads: rows split across tasks */
        test_conv(c, 1, 64, 7, 7, 70, 3, 1, 1, 1, 1);
        test_matmul(c, 24, 200, 300);
        test_matmul(c, 2, 1000, 200);
        test_matmul_dyn(c, 3, 7, 13, 9, 0);
        test_matmul_dyn(c, 2, 24, 32, 24, 1);
        test_matmul_dyn(c, 1, 2, 40, 33, 0);
        /* depths the AMX variant packs for its tiles (multiples of 64 after padding): rows
         * over one 32-row block, an odd number of panels, groups whose rows are not tiles */
        test_conv(c, 1, 64, 9, 11, 48, 1, 1, 0, 1, 1);
        test_conv(c, 1, 32, 8, 8, 40, 3, 1, 1, 1, 2);
        test_conv(c, 1, 24, 13, 13, 70, 3, 2, 1, 1, 1);
        /* small maps (the AVX-512 VBMI im2col by byte permutes): stride 2, an unpadded input
         * whose last windows end at its last byte, dilation, 2x2 and 5x5 kernels, grouped */
        test_conv(c, 1, 16, 6, 6, 24, 3, 2, 1, 1, 1);
        test_conv(c, 2, 10, 5, 5, 10, 3, 1, 0, 1, 1);
        test_conv(c, 1, 24, 4, 4, 24, 3, 1, 2, 2, 3);
        test_conv(c, 1, 6, 7, 7, 9, 2, 1, 0, 1, 3);
        test_conv(c, 1, 8, 4, 4, 8, 5, 1, 2, 1, 2);
        test_conv(c, 1, 184, 3, 3, 184, 3, 1, 1, 1, 23);
        /* 1x1 packed by one byte permute per 4 channels: depth not a multiple of 4, columns
         * over one chunk with a partial last panel, grouped */
        test_conv(c, 1, 7, 9, 10, 20, 1, 1, 0, 1, 1);
        test_conv(c, 2, 12, 5, 5, 9, 1, 1, 0, 1, 3);
        /* larger maps, rows of whole panels (32-byte windows per depth index): a stem at
         * stride 2 whose last windows end at the input's last byte, dilated, stride 1 */
        test_conv(c, 1, 3, 63, 64, 8, 3, 2, 1, 1, 1);
        test_conv(c, 1, 5, 20, 32, 6, 3, 1, 2, 2, 1);
        test_conv(c, 2, 4, 9, 32, 10, 3, 1, 1, 1, 2);
        test_matmul(c, 50, 128, 33);
        test_matmul_dyn(c, 2, 20, 128, 18, 1);
    }
    if (failures) {
        printf("%d FAILED\n", failures);
        return 1;
    }
    printf("ALL OK\n");
    return 0;
}
