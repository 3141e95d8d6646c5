/* Declarations shared between the kernel files (not part of the cffi ABI): the per-ISA kernel
 * table, the thread pool, the run context every op kernel gets, and the helpers one op's file
 * lends another (the GEMM driver to MatMul and the convolutions). */
#ifndef WALLE_CPU_INTERNAL_H
#define WALLE_CPU_INTERNAL_H

#include <stdarg.h>
#include <stdio.h>

#include "wl.h"

enum { BIAS_NONE = 0, BIAS_ROW, BIAS_COL, BIAS_FULL };

/* ---- the run an op kernel is part of */
typedef struct {
    char **slots;
    int nthreads;
    char *err;
    int errlen;
} wl_exec;

static inline char *wl_ptr(const wl_exec *ex, wl_ref r) { return ex->slots[r.slot] + r.off; }
static inline char *wl_in(const wl_op *op, const wl_exec *ex, int64_t i) {
    return wl_ptr(ex, op->ins[i]);
}
static inline char *wl_out(const wl_op *op, const wl_exec *ex) { return wl_ptr(ex, op->out); }
/* an optional input: ins[i] when i (a descriptor's residual index, say) is not 0 */
static inline const float *wl_in_opt(const wl_op *op, const wl_exec *ex, int64_t i) {
    return i ? (const float *)wl_in(op, ex, i) : NULL;
}

/* Writes the message of a failed op and returns 1 (what kernels return on failure). */
__attribute__((format(printf, 2, 3))) static inline int wl_fail(const wl_exec *ex,
                                                                const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ex->err, (size_t)ex->errlen, fmt, ap);
    va_end(ap);
    return 1;
}

/* max / min that let NaN win (numpy's semantics) */
#define NANMAX(acc, v) if ((v) > (acc) || (v) != (v)) acc = (v)
#define NANMIN(acc, v) if ((v) < (acc) || (v) != (v)) acc = (v)

/* One kernel per op kind, in the file named after the op: returns 0, or 1 after wl_fail. */
typedef int (*wl_kernel)(const wl_op *op, const wl_exec *ex);
int wl_raster(const wl_op *op, const wl_exec *ex);     /* raster.c */
int wl_deconv(const wl_op *op, const wl_exec *ex);     /* deconv.c: blocked ConvTranspose */
int wl_unary(const wl_op *op, const wl_exec *ex);      /* unary.c */
int wl_binary(const wl_op *op, const wl_exec *ex);     /* binary.c: Binary and Select */
int wl_chain(const wl_op *op, const wl_exec *ex);      /* chain.c */
int wl_cast(const wl_op *op, const wl_exec *ex);       /* cast.c */
int wl_reduce(const wl_op *op, const wl_exec *ex);     /* reduce.c */
int wl_matmul(const wl_op *op, const wl_exec *ex);     /* matmul.c */
int wl_conv(const wl_op *op, const wl_exec *ex);       /* conv.c: picks the algorithm */
int wl_pool2d(const wl_op *op, const wl_exec *ex);     /* pool2d.c */
int wl_pool2d_8bit(const wl_op *op, const wl_exec *ex); /* pool8.c: max of int8 / uint8 */
int wl_gather(const wl_op *op, const wl_exec *ex);     /* gather.c: GatherScatter */
int wl_sort(const wl_op *op, const wl_exec *ex);       /* sort.c */
int wl_softmax(const wl_op *op, const wl_exec *ex);    /* softmax.c */
int wl_layer_norm(const wl_op *op, const wl_exec *ex); /* layer_norm.c */
int wl_lstm_cell(const wl_op *op, const wl_exec *ex);  /* lstm_cell.c */
int wl_recurrent(const wl_op *op, const wl_exec *ex);  /* recurrent.c: LSTM / GRU sequences */
int wl_qconv_op(const wl_op *op, const wl_exec *ex);   /* qconv.c: int8 conv (qgemm.c) */
int wl_qmatmul_op(const wl_op *op, const wl_exec *ex); /* qconv.c: int8 matmul (qgemm.c) */
int wl_qlookup_op(const wl_op *op, const wl_exec *ex); /* qelementwise.c: 8-bit table */
int wl_qbinary_op(const wl_op *op, const wl_exec *ex); /* qelementwise.c: QLinearAdd / Mul */

/* ---- what a blocked micro-kernel does when it stores a tile (layout NCHW16c): add a residual
 * laid out like the output (res != NULL), then clamp to [lo, hi] when clip (ReLU, ReLU6 and
 * clips), or PRelu with per-channel slopes (slope != NULL: the tile's first filter block's 16,
 * block f's at slope + 16 f). Other activations run as a pass over the finished row. */
typedef struct {
    const float *res;
    int clip;
    float lo, hi;
    const float *slope;
    int load, final; /* reduction slices: start from y (not the bias); last slice (epilogue) */
} nc_epi;

/* ---- a blocked conv tile's reduction: nb input blocks (x + b * xcb, weights + b * wcb), each
 * over nt taps (x + xo[t], weights + wo[t]) of cib channels (cil in the last block), channel ci
 * at x + ci and weights + ci * 16 * (filter blocks) */
typedef struct {
    const int64_t *xo, *wo;
    int64_t nb, nt, cib, cil, xcb, wcb;
} nc_red;

/* What a GEMM tile adds to its sums as it stores them (the last K block's tile), in this
 * order: a bias per column (the panel's nv floats), a bias per row (one per tile row), then
 * up to two matrices with their row strides (a full bias, a residual); NULL terms are skipped;
 * then ReLU or Clip, with the unary kernels' NaN and signed-zero results.
 * Adding them in the tile's registers spares a pass over C per (row, panel) afterwards: that
 * pass, one vector call per 32-float row piece, cost a 50 x 64 x 256 GEMM 40% at 2 threads. */
enum { EPI_NONE = 0, EPI_RELU, EPI_CLIP }; /* then an activation: U_RELU's, U_CLIP's */
typedef struct wl_tile_epi {
    const float *col, *row, *m1, *m2;
    int64_t ld1, ld2;
    int act;
    float lo, hi; /* EPI_CLIP's bounds */
} wl_tile_epi;

/* ---- per-ISA kernel table (simd.c builds one per variant from the isa/ includes) */
typedef struct wl_isa {
    const char *name;
    int nr;  /* GEMM panel width (floats) */
    int mr;  /* GEMM micro-tile rows */
    /* C[mr x nr] (+)= A[mr x kc] (row stride lda) * Bp[kc x nr]; writes nv <= nr columns,
     * adding the epilogue's terms (when epi is not NULL) before the store. */
    void (*gemm_tile)(int mr, int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                      int64_t ldc, int accumulate, int nv, const struct wl_tile_epi *epi);
    void (*unary_f32)(int fn, const float *x, float *y, int64_t n, const double *prm);
    /* y = a (op) b over n elements; sa/sb are 0 (broadcast) or 1. Returns 0 if fn unhandled. */
    int (*binary_f32)(int fn, const float *a, int64_t sa, const float *b, int64_t sb, float *y,
                      int64_t n);
    /* C[mr x nr] = A[mr x k] (row stride lda) * B, where row kk of B is the nr floats at
     * x + off[kk] (a shifted view of a padded input: convolution without im2col); stored
     * like gemm_tile's (nv columns, row stride ldc, the epilogue's terms when epi is set). */
    void (*conv_tile)(int mr, int64_t k, const float *a, int64_t lda, const float *x,
                      const int64_t *off, float *c, int64_t ldc, int nv, const struct wl_tile_epi *epi);
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
    /* nrun tiles of fb filter blocks x np pixels, tile i's input pixel p at x + i * xstep + po[p]
     * and its outputs np pixels on from tile i - 1's, over the reduction r */
    void (*nc_conv_run)(int fb, int np, int64_t nrun, int64_t xstep, const nc_red *r,
                        const float *x, const float *w, const float *bias, float *y, int64_t ys,
                        const int64_t *po, const nc_epi *e);
    /* depthwise: np <= 8 pixels of one 16-channel block, nk taps; x[xo[k] + p * step] are
     * vectors of 16 channels, as are the weights w[wo[k]] */
    void (*nc_dw_tile)(int np, int64_t nk, const int64_t *xo, const int64_t *wo, const float *x,
                       const float *w, const float *bias, float *y, int64_t step,
                       const nc_epi *e);
    /* depthwise: a run of n interior pixels of one output row and block, nky <= kw kernel
     * rows (row r at x + r * rs) of kw taps one vector apart, pixels sw vectors apart, w the
     * first kernel row's weights; returns how many it stored (n, or 0 where the ISA has no
     * kernel for kw and sw) */
    int64_t (*nc_dw_row)(int64_t n, int64_t nky, int64_t kw, int64_t sw, const float *x,
                         int64_t rs, const float *w, const float *bias, float *y,
                         const nc_epi *e);
    /* pooling of one blocked pixel over ny x nx taps (rows rs, columns cs floats apart): max
     * (NaN wins), or the sum times scale */
    /* Winograd F(m x m, 3x3), m 4 or 2, on blocked tiles (isa/winograd.inc): a T x T input
     * tile (T = m + 2) at (iy, ix) of an H x W blocked plane, zeros outside, to T * T vectors
     * at v + k * vs; T * T sums at mm + k * ms to rows x cols outputs at y (rows ys apart)
     * with bias, res and the epilogue */
    void (*wino_in)(int m, const float *x, int64_t h, int64_t w, int64_t iy, int64_t ix,
                    float *v, int64_t vs);
    void (*wino_out)(int m, const float *mm, int64_t ms, const float *bias, float *y,
                     int64_t ys, int rows, int cols, const float *res, const nc_epi *e);
    void (*nc_pool_px)(int avg, const float *x, int64_t rs, int64_t cs, int64_t ny, int64_t nx,
                       float *y, float scale);
    /* one output row of a blocked 2-D resize (pool2d.c, P_RESIZE): pixel ox is the lerp by fy
     * of rows r0 and r1, each the lerp by fx[ox] of its pixels at float offsets xo[2 ox] and
     * xo[2 ox + 1]; near: r0 at xo[2 ox] only */
    void (*nc_resize_row)(const float *r0, const float *r1, float fy, const int64_t *xo,
                          const float *fx, int64_t ow, float *y, int near);
    /* np (8, 4 or 1) output pixels of a blocked transposed conv (deconv.c, isa/deconv.inc) */
    void (*nc_deconv_px)(int np, int64_t nt, const int64_t *xo, const int64_t *wo,
                         const float *x, int64_t xs, int64_t ncb, int64_t xcb, int64_t last,
                         const float *w, const float *bias, float lo, float hi, float *y,
                         int64_t ys);
    /* fn in R_SUM (double lanes), R_MAX, R_MIN (NaN wins) over n contiguous floats */
    double (*reduce_f32)(int fn, const float *x, int64_t n);
    /* softmax (log: log_softmax) of n contiguous floats; e: n floats of scratch for log */
    void (*softmax_f32)(const float *x, float *y, int64_t n, int log, float *e);
    /* row kernels of isa/reduce.inc: softmax (log: log_softmax) of n contiguous floats; layer
     * norm of one row (g, b: n floats each, b may be NULL); erf GELU (x == y allowed) */
    void (*softmax_row)(const float *x, float *y, int64_t n, int log);
    /* softmax over the n rows (row stride `stride`) of cnt <= VW adjacent columns */
    void (*softmax_cols)(const float *x, float *y, int64_t n, int64_t stride, int64_t cnt, int log);
    void (*layer_norm_row)(const float *x, const float *g, const float *b, float *y, int64_t n,
                           float eps);
    void (*gelu_f32)(const float *x, float *y, int64_t n);
    /* isa/matmul.inc: C (m x n, row stride ldc) = A (m x k, lda) @ B (k x n, ldb), B unpacked */
    void (*matmul_direct)(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                          const float *b, int64_t ldb, float *c, int64_t ldc);
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

/* ---- thread pool (threadpool.c) */
typedef void (*wl_task)(void *ctx, int64_t i);
void wl_parallel_for(int64_t n, wl_task fn, void *ctx, int nthreads);
/* flush-to-zero and denormals-are-zero on (returns the thread's mode before), and back */
unsigned long wl_fp_flush_enter(void);
void wl_fp_restore(unsigned long saved);
void *wl_scratch(int which, size_t bytes); /* per-thread, grows, kept between runs */
/* Tasks for n items of at least `grain` each, at most 4 per thread; *chunk items per task. */
int64_t wl_chunks(int64_t n, int64_t grain, int nthreads, int64_t *chunk);
/* Elements of an element-wise op (Unary, Cast, chains; Binary twice it) below which one thread
 * runs it. 8192 was tried, to spread reads of lines the producer's threads left in the other
 * core's cache: no better on the zoo, crnn and dbnet slower. */
#define WL_EW_GRAIN 32768

/* ---- helpers one op's file lends another */
/* gemm.c: C = A @ Bp (+ bias by BIAS_*) (+ res), then act; Bp packed by wl_pack_b. */
void wl_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *bp,
             float *c, int64_t ldc, const float *bias, int bias_mode, const float *res, int act,
             const double *act_p, int nthreads);
void wl_pack_b_parallel(const float *b, int64_t k, int64_t n, int64_t ldb, int trans, float *out,
                        int nthreads);
/* unary.c: the scalar fp32 unary (the SIMD variants' fallback for rare functions) */
void wl_unary_scalar_f32(int fn, const float *x, float *y, int64_t n, const double *prm);
/* Conv2D algorithms, picked by conv.c: x, w, bias (NULL: none), res (NULL: none), y. */
int wl_conv_implicit(const wl_op *op, const wl_exec *ex, const float *x, const float *w,
                     const float *bias, const float *res, float *y);    /* conv_implicit.c */
int wl_conv_winograd(const wl_op *op, const wl_exec *ex, const float *x, const float *bias,
                     const float *res, float *y);                       /* winograd.c */
int wl_conv_blocked(const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                    float *y);                                          /* conv_blocked.c */
int wl_conv_winograd_blocked(const wl_op *op, const wl_exec *ex, const float *x,
                             const float *res, float *y);             /* winograd_blocked.c */
int wl_depthwise(const wl_op *op, const wl_exec *ex, const float *x, const float *w,
                 const float *bias, const float *res, float *y);        /* depthwise.c */
int wl_depthwise_blocked(const wl_op *op, const wl_exec *ex, const float *x, const float *res,
                         float *y);                                     /* depthwise.c */

#endif
