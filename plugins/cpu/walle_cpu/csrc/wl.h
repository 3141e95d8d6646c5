/* Walle CPU backend: the one header shared by C and Python.
 *
 * A prepared program is an array of wl_op descriptors. Operands are (slot, byte offset) pairs:
 * slot 0 is the run's arena, the others are program inputs, outputs and constants whose base
 * pointers the caller binds per run. wl_run walks the array in one call.
 *
 * Everything between the two cffi markers is read by _build.py as the cffi cdef (plain
 * declarations only), so Python fills `d.conv.stride_h` and reads `lib.U_RELU` from the same
 * text the kernels are compiled against. Kernels find their op's parameters in the member of
 * the descriptor's union named after the op kind. */
#ifndef WALLE_CPU_WL_H
#define WALLE_CPU_WL_H

#include <stddef.h>
#include <stdint.h>

/* ---- cffi: begin ---- */
enum wl_kind { WL_RASTER = 1, WL_UNARY, WL_BINARY, WL_SELECT, WL_CAST, WL_REDUCE, WL_MATMUL,
               WL_CONV, WL_POOL, WL_GATHER, WL_SORT, WL_CHAIN, WL_LSTM_CELL, WL_SOFTMAX,
               WL_QCONV, WL_QMATMUL, WL_QLOOKUP, WL_QBINARY, WL_RECURRENT, WL_LAYER_NORM,
               WL_DECONV, WL_KIND_COUNT };
enum wl_dtype { D_F32 = 0, D_F64, D_F16, D_I8, D_I16, D_I32, D_I64, D_U8, D_U16, D_U32, D_U64,
                D_BOOL };

enum wl_unary_fn {
    U_IDENTITY = 0, U_ABS, U_NEG, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_RECIPROCAL, U_SIN, U_COS,
    U_TAN, U_ASIN, U_ACOS, U_ATAN, U_SINH, U_COSH, U_TANH, U_ASINH, U_ACOSH, U_ATANH, U_SIGMOID,
    U_RELU, U_ERF, U_FLOOR, U_CEIL, U_ROUND, U_SIGN, U_NOT, U_ISNAN, U_ISINF, U_ISPOSINF,
    U_ISNEGINF, U_SOFTPLUS, U_SOFTSIGN, U_GELU, U_GELU_TANH, U_HARDSWISH, U_HARDSIGMOID,
    U_LEAKY_RELU, U_ELU, U_SELU, U_CELU, U_CLIP, U_MISH, U_THRESHOLDED_RELU, U_BITWISE_NOT
};

enum wl_binary_fn {
    B_ADD = 0, B_SUB, B_MUL, B_DIV, B_POW, B_MAX, B_MIN, B_MOD, B_FMOD, B_EQ, B_LT, B_LE, B_GT,
    B_GE, B_AND, B_OR, B_XOR, B_BITAND, B_BITOR, B_BITXOR, B_SHL, B_SHR, B_ATAN2
};

enum wl_reduce_fn { R_SUM = 0, R_PROD, R_MAX, R_MIN, R_ARGMAX, R_ARGMIN, R_CUMSUM, R_CUMPROD };
enum wl_pool_fn { P_MAX = 0, P_AVG, P_LP, P_RESIZE }; /* P_RESIZE: see wl_pool_params */
enum wl_scatter_reduction { S_NONE = 0, S_ADD, S_MUL, S_MAX, S_MIN };
enum wl_conv_algo { C_IM2COL = 0, C_1X1, C_DEPTHWISE, C_WINOGRAD, C_NCHWC, C_WINOGRAD_NCHWC };

#define WL_MAX_DIMS 8
#define WL_MAX_OPERANDS 5
#define WL_BLK 16

typedef struct { int32_t slot; int32_t pad; int64_t off; } wl_ref;

/* An activation applied in a kernel's epilogue: a unary function code and its parameters. */
typedef struct { int64_t fn; double prm[8]; } wl_act;

/* Raster: aux holds int64 regions[n_regions][12] = (input, src offset, 3 src strides,
 * dst offset, 3 dst strides, 3 sizes); with has_fill the output is first filled with the
 * element whose bytes are `fill`. */
typedef struct { int64_t n_regions, esize, has_fill, total, fill; } wl_raster_params;

/* Unary: n elements; fn is the descriptor's fn, dtype its input dtype. */
typedef struct { int64_t n, esize_in, esize_out; double prm[8]; } wl_unary_params;

/* Binary, Select and fused chains: an N-D loop over the output (rows are the last axis), with
 * per-operand element strides (0: broadcast). A chain's steps are aux (int64 [n_steps][4] =
 * (kind, fn, operand, unused)) and its unary parameters aux2 (double [n_steps][4]). */
typedef struct {
    int64_t ndim, shape[WL_MAX_DIMS], strides[WL_MAX_OPERANDS][WL_MAX_DIMS];
    int64_t rows, esize_in, esize_out, n_steps;
} wl_nd_params;

typedef struct { int64_t n; } wl_cast_params;

/* Reduce over the middle axis of (outer, n, inner); last_index: arg* keep the last extremum. */
typedef struct { int64_t outer, n, inner, last_index; } wl_reduce_params;

/* MatMul: batch x (m x k) @ (k x n); ins = (a, b, [bias], [residual]). With `packed`, aux holds
 * B packed into panels of packed_nr columns by wl_pack_b. `residual` is the index in ins of a
 * residual of the output's shape (0: none), added after the bias and before `act`. */
typedef struct {
    int64_t batch, m, n, k, trans_a, trans_b, a_batch_stride, b_batch_stride;
    int64_t has_bias, bias_full, packed, packed_nr, residual;
    wl_act act;
} wl_matmul_params;

/* Conv2D (NCHW, or NCHW16c with algo C_NCHWC); ins = (x, w, [bias], [residual]). `residual`
 * as for MatMul. Winograd: aux holds the transformed weights for GEMM panels of packed_nr;
 * blocked Winograd (C_WINOGRAD_NCHWC): as the blocked conv's, but aux the transformed weights
 * and packed_nr the output tile (4 or 2: F(4x4, 3x3) or F(2x2, 3x3), winograd_blocked.c).
 * Blocked: aux the packed weights, aux2 the bias padded to whole blocks, blocked_input 0 when
 * the input is a plain NCHW tensor of few channels, filter_blocks per packed weight group;
 * with prelu, aux2 goes on with the per-channel PRelu slopes padded to whole blocks, applied
 * last in the epilogue (the activation is then the identity). blockdiag: a grouped conv whose
 * groups of g (16 % g == 0) input and output channels lie within 16-channel blocks, run as one
 * dense 16 x 16 conv per block (filter_blocks 1; weights zero across groups): output block b
 * reads input block b only. */
typedef struct {
    int64_t n, c, h, w, o, oh, ow, kh, kw;
    int64_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups, has_bias;
    int64_t residual, packed_nr, blocked_input, filter_blocks, prelu, blockdiag;
    wl_act act;
} wl_conv_params;
/* WL_DECONV (deconv.c) reads wl_conv_params too: a transposed conv of blocked x (n, c, h, w)
 * into blocked y (n, o, oh, ow), kernel kh x kw, strides, pad_top / pad_left the begin pads
 * (crop), act relu / clip or identity; aux the weights (ob, kh, kw, cb, 16 ci, 16 co), aux2 the
 * bias padded to whole blocks. */

/* Pool2D; fn is the descriptor's fn (enum wl_pool_fn), lp the norm's p; blocked: NCHW16c.
 * fn P_RESIZE: a separable 2-D resize (h, w) -> (oh, ow), kh 1 (nearest) or 2 (linear) taps:
 * aux int64 [oh][2] source rows, then [ow][2] source pixels as float offsets in a row; aux2
 * float [oh] then [ow] weights of the second tap (value = a + f * (b - a) per axis). */
typedef struct {
    int64_t n, c, h, w, oh, ow, kh, kw, stride_h, stride_w;
    int64_t pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w;
    int64_t count_include_pad, lp, blocked;
} wl_pool_params;

/* GatherScatter over `rows` rows of `block` elements (esize bytes) with k int64 indices;
 * scatter: ins = (data, indices, updates), reduced with an enum wl_scatter_reduction. */
typedef struct { int64_t scatter, rows, block, k, esize, reduction; } wl_gather_params;

/* Sort (stable, int64 indices out) along the middle axis of (outer, n, inner). */
typedef struct { int64_t outer, n, inner, descending; } wl_sort_params;

/* softmax or (log) log_softmax along the middle axis of (outer, n, inner). */
typedef struct { int64_t outer, n, inner, log; } wl_softmax_params;

/* layer norm over the last n floats of each of `rows` rows: ins = (x, scale (n), [bias (n)]) */
typedef struct { int64_t rows, n, has_bias; double eps; } wl_layer_norm_params;

/* LSTM cell: ins = (gates iofc, c_prev, c_out) -> h, each row of `batch`. */
typedef struct { int64_t batch, hidden; } wl_lstm_params;

/* A whole LSTM or GRU direction (recurrent.c): ins = (xw (seq, batch, gates*hidden): the input
 * projection with its biases, rt (hidden, gates*hidden): R transposed, h0, then c0 (LSTM) or
 * the h gate's recurrent bias (GRU with has_rbh), then the outputs after the first: h_final
 * and (LSTM) c_final) -> Y (seq, batch, hidden). LSTM gates are i, o, f, c; GRU gates z, r, h.
 * dirs 2 (a bidirectional layer, the second direction reversed from the first): both
 * directions' inputs in turn, then the first's outputs after Y, then all the second's.
 * chunks > 1 (one direction, constant R): aux holds R^T packed per chunk of hidden units, every
 * gate's columns of those units together, so that threads can share each step by units. */
typedef struct {
    int64_t seq, batch, hidden, gru, reverse, linear_before_reset, has_rbh, dirs, chunks;
} wl_recurrent_params;

/* int8 convolution and matrix product (qgemm.c, qconv.c): ins = (8-bit activations); aux holds
 * the weights packed by wl_q_pack_weights (a wl_qweights followed by its arrays). The weights
 * are the rows of the GEMM: a conv's output channels, a matmul's output columns. */
enum wl_q_out { Q_U8 = 0, Q_S8 = 1, Q_S32 = 2 };
typedef struct {
    int64_t rows, k, kp;  /* kp: k rounded up to a multiple of 4 (of 64 for the AMX tiles) */
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
    int32_t taps_s8;      /* every tap fits int8 (the VNNI depthwise kernel's condition) */
} wl_qweights;
/* NCHW conv of x (n, c, h, w) into y (n, o, oh, ow); rows = o, k = c / groups * kh * kw */
typedef struct {
    int64_t n, c, h, w, o, oh, ow, kh, kw;
    int64_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups;
} wl_qconv_params;
/* y (m x rows) = a (m x k) times the packed columns. dyn: both operands are inputs (ins = (a,
 * b): a (batch, m, k), b (batch, k, n) or (batch, n, k) with trans_b), per-tensor parameters
 * here instead of packed weights, b packed per run */
typedef struct {
    int64_t m, dyn, batch, k, n, trans_b, x_signed, w_signed, x_zero, w_zero, y_zero, lo, hi, out;
    float scale;
} wl_qmatmul_params;
/* The 8-bit element-wise maps (qelementwise.c), by mode: 0: 8-bit y[i] = table[x[i] ^ flip]
 * (flip 0x80 for int8 x; aux holds the 256-byte table); 1 (QuantizeLinear): 8-bit y =
 * clamp(rint(x / scale) + zero, lo, hi) of float32 x; 2 (DequantizeLinear): float32 y =
 * (float)(x - zero) * scale of 8-bit x (int8 when flip) */
typedef struct { int64_t n, flip, mode, zero, lo, hi; float scale; } wl_qlookup_params;
/* 8-bit y = clamp(rint(f((a - a_zero) * ra, (b - b_zero) * rb)) + c_zero, lo, hi), f = + or *
 * (mul), in float32; a and y have n elements, b nb, read as b[(i / inner) % nb] (inner 1 and
 * nb n for the same shape) */
typedef struct {
    int64_t n, a_zero, b_zero, c_zero, lo, hi, a_signed, b_signed, mul, inner, nb;
    double ra, rb;
} wl_qbinary_params;

typedef struct wl_op {
    int32_t kind, fn, dtype, dtype2, n_in, algo;
    wl_ref *ins;
    wl_ref out;
    void *aux;
    void *aux2;
    union {
        wl_raster_params raster;
        wl_unary_params unary;
        wl_nd_params nd;
        wl_cast_params cast;
        wl_reduce_params reduce;
        wl_matmul_params matmul;
        wl_conv_params conv;
        wl_pool_params pool;
        wl_gather_params gather;
        wl_sort_params sort;
        wl_softmax_params softmax;
        wl_layer_norm_params layer_norm;
        wl_lstm_params lstm;
        wl_recurrent_params recurrent;
        wl_qconv_params qconv;
        wl_qmatmul_params qmatmul;
        wl_qlookup_params qlookup;
        wl_qbinary_params qbinary;
    };
} wl_op;

int wl_run(const wl_op *ops, int n_ops, char **slots, int nthreads, char *err, int errlen);
const char *wl_isa_name(void);
int wl_set_isa(const char *name);
int wl_gemm_nr(void);
int wl_nchwc_fb(void);
void wl_pack_b(const float *b, int64_t k, int64_t n, int trans_b, float *out);
int64_t wl_packed_b_floats(int64_t k, int64_t n);
void wl_winograd_weights(const float *w, int64_t o, int64_t c, float *out);
void wl_pool_shutdown(void);
void wl_set_profile(double *buf);
/* int8 weights: bytes of the arrays for rows x k, and the packing (see qgemm.c) */
int64_t wl_q_weight_bytes(int64_t rows, int64_t k);
/* cols: the columns a run multiplies (a conv's n * oh * ow, a matmul's rows of A; 0 unknown),
 * for the choice of the packed depth (AMX tiles pay only on large products) */
void wl_q_pack_weights(wl_qweights *q, void *mem, const void *w, int w_signed, int64_t rows,
                       int64_t k, const int32_t *w_zero, const int32_t *bias, int32_t x_zero,
                       int x_signed, const float *scale, int32_t y_zero, int32_t lo, int32_t hi,
                       int out, int64_t cols);
/* the int8 variant ("avx512vnni", "avxvnni", "avx2", "neon-dot", "scalar"); forcing one takes
 * those names or the fp32 variants' (avx512: the best int8 one) */
const char *wl_q_isa_name(void);
int wl_q_set_isa(const char *name);
/* ---- cffi: end ---- */

#endif
