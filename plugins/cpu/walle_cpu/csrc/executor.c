/* The plan executor: one wl_run call walks all op descriptors of a program, each run by the
 * kernel of its kind (the file named after the op), with optional per-op timers. */
#include <time.h>

#include "internal.h"

static const wl_kernel kernels[WL_KIND_COUNT] = {
    [WL_RASTER] = wl_raster,   [WL_UNARY] = wl_unary,   [WL_BINARY] = wl_binary,
    [WL_SELECT] = wl_binary,   [WL_CAST] = wl_cast,     [WL_REDUCE] = wl_reduce,
    [WL_MATMUL] = wl_matmul,   [WL_CONV] = wl_conv,     [WL_POOL] = wl_pool2d,
    [WL_GATHER] = wl_gather,   [WL_SORT] = wl_sort,     [WL_CHAIN] = wl_chain,
    [WL_LSTM_CELL] = wl_lstm_cell, [WL_SOFTMAX] = wl_softmax,
    [WL_QCONV] = wl_qconv_op,  [WL_QMATMUL] = wl_qmatmul_op,
    [WL_QLOOKUP] = wl_qlookup_op, [WL_QBINARY] = wl_qbinary_op, [WL_RECURRENT] = wl_recurrent,
    [WL_LAYER_NORM] = wl_layer_norm, [WL_DECONV] = wl_deconv,
};

/* Debug profiling (python -m walle_cpu.profile): when set, wl_run adds each op's wall time in
 * seconds to prof[op index]. Not thread-safe by design: profile one run at a time. */
static double *prof = NULL;
void wl_set_profile(double *buf) { prof = buf; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Returns 0, or 1 + the index of the op that failed (its message in err). */
int wl_run(const wl_op *ops, int n_ops, char **slots, int nthreads, char *err, int errlen) {
    wl_exec ex = {slots, nthreads < 1 ? 1 : nthreads, err, errlen};
    double *pb = prof;
    unsigned long fp = wl_fp_flush_enter();
    int rc = 0;
    for (int oi = 0; oi < n_ops && !rc; oi++) {
        const wl_op *op = &ops[oi];
        double t0 = pb ? now_s() : 0.0;
        if (op->kind <= 0 || op->kind >= WL_KIND_COUNT || !kernels[op->kind]) {
            wl_fail(&ex, "unknown op kind %d", op->kind);
            rc = oi + 1;
        } else if (kernels[op->kind](op, &ex)) {
            rc = oi + 1;
        }
        if (pb && !rc) pb[oi] += now_s() - t0;
    }
    wl_fp_restore(fp);
    return rc;
}
