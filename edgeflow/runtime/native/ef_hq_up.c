/* The last HiFi-GAN upsampler ahead of the INT8 waveform stage (ef_hq8.c): a ConvTranspose of stride u run as one
 * centred conv of u C rows over its input rate (its merged phase form, wave_stage.merge_upsampler) whose rows are
 * interleaved into the stage's input, its input quantized per tile like the stage's convs (ef_hq_conv). */

#include "ef_hq.h"

/* c->qr from q [cout][cin][k]: per row tile, the quads (tap j: quads [j cq, (j + 1) cq)) from its first to its last
 * tap with a nonzero weight in any of its rows ({0, 0}: none). A merged phase form has one zero tap per phase
 * (3 taps for 2 at stride 4, kernel 8), a third of its dot products. -1 out of memory. */
static int ef_hq_quad_ranges(ef_hqconv *c, const int8_t *q)
{
    const int cq = (c->cin + 3) / 4, nt = (c->cout + EF_MR - 1) / EF_MR;
    if (!(c->qr = malloc((size_t)2 * nt * sizeof(int)))) return -1;
    for (int tb = 0; tb < nt; tb++) {
        int lo = c->k, hi = -1;
        for (int o = tb * EF_MR; o < (tb + 1) * EF_MR && o < c->cout; o++)
            for (int ci = 0; ci < c->cin; ci++)
                for (int j = 0; j < c->k; j++)
                    if (q[((size_t)o * c->cin + ci) * c->k + j]) {
                        lo = j < lo ? j : lo;
                        hi = j > hi ? j : hi;
                    }
        c->qr[2 * tb] = hi < 0 ? 0 : lo * cq;
        c->qr[2 * tb + 1] = hi < 0 ? 0 : (hi + 1) * cq;
    }
    return 0;
}

/* The last upsampler ahead of the stage: a ConvTranspose of stride u in its merged phase form, a conv q [u C][cin][k]
 * (s8, k odd, centred; row r C + o is output channel o's phase r: out[o][u t + r] = row r C + o at column t) with
 * per-row scales scale [u C] and bias [u C], its input quantized like the stage's convs' (a u8 scale per tile, the
 * leaky ReLU of slope `slope` applied first; planes 1 or 2). ef_hq_run then takes the upsampler's input (before that
 * leaky ReLU) [cin][T] and writes audio [u T]. 0, or -1 (bad arguments, memory). */
EF_API int ef_hq_set_up(ef_hq *m, int cin, int u, int k, int planes, float slope, const int8_t *q, const float *scale,
                        const float *bias)
{
    if (!m || cin < 1 || u < 1 || k < 1 || k % 2 == 0 || (planes != 1 && planes != 2) || !q || !scale || !bias)
        return -1;
    const int cout = u * m->C;
    for (int o = 0; o < cout; o++)
        if (!(scale[o] >= 0.0f) || scale[o] > 1e30f) return -1;
    ef_hqconv *c = calloc(1, sizeof *c);
    if (!c) return -1;
    *c = (ef_hqconv){.cin = cin, .cout = cout, .k = k, .d = 1, .mode = 1, .planes = planes};
    c->bias = malloc(cout * sizeof(float));
    c->q = ef_q8_pack_conv(cout, (cout + EF_MR - 1) / EF_MR * EF_MR, cin, k, q, scale);
    if (!c->bias || !c->q || ef_hq_quad_ranges(c, q)) {
        ef_q8_free(c->q); free(c->bias); free(c->qr); free(c);
        return -1;
    }
    memcpy(c->bias, bias, cout * sizeof(float));
    if (m->up) { ef_q8_free(m->up->q); free(m->up->bias); free(m->up->qr); free(m->up); }
    m->up = c; m->u = u; m->up_slope = slope;
    return 0;
}

static int ef_hq_floordiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* xin [C][L] (rows of stride S) = the upsampler's output at audio columns [g0, g0 + L), 0 outside [0, u Tl), from its
 * input x [cin][Tl]: the input columns those need, widened by the conv's half width, through the INT8 conv. */
void ef_hq_up_chunk(const ef_hq *m, const float *x, int Tl, int g0, int L, float *xin, ef_hq_ws *w,
                           ef_qtile_fn tile)
{
    const ef_hqconv *c = m->up;
    const int u = m->u, R = (c->k - 1) / 2, C = m->C, Tw = u * Tl;
    const int l0 = ef_hq_floordiv(g0, u) - R, Ll = ef_hq_floordiv(g0 + L - 1, u) + 1 + R - l0;
    const int va = l0 < 0 ? -l0 : 0, vb = Tl - l0 < Ll ? Tl - l0 : Ll;
    ef_hq_ws wl = *w;
    wl.S = w->Sl;
    for (int i = 0; i < c->cin; i++) {
        float *row = w->lin + (size_t)i * w->Sl;
        memset(row, 0, w->Sl * sizeof(float));
        if (vb > va) memcpy(row + va, x + (size_t)i * Tl + l0 + va, (size_t)(vb - va) * sizeof(float));
    }
    ef_hq_conv(c, m->up_slope, w->lin, NULL, w->lout, Ll, va, vb, &wl, tile);
    const int gs = g0 > 0 ? g0 : 0, ge = g0 + L < Tw ? g0 + L : Tw;      /* valid audio columns */
    for (int o = 0; o < C; o++) {
        float *restrict dst = xin + (size_t)o * w->S - g0;               /* indexed by audio column */
        memset(xin + (size_t)o * w->S, 0, w->S * sizeof(float));
        for (int r = 0; r < u; r++) {
            const float *restrict src = w->lout + (size_t)(r * C + o) * w->Sl - l0;   /* by input column */
            for (int l = (gs - r + u - 1) / u; u * l + r < ge; l++) dst[u * l + r] = src[l];
        }
    }
}

