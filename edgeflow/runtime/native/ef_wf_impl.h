/* One WaveFlow column block of one layer of one row step, for one instruction set.
 *
 * Included once per variant by ef_kernels.c with these macros defined:
 *   EF_VW     floats per vector (16: AVX-512, 8: AVX2, 4: portable / SSE / NEON)
 *   EF_NV     vectors per row of a register tile (EF_MR x EF_NV accumulators; EF_NV * EF_VW divides EF_NB)
 *   EF_ATTR   the variant's function attribute (target("...")) or nothing
 *   EF_NAME   suffix of the variant's function names
 * Everything here is plain C with GCC/Clang vector extensions: no intrinsics, so the same source builds the
 * x86 variants (chosen at run time by CPU features) and the portable one (aarch64: NEON). The GEMM, gate, exp and
 * affine primitives are in ef_gemm_impl.h (shared with the WaveNet-coupling engine, ef_wn_impl.h).
 */

#include "ef_gemm_impl.h"

/* The INT8 chunks [c0, c1) of q over one column block: out[Mp][EF_NB] += scale * (sum of u8 x s8), chunk by
 * chunk (chunk c's activation scale s->xs[xs0 + c]); quads from xq. */
EF_ATTR static void EF_FN(ef_qgemm)(const ef_step *s, const ef_q8 *q, int Mp, const uint8_t *const *xq, int xs0,
                                     int j0, float *out)
{
    if (s->amx && q->amx) {                                  /* AMX: chunk by chunk too, the same sums and order */
        const int M = 2 * s->m->C, conv = q == s->conv_q, taps = conv ? s->m->k * s->m->k : 1;
        float f[M];
        for (int c = 0; c < q->nchunk; c++) {
            for (int o = 0; o < M; o++) f[o] = s->xs[xs0 + c] * q->scale[o];
            const int per = taps / q->nchunk;
            const ef_amx_in in = {xq, conv ? s->bs_conv : s->bs_cond, j0, c * per, (c + 1) * per};
            const ef_amx_out o = {out, EF_NB, f, NULL, NULL};
            ef_amx_gemm(q, M, taps, NULL, &in, EF_NB, &o);
        }
        return;
    }
    for (int c = 0; c < q->nchunk; c++) {
        const int q0 = c * q->chunk, nq = q->chunk;
        for (int mt = 0; mt < Mp; mt += EF_MR) {
            float f[EF_MR];
            for (int r = 0; r < EF_MR; r++) f[r] = s->xs[xs0 + c] * q->scale[mt + r];
            s->qtile(nq, q->w + ((size_t)mt * q->nq + (size_t)q0 * EF_MR) * 4, xq + q0, j0, f,
                     out + (size_t)mt * EF_NB, EF_NB);
        }
    }
}

/* The layer GEMM (dilated conv + conditioning) of one block, float or INT8 part by part. */
EF_ATTR static void EF_FN(ef_layer_gemm)(const ef_step *s, int j0, float *out)
{
    const ef_wf *m = s->m;
    const int kkc = m->k * m->k * m->C;
    if (s->conv_q) {
        for (int o = 0; o < m->Mab; o++)
            for (int n = 0; n < EF_NB; n++) out[(size_t)o * EF_NB + n] = s->qbias[o];
        EF_FN(ef_qgemm)(s, s->conv_q, m->Mab, s->xq, 0, j0, out);
    } else {
        EF_FN(ef_gemm)(m->Mab, m->K, 0, kkc, s->ab_w, s->qbias, s->xp, j0, out);
    }
    if (s->cond_q)
        EF_FN(ef_qgemm)(s, s->cond_q, m->Mab, s->xq + m->k * m->k * m->Cq, m->k, j0, out);
    else
        EF_FN(ef_gemm)(m->Mab, m->K, kkc, m->K, s->ab_w, NULL, s->xp, j0, out);
}

double ef_now(void);

/* One layer of one row step on the column block [j0, j0 + EF_NB) (see ef_block_fn in ef_kernels.c). */
EF_ATTR static void EF_FN(ef_block)(const ef_step *s, int j0, ef_scratch *w, double *prof)
{
    const ef_wf *m = s->m;
    const int C = m->C, valid = (s->W - j0) < EF_NB ? s->W - j0 : EF_NB;
    double t0 = prof ? ef_now() : 0, t1;
    if (s->conv_q || s->cond_q)
        EF_FN(ef_layer_gemm)(s, j0, w->a);
    else
        EF_FN(ef_gemm)(m->Mab, m->K, 0, m->K, s->ab_w, s->ab_b, s->xp, j0, w->a);
    if (prof) { t1 = ef_now(); prof[0] += t1 - t0; t0 = t1; }
    EF_FN(ef_gate)(C, w->a, w->g);
    if (prof) { t1 = ef_now(); prof[1] += t1 - t0; t0 = t1; }
    if (s->res_w) {                                   /* residual 1x1: next layer's input row */
        EF_FN(ef_gemm)(m->Mres, C, 0, C, s->res_w, s->res_b, w->gp, 0, w->r);
        for (int c = 0; c < C; c++) {
            const float *cur = s->hid_cur + (size_t)c * s->RS + j0;
            float *nxt = s->hid_next + (size_t)c * s->RS + j0;
            const float *rr = w->r + (size_t)c * EF_NB;
            for (int n = 0; n < valid; n++)
                nxt[n] = (cur[n] + rr[n]) * 0.70710678118654752f;
        }
        if (s->mm_next) {                             /* the row's range, for its INT8 quantization */
            float *mm = s->mm_next + 2 * (j0 / EF_NB);
            mm[0] = mm[1] = 0.0f;
            ef_minmax_rows(s->hid_next + j0, s->RS, C, valid, &mm[0], &mm[1]);
        }
    }
    for (int o = 0; o < 2; o++) {                      /* skip (end conv folded in): log s, t contributions */
        float acc[EF_NB];
        const float *ws = s->skip_w + (size_t)o * C;
        for (int n = 0; n < EF_NB; n++) acc[n] = s->skip_b[o];
        for (int c = 0; c < C; c++) {
            const float *gg = w->g + (size_t)c * EF_NB;
            for (int n = 0; n < EF_NB; n++) acc[n] += ws[c] * gg[n];
        }
        float *dst = s->skip + (size_t)o * s->Wp + j0;
        if (s->first)
            for (int n = 0; n < valid; n++) dst[n] = acc[n];
        else
            for (int n = 0; n < valid; n++) dst[n] += acc[n];
    }
    if (prof) { t1 = ef_now(); prof[2] += t1 - t0; t0 = t1; }
    if (s->last) {                                     /* affine update, then the start conv of the next row */
        float *x = s->zrow + j0;
        EF_FN(ef_affine)(valid, x, s->skip + j0, s->skip + s->Wp + j0, x);
        if (s->hid0_next)
            for (int c = 0; c < C; c++) {
                float *h = s->hid0_next + (size_t)c * s->RS + j0;
                const float a = s->start_w[c], b = s->start_b[c];
                for (int n = 0; n < valid; n++) h[n] = a * x[n] + b;
            }
        if (s->hid0_next && s->mm_next) {
            float *mm = s->mm_next + 2 * (j0 / EF_NB);
            mm[0] = mm[1] = 0.0f;
            ef_minmax_rows(s->hid0_next + j0, s->RS, C, valid, &mm[0], &mm[1]);
        }
        if (prof) { t1 = ef_now(); prof[3] += t1 - t0; }
    }
}

#undef EF_LD
#undef EF_ST
#undef EF_FN
#undef EF_CAT
#undef EF_CAT2
