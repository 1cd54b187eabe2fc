/* The waveform-rate stage of a HiFi-GAN decoder in INT8 with block-scaled activations: the resblocks of the last
 * upsampling stage (a VITS voice's decoder, e.g. Piper's), their mean, the leaky ReLU, conv_post and tanh.
 *
 * Why blocks: the stage's signals are the waveform's fine structure, loud in vowels and near zero in pauses. One
 * u8 scale per tensor (what a QDQ graph has) puts the same absolute noise on both and costs the voice 0.2-0.5
 * DNSMOS P.808; a scale per time block keeps the noise relative to the local level (bench/results/tts_optimize.md).
 * Every conv's input (leaky_relu of its stream) is quantized per output tile of EF_HQ_TW columns: the tile's input
 * window (the tile widened by the conv's half receptive field) gets its own u8 scale and zero point, so windows
 * overlap by 2 R columns and a tile's int32 sums share one activation scale. Weights: s8, symmetric per output
 * channel. The zero point is folded into the bias per tile (sum w (x - zp) = sum w x - zp sum w); the residual adds,
 * the mean over resblocks, conv_post and tanh stay float. Tiles: ef_int8.c's (VNNI, AVX2, NEON dot, portable).
 *
 * Conv modes (resblock types of HiFi-GAN): 0: s = s + conv(lrelu(s)) (type "2"); 1: t = conv(lrelu(s)) (a type "1"
 * block's first conv of a pair); 2: s = s + conv(lrelu(t)) (its second). Two activation planes: the rounding error of
 * the u8 activations quantized again (scale / 254, zero point 128) and run through the same weights.
 */

#include "ef_hq.h"
#include <math.h>

/* Output samples per tile (one activation scale per conv input window of a tile), and input columns per chunk. */
EF_API int ef_hq_tile(void) { return EF_HQ_TW; }
EF_API int ef_hq_chunk_cols(void) { return EF_HQ_CHUNK; }

/* Output columns per chunk of a stage of T output columns whose receptive half width is H. A chunk's input window
 * (the chunk and 2 H of halo) is at most EF_HQ_CHUNK columns, or 4 H where that is more (so that recomputing the
 * halo stays a fraction of the work); the chunks are equal and, from 2 EF_HQ_MINCHUNK columns on, even in number,
 * so that two threads share a short sentence's stage (a 2-second sentence is one chunk of a 689-Hz stage otherwise).
 * Depends on T and H only: the audio does not depend on the thread count. */
EF_API int ef_hq_chunk_len(int T, int H)
{
    if (T < 1 || H < 0) return 1;
    const int maxc = (EF_HQ_CHUNK > 4 * H ? EF_HQ_CHUNK : 4 * H) - 2 * H;
    int n = (T + maxc - 1) / maxc;
    if (n % 2 && T >= 2 * EF_HQ_MINCHUNK) n++;
    return (T + n - 1) / n;
}

EF_API void ef_hq_free(ef_hq *m)
{
    if (!m) return;
    for (int i = 0; m->convs && i < m->n_convs; i++) { ef_q8_free(m->convs[i].q); free(m->convs[i].bias); }
    if (m->up) { ef_q8_free(m->up->q); free(m->up->bias); free(m->up->qr); free(m->up); }
    free(m->convs); free(m->first); free(m->post_w);
    free(m);
}

/* A stage of C channels and n_blocks resblocks; spec [n_convs][7]: block, cin, cout, k, dilation, mode, activation
 * planes (7 ints per conv); conv_post weights post_w [C][kp] (one output), bias post_b; kp 0 and post_w NULL: no
 * conv_post (an earlier upsampling stage: the run gives the resblocks' mean [C][T]). NULL: bad arguments, memory. */
EF_API ef_hq *ef_hq_create(int C, int n_blocks, int n_convs, const int *spec, float slope, float post_slope,
                           int kp, const float *post_w, float post_b)
{
    if (C < 1 || n_blocks < 1 || n_convs < n_blocks || !spec || kp < 0 || (kp > 0 && (kp % 2 == 0 || !post_w)) ||
        (kp == 0 && post_w))
        return NULL;
    ef_hq *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->C = C; m->n_blocks = n_blocks; m->n_convs = n_convs; m->kp = kp;
    m->slope = slope; m->post_slope = post_slope; m->post_b = post_b;
    m->first = calloc(n_blocks + 1, sizeof(int));
    m->convs = calloc(n_convs, sizeof(ef_hqconv));
    m->post_w = kp ? malloc((size_t)C * kp * sizeof(float)) : NULL;
    if (!m->first || !m->convs || (kp && !m->post_w)) { ef_hq_free(m); return NULL; }
    if (kp) memcpy(m->post_w, post_w, (size_t)C * kp * sizeof(float));
    int prev = -1;
    for (int i = 0; i < n_convs; i++) {
        const int *s = spec + 7 * i;
        ef_hqconv *c = &m->convs[i];
        c->cin = s[1]; c->cout = s[2]; c->k = s[3]; c->d = s[4]; c->mode = s[5]; c->planes = s[6];
        int ok = s[0] >= prev && s[0] < n_blocks && c->k >= 1 && c->k % 2 == 1 && c->d >= 1 && c->mode >= 0 &&
                 c->mode <= 2 && (c->planes == 1 || c->planes == 2) && c->cin >= 1 && c->cout >= 1 &&
                 (c->mode == 1 ? c->cin == C : c->mode == 2 ? c->cout == C : c->cin == C && c->cout == C);
        if (!ok || !(c->bias = calloc(c->cout, sizeof(float)))) { ef_hq_free(m); return NULL; }
        for (int b = prev + 1; b <= s[0]; b++) m->first[b] = i;
        prev = s[0];
    }
    for (int b = prev + 1; b <= n_blocks; b++) m->first[b] = n_convs;
    return m;
}

/* Conv i's weights: q [cout][cin][k] (s8), per-output-channel scales scale [cout], bias [cout]. 0, or -1. */
EF_API int ef_hq_set_conv(ef_hq *m, int i, const int8_t *q, const float *scale, const float *bias)
{
    if (!m || i < 0 || i >= m->n_convs || !q || !scale || !bias) return -1;
    ef_hqconv *c = &m->convs[i];
    for (int o = 0; o < c->cout; o++)
        if (!(scale[o] >= 0.0f) || scale[o] > 1e30f) return -1;
    ef_q8 *p = ef_q8_pack_conv(c->cout, (c->cout + EF_MR - 1) / EF_MR * EF_MR, c->cin, c->k, q, scale);
    if (!p) return -1;
    ef_q8_free(c->q);
    c->q = p;
    memcpy(c->bias, bias, c->cout * sizeof(float));
    return 0;
}

/* dst[t] = (src ? src[t] : 0) + b for t < n. */
EF_HQ_CLONES static void ef_hq_prefill(float *restrict dst, const float *restrict src, float b, int n)
{
    if (src) for (int t = 0; t < n; t++) dst[t] = src[t] + b;
    else for (int t = 0; t < n; t++) dst[t] = b;
}

/* Per-block [lo, hi] of rows c < C of src (stride S) over the blocks of EF_NB columns that meet [va, vb):
 * mm [block][2] for blocks va / EF_NB .. (vb - 1) / EF_NB. */
void ef_hq_block_minmax(const float *src, size_t S, int C, int va, int vb, float *mm)
{
    for (int b = va / EF_NB; b * EF_NB < vb; b++) {
        const int t0 = b * EF_NB > va ? b * EF_NB : va, t1 = (b + 1) * EF_NB < vb ? (b + 1) * EF_NB : vb;
        float lo = 0.0f, hi = 0.0f;
        ef_minmax_rows(src + t0, S, C, t1 - t0, &lo, &hi);
        mm[2 * b] = lo; mm[2 * b + 1] = hi;
    }
}

/* One tile of ef_hq_conv on AMX, all rows at once: the prefill, the products of both activation planes (scales s,
 * s2; zero points zp, 128), the output's block ranges over [va, vb). The same float operations as the tiles'. */
static void ef_hq_tile_amx(const ef_hqconv *c, const float *res, float *out, float *mm_out, int t0, int tw, float s,
                           int zp, float s2, int two, int va, int vb, const ef_hq_ws *w, size_t qs)
{
    const size_t S = w->S;
    float f[c->cout], f2[c->cout], pre[c->cout];
    for (int o = 0; o < c->cout; o++) {
        const float zw = (float)c->q->wsum[o];
        f[o] = c->q->scale[o] * s; f2[o] = c->q->scale[o] * s2;
        pre[o] = c->bias[o] - f[o] * (float)zp * zw - (two ? f2[o] * (float)128 * zw : 0.0f);
    }
    const ef_amx_out o1 = {out + t0, S, f, pre, res ? res + t0 : NULL}, o2 = {out + t0, S, f2, NULL, NULL};
    const ef_amx_in i1 = {w->xq, qs * 4, 0, 0, c->k}, i2 = {w->xq2, qs * 4, 0, 0, c->k};
    ef_amx_gemm(c->q, c->cout, c->k, c->qr, &i1, tw, &o1);                            /* the prefill fused */
    if (two) ef_amx_gemm(c->q, c->cout, c->k, c->qr, &i2, tw, &o2);
    const int ta = t0 > va ? t0 : va, te = t0 + tw < vb ? t0 + tw : vb;
    for (int b = ta / EF_NB; mm_out && b * EF_NB < te; b++) {
        const int b0 = b * EF_NB > ta ? b * EF_NB : ta, b1 = (b + 1) * EF_NB < te ? (b + 1) * EF_NB : te;
        ef_minmax_rows(out + b0, S, c->cout, b1 - b0, &mm_out[2 * b], &mm_out[2 * b + 1]);
    }
}

/* out[o][t] = (res ? res[o][t] : 0) + bias[o] + conv(lrelu(in))[o][t] for local columns t < L (rows of stride S);
 * in's columns outside [va, vb) read as 0. Tiles of EF_HQ_TW columns share one u8 scale: the range of the
 * EF_NB-column blocks (mm_in, of in; NULL: found here) their input window touches. mm_out (or NULL): the same
 * ranges of out, taken tile by tile while it is in cache (the next conv's mm_in). */
void ef_hq_conv(const ef_hqconv *c, float slope, const float *in, const float *mm_in, const float *res, float *out,
                float *mm_out, int L, int va, int vb, ef_hq_ws *w, ef_qtile_fn tile)
{
    const int cq = (c->cin + 3) / 4, nq = c->k * cq, R = (c->k - 1) / 2 * c->d;
    const int Mp = (c->cout + EF_MR - 1) / EF_MR * EF_MR;
    const size_t S = w->S;
    if (!mm_in) {
        ef_hq_block_minmax(in, S, c->cin, va, vb, w->mm);
        mm_in = w->mm;
    }
    for (int b = va / EF_NB; mm_out && b * EF_NB < vb; b++) mm_out[2 * b] = mm_out[2 * b + 1] = 0.0f;
    for (int t0 = 0; t0 < L; t0 += EF_HQ_TW) {
        const int ncol = (L - t0 < EF_HQ_TW ? L - t0 : EF_HQ_TW) + EF_NB - 1;
        const int tw = ncol / EF_NB * EF_NB, W = tw + 2 * R, a = t0 - R;    /* window [a, a + W) */
        const int lo_c = a > va ? a : va, hi_c = a + W < vb ? a + W : vb, n = hi_c > lo_c ? hi_c - lo_c : 0;
        float lo = 0.0f, hi = 0.0f, s, f[EF_MR];
        int zp;
        for (int b = lo_c / EF_NB; n > 0 && b <= (hi_c - 1) / EF_NB; b++) {
            lo = mm_in[2 * b] < lo ? mm_in[2 * b] : lo;
            hi = mm_in[2 * b + 1] > hi ? mm_in[2 * b + 1] : hi;
        }
        ef_qparams(lo * slope, hi, &s, &zp);                         /* leaky ReLU is monotone; lo <= 0 */
        const int two = c->planes == 2, zp2 = 128;                      /* the error plane: [-s/2, s/2] */
        const float s2 = s / 254.0f;
        const size_t qs = (size_t)W + 16;                               /* quad row stride (16 columns slack) */
        for (int pass = 0; pass <= two; pass++) {                       /* columns outside [va, vb): zero */
            uint8_t *bp = pass ? w->buf2 : w->buf;
            const int z = pass ? zp2 : zp;
            for (int g = 0; g < cq && lo_c > a; g++) memset(bp + (size_t)g * qs * 4, z, (size_t)(lo_c - a) * 4);
            for (int g = 0; g < cq && (n == 0 ? a : hi_c) < a + W; g++) {
                const int from = n == 0 ? 0 : hi_c - a;
                memset(bp + ((size_t)g * qs + from) * 4, z, (size_t)(W - from) * 4);
            }
        }
        if (n > 0)                                                      /* whole vectors: into the slack */
            ef_quant_rows_lrelu(in + lo_c, S, c->cin, (n + 15) / 16 * 16, slope, s, zp, w->buf + (size_t)(lo_c - a) * 4,
                                qs, s2, zp2, two ? w->buf2 + (size_t)(lo_c - a) * 4 : NULL);
        if (n > 0 && hi_c < a + W)                                      /* the slack columns past vb: zero again */
            for (int pass = 0; pass <= two; pass++)
                for (int g = 0; g < cq; g++)
                    memset((pass ? w->buf2 : w->buf) + ((size_t)g * qs + (hi_c - a)) * 4, pass ? zp2 : zp,
                           (size_t)(a + W - hi_c < 16 ? a + W - hi_c : 16) * 4);
        for (int j = 0; j < c->k; j++)
            for (int g = 0; g < cq; g++) {
                w->xq[j * cq + g] = w->buf + ((size_t)g * qs + (size_t)j * c->d) * 4;
                w->xq2[j * cq + g] = w->buf2 + ((size_t)g * qs + (size_t)j * c->d) * 4;
            }
        if (w->amx && c->q->amx) {
            ef_hq_tile_amx(c, res, out, mm_out, t0, tw, s, zp, s2, two, va, vb, w, qs);
            continue;
        }
        for (int mb = 0; mb < Mp; mb += EF_MR) {
            float f2[EF_MR];
            for (int r = 0; r < EF_MR; r++) {
                f[r] = mb + r < c->cout ? c->q->scale[mb + r] * s : 0.0f;
                f2[r] = mb + r < c->cout ? c->q->scale[mb + r] * s2 : 0.0f;
            }
            for (int r = 0; r < EF_MR && mb + r < c->cout; r++) {
                const int o = mb + r;
                const float zw = (float)c->q->wsum[o];
                ef_hq_prefill(out + (size_t)o * S + t0, res ? res + (size_t)o * S + t0 : NULL,
                              c->bias[o] - f[r] * (float)zp * zw - (two ? f2[r] * (float)zp2 * zw : 0.0f), tw);
            }
            /* rows >= cout of the last row block write into the pad rows of the plane; taps that are zero in
             * every row of the block are skipped (the upsampler's merged phases) */
            const int qa = c->qr ? c->qr[2 * (mb / EF_MR)] : 0, qn = c->qr ? c->qr[2 * (mb / EF_MR) + 1] - qa : nq;
            const int8_t *wt = c->q->w + ((size_t)mb * nq + (size_t)qa * EF_MR) * 4;
            for (int sub = 0; sub < tw && qn > 0; sub += EF_NB) {
                float *o = out + (size_t)mb * S + t0 + sub;
                tile(qn, wt, w->xq + qa, sub, f, o, (int)S);
                if (two) tile(qn, wt, w->xq2 + qa, sub, f2, o, (int)S);
            }
            const int ta = t0 > va ? t0 : va, te = t0 + tw < vb ? t0 + tw : vb, nr = c->cout - mb < EF_MR ?
                           c->cout - mb : EF_MR;
            for (int b = ta / EF_NB; mm_out && b * EF_NB < te; b++) {   /* rows mb.. of out are final here */
                const int b0 = b * EF_NB > ta ? b * EF_NB : ta, b1 = (b + 1) * EF_NB < te ? (b + 1) * EF_NB : te;
                ef_minmax_rows(out + (size_t)mb * S + b0, S, nr, b1 - b0, &mm_out[2 * b], &mm_out[2 * b + 1]);
            }
        }
    }
}
