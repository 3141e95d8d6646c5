/* Cast between any two of the numeric dtypes and bool. */
#include "internal.h"

#define CAST_LOOP(TS, TD, EXPR) \
    { const TS *s = (const TS *)x; TD *d = (TD *)y; for (int64_t i = 0; i < n; i++) { TS v = s[i]; d[i] = (TD)(EXPR); } } return 0;

#define IS_FLOAT_T(TS) ((TS)0.5 != 0)
#define CAST_TO(TS)                                                                              \
    switch (dto) {                                                                               \
    case D_F32: CAST_LOOP(TS, float, v)                                                          \
    case D_F64: CAST_LOOP(TS, double, v)                                                         \
    case D_I8: CAST_LOOP(TS, int8_t, v)                                                          \
    case D_I16: CAST_LOOP(TS, int16_t, v)                                                        \
    case D_I32: CAST_LOOP(TS, int32_t, v)                                                        \
    case D_I64: CAST_LOOP(TS, int64_t, v)                                                        \
    case D_U8: CAST_LOOP(TS, uint8_t, IS_FLOAT_T(TS) ? (uint8_t)(int64_t)v : (uint8_t)v)          \
    case D_U16: CAST_LOOP(TS, uint16_t, IS_FLOAT_T(TS) ? (uint16_t)(int64_t)v : (uint16_t)v)      \
    case D_U32: CAST_LOOP(TS, uint32_t, IS_FLOAT_T(TS) ? (uint32_t)(int64_t)v : (uint32_t)v)      \
    case D_U64: CAST_LOOP(TS, uint64_t, v)                                                       \
    case D_BOOL: CAST_LOOP(TS, uint8_t, v != 0)                                                  \
    default: return 2;                                                                           \
    }

static int cast_range(int dfrom, int dto, const char *x, char *y, int64_t n) {
    switch (dfrom) {
    case D_F32: CAST_TO(float)
    case D_F64: CAST_TO(double)
    case D_I8: CAST_TO(int8_t)
    case D_I16: CAST_TO(int16_t)
    case D_I32: CAST_TO(int32_t)
    case D_I64: CAST_TO(int64_t)
    case D_U8: CAST_TO(uint8_t)
    case D_U16: CAST_TO(uint16_t)
    case D_U32: CAST_TO(uint32_t)
    case D_U64: CAST_TO(uint64_t)
    case D_BOOL: CAST_TO(uint8_t)
    default: return 2;
    }
}

static int64_t dtype_bytes(int dt) {
    switch (dt) {
    case D_F64: case D_I64: case D_U64: return 8;
    case D_F32: case D_I32: case D_U32: return 4;
    case D_F16: case D_I16: case D_U16: return 2;
    default: return 1;
    }
}

typedef struct {
    const wl_op *op;
    const char *x;
    char *y;
    int64_t chunk;
    int status;
} cast_ctx;

static void cast_task(void *vp, int64_t t) {
    cast_ctx *c = vp;
    const wl_op *op = c->op;
    int64_t i0 = t * c->chunk, i1 = i0 + c->chunk < op->cast.n ? i0 + c->chunk : op->cast.n;
    if (cast_range(op->dtype, op->dtype2, c->x + i0 * dtype_bytes(op->dtype),
                   c->y + i0 * dtype_bytes(op->dtype2), i1 - i0))
        c->status = 1;
}

int wl_cast(const wl_op *op, const wl_exec *ex) {
    cast_ctx c = {op, wl_in(op, ex, 0), wl_out(op, ex), 0, 0};
    int64_t tasks = wl_chunks(op->cast.n, WL_EW_GRAIN, ex->nthreads, &c.chunk);
    wl_parallel_for(tasks, cast_task, &c, ex->nthreads);
    if (c.status) return wl_fail(ex, "unsupported cast %d -> %d", op->dtype, op->dtype2);
    return 0;
}
