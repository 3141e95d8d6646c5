/* Conv2D by Winograd F(2,3) (3x3, stride 1, one group): input tiles transformed into 16
 * planes, 16 GEMMs against weights the compiler transformed once (op->aux, for GEMM panels of
 * op->conv.packed_nr), then the output transform with bias, residual and activation. */
#include "internal.h"

/* Winograd F(2,3): Y = A^T [ (G g G^T) .* (B^T d B) ] A over 4x4 input tiles, 2x2 outputs. */
void wl_winograd_weights(const float *w, int64_t o, int64_t c, float *out) {
    /* out layout: [16][o][c] */
    for (int64_t oi = 0; oi < o; oi++) {
        for (int64_t ci = 0; ci < c; ci++) {
            const float *g = w + (oi * c + ci) * 9;
            float t[4][3];
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[0 * 3 + j];
                t[1][j] = 0.5f * (g[0 * 3 + j] + g[1 * 3 + j] + g[2 * 3 + j]);
                t[2][j] = 0.5f * (g[0 * 3 + j] - g[1 * 3 + j] + g[2 * 3 + j]);
                t[3][j] = g[2 * 3 + j];
            }
            for (int i = 0; i < 4; i++) {
                float u[4];
                u[0] = t[i][0];
                u[1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
                u[2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
                u[3] = t[i][2];
                for (int j = 0; j < 4; j++) out[((int64_t)(i * 4 + j) * o + oi) * c + ci] = u[j];
            }
        }
    }
}

typedef struct {
    const wl_op *op;
    const float *x, *u, *bias, *res;
    float *y, *v, *m;
    int64_t n_img, tiles_w, tiles, np, chunk;
} wino_ctx;

/* input transform of a chunk of NR-tile panels: v[16][panel][c][nr] */
static void wino_in_task(void *vp, int64_t t) {
    const wino_ctx *wc = vp;
    const wl_op *op = wc->op;
    const wl_conv_params *cp = &op->conv;
    const int64_t nr = wl_active->nr;
    int64_t C = cp->c, H = cp->h, W = cp->w, pt = cp->pad_top, pl = cp->pad_left;
    const float *x = wc->x + wc->n_img * C * H * W;
    int64_t p0 = t * wc->chunk, p1 = p0 + wc->chunk < wc->np ? p0 + wc->chunk : wc->np;
    int64_t pstride = C * nr;           /* floats per panel in one of the 16 planes */
    int64_t plane = wc->np * pstride;   /* floats per plane */
    for (int64_t p = p0; p < p1; p++) {
        for (int64_t j = 0; j < nr; j++) {
            int64_t tile = p * nr + j;
            int64_t ty = tile / wc->tiles_w, tx = tile % wc->tiles_w;
            int64_t y0 = ty * 2 - pt, x0 = tx * 2 - pl;
            int valid = tile < wc->tiles;
            for (int64_t c = 0; c < C; c++) {
                const float *xc = x + c * H * W;
                float d[4][4];
                for (int i = 0; i < 4; i++)
                    for (int k = 0; k < 4; k++) {
                        int64_t iy = y0 + i, ix = x0 + k;
                        d[i][k] = (valid && iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix]
                                                                                  : 0.0f;
                    }
                float s[4][4];
                for (int k = 0; k < 4; k++) {
                    s[0][k] = d[0][k] - d[2][k];
                    s[1][k] = d[1][k] + d[2][k];
                    s[2][k] = d[2][k] - d[1][k];
                    s[3][k] = d[1][k] - d[3][k];
                }
                for (int i = 0; i < 4; i++) {
                    float r[4];
                    r[0] = s[i][0] - s[i][2];
                    r[1] = s[i][1] + s[i][2];
                    r[2] = s[i][2] - s[i][1];
                    r[3] = s[i][1] - s[i][3];
                    for (int k = 0; k < 4; k++)
                        wc->v[(i * 4 + k) * plane + p * pstride + c * nr + j] = r[k];
                }
            }
        }
    }
}

static void wino_out_task(void *vp, int64_t t) {
    /* t indexes (o, tile-row) pairs: m[16][o][tiles] -> y */
    const wino_ctx *wc = vp;
    const wl_op *op = wc->op;
    const wl_conv_params *cp = &op->conv;
    int64_t O = cp->o, OH = cp->oh, OW = cp->ow;
    int64_t tiles_h = (OH + 1) / 2;
    int64_t o = t / tiles_h, ty = t % tiles_h;
    float *y = wc->y + (wc->n_img * O + o) * OH * OW;
    const float *res = wc->res ? wc->res + (wc->n_img * O + o) * OH * OW : NULL;
    float bias = wc->bias ? wc->bias[o] : 0.0f;
    int64_t plane = O * wc->tiles;
    for (int64_t tx = 0; tx < wc->tiles_w; tx++) {
        int64_t tile = ty * wc->tiles_w + tx;
        float mm[4][4];
        for (int i = 0; i < 16; i++) mm[i / 4][i % 4] = wc->m[i * plane + o * wc->tiles + tile];
        float s[2][4];
        for (int k = 0; k < 4; k++) {
            s[0][k] = mm[0][k] + mm[1][k] + mm[2][k];
            s[1][k] = mm[1][k] - mm[2][k] - mm[3][k];
        }
        for (int i = 0; i < 2; i++) {
            int64_t oy = ty * 2 + i;
            if (oy >= OH) break;
            float r0 = s[i][0] + s[i][1] + s[i][2] + bias;
            float r1 = s[i][1] - s[i][2] - s[i][3] + bias;
            int64_t ox = tx * 2;
            if (res) {
                r0 += res[oy * OW + ox];
                if (ox + 1 < OW) r1 += res[oy * OW + ox + 1];
            }
            y[oy * OW + ox] = r0;
            if (ox + 1 < OW) y[oy * OW + ox + 1] = r1;
        }
    }
    if (cp->act.fn != U_IDENTITY) {
        int64_t r0 = ty * 2, r1 = ty * 2 + 2 < OH ? ty * 2 + 2 : OH;
        wl_active->unary_f32((int)cp->act.fn, y + r0 * OW, y + r0 * OW, (r1 - r0) * OW,
                             cp->act.prm);
    }
}

int wl_conv_winograd(const wl_op *op, const wl_exec *ex, const float *x, const float *bias,
                     const float *res, float *y) {
    const wl_conv_params *cp = &op->conv;
    const int64_t nr = wl_active->nr;
    int nthreads = ex->nthreads;
    int64_t N = cp->n, C = cp->c, O = cp->o, OH = cp->oh, OW = cp->ow;
    if (cp->packed_nr != nr) return wl_fail(ex, "winograd weights prepared for another ISA");
    int64_t tiles_h = (OH + 1) / 2, tiles_w = (OW + 1) / 2, tiles = tiles_h * tiles_w;
    int64_t np = (tiles + nr - 1) / nr;
    float *v = wl_scratch(2, sizeof(float) * (size_t)(16 * np * C * nr));
    float *m = wl_scratch(3, sizeof(float) * (size_t)(16 * O * tiles + 1));
    if (!v || !m) return wl_fail(ex, "out of memory in Winograd conv");
    for (int64_t n = 0; n < N; n++) {
        wino_ctx wc = {op, x, (const float *)op->aux, bias, res, y, v, m, n, tiles_w, tiles, np, 1};
        int64_t ntask = nthreads > 1 ? nthreads * 4 : 1;
        if (ntask > np) ntask = np;
        wc.chunk = (np + ntask - 1) / ntask;
        wl_parallel_for((np + wc.chunk - 1) / wc.chunk, wino_in_task, &wc, nthreads);
        for (int i = 0; i < 16; i++) {
            static const double noargs[4] = {0, 0, 0, 0};
            wl_gemm(O, tiles, C, wc.u + (int64_t)i * O * C, C, v + (int64_t)i * np * C * nr,
                    m + (int64_t)i * O * tiles, tiles, NULL, BIAS_NONE, NULL, U_IDENTITY, noargs,
                    nthreads);
        }
        wl_parallel_for(O * tiles_h, wino_out_task, &wc, nthreads);
    }
    return 0;
}
