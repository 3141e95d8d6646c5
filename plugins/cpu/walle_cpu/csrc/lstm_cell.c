/* LSTM cell (a composite the cpu backend claims): (gates iofc, c_prev; c_out as ins[2]) -> h,
 * c = f*c_prev + i*tanh(g), h = o*tanh(c), with the same kernels (and order of operations) as
 * the expanded cell. */
#include "internal.h"

int wl_lstm_cell(const wl_op *op, const wl_exec *ex) {
    int64_t B = op->lstm.batch, H = op->lstm.hidden;
    const float *g = (const float *)wl_in(op, ex, 0), *cp = (const float *)wl_in(op, ex, 1);
    float *co = (float *)wl_in(op, ex, 2), *h = (float *)wl_out(op, ex);
    float *t = wl_scratch(1, sizeof(float) * (size_t)(5 * H + 1));
    if (!t) return wl_fail(ex, "out of memory in an LSTM cell");
    static const double noprm[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < B; b++) {
        const float *gb = g + b * 4 * H;
        wl_active->unary_f32(U_SIGMOID, gb, t, 3 * H, noprm); /* i, o, f */
        wl_active->unary_f32(U_TANH, gb + 3 * H, t + 3 * H, H, noprm);
        for (int64_t j = 0; j < H; j++)
            co[b * H + j] = t[2 * H + j] * cp[b * H + j] + t[j] * t[3 * H + j];
        wl_active->unary_f32(U_TANH, co + b * H, t + 4 * H, H, noprm);
        for (int64_t j = 0; j < H; j++) h[b * H + j] = t[H + j] * t[4 * H + j];
    }
    return 0;
}
