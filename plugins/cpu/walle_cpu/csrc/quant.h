/* int8 convolution and matrix product (qgemm.c): 8-bit activations times int8 weights,
 * accumulated exactly in int32, then requantized (onnxruntime's arithmetic) or stored as int32.
 *
 * The weights are the rows of a GEMM (output channels of a conv, columns of a MatMul's B) and
 * are packed once (wl_q_pack_weights); activations are packed per run into panels of 16 columns
 * [k/4][16][4] (im2col for a conv) that every variant reads the same way:
 *   AVX-512 VNNI / AVX-VNNI: vpdpbusd (u8 panels x broadcast s8 weights -> s32, no saturation),
 *   AVX2: zero/sign-extended to s16 and vpmaddwd (exact: no vpmaddubsw s16 saturation),
 *   NEON: sdot (activations packed as s8 by flipping the top bit, the zero point moved by 128),
 *   scalar: plain loops.
 * Zero points: with the weight rows' sums folded into a per-row constant at packing time and the
 * activation columns' sums (only when a weight zero point is not 0) taken while packing,
 *   sum (x - xz)(w - wz) = dot(x, w) - wz * colsum(x) + [bias - xz * rowsum(w) + k * xz * wz].
 */
#ifndef WALLE_CPU_QUANT_H
#define WALLE_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

enum wl_q_out { Q_U8 = 0, Q_S8 = 1, Q_S32 = 2 };

/* Weights packed by wl_q_pack_weights for the variant active at packing time. */
typedef struct {
    int64_t rows, k, kp;  /* kp: k rounded up to a multiple of 4 */
    const int8_t *w;      /* rows x kp, signed */
    const int32_t *comp;  /* rows: bias - xz * rowsum(w) + k * xz * wz (packed domain) */
    const int32_t *wz;    /* rows: weight zero points (packed domain); NULL when all 0 */
    const int32_t *taps;  /* rows x k: w - wz as int32 (the depthwise kernel's form) */
    const int32_t *dcomp; /* rows: bias - xz * sum(taps) (the depthwise kernel's constant) */
    const float *scale;   /* rows: x_scale * w_scale / y_scale; NULL: int32 output */
    int32_t x_zero;       /* the activations' zero point in the packed domain */
    int32_t x_zero_raw;   /* ... and as given (padding value of the depthwise kernel) */
    int32_t x_flip;       /* 0 or 0x80: xor applied to activation bytes when packing */
    int32_t x_signed;     /* the activations are int8 (else uint8) */
    int32_t x_packed_signed; /* panels hold int8 (NEON sdot) rather than uint8 */
    int32_t y_zero, lo, hi, out; /* requantisation: zero point, clamp bounds, enum wl_q_out */
} wl_qweights;

/* Bytes of the arrays wl_q_pack_weights fills, for rows x k weights. */
int64_t wl_q_weight_bytes(int64_t rows, int64_t k);
/* Packs rows x k weights (int8, or uint8 when w_signed is 0; row r at w + r * k) with their
 * per-row zero points and int32 bias (NULL: 0), for activations of signedness x_signed and
 * zero point x_zero. `mem` holds wl_q_weight_bytes(rows, k) bytes (64-aligned) and must outlive
 * `q`; scale (rows floats, NULL for int32 output) is referenced, not copied. */
void wl_q_pack_weights(wl_qweights *q, void *mem, const void *w, int w_signed, int64_t rows,
                       int64_t k, const int32_t *w_zero, const int32_t *bias, int32_t x_zero,
                       int x_signed, const float *scale, int32_t y_zero, int32_t lo, int32_t hi,
                       int out);

/* NCHW convolution of 8-bit x (n, c, h, w) into y (n, o, oh, ow); weights packed with
 * rows = o and k = c / groups * kh * kw. Depthwise (c == groups == o) runs a direct kernel. */
typedef struct {
    int64_t n, c, h, w, o, oh, ow, kh, kw;
    int64_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups;
} wl_qconv_shape;
void wl_qconv(const wl_qconv_shape *s, const wl_qweights *q, const uint8_t *x, void *y,
              int nthreads);

/* y (m x n) = a (m x k, 8-bit rows) times B, with B's n columns packed as the rows of q. */
void wl_qmatmul(int64_t m, const wl_qweights *q, const uint8_t *a, void *y, int nthreads);

/* The int8 variant in use: "avx512vnni", "avxvnni", "avx2", "neon-dot" or "scalar". */
const char *wl_q_isa_name(void);
/* Force a variant (tests, benchmarks; "auto": the best this CPU runs). 0, or -1 when the CPU
 * lacks it. Weights packed before the switch must be packed again. */
int wl_q_set_isa(const char *name);

/* the thread pool (threadpool.c) */
void wl_parallel_for(int64_t n, void (*fn)(void *ctx, int64_t i), void *ctx, int nthreads);
void *wl_scratch(int which, size_t bytes);

#endif
