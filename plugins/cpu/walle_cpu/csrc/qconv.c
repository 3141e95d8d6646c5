/* The int8 op kernels of the executor: the qlinear_conv and qlinear_matmul composites (WL_QCONV,
 * WL_QMATMUL) on the weights the compiler packed into aux (qgemm.c does the work). */
#include "quant.h"

int wl_qconv_op(const wl_op *op, const wl_exec *ex) {
    if (wl_qconv(&op->qconv, (const wl_qweights *)op->aux, (const uint8_t *)wl_in(op, ex, 0),
                 wl_out(op, ex), ex->nthreads))
        return wl_fail(ex, "int8 conv: out of scratch memory");
    return 0;
}

int wl_qmatmul_op(const wl_op *op, const wl_exec *ex) {
    if (op->qmatmul.dyn) {
        if (wl_qmatmul_dyn(&op->qmatmul, (const uint8_t *)wl_in(op, ex, 0),
                           (const uint8_t *)wl_in(op, ex, 1), wl_out(op, ex), ex->nthreads))
            return wl_fail(ex, "int8 matmul: out of scratch memory");
        return 0;
    }
    if (wl_qmatmul(op->qmatmul.m, (const wl_qweights *)op->aux, (const uint8_t *)wl_in(op, ex, 0),
                   wl_out(op, ex), ex->nthreads))
        return wl_fail(ex, "int8 matmul: out of scratch memory");
    return 0;
}
