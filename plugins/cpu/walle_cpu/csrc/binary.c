/* Binary and Select: element-wise ops over an N-D broadcast (operands with per-axis strides,
 * 0 where broadcast), walked row by row over the output's last axis (rows: binary_row.h). */
#include "binary_row.h"

/* N-D iteration shared by Binary and Select (op->nd). Rows are the last axis. */
typedef struct {
    const wl_op *op;
    const char *in[3];
    char *y;
    int64_t rows, chunk, esize_in, esize_out;
    int status;
} nd_ctx;

static void nd_task(void *vp, int64_t t) {
    nd_ctx *c = vp;
    const wl_op *op = c->op;
    int nd = (int)op->nd.ndim;
    const int64_t *shape = op->nd.shape;
    int64_t r0 = t * c->chunk, r1 = r0 + c->chunk < c->rows ? r0 + c->chunk : c->rows;
    int64_t last = shape[nd - 1];
    int nin = op->kind == WL_SELECT ? 3 : 2;
    /* the first row's index and operand offsets by division, the next rows' by carrying (a
     * division per axis and row cost more than a short row: swin's bias add of 16-wide rows) */
    int64_t idx[WL_MAX_DIMS] = {0}, off[3] = {0, 0, 0}, rem = r0;
    for (int d = nd - 2; d >= 0; d--) {
        idx[d] = rem % shape[d];
        rem /= shape[d];
        for (int i = 0; i < nin; i++) off[i] += idx[d] * op->nd.strides[i][d];
    }
    int64_t s[3];
    for (int i = 0; i < nin; i++) s[i] = op->nd.strides[i][nd - 1];
    /* float32 rows with contiguous or broadcast operands: the ISA's vector loops */
    int vec = op->kind == WL_BINARY && op->dtype == D_F32 && s[0] <= 1 && s[1] <= 1 && s[0] >= 0 && s[1] >= 0;
    for (int64_t r = r0; r < r1; r++) {
        char *y = c->y + r * last * c->esize_out;
        if (op->kind == WL_BINARY) {
            const char *a = c->in[0] + off[0] * c->esize_in, *b = c->in[1] + off[1] * c->esize_in;
            if (!(vec && wl_active->binary_f32(op->fn, (const float *)a, s[0], (const float *)b, s[1],
                                               (float *)y, last))) {
                int st = binary_row(op->fn, op->dtype, a, s[0], b, s[1], y, last);
                if (st) c->status = st;
            }
        } else {
            const uint8_t *cond = (const uint8_t *)c->in[0] + off[0];
            const char *a = c->in[1] + off[1] * c->esize_in, *b = c->in[2] + off[2] * c->esize_in;
            switch (c->esize_in) {
#define SEL(T)                                                                                   \
    for (int64_t i = 0; i < last; i++)                                                           \
        ((T *)y)[i] = cond[i * s[0]] ? ((const T *)a)[i * s[1]] : ((const T *)b)[i * s[2]];      \
    break;
            case 1: SEL(uint8_t)
            case 2: SEL(uint16_t)
            case 4: SEL(uint32_t)
            case 8: SEL(uint64_t)
#undef SEL
            default: c->status = 2;
            }
        }
        for (int d = nd - 2; d >= 0; d--) { /* the next row */
            for (int i = 0; i < nin; i++) off[i] += op->nd.strides[i][d];
            if (++idx[d] < shape[d]) break;
            for (int i = 0; i < nin; i++) off[i] -= shape[d] * op->nd.strides[i][d];
            idx[d] = 0;
        }
    }
}


int wl_binary(const wl_op *op, const wl_exec *ex) {
    const wl_nd_params *p = &op->nd;
    nd_ctx c;
    c.op = op;
    c.y = wl_out(op, ex);
    for (int i = 0; i < op->n_in; i++) c.in[i] = wl_in(op, ex, i);
    c.rows = p->rows;
    c.esize_in = p->esize_in;
    c.esize_out = p->esize_out;
    c.status = 0;
    int64_t total = c.rows * p->shape[p->ndim - 1];
    int64_t tasks = total >= 2 * WL_EW_GRAIN ? wl_chunks(c.rows, 1, ex->nthreads, &c.chunk)
                                             : (c.chunk = c.rows, 1);
    wl_parallel_for(tasks, nd_task, &c, ex->nthreads);
    if (c.status == 1) return wl_fail(ex, "integer division by zero");
    if (c.status)
        return wl_fail(ex, "unsupported element-wise function %d for dtype %d", op->fn, op->dtype);
    return 0;
}
