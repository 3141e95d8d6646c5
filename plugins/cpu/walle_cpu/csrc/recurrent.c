/* Whole LSTM or GRU directions in one kernel (the lstm_sequence / gru_sequence composites).
 *
 * The input projection of every step (xw, with the biases that sit outside the reset gate) is
 * one MatMul ahead of this op. Per step, the recurrent product h_prev @ R^T runs on the GEMM
 * driver with R packed once (by the compiler when constant, else per run; the LSTM adds xw[t]
 * as the GEMM's residual), then the gate
 * math runs over whole rows with the vector unary/binary kernels, in the order of operations of
 * the expansion. The hidden state of step t is row t of Y, so the next step reads it there.
 * The two directions of a bidirectional layer (dirs 2) run at once, one per thread, unless
 * more than two threads could share each of their steps.
 *
 * One direction whose steps are too small for the GEMM's own threads (chunks > 1) splits each
 * step by hidden units instead: chunk i owns units [u0, u1) and R^T comes packed per chunk
 * (every gate's columns of its units), so a chunk's product, gate math, cell state and h run
 * on one thread with nothing shared but h of the previous step. Threads claim (step, chunk)
 * items in order and a claim of step t waits until every chunk of step t-1 is done; a thread
 * that never joins leaves its items to the others, so one thread alone runs them all. */
#include <sched.h>
#include <string.h>

#include "internal.h"

static const double noprm[4] = {0, 0, 0, 0};

typedef struct {
    int64_t batch, hidden;
    const float *rbh; /* GRU: Rb of the h gate, or NULL */
    const float *pk;  /* R^T packed: all gates, or (GRU without linear_before_reset) z and r */
    const float *pkh; /* GRU without linear_before_reset: the h gate's columns packed */
    float *gates;     /* batch x gates*hidden */
    float *tmp;       /* batch x hidden */
    float *c;         /* LSTM cell state, batch x hidden */
    int nthreads;
    int lbr;
} rec_ctx;

/* y = a (fn) b over n floats */
static void vec(int fn, const float *a, const float *b, float *y, int64_t n) {
    wl_active->binary_f32(fn, a, 1, b, 1, y, n);
}

static void lstm_step(const rec_ctx *s, const float *xt, const float *hp, float *ht) {
    int64_t B = s->batch, H = s->hidden;
    wl_gemm(B, 4 * H, H, hp, H, s->pk, s->gates, 4 * H, NULL, BIAS_NONE, xt, U_IDENTITY, NULL,
            s->nthreads);
    for (int64_t b = 0; b < B; b++) {
        float *g = s->gates + b * 4 * H, *c = s->c + b * H;
        wl_active->unary_f32(U_SIGMOID, g, g, 3 * H, noprm); /* i, o, f */
        wl_active->unary_f32(U_TANH, g + 3 * H, g + 3 * H, H, noprm);
        for (int64_t j = 0; j < H; j++) c[j] = g[2 * H + j] * c[j] + g[j] * g[3 * H + j];
        wl_active->unary_f32(U_TANH, c, s->tmp, H, noprm);
        vec(B_MUL, g + H, s->tmp, ht + b * H, H);
    }
}

static void gru_step(const rec_ctx *s, const float *xt, const float *hp, float *ht) {
    int64_t B = s->batch, H = s->hidden, GH = 3 * H;
    if (s->lbr) { /* n = tanh(xh + r * (h_prev @ Rh^T + Rbh)) */
        wl_gemm(B, GH, H, hp, H, s->pk, s->gates, GH, NULL, BIAS_NONE, NULL, U_IDENTITY, NULL,
                s->nthreads);
        for (int64_t b = 0; b < B; b++) {
            float *g = s->gates + b * GH;
            const float *x = xt + b * GH;
            vec(B_ADD, x, g, g, 2 * H);
            wl_active->unary_f32(U_SIGMOID, g, g, 2 * H, noprm); /* z, r */
            if (s->rbh) vec(B_ADD, g + 2 * H, s->rbh, g + 2 * H, H);
            vec(B_MUL, g + H, g + 2 * H, g + 2 * H, H);
            vec(B_ADD, x + 2 * H, g + 2 * H, g + 2 * H, H);
        }
    } else { /* n = tanh(xh + (r * h_prev) @ Rh^T + Rbh) */
        wl_gemm(B, 2 * H, H, hp, H, s->pk, s->gates, GH, NULL, BIAS_NONE, xt, U_IDENTITY, NULL,
                s->nthreads);
        for (int64_t b = 0; b < B; b++) {
            float *g = s->gates + b * GH;
            wl_active->unary_f32(U_SIGMOID, g, g, 2 * H, noprm);
            vec(B_MUL, g + H, hp + b * H, s->tmp + b * H, H);
        }
        wl_gemm(B, H, H, s->tmp, H, s->pkh, s->gates + 2 * H, GH, s->rbh,
                s->rbh ? BIAS_COL : BIAS_NONE, NULL, U_IDENTITY, NULL, s->nthreads);
        for (int64_t b = 0; b < B; b++)
            vec(B_ADD, xt + b * GH + 2 * H, s->gates + b * GH + 2 * H, s->gates + b * GH + 2 * H, H);
    }
    for (int64_t b = 0; b < B; b++) { /* h = n + z * (h_prev - n) */
        float *g = s->gates + b * GH, *n = g + 2 * H, *h = ht + b * H;
        wl_active->unary_f32(U_TANH, n, n, H, noprm);
        vec(B_SUB, hp + b * H, n, h, H);
        vec(B_MUL, g, h, h, H);
        vec(B_ADD, n, h, h, H);
    }
}

/* One direction, batch rows [b0, b0 + nb); its operands start at ins[in0] (xw, rt, h0, c0 |
 * rbh) and ins[out0] (its outputs after y: h_final, c_final). Every row of a step sits at the
 * same offset in xw, y and the states, so a slice of rows is the whole run on shifted pointers
 * with the full batch as the step stride. Returns 0, or -1 when out of scratch memory. */
static int run_direction(const wl_op *op, const wl_exec *ex, int dir, int64_t in0, int64_t out0,
                         float *y, int reverse, int nthreads, int64_t b0, int64_t nb) {
    const wl_recurrent_params *p = &op->recurrent;
    int64_t T = p->seq, BS = p->batch, B = nb, H = p->hidden, G = p->gru ? 3 : 4;
    const float *xw = (const float *)wl_in(op, ex, in0) + b0 * G * H;
    const float *rt = (const float *)wl_in(op, ex, in0 + 1);
    const float *h0 = (const float *)wl_in(op, ex, in0 + 2) + b0 * H;
    const float *c0 = p->gru ? NULL : (const float *)wl_in(op, ex, in0 + 3) + b0 * H;
    const float *rbh = p->has_rbh ? (const float *)wl_in(op, ex, in0 + 3) : NULL;
    float *h_final = (float *)wl_in(op, ex, out0) + b0 * H;
    float *c_final = p->gru ? NULL : (float *)wl_in(op, ex, out0 + 1) + b0 * H;
    y += b0 * H;
    int split = p->gru && !p->linear_before_reset; /* z, r and h packed apart */
    int64_t pk_n = split ? wl_packed_b_floats(H, 2 * H) + wl_packed_b_floats(H, H)
                         : wl_packed_b_floats(H, G * H);
    size_t floats = (size_t)(pk_n + B * G * H + 2 * B * H) + 16;
    /* a constant R comes packed by the compiler (aux: each direction's pk_n floats in turn) */
    const float *pre = op->aux ? (const float *)op->aux + dir * pk_n : NULL;
    if (pre) floats -= (size_t)pk_n;
    float *mem = wl_scratch(2, sizeof(float) * floats); /* per thread: directions may run at once */
    if (!mem) return -1;
    float *pk = pre ? (float *)pre : mem, *work = pre ? mem : mem + pk_n;
    rec_ctx s = {B, H, rbh, pk, split ? pk + wl_packed_b_floats(H, 2 * H) : NULL, work,
                 work + B * G * H, work + B * G * H + B * H, nthreads, (int)p->linear_before_reset};
    if (!pre && split) {
        wl_pack_b_parallel(rt, H, 2 * H, G * H, 0, pk, nthreads);
        wl_pack_b_parallel(rt + 2 * H, H, H, G * H, 0, (float *)s.pkh, nthreads);
    } else if (!pre) {
        wl_pack_b_parallel(rt, H, G * H, G * H, 0, pk, nthreads);
    }
    if (c0) memcpy(s.c, c0, sizeof(float) * (size_t)(B * H));
    const float *hp = h0;
    for (int64_t i = 0; i < T; i++) {
        int64_t t = reverse ? T - 1 - i : i;
        float *ht = y + t * BS * H;
        if (p->gru) gru_step(&s, xw + t * BS * G * H, hp, ht);
        else lstm_step(&s, xw + t * BS * G * H, hp, ht);
        hp = ht;
    }
    memcpy(h_final, hp, sizeof(float) * (size_t)(B * H));
    if (c_final) memcpy(c_final, s.c, sizeof(float) * (size_t)(B * H));
    return 0;
}

/* ------------------------------------------------------------------ steps split by units */

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#define MAX_CHUNKS 64

typedef struct {
    const wl_recurrent_params *p;
    const float *xw, *h0, *rbh;
    const float *pk[MAX_CHUNKS]; /* chunk i's packed R^T columns */
    float *y, *c;                /* c: the LSTM cell state, batch x hidden, shared by units */
    int64_t cw;                  /* the most units of a chunk */
    int64_t next;                /* atomic: the next (step, chunk) item to claim */
    int64_t done;                /* atomic: items finished */
    int failed;                  /* atomic: threads without scratch memory */
} split_ctx;

/* Chunk i (units [i * H / S, (i + 1) * H / S)) of step i_step: the chunk's gates (batch x G*hc, gate-major within a row) from its
 * own packed columns, then the same element-wise order of operations as lstm_step / gru_step
 * (the GEMM's residual add xw + acc becomes an add after it: the same single rounding). */
static void chunk_step(const split_ctx *s, int64_t i_step, int64_t i, float *gates, float *tmp) {
    const wl_recurrent_params *p = s->p;
    int64_t T = p->seq, B = p->batch, H = p->hidden, G = p->gru ? 3 : 4;
    int64_t u0 = i * H / p->chunks, hc = (i + 1) * H / p->chunks - u0, n = G * hc;
    int64_t t = p->reverse ? T - 1 - i_step : i_step;
    const float *hp = i_step == 0 ? s->h0 : s->y + (p->reverse ? t + 1 : t - 1) * B * H;
    const float *xt = s->xw + t * B * G * H;
    float *ht = s->y + t * B * H;
    wl_gemm(B, n, H, hp, H, s->pk[i], gates, n, NULL, BIAS_NONE, NULL, U_IDENTITY, NULL, 1);
    for (int64_t b = 0; b < B; b++) {
        float *g = gates + b * n, *h = ht + b * H + u0;
        const float *x = xt + b * G * H + u0;
        if (!p->gru) {
            float *c = s->c + b * H + u0;
            for (int64_t q = 0; q < 4; q++) vec(B_ADD, g + q * hc, x + q * H, g + q * hc, hc);
            wl_active->unary_f32(U_SIGMOID, g, g, 3 * hc, noprm); /* i, o, f */
            wl_active->unary_f32(U_TANH, g + 3 * hc, g + 3 * hc, hc, noprm);
            for (int64_t j = 0; j < hc; j++) c[j] = g[2 * hc + j] * c[j] + g[j] * g[3 * hc + j];
            wl_active->unary_f32(U_TANH, c, tmp, hc, noprm);
            vec(B_MUL, g + hc, tmp, h, hc);
            continue;
        }
        /* GRU, linear_before_reset: n = tanh(xh + r * (h_prev @ Rh^T + Rbh)) */
        vec(B_ADD, x, g, g, hc);
        vec(B_ADD, x + H, g + hc, g + hc, hc);
        wl_active->unary_f32(U_SIGMOID, g, g, 2 * hc, noprm); /* z, r */
        float *nn = g + 2 * hc;
        if (s->rbh) vec(B_ADD, nn, s->rbh + u0, nn, hc);
        vec(B_MUL, g + hc, nn, nn, hc);
        vec(B_ADD, x + 2 * H, nn, nn, hc);
        wl_active->unary_f32(U_TANH, nn, nn, hc, noprm); /* h = n + z * (h_prev - n) */
        vec(B_SUB, hp + b * H + u0, nn, h, hc);
        vec(B_MUL, g, h, h, hc);
        vec(B_ADD, nn, h, h, hc);
    }
}

static void split_task(void *vp, int64_t task) {
    (void)task;
    split_ctx *s = vp;
    const wl_recurrent_params *p = s->p;
    int64_t S = p->chunks, total = p->seq * S, G = p->gru ? 3 : 4;
    float *gates = wl_scratch(3, sizeof(float) * (size_t)(p->batch * (G + 1) * s->cw + 16));
    if (!gates) { /* claim nothing: the other threads (or the caller's check) handle it */
        __atomic_fetch_add(&s->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *tmp = gates + p->batch * G * s->cw;
    for (;;) {
        int64_t it = __atomic_fetch_add(&s->next, 1, __ATOMIC_RELAXED);
        if (it >= total) break;
        int64_t step = it / S, need = step * S;
        /* every chunk of the previous step: the h this step reads (acquire pairs with the
         * release of each item's finish) */
        for (unsigned spins = 0; __atomic_load_n(&s->done, __ATOMIC_ACQUIRE) < need; spins++) {
            if (spins < 4096) relax();
            else sched_yield(); /* the thread we wait for may have lost its core */
        }
        chunk_step(s, step, it % S, gates, tmp);
        __atomic_fetch_add(&s->done, 1, __ATOMIC_RELEASE);
    }
}

static int run_split(const wl_op *op, const wl_exec *ex, float *y) {
    const wl_recurrent_params *p = &op->recurrent;
    int64_t B = p->batch, H = p->hidden, S = p->chunks, G = p->gru ? 3 : 4;
    if (!op->aux || S > MAX_CHUNKS || S > H) return wl_fail(ex, "bad recurrent chunking (%lld)", (long long)S);
    split_ctx s;
    memset(&s, 0, sizeof s);
    s.p = p;
    s.xw = (const float *)wl_in(op, ex, 0);
    s.h0 = (const float *)wl_in(op, ex, 2);
    s.rbh = p->gru && p->has_rbh ? (const float *)wl_in(op, ex, 3) : NULL;
    s.y = y;
    s.cw = (H + S - 1) / S;
    const float *pk = (const float *)op->aux;
    for (int64_t i = 0; i < S; i++) {
        int64_t hc = (i + 1) * H / S - i * H / S;
        s.pk[i] = pk;
        pk += wl_packed_b_floats(H, G * hc);
    }
    int64_t ni = 3 + (p->gru ? p->has_rbh : 1);
    float *h_final = (float *)wl_in(op, ex, ni);
    if (!p->gru) {
        s.c = wl_scratch(2, sizeof(float) * (size_t)(B * H) + 64);
        if (!s.c) return wl_fail(ex, "out of memory in a recurrent sequence");
        memcpy(s.c, wl_in(op, ex, 3), sizeof(float) * (size_t)(B * H));
    }
    wl_parallel_for(ex->nthreads < S ? ex->nthreads : S, split_task, &s, ex->nthreads);
    if (__atomic_load_n(&s.done, __ATOMIC_ACQUIRE) < p->seq * S)
        return wl_fail(ex, "out of memory in a recurrent sequence");
    int64_t last = p->reverse ? 0 : p->seq - 1;
    memcpy(h_final, y + last * B * H, sizeof(float) * (size_t)(B * H));
    if (!p->gru) memcpy(wl_in(op, ex, ni + 1), s.c, sizeof(float) * (size_t)(B * H));
    return 0;
}

/* Directions and batch rows share nothing: each (direction, slice of rows) runs whole on its
 * own thread, with no wait between steps. Used where a step is too small for the GEMM's own
 * threads (a step of crnn's 48-wide LSTM is ~0.4 us of work). */
typedef struct {
    const wl_op *op;
    const wl_exec *ex;
    float *y;
    int64_t slices; /* per direction */
    int failed;     /* atomic */
} slice_ctx;

static void slice_task(void *vp, int64_t task) {
    slice_ctx *c = vp;
    const wl_recurrent_params *p = &c->op->recurrent;
    int64_t ni = 3 + (p->gru ? p->has_rbh : 1), no = p->gru ? 1 : 2; /* per direction */
    int64_t d = task / c->slices, i = task % c->slices, dirs = p->dirs == 2 ? 2 : 1;
    int64_t b0 = i * p->batch / c->slices, b1 = (i + 1) * p->batch / c->slices;
    float *y = d ? (float *)wl_in(c->op, c->ex, 2 * ni + no) : c->y;
    int64_t out0 = d ? 2 * ni + no + 1 : dirs * ni;
    if (run_direction(c->op, c->ex, (int)d, d * ni, out0, y, (int)(p->reverse ^ d), 1, b0, b1 - b0))
        __atomic_fetch_add(&c->failed, 1, __ATOMIC_RELAXED);
}

/* per-step products below this many MACs run on one thread anyway (wl_gemm's own bound) */
#define STEP_PARALLEL_MACS 65536

int wl_recurrent(const wl_op *op, const wl_exec *ex) {
    const wl_recurrent_params *p = &op->recurrent;
    float *y = (float *)wl_out(op, ex);
    int64_t ni = 3 + (p->gru ? p->has_rbh : 1), no = p->gru ? 1 : 2, dirs = p->dirs == 2 ? 2 : 1;
    int64_t step_macs = p->batch * (p->gru ? 3 : 4) * p->hidden * p->hidden;
    if (p->chunks > 1 && dirs == 1 && p->seq > 0) return run_split(op, ex, y);
    int64_t per_dir = ex->nthreads / dirs; /* threads each direction could have */
    if (ex->nthreads > 1 && (step_macs < STEP_PARALLEL_MACS || per_dir < 2)) {
        int64_t slices = per_dir < p->batch ? per_dir : p->batch;
        slice_ctx c = {op, ex, y, slices > 1 ? slices : 1, 0};
        wl_parallel_for(dirs * c.slices, slice_task, &c, ex->nthreads);
        if (c.failed) return wl_fail(ex, "out of memory in a recurrent sequence");
        return 0;
    }
    /* one thread, or steps large enough to share the threads: one direction after the other,
     * each step's product on every thread */
    int fail = run_direction(op, ex, 0, 0, dirs * ni, y, (int)p->reverse, ex->nthreads, 0, p->batch);
    if (!fail && dirs == 2)
        fail = run_direction(op, ex, 1, ni, 2 * ni + no + 1, (float *)wl_in(op, ex, 2 * ni + no),
                             (int)!p->reverse, ex->nthreads, 0, p->batch);
    if (fail) return wl_fail(ex, "out of memory in a recurrent sequence");
    return 0;
}
