/* Sort: a stable merge sort per line of the middle axis of (outer, n, inner), giving int64
 * indices (descending keeps equal keys in order; NaN sorts last). */
#include "internal.h"

typedef struct {
    const wl_op *op;
    const char *x;
    int64_t *y;
} sort_ctx;

#define SORT_T(T)                                                                               \
    {                                                                                           \
        const T *x = (const T *)c->x;                                                           \
        T *v = (T *)buf;                                                                        \
        T *v2 = v + nn;                                                                         \
        int64_t *ix = (int64_t *)(v2 + nn), *ix2 = ix + nn;                                     \
        for (int64_t j = 0; j < nn; j++) { v[j] = x[(o * nn + j) * inner + i]; ix[j] = j; }     \
        for (int64_t w = 1; w < nn; w *= 2) {                                                   \
            for (int64_t lo = 0; lo < nn; lo += 2 * w) {                                        \
                int64_t mid = lo + w < nn ? lo + w : nn, hi = lo + 2 * w < nn ? lo + 2 * w : nn; \
                int64_t a = lo, b = mid, k = lo;                                                \
                while (a < mid && b < hi) {                                                     \
                    T va = v[a], vb = v[b];                                                     \
                    int take_b = desc ? (vb > va || (va != va && vb == vb))                     \
                                      : (vb < va || (va != va && vb == vb));                     \
                    if (take_b) { v2[k] = vb; ix2[k++] = ix[b++]; }                             \
                    else { v2[k] = va; ix2[k++] = ix[a++]; }                                    \
                }                                                                               \
                while (a < mid) { v2[k] = v[a]; ix2[k++] = ix[a++]; }                           \
                while (b < hi) { v2[k] = v[b]; ix2[k++] = ix[b++]; }                            \
            }                                                                                   \
            T *tv = v; v = v2; v2 = tv;                                                         \
            int64_t *ti = ix; ix = ix2; ix2 = ti;                                               \
        }                                                                                       \
        for (int64_t j = 0; j < nn; j++) c->y[(o * nn + j) * inner + i] = ix[j];                \
    }                                                                                           \
    break;

static void sort_task(void *vp, int64_t t) {
    sort_ctx *c = vp;
    const wl_op *op = c->op;
    int64_t nn = op->sort.n, inner = op->sort.inner;
    int desc = (int)op->sort.descending;
    int64_t o = t / inner, i = t % inner;
    char *buf = wl_scratch(1, (size_t)nn * 32 + 64);
    if (!buf) return;
    switch (op->dtype) {
    case D_F32: SORT_T(float)
    case D_F64: SORT_T(double)
    case D_I8: SORT_T(int8_t)
    case D_I16: SORT_T(int16_t)
    case D_I32: SORT_T(int32_t)
    case D_I64: SORT_T(int64_t)
    case D_U8: SORT_T(uint8_t)
    case D_U16: SORT_T(uint16_t)
    case D_U32: SORT_T(uint32_t)
    case D_U64: SORT_T(uint64_t)
    case D_BOOL: SORT_T(uint8_t)
    default: break;
    }
}

int wl_sort(const wl_op *op, const wl_exec *ex) {
    sort_ctx c = {op, wl_in(op, ex, 0), (int64_t *)wl_out(op, ex)};
    wl_parallel_for(op->sort.outer * op->sort.inner, sort_task, &c,
                    op->sort.n >= 64 ? ex->nthreads : 1);
    return 0;
}
