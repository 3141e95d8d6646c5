/* Kernel tests for the NEON variant (and any other): built statically for aarch64 and run under
 * qemu-aarch64 by tests/test_cpu_neon.py. Compares the active ISA's kernels with naive double
 * loops: GEMM tiles, element-wise fp32, and Conv2D through im2col, 1x1, depthwise, Winograd and
 * the blocked layout (descriptors run through wl_run, as the compiler's are). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int failures = 0;
static unsigned long long rng_state = 88172645463325252ULL;

static float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void check(const char *what, const float *got, const double *want, const double *mag, int64_t n,
                  double rtol) {
    for (int64_t i = 0; i < n; i++) {
        double tol = rtol * fabs(want[i]) + 1e-5 * (mag ? mag[i] : 0.0) + 1e-6;
        if (!(fabs((double)got[i] - want[i]) <= tol)) {
            printf("FAIL %s [%lld]: got %.9g want %.9g\n", what, (long long)i, got[i], want[i]);
            failures++;
            return;
        }
    }
    printf("ok   %s (%lld values)\n", what, (long long)n);
}

static void test_gemm(int64_t m, int64_t n, int64_t k, int trans_b) {
    float *a = malloc(sizeof(float) * (m * k + 1)), *b = malloc(sizeof(float) * (k * n + 1));
    float *bias = malloc(sizeof(float) * (n + 1)), *c = malloc(sizeof(float) * (m * n + 1));
    double *want = malloc(sizeof(double) * (m * n + 1)), *mag = malloc(sizeof(double) * (m * n + 1));
    for (int64_t i = 0; i < m * k; i++) a[i] = frand();
    for (int64_t i = 0; i < k * n; i++) b[i] = frand();
    for (int64_t i = 0; i < n; i++) bias[i] = frand();
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = bias[j], t = fabs(bias[j]);
            for (int64_t kk = 0; kk < k; kk++) {
                double bv = trans_b ? b[j * k + kk] : b[kk * n + j];
                s += (double)a[i * k + kk] * bv;
                t += fabs((double)a[i * k + kk] * bv);
            }
            want[i * n + j] = s > 0 ? s : 0; /* fused relu */
            mag[i * n + j] = t;
        }
    float *bp = malloc(sizeof(float) * wl_packed_b_floats(k, n));
    wl_pack_b(b, k, n, trans_b, bp);
    static const double noargs[4] = {0, 0, 0, 0};
    wl_gemm(m, n, k, a, k, bp, c, n, bias, BIAS_COL, NULL, U_RELU, noargs, 2);
    char name[96];
    snprintf(name, sizeof name, "gemm %lldx%lldx%lld trans_b=%d +bias+relu", (long long)m, (long long)n,
             (long long)k, trans_b);
    check(name, c, want, mag, m * n, 1e-5);
    free(a); free(b); free(bias); free(c); free(want); free(mag); free(bp);
}

static void test_unary(int fn, const char *name, double (*ref)(double), float lo, float hi) {
    enum { N = 1037 };
    float x[N], y[N];
    double want[N];
    double prm[8] = {0, 6, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < N; i++) {
        x[i] = lo + (hi - lo) * (frand() * 0.5f + 0.5f);
        want[i] = ref(x[i]);
    }
    wl_active->unary_f32(fn, x, y, N, prm);
    check(name, y, want, NULL, N, 2e-6);
}

static double d_relu(double v) { return v < 0 ? 0 : v; }
static double d_sigmoid(double v) { return 1 / (1 + exp(-v)); }
static double d_hswish(double v) { double t = v / 6 + 0.5; return v * (t < 0 ? 0 : t > 1 ? 1 : t); }
static double d_clip(double v) { return v < 0 ? 0 : v > 6 ? 6 : v; }

static void test_binary(void) {
    enum { N = 333 };
    float a[N], b[N], y[N];
    double want[N];
    for (int i = 0; i < N; i++) { a[i] = frand(); b[i] = frand(); }
    for (int i = 0; i < N; i++) want[i] = (double)a[i] * b[0];
    wl_active->binary_f32(B_MUL, a, 1, b, 0, y, N);
    check("binary mul (broadcast b)", y, want, NULL, N, 1e-6);
    for (int i = 0; i < N; i++) want[i] = a[i] > b[i] ? a[i] : b[i];
    wl_active->binary_f32(B_MAX, a, 1, b, 1, y, N);
    check("binary max", y, want, NULL, N, 0);
}

/* Naive grouped conv + bias (+ residual) + relu6 in double: want, and the scale of the summed
 * terms (mag) that bounds the rounding error of any summation order. */
static void conv_reference(const float *x, const float *wt, const float *bias, const float *res,
                           int64_t c, int64_t o, int64_t h, int64_t w, int64_t k, int64_t s,
                           int64_t pad, int64_t groups, double *want, double *mag) {
    int64_t oh = (h + 2 * pad - k) / s + 1, ow = (w + 2 * pad - k) / s + 1;
    int64_t cg = c / groups, og = o / groups;
    for (int64_t oc = 0; oc < o; oc++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                double sum = bias[oc], t = fabs(bias[oc]);
                int64_t g = oc / og;
                for (int64_t ci = 0; ci < cg; ci++)
                    for (int64_t ky = 0; ky < k; ky++)
                        for (int64_t kx = 0; kx < k; kx++) {
                            int64_t iy = oy * s - pad + ky, ix = ox * s - pad + kx;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                            double v = (double)x[((g * cg + ci) * h + iy) * w + ix] *
                                       wt[((oc * cg + ci) * k + ky) * k + kx];
                            sum += v;
                            t += fabs(v);
                        }
                int64_t idx = (oc * oh + oy) * ow + ox;
                if (res) {
                    sum += res[idx];
                    t += fabs(res[idx]);
                }
                want[idx] = sum < 0 ? 0 : (sum > 6 ? 6 : sum);
                mag[idx] = 2 * t;
            }
}

/* One Conv2D descriptor run through wl_run: slots 1..5 hold x, w, bias, res (NULL: none), y. */
static int run_conv(wl_op *op, const float *x, const float *w, const float *bias, const float *res,
                    float *y, char *err, int errlen) {
    char *slots[6] = {NULL, (char *)x, (char *)w, (char *)bias, (char *)res, (char *)y};
    wl_ref ins[4] = {{1, 0, 0}, {2, 0, 0}, {3, 0, 0}, {4, 0, 0}};
    op->kind = WL_CONV;
    op->ins = ins;
    op->n_in = res ? 4 : 3;
    op->out = (wl_ref){5, 0, 0};
    op->conv.residual = res ? 3 : 0;
    op->conv.act.fn = U_CLIP;
    op->conv.act.prm[0] = 0;
    op->conv.act.prm[1] = 6;
    return wl_run(op, 1, slots, 2, err, errlen);
}

/* The geometry of a square conv of one image with bias. */
static void conv_params(wl_conv_params *p, int64_t c, int64_t o, int64_t h, int64_t w, int64_t k,
                        int64_t s, int64_t pad, int64_t groups) {
    p->n = 1, p->c = c, p->h = h, p->w = w, p->o = o;
    p->oh = (h + 2 * pad - k) / s + 1, p->ow = (w + 2 * pad - k) / s + 1;
    p->kh = p->kw = k, p->stride_h = p->stride_w = s, p->pad_top = p->pad_left = pad;
    p->dilation_h = p->dilation_w = 1, p->groups = groups, p->has_bias = 1;
}

static void test_conv(int algo, int64_t c, int64_t o, int64_t h, int64_t w, int64_t k, int64_t s,
                      int64_t pad, int64_t groups, int with_res) {
    int64_t oh = (h + 2 * pad - k) / s + 1, ow = (w + 2 * pad - k) / s + 1, cg = c / groups;
    float *x = malloc(sizeof(float) * c * h * w), *wt = malloc(sizeof(float) * o * cg * k * k);
    float *bias = malloc(sizeof(float) * o), *y = malloc(sizeof(float) * o * oh * ow);
    float *res = with_res ? malloc(sizeof(float) * o * oh * ow) : NULL;
    if (res) for (int64_t i = 0; i < o * oh * ow; i++) res[i] = frand();
    double *want = malloc(sizeof(double) * o * oh * ow), *mag = malloc(sizeof(double) * o * oh * ow);
    for (int64_t i = 0; i < c * h * w; i++) x[i] = frand();
    for (int64_t i = 0; i < o * cg * k * k; i++) wt[i] = frand();
    for (int64_t i = 0; i < o; i++) bias[i] = frand();
    conv_reference(x, wt, bias, res, c, o, h, w, k, s, pad, groups, want, mag);
    wl_op op;
    memset(&op, 0, sizeof op);
    op.algo = algo;
    conv_params(&op.conv, c, o, h, w, k, s, pad, groups);
    float *u = NULL;
    if (algo == C_WINOGRAD) {
        u = malloc(sizeof(float) * 16 * o * c);
        wl_winograd_weights(wt, o, c, u);
        op.aux = u;
        op.conv.packed_nr = wl_active->nr;
    }
    char err[128] = "";
    int rc = run_conv(&op, x, wt, bias, res, y, err, sizeof err);
    static const char *names[] = {"im2col", "1x1", "depthwise", "winograd"};
    char name[128];
    snprintf(name, sizeof name, "conv %s c=%lld o=%lld %lldx%lld k=%lld s=%lld pad=%lld g=%lld +bias%s+relu6",
             names[algo], (long long)c, (long long)o, (long long)h, (long long)w, (long long)k,
             (long long)s, (long long)pad, (long long)groups, res ? "+residual" : "");
    if (rc) {
        printf("FAIL %s: %s\n", name, err);
        failures++;
    } else {
        check(name, y, want, mag, o * oh * ow, 1e-5);
    }
    free(x); free(wt); free(bias); free(y); free(want); free(mag); free(u); free(res);
}

/* Blocked layout (NCHW16c): plain -> blocked copy with zero padding channels. */
static float *to_blocked(const float *x, int64_t c, int64_t hw) {
    int64_t cb = (c + 15) / 16;
    float *b = calloc((size_t)(cb * hw * 16), sizeof(float));
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t p = 0; p < hw; p++) b[((ci / 16) * hw + p) * 16 + ci % 16] = x[ci * hw + p];
    return b;
}

/* The blocked conv (regular, depthwise or from a plain input) with weights packed here the way
 * the compiler packs them, against the naive loops of test_conv's reference. */
static void test_nchwc(int64_t c, int64_t o, int64_t h, int64_t w, int64_t k, int64_t s,
                       int64_t pad, int depthwise, int plain_input, int with_res) {
    int64_t oh = (h + 2 * pad - k) / s + 1, ow = (w + 2 * pad - k) / s + 1;
    int64_t cg = depthwise ? 1 : c, ob = (o + 15) / 16, fb = wl_active->nc_fb;
    int64_t bi = plain_input ? c : 16, ncb = (c + bi - 1) / bi;
    float *x = malloc(sizeof(float) * c * h * w), *wt = malloc(sizeof(float) * o * cg * k * k);
    float *bias = calloc((size_t)(ob * 16), sizeof(float)), *res = NULL, *resb = NULL;
    double *want = malloc(sizeof(double) * o * oh * ow), *mag = malloc(sizeof(double) * o * oh * ow);
    for (int64_t i = 0; i < c * h * w; i++) x[i] = frand();
    for (int64_t i = 0; i < o * cg * k * k; i++) wt[i] = frand();
    for (int64_t i = 0; i < o; i++) bias[i] = frand();
    if (with_res) {
        res = malloc(sizeof(float) * o * oh * ow);
        for (int64_t i = 0; i < o * oh * ow; i++) res[i] = frand();
        resb = to_blocked(res, o, oh * ow);
    }
    conv_reference(x, wt, bias, res, c, o, h, w, k, s, pad, depthwise ? c : 1, want, mag);
    /* weights: depthwise (cb, ky, kx, 16); else groups of fb filter blocks (cb, ky, kx, ci, f, 16) */
    int64_t nw = depthwise ? ob * k * k * 16 : ob * 16 * ncb * bi * k * k;
    float *wp = calloc((size_t)nw, sizeof(float));
    if (depthwise) {
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t t = 0; t < k * k; t++) wp[((oc / 16) * k * k + t) * 16 + oc % 16] = wt[oc * k * k + t];
    } else {
        for (int64_t g0 = 0; g0 < ob; g0 += fb) {
            int64_t f = ob - g0 < fb ? ob - g0 : fb;
            float *dst = wp + g0 * 16 * ncb * bi * k * k;
            for (int64_t cb = 0; cb < ncb; cb++)
                for (int64_t ky = 0; ky < k; ky++)
                    for (int64_t kx = 0; kx < k; kx++)
                        for (int64_t ci = 0; ci < bi; ci++)
                            for (int64_t fi = 0; fi < f; fi++)
                                for (int64_t l = 0; l < 16; l++, dst++) {
                                    int64_t oc = (g0 + fi) * 16 + l, cc = cb * bi + ci;
                                    if (oc < o && cc < c) *dst = wt[((oc * c + cc) * k + ky) * k + kx];
                                }
        }
    }
    float *xin = plain_input ? x : to_blocked(x, c, h * w);
    float *yb = malloc(sizeof(float) * ob * 16 * oh * ow);
    wl_op op;
    memset(&op, 0, sizeof op);
    op.algo = C_NCHWC;
    conv_params(&op.conv, c, o, h, w, k, s, pad, depthwise ? c : 1);
    op.conv.blocked_input = !plain_input;
    op.conv.filter_blocks = fb;
    op.aux = wp;
    op.aux2 = bias;
    char err[128] = "", name[160];
    int rc = run_conv(&op, xin, wp, bias, resb, yb, err, sizeof err);
    snprintf(name, sizeof name, "conv nchwc%s%s c=%lld o=%lld %lldx%lld k=%lld s=%lld pad=%lld%s+relu6",
             depthwise ? " depthwise" : "", plain_input ? " plain-input" : "", (long long)c,
             (long long)o, (long long)h, (long long)w, (long long)k, (long long)s, (long long)pad,
             res ? "+residual" : "");
    if (rc) {
        printf("FAIL %s: %s\n", name, err);
        failures++;
    } else {
        float *y = malloc(sizeof(float) * o * oh * ow);
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t p = 0; p < oh * ow; p++) y[oc * oh * ow + p] = yb[((oc / 16) * oh * ow + p) * 16 + oc % 16];
        check(name, y, want, mag, o * oh * ow, 1e-5);
        free(y);
    }
    if (!plain_input) free(xin);
    free(x); free(wt); free(bias); free(res); free(resb); free(want); free(mag); free(wp); free(yb);
}

int main(int argc, char **argv) {
    if (argc > 1 && wl_set_isa(argv[1]) != 0) {
        printf("FAIL cannot select ISA %s\n", argv[1]);
        return 2;
    }
    printf("isa: %s (gemm tile %dx%d)\n", wl_isa_name(), wl_active->mr, wl_active->nr);
    test_gemm(1, 1, 1, 0);
    test_gemm(7, 13, 5, 0);
    test_gemm(17, 33, 300, 1);
    test_gemm(64, 70, 129, 0);
    test_unary(U_RELU, "relu", d_relu, -3, 3);
    test_unary(U_EXP, "exp", exp, -80, 80);
    test_unary(U_TANH, "tanh", tanh, -10, 10);
    test_unary(U_SIGMOID, "sigmoid", d_sigmoid, -20, 20);
    test_unary(U_HARDSWISH, "hardswish", d_hswish, -8, 8);
    test_unary(U_CLIP, "clip(0,6)", d_clip, -8, 8);
    test_binary();
    test_conv(C_IM2COL, 3, 5, 9, 7, 3, 2, 1, 1, 0);
    test_conv(C_IM2COL, 4, 6, 6, 6, 3, 1, 1, 2, 0);
    test_conv(C_1X1, 9, 11, 5, 7, 1, 1, 0, 1, 0);
    test_conv(C_DEPTHWISE, 5, 5, 8, 9, 3, 1, 1, 5, 0);
    test_conv(C_DEPTHWISE, 4, 4, 9, 9, 3, 2, 1, 4, 0);
    test_conv(C_WINOGRAD, 7, 9, 9, 10, 3, 1, 1, 1, 0);
    test_conv(C_WINOGRAD, 33, 17, 6, 5, 3, 1, 0, 1, 0);
    test_conv(C_IM2COL, 3, 5, 9, 7, 3, 2, 1, 1, 1);  /* im2col + GEMM epilogue */
    test_conv(C_IM2COL, 4, 6, 6, 6, 3, 1, 1, 1, 1);  /* implicit GEMM (stride 1) */
    test_conv(C_1X1, 9, 11, 5, 7, 1, 1, 0, 1, 1);
    test_conv(C_DEPTHWISE, 5, 5, 8, 9, 3, 1, 1, 5, 1);
    test_conv(C_WINOGRAD, 7, 9, 9, 10, 3, 1, 1, 1, 1);
    test_nchwc(20, 70, 9, 11, 3, 1, 1, 0, 0, 0);  /* partial blocks, 5 filter blocks */
    test_nchwc(33, 16, 7, 7, 3, 2, 1, 0, 0, 1);
    test_nchwc(48, 64, 5, 6, 1, 1, 0, 0, 0, 1);
    test_nchwc(3, 32, 13, 12, 3, 2, 1, 0, 1, 0);  /* the stem: plain RGB input */
    test_nchwc(24, 24, 9, 10, 3, 1, 1, 1, 0, 1);
    test_nchwc(40, 40, 11, 9, 3, 2, 1, 1, 0, 0);
    test_nchwc(17, 40, 9, 37, 3, 1, 1, 0, 0, 1);  /* wide: border pixels, no padded copy */
    test_nchwc(3, 20, 11, 70, 7, 2, 3, 0, 1, 0);
    wl_pool_shutdown();
    if (failures) {
        printf("%d FAILED\n", failures);
        return 1;
    }
    printf("ALL OK\n");
    return 0;
}
