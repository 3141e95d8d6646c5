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
    int64_t rows, chunk;  /* rows (or, grouped, blocks of rows), per task */
    int64_t cols, cchunk; /* columns, columns per task (a row is split when rows are few) */
    int64_t group;        /* > 1: short rows run `group` at a time (see wl_chain) */
} chain_ctx;

/* Each operand's start for row r (the axes before the last). */
static void row_bases(const wl_op *op, char **slots, int64_t r, const float **base) {
    int nd = (int)op->nd.ndim;
    int64_t rem = r, off[WL_MAX_OPERANDS] = {0};
    for (int d = nd - 2; d >= 0; d--) {
        int64_t idx = rem % op->nd.shape[d];
        rem /= op->nd.shape[d];
        for (int i = 0; i < op->n_in; i++) off[i] += idx * op->nd.strides[i][d];
    }
    for (int i = 0; i < op->n_in; i++)
        base[i] = (const float *)(slots[op->ins[i].slot] + op->ins[i].off) + off[i];
}

/* The steps over nb elements: operand i read at ptr[i] with element stride str[i]. */
static void run_block(const wl_op *op, float *reg, int64_t nb, const float *const *ptr, const int64_t *str) {
    const int64_t *steps = (const int64_t *)op->aux;
    const double *prm = (const double *)op->aux2;
    int nsteps = (int)op->nd.n_steps, st = 0;
    if (str[0] == 1 && nsteps > 0 && steps[0] == 0) { /* a leading unary reads the operand itself */
        wl_active->unary_f32((int)steps[1], ptr[0], reg, nb, prm);
        st = 1;
    } else if (str[0] == 1) {
        memcpy(reg, ptr[0], (size_t)nb * 4);
    } else {
        for (int64_t i = 0; i < nb; i++) reg[i] = ptr[0][i * str[0]];
    }
    for (; st < nsteps; st++) {
        int kind = (int)steps[st * 4], fn = (int)steps[st * 4 + 1], oi = (int)steps[st * 4 + 2];
        if (kind == 0) {
            wl_active->unary_f32(fn, reg, reg, nb, prm + st * 4);
            continue;
        }
        const float *ob = ptr[oi];
        int64_t so = str[oi];
        float tmp[CHAIN_BLOCK];
        if (so > 1) {  /* rare: gather the operand first */
            for (int64_t i = 0; i < nb; i++) tmp[i] = ob[i * so];
            ob = tmp;
            so = 1;
        }
        /* the ISA's vector loops where they have the function (this file is built for the
         * baseline ISA: its own loops ran a SiLU's multiply at a third of the sigmoid's speed) */
        if (kind == 1) {
            if (!wl_active->binary_f32(fn, reg, 1, ob, so, reg, nb))
                binary_row(fn, D_F32, (const char *)reg, 1, (const char *)ob, so, (char *)reg, nb);
        } else if (!wl_active->binary_f32(fn, ob, so, reg, 1, reg, nb)) {
            binary_row(fn, D_F32, (const char *)ob, so, (const char *)reg, 1, (char *)reg, nb);
        }
    }
}

static void chain_task(void *vp, int64_t t) {
    chain_ctx *c = vp;
    const wl_op *op = c->op;
    int nd = (int)op->nd.ndim;
    int64_t last = op->nd.shape[nd - 1];
    int nin = op->n_in;
    float reg[CHAIN_BLOCK];
    int64_t cblocks = (last + c->cchunk - 1) / c->cchunk, cb = t % cblocks;
    t /= cblocks;
    int64_t r0 = t * c->chunk, r1 = r0 + c->chunk < c->rows ? r0 + c->chunk : c->rows;
    int64_t c0 = cb * c->cchunk, c1 = c0 + c->cchunk < last ? c0 + c->cchunk : last;
    float *yb = (float *)(c->slots[op->out.slot] + op->out.off);
    const float *base[WL_MAX_OPERANDS], *ptr[WL_MAX_OPERANDS];
    int64_t s[WL_MAX_OPERANDS];
    for (int i = 0; i < nin; i++) s[i] = op->nd.strides[i][nd - 1];
    if (c->group > 1) {
        /* Blocks of `group` consecutive rows of one axis-(nd-2) run: an operand that moves on
         * with the rows (stride last) is read straight; one that repeats every row (a channel
         * vector under a blocked layout) is read from a tile of `group` copies, remade only
         * when its row changes; one that holds one value per row (a bilinear resize's weight
         * along the height) from a tile of each row's value repeated, made per block. */
        int64_t m = op->nd.shape[nd - 2], g = c->group, per = (m + g - 1) / g;
        float tile[WL_MAX_OPERANDS][CHAIN_BLOCK];
        const float *tiled[WL_MAX_OPERANDS] = {0};
        int64_t str[WL_MAX_OPERANDS];
        for (int64_t u = r0; u < r1; u++) {
            int64_t k = u % per, first = (u / per) * m + k * g;
            int64_t nr = m - k * g < g ? m - k * g : g, n = nr * last;
            row_bases(op, c->slots, first, base);
            for (int i = 0; i < nin; i++) {
                int64_t rs = op->nd.strides[i][nd - 2];
                if ((rs != 0 && s[i] != 0) || (rs == 0 && s[i] == 0)) { /* rows, or a scalar */
                    ptr[i] = base[i];
                    str[i] = s[i];
                    continue;
                }
                if (rs != 0) { /* a value per row */
                    for (int64_t q = 0; q < nr; q++) {
                        float v = base[i][q * rs];
                        for (int64_t j = 0; j < last; j++) tile[i][q * last + j] = v;
                    }
                    tiled[i] = NULL;
                } else if (tiled[i] != base[i]) {
                    for (int64_t j = 0; j < last; j++) tile[i][j] = base[i][j * s[i]];
                    for (int64_t q = 1; q < g; q++) memcpy(tile[i] + q * last, tile[i], (size_t)last * 4);
                    tiled[i] = base[i];
                }
                ptr[i] = tile[i];
                str[i] = 1;
            }
            run_block(op, reg, n, ptr, str);
            memcpy(yb + first * last, reg, (size_t)n * 4);
        }
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        row_bases(op, c->slots, r, base);
        float *y = yb + r * last;
        for (int64_t x0 = c0; x0 < c1; x0 += CHAIN_BLOCK) {
            int64_t nb = c1 - x0 < CHAIN_BLOCK ? c1 - x0 : CHAIN_BLOCK;
            for (int i = 0; i < nin; i++) ptr[i] = base[i] + x0 * s[i];
            run_block(op, reg, nb, ptr, s);
            memcpy(y + x0, reg, (size_t)nb * 4);
        }
    }
}

/* Rows of `last` elements can run `group` at a time when every operand either continues with
 * the next row (element stride 1, row stride last), repeats the same row (row stride 0) or
 * holds one value per row (element stride 0). */
static int64_t row_group(const wl_op *op) {
    int nd = (int)op->nd.ndim;
    if (nd < 2) return 0;
    int64_t last = op->nd.shape[nd - 1], m = op->nd.shape[nd - 2];
    if (last <= 0 || 2 * last > CHAIN_BLOCK || m < 2) return 0;
    for (int i = 0; i < op->n_in; i++) {
        int64_t p = op->nd.strides[i][nd - 2], s = op->nd.strides[i][nd - 1];
        if (p != 0 && s != 0 && !(s == 1 && p == last)) return 0;
    }
    return CHAIN_BLOCK / last;
}

int wl_chain(const wl_op *op, const wl_exec *ex) {
    int nthreads = ex->nthreads;
    int64_t last = op->nd.shape[op->nd.ndim - 1];
    chain_ctx c = {op, ex->slots, op->nd.rows, 0, last, last, row_group(op)};
    int64_t total = c.rows * last, tasks = 1;
    if (c.group > 1) {
        int64_t m = op->nd.shape[op->nd.ndim - 2];
        c.rows = c.rows / m * ((m + c.group - 1) / c.group);  /* blocks of rows */
        c.chunk = c.rows;
        if (total >= WL_EW_GRAIN) tasks = wl_chunks(c.rows, 1, nthreads, &c.chunk);
    } else if (total < WL_EW_GRAIN) {
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
