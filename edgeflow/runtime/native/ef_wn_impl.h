/* The WaveNet coupling engine's column-block kernels for one instruction set (see ef_wn.c).
 *
 * Included once per variant by ef_wn.c with EF_VW, EF_NV, EF_ATTR, EF_NAME defined (as ef_wf_impl.h); the GEMM,
 * gate and affine primitives are the WaveFlow engine's (ef_gemm_impl.h). A block is EF_NB frames; ``valid`` of
 * them are inside the chunk (the rest of the block is computed and dropped, so zero padding stays zero).
 */

#include "ef_gemm_impl.h"

/* nv < EF_NV vectors of columns of a packed tile (as ef_tile; nv a constant where it is inlined): the partial
 * last block of a chunk. */
EF_ATTR static inline __attribute__((always_inline)) void EF_FN(ef_wn_tilev)(int nv, int K, const float *wp,
    const float *const *xp, int off, const float *bias, float *out)
{
    typedef EF_FN(vec) V;
    V acc[EF_MR][EF_NV];
    for (int r = 0; r < EF_MR; r++)
        for (int v = 0; v < nv; v++) {
            if (bias) acc[r][v] = (V){0} + bias[r];
            else acc[r][v] = EF_LD(out + (size_t)r * EF_NB + v * EF_VW);
        }
    for (int k = 0; k < K; k++) {
        V xv[EF_NV];
        for (int v = 0; v < nv; v++) xv[v] = EF_LD(xp[k] + off + v * EF_VW);
        const float *w = wp + (size_t)k * EF_MR;
        for (int r = 0; r < EF_MR; r++)
            for (int v = 0; v < nv; v++) acc[r][v] += w[r] * xv[v];
    }
    for (int r = 0; r < EF_MR; r++)
        for (int v = 0; v < nv; v++) EF_ST(out + (size_t)r * EF_NB + v * EF_VW, acc[r][v]);
}

EF_ATTR static void EF_FN(ef_wn_tile_part)(int nv, int K, const float *wp, const float *const *xp, int off,
                                            const float *bias, float *out)
{
    switch (nv) {
    case 1: EF_FN(ef_wn_tilev)(1, K, wp, xp, off, bias, out); break;
#if EF_NV > 2
    case 2: EF_FN(ef_wn_tilev)(2, K, wp, xp, off, bias, out); break;
    case 3: EF_FN(ef_wn_tilev)(3, K, wp, xp, off, bias, out); break;
#endif
    default: break;
    }
}

/* ef_gemm over the first ``valid`` columns of the block only (whole vectors): full-width tiles, then one tile of
 * the remaining vectors (a short chunk's last block computes little past its end). */
EF_ATTR static void EF_FN(ef_wn_gemm)(int Mp, int K, const float *wp, const float *bias, const float *const *xp,
                                       int j0, int valid, float *out)
{
    const int nv = (valid + EF_VW - 1) / EF_VW, full = nv / EF_NV * EF_NV, rest = nv - full;
    for (int k0 = 0; k0 < K; k0 += EF_KC) {
        const int kc = K - k0 < EF_KC ? K - k0 : EF_KC;
        for (int mt = 0; mt < Mp; mt += EF_MR) {
            const float *wt = wp + (size_t)mt * K + (size_t)k0 * EF_MR, *bt = (k0 == 0 && bias) ? bias + mt : NULL;
            float *o = out + (size_t)mt * EF_NB;
            for (int v = 0; v < full; v += EF_NV)
                EF_FN(ef_tile)(kc, wt, xp + k0, j0 + v * EF_VW, bt, o + v * EF_VW, EF_NB);
            if (rest)
                EF_FN(ef_wn_tile_part)(rest, kc, wt, xp + k0, j0 + full * EF_VW, bt, o + full * EF_VW);
        }
    }
}

/* The start (pre) 1x1 conv of coupling f on one block: hid rows [0, H) at column pad + j0 = W x0 + b. */
EF_ATTR static void EF_FN(ef_wn_pre)(const ef_wn *m, int f, const float *const *x0, int j0, int valid, float *hid,
                                      int RS, ef_wn_scratch *w)
{
    EF_FN(ef_wn_gemm)(m->Hp, m->half, m->pre_w[f], m->pre_b[f], x0, j0, valid, w->a);
    for (int c = 0; c < m->H; c++)
        memcpy(hid + (size_t)c * RS + m->pad + j0, w->a + (size_t)c * EF_NB, valid * sizeof(float));
}

/* Winograd F(4,5) input transform of hidden row c (hrow: the row at padded column 0): tile i covers frames
 * [4i, 4i + 4), its 8 inputs are frames 4i - 2 .. 4i + 5; V[p][c][i] = sum_j BT[p][j] d_j (ph: scratch, the
 * row split into its 4 phases, so that the loops over tiles read contiguous memory). */
EF_ATTR static void EF_FN(ef_wn_wg_in)(const ef_wn *m, int c, const float *hrow, int ntiles, int NTp, float *V,
                                        float *ph)
{
    const int P = ntiles + 1;
    for (int q = 0; q < 4; q++)
        for (int i = 0; i < P; i++) ph[(size_t)q * P + i] = hrow[m->pad - 2 + 4 * i + q];
    for (int p = 0; p < 8; p++) {
        float *out = V + ((size_t)p * m->H + c) * NTp;
        const float *bt = m->wg_bt + p * 8;
        for (int i = 0; i < ntiles; i++) out[i] = 0.0f;
        for (int j = 0; j < 8; j++) {
            const float b = bt[j], *src = ph + (size_t)(j % 4) * P + j / 4;
            if (b != 0.0f)
                for (int i = 0; i < ntiles; i++) out[i] += b * src[i];
        }
    }
}

/* Winograd F(4,5) of rows [mt, mt + np) of layer i's dilated conv over tile block tb: per point p the packed GEMM
 * M_p = U_p V_p (the block's valid tiles) into w->y [8][np][EF_NB], then the output transform y_q = sum_p AT[q][p]
 * M_p, the bias, and the frames 4 tile + q < T stored into the blocked pre-activations a_full [nblk][Mab][EF_NB]. */
EF_ATTR static void EF_FN(ef_wn_wg_gemm)(const ef_wn *m, int i, int tb, int mt, int np, const float *V, int NTp,
                                          int T, float *a_full, ef_wn_scratch *w)
{
    typedef EF_FN(vec) Vv;
    const int H = m->H, n = np * EF_NB;
    const int valid = (T + 3) / 4 - tb * EF_NB < EF_NB ? (T + 3) / 4 - tb * EF_NB : EF_NB;
    for (int p = 0; p < 8; p++) {
        for (int c = 0; c < H; c++) w->xp[c] = V + ((size_t)p * H + c) * NTp;
        EF_FN(ef_wn_gemm)(np, H, m->wg[i] + ((size_t)p * m->Mab + mt) * H, w->zero, w->xp, tb * EF_NB, valid,
                          w->y + (size_t)p * n);
    }
    const float *bias = m->in_b[i] + mt, *at = m->wg_at;
    float yq[4][EF_NB];
    for (int o = 0; o < np; o++) {
        for (int e = 0; e < EF_NB; e += EF_VW) {
            Vv mp[8];
            for (int p = 0; p < 8; p++) mp[p] = EF_LD(w->y + (size_t)p * n + (size_t)o * EF_NB + e);
            for (int q = 0; q < 4; q++) {
                Vv acc = (Vv){0} + bias[o];
                for (int p = 0; p < 8; p++) acc += at[q * 8 + p] * mp[p];
                EF_ST(&yq[q][e], acc);
            }
        }
        for (int fb = 0; fb < 4 && (4 * tb + fb) * EF_NB < T; fb++) {     /* tiles 16 fb.. -> frame block */
            float *dst = a_full + ((size_t)(4 * tb + fb) * m->Mab + mt + o) * EF_NB;
            for (int ii = 0; ii < EF_NB / 4; ii++)
                for (int q = 0; q < 4; q++) dst[4 * ii + q] = yq[q][fb * (EF_NB / 4) + ii];
        }
    }
}

/* Layer l of coupling f on one block: the dilated conv (+ the conditioning 1x1) as one packed GEMM over the
 * shifted hidden rows xp, tanh x sigmoid, then one GEMM for the residual rows (next layer's input hn = hc + res;
 * none after the last layer) and the statistics rows (the skip conv with the end conv folded in), summed over the
 * layers into st [S][SS]. */
EF_ATTR static void EF_FN(ef_wn_layer)(const ef_wn *m, int f, int l, const float *const *xp, int j0, int valid,
                                        const float *hc, float *hn, float *st, int RS, int SS, const float *apre,
                                        ef_wn_scratch *w)
{
    const int i = f * m->n_layers + l, H = m->H;
    const int nres = l < m->n_layers - 1 ? H : 0, Rp = (nres + m->S + EF_MR - 1) / EF_MR * EF_MR;
    if (!apre) EF_FN(ef_wn_gemm)(m->Mab, m->K, m->in_w[i], m->in_b[i], xp, j0, valid, w->a);
    EF_FN(ef_gate)(H, apre ? apre : w->a, w->g);
    if (m->rs_q && m->rs_q[i]) ef_wn_q8_rs(m, i, nres + m->S, w, valid);
    else EF_FN(ef_wn_gemm)(Rp, H, m->rs_w[i], m->rs_b[i], (const float *const *)w->gp, 0, valid, w->r);
    for (int c = 0; c < nres; c++) {
        const float *cur = hc + (size_t)c * RS + m->pad + j0, *rr = w->r + (size_t)c * EF_NB;
        float *nxt = hn + (size_t)c * RS + m->pad + j0;
        for (int n = 0; n < valid; n++) nxt[n] = cur[n] + rr[n];
    }
    for (int o = 0; o < m->S; o++) {
        const float *rr = w->r + (size_t)(nres + o) * EF_NB;
        float *dst = st + (size_t)o * SS + j0;
        if (l == 0)
            for (int n = 0; n < valid; n++) dst[n] = rr[n];
        else
            for (int n = 0; n < valid; n++) dst[n] += rr[n];
    }
}

/* The coupling's inverse update of one block: x1 = x1 - m (mean-only) or (x1 - m) * exp(-logs) (affine), with
 * st rows [0, half) = m and [half, 2 half) = logs. */
EF_ATTR static void EF_FN(ef_wn_update)(const ef_wn *m, float *const *x1, const float *st, int SS, int j0, int valid)
{
    for (int c = 0; c < m->half; c++) {
        float *x = x1[c] + j0;
        const float *mu = st + (size_t)c * SS + j0;
        if (m->mean_only)
            for (int n = 0; n < valid; n++) x[n] -= mu[n];
        else
            EF_FN(ef_affine)(valid, x, st + (size_t)(m->half + c) * SS + j0, mu, x);
    }
}

static const ef_wn_fns EF_FN(ef_wn_table) = {EF_FN(ef_wn_pre), EF_FN(ef_wn_layer), EF_FN(ef_wn_update),
                                             EF_FN(ef_wn_wg_in), EF_FN(ef_wn_wg_gemm)};

#undef EF_LD
#undef EF_ST
#undef EF_FN
#undef EF_CAT
#undef EF_CAT2
