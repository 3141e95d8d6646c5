/* int8 convolution and matrix product: see quant.h for the scheme. */
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

#define PANEL 16      /* columns per packed panel */
#define MAX_MR 8      /* weight rows per tile, at most */
#define MAX_NP 2      /* panels per tile, at most */
#define CHUNK 4       /* panels packed (and computed) per task */
#define Q_SCRATCH 4   /* wl_scratch slot of the packed panels */

/* c[r * MAX_NP * PANEL + p * PANEL + j] = sum over k4 groups of w[r * ldw + 4 kk .. + 3] .
 * panel p's 4 bytes of column j: b + p * ldb + kk * 64 + j * 4 */
typedef void (*q_tile_fn)(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw,
                          const uint8_t *b, int64_t ldb, int32_t *c);

typedef struct {
    const char *name;
    int mr;      /* rows per full tile */
    int np;      /* panels per full tile */
    int x_signed; /* activations packed as int8 (NEON sdot) instead of uint8 */
    q_tile_fn tile;
} q_isa;

/* ------------------------------------------------------------------------------ variants */

static void tile_scalar(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b,
                        int64_t ldb, int32_t *c) {
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++)
            for (int j = 0; j < PANEL; j++) {
                int32_t s = 0;
                const int8_t *wr = w + r * ldw;
                const uint8_t *bp = b + p * ldb + j * 4;
                for (int64_t kk = 0; kk < k4; kk++)
                    for (int i = 0; i < 4; i++) s += (int32_t)bp[kk * 64 + i] * wr[kk * 4 + i];
                c[r * MAX_NP * PANEL + p * PANEL + j] = s;
            }
}

#if defined(__aarch64__)
/* the same with activations read as int8 (the NEON packing), for CPUs without sdot */
static void tile_scalar_signed(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw,
                               const uint8_t *b, int64_t ldb, int32_t *c) {
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++)
            for (int j = 0; j < PANEL; j++) {
                int32_t s = 0;
                const int8_t *wr = w + r * ldw;
                const int8_t *bp = (const int8_t *)b + p * ldb + j * 4;
                for (int64_t kk = 0; kk < k4; kk++)
                    for (int i = 0; i < 4; i++) s += (int32_t)bp[kk * 64 + i] * wr[kk * 4 + i];
                c[r * MAX_NP * PANEL + p * PANEL + j] = s;
            }
}
#endif

static int32_t load4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

#if defined(__x86_64__)

/* A full tile's loop with constant MR / NP (unrolled into registers) and a general one. */
#define VNNI512_TILE(NAME, MR, NP, FULL)                                                        \
    __attribute__((target("avx512f,avx512bw,avx512vnni"))) static void NAME(                  \
        int mr_, int np_, int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b,            \
        int64_t ldb, int32_t *c) {                                                              \
        const int mr = FULL ? MR : mr_, np = FULL ? NP : np_;                                   \
        __m512i acc[MR][NP];                                                                     \
        for (int r = 0; r < MR; r++)                                                            \
            for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_si512();                    \
        for (int64_t kk = 0; kk < k4; kk++) {                                                   \
            __m512i bv[NP];                                                                     \
            for (int p = 0; p < NP; p++)                                                        \
                bv[p] = p < np ? _mm512_loadu_si512(b + p * ldb + kk * 64) : _mm512_setzero_si512(); \
            for (int r = 0; r < MR; r++) {                                                      \
                if (r >= mr) break;                                                             \
                __m512i wv = _mm512_set1_epi32(load4(w + r * ldw + kk * 4));                    \
                for (int p = 0; p < NP; p++) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], bv[p], wv); \
            }                                                                                   \
        }                                                                                       \
        for (int r = 0; r < MR && r < mr; r++)                                                  \
            for (int p = 0; p < NP && p < np; p++)                                              \
                _mm512_storeu_si512(c + r * MAX_NP * PANEL + p * PANEL, acc[r][p]);             \
    }
VNNI512_TILE(tile_vnni512_full, 6, 2, 1)
VNNI512_TILE(tile_vnni512_part, 6, 2, 0)

static void tile_vnni512(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw,
                         const uint8_t *b, int64_t ldb, int32_t *c) {
    if (mr == 6 && np == 2) tile_vnni512_full(6, 2, k4, w, ldw, b, ldb, c);
    else tile_vnni512_part(mr, np, k4, w, ldw, b, ldb, c);
}

/* AVX-VNNI: a panel is two ymm of 8 columns */
#define VNNI256_TILE(NAME, MR, FULL)                                                            \
    __attribute__((target("avx2,avxvnni"))) static void NAME(int mr_, int np, int64_t k4,       \
                                                            const int8_t *w, int64_t ldw,       \
                                                            const uint8_t *b, int64_t ldb,      \
                                                            int32_t *c) {                       \
        const int mr = FULL ? MR : mr_;                                                         \
        for (int p = 0; p < np; p++) {                                                          \
            __m256i acc[MR][2];                                                                 \
            for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();        \
            const uint8_t *bp = b + p * ldb;                                                    \
            for (int64_t kk = 0; kk < k4; kk++) {                                               \
                __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + kk * 64));               \
                __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + kk * 64 + 32));          \
                for (int r = 0; r < MR; r++) {                                                  \
                    if (r >= mr) break;                                                         \
                    __m256i wv = _mm256_set1_epi32(load4(w + r * ldw + kk * 4));                \
                    acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], b0, wv);                     \
                    acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], b1, wv);                     \
                }                                                                               \
            }                                                                                   \
            for (int r = 0; r < MR && r < mr; r++) {                                            \
                _mm256_storeu_si256((__m256i *)(c + r * MAX_NP * PANEL + p * PANEL), acc[r][0]); \
                _mm256_storeu_si256((__m256i *)(c + r * MAX_NP * PANEL + p * PANEL + 8), acc[r][1]); \
            }                                                                                   \
        }                                                                                       \
    }
VNNI256_TILE(tile_vnni256_full, 6, 1)
VNNI256_TILE(tile_vnni256_part, 6, 0)

static void tile_vnni256(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw,
                         const uint8_t *b, int64_t ldb, int32_t *c) {
    if (mr == 6) tile_vnni256_full(6, np, k4, w, ldw, b, ldb, c);
    else tile_vnni256_part(mr, np, k4, w, ldw, b, ldb, c);
}

/* AVX2: 16 bytes (4 columns x 4 k) widened to s16, times the row's 4 weights as s16, vpmaddwd
 * -> 8 s32 holding (k0 + k1, k2 + k3) per column; the pairs are added when the tile is stored. */
#define AVX2_TILE(NAME, MR, FULL)                                                               \
    __attribute__((target("avx2"))) static void NAME(int mr_, int np, int64_t k4, const int8_t *w, \
                                                    int64_t ldw, const uint8_t *b, int64_t ldb,  \
                                                    int32_t *c) {                                \
        const int mr = FULL ? MR : mr_;                                                         \
        for (int p = 0; p < np; p++) {                                                          \
            __m256i acc[MR][4];                                                                 \
            for (int r = 0; r < MR; r++)                                                        \
                for (int q = 0; q < 4; q++) acc[r][q] = _mm256_setzero_si256();                 \
            const uint8_t *bp = b + p * ldb;                                                    \
            for (int64_t kk = 0; kk < k4; kk++) {                                               \
                __m256i xv[4];                                                                  \
                for (int q = 0; q < 4; q++)                                                     \
                    xv[q] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(bp + kk * 64 + q * 16))); \
                for (int r = 0; r < MR; r++) {                                                  \
                    if (r >= mr) break;                                                         \
                    __m128i w4 = _mm_cvtepi8_epi16(_mm_cvtsi32_si128(load4(w + r * ldw + kk * 4))); \
                    __m256i wv = _mm256_set1_epi64x(_mm_cvtsi128_si64(w4));                     \
                    for (int q = 0; q < 4; q++)                                                 \
                        acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(xv[q], wv));  \
                }                                                                               \
            }                                                                                   \
            for (int r = 0; r < MR && r < mr; r++)                                              \
                for (int h = 0; h < 2; h++) {                                                   \
                    __m256i s = _mm256_hadd_epi32(acc[r][2 * h], acc[r][2 * h + 1]);            \
                    s = _mm256_permute4x64_epi64(s, 0xD8);                                      \
                    _mm256_storeu_si256((__m256i *)(c + r * MAX_NP * PANEL + p * PANEL + 8 * h), s); \
                }                                                                               \
        }                                                                                       \
    }
AVX2_TILE(tile_avx2_full, 3, 1)
AVX2_TILE(tile_avx2_part, 3, 0)

static void tile_avx2(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b,
                      int64_t ldb, int32_t *c) {
    if (mr == 3) tile_avx2_full(3, np, k4, w, ldw, b, ldb, c);
    else tile_avx2_part(mr, np, k4, w, ldw, b, ldb, c);
}
#endif

#if defined(__aarch64__)
/* sdot: 16 bytes = 4 columns x 4 k (int8), times the row's 4 weights in every lane */
__attribute__((target("arch=armv8.2-a+dotprod"))) static void tile_sdot(
    int mr, int np, int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b, int64_t ldb,
    int32_t *c) {
    for (int p = 0; p < np; p++) {
        int32x4_t acc[4][4];
        for (int r = 0; r < 4; r++)
            for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_s32(0);
        const int8_t *bp = (const int8_t *)b + p * ldb;
        for (int64_t kk = 0; kk < k4; kk++) {
            int8x16_t xv[4];
            for (int q = 0; q < 4; q++) xv[q] = vld1q_s8(bp + kk * 64 + q * 16);
            for (int r = 0; r < 4; r++) {
                if (r >= mr) break;
                int8x16_t wv = vreinterpretq_s8_s32(vdupq_n_s32(load4(w + r * ldw + kk * 4)));
                for (int q = 0; q < 4; q++) acc[r][q] = vdotq_s32(acc[r][q], xv[q], wv);
            }
        }
        for (int r = 0; r < 4 && r < mr; r++)
            for (int q = 0; q < 4; q++) vst1q_s32(c + r * MAX_NP * PANEL + p * PANEL + 4 * q, acc[r][q]);
    }
}
#endif

static const q_isa isa_scalar = {"scalar", 4, 1, 0, tile_scalar};
#if defined(__x86_64__)
static const q_isa isa_vnni512 = {"avx512vnni", 6, 2, 0, tile_vnni512};
static const q_isa isa_vnni256 = {"avxvnni", 6, 1, 0, tile_vnni256};
static const q_isa isa_avx2 = {"avx2", 3, 1, 0, tile_avx2};
#endif
#if defined(__aarch64__)
static const q_isa isa_sdot = {"neon-dot", 4, 1, 1, tile_sdot};
static const q_isa isa_neon_scalar = {"scalar", 4, 1, 1, tile_scalar_signed};
#endif

static const q_isa *q_active;

static const q_isa *q_best(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) return &isa_vnni512;
    if (__builtin_cpu_supports("avxvnni")) return &isa_vnni256;
    if (__builtin_cpu_supports("avx2")) return &isa_avx2;
#endif
#if defined(__aarch64__)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) return &isa_sdot;
    return &isa_neon_scalar;
#endif
    return &isa_scalar;
}

static const q_isa *isa(void) {
    const q_isa *a = __atomic_load_n(&q_active, __ATOMIC_ACQUIRE);
    if (!a) {
        a = q_best();
        __atomic_store_n(&q_active, a, __ATOMIC_RELEASE);
    }
    return a;
}

const char *wl_q_isa_name(void) { return isa()->name; }

int wl_q_set_isa(const char *name) {
    const q_isa *best = q_best(), *pick = NULL;
    if (!strcmp(name, "auto")) pick = best;
#if defined(__x86_64__)
    /* the fp32 variant names map onto the int8 ones: avx512 -> VNNI when present */
    else if (!strcmp(name, "avx512vnni") || !strcmp(name, "avx512"))
        pick = best == &isa_vnni512 ? best : !strcmp(name, "avx512") ? best : NULL;
    else if (!strcmp(name, "avxvnni"))
        pick = __builtin_cpu_supports("avxvnni") ? &isa_vnni256 : NULL;
    else if (!strcmp(name, "avx2"))
        pick = __builtin_cpu_supports("avx2") ? &isa_avx2 : NULL;
#endif
#if defined(__aarch64__)
    else if (!strcmp(name, "neon-dot") || !strcmp(name, "neon"))
        pick = best;
    else if (!strcmp(name, "scalar"))
        pick = &isa_neon_scalar;
#else
    else if (!strcmp(name, "scalar"))
        pick = &isa_scalar;
#endif
    if (!pick) return -1;
    __atomic_store_n(&q_active, pick, __ATOMIC_RELEASE);
    return 0;
}

/* ------------------------------------------------------------------------------ weights */

static int64_t round4(int64_t k) { return (k + 3) & ~(int64_t)3; }
static int64_t align64(int64_t n) { return (n + 63) & ~(int64_t)63; }

int64_t wl_q_weight_bytes(int64_t rows, int64_t k) {
    return align64(rows * round4(k)) + 3 * align64(4 * rows) + align64(4 * rows * k);
}

void wl_q_pack_weights(wl_qweights *q, void *mem, const void *w, int w_signed, int64_t rows,
                       int64_t k, const int32_t *w_zero, const int32_t *bias, int32_t x_zero,
                       int x_signed, const float *scale, int32_t y_zero, int32_t lo, int32_t hi,
                       int out) {
    const q_isa *a = isa();
    int64_t kp = round4(k);
    char *m = mem;
    int8_t *wp = (int8_t *)m;
    int32_t *comp = (int32_t *)(m + align64(rows * kp));
    int32_t *wz = comp + align64(4 * rows) / 4;
    int32_t *dcomp = wz + align64(4 * rows) / 4;
    int32_t *taps = dcomp + align64(4 * rows) / 4;
    /* activations are packed as uint8 (x86) or int8 (NEON): int8 x flips to uint8 by + 128 */
    int32_t flip = (x_signed != a->x_signed) ? 0x80 : 0;
    int32_t xz = x_zero + (flip ? (x_signed ? 128 : -128) : 0);
    int any_wz = 0;
    for (int64_t r = 0; r < rows; r++) {
        int32_t z = w_zero ? w_zero[r] : 0, zs = w_signed ? z : z - 128;
        int32_t rowsum = 0, tapsum = 0;
        for (int64_t i = 0; i < kp; i++) {
            int32_t v = 0;
            if (i < k) {
                int32_t raw = w_signed ? ((const int8_t *)w)[r * k + i] : ((const uint8_t *)w)[r * k + i];
                v = w_signed ? raw : raw - 128;
                taps[r * k + i] = raw - z;
                tapsum += raw - z;
            }
            wp[r * kp + i] = (int8_t)v;
            rowsum += v;
        }
        int32_t b = bias ? bias[r] : 0;
        comp[r] = b - xz * rowsum + (int32_t)k * xz * zs;
        wz[r] = zs;
        dcomp[r] = b - x_zero * tapsum;
        any_wz |= zs != 0;
    }
    *q = (wl_qweights){rows, k, kp, wp, comp, any_wz ? wz : NULL, taps, dcomp, scale, xz, x_zero,
                       flip, x_signed, a->x_signed, y_zero, lo, hi, out};
}

/* ------------------------------------------------------------------------------ epilogue */

/* One row's n accumulators to the output: requantized (round half to even, like rintf under
 * the default rounding mode: the 1.5 * 2^23 trick, exact for the clamped range) or int32. */
static void store_row(const wl_qweights *q, int64_t r, int32_t comp, int32_t wz,
                      const int32_t *acc, const int32_t *colsum, int64_t n, char *y, int64_t cs) {
    int32_t v[MAX_NP * PANEL];
    for (int64_t j = 0; j < n; j++) v[j] = acc[j] + comp - (colsum ? wz * colsum[j] : 0);
    if (q->out == Q_S32) {
        for (int64_t j = 0; j < n; j++) ((int32_t *)y)[j * cs] = v[j];
        return;
    }
    const float s = q->scale[r], lo = (float)(q->lo - q->y_zero), hi = (float)(q->hi - q->y_zero);
    const float magic = 12582912.0f;
    int32_t o[MAX_NP * PANEL];
    for (int64_t j = 0; j < n; j++) {
        float f = (float)v[j] * s;
        f = f < lo ? lo : f > hi ? hi : f;
        o[j] = (int32_t)((f + magic) - magic) + q->y_zero;
    }
    if (q->out == Q_U8)
        for (int64_t j = 0; j < n; j++) ((uint8_t *)y)[j * cs] = (uint8_t)o[j];
    else
        for (int64_t j = 0; j < n; j++) ((int8_t *)y)[j * cs] = (int8_t)o[j];
}

static int esize(const wl_qweights *q) { return q->out == Q_S32 ? 4 : 1; }

/* All rows times `np_total` packed panels (ncols real columns), output (row r, column j) at
 * y + (r * rs + j * cs) elements. */
static void gemm_panels(const wl_qweights *q, const uint8_t *b, const int32_t *colsum,
                        int64_t np_total, int64_t ncols, char *y, int64_t rs, int64_t cs) {
    const q_isa *a = isa();
    int64_t ldb = q->kp * PANEL, k4 = q->kp / 4;
    int32_t c[MAX_MR * MAX_NP * PANEL];
    int es = esize(q);
    for (int64_t p0 = 0; p0 < np_total; p0 += a->np) {
        int np = (int)(np_total - p0 < a->np ? np_total - p0 : a->np);
        int64_t j0 = p0 * PANEL, nj = ncols - j0 < np * PANEL ? ncols - j0 : np * PANEL;
        for (int64_t r0 = 0; r0 < q->rows; r0 += a->mr) {
            int mr = (int)(q->rows - r0 < a->mr ? q->rows - r0 : a->mr);
            a->tile(mr, np, k4, q->w + r0 * q->kp, q->kp, b + p0 * ldb, ldb, c);
            for (int r = 0; r < mr; r++)
                for (int p = 0; p < np; p++) {
                    int64_t jj = j0 + p * PANEL, n = nj - p * PANEL < PANEL ? nj - p * PANEL : PANEL;
                    if (n <= 0) break;
                    store_row(q, r0 + r, q->comp[r0 + r], q->wz ? q->wz[r0 + r] : 0,
                              c + r * MAX_NP * PANEL + p * PANEL,
                              colsum ? colsum + jj : NULL, n,
                              y + ((r0 + r) * rs + jj * cs) * es, cs);
                }
        }
    }
}

/* ------------------------------------------------------------------------------ conv */

typedef struct {
    const wl_qconv_shape *s;
    const wl_qweights *q;
    const uint8_t *x;
    char *y;
    int64_t chunks_per_plane; /* per (image, group) */
} conv_job;

static void conv_chunk(void *ctx, int64_t t) {
    const conv_job *j = ctx;
    const wl_qconv_shape *s = j->s;
    const wl_qweights *q = j->q;
    int64_t plane = t / j->chunks_per_plane, ch = t % j->chunks_per_plane;
    int64_t img = plane / s->groups, g = plane % s->groups;
    int64_t P = s->oh * s->ow, cg = s->c / s->groups, og = s->o / s->groups;
    int64_t p0 = ch * CHUNK * PANEL, pn = P - p0 < CHUNK * PANEL ? P - p0 : CHUNK * PANEL;
    int64_t npan = (pn + PANEL - 1) / PANEL, kp = q->kp, K = q->k;
    uint8_t *b = wl_scratch(Q_SCRATCH, (size_t)(npan * kp * PANEL + 4 * CHUNK * PANEL + 64));
    if (!b) return;
    int32_t *colsum = q->wz ? (int32_t *)(b + align64(npan * kp * PANEL)) : NULL;
    const uint8_t *xg = j->x + (img * s->c + g * cg) * s->h * s->w;
    uint8_t pad = (uint8_t)(q->x_zero_raw), flip = (uint8_t)q->x_flip;
    int64_t khw = s->kh * s->kw;
    /* im2col into panels: column p of the chunk, depth index kk = (c, i, j) */
    for (int64_t kk = 0; kk < kp; kk++) {
        uint8_t *dst = b + (kk >> 2) * 64 + (kk & 3);
        if (kk >= K) {
            for (int64_t p = 0; p < npan * PANEL; p++) dst[(p / PANEL) * kp * PANEL + (p % PANEL) * 4] = 0;
            continue;
        }
        int64_t c = kk / khw, i = (kk % khw) / s->kw, jj = kk % s->kw;
        const uint8_t *xc = xg + c * s->h * s->w;
        for (int64_t p = 0; p < npan * PANEL; p++) {
            uint8_t v = 0;
            if (p < pn) {
                int64_t op = p0 + p, oy = op / s->ow, ox = op % s->ow;
                int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
                int64_t ix = ox * s->stride_w - s->pad_left + jj * s->dilation_w;
                v = (iy >= 0 && iy < s->h && ix >= 0 && ix < s->w) ? xc[iy * s->w + ix] : pad;
                v ^= flip;
            }
            dst[(p / PANEL) * kp * PANEL + (p % PANEL) * 4] = v;
        }
    }
    if (colsum) {
        for (int64_t p = 0; p < pn; p++) {
            int32_t sum = 0;
            const uint8_t *col = b + (p / PANEL) * kp * PANEL + (p % PANEL) * 4;
            for (int64_t k4 = 0; k4 < kp / 4; k4++)
                for (int e = 0; e < 4; e++)
                    sum += q->x_packed_signed ? (int8_t)col[k4 * 64 + e] : col[k4 * 64 + e];
            colsum[p] = sum;
        }
    }
    wl_qweights sub = *q;  /* this group's rows */
    sub.rows = og;
    sub.w += g * og * kp;
    sub.comp += g * og;
    if (sub.wz) sub.wz += g * og;
    if (sub.scale) sub.scale += g * og;
    char *y = j->y + ((img * s->o + g * og) * P + p0) * esize(q);
    gemm_panels(&sub, b, colsum, npan, pn, y, P, 1);
}

/* depthwise: one (image, channel) plane per task, int32 rows accumulated tap by tap */
typedef struct {
    const wl_qconv_shape *s;
    const wl_qweights *q;
    const uint8_t *x;
    char *y;
} dw_job;

static void dw_plane(void *ctx, int64_t t) {
    const dw_job *j = ctx;
    const wl_qconv_shape *s = j->s;
    const wl_qweights *q = j->q;
    int64_t ch = t % s->c, ow = s->ow;
    const uint8_t *x = j->x + t * s->h * s->w;
    int x_signed = q->x_signed;
    int32_t *acc = wl_scratch(Q_SCRATCH, sizeof(int32_t) * (size_t)(ow + 16));
    if (!acc) return;
    const int32_t *taps = q->taps + ch * s->kh * s->kw;
    int32_t base = q->dcomp[ch];
    for (int64_t oy = 0; oy < s->oh; oy++) {
        for (int64_t ox = 0; ox < ow; ox++) acc[ox] = base;
        for (int64_t i = 0; i < s->kh; i++) {
            int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
            for (int64_t jj = 0; jj < s->kw; jj++) {
                int32_t wv = taps[i * s->kw + jj];
                int64_t off = jj * s->dilation_w - s->pad_left;
                /* out-of-range taps read the zero point: (xz - xz) * w adds nothing beyond the
                 * -xz * w already in base, so they add xz * w here */
                if (iy < 0 || iy >= s->h) {
                    for (int64_t ox = 0; ox < ow; ox++) acc[ox] += q->x_zero_raw * wv;
                    continue;
                }
                const uint8_t *row = x + iy * s->w;
                for (int64_t ox = 0; ox < ow; ox++) {
                    int64_t ix = ox * s->stride_w + off;
                    int32_t v = (ix >= 0 && ix < s->w)
                                    ? (x_signed ? (int32_t)(int8_t)row[ix] : (int32_t)row[ix])
                                    : q->x_zero_raw;
                    acc[ox] += v * wv;
                }
            }
        }
        /* the depthwise constant is already in acc: no further offset */
        for (int64_t o0 = 0; o0 < ow; o0 += MAX_NP * PANEL)
            store_row(q, ch, 0, 0, acc + o0, NULL, ow - o0 < MAX_NP * PANEL ? ow - o0 : MAX_NP * PANEL,
                      j->y + ((t * s->oh + oy) * ow + o0) * esize(q), 1);
    }
}

void wl_qconv(const wl_qconv_shape *s, const wl_qweights *q, const uint8_t *x, void *y,
              int nthreads) {
    if (s->groups == s->c && s->c == s->o && s->groups > 1) {
        dw_job j = {s, q, x, y};
        wl_parallel_for(s->n * s->c, dw_plane, &j, nthreads);
        return;
    }
    int64_t P = s->oh * s->ow;
    conv_job j = {s, q, x, y, (P + CHUNK * PANEL - 1) / (CHUNK * PANEL)};
    wl_parallel_for(s->n * s->groups * j.chunks_per_plane, conv_chunk, &j, nthreads);
}

/* ------------------------------------------------------------------------------ matmul */

typedef struct {
    int64_t m;
    const wl_qweights *q;
    const uint8_t *a;
    char *y;
} mm_job;

static void mm_chunk(void *ctx, int64_t t) {
    const mm_job *j = ctx;
    const wl_qweights *q = j->q;
    int64_t m0 = t * CHUNK * PANEL, mn = j->m - m0 < CHUNK * PANEL ? j->m - m0 : CHUNK * PANEL;
    int64_t npan = (mn + PANEL - 1) / PANEL, kp = q->kp, K = q->k;
    uint8_t *b = wl_scratch(Q_SCRATCH, (size_t)(npan * kp * PANEL + 4 * CHUNK * PANEL + 64));
    if (!b) return;
    int32_t *colsum = q->wz ? (int32_t *)(b + align64(npan * kp * PANEL)) : NULL;
    uint8_t flip = (uint8_t)q->x_flip;
    /* rows of A become the columns of the panels: 4 bytes of a row per (k4, column) */
    for (int64_t i = 0; i < npan * PANEL; i++) {
        const uint8_t *row = j->a + (m0 + i) * K;
        uint8_t *dst = b + (i / PANEL) * kp * PANEL + (i % PANEL) * 4;
        int32_t sum = 0;
        for (int64_t kk = 0; kk < kp; kk++) {
            uint8_t v = (i < mn && kk < K) ? (uint8_t)(row[kk] ^ flip) : 0;
            dst[(kk >> 2) * 64 + (kk & 3)] = v;
            sum += q->x_packed_signed ? (int8_t)v : v;
        }
        if (colsum && i < mn) colsum[i] = sum;
    }
    gemm_panels(q, b, colsum, npan, mn, j->y + m0 * q->rows * esize(q), 1, q->rows);
}

void wl_qmatmul(int64_t m, const wl_qweights *q, const uint8_t *a, void *y, int nthreads) {
    mm_job j = {m, q, a, y};
    wl_parallel_for((m + CHUNK * PANEL - 1) / (CHUNK * PANEL), mm_chunk, &j, nthreads);
}
