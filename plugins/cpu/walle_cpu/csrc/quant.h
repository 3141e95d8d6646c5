/* int8 convolution and matrix product (qgemm.c): 8-bit activations times int8 weights,
 * accumulated exactly in int32, then requantized (onnxruntime's arithmetic) or stored as int32.
 * The descriptor side (wl_qweights, the parameter structs, packing) is in wl.h.
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

#include "internal.h"

/* Both return 0, or -1 when a thread could not get its scratch memory. */
int wl_qconv(const wl_qconv_params *s, const wl_qweights *q, const uint8_t *x, void *y,
             int nthreads);
int wl_qmatmul(int64_t m, const wl_qweights *q, const uint8_t *a, void *y, int nthreads);
/* both operands 8-bit inputs (wl_qmatmul_params with dyn): b packed per run and batch */
int wl_qmatmul_dyn(const wl_qmatmul_params *p, const uint8_t *a, const uint8_t *b, void *y,
                   int nthreads);

#endif
