/* GEMM micro-tile shapes on AVX-512 over the model zoo's MatMul shapes (single thread, thread
 * CPU time, GFLOP/s): the measurement behind the tile choice in
 * plugins/cpu/walle_cpu/csrc/isa/gemm.inc. A standalone copy of the tile loop and the
 * driver's loop order (KC blocks, panels, row tiles); it does not link the engine.
 *
 *   gcc -O3 -std=gnu11 -fno-math-errno -fno-trapping-math [-DPF=16] -o /tmp/gemm_tiles bench/gemm_tiles.c
 *   /tmp/gemm_tiles [KC=256] [MB=0]
 *
 * MB > 0 cycles B through MB megabytes of copies (weights from L3 or memory, as in a model
 * run); 0 keeps it hot in cache. PF: B prefetch distance in k-steps (0: none). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#define VW 16
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));

#ifndef PF
#define PF 16
#endif
static inline __attribute__((always_inline)) void tile(const int mr, const int nvec, int64_t kc, const float *a,
    int64_t lda, const float *bp, float *c, int64_t ldc, int acc, const int pf) {
    vf cc[16][4];
    const int nr = nvec * VW;
    for (int r = 0; r < mr; r++) for (int v = 0; v < nvec; v++) cc[r][v] = (vf){0};
    for (int64_t k = 0; k < kc; k++) {
        vf b[4];
        if (PF && pf) for (int v = 0; v < nvec; v += 1) __builtin_prefetch(bp + (k + PF) * nr + v * VW, 0, 3);
        for (int v = 0; v < nvec; v++) b[v] = *(const vfu *)(bp + k * nr + v * VW);
        for (int r = 0; r < mr; r++) {
            float av = a[r * lda + k];
            for (int v = 0; v < nvec; v++) cc[r][v] += av * b[v];
        }
    }
    for (int r = 0; r < mr; r++) for (int v = 0; v < nvec; v++) {
        vfu *d = (vfu *)(c + r * ldc + v * VW);
        if (acc) *d += cc[r][v]; else *d = cc[r][v];
    }
}

#define SW(MRX, NVX, PFX) switch (mr) { \
    case 1: tile(1, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 2: tile(2, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; \
    case 3: tile(3, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 4: tile(4, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; \
    case 5: if (MRX>=5) tile(5, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 6: if (MRX>=6) tile(6, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; \
    case 7: if (MRX>=7) tile(7, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 8: if (MRX>=8) tile(8, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; \
    case 9: if (MRX>=9) tile(9, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 10: if (MRX>=10) tile(10, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; \
    case 11: if (MRX>=11) tile(11, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 12: if (MRX>=12) tile(12, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; \
    case 13: if (MRX>=13) tile(13, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; case 14: if (MRX>=14) tile(14, NVX, kc, a, lda, bp, c, ldc, acc, PFX); break; }
#define DEF(MRX, NVX) \
static void tile_##MRX##_##NVX(int mr, int64_t kc, const float *a, int64_t lda, const float *bp, float *c, int64_t ldc, int acc, int pf) { \
    if (pf) { SW(MRX, NVX, 1) } else { SW(MRX, NVX, 0) } }
DEF(8, 2) DEF(12, 2) DEF(14, 2) DEF(6, 4)

typedef void (*tile_fn)(int, int64_t, const float *, int64_t, const float *, float *, int64_t, int, int);
struct cand { const char *name; tile_fn fn; int mr, nvec; };
static struct cand cands[] = {
    {"8x32", tile_8_2, 8, 2}, {"12x32", tile_12_2, 12, 2}, {"14x32", tile_14_2, 14, 2}, {"6x64", tile_6_4, 6, 4},
};

static void pack(const float *b, int64_t k, int64_t n, int nr, float *out) {
    int64_t np = (n + nr - 1) / nr;
    for (int64_t p = 0; p < np; p++)
        for (int64_t kk = 0; kk < k; kk++)
            for (int j = 0; j < nr; j++) {
                int64_t col = p * nr + j;
                out[p * k * nr + kk * nr + j] = col < n ? b[kk * n + col] : 0.f;
            }
}

/* driver like gemm_task: kc blocks, panels, row tiles. n padded to panel width in c (ldc) */
static void gemm(const struct cand *cd, int64_t m, int64_t n, int64_t k, const float *a, const float *bp, float *c,
                 int64_t ldc, int64_t KC) {
    int nr = cd->nvec * VW;
    int64_t np = (n + nr - 1) / nr;
    for (int64_t kk = 0; kk < k; kk += KC) {
        int64_t kc = k - kk < KC ? k - kk : KC;
        for (int64_t p = 0; p < np; p++) {
            const float *b = bp + p * k * nr + kk * nr;
            for (int64_t r = 0; r < m; r += cd->mr) {
                int rows = m - r < cd->mr ? (int)(m - r) : cd->mr;
                cd->fn(rows, kc, a + r * k + kk, k, b, c + r * ldc + p * nr, ldc, kk > 0, 1);
            }
        }
    }
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    static const int64_t shapes[][3] = {
        {24, 384, 1536}, {24, 1536, 384}, {24, 384, 384}, {17, 768, 192}, {17, 192, 768}, {17, 192, 192},
        {5, 128, 512}, {5, 512, 128}, {100, 384, 96}, {100, 96, 96}, {100, 96, 384}, {256, 48, 192},
        {64, 96, 384}, {256, 192, 48}, {64, 384, 96}, {15, 384, 96}, {16, 80, 80}, {64, 64, 64},
        {4, 768, 192}, {256, 24, 96}, {96, 240, 200}, {512, 1024, 1024}, {1024, 768, 3072}, {128, 3072, 768},
    };
    int64_t KC = argc > 1 ? atoi(argv[1]) : 256;
    int reps_scale = 1; int cold = argc > 2 ? atoi(argv[2]) : 0;
    int ns = sizeof shapes / sizeof shapes[0], nc = sizeof cands / sizeof cands[0];
    double tot[8] = {0};
    printf("KC=%lld\n%-18s", (long long)KC, "m,k,n");
    for (int ci = 0; ci < nc; ci++) printf("%9s", cands[ci].name);
    printf("   (GFLOP/s, thread cpu time)\n");
    for (int si = 0; si < ns; si++) {
        int64_t m = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
        float *a = aligned_alloc(64, sizeof(float) * m * k), *b = aligned_alloc(64, sizeof(float) * k * n);
        for (int64_t i = 0; i < m * k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (int64_t i = 0; i < k * n; i++) b[i] = (float)(i % 5) * 0.1f;
        double flops = 2.0 * m * n * k;
        int reps = (int)(2e8 / flops) * reps_scale + 3;
        printf("%5lld,%5lld,%5lld  ", (long long)m, (long long)k, (long long)n);
        for (int ci = 0; ci < nc; ci++) {
            int nr = cands[ci].nvec * VW;
            int64_t np = (n + nr - 1) / nr, ldc = np * nr;
            float *bp = aligned_alloc(64, sizeof(float) * np * nr * k), *c = aligned_alloc(64, sizeof(float) * m * ldc);
            pack(b, k, n, nr, bp);
            int64_t bf = np * nr * k; int ncopy = (int)(cold * 1e6 / (bf * 4)) + 1; if (!cold) ncopy = 1;
            float *bcp = aligned_alloc(64, sizeof(float) * bf * ncopy);
            for (int q = 0; q < ncopy; q++) memcpy(bcp + q * bf, bp, sizeof(float) * bf);
            gemm(&cands[ci], m, n, k, a, bp, c, ldc, KC);
            double best = 1e9;
            for (int t = 0; t < 5; t++) {
                double t0 = now();
                for (int r = 0; r < reps; r++) gemm(&cands[ci], m, n, k, a, bcp + (r % ncopy) * bf, c, ldc, KC);
                double dt = (now() - t0) / reps;
                if (dt < best) best = dt;
            }
            /* check */
            double err = 0;
            for (int64_t i = 0; i < m; i += (m / 3 + 1)) for (int64_t j = 0; j < n; j += 7) {
                double s = 0; for (int64_t q = 0; q < k; q++) s += (double)a[i * k + q] * b[q * n + j];
                double d = s - c[i * ldc + j]; if (d < 0) d = -d; if (d > err) err = d;
            }
            if (err > 1e-2) printf("ERR%g ", err);
            printf("%9.1f", flops / best * 1e-9);
            tot[ci] += best / flops * 1e9;
            free(bp); free(c); free(bcp);
        }
        printf("\n");
        free(a); free(b);
    }
    printf("%-18s", "sum ns/flop");
    for (int ci = 0; ci < nc; ci++) printf("%9.3f", tot[ci]);
    printf("\n");
}
