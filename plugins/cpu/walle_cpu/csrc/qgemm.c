/* int8 convolution and matrix product: see quant.h for the scheme. */
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

#if defined(__x86_64__)
#define TVBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")))
/* the first `need` bytes of 64 */
TVBMI static inline __mmask64 dw_vbmi_mask(int64_t need) {
    return need >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << need) - 1);
}
#endif

#define PANEL 16      /* columns per packed panel */
#define MAX_MR 8      /* weight rows per tile, at most */
#define MAX_NP 2      /* panels per tile, at most */
#define CHUNK 4       /* panels packed (and computed) per task */
#define Q_SCRATCH 4   /* wl_scratch slot of the packed panels (tasks) */
#define Q_PAD_SCRATCH 0 /* ... of the padded input (the calling thread, before the tasks) */

/* c[r * MAX_NP * PANEL + p * PANEL + j] = sum over k4 groups of w[r * ldw + 4 kk .. + 3] .
 * panel p's 4 bytes of column j: b + p * ldb + kk * 64 + j * 4 */
typedef void (*q_tile_fn)(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw,
                          const uint8_t *b, int64_t ldb, int32_t *c);

typedef void (*q_store_fn)(const wl_qweights *q, int64_t r, int32_t comp, int32_t wz,
                           const int32_t *acc, const int32_t *colsum, int64_t n, char *y,
                           int64_t cs);

typedef struct {
    const char *name;
    int mr;      /* rows per full tile */
    int np;      /* panels per full tile */
    int x_signed; /* activations packed as int8 (NEON sdot) instead of uint8 */
    q_tile_fn tile;
    q_store_fn store;
    /* depthwise: one output row of channel ch (x: the first input row it reads) */
    void (*dw_row)(const wl_qweights *q, int64_t ch, const uint8_t *x, int64_t wp, int64_t kh,
                   int64_t kw, int64_t dh, int64_t dw, int64_t ow, int64_t sw, int sgn,
                   const int32_t *taps, char *y);
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
#define VNNI512_TILE(NAME, MR, NP, FULL) /* any tile up to MR x NP */                                                        \
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
VNNI512_TILE(tile_vnni512_part, 6, 2, 0)

/* the full 6 x 2 tile with named accumulators (an array of them makes gcc copy registers) */
#define V512_ROW(i)                                                                            \
    {                                                                                          \
        __m512i v = _mm512_set1_epi32(load4(w + i * ldw + kk * 4));                            \
        c##i##0 = _mm512_dpbusd_epi32(c##i##0, x0, v);                                         \
        c##i##1 = _mm512_dpbusd_epi32(c##i##1, x1, v);                                         \
    }
#define V512_STORE(i)                                                                          \
    _mm512_storeu_si512(c + i * MAX_NP * PANEL, c##i##0);                                      \
    _mm512_storeu_si512(c + i * MAX_NP * PANEL + PANEL, c##i##1);
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void tile_vnni512_full(
    int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b, int64_t ldb, int32_t *c) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t kk = 0; kk < k4; kk++) {
        __m512i x0 = _mm512_loadu_si512(b + kk * 64), x1 = _mm512_loadu_si512(b + ldb + kk * 64);
        V512_ROW(0) V512_ROW(1) V512_ROW(2) V512_ROW(3) V512_ROW(4) V512_ROW(5)
    }
    V512_STORE(0) V512_STORE(1) V512_STORE(2) V512_STORE(3) V512_STORE(4) V512_STORE(5)
}

/* The full 6 x 2 tile of a conv requantized from its registers into 8-bit output rows (row r
 * of the tile at y + r * rs, nj <= 32 valid columns): the epilogue of store_row_body, the same
 * float32 operations in order (x * scale, clamp, round half to even by the conversion's
 * default rounding, + zero point), without the trip through memory and the call per row. */
typedef struct {
    const int32_t *comp, *wz, *colsum; /* this tile's first row; colsum: its first column */
    const float *scale;
    float lo, hi;
    int32_t yz;
} q_rq;
#define V512_RQ(i)                                                                             \
    {                                                                                          \
        __m512i cv = _mm512_set1_epi32(e->comp[i]);                                            \
        __m512 sv = _mm512_set1_ps(e->scale[i]);                                               \
        __m512i a0 = _mm512_add_epi32(c##i##0, cv), a1 = _mm512_add_epi32(c##i##1, cv);        \
        if (e->wz) {                                                                           \
            __m512i z = _mm512_set1_epi32(e->wz[i]);                                           \
            a0 = _mm512_sub_epi32(a0, _mm512_mullo_epi32(z, cs0));                             \
            a1 = _mm512_sub_epi32(a1, _mm512_mullo_epi32(z, cs1));                             \
        }                                                                                      \
        __m512 f0 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a0), sv), lo), hi); \
        __m512 f1 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a1), sv), lo), hi); \
        a0 = _mm512_add_epi32(_mm512_cvt_roundps_epi32(f0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), yz); \
        a1 = _mm512_add_epi32(_mm512_cvt_roundps_epi32(f1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), yz); \
        _mm512_mask_cvtepi32_storeu_epi8(y + i * rs, m0, a0);                                  \
        _mm512_mask_cvtepi32_storeu_epi8(y + i * rs + PANEL, m1, a1);                          \
    }
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void tile_vnni512_full_rq(
    int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b, int64_t ldb, const q_rq *e,
    int64_t nj, char *y, int64_t rs) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t kk = 0; kk < k4; kk++) {
        __m512i x0 = _mm512_loadu_si512(b + kk * 64), x1 = _mm512_loadu_si512(b + ldb + kk * 64);
        V512_ROW(0) V512_ROW(1) V512_ROW(2) V512_ROW(3) V512_ROW(4) V512_ROW(5)
    }
    __mmask16 m0 = nj >= 16 ? 0xffff : (__mmask16)((1u << nj) - 1);
    __mmask16 m1 = nj >= 32 ? 0xffff : nj <= 16 ? 0 : (__mmask16)((1u << (nj - 16)) - 1);
    __m512i cs0 = _mm512_setzero_si512(), cs1 = cs0;
    if (e->wz) {
        cs0 = _mm512_maskz_loadu_epi32(m0, e->colsum);
        cs1 = _mm512_maskz_loadu_epi32(m1, e->colsum + PANEL);
    }
    const __m512 lo = _mm512_set1_ps(e->lo), hi = _mm512_set1_ps(e->hi);
    const __m512i yz = _mm512_set1_epi32(e->yz);
    V512_RQ(0) V512_RQ(1) V512_RQ(2) V512_RQ(3) V512_RQ(4) V512_RQ(5)
}

/* any tile up to 6 x 2 with constant MR / NP (fully unrolled: the accumulators stay in
 * registers) */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static inline __attribute__((always_inline)) void
tile_vnni512_rq_body(int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b, int64_t ldb,
                     const q_rq *e, int64_t nj, char *y, int64_t rs, const int MR, const int NP) {
    __m512i acc[6][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < k4; kk++) {
        __m512i xv[2];
        for (int p = 0; p < NP; p++) xv[p] = _mm512_loadu_si512(b + p * ldb + kk * 64);
        for (int r = 0; r < MR; r++) {
            __m512i wv = _mm512_set1_epi32(load4(w + r * ldw + kk * 4));
            for (int p = 0; p < NP; p++) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], xv[p], wv);
        }
    }
    __mmask16 mk[2];
    __m512i cs[2];
    for (int p = 0; p < NP; p++) {
        int64_t n = nj - p * PANEL;
        mk[p] = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
        cs[p] = e->wz ? _mm512_maskz_loadu_epi32(mk[p], e->colsum + p * PANEL) : _mm512_setzero_si512();
    }
    const __m512 lo = _mm512_set1_ps(e->lo), hi = _mm512_set1_ps(e->hi);
    const __m512i yz = _mm512_set1_epi32(e->yz);
    for (int r = 0; r < MR; r++) {
        __m512i cv = _mm512_set1_epi32(e->comp[r]);
        __m512 sv = _mm512_set1_ps(e->scale[r]);
        for (int p = 0; p < NP; p++) {
            __m512i a = _mm512_add_epi32(acc[r][p], cv);
            if (e->wz) a = _mm512_sub_epi32(a, _mm512_mullo_epi32(_mm512_set1_epi32(e->wz[r]), cs[p]));
            __m512 f = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), sv), lo), hi);
            a = _mm512_add_epi32(_mm512_cvt_roundps_epi32(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), yz);
            _mm512_mask_cvtepi32_storeu_epi8(y + r * rs + p * PANEL, mk[p], a);
        }
    }
}
#define RQ_TILE(MR, NP)                                                                        \
    __attribute__((target("avx512f,avx512bw,avx512vnni"))) static void tile_vnni512_rq_##MR##_##NP( \
        int64_t k4, const int8_t *w, int64_t ldw, const uint8_t *b, int64_t ldb, const q_rq *e, \
        int64_t nj, char *y, int64_t rs) {                                                      \
        tile_vnni512_rq_body(k4, w, ldw, b, ldb, e, nj, y, rs, MR, NP);                         \
    }
RQ_TILE(1, 1) RQ_TILE(2, 1) RQ_TILE(3, 1) RQ_TILE(4, 1) RQ_TILE(5, 1) RQ_TILE(6, 1)
RQ_TILE(1, 2) RQ_TILE(2, 2) RQ_TILE(3, 2) RQ_TILE(4, 2) RQ_TILE(5, 2)
typedef void (*q_rq_tile_fn)(int64_t, const int8_t *, int64_t, const uint8_t *, int64_t,
                             const q_rq *, int64_t, char *, int64_t);
static const q_rq_tile_fn rq_tiles[2][6] = {
    {tile_vnni512_rq_1_1, tile_vnni512_rq_2_1, tile_vnni512_rq_3_1, tile_vnni512_rq_4_1,
     tile_vnni512_rq_5_1, tile_vnni512_rq_6_1},
    {tile_vnni512_rq_1_2, tile_vnni512_rq_2_2, tile_vnni512_rq_3_2, tile_vnni512_rq_4_2,
     tile_vnni512_rq_5_2, NULL}}; /* 6 x 2: tile_vnni512_full_rq */

static void tile_vnni512(int mr, int np, int64_t k4, const int8_t *w, int64_t ldw,
                         const uint8_t *b, int64_t ldb, int32_t *c) {
    if (mr == 6 && np == 2) tile_vnni512_full(k4, w, ldw, b, ldb, c);
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

/* the epilogue per vector width (defined with the epilogue below) */
#define STORE_ARGS const wl_qweights *, int64_t, int32_t, int32_t, const int32_t *, const int32_t *, \
                   int64_t, char *, int64_t
static void store_row_generic(STORE_ARGS);
#define DW_ARGS const wl_qweights *, int64_t, const uint8_t *, int64_t, int64_t, int64_t, int64_t, \
                int64_t, int64_t, int64_t, int, const int32_t *, char *
static void dw_row_generic(DW_ARGS);
#if defined(__x86_64__)
static void store_row_avx512(STORE_ARGS);
static void store_row_avx2(STORE_ARGS);
static void dw_row_avx512(DW_ARGS);
static void dw_row_avx2(DW_ARGS);
#endif

static const q_isa isa_scalar = {"scalar", 4, 1, 0, tile_scalar, store_row_generic, dw_row_generic};
#if defined(__x86_64__)
static const q_isa isa_vnni512 = {"avx512vnni", 6, 2, 0, tile_vnni512, store_row_avx512, dw_row_avx512};
static const q_isa isa_vnni256 = {"avxvnni", 6, 1, 0, tile_vnni256, store_row_avx2, dw_row_avx2};
static const q_isa isa_avx2 = {"avx2", 3, 1, 0, tile_avx2, store_row_avx2, dw_row_avx2};
/* AMX-INT8: the AVX-512 VNNI variant whose GEMMs run on tiles (gemm_amx) where the weights were
 * packed for them (depth a multiple of 64); rows are split across tasks 16 at a time */
static const q_isa isa_amx = {"amx", 16, 2, 0, tile_vnni512, store_row_avx512, dw_row_avx512};
#endif
#if defined(__aarch64__)
static const q_isa isa_sdot = {"neon-dot", 4, 1, 1, tile_sdot, store_row_generic, dw_row_generic};
static const q_isa isa_neon_scalar = {"scalar", 4, 1, 1, tile_scalar_signed, store_row_generic, dw_row_generic};
#endif

static const q_isa *q_active;

#if defined(__x86_64__)
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
/* AMX-TILE and AMX-INT8 (CPUID.(7,0):EDX bits 24, 25), with the kernel's permission to use the
 * tile data (Linux grants it per process on request; refused by kernels or VMs without it) */
static int amx_usable(void) {
    static int usable = -1;
    int u = __atomic_load_n(&usable, __ATOMIC_ACQUIRE);
    if (u >= 0) return u;
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    u = (d >> 24 & 1) && (d >> 25 & 1) &&
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    __atomic_store_n(&usable, u, __ATOMIC_RELEASE);
    return u;
}
#endif

static const q_isa *q_best(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    int vnni512 = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    if (vnni512 && amx_usable()) return &isa_amx;
    if (vnni512) return &isa_vnni512;
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

/* the AVX-512 VNNI kernels (also the AMX variant's, outside its tile GEMM) */
#if defined(__x86_64__)
static int avx512_family(const q_isa *a) { return a == &isa_vnni512 || a == &isa_amx; }
#endif

int wl_q_set_isa(const char *name) {
    const q_isa *best = q_best(), *pick = NULL;
    if (!strcmp(name, "auto")) pick = best;
#if defined(__x86_64__)
    /* the fp32 variant names map onto the int8 ones: avx512 -> VNNI when present */
    else if (!strcmp(name, "avx512"))
        pick = best;
    else if (!strcmp(name, "avx512vnni"))
        pick = best == &isa_vnni512 || best == &isa_amx ? &isa_vnni512 : NULL;
    else if (!strcmp(name, "amx"))
        pick = best == &isa_amx ? best : NULL;
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
static int64_t round16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* The packed depth: k rounded up to 4, or for the AMX tiles (64 bytes of depth a step) to 64
 * where that adds at most half again (k = 27 stays 28 on the VNNI loops), there are rows
 * enough for the tiles to pay for their packing and the trip of their sums through memory
 * (measured: 16 rows of 3x3 x 16 channels ran 1.3x slower on the tiles) and the product is
 * large (cols unknown: 0): in a model, small products between other ops ran slower on the
 * tiles than on the VNNI loops (a 1x1 conv of 48 -> 288 channels on 3x3: 2.6 -> 4.4 us) */
#define AMX_MIN_MACS 1000000.0
static int64_t packed_depth(const q_isa *a, int64_t k, int64_t rows, int64_t cols) {
#if defined(__x86_64__)
    if (a == &isa_amx && rows >= 32 && align64(k) * 2 <= round4(k) * 3 &&
        (cols == 0 || (double)rows * (double)cols * (double)k >= AMX_MIN_MACS))
        return align64(k);
#endif
    (void)a, (void)rows, (void)cols;
    return round4(k);
}

/* weight rows are allocated (and zeroed) up to a multiple of 16: a tile reads 16 rows */
int64_t wl_q_weight_bytes(int64_t rows, int64_t k) {
    return align64(round16(rows) * align64(k)) + 3 * align64(4 * rows) + align64(4 * rows * k);
}

void wl_q_pack_weights(wl_qweights *q, void *mem, const void *w, int w_signed, int64_t rows,
                       int64_t k, const int32_t *w_zero, const int32_t *bias, int32_t x_zero,
                       int x_signed, const float *scale, int32_t y_zero, int32_t lo, int32_t hi,
                       int out, int64_t cols) {
    const q_isa *a = isa();
    int64_t kp = packed_depth(a, k, rows, cols);
    char *m = mem;
    int8_t *wp = (int8_t *)m;
    memset(wp + rows * kp, 0, (size_t)((round16(rows) - rows) * kp));
    int32_t *comp = (int32_t *)(m + align64(round16(rows) * kp));
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
    int taps_s8 = 1;
    for (int64_t i = 0; i < rows * k; i++) taps_s8 &= taps[i] >= -128 && taps[i] <= 127;
    *q = (wl_qweights){rows, k, kp, wp, comp, any_wz ? wz : NULL, taps, dcomp, scale, xz, x_zero,
                       flip, x_signed, a->x_signed, y_zero, lo, hi, out, taps_s8};
}

/* ------------------------------------------------------------------------------ epilogue */

/* One row's n accumulators to the output: requantized (round half to even, like rintf under
 * the default rounding mode: the 1.5 * 2^23 trick, exact for the clamped range) or int32. */
static inline __attribute__((always_inline)) void store_row_body(
    const wl_qweights *q, int64_t r, int32_t comp, int32_t wz, const int32_t *acc,
    const int32_t *colsum, int64_t n, char *y, int64_t cs) {
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

/* the epilogue compiled for each variant's vector width (gcc vectorises the loops above) */
#define STORE_ROW(NAME, ...)                                                                   \
    __VA_ARGS__ static void NAME(const wl_qweights *q, int64_t r, int32_t comp, int32_t wz,    \
                                 const int32_t *acc, const int32_t *colsum, int64_t n, char *y, \
                                 int64_t cs) {                                                  \
        store_row_body(q, r, comp, wz, acc, colsum, n, y, cs);                                  \
    }
STORE_ROW(store_row_generic)
#if defined(__x86_64__)
STORE_ROW(store_row_avx512_body, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))))

/* up to 16 int32 sums of row r requantized in one vector (store_row_body's float32 operations
 * in the same order) and stored as 8-bit through a lane mask */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline void requant16_avx512(
    const wl_qweights *q, int64_t r, __m512i v, __mmask16 m, char *y) {
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(q->scale[r]));
    f = _mm512_max_ps(f, _mm512_set1_ps((float)(q->lo - q->y_zero)));
    f = _mm512_min_ps(f, _mm512_set1_ps((float)(q->hi - q->y_zero)));
    f = _mm512_sub_ps(_mm512_add_ps(f, magic), magic);
    __m512i o = _mm512_add_epi32(_mm512_cvttps_epi32(f), _mm512_set1_epi32(q->y_zero));
    _mm512_mask_cvtepi32_storeu_epi8(y, m, o); /* in the type's range: truncation is exact */
}

/* a conv's panel row (contiguous, at most 16 columns) in one vector; other shapes (the matmul's
 * strided columns, int32 output) through the loops */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void store_row_avx512(
    const wl_qweights *q, int64_t r, int32_t comp, int32_t wz, const int32_t *acc,
    const int32_t *colsum, int64_t n, char *y, int64_t cs) {
    if (cs != 1 || n > 16 || q->out == Q_S32) {
        store_row_avx512_body(q, r, comp, wz, acc, colsum, n, y, cs);
        return;
    }
    __mmask16 m = (__mmask16)((1u << n) - 1);
    __m512i v = _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, acc), _mm512_set1_epi32(comp));
    if (colsum)
        v = _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_set1_epi32(wz), _mm512_maskz_loadu_epi32(m, colsum)));
    requant16_avx512(q, r, v, m, y);
}
STORE_ROW(store_row_avx2, __attribute__((target("avx2,fma"))))
#endif

static void store_row(const wl_qweights *q, int64_t r, int32_t comp, int32_t wz,
                      const int32_t *acc, const int32_t *colsum, int64_t n, char *y, int64_t cs) {
    isa()->store(q, r, comp, wz, acc, colsum, n, y, cs);
}

static int esize(const wl_qweights *q) { return q->out == Q_S32 ? 4 : 1; }

/* ------------------------------------------------------------------------------ AMX-INT8 */
#if defined(__x86_64__)
/* Weights packed for the tiles: the AMX variant active and the depth a multiple of 64. */
static int amx_layout(const wl_qweights *q) { return isa() == &isa_amx && q->kp % 64 == 0; }
#else
static int amx_layout(const wl_qweights *q) { (void)q; return 0; }
#endif

/* rows per share when a GEMM's rows are split across tasks: whole tiles */
static int64_t split_rows(const wl_qweights *q) { return amx_layout(q) ? 16 : isa()->mr; }

#if defined(__x86_64__)
/* Tiles of 16 rows x 64 bytes: the weights (A: 16 weight rows, 64 bytes of depth, signed) and a
 * panel's 16 depth groups (B: [16 groups][16 columns][4 bytes], unsigned: exactly the packed
 * panel, 1 KB contiguous a step) into 16 x 16 int32 sums (tdpbsud). tmm0-3: the sums of a
 * 32-row x 2-panel block (rows r, r + 16 x panels p, p + 1), tmm4-5: weights, tmm6-7: panels. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

#define TAMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-int8")))
#define AMX_DP(R2, P2)                                                                          \
    for (int64_t s = 0; s < ks; s++) {                                                         \
        _tile_loadd(4, w + s * 64, kp);                                                         \
        _tile_loadd(6, b + s * 1024, 64);                                                       \
        if (P2) _tile_loadd(7, b + ldb + s * 1024, 64);                                         \
        if (R2) _tile_loadd(5, w + 16 * kp + s * 64, kp);                                       \
        _tile_dpbsud(0, 4, 6);                                                                  \
        if (P2) _tile_dpbsud(1, 4, 7);                                                          \
        if (R2) _tile_dpbsud(2, 5, 6);                                                          \
        if (R2 && P2) _tile_dpbsud(3, 5, 7);                                                    \
    }

/* one block's sums into c: [tile: r/16 * 2 + p][16 rows][16 columns] */
TAMX static void amx_block(int r2, int p2, int64_t ks, const int8_t *w, int64_t kp,
                           const uint8_t *b, int64_t ldb, int32_t *c) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    if (r2 && p2) AMX_DP(1, 1)
    else if (r2) AMX_DP(1, 0)
    else if (p2) AMX_DP(0, 1)
    else AMX_DP(0, 0)
    _tile_stored(0, c, 64);
    if (p2) _tile_stored(1, c + 256, 64);
    if (r2) _tile_stored(2, c + 512, 64);
    if (r2 && p2) _tile_stored(3, c + 768, 64);
}

/* every tile 16 rows x 64 bytes; a static object (gcc dropped the stores to a local one: it
 * does not see ldtilecfg read the whole 64 bytes) */
static const amx_config amx_cfg __attribute__((aligned(64))) = {
    1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

TAMX static void amx_begin(void) { _tile_loadconfig(&amx_cfg); }

TAMX static void amx_end(void) { _tile_release(); }

/* A block's sums requantized into 8-bit rows of a conv's output (y + r * rs + j, contiguous
 * columns): store_row_body's float32 operations per 16 columns, the row's constants in
 * registers and no call per row (the tile sums come back through memory) */
TAMX static void amx_requant(const wl_qweights *q, int64_t r0, int64_t mr, int p2, int64_t nj,
                             const int32_t *c, const int32_t *colsum, char *y, int64_t rs) {
    __mmask16 mk[2];
    __m512i cs[2];
    for (int p = 0; p <= p2; p++) {
        int64_t n = nj - p * PANEL;
        mk[p] = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
        cs[p] = colsum ? _mm512_maskz_loadu_epi32(mk[p], colsum + p * PANEL) : _mm512_setzero_si512();
    }
    const __m512 lo = _mm512_set1_ps((float)(q->lo - q->y_zero)), hi = _mm512_set1_ps((float)(q->hi - q->y_zero));
    const __m512i yz = _mm512_set1_epi32(q->y_zero);
    for (int64_t r = 0; r < mr; r++) {
        const __m512i cv = _mm512_set1_epi32(q->comp[r0 + r]);
        const __m512 sv = _mm512_set1_ps(q->scale[r0 + r]);
        const __m512i zv = _mm512_set1_epi32(q->wz ? q->wz[r0 + r] : 0);
        for (int p = 0; p <= p2; p++) {
            __m512i a = _mm512_add_epi32(_mm512_load_si512(c + ((r >> 4) * 2 + p) * 256 + (r & 15) * 16), cv);
            if (colsum) a = _mm512_sub_epi32(a, _mm512_mullo_epi32(zv, cs[p]));
            __m512 f = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), sv), lo), hi);
            a = _mm512_add_epi32(_mm512_cvt_roundps_epi32(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), yz);
            _mm512_mask_cvtepi32_storeu_epi8(y + r * rs + p * PANEL, mk[p], a);
        }
    }
}

/* gemm_panels on the tiles: blocks of 32 rows x 2 panels, each requantized from its sums */
static void gemm_amx(const wl_qweights *q, const uint8_t *b, const int32_t *colsum,
                     int64_t np_total, int64_t ncols, char *y, int64_t rs, int64_t cs) {
    int64_t ldb = q->kp * PANEL, ks = q->kp / 64;
    int32_t c[4 * 256] __attribute__((aligned(64)));
    int es = esize(q);
    int fast = cs == 1 && q->out != Q_S32;
    amx_begin();
    for (int64_t p0 = 0; p0 < np_total; p0 += 2) {
        int p2 = np_total - p0 >= 2;
        int64_t j0 = p0 * PANEL, nj = ncols - j0 < (p2 + 1) * PANEL ? ncols - j0 : (p2 + 1) * PANEL;
        for (int64_t r0 = 0; r0 < q->rows; r0 += 32) {
            int64_t mr = q->rows - r0 < 32 ? q->rows - r0 : 32;
            amx_block(mr > 16, p2, ks, q->w + r0 * q->kp, q->kp, b + p0 * ldb, ldb, c);
            if (fast) {
                amx_requant(q, r0, mr, p2, nj, c, colsum ? colsum + j0 : NULL, y + r0 * rs + j0, rs);
                continue;
            }
            for (int64_t r = 0; r < mr; r++)
                for (int p = 0; p <= p2; p++) {
                    int64_t jj = j0 + p * PANEL, n = nj - p * PANEL < PANEL ? nj - p * PANEL : PANEL;
                    if (n <= 0) break;
                    store_row_avx512(q, r0 + r, q->comp[r0 + r], q->wz ? q->wz[r0 + r] : 0,
                                     c + ((r >> 4) * 2 + p) * 256 + (r & 15) * 16,
                                     colsum ? colsum + jj : NULL, n,
                                     y + ((r0 + r) * rs + jj * cs) * es, cs);
                }
        }
    }
    amx_end();
}
#endif

/* All rows times `np_total` packed panels (ncols real columns), output (row r, column j) at
 * y + (r * rs + j * cs) elements. */
static void gemm_panels(const wl_qweights *q, const uint8_t *b, const int32_t *colsum,
                        int64_t np_total, int64_t ncols, char *y, int64_t rs, int64_t cs) {
    const q_isa *a = isa();
#if defined(__x86_64__)
    /* a share of rows under a tile's, or a few outputs (a squeeze-excitation conv on 1x1: the
     * tiles' fixed costs outweigh them): the VNNI loops (any depth a multiple of 4) */
    if (amx_layout(q) && q->rows >= 16 && q->rows * ncols >= 1024) {
        gemm_amx(q, b, colsum, np_total, ncols, y, rs, cs);
        return;
    }
    if (a == &isa_amx) a = &isa_vnni512; /* or the depth not packed for the tiles */
#endif
    int64_t ldb = q->kp * PANEL, k4 = q->kp / 4;
    int32_t c[MAX_MR * MAX_NP * PANEL];
    int es = esize(q);
    for (int64_t p0 = 0; p0 < np_total; p0 += a->np) {
        int np = (int)(np_total - p0 < a->np ? np_total - p0 : a->np);
        int64_t j0 = p0 * PANEL, nj = ncols - j0 < np * PANEL ? ncols - j0 : np * PANEL;
        for (int64_t r0 = 0; r0 < q->rows; r0 += a->mr) {
            int mr = (int)(q->rows - r0 < a->mr ? q->rows - r0 : a->mr);
#if defined(__x86_64__)
            if (avx512_family(a) && cs == 1 && q->out != Q_S32) {
                q_rq e = {q->comp + r0, q->wz ? q->wz + r0 : NULL, colsum ? colsum + j0 : NULL,
                          q->scale + r0, (float)(q->lo - q->y_zero), (float)(q->hi - q->y_zero), q->y_zero};
                if (mr == 6 && np == 2)
                    tile_vnni512_full_rq(k4, q->w + r0 * q->kp, q->kp, b + p0 * ldb, ldb, &e, nj,
                                         y + r0 * rs + j0, rs);
                else
                    rq_tiles[np - 1][mr - 1](k4, q->w + r0 * q->kp, q->kp, b + p0 * ldb, ldb, &e,
                                             nj, y + r0 * rs + j0, rs);
                continue;
            }
#endif
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
    const wl_qconv_params *s;
    const wl_qweights *q;
    const uint8_t *x;         /* the input, padded: planes of hp x wp, every tap in bounds */
    int64_t hp, wp;
    char *y;
    int64_t chunks_per_plane; /* column chunks per (image, group) */
    int64_t row_splits;       /* tasks per chunk, each a share of the rows (few columns) */
    int failed;               /* a task found no scratch memory */
    const struct pack_vbmi_plan *vbmi; /* small maps: pack_conv_vbmi's index vectors, or NULL */
    const uint8_t *xend;      /* the end of x (the vbmi packing's loads stop there) */
    int vbmi1x1;              /* 1: a 1x1 stride-1 conv on the plane as it is (pack_1x1_vbmi);
                               * 2: other kernels on AVX-512 VBMI (pack_rows_vbmi) */
} conv_job;

#if defined(__x86_64__)
/* 16 bytes at stride 1 or 2 (p[0], p[2], ..., p[30]: the even bytes of p[0..15] and the odd
 * ones of p[15..30], as 16-bit lanes packed; nothing past p[30] is read) */
static inline __m128i load16_strided(const uint8_t *p, int64_t sw) {
    __m128i a = _mm_loadu_si128((const __m128i *)p);
    if (sw == 1) return a;
    __m128i b = _mm_srli_epi16(_mm_loadu_si128((const __m128i *)(p + 15)), 8);
    return _mm_packus_epi16(_mm_and_si128(a, _mm_set1_epi16(0xff)), b);
}
#endif

/* im2col of one chunk of output columns into panels: per group of 4 depth indices (c, i, j)
 * and column, one 32-bit word of the 4 input bytes (the top bits flipped for the packed
 * domain); the depth padding to a multiple of 4 is 0 */
static void pack_conv(const conv_job *j, const uint8_t *xg, int64_t p0, int64_t pn, int64_t npan,
                      uint8_t *b) {
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    int64_t kp = q->kp, K = q->k, khw = s->kh * s->kw, hw = j->hp * j->wp;
    int64_t ldw = kp * PANEL / 4; /* words between panels */
    uint32_t flip = (uint32_t)q->x_flip * 0x01010101u;
    int64_t c = 0, i = 0, jj = 0; /* depth index 4 * k4 + e as (channel, kernel row, column) */
    const int linear = s->stride_w == 1 && s->stride_h == 1 && j->wp == s->ow;
    (void)khw;
    for (int64_t k4 = 0; k4 < kp / 4; k4++) {
        uint32_t *dst = (uint32_t *)(b + k4 * 64);
        if (4 * k4 >= K) { /* the AMX depth padding: whole groups of 0 */
            for (int64_t p = 0; p < npan * PANEL; p++) dst[(p >> 4) * ldw + (p & 15)] = 0;
            continue;
        }
        const uint8_t *src[4];
        int full = 4 * k4 + 3 < K;
        for (int e = 0; e < 4; e++) {
            /* past K (depth padding, masked to 0 below): the last element again */
            src[e] = 4 * k4 + e < K || e == 0
                         ? xg + c * hw + i * s->dilation_h * j->wp + jj * s->dilation_w
                         : src[e - 1];
            if (++jj == s->kw) {
                jj = 0;
                if (++i == s->kh) {
                    i = 0;
                    c++;
                }
            }
        }
        int64_t p = 0, oy = p0 / s->ow, ox = p0 % s->ow;
        while (p < pn) {
            /* rows of the input one after the other (a 1x1 stride-1 conv on an unpadded input:
             * wp == ow): the chunk's columns are one run, whatever the width of the map */
            int64_t run = linear ? pn - p : s->ow - ox < pn - p ? s->ow - ox : pn - p;
            int64_t o = oy * s->stride_h * j->wp + ox * s->stride_w, sw = s->stride_w;
            int64_t r = 0;
#if defined(__x86_64__)
            /* stride 1: 16 columns of the 4 rows interleaved with SSE2 unpacks into four
             * groups of 4 columns x 4 bytes (a 4-aligned group never straddles a panel) */
            if ((sw == 1 || sw == 2) && full && !(p & 3)) {
                const __m128i fl = _mm_set1_epi32((int)flip);
                for (; r + 16 <= run; r += 16, p += 16, o += 16 * sw) {
                    __m128i a = load16_strided(src[0] + o, sw), bb = load16_strided(src[1] + o, sw);
                    __m128i cc = load16_strided(src[2] + o, sw), d = load16_strided(src[3] + o, sw);
                    __m128i ablo = _mm_unpacklo_epi8(a, bb), abhi = _mm_unpackhi_epi8(a, bb);
                    __m128i cdlo = _mm_unpacklo_epi8(cc, d), cdhi = _mm_unpackhi_epi8(cc, d);
                    __m128i g[4] = {_mm_unpacklo_epi16(ablo, cdlo), _mm_unpackhi_epi16(ablo, cdlo),
                                    _mm_unpacklo_epi16(abhi, cdhi), _mm_unpackhi_epi16(abhi, cdhi)};
                    for (int qd = 0; qd < 4; qd++) {
                        int64_t pq = p + 4 * qd;
                        _mm_storeu_si128((__m128i *)(dst + (pq >> 4) * ldw + (pq & 15)),
                                         _mm_xor_si128(g[qd], fl));
                    }
                }
            }
            /* stride 1, runs shorter than 16 (rows of 14 or 28 columns): 4 columns at a time
             * from 32-bit loads, the 4 words stored one by one (they may straddle a panel) */
            if (sw == 1 && full) {
                const __m128i fl = _mm_set1_epi32((int)flip);
                for (; r + 4 <= run; r += 4, p += 4, o += 4) {
                    __m128i a = _mm_cvtsi32_si128((int)load4((const int8_t *)src[0] + o));
                    __m128i bb = _mm_cvtsi32_si128((int)load4((const int8_t *)src[1] + o));
                    __m128i cc = _mm_cvtsi32_si128((int)load4((const int8_t *)src[2] + o));
                    __m128i d = _mm_cvtsi32_si128((int)load4((const int8_t *)src[3] + o));
                    __m128i g = _mm_unpacklo_epi16(_mm_unpacklo_epi8(a, bb), _mm_unpacklo_epi8(cc, d));
                    uint32_t wd[4];
                    _mm_storeu_si128((__m128i *)wd, _mm_xor_si128(g, fl));
                    for (int e = 0; e < 4; e++) dst[((p + e) >> 4) * ldw + ((p + e) & 15)] = wd[e];
                }
            }
#endif
            for (; r < run; r++, p++, o += sw) {
                uint32_t v = (uint32_t)src[0][o] | (uint32_t)src[1][o] << 8 |
                             (uint32_t)src[2][o] << 16 | (uint32_t)src[3][o] << 24;
                v ^= flip;
                if (!full) /* depth padding: those bytes are 0 */
                    v &= 0xffffffffu >> (8 * (4 - (K - 4 * k4)));
                dst[(p >> 4) * ldw + (p & 15)] = v;
            }
            ox = 0;
            oy++;
        }
        for (; p < npan * PANEL; p++) dst[(p >> 4) * ldw + (p & 15)] = 0;
    }
}

/* im2col by byte permutes where the map is small (AVX-512 VBMI): the 16 columns of a panel and
 * all kernel taps of one channel read a window of at most 64 bytes of its plane, from the
 * panel's first column on. A group of 4 depth indices spans at most two channels, so one
 * vpermi2b over the two channels' windows writes the panel's 64 bytes for the group (16
 * columns x 4 bytes) at once. Its index vector is the sum of the panel's column offsets (col,
 * each repeated for the 4 bytes of a column) and the group's tap offsets (tap: the 4 taps, +64
 * for the second channel, repeated for the 16 columns), which repeat every `period` groups. */
#define PACK_VBMI_PANELS 64
#define PACK_VBMI_PERIOD 64
struct pack_vbmi_plan {
    int64_t period; /* groups of 4 depth indices per repetition: khw / gcd(khw, 4) */
    int64_t base[PACK_VBMI_PANELS];       /* per panel: its first column's offset in the plane */
    uint64_t cmask[PACK_VBMI_PANELS];     /* per panel: the bytes of columns inside the map */
    uint8_t col[PACK_VBMI_PANELS][64];
    uint8_t tap[PACK_VBMI_PERIOD][64];
};

static int pack_vbmi_setup(const wl_qconv_params *s, const wl_qweights *q, int64_t wp,
                           struct pack_vbmi_plan *pl) {
#if defined(__x86_64__)
    int64_t khw = s->kh * s->kw, P = s->oh * s->ow;
    if (!avx512_family(isa()) || !__builtin_cpu_supports("avx512vbmi") || q->x_packed_signed ||
        khw < 3 || s->c / s->groups < 2)
        return 0;
    int64_t period = khw % 4 == 0 ? khw / 4 : khw % 2 == 0 ? khw / 2 : khw;
    int64_t npan = (P + PANEL - 1) / PANEL;
    if (npan > PACK_VBMI_PANELS || period > PACK_VBMI_PERIOD) return 0;
    pl->period = period;
    int64_t tmax = 0, dmax = 0;
    for (int64_t ph = 0; ph < period; ph++)
        for (int64_t e = 0; e < 4; e++) {
            int64_t k = 4 * ph + e, crel = k / khw - 4 * ph / khw, t = k % khw;
            int64_t off = (t / s->kw) * s->dilation_h * wp + (t % s->kw) * s->dilation_w;
            tmax = off > tmax ? off : tmax;
            for (int64_t l = 0; l < 16; l++) pl->tap[ph][4 * l + e] = (uint8_t)(off + 64 * crel);
        }
    for (int64_t pn = 0, oy = 0, ox = 0; pn < npan; pn++) {
        int64_t base = oy * s->stride_h * wp + ox * s->stride_w;
        pl->base[pn] = base;
        pl->cmask[pn] = 0;
        for (int64_t l = 0; l < 16; l++) {
            int64_t d = 0;
            if (16 * pn + l < P) {
                d = oy * s->stride_h * wp + ox * s->stride_w - base;
                pl->cmask[pn] |= (uint64_t)0xf << (4 * l);
                if (++ox == s->ow) ox = 0, oy++;
            }
            dmax = d > dmax ? d : dmax;
            for (int64_t e = 0; e < 4; e++) pl->col[pn][4 * l + e] = (uint8_t)d;
        }
    }
    return dmax + tmax <= 63;
#else
    (void)s, (void)q, (void)wp, (void)pl;
    return 0;
#endif
}

#if defined(__x86_64__)
TVBMI static inline __m256i load32_upto(const uint8_t *p, const uint8_t *end) {
    return end - p >= 32 ? _mm256_loadu_si256((const __m256i *)p)
                         : end > p ? _mm256_maskz_loadu_epi8((__mmask32)dw_vbmi_mask(end - p), p)
                                   : _mm256_setzero_si256();
}

TVBMI static inline __m512i load_upto(const uint8_t *p, const uint8_t *end) {
    return end - p >= 64 ? _mm512_loadu_si512(p)
                         : end > p ? _mm512_maskz_loadu_epi8(dw_vbmi_mask(end - p), p) : _mm512_setzero_si512();
}

/* pack_conv's result for the chunk's panels (columns p0 ..: whole panels) */
TVBMI static void pack_conv_vbmi(const conv_job *j, const uint8_t *xg, int64_t p0, int64_t npan,
                                 uint8_t *b) {
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    const struct pack_vbmi_plan *pl = j->vbmi;
    int64_t kp = q->kp, K = q->k, khw = s->kh * s->kw, hw = j->hp * j->wp, period = pl->period;
    const __m512i fl = _mm512_set1_epi8((char)q->x_flip);
    for (int64_t i = 0; i < npan; i++) {
        int64_t pn = p0 / PANEL + i;
        uint8_t *dst = b + i * kp * PANEL;
        const uint8_t *src = xg + pl->base[pn];
        const __m512i col = _mm512_loadu_si512(pl->col[pn]);
        for (int64_t k4 = 0, ph = 0; k4 < kp / 4; k4++) {
            __m512i v = _mm512_setzero_si512();
            if (4 * k4 < K) {
                int64_t c = 4 * k4 / khw;
                uint64_t m = pl->cmask[pn];
                if (4 * k4 + 4 > K) m &= 0x1111111111111111ull * ((1u << (K - 4 * k4)) - 1);
                const uint8_t *a = src + c * hw;
                v = _mm512_permutex2var_epi8(load_upto(a, j->xend), _mm512_add_epi8(col, _mm512_loadu_si512(pl->tap[ph])),
                                             load_upto(a + hw, j->xend));
                v = _mm512_maskz_mov_epi8(m, _mm512_xor_si512(v, fl)); /* padding bytes 0 */
            }
            _mm512_storeu_si512(dst + k4 * 64, v);
            if (++ph == period) ph = 0;
        }
    }
}

/* pack_conv for a 1x1 stride-1 conv whose columns are the plane's bytes in order (wp == ow):
 * per panel and group of 4 channels, 16 bytes of each channel (masked past the chunk's last
 * column) in one register, and one vpermb interleaves them into the panel's 64 bytes */
TVBMI static void pack_1x1_vbmi(const conv_job *j, const uint8_t *xg, int64_t p0, int64_t pn,
                                int64_t npan, uint8_t *b) {
    const wl_qweights *q = j->q;
    int64_t kp = q->kp, K = q->k, hw = j->hp * j->wp;
    const __m512i fl = _mm512_set1_epi8((char)q->x_flip);
    uint8_t perm[64];
    for (int l = 0; l < 16; l++)
        for (int e = 0; e < 4; e++) perm[4 * l + e] = (uint8_t)(16 * e + l);
    const __m512i ix = _mm512_loadu_si512(perm);
    for (int64_t i = 0; i < npan; i++) {
        int64_t n = pn - 16 * i < 16 ? pn - 16 * i : 16;
        __mmask16 lm = (__mmask16)((1u << n) - 1);
        uint64_t cm = n == 16 ? ~0ull : ((uint64_t)1 << (4 * n)) - 1;
        const uint8_t *src = xg + p0 + 16 * i;
        uint8_t *dst = b + i * kp * PANEL;
        for (int64_t k4 = 0; k4 < kp / 4; k4++) {
            __m512i v = _mm512_setzero_si512();
            if (4 * k4 < K) {
                const uint8_t *r = src + 4 * k4 * hw;
                __m128i r0 = _mm_maskz_loadu_epi8(lm, r), r1 = _mm_setzero_si128();
                __m128i r2 = _mm_setzero_si128(), r3 = _mm_setzero_si128();
                uint64_t m = cm;
                if (4 * k4 + 1 < K) r1 = _mm_maskz_loadu_epi8(lm, r + hw);
                if (4 * k4 + 2 < K) r2 = _mm_maskz_loadu_epi8(lm, r + 2 * hw);
                if (4 * k4 + 3 < K) r3 = _mm_maskz_loadu_epi8(lm, r + 3 * hw);
                else m &= 0x1111111111111111ull * ((1u << (K - 4 * k4)) - 1);
                v = _mm512_inserti32x4(_mm512_castsi128_si512(r0), r1, 1);
                v = _mm512_inserti32x4(_mm512_inserti32x4(v, r2, 2), r3, 3);
                v = _mm512_maskz_mov_epi8(m, _mm512_xor_si512(_mm512_permutexvar_epi8(ix, v), fl));
            }
            _mm512_storeu_si512(dst + k4 * 64, v);
        }
    }
}
#endif

#if defined(__x86_64__)
/* pack_conv for any kernel on larger maps: per group of 4 depth indices, each index's taps for
 * the panel's 16 columns lie in a 32-byte window of its plane (columns at most 31 bytes apart:
 * a panel inside one output row at stride 1 or 2, or rows close enough), so the four windows
 * are two registers and one vpermi2b interleaves the 64 bytes (byte 4l + e: window e, the
 * column's offset). Panels whose columns are further apart are packed byte by byte. */
TVBMI static void pack_rows_vbmi(const conv_job *j, const uint8_t *xg, int64_t p0, int64_t pn,
                                 int64_t npan, uint8_t *b) {
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    int64_t kp = q->kp, K = q->k, hw = j->hp * j->wp, wp = j->wp, sw = s->stride_w;
    const __m512i fl = _mm512_set1_epi8((char)q->x_flip);
    int64_t base[CHUNK], dv[CHUNK][16];
    uint8_t cols[CHUNK][64];
    uint64_t cm[CHUNK];
    int fast[CHUNK];
    for (int64_t i = 0, oy = p0 / s->ow, ox = p0 % s->ow; i < npan; i++) {
        int64_t n = pn - 16 * i < 16 ? pn - 16 * i : 16, top = 0;
        base[i] = oy * s->stride_h * wp + ox * sw;
        cm[i] = n == 16 ? ~0ull : ((uint64_t)1 << (4 * n)) - 1;
        for (int64_t l = 0; l < 16; l++) {
            int64_t d = 0;
            if (l < n) {
                d = oy * s->stride_h * wp + ox * sw - base[i];
                if (++ox == s->ow) ox = 0, oy++;
            }
            dv[i][l] = d;
            top = d > top ? d : top;
            for (int e = 0; e < 4; e++) cols[i][4 * l + e] = (uint8_t)(32 * e + (d < 32 ? d : 0));
        }
        fast[i] = top < 32;
    }
    int64_t c = 0, ki = 0, kj = 0; /* depth index 4 * k4 + e as (channel, kernel row, column) */
    for (int64_t k4 = 0; k4 < kp / 4; k4++) {
        const uint8_t *src[4];
        uint64_t m = ~0ull;
        for (int e = 0; e < 4; e++) {
            src[e] = xg + c * hw + ki * s->dilation_h * wp + kj * s->dilation_w;
            if (4 * k4 + e >= K) {
                src[e] = xg;
                m &= ~(0x1111111111111111ull << e);
            }
            if (++kj == s->kw) {
                kj = 0;
                if (++ki == s->kh) ki = 0, c++;
            }
        }
        for (int64_t i = 0; i < npan; i++) {
            uint8_t *dst = b + i * kp * PANEL + k4 * 64;
            if (4 * k4 >= K) {
                _mm512_storeu_si512(dst, _mm512_setzero_si512());
                continue;
            }
            if (fast[i]) {
                const uint8_t *end = j->xend;
                __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(load32_upto(src[0] + base[i], end)),
                                                load32_upto(src[1] + base[i], end), 1);
                __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(load32_upto(src[2] + base[i], end)),
                                                load32_upto(src[3] + base[i], end), 1);
                __m512i v = _mm512_permutex2var_epi8(lo, _mm512_loadu_si512(cols[i]), hi);
                _mm512_storeu_si512(dst, _mm512_maskz_mov_epi8(m & cm[i], _mm512_xor_si512(v, fl)));
                continue;
            }
            uint8_t w[64];
            for (int64_t l = 0; l < 16; l++)
                for (int e = 0; e < 4; e++) w[4 * l + e] = src[e][base[i] + dv[i][l]];
            __m512i v = _mm512_xor_si512(_mm512_loadu_si512(w), fl);
            _mm512_storeu_si512(dst, _mm512_maskz_mov_epi8(m & cm[i], v));
        }
    }
}
#endif

static void conv_chunk(void *ctx, int64_t t) {
    conv_job *j = ctx;
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    int64_t split = t % j->row_splits;
    t /= j->row_splits;
    int64_t plane = t / j->chunks_per_plane, ch = t % j->chunks_per_plane;
    int64_t img = plane / s->groups, g = plane % s->groups;
    int64_t P = s->oh * s->ow, cg = s->c / s->groups, og = s->o / s->groups;
    int64_t p0 = ch * CHUNK * PANEL, pn = P - p0 < CHUNK * PANEL ? P - p0 : CHUNK * PANEL;
    int64_t npan = (pn + PANEL - 1) / PANEL, kp = q->kp;
    uint8_t *b = wl_scratch(Q_SCRATCH, (size_t)(npan * kp * PANEL + 4 * CHUNK * PANEL + 64));
    if (!b) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    int32_t *colsum = q->wz ? (int32_t *)(b + align64(npan * kp * PANEL)) : NULL;
#if defined(__x86_64__)
    if (j->vbmi)
        pack_conv_vbmi(j, j->x + (img * s->c + g * cg) * j->hp * j->wp, p0, npan, b);
    else if (j->vbmi1x1 == 1)
        pack_1x1_vbmi(j, j->x + (img * s->c + g * cg) * j->hp * j->wp, p0, pn, npan, b);
    else if (j->vbmi1x1 == 2)
        pack_rows_vbmi(j, j->x + (img * s->c + g * cg) * j->hp * j->wp, p0, pn, npan, b);
    else
#endif
        pack_conv(j, j->x + (img * s->c + g * cg) * j->hp * j->wp, p0, pn, npan, b);
    if (colsum) {
        for (int64_t p = 0; p < pn; p++) {
            int32_t sum = 0;
            const uint8_t *col = b + (p / PANEL) * kp * PANEL + (p % PANEL) * 4;
            for (int64_t k4 = 0; k4 < (q->k + 3) / 4; k4++)
                for (int e = 0; e < 4; e++)
                    sum += q->x_packed_signed ? (int8_t)col[k4 * 64 + e] : col[k4 * 64 + e];
            colsum[p] = sum;
        }
    }
    /* this group's rows, and of them this split's share (whole tiles) */
    int64_t mr = split_rows(q), tiles = (og + mr - 1) / mr;
    int64_t r0 = tiles * split / j->row_splits * mr, r1 = tiles * (split + 1) / j->row_splits * mr;
    if (r1 > og) r1 = og;
    if (r0 >= r1) return;
    wl_qweights sub = *q;
    int64_t first = g * og + r0;
    sub.rows = r1 - r0;
    sub.w += first * kp;
    sub.comp += first;
    if (sub.wz) sub.wz += first;
    if (sub.scale) sub.scale += first;
    char *y = j->y + ((img * s->o + first) * P + p0) * esize(q);
    gemm_panels(&sub, b, colsum, npan, pn, y, P, 1);
}

/* the input with its padding written out (value: the zero point), so that packing never checks
 * bounds; planes of hp x wp */
typedef struct {
    const wl_qconv_params *s;
    const uint8_t *x;
    uint8_t *xp;
    int64_t hp, wp;
    uint8_t pad;
    uint8_t flip; /* xor applied to every copied byte (int8 read as uint8 by the VNNI depthwise) */
} pad_job;

static void flip_copy(uint8_t *restrict d, const uint8_t *restrict src, int64_t n, uint8_t flip) {
    for (int64_t i = 0; i < n; i++) d[i] = src[i] ^ flip;
}

static void pad_plane(void *ctx, int64_t t) {
    const pad_job *j = ctx;
    const wl_qconv_params *s = j->s;
    uint8_t *dst = j->xp + t * j->hp * j->wp;
    const uint8_t *src = j->x + t * s->h * s->w;
    memset(dst, j->pad ^ j->flip, (size_t)(j->hp * j->wp));
    for (int64_t y = 0; y < s->h && y + s->pad_top < j->hp; y++) {
        int64_t n = s->w < j->wp - s->pad_left ? s->w : j->wp - s->pad_left;
        uint8_t *d = dst + (y + s->pad_top) * j->wp + s->pad_left;
        if (j->flip)
            flip_copy(d, src + y * s->w, n, j->flip);
        else
            memcpy(d, src + y * s->w, (size_t)n);
    }
}

/* depthwise: one (image, channel) plane per task of the padded input, int32 rows accumulated
 * tap by tap (the tap loop compiled per vector width: widen, multiply, add) */
typedef struct {
    const wl_qconv_params *s;
    const wl_qweights *q;
    const uint8_t *x; /* padded planes of hp x wp */
    int64_t hp, wp;
    char *y;
    int failed;
    const struct dw_vbmi_plan *vbmi; /* the AVX-512 VBMI + VNNI kernel's plan, or NULL */
    int64_t per;                     /* planes per task */
} dw_job;

/* One output row of a depthwise plane, 16 columns at a time held in registers across the
 * taps (SW: the stride, a constant per instance so the loads vectorise), requantized in place. */
#define DW_BLOCK 16
static inline __attribute__((always_inline)) void dw_row_body(
    const wl_qweights *q, int64_t ch, const uint8_t *x, int64_t wp, int64_t kh, int64_t kw,
    int64_t dh, int64_t dw, int64_t ow, int64_t sw, int sgn, const int32_t *taps, char *y) {
    const int32_t base = q->dcomp[ch];
    for (int64_t o0 = 0; o0 < ow; o0 += DW_BLOCK) {
        int32_t acc[DW_BLOCK];
        for (int l = 0; l < DW_BLOCK; l++) acc[l] = base;
        int64_t n = ow - o0 < DW_BLOCK ? ow - o0 : DW_BLOCK;
        for (int64_t i = 0; i < kh; i++)
            for (int64_t jj = 0; jj < kw; jj++) {
                const uint8_t *r = x + i * dh * wp + jj * dw + o0 * sw;
                const int32_t wv = taps[i * kw + jj];
                /* a partial block computes all lanes too (the padded input has slack after
                 * its last plane), keeping every block on the vector path */
                if (sgn)
                    for (int l = 0; l < DW_BLOCK; l++) acc[l] += (int32_t)(int8_t)r[l * sw] * wv;
                else
                    for (int l = 0; l < DW_BLOCK; l++) acc[l] += (int32_t)r[l * sw] * wv;
            }
        store_row_body(q, ch, 0, 0, acc, NULL, n, y + o0 * (q->out == Q_S32 ? 4 : 1), 1);
    }
}
#define DW_ROW(NAME, SW, ...)                                                                  \
    __VA_ARGS__ static void NAME(const wl_qweights *q, int64_t ch, const uint8_t *x, int64_t wp, \
                                 int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ow,     \
                                 int64_t sw, int sgn, const int32_t *taps, char *y) {            \
        if (SW) dw_row_body(q, ch, x, wp, kh, kw, dh, dw, ow, SW, sgn, taps, y);                 \
        else dw_row_body(q, ch, x, wp, kh, kw, dh, dw, ow, sw, sgn, taps, y);                    \
    }
#define DW_ROWS(PREFIX, ...)                                                                   \
    DW_ROW(PREFIX##_s1, 1, __VA_ARGS__)                                                        \
    DW_ROW(PREFIX##_s2, 2, __VA_ARGS__)                                                        \
    DW_ROW(PREFIX##_sn, 0, __VA_ARGS__)                                                        \
    static void PREFIX(const wl_qweights *q, int64_t ch, const uint8_t *x, int64_t wp,          \
                       int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ow, int64_t sw,  \
                       int sgn, const int32_t *taps, char *y) {                                 \
        (sw == 1 ? PREFIX##_s1 : sw == 2 ? PREFIX##_s2 : PREFIX##_sn)(q, ch, x, wp, kh, kw, dh, \
                                                                      dw, ow, sw, sgn, taps, y); \
    }
DW_ROWS(dw_row_generic)
#if defined(__x86_64__)
/* x86: the same blocks written with intrinsics (gcc left the generic body scalar: one imul per
 * lane). LOAD(r) widens the block's 16 input bytes (r[l * sw]) to int32 lanes; stride 1 reads
 * 16 bytes, stride 2 widens 32 bytes to 16-bit lanes and keeps the low half of each pair (an
 * even byte), other strides gather through a small buffer. */
#define DW_X86_ROW(NAME, TARGET, VEC, LANES, SET1, ADD, MUL, EPILOGUE, LOAD_S1, LOAD_S2)          \
    TARGET static VEC NAME##_load(const uint8_t *r, int64_t sw, int sgn) {                      \
        if (sw == 1) return LOAD_S1;                                                            \
        if (sw == 2) return LOAD_S2;                                                            \
        uint8_t g[LANES];                                                                       \
        for (int l = 0; l < LANES; l++) g[l] = r[l * sw];                                       \
        r = g;                                                                                  \
        return LOAD_S1;                                                                         \
    }                                                                                           \
    TARGET static void NAME##_block(const wl_qweights *q, int64_t ch, const uint8_t *x, int64_t wp, \
                                    int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t n,  \
                                    int64_t sw, int sgn, const int32_t *taps, char *y) {        \
        VEC acc[DW_BLOCK / LANES];                                                              \
        for (int h = 0; h < DW_BLOCK / LANES; h++) acc[h] = SET1(q->dcomp[ch]);                 \
        for (int64_t i = 0; i < kh; i++)                                                        \
            for (int64_t jj = 0; jj < kw; jj++) {                                               \
                const uint8_t *r = x + i * dh * wp + jj * dw;                                   \
                VEC wv = SET1(taps[i * kw + jj]);                                               \
                for (int h = 0; h < DW_BLOCK / LANES; h++)                                      \
                    acc[h] = ADD(acc[h], MUL(NAME##_load(r + h * LANES * sw, sw, sgn), wv));    \
            }                                                                                   \
        EPILOGUE(q, ch, acc, n, y);                                                             \
    }                                                                                           \
    TARGET static void NAME(const wl_qweights *q, int64_t ch, const uint8_t *x, int64_t wp,     \
                            int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ow,          \
                            int64_t sw, int sgn, const int32_t *taps, char *y) {                \
        int es = q->out == Q_S32 ? 4 : 1;                                                       \
        for (int64_t o0 = 0; o0 < ow; o0 += DW_BLOCK)                                           \
            NAME##_block(q, ch, x + o0 * sw, wp, kh, kw, dh, dw,                                \
                         ow - o0 < DW_BLOCK ? ow - o0 : DW_BLOCK, sw, sgn, taps, y + o0 * es);  \
    }
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define T256 __attribute__((target("avx2,fma")))
/* The block's requantisation in one vector (store_row_body's arithmetic, the same float32
 * operations in the same order), written with a lane mask: no trip through memory */
T512 static void dw_store_avx512(const wl_qweights *q, int64_t ch, const __m512i *acc, int64_t n,
                                 char *y) {
    __mmask16 m = (__mmask16)((1u << n) - 1);
    if (q->out == Q_S32) _mm512_mask_storeu_epi32(y, m, acc[0]);
    else requant16_avx512(q, ch, acc[0], m, y);
}
T256 static void dw_store_avx2(const wl_qweights *q, int64_t ch, const __m256i *acc, int64_t n,
                               char *y) {
    int32_t out[DW_BLOCK];
    for (int h = 0; h < DW_BLOCK / 8; h++) _mm256_storeu_si256((__m256i *)(out + 8 * h), acc[h]);
    store_row_body(q, ch, 0, 0, out, NULL, n, y, 1);
}
#define LD16(r) _mm_loadu_si128((const __m128i *)(r))
#define LD32(r) _mm256_loadu_si256((const __m256i *)(r))
DW_X86_ROW(dw_row_avx512, T512, __m512i, 16, _mm512_set1_epi32, _mm512_add_epi32,
           _mm512_mullo_epi32, dw_store_avx512,
           sgn ? _mm512_cvtepi8_epi32(LD16(r)) : _mm512_cvtepu8_epi32(LD16(r)),
           sgn ? _mm512_srai_epi32(_mm512_slli_epi32(_mm512_cvtepi8_epi16(LD32(r)), 16), 16)
               : _mm512_and_si512(_mm512_cvtepu8_epi16(LD32(r)), _mm512_set1_epi32(0xffff)))
DW_X86_ROW(dw_row_avx2, T256, __m256i, 8, _mm256_set1_epi32, _mm256_add_epi32,
           _mm256_mullo_epi32, dw_store_avx2,
           sgn ? _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)r))
               : _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)r)),
           sgn ? _mm256_srai_epi32(_mm256_slli_epi32(_mm256_cvtepi8_epi16(LD16(r)), 16), 16)
               : _mm256_and_si256(_mm256_cvtepu8_epi16(LD16(r)), _mm256_set1_epi32(0xffff)))
#endif

/* Depthwise with AVX-512 VBMI + VNNI: an output's taps along a kernel row are consecutive bytes
 * of the input (stride and dilation apart), so one vpermb gathers, for 16 outputs, 4 taps'
 * bytes into each 32-bit lane from a 64-byte load, and one vpdpbusd multiplies them by the
 * channel's 4 weights (int8) and adds: a 3x3 kernel is 3 loads, 3 vpermb and 3 vpdpbusd per
 * 16 outputs. Needs the taps (w - w_zero) in int8 and uint8 input (int8 input is flipped by
 * the padding copy, the constant corrected by 128 * sum(taps)). Rows of 8 or more outputs run
 * in blocks along the row (one index vector; dw_rows_vbmi: several output rows at once);
 * planes of at most 64 bytes are one register (dw_tiny_vbmi); others run in blocks of 16 consecutive
 * outputs of the flattened plane (a block spans rows) when each block's reads fit 64 bytes,
 * with per-block index vectors made once per call. */
#define DW_VBMI_BLOCKS 16 /* flattened blocks per plane, at most */
#define DW_TINY_VECS 64 /* tiny planes: index vectors (blocks x kernel rows x groups), at most */
struct dw_vbmi_plan {
    int groups;   /* 4-tap groups per kernel row: (kw + 3) / 4, at most 2 */
    uint8_t widx[64]; /* a channel's taps (as bytes) to the VNNI words: word i * groups + g is
                       * taps (i, 4g .. 4g + 3), bytes past the kernel row zeroed (wmask) */
    uint64_t wmask;
    int tiny;     /* the unpadded plane fits one 64-byte load: per (block, kernel row, group) an
                   * index vector into it, 64 (vpermi2b's second table: the zero point) outside */
    uint8_t tidx[DW_TINY_VECS][64];
    int flat;     /* blocks over the flattened plane */
    int64_t nblk; /* flat: blocks per plane */
    uint8_t idx[DW_VBMI_BLOCKS][2][64];  /* flat: per block; rows: idx[0] */
    int64_t base[DW_VBMI_BLOCKS];        /* flat: the block's first input byte in the plane */
    int64_t need[DW_VBMI_BLOCKS];        /* flat: bytes read from there */
};

static int dw_vbmi_setup(const wl_qconv_params *s, const wl_qweights *q, int64_t wp,
                         struct dw_vbmi_plan *pl) {
#if defined(__x86_64__)
    if (!avx512_family(isa()) || !__builtin_cpu_supports("avx512vbmi") || !q->taps_s8) return 0;
    int64_t kw = s->kw, G = (kw + 3) / 4, span = s->dilation_w * (kw - 1);
    int64_t P = s->oh * s->ow, sw = s->stride_w;
    if (G > 2 || s->kh * G > 16) return 0;
    pl->groups = (int)G;
    pl->wmask = 0;
    for (int64_t m = 0; m < 64; m++) {
        int64_t i = m / 4 / G, g = m / 4 % G, t = 4 * g + m % 4;
        int ok = i < s->kh && t < kw;
        pl->widx[m] = (uint8_t)(ok ? i * kw + t : 0);
        pl->wmask |= (uint64_t)ok << m;
    }
    pl->tiny = 0;
    if (s->h * s->w <= 64 && (P + 15) / 16 * s->kh * G <= DW_TINY_VECS) {
        pl->tiny = 1;
        pl->flat = 0;
        pl->nblk = (P + 15) / 16;
        /* every output's first tap (row, column) without a division per entry: the setup runs
         * per call, and tiny planes are cheap enough for a division per byte to show */
        int64_t y0[16 * DW_TINY_VECS], x0[16 * DW_TINY_VECS];
        for (int64_t p = 0, oy = 0, ox = 0; p < 16 * pl->nblk; p++) {
            y0[p] = p < P ? oy * s->stride_h - s->pad_top : INT32_MIN;
            x0[p] = ox * sw - s->pad_left;
            if (++ox == s->ow) ox = 0, oy++;
        }
        for (int64_t b = 0; b < pl->nblk; b++)
            for (int64_t i = 0; i < s->kh; i++)
                for (int64_t g = 0; g < G; g++) {
                    uint8_t *ix = pl->tidx[(b * s->kh + i) * G + g];
                    for (int64_t l = 0; l < 16; l++) {
                        int64_t iy = y0[16 * b + l] + i * s->dilation_h;
                        for (int64_t e = 0; e < 4; e++) {
                            int64_t t = 4 * g + e, v = 64;
                            int64_t ix2 = x0[16 * b + l] + t * s->dilation_w;
                            if (t < kw && iy >= 0 && iy < s->h && ix2 >= 0 && ix2 < s->w) v = iy * s->w + ix2;
                            ix[4 * l + e] = (uint8_t)v;
                        }
                    }
                }
        return 1;
    }
    /* rows of 8 or more outputs run the rows path (its lanes half used at worst, and its
     * output rows share their input rows' loads) */
    if (s->ow < 8 && P <= 16 * DW_VBMI_BLOCKS) {
        int ok = 1;
        pl->nblk = (P + 15) / 16;
        for (int64_t b = 0; b < pl->nblk && ok; b++) {
            int64_t p0 = 16 * b, base = (p0 / s->ow) * s->stride_h * wp + (p0 % s->ow) * sw, top = 0;
            for (int64_t l = 0; l < 16; l++) {
                int64_t p = p0 + l, d = 0;
                if (p < P) d = (p / s->ow) * s->stride_h * wp + (p % s->ow) * sw - base;
                if (d + span > 63) ok = 0;
                top = d > top ? d : top;
                for (int64_t g = 0; g < G; g++)
                    for (int64_t e = 0; e < 4; e++)
                        pl->idx[b][g][4 * l + e] =
                            (uint8_t)(p < P && 4 * g + e < kw && ok ? d + s->dilation_w * (4 * g + e) : 0);
            }
            pl->base[b] = base;
            pl->need[b] = top + span + 1;
        }
        if (ok) {
            pl->flat = 1;
            return 1;
        }
    }
    if (15 * sw + span > 63) return 0;
    pl->flat = 0;
    for (int64_t l = 0; l < 16; l++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t e = 0; e < 4; e++)
                pl->idx[0][g][4 * l + e] = (uint8_t)(4 * g + e < kw ? sw * l + s->dilation_w * (4 * g + e) : 0);
    return 1;
#else
    (void)s, (void)q, (void)wp, (void)pl;
    return 0;
#endif
}

#if defined(__x86_64__)

/* the requantisation of requant16_avx512 with the channel's constants in registers */
typedef struct {
    __m512 s, lo, hi;
    __m512i yz;
    int out;
} dw_rq;

/* The input bytes under 16 outputs from column o0: where the window starts (ix0, may be negative),
   how many outputs it serves (n) and which of its bytes lie inside the row (the mask). */
TVBMI static inline __mmask64 dw_vbmi_window(const wl_qconv_params *s, int64_t o0, int64_t span, int64_t *n,
                                             int64_t *ix0) {
    *n = s->ow - o0 < 16 ? s->ow - o0 : 16;
    *ix0 = o0 * s->stride_w - s->pad_left;
    int64_t need = s->stride_w * (*n - 1) + span + 1, lo = *ix0 < 0 ? -*ix0 : 0;
    int64_t hi = s->w - *ix0 < need ? s->w - *ix0 : need;
    return hi > lo ? dw_vbmi_mask(hi) & ~dw_vbmi_mask(lo) : 0;
}

TVBMI static inline __attribute__((always_inline)) void dw_vbmi_store(const dw_rq *r, __m512i acc,
                                                                     int64_t n, char *y) {
    __mmask16 m = (__mmask16)((1u << n) - 1);
    if (r->out == Q_S32) {
        _mm512_mask_storeu_epi32(y, m, acc);
        return;
    }
    /* the clamped product rounded half to even by the conversion itself (embedded rounding:
     * whatever MXCSR says) */
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), r->s);
    f = _mm512_min_ps(_mm512_max_ps(f, r->lo), r->hi);
    __m512i v = _mm512_cvt_roundps_epi32(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_mask_cvtepi32_storeu_epi8(y, m, _mm512_add_epi32(v, r->yz));
}

/* Channel ch's taps as the kernel's words (int8, 4 a word: dw_vbmi_plan.widx) and its
 * constant: 4 masked loads of the int32 taps (k <= 64: at most 16 words of 4), narrowed to
 * bytes and permuted into place. */
TVBMI static inline __attribute__((always_inline)) __m512i dw_words(const dw_job *j, int64_t ch,
                                                                    int32_t *c0) {
    const wl_qweights *q = j->q;
    int64_t k = j->s->kh * j->s->kw;
    const int32_t *taps = q->taps + ch * k;
    __m512i bytes = _mm512_setzero_si512(), sum = _mm512_setzero_si512();
    for (int64_t h = 0; h * 16 < k; h++) {
        int64_t n = k - 16 * h < 16 ? k - 16 * h : 16;
        __m512i t = _mm512_maskz_loadu_epi32((__mmask16)((1u << n) - 1), taps + 16 * h);
        sum = _mm512_add_epi32(sum, t);
        __m128i b = _mm512_cvtepi32_epi8(t);
        if (h == 0) bytes = _mm512_inserti32x4(bytes, b, 0);
        else if (h == 1) bytes = _mm512_inserti32x4(bytes, b, 1);
        else if (h == 2) bytes = _mm512_inserti32x4(bytes, b, 2);
        else bytes = _mm512_inserti32x4(bytes, b, 3);
    }
    *c0 = q->dcomp[ch] - (q->x_signed ? 128 * _mm512_reduce_add_epi32(sum) : 0);
    return _mm512_maskz_permutexvar_epi8(j->vbmi->wmask, _mm512_loadu_si512(j->vbmi->widx), bytes);
}

/* U tiny planes t .. t + U - 1 (dw_vbmi_plan.tiny) side by side: each plane is one register
 * and its sums one accumulator chain per block, so the chains of U planes overlap (one plane
 * alone waits on its vpdpbusd chain); the index vectors are loaded once for all U */
TVBMI static inline __attribute__((always_inline)) void dw_tiny_vbmi_body(const dw_job *j,
                                                                          int64_t t, const int U) {
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    const struct dw_vbmi_plan *pl = j->vbmi;
    int64_t P = s->oh * s->ow, KH = s->kh, G = pl->groups;
    int es = esize(q);
    const __m512i fl = _mm512_set1_epi8(q->x_signed ? (char)0x80 : 0);
    const __m512i zraw = _mm512_xor_si512(_mm512_set1_epi8((char)q->x_zero_raw), fl);
    const __m512 lo = _mm512_set1_ps((float)(q->lo - q->y_zero)), hi = _mm512_set1_ps((float)(q->hi - q->y_zero));
    const __m512i yz = _mm512_set1_epi32(q->y_zero);
    uint32_t words[4][16] __attribute__((aligned(64)));
    __m512i v[4], c0[4];
    dw_rq rq[4];
    for (int u = 0; u < U; u++) {
        int64_t ch = (t + u) % s->c;
        int32_t c;
        _mm512_store_si512(words[u], dw_words(j, ch, &c));
        c0[u] = _mm512_set1_epi32(c);
        v[u] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(dw_vbmi_mask(s->h * s->w),
                                                        j->x + (t + u) * s->h * s->w), fl);
        rq[u] = (dw_rq){_mm512_set1_ps(q->out == Q_S32 ? 0.0f : q->scale[ch]), lo, hi, yz, q->out};
    }
    for (int64_t b = 0; b < pl->nblk; b++) {
        int64_t p0 = 16 * b, n = P - p0 < 16 ? P - p0 : 16;
        __m512i acc[4];
        for (int u = 0; u < U; u++) acc[u] = c0[u];
        for (int64_t m = 0; m < KH * G; m++) {
            const __m512i ix = _mm512_loadu_si512(pl->tidx[b * KH * G + m]);
            for (int u = 0; u < U; u++)
                acc[u] = _mm512_dpbusd_epi32(acc[u], _mm512_permutex2var_epi8(v[u], ix, zraw),
                                             _mm512_set1_epi32((int32_t)words[u][m]));
        }
        for (int u = 0; u < U; u++) dw_vbmi_store(&rq[u], acc[u], n, j->y + ((t + u) * P + p0) * es);
    }
}

TVBMI static void dw_tiny_vbmi(const dw_job *j, int64_t t0, int64_t t1) {
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) dw_tiny_vbmi_body(j, t, 4);
    for (; t < t1; t++) dw_tiny_vbmi_body(j, t, 1);
}

/* The unpadded rows path (dw_vbmi_plan: not tiny, not flat) for R output rows at a time at
 * vertical stride SH, no vertical dilation: the R rows read (R - 1) * SH + KH input rows, each
 * loaded and gathered once and multiplied into every output row it belongs to (one row at a
 * time loads and gathers each input row KH / SH times), and the R accumulators are independent
 * chains. Rows past the plane's last are computed from the zero point and not stored. */
TVBMI static inline __attribute__((always_inline)) void dw_rows_vbmi(
    const dw_job *j, const uint8_t *x, char *y, const int64_t KH, const int64_t G, const int SGN,
    const int R, const int64_t SH, const __m512i *wv, __m512i c0, const dw_rq *rq) {
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    const struct dw_vbmi_plan *pl = j->vbmi;
    const __m512i pm0 = _mm512_loadu_si512(pl->idx[0][0]), pm1 = _mm512_loadu_si512(pl->idx[0][1]);
    const __m512i zraw = _mm512_set1_epi8((char)q->x_zero_raw);
    const __m512i fl = _mm512_set1_epi8(q->x_signed ? (char)0x80 : 0);
    int64_t span = s->dilation_w * (s->kw - 1), H = s->h, W = s->w;
    int es = esize(q);
    const int64_t NR = (R - 1) * SH + KH;
    for (int64_t oy = 0; oy < s->oh; oy += R) {
        int64_t iy0 = oy * SH - s->pad_top;
        int inside[32];
        for (int64_t r = 0; r < NR; r++) inside[r] = iy0 + r >= 0 && iy0 + r < H;
        const uint8_t *xr = x + iy0 * W;
        for (int64_t o0 = 0; o0 < s->ow; o0 += 16) {
            int64_t n, ix0;
            __mmask64 lm = dw_vbmi_window(s, o0, span, &n, &ix0);
            __m512i acc[8];
            for (int u = 0; u < R; u++) acc[u] = c0;
            for (int64_t r = 0; r < NR; r++) {
                __m512i v = inside[r] ? _mm512_mask_loadu_epi8(zraw, lm, xr + r * W + ix0) : zraw;
                if (SGN) v = _mm512_xor_si512(v, fl);
                __m512i g0 = _mm512_permutexvar_epi8(pm0, v), g1 = g0;
                if (G > 1) g1 = _mm512_permutexvar_epi8(pm1, v);
                for (int u = 0; u < R; u++) {
                    int64_t i = r - u * SH;
                    if (i < 0 || i >= KH) continue;
                    acc[u] = _mm512_dpbusd_epi32(acc[u], g0, wv[i * G]);
                    if (G > 1) acc[u] = _mm512_dpbusd_epi32(acc[u], g1, wv[i * G + 1]);
                }
            }
            for (int u = 0; u < R && oy + u < s->oh; u++)
                dw_vbmi_store(rq, acc[u], n, y + ((oy + u) * s->ow + o0) * es);
        }
    }
}

/* one plane; KH / G constant in the instances the compiler unrolls (3x3), else the call's */
TVBMI static inline __attribute__((always_inline)) void dw_plane_vbmi_body(
    const dw_job *j, int64_t t, const int64_t KH, const int64_t G, const int SGN) {
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    const struct dw_vbmi_plan *pl = j->vbmi;
    int64_t ch = t % s->c, kw = s->kw, wp = j->wp, P = s->oh * s->ow;
    const uint8_t *x = j->x + t * j->hp * wp;
    int es = esize(q);
    char *y = j->y + t * P * es;
    uint32_t words[16] __attribute__((aligned(64)));
    int32_t c;
    _mm512_store_si512(words, dw_words(j, ch, &c));
    __m512i wv[16];
    for (int64_t m = 0; m < KH * G; m++) wv[m] = _mm512_set1_epi32((int32_t)words[m]);
    const __m512i c0 = _mm512_set1_epi32(c);
    dw_rq rq = {_mm512_set1_ps(q->out == Q_S32 ? 0.0f : q->scale[ch]),
                _mm512_set1_ps((float)(q->lo - q->y_zero)), _mm512_set1_ps((float)(q->hi - q->y_zero)),
                _mm512_set1_epi32(q->y_zero), q->out};
    if (!pl->flat && s->dilation_h == 1 && s->stride_h == 1) {
        dw_rows_vbmi(j, x, y, KH, G, SGN, 4, 1, wv, c0, &rq);
        return;
    }
    if (!pl->flat && s->dilation_h == 1 && s->stride_h == 2) {
        dw_rows_vbmi(j, x, y, KH, G, SGN, 2, 2, wv, c0, &rq);
        return;
    }
    if (!pl->flat) { /* the input unpadded: bytes outside it are the zero point (masked loads) */
        const __m512i pm0 = _mm512_loadu_si512(pl->idx[0][0]), pm1 = _mm512_loadu_si512(pl->idx[0][1]);
        const __m512i zraw = _mm512_set1_epi8((char)q->x_zero_raw);
        const __m512i fl = _mm512_set1_epi8(q->x_signed ? (char)0x80 : 0);
        int64_t span = s->dilation_w * (kw - 1), H = s->h, W = s->w;
        int64_t rstep = s->dilation_h * W;
        for (int64_t oy = 0; oy < s->oh; oy++) {
            char *yr = y + oy * s->ow * es;
            int64_t iy0 = oy * s->stride_h - s->pad_top;
            /* the kernel rows inside the input (others read the zero point) */
            int inside[16];
            for (int64_t i = 0; i < KH; i++) {
                int64_t iy = iy0 + i * s->dilation_h;
                inside[i] = iy >= 0 && iy < H;
            }
            const uint8_t *xr = x + iy0 * W;
            for (int64_t o0 = 0; o0 < s->ow; o0 += 16) {
                int64_t n, ix0;
                __mmask64 lm = dw_vbmi_window(s, o0, span, &n, &ix0);
                __m512i acc = c0;
                for (int64_t i = 0; i < KH; i++) {
                    __m512i v = inside[i] ? _mm512_mask_loadu_epi8(zraw, lm, xr + i * rstep + ix0) : zraw;
                    if (SGN) v = _mm512_xor_si512(v, fl);
                    acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(pm0, v), wv[i * G]);
                    if (G > 1)
                        acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(pm1, v), wv[i * G + 1]);
                }
                dw_vbmi_store(&rq, acc, n, yr + o0 * es);
            }
        }
        return;
    }
    int64_t rstep = s->dilation_h * wp;
    for (int64_t b = 0; b < pl->nblk; b++) {
        int64_t p0 = 16 * b, n = P - p0 < 16 ? P - p0 : 16;
        const __m512i ix0 = _mm512_loadu_si512(pl->idx[b][0]), ix1 = _mm512_loadu_si512(pl->idx[b][1]);
        __mmask64 lm = dw_vbmi_mask(pl->need[b]);
        const uint8_t *xb = x + pl->base[b];
        __m512i acc = c0;
        for (int64_t i = 0; i < KH; i++) {
            __m512i v = _mm512_maskz_loadu_epi8(lm, xb + i * rstep);
            acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(ix0, v), wv[i * G]);
            if (G > 1) acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(ix1, v), wv[i * G + 1]);
        }
        dw_vbmi_store(&rq, acc, n, y + p0 * es);
    }
}

TVBMI static void dw_plane_vbmi(const dw_job *j, int64_t t) {
    int64_t G = j->vbmi->groups;
    int sgn = j->q->x_signed && !j->vbmi->flat; /* the flat planes are flipped when padded */
    if (j->s->kh == 3 && G == 1) {
        if (sgn) dw_plane_vbmi_body(j, t, 3, 1, 1);
        else dw_plane_vbmi_body(j, t, 3, 1, 0);
    } else if (j->s->kh == 5 && G == 2) {
        dw_plane_vbmi_body(j, t, 5, 2, sgn);
    } else {
        dw_plane_vbmi_body(j, t, j->s->kh, G, sgn);
    }
}
#endif

static void dw_plane(const dw_job *j, int64_t t) {
#if defined(__x86_64__)
    if (j->vbmi) {
        dw_plane_vbmi(j, t);
        return;
    }
#endif
    const wl_qconv_params *s = j->s;
    const wl_qweights *q = j->q;
    int64_t ch = t % s->c;
    const uint8_t *x = j->x + t * j->hp * j->wp;
    const q_isa *a = isa();
    const int32_t *taps = q->taps + ch * s->kh * s->kw;
    int es = esize(q);
    for (int64_t oy = 0; oy < s->oh; oy++)
        a->dw_row(q, ch, x + oy * s->stride_h * j->wp, j->wp, s->kh, s->kw, s->dilation_h,
                  s->dilation_w, s->ow, s->stride_w, q->x_signed, taps,
                  j->y + ((t * s->oh + oy) * s->ow) * es);
}

/* task t: planes t * per .. (t + 1) * per - 1 */
static void dw_planes(void *ctx, int64_t t) {
    const dw_job *j = ctx;
    int64_t t0 = t * j->per, t1 = t0 + j->per < j->s->n * j->s->c ? t0 + j->per : j->s->n * j->s->c;
#if defined(__x86_64__)
    if (j->vbmi && j->vbmi->tiny) {
        dw_tiny_vbmi(j, t0, t1);
        return;
    }
#endif
    for (; t0 < t1; t0++) dw_plane(j, t0);
}

/* planes per task: a few tiny ones (their work is ~100 ns), one otherwise */
static int64_t dw_per(const wl_qconv_params *s) {
    int64_t pl = s->oh * s->ow * s->kh * s->kw, per = pl >= 1024 ? 1 : 4096 / (pl > 1 ? pl : 1);
    return per > 16 ? 16 : per;
}

/* Threads for an op of about `ns` nanoseconds on one thread: waking a helper thread costs
 * microseconds, so small ops (late layers of small models, squeeze-excitation convs) run on the
 * calling thread. */
#define Q_PARALLEL_NS 6000.0
static int q_threads(double ns, int nthreads) { return ns < Q_PARALLEL_NS ? 1 : nthreads; }

int wl_qconv(const wl_qconv_params *s, const wl_qweights *q, const uint8_t *x, void *y,
             int nthreads) {
    /* ~100 int8 MACs per ns in the GEMM, ~20 in the depthwise kernel (measured on AVX-512) */
    double macs = (double)s->n * s->o * s->oh * s->ow * (double)q->k;
    nthreads = q_threads(macs / (s->groups == s->c && s->groups > 1 ? 20.0 : 100.0), nthreads);
    /* every tap in bounds: the extent the last output's window reaches */
    int64_t hp = (s->oh - 1) * s->stride_h + (s->kh - 1) * s->dilation_h + 1;
    int64_t wp = (s->ow - 1) * s->stride_w + (s->kw - 1) * s->dilation_w + 1;
    const uint8_t *src = x;
    int depthwise = s->groups == s->c && s->c == s->o && s->groups > 1;
    struct dw_vbmi_plan plan;
    int vbmi = 0;
    /* depthwise always reads a padded copy: its last block may read up to a block past the
     * last row */
    if (depthwise) {
        int64_t wpad = wp < s->w + s->pad_left ? s->w + s->pad_left : wp;
        vbmi = dw_vbmi_setup(s, q, wpad, &plan);
    }
    if (vbmi && (plan.tiny || !plan.flat)) { /* reads the input as it is */
        dw_job j = {s, q, x, s->h, s->w, y, 0, &plan, dw_per(s)};
        wl_parallel_for((s->n * s->c + j.per - 1) / j.per, dw_planes, &j, nthreads);
        return 0;
    }
    if (depthwise || s->pad_top || s->pad_left || hp > s->h || wp > s->w) {
        if (hp < s->h + s->pad_top) hp = s->h + s->pad_top;
        if (wp < s->w + s->pad_left) wp = s->w + s->pad_left;
        size_t body = (size_t)(s->n * s->c * hp * wp), slack = (size_t)(DW_BLOCK * s->stride_w);
        uint8_t *xp = wl_scratch(Q_PAD_SCRATCH, body + slack + 64);
        if (!xp) return -1;
        memset(xp + body, 0, slack);
        pad_job pj = {s, x, xp, hp, wp, (uint8_t)q->x_zero_raw, (uint8_t)(vbmi && q->x_signed ? 0x80 : 0)};
        wl_parallel_for(s->n * s->c, pad_plane, &pj, nthreads);
        src = xp;
    } else {
        hp = s->h;
        wp = s->w;
    }
    if (depthwise) {
        dw_job j = {s, q, src, hp, wp, y, 0, vbmi ? &plan : NULL, dw_per(s)};
        wl_parallel_for((s->n * s->c + j.per - 1) / j.per, dw_planes, &j, nthreads);
        return j.failed ? -1 : 0;
    }
    int64_t P = s->oh * s->ow, chunks = (P + CHUNK * PANEL - 1) / (CHUNK * PANEL);
    int64_t tasks = s->n * s->groups * chunks, splits = 1;
    /* few columns (late layers): split the rows too, each task packing its columns again */
    int64_t tiles = (s->o / s->groups + split_rows(q) - 1) / split_rows(q);
    while (tasks * splits < 2 * nthreads && splits < tiles) splits++;
    struct pack_vbmi_plan pplan;
    int pv = pack_vbmi_setup(s, q, wp, &pplan);
    int pv1 = 0;
#if defined(__x86_64__)
    if (avx512_family(isa()) && !q->x_packed_signed && __builtin_cpu_supports("avx512vbmi"))
        pv1 = s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 && wp == s->ow ? 1
              /* whole panels inside output rows (a row straddling panel goes byte by byte) */
              : s->kh * s->kw > 1 && s->stride_w <= 2 && s->ow % 16 == 0                         ? 2
                                                                                                : 0;
#endif
    conv_job j = {s, q, src, hp, wp, y, chunks, splits, 0, pv ? &pplan : NULL,
                  src + s->n * s->c * hp * wp, pv1};
    wl_parallel_for(tasks * splits, conv_chunk, &j, nthreads);
    return j.failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------ matmul */

typedef struct {
    int64_t m;
    const wl_qweights *q;
    const uint8_t *a;
    char *y;
    int failed;
    int64_t row_splits; /* tasks per chunk of A's rows, each a share of the weight rows */
} mm_job;

static void mm_chunk(void *ctx, int64_t t) {
    mm_job *j = ctx;
    const wl_qweights *q = j->q;
    int64_t split = t % j->row_splits;
    t /= j->row_splits;
    int64_t m0 = t * CHUNK * PANEL, mn = j->m - m0 < CHUNK * PANEL ? j->m - m0 : CHUNK * PANEL;
    int64_t npan = (mn + PANEL - 1) / PANEL, kp = q->kp, K = q->k;
    uint8_t *b = wl_scratch(Q_SCRATCH, (size_t)(npan * kp * PANEL + 4 * CHUNK * PANEL + 64));
    if (!b) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    int32_t *colsum = q->wz ? (int32_t *)(b + align64(npan * kp * PANEL)) : NULL;
    uint32_t flip = (uint32_t)q->x_flip * 0x01010101u;
    int64_t ldw = kp * PANEL / 4, kw4 = K / 4; /* whole words of a row */
    /* rows of A become the columns of the panels: a row's 4 bytes of a depth group are one word */
    for (int64_t i = 0; i < npan * PANEL; i++) {
        uint32_t *dst = (uint32_t *)b + (i >> 4) * ldw + (i & 15);
        if (i >= mn) {
            for (int64_t k4 = 0; k4 < kp / 4; k4++) dst[k4 * 16] = 0;
            continue;
        }
        const uint8_t *row = j->a + (m0 + i) * K;
        for (int64_t k4 = 0; k4 < kw4; k4++) dst[k4 * 16] = (uint32_t)load4((const int8_t *)row + 4 * k4) ^ flip;
        if (kw4 < kp / 4) { /* the last partial group: the depth padding is 0 */
            uint32_t v = 0;
            for (int64_t e = 0; e < K - 4 * kw4; e++) v |= (uint32_t)(row[4 * kw4 + e] ^ (flip & 0xff)) << (8 * e);
            dst[kw4 * 16] = v;
        }
        for (int64_t k4 = (K + 3) / 4; k4 < kp / 4; k4++) dst[k4 * 16] = 0; /* AMX depth padding */
        if (colsum) {
            int32_t sum = 0;
            for (int64_t kk = 0; kk < K; kk++) {
                uint8_t v = row[kk] ^ (uint8_t)flip;
                sum += q->x_packed_signed ? (int8_t)v : v;
            }
            colsum[i] = sum;
        }
    }
    /* this split's share of the weight rows (whole tiles) */
    int64_t mr = split_rows(q), tiles = (q->rows + mr - 1) / mr;
    int64_t r0 = tiles * split / j->row_splits * mr, r1 = tiles * (split + 1) / j->row_splits * mr;
    if (r1 > q->rows) r1 = q->rows;
    if (r0 >= r1) return;
    wl_qweights sub = *q;
    sub.rows = r1 - r0;
    sub.w += r0 * kp;
    sub.comp += r0;
    if (sub.wz) sub.wz += r0;
    if (sub.scale) sub.scale += r0;
    gemm_panels(&sub, b, colsum, npan, mn, j->y + (m0 * q->rows + r0) * esize(q), 1, q->rows);
}

/* ---------------------------------------------------------------- matrix-vector (few rows of A)
 * AVX-512 VNNI: each of A's m <= GEMV_M rows (flipped to uint8 once) against 4 weight rows at a
 * time, 64 bytes of depth a step (masked at the end), the sums reduced per row and requantized
 * 16 weight rows (contiguous outputs) at a time; tasks take blocks of weight rows. The panels
 * would waste 15 of 16 columns on a single row. */
#define GEMV_M 4
#define GEMV_ROWS 64 /* weight rows per task */
typedef struct {
    int64_t m;
    const wl_qweights *q;
    const uint8_t *a; /* m rows of kp bytes, flipped, padded with 0 */
    const int32_t *colsum;
    char *y;
} gemv_job;

#if defined(__x86_64__)
#define TGEMV __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
TGEMV static void gemv_task(void *ctx, int64_t t) {
    const gemv_job *j = ctx;
    const wl_qweights *q = j->q;
    int64_t r0 = t * GEMV_ROWS, r1 = q->rows - r0 < GEMV_ROWS ? q->rows : r0 + GEMV_ROWS;
    int64_t kp = q->kp, m = j->m;
    int es = esize(q);
    int32_t sums[GEMV_M][GEMV_ROWS];
    for (int64_t r = r0; r < r1; r += 4) {
        int nr = (int)(r1 - r < 4 ? r1 - r : 4);
        __m512i acc[GEMV_M][4];
        for (int i = 0; i < GEMV_M; i++)
            for (int w = 0; w < 4; w++) acc[i][w] = _mm512_setzero_si512();
        for (int64_t k0 = 0; k0 < kp; k0 += 64) {
            __mmask64 lm = kp - k0 >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (kp - k0)) - 1);
            __m512i wv[4];
            for (int w = 0; w < 4; w++)
                wv[w] = w < nr ? _mm512_maskz_loadu_epi8(lm, q->w + (r + w) * kp + k0) : _mm512_setzero_si512();
            for (int i = 0; i < GEMV_M && i < m; i++) {
                __m512i xv = _mm512_maskz_loadu_epi8(lm, j->a + i * kp + k0);
                for (int w = 0; w < 4; w++) acc[i][w] = _mm512_dpbusd_epi32(acc[i][w], xv, wv[w]);
            }
        }
        for (int i = 0; i < GEMV_M && i < m; i++)
            for (int w = 0; w < nr; w++) sums[i][r - r0 + w] = _mm512_reduce_add_epi32(acc[i][w]);
    }
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512 lo = _mm512_set1_ps((float)(q->lo - q->y_zero)), hi = _mm512_set1_ps((float)(q->hi - q->y_zero));
    const __m512i yz = _mm512_set1_epi32(q->y_zero);
    for (int64_t i = 0; i < m; i++)
        for (int64_t r = r0; r < r1; r += 16) {
            int64_t n = r1 - r < 16 ? r1 - r : 16;
            __mmask16 m16 = (__mmask16)((1u << n) - 1);
            __m512i v = _mm512_add_epi32(_mm512_maskz_loadu_epi32(m16, sums[i] + (r - r0)),
                                         _mm512_maskz_loadu_epi32(m16, q->comp + r));
            if (q->wz)
                v = _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m16, q->wz + r),
                                                           _mm512_set1_epi32(j->colsum[i])));
            char *yo = j->y + (i * q->rows + r) * es;
            if (q->out == Q_S32) {
                _mm512_mask_storeu_epi32(yo, m16, v);
                continue;
            }
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_maskz_loadu_ps(m16, q->scale + r));
            f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
            f = _mm512_sub_ps(_mm512_add_ps(f, magic), magic);
            _mm512_mask_cvtepi32_storeu_epi8(yo, m16, _mm512_add_epi32(_mm512_cvttps_epi32(f), yz));
        }
}
#endif

static int gemv(int64_t m, const wl_qweights *q, const uint8_t *a, void *y, int nthreads) {
#if defined(__x86_64__)
    if (m > GEMV_M || !avx512_family(isa())) return 1;
    nthreads = q_threads((double)m * q->rows * q->kp / 30.0, nthreads);
    int64_t kp = q->kp, K = q->k;
    uint8_t *buf = wl_scratch(Q_PAD_SCRATCH, (size_t)(m * kp + 64));
    if (!buf) return -1;
    int32_t colsum[GEMV_M];
    uint8_t flip = (uint8_t)q->x_flip;
    for (int64_t i = 0; i < m; i++) {
        int32_t sum = 0;
        for (int64_t kk = 0; kk < kp; kk++) {
            uint8_t v = kk < K ? a[i * K + kk] ^ flip : 0;
            buf[i * kp + kk] = v;
            sum += v;
        }
        colsum[i] = sum;
    }
    gemv_job j = {m, q, buf, colsum, y};
    wl_parallel_for((q->rows + GEMV_ROWS - 1) / GEMV_ROWS, gemv_task, &j, nthreads);
    return 0;
#else
    (void)m, (void)q, (void)a, (void)y, (void)nthreads;
    return 1;
#endif
}

int wl_qmatmul(int64_t m, const wl_qweights *q, const uint8_t *a, void *y, int nthreads) {
    int g = gemv(m, q, a, y, nthreads);
    if (g <= 0) return g;
    nthreads = q_threads((double)m * q->rows * q->k / 100.0, nthreads);
    int64_t chunks = (m + CHUNK * PANEL - 1) / (CHUNK * PANEL), splits = 1;
    /* few rows of A (a transformer's tokens): split the weight rows too */
    int64_t tiles = (q->rows + split_rows(q) - 1) / split_rows(q);
    while (chunks * splits < 2 * nthreads && splits < tiles) splits++;
    mm_job j = {m, q, a, y, 0, splits};
    wl_parallel_for(chunks * splits, mm_chunk, &j, nthreads);
    return j.failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------ two inputs */

#define Q_DYN_SCRATCH 1 /* the calling thread's: b's rows and their packing (wl_qmatmul uses 0, 4) */

int wl_qmatmul_dyn(const wl_qmatmul_params *p, const uint8_t *a, const uint8_t *b, void *y,
                   int nthreads) {
    int64_t M = p->m, K = p->k, N = p->n;
    int es = p->out == Q_S32 ? 4 : 1;
    size_t rows_bytes = (size_t)align64(N * K), par = (size_t)align64(8 * N);
    size_t wbytes = (size_t)wl_q_weight_bytes(N, K);
    char *buf = wl_scratch(Q_DYN_SCRATCH, rows_bytes + par + wbytes + 128);
    if (!buf) return -1;
    uint8_t *rows = (uint8_t *)buf;
    int32_t *wz = (int32_t *)(buf + rows_bytes);
    float *scale = (float *)(wz + N);
    char *mem = buf + rows_bytes + par;
    mem += (64 - ((uintptr_t)mem & 63)) & 63;
    for (int64_t r = 0; r < N; r++) {
        wz[r] = (int32_t)p->w_zero;
        scale[r] = p->scale;
    }
    for (int64_t t = 0; t < p->batch; t++) {
        const uint8_t *bt = b + t * K * N, *w = bt;
        if (!p->trans_b) { /* (k, n) -> the rows (n, k) */
            for (int64_t kk = 0; kk < K; kk++)
                for (int64_t r = 0; r < N; r++) rows[r * K + kk] = bt[kk * N + r];
            w = rows;
        }
        wl_qweights q;
        wl_q_pack_weights(&q, mem, w, (int)p->w_signed, N, K, wz, NULL, (int32_t)p->x_zero,
                          (int)p->x_signed, p->out == Q_S32 ? NULL : scale, (int32_t)p->y_zero,
                          (int32_t)p->lo, (int32_t)p->hi, (int)p->out, M);
        if (wl_qmatmul(M, &q, a + t * M * K, (char *)y + t * M * N * es, nthreads)) return -1;
    }
    return 0;
}
