/* Element-wise ops of int8 models, one pass each instead of a chain of casts and float ops:
 * per-tensor QuantizeLinear / DequantizeLinear (the quantize_linear / dequantize_linear
 * composites, WL_QLOOKUP modes 1 and 2), the qlinear_lookup composite (a 256-entry table: QLinearSigmoid, QLinearLeakyRelu, the QDQ
 * rewrite's lookups) and qlinear_binary (QLinearAdd / QLinearMul of same-shape operands, or b
 * broadcast: one b per run of `inner` elements, b[(i / inner) % nb]), in
 * float32 exactly as their expansions compute (no fused multiply-add: plain C, no FMA target). */
#include "internal.h"

#define GRAIN 16384 /* elements per task */

typedef struct {
    const wl_op *op;
    const uint8_t *a, *b;
    uint8_t *y;
} q_ew;

#if defined(__x86_64__)
#include <immintrin.h>

/* 64 bytes a step: the 256-entry table in four registers, two vpermi2b (entries 0-127 and
 * 128-255, by the low 7 bits) and a blend by the top bit */
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) static void lookup_vbmi(
    const uint8_t *table, const uint8_t *a, uint8_t *y, int64_t n, uint8_t flip) {
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    const __m512i fl = _mm512_set1_epi8((char)flip);
    for (int64_t i = 0; i < n; i += 64) {
        __mmask64 m = n - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - i)) - 1);
        __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, a + i), fl);
        __m512i lo = _mm512_permutex2var_epi8(t0, x, t1), hi = _mm512_permutex2var_epi8(t2, x, t3);
        _mm512_mask_storeu_epi8(y + i, m, _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), lo, hi));
    }
}
#endif

static void lookup_task(void *vp, int64_t t) {
    const q_ew *c = vp;
    const wl_qlookup_params *p = &c->op->qlookup;
    const uint8_t *table = c->op->aux, flip = (uint8_t)p->flip;
    int64_t i0 = t * GRAIN, i1 = i0 + GRAIN < p->n ? i0 + GRAIN : p->n;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw")) {
        lookup_vbmi(table, c->a + i0, c->y + i0, i1 - i0, flip);
        return;
    }
#endif
    for (int64_t i = i0; i < i1; i++) c->y[i] = table[c->a[i] ^ flip];
}

/* QuantizeLinear / DequantizeLinear of one tensor with per-tensor parameters (modes 1, 2):
 * the expansion's float32 operations (x / scale; (float)(x - zero) * scale), rounding half to
 * even; clamped before rounding to the output range less the zero point (the same integers as
 * rounding, adding the zero point and clamping; NaN gives lo) */
#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl"), optimize("fp-contract=off"))) static void
convert_avx512(const wl_qlookup_params *p, const void *x, void *y, int64_t i0, int64_t i1) {
    const __m512 s = _mm512_set1_ps(p->scale), magic = _mm512_set1_ps(12582912.0f);
    const __m512i z = _mm512_set1_epi32((int)p->zero);
    if (p->mode == 1) {
        const __m512 lo = _mm512_set1_ps((float)(p->lo - p->zero)), hi = _mm512_set1_ps((float)(p->hi - p->zero));
        for (int64_t i = i0; i < i1; i += 16) {
            __mmask16 m = i1 - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (i1 - i)) - 1);
            __m512 f = _mm512_div_ps(_mm512_maskz_loadu_ps(m, (const float *)x + i), s);
            f = _mm512_min_ps(_mm512_max_ps(f, lo), hi); /* maxps(NaN, lo) is lo */
            f = _mm512_sub_ps(_mm512_add_ps(f, magic), magic);
            _mm512_mask_cvtepi32_storeu_epi8((uint8_t *)y + i, m, _mm512_add_epi32(_mm512_cvttps_epi32(f), z));
        }
        return;
    }
    for (int64_t i = i0; i < i1; i += 16) {
        __mmask16 m = i1 - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (i1 - i)) - 1);
        __m128i b = _mm_maskz_loadu_epi8(m, (const uint8_t *)x + i);
        __m512i v = p->flip ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
        _mm512_mask_storeu_ps((float *)y + i, m, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, z)), s));
    }
}
#endif

typedef struct {
    const wl_qlookup_params *p;
    const void *x;
    void *y;
} q_convert;

__attribute__((optimize("fp-contract=off"))) static void convert_task(void *vp, int64_t t) {
    const q_convert *c = vp;
    const wl_qlookup_params *p = c->p;
    int64_t i0 = t * GRAIN, i1 = i0 + GRAIN < p->n ? i0 + GRAIN : p->n;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        convert_avx512(p, c->x, c->y, i0, i1);
        return;
    }
#endif
    const float s = p->scale, magic = 12582912.0f;
    const int32_t z = (int32_t)p->zero;
    if (p->mode == 1) {
        const float lo = (float)(p->lo - p->zero), hi = (float)(p->hi - p->zero);
        for (int64_t i = i0; i < i1; i++) {
            float f = ((const float *)c->x)[i] / s;
            f = f >= lo ? f : lo;
            f = f <= hi ? f : hi;
            ((uint8_t *)c->y)[i] = (uint8_t)((int32_t)((f + magic) - magic) + z);
        }
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        int32_t v = p->flip ? ((const int8_t *)c->x)[i] : ((const uint8_t *)c->x)[i];
        ((float *)c->y)[i] = (float)(v - z) * s;
    }
}

int wl_qlookup_op(const wl_op *op, const wl_exec *ex) {
    if (op->qlookup.mode) {
        q_convert c = {&op->qlookup, wl_in(op, ex, 0), wl_out(op, ex)};
        wl_parallel_for((op->qlookup.n + GRAIN - 1) / GRAIN, convert_task, &c,
                        op->qlookup.n < (1 << 16) ? 1 : ex->nthreads);
        return 0;
    }
    q_ew c = {op, (const uint8_t *)wl_in(op, ex, 0), NULL, (uint8_t *)wl_out(op, ex)};
    /* ~64 bytes per few cycles: waking a helper thread only pays for large tensors */
    wl_parallel_for((op->qlookup.n + GRAIN - 1) / GRAIN, lookup_task, &c,
                    op->qlookup.n < (1 << 18) ? 1 : ex->nthreads);
    return 0;
}

static inline float q_val(const uint8_t *x, int64_t i, int sgn) {
    return sgn ? (float)(int8_t)x[i] : (float)x[i];
}

#if defined(__x86_64__)
/* 16 elements a step (the tail under a lane mask), the scalar loop's float32 operations in the
 * same order; fp-contract off: no fused multiply-add may change a result of the expansion */
#define Q_LOAD16(X, M, SGN, Z, R)                                                               \
    _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps((SGN) ? _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(M, X)) \
                                                         : _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(M, X))), \
                                Z),                                                             \
                  R)
__attribute__((target("avx512f,avx512bw,avx512vl"), optimize("fp-contract=off"))) static void
binary_avx512(const q_ew *c, int64_t i0, int64_t i1, float lo, float hi) {
    const wl_qbinary_params *p = &c->op->qbinary;
    const __m512 az = _mm512_set1_ps((float)p->a_zero), bz = _mm512_set1_ps((float)p->b_zero);
    const __m512 cz = _mm512_set1_ps((float)p->c_zero), magic = _mm512_set1_ps(12582912.0f);
    const __m512 ra = _mm512_set1_ps((float)p->ra), rb = _mm512_set1_ps((float)p->rb);
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    const __m512 olo = _mm512_set1_ps((float)p->lo), ohi = _mm512_set1_ps((float)p->hi);
    const int as = (int)p->a_signed, bs = (int)p->b_signed, mul = (int)p->mul;
    const int64_t inner = p->inner, nb = p->nb;
    for (int64_t i = i0; i < i1;) {
        /* same shape: the whole range; b repeated (inner 1): up to the end of b, read from
         * b + i % nb; b broadcast: the run of a's elements sharing b[(i / inner) % nb] */
        int64_t end = i1;
        int64_t boff = 0; /* b's element for a's element i is b[i - boff] (inner 1) */
        __m512 vbb = _mm512_setzero_ps();
        if (inner > 1) {
            int64_t jb = i / inner;
            end = (jb + 1) * inner < i1 ? (jb + 1) * inner : i1;
            vbb = _mm512_set1_ps((q_val(c->b, jb % nb, bs) - (float)p->b_zero) * (float)p->rb);
        } else if (nb != p->n) {
            end = i + (nb - i % nb) < i1 ? i + (nb - i % nb) : i1;
            boff = i - i % nb;
        }
        for (; i < end; i += 16) {
            __mmask16 m = end - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (end - i)) - 1);
            __m512 va = Q_LOAD16(c->a + i, m, as, az, ra);
            __m512 vb = inner > 1 ? vbb : Q_LOAD16(c->b + (i - boff), m, bs, bz, rb);
            __m512 v = mul ? _mm512_mul_ps(va, vb) : _mm512_add_ps(va, vb);
            v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
            __m512 r = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(v, magic), magic), cz);
            r = _mm512_min_ps(_mm512_max_ps(r, olo), ohi);
            _mm512_mask_cvtepi32_storeu_epi8(c->y + i, m, _mm512_cvttps_epi32(r));
        }
        i = end;
    }
}
#endif

static void binary_task(void *vp, int64_t t) {
    const q_ew *c = vp;
    const wl_qbinary_params *p = &c->op->qbinary;
    const float az = (float)p->a_zero, bz = (float)p->b_zero, cz = (float)p->c_zero;
    const float ra = (float)p->ra, rb = (float)p->rb, magic = 12582912.0f;
    /* clamped one past the output range before rounding (exact with the 1.5 * 2^23 trick);
     * the final clamp gives the same integers as rounding first */
    const float lo = (float)p->lo - cz - 1.0f, hi = (float)p->hi - cz + 1.0f;
    const int as = (int)p->a_signed, bs = (int)p->b_signed, mul = (int)p->mul;
    int64_t i0 = t * GRAIN, i1 = i0 + GRAIN < p->n ? i0 + GRAIN : p->n;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        binary_avx512(c, i0, i1, lo, hi);
        return;
    }
#endif
    for (int64_t i = i0; i < i1; i++) {
        float va = (q_val(c->a, i, as) - az) * ra;
        float vb = (q_val(c->b, (i / p->inner) % p->nb, bs) - bz) * rb;
        float v = mul ? va * vb : va + vb;
        v = v < lo ? lo : v > hi ? hi : v;
        float r = ((v + magic) - magic) + cz;
        r = r < (float)p->lo ? (float)p->lo : r > (float)p->hi ? (float)p->hi : r;
        c->y[i] = (uint8_t)(int32_t)r;
    }
}

int wl_qbinary_op(const wl_op *op, const wl_exec *ex) {
    q_ew c = {op, (const uint8_t *)wl_in(op, ex, 0), (const uint8_t *)wl_in(op, ex, 1),
              (uint8_t *)wl_out(op, ex)};
    wl_parallel_for((op->qbinary.n + GRAIN - 1) / GRAIN, binary_task, &c,
                    op->qbinary.n < (1 << 16) ? 1 : ex->nthreads);
    return 0;
}
