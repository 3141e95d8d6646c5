/* Walle CPU backend: shared declarations of the C kernels, the plan executor and the pool.
 *
 * A prepared program is an array of wl_op descriptors. Operands are (slot, byte offset) pairs:
 * slot 0 is the run's arena, the others are program inputs, outputs and constants whose base
 * pointers the caller binds per run. wl_run walks the array in one call.
 */
#ifndef WALLE_CPU_WL_H
#define WALLE_CPU_WL_H

#include <stddef.h>
#include <stdint.h>

/* ---- public ABI (read by _build.py as the cffi cdef; plain declarations only) ---- */
typedef struct { int32_t slot; int32_t pad; int64_t off; } wl_ref;

typedef struct wl_op {
    int32_t kind, fn, dtype, dtype2, n_in, algo;
    wl_ref *ins;
    wl_ref out;
    int64_t p[64];
    double f[8];
    void *aux;
    void *aux2;
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

/* ---- kinds, dtypes, function codes ---- */
enum { WL_RASTER = 1, WL_UNARY, WL_BINARY, WL_SELECT, WL_CAST, WL_REDUCE, WL_MATMUL, WL_CONV,
       WL_POOL, WL_GATHER, WL_SORT, WL_CHAIN, WL_LSTM_CELL, WL_SOFTMAX };
enum { D_F32 = 0, D_F64, D_F16, D_I8, D_I16, D_I32, D_I64, D_U8, D_U16, D_U32, D_U64, D_BOOL };

enum {
    U_IDENTITY = 0, U_ABS, U_NEG, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_RECIP, U_SIN, U_COS, U_TAN,
    U_ASIN, U_ACOS, U_ATAN, U_SINH, U_COSH, U_TANH, U_ASINH, U_ACOSH, U_ATANH, U_SIGMOID, U_RELU,
    U_ERF, U_FLOOR, U_CEIL, U_ROUND, U_SIGN, U_NOT, U_ISNAN, U_ISINF, U_ISPOSINF, U_ISNEGINF,
    U_SOFTPLUS, U_SOFTSIGN, U_GELU, U_GELU_TANH, U_HARDSWISH, U_HARDSIGMOID, U_LEAKY_RELU, U_ELU,
    U_SELU, U_CELU, U_CLIP, U_MISH, U_THRESHOLDED_RELU, U_BITWISE_NOT, U_COUNT
};

enum {
    B_ADD = 0, B_SUB, B_MUL, B_DIV, B_POW, B_MAX, B_MIN, B_MOD, B_FMOD, B_EQ, B_LT, B_LE, B_GT,
    B_GE, B_AND, B_OR, B_XOR, B_BITAND, B_BITOR, B_BITXOR, B_SHL, B_SHR, B_ATAN2, B_COUNT
};

enum { R_SUM = 0, R_PROD, R_MAX, R_MIN, R_ARGMAX, R_ARGMIN, R_CUMSUM, R_CUMPROD };
enum { P_MAX = 0, P_AVG, P_LP };
enum { C_IM2COL = 0, C_1X1, C_DEPTHWISE, C_WINOGRAD, C_NCHWC };
enum { BIAS_NONE = 0, BIAS_ROW, BIAS_COL, BIAS_FULL };

/* ---- blocked layout (NCHW16c): a tensor (N, C, H, W) is stored as (N, ceil(C/16), H, W, 16) */
#define WL_BLK 16
/* What a blocked micro-kernel does when it stores a tile: add a residual laid out like the
 * output (res != NULL), then clamp to [lo, hi] when clip (ReLU, ReLU6 and clips). Other
 * activations run as a pass over the finished row. */
typedef struct {
    const float *res;
    int clip;
    float lo, hi;
    int load, final; /* reduction slices: start from y (not the bias); last slice (epilogue) */
} nc_epi;

/* ---- per-ISA kernel table ---- */
typedef struct wl_isa {
    const char *name;
    int nr;  /* GEMM panel width (floats) */
    int mr;  /* GEMM micro-tile rows */
    /* C[mr x nr] (+)= A[mr x kc] (row stride lda) * Bp[kc x nr]; writes nv <= nr columns. */
    void (*gemm_tile)(int mr, int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                      int64_t ldc, int accumulate, int nv);
    void (*unary_f32)(int fn, const float *x, float *y, int64_t n, const double *prm);
    /* y = a (op) b over n elements; sa/sb are 0 (broadcast) or 1. Returns 0 if fn unhandled. */
    int (*binary_f32)(int fn, const float *a, int64_t sa, const float *b, int64_t sb, float *y,
                      int64_t n);
    /* C[mr x nr] = A[mr x k] (row stride lda) * B, where row kk of B is the nr floats at
     * x + off[kk] (a shifted view of a padded input: convolution without im2col). */
    void (*conv_tile)(int mr, int64_t k, const float *a, int64_t lda, const float *x,
                      const int64_t *off, float *c);
    void (*dw_plane)(const float *x, int64_t h, int64_t w, const float *k, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw,
                     float bias, float *y, int64_t oh, int64_t ow);
    /* blocked conv: filter blocks per packed weight group, and pixels per tile for f blocks */
    int nc_fb;
    int nc_p[5];
    /* fb filter blocks x np output pixels (input pixel p at x + po[p]): sum over the nk (input
     * offset, weight offset) pairs of x[xo[k] + po[p]] * w[wo[k] + f * 16 .. + 16], plus bias */
    void (*nc_conv_tile)(int fb, int np, int64_t nk, const int64_t *xo, const int64_t *wo,
                         const float *x, const float *w, const float *bias, float *y, int64_t ys,
                         const int64_t *po, const nc_epi *e);
    /* depthwise: np <= 8 pixels of one 16-channel block, nk taps; x[xo[k] + p * step] are
     * vectors of 16 channels, as are the weights w[wo[k]] */
    void (*nc_dw_tile)(int np, int64_t nk, const int64_t *xo, const int64_t *wo, const float *x,
                       const float *w, const float *bias, float *y, int64_t step,
                       const nc_epi *e);
    /* pooling of one blocked pixel over ny x nx taps (rows rs, columns cs floats apart): max
     * (NaN wins), or the sum times scale */
    void (*nc_pool_px)(int avg, const float *x, int64_t rs, int64_t cs, int64_t ny, int64_t nx,
                       float *y, float scale);
    /* fn in R_SUM (double lanes), R_MAX, R_MIN (NaN wins) over n contiguous floats */
    double (*reduce_f32)(int fn, const float *x, int64_t n);
} wl_isa;

extern const wl_isa *wl_active;
extern const wl_isa wl_isa_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const wl_isa wl_isa_avx2;
extern const wl_isa wl_isa_avx512;
#endif
#if defined(__aarch64__)
extern const wl_isa wl_isa_neon;
#endif

/* ---- thread pool ---- */
typedef void (*wl_task)(void *ctx, int64_t i);
void wl_parallel_for(int64_t n, wl_task fn, void *ctx, int nthreads);
void *wl_scratch(int which, size_t bytes); /* per-thread, grows, kept between runs */

/* ---- helpers shared between files ---- */
void wl_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *bp,
             float *c, int64_t ldc, const float *bias, int bias_mode, const float *res, int act,
             const double *act_p, int nthreads);
void wl_pack_b_range(const float *b, int64_t k, int64_t n, int64_t ldb, int trans_b, float *out,
                     int64_t p0, int64_t p1);
void wl_unary_scalar_f32(int fn, const float *x, float *y, int64_t n, const double *prm);
/* Conv2D / MatMul descriptors may carry a residual operand (ins[p[19]] for Conv2D, ins[p[12]]
 * for MatMul; index 0 = none) of exactly the output's shape, added after the bias and before
 * the activation. It must not share memory with the output (the compiler guarantees this). */
int wl_conv(const wl_op *op, const float *x, const float *w, const float *bias, const float *res,
            float *y, int nthreads, char *err, int errlen);
/* Conv2D on blocked tensors (algo C_NCHWC): weights packed by the compiler in op->aux, the
 * bias padded to whole blocks in op->aux2; see nchwc.c for the descriptor fields. */
int wl_conv_nchwc(const wl_op *op, const float *x, const float *res, float *y, int nthreads,
                  char *err, int errlen);
/* Pool2D (max, avg) on blocked tensors: Pool2D's descriptor with p[19] = 1. */
void wl_pool_nchwc(const wl_op *op, const float *x, float *y, int nthreads);
int wl_matmul(const wl_op *op, const float *a, const float *b, const float *bias,
              const float *res, float *y, int nthreads, char *err, int errlen);

#endif
