/* INT8 layers of the WaveNet-coupling engine (WaveGlow's couplings; see ef_wn.c): a layer's dilated conv and its
 * conditioning 1x1 conv as u8 x s8 dot products with int32 sums, by the INT8 tiles of the WaveFlow engine
 * (ef_int8.c: AVX-512 VNNI, AVX2, NEON dot product, portable).
 *
 * Weights: s8, symmetric per output channel (the quantized ONNX graph's own int8 weights and scales, set with
 * ef_wn_set_q8). Activations: u8 with a dynamic scale and zero point per tensor: a layer's input (the hidden rows
 * of the whole chunk, quantized once the previous layer has written them) and the conditioning (quantized once per
 * run). The int32 sums of each part are scaled into the float pre-activation by w_scale x x_scale; the zero points
 * are folded into the bias (sum w (x - zp) = sum w x - zp sum w). The gate, the res / skip conv, exp and the affine
 * update stay float (the layer kernel of ef_wn_impl.h on the INT8 pre-activations).
 */

#include "ef_wn.h"

/* Pack conv weights q [M][C][k] (s8) into the tile layout [Mp/MR][nq][MR][4] with nq = k * ceil(C / 4) quads in
 * the order tap * ceil(C / 4) + channel quad (channels past C: 0), one activation chunk (wsum [Mp]: each row's
 * weight sum), per-output-channel scales scale [M]. NULL when out of memory. */
ef_q8 *ef_q8_pack_conv(int M, int Mp, int C, int k, const int8_t *q, const float *scale)
{
    const int cq = (C + 3) / 4, nq = k * cq;
    ef_q8 *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nq = nq; p->nchunk = 1; p->chunk = nq;
    p->w = calloc((size_t)Mp * nq * 4, 1);
    p->wsum = calloc(Mp, sizeof(int32_t));
    p->scale = calloc(Mp, sizeof(float));
    if (!p->w || !p->wsum || !p->scale) { ef_q8_free(p); return NULL; }
    for (int o = 0; o < M; o++) {
        p->scale[o] = scale[o];
        for (int qi = 0; qi < nq; qi++)
            for (int b = 0; b < 4; b++) {
                const int c = (qi % cq) * 4 + b, j = qi / cq;
                const int8_t v = c < C ? q[((size_t)o * C + c) * k + j] : 0;
                p->w[(((size_t)(o / EF_MR) * nq + qi) * EF_MR + o % EF_MR) * 4 + b] = v;
                p->wsum[o] += v;
            }
    }
    if (ef_amx_pack(p, M, C, k, q)) { ef_q8_free(p); return NULL; }
    return p;
}

/* Make layer l of coupling f's dilated conv (part 0: q [2H][H][k]), conditioning conv (part 1: q [2H][n_cond]) or
 * residual / statistics conv (part 2: q [R][H], R = H + S, S in the last layer) INT8, with per-output-channel scales
 * scale [2H] / [R]. A layer's dilated conv runs in INT8 once it is set and, when the flow has conditioning, its
 * conditioning conv too; the res / stat conv on its own. Returns 0, or -1 (bad arguments, memory). */
EF_API int ef_wn_set_q8(ef_wn *m, int f, int l, int part, const int8_t *q, const float *scale)
{
    if (!m || !q || !scale || f < 0 || f >= m->n_flows || l < 0 || l >= m->n_layers || part < 0 || part > 2 ||
        (part == 1 && m->n_cond == 0))
        return -1;
    const int H = m->H, k = m->k, nl = m->n_flows * m->n_layers, i = f * m->n_layers + l;
    const int rows = part < 2 ? 2 * H : (l < m->n_layers - 1 ? H : 0) + m->S;
    for (int o = 0; o < rows; o++)
        if (!(scale[o] >= 0.0f) || scale[o] > 1e30f) return -1;
    ef_q8 ***slot = part == 0 ? &m->in_q : part == 1 ? &m->cond_q : &m->rs_q;
    if (!*slot && !(*slot = calloc(nl, sizeof(ef_q8 *)))) return -1;
    ef_q8 *p = part == 0 ? ef_q8_pack_conv(2 * H, m->Mab, H, k, q, scale)
             : part == 1 ? ef_q8_pack_conv(2 * H, m->Mab, m->n_cond, 1, q, scale)       /* [2H][n_cond][1] */
                         : ef_q8_pack_conv(rows, (rows + EF_MR - 1) / EF_MR * EF_MR, H, 1, q, scale);
    if (!p) return -1;
    ef_q8_free((*slot)[i]);
    (*slot)[i] = p;
    return 0;
}

/* Whether layer i (coupling f * L + l) runs in INT8. */
int ef_wn_q8_on(const ef_wn *m, int i)
{
    return m->in_q && m->in_q[i] && (m->n_cond == 0 || (m->cond_q && m->cond_q[i]));
}

void ef_wn_q8_free(ef_wn_q8run *q)
{
    free(q->hq); free(q->cq); free(q->xh); free(q->xc); free(q->fh); free(q->fc); free(q->qb); free(q->mm);
    memset(q, 0, sizeof *q);
}

/* The run's INT8 buffers (none when no layer is INT8), and the conditioning cond [n_cond][RS] (zero-padded rows)
 * quantized. Returns 0, or -3 out of memory. */
int ef_wn_q8_make(const ef_wn *m, const float *cond, int RS, int nblk, ef_wn_q8run *q)
{
    memset(q, 0, sizeof *q);
    int any = 0;
    for (int i = 0; i < m->n_flows * m->n_layers; i++) any |= ef_wn_q8_on(m, i);
    if (!any) return 0;
    const int hq = (m->H + 3) / 4, mq = (m->n_cond + 3) / 4;
    q->tile = ef_qtile_for(ef_get_isa());
    q->amx = ef_amx_on();
    q->bs = (size_t)RS * 4;
    q->hq = malloc((size_t)hq * RS * 4);
    q->xh = malloc((size_t)m->k * hq * sizeof *q->xh);
    q->fh = malloc(m->Mab * sizeof(float)); q->fc = malloc(m->Mab * sizeof(float));
    q->qb = malloc(m->Mab * sizeof(float));
    q->mm = malloc((size_t)2 * nblk * sizeof(float));
    if (!q->hq || !q->xh || !q->fh || !q->fc || !q->qb || !q->mm) return -3;
    if (m->n_cond) {
        q->cq = malloc((size_t)mq * RS * 4);
        q->xc = malloc(mq * sizeof *q->xc);
        if (!q->cq || !q->xc) return -3;
        float lo = 0.0f, hi = 0.0f;
        ef_minmax_rows(cond, RS, m->n_cond, RS, &lo, &hi);
        ef_qparams(lo, hi, &q->sc, &q->zc);
        ef_quant_rows(cond, RS, m->n_cond, RS, q->sc, q->zc, q->cq, RS);
        for (int c = 0; c < mq; c++) q->xc[c] = q->cq + ((size_t)c * RS + m->pad) * 4;
    }
    return 0;
}

/* Quantize layer i's input hc [H][RS] (rows at padded column 0; T frames) and fold the layer's factors and
 * bias. Called by every thread of the parallel region (work-shared loops; ends with a barrier). */
void ef_wn_q8_prepare(const ef_wn *m, int i, int l, const float *hc, int RS, int nblk, int T, ef_wn_q8run *q)
{
    const int H = m->H, hq = (H + 3) / 4, k = m->k;
    #pragma omp for schedule(static)
    for (int j = 0; j < nblk; j++) {
        float lo = 0.0f, hi = 0.0f;
        const int valid = T - j * EF_NB < EF_NB ? T - j * EF_NB : EF_NB;
        ef_minmax_rows(hc + m->pad + (size_t)j * EF_NB, RS, H, valid, &lo, &hi);
        q->mm[2 * j] = lo; q->mm[2 * j + 1] = hi;
    }
    #pragma omp single
    {
        float sh;
        int zh;
        ef_qparams_blocks(q->mm, nblk, &sh, &zh);
        const ef_q8 *wi = m->in_q[i], *wc = m->n_cond ? m->cond_q[i] : NULL;
        for (int r = 0; r < m->Mab; r++) {
            q->fh[r] = wi->scale[r] * sh;
            q->qb[r] = m->in_b[i][r] - q->fh[r] * (float)zh * (float)wi->wsum[r];
            q->fc[r] = wc ? wc->scale[r] * q->sc : 0.0f;
            if (wc) q->qb[r] -= q->fc[r] * (float)q->zc * (float)wc->wsum[r];
        }
        for (int kk = 0; kk < k; kk++)
            for (int c = 0; c < hq; c++)
                q->xh[kk * hq + c] = q->hq + ((size_t)c * RS + m->pad + (kk - (k - 1) / 2) * m->dil[l]) * 4;
        q->sh = sh; q->zh = zh;
    }
    #pragma omp for schedule(static)
    for (int c = 0; c < hq; c++) {
        const int n = H - 4 * c < 4 ? H - 4 * c : 4;
        ef_quant_rows(hc + (size_t)4 * c * RS, RS, n, RS, q->sh, q->zh, q->hq + (size_t)c * RS * 4, RS);
    }
}

/* Layer i's pre-activations a [Mab][EF_NB] of the block at frame j0, from the quantized input (prepare first). */
void ef_wn_q8_block(const ef_wn *m, int i, const ef_wn_q8run *q, int j0, float *a)
{
    const ef_q8 *wi = m->in_q[i], *wc = m->n_cond ? m->cond_q[i] : NULL;
    const int amx = q->amx && wi->amx && (!wc || wc->amx);      /* both parts or neither: the same sum order */
    for (int mt = 0; mt < m->Mab; mt += EF_MR) {
        float *o = a + (size_t)mt * EF_NB;
        for (int r = 0; r < EF_MR; r++)
            for (int n = 0; n < EF_NB; n++) o[(size_t)r * EF_NB + n] = q->qb[mt + r];
        if (amx) continue;
        q->tile(wi->nq, wi->w + (size_t)mt * wi->nq * 4, q->xh, j0, q->fh + mt, o, EF_NB);
        if (wc) q->tile(wc->nq, wc->w + (size_t)mt * wc->nq * 4, q->xc, j0, q->fc + mt, o, EF_NB);
    }
    const ef_amx_out oh = {a, EF_NB, q->fh, NULL, NULL}, oc = {a, EF_NB, q->fc, NULL, NULL};
    const ef_amx_in ih = {q->xh, q->bs, j0, 0, m->k}, ic = {q->xc, q->bs, j0, 0, 1};
    if (amx) ef_amx_gemm(wi, 2 * m->H, m->k, NULL, &ih, EF_NB, &oh);
    if (amx && wc) ef_amx_gemm(wc, 2 * m->H, 1, NULL, &ic, EF_NB, &oc);
}

/* Layer i's residual / statistics conv on one block in INT8: w->r [Rp][EF_NB] = rs_b + W g, from the gate output
 * w->g [H][EF_NB] (valid columns) quantized with the block's own u8 scale (its range: tanh x sigmoid, in (-1, 1)).
 * rows: the conv's output rows (H + S, or S in the last layer). */
void ef_wn_q8_rs(const ef_wn *m, int i, int rows, ef_wn_scratch *w, int valid)
{
    const ef_q8 *p = m->rs_q[i];
    const int Rp = (rows + EF_MR - 1) / EF_MR * EF_MR;
    float lo = 0.0f, hi = 0.0f, s, f[EF_MR];
    int zp;
    ef_minmax_rows(w->g, EF_NB, m->H, valid, &lo, &hi);
    ef_qparams(lo, hi, &s, &zp);
    ef_quant_rows(w->g, EF_NB, m->H, valid, s, zp, w->gq, EF_NB);
    const int amx = p->amx && ef_amx_on();
    float fa[Rp];
    for (int mt = 0; mt < Rp; mt += EF_MR) {
        float *o = w->r + (size_t)mt * EF_NB;
        for (int r = 0; r < EF_MR; r++) {
            const int row = mt + r;
            f[r] = fa[row] = row < rows ? p->scale[row] * s : 0.0f;
            const float b = row < rows ? m->rs_b[i][row] - f[r] * (float)zp * (float)p->wsum[row] : 0.0f;
            for (int n = 0; n < EF_NB; n++) o[(size_t)r * EF_NB + n] = b;
        }
        if (!amx) w->tile(p->nq, p->w + (size_t)mt * p->nq * 4, w->gxq, 0, f, o, EF_NB);
    }
    const ef_amx_out o = {w->r, EF_NB, fa, NULL, NULL};
    const ef_amx_in in = {w->gxq, (size_t)EF_NB * 4, 0, 0, 1};
    if (amx) ef_amx_gemm(p, rows, 1, NULL, &in, EF_NB, &o);
}
