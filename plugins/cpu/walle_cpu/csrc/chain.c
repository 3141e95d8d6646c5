/* A fused chain of fp32 Unary/Binary ops (the compiler's element-wise fusion): each block of a
 * row is loaded once into a register buffer, every step runs on it, and it is stored once. */
#include <string.h>

#include "binary_row.h"

/* aux: int64 steps[n_steps * 4] = (kind, fn, operand, unused); f-params in aux2 as double[4*n].
 * kind 0: unary fn on the register; kind 1: reg = reg (fn) operand; kind 2: reg = operand (fn) reg.
 * Operands (ins[0..]) are f32 with per-axis strides in op->nd, as for Binary. */
#define CHAIN_BLOCK 512

typedef struct {
    const wl_op *op;
    char **slots;
    int64_t rows, chunk;  /* rows, rows per task */
    int64_t cols, cchunk; /* columns, columns per task (a row is split when rows are few) */
} chain_ctx;

static void chain_task(void *vp, int64_t t) {
    chain_ctx *c = vp;
    const wl_op *op = c->op;
    int nd = (int)op->nd.ndim;
    const int64_t *shape = op->nd.shape;
    int64_t last = shape[nd - 1];
    const int64_t *steps = (const int64_t *)op->aux;
    const double *prm = (const double *)op->aux2;
    int nsteps = (int)op->nd.n_steps;
    int nin = op->n_in;
    float reg[CHAIN_BLOCK];
    int64_t cblocks = (last + c->cchunk - 1) / c->cchunk, cb = t % cblocks;
    t /= cblocks;
    int64_t r0 = t * c->chunk, r1 = r0 + c->chunk < c->rows ? r0 + c->chunk : c->rows;
    int64_t c0 = cb * c->cchunk, c1 = c0 + c->cchunk < last ? c0 + c->cchunk : last;
    float *yb = (float *)(c->slots[op->out.slot] + op->out.off);
    for (int64_t r = r0; r < r1; r++) {
        int64_t rem = r, off[5] = {0, 0, 0, 0, 0};
        for (int d = nd - 2; d >= 0; d--) {
            int64_t idx = rem % shape[d];
            rem /= shape[d];
            for (int i = 0; i < nin; i++) off[i] += idx * op->nd.strides[i][d];
        }
        const float *base[5];
        int64_t s[5];
        for (int i = 0; i < nin; i++) {
            base[i] = (const float *)(c->slots[op->ins[i].slot] + op->ins[i].off) + off[i];
            s[i] = op->nd.strides[i][nd - 1];
        }
        float *y = yb + r * last;
        for (int64_t x0 = c0; x0 < c1; x0 += CHAIN_BLOCK) {
            int64_t nb = c1 - x0 < CHAIN_BLOCK ? c1 - x0 : CHAIN_BLOCK;
            if (s[0] == 1) memcpy(reg, base[0] + x0, (size_t)nb * 4);
            else for (int64_t i = 0; i < nb; i++) reg[i] = base[0][(x0 + i) * s[0]];
            for (int st = 0; st < nsteps; st++) {
                int kind = (int)steps[st * 4], fn = (int)steps[st * 4 + 1], oi = (int)steps[st * 4 + 2];
                if (kind == 0) {
                    wl_active->unary_f32(fn, reg, reg, nb, prm + st * 4);
                } else {
                    const float *ob = base[oi] + x0 * s[oi];
                    int64_t so = s[oi];
                    if (so > 1) {  /* rare: gather the operand first */
                        float tmp[CHAIN_BLOCK];
                        for (int64_t i = 0; i < nb; i++) tmp[i] = ob[i * so];
                        if (kind == 1) binary_row(fn, D_F32, (const char *)reg, 1, (const char *)tmp, 1, (char *)reg, nb);
                        else binary_row(fn, D_F32, (const char *)tmp, 1, (const char *)reg, 1, (char *)reg, nb);
                    } else if (kind == 1) {
                        binary_row(fn, D_F32, (const char *)reg, 1, (const char *)ob, so, (char *)reg, nb);
                    } else {
                        binary_row(fn, D_F32, (const char *)ob, so, (const char *)reg, 1, (char *)reg, nb);
                    }
                }
            }
            memcpy(y + x0, reg, (size_t)nb * 4);
        }
    }
}

int wl_chain(const wl_op *op, const wl_exec *ex) {
    int nthreads = ex->nthreads;
    int64_t last = op->nd.shape[op->nd.ndim - 1];
    chain_ctx c = {op, ex->slots, op->nd.rows, 0, last, last};
    int64_t total = c.rows * last, tasks = 1;
    if (total < 32768) {
        c.chunk = c.rows;
    } else if (c.rows >= 2 * nthreads) {
        tasks = wl_chunks(c.rows, 1, nthreads, &c.chunk);
    } else { /* few long rows (collapsed dims): split the columns too */
        c.chunk = 1;
        int64_t per = (4 * nthreads + c.rows - 1) / c.rows; /* column blocks per row */
        c.cchunk = ((last + per - 1) / per + CHAIN_BLOCK - 1) / CHAIN_BLOCK * CHAIN_BLOCK;
        tasks = c.rows * ((last + c.cchunk - 1) / c.cchunk);
    }
    wl_parallel_for(tasks, chain_task, &c, nthreads);
    return 0;
}
