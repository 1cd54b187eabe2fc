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
    if (!m || cin < 1 || u < 1 || u > EF_HQ_UMAX || k < 1 || k % 2 == 0 || (planes != 1 && planes != 2) || !q ||
        !scale || !bias)
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

/* dst[u l + r] = src[r][l] for l in [l0, l1), r < u: the phases interleaved (u 2, 4 and 8 unrolled to vectorize). */
EF_HQ_CLONES static void ef_hq_interleave(float *restrict dst, const float *const *src, int u, int l0, int l1)
{
    if (u == 4) {
        const float *restrict s0 = src[0], *restrict s1 = src[1], *restrict s2 = src[2], *restrict s3 = src[3];
        for (int l = l0; l < l1; l++) {
            float *restrict d = dst + 4 * (size_t)l;
            d[0] = s0[l]; d[1] = s1[l]; d[2] = s2[l]; d[3] = s3[l];
        }
    } else if (u == 2) {
        const float *restrict s0 = src[0], *restrict s1 = src[1];
        for (int l = l0; l < l1; l++) { dst[2 * (size_t)l] = s0[l]; dst[2 * (size_t)l + 1] = s1[l]; }
    } else {
        for (int l = l0; l < l1; l++)
            for (int r = 0; r < u; r++) dst[(size_t)u * l + r] = src[r][l];
    }
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
    ef_hq_conv(c, m->up_slope, w->lin, NULL, NULL, w->lout, NULL, Ll, va, vb, &wl, tile);
    const int gs = g0 > 0 ? g0 : 0, ge = g0 + L < Tw ? g0 + L : Tw;      /* valid audio columns */
    const int lf0 = (gs + u - 1) / u, lf1 = ge / u > lf0 ? ge / u : lf0;  /* input columns with all u phases valid */
    const float *src[EF_HQ_UMAX];
    for (int o = 0; o < C; o++) {
        float *row = xin + (size_t)o * w->S, *dst = row - g0;           /* dst: indexed by audio column */
        if (gs > g0) memset(row, 0, (size_t)(gs - g0) * sizeof(float));
        if (ge > gs) memset(row + (ge - g0), 0, (w->S - (size_t)(ge - g0)) * sizeof(float));
        else { memset(row, 0, w->S * sizeof(float)); continue; }
        for (int r = 0; r < u; r++) src[r] = w->lout + (size_t)(r * C + o) * w->Sl - l0;   /* by input column */
        ef_hq_interleave(dst, src, u, lf0, lf1);
        const int e0 = lf1 > lf0 ? u * lf0 : ge, e1 = lf1 > lf0 ? u * lf1 : ge;          /* the edges */
        for (int t = gs; t < e0; t++) dst[t] = src[t % u][t / u];
        for (int t = e1; t < ge; t++) dst[t] = src[t % u][t / u];
    }
}

