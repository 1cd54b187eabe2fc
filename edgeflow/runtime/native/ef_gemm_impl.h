/* The float32 primitives of one instruction set, shared by the WaveFlow engine (ef_wf_impl.h) and the WaveNet
 * coupling engine (ef_wn_impl.h): vector types, the packed register tile and GEMM, exp, the tanh x sigmoid gate
 * and the affine update.
 *
 * Included once per variant with EF_VW, EF_NV, EF_ATTR, EF_NAME defined (see ef_wf_impl.h). Defines EF_FN,
 * EF_LD, EF_ST (and EF_CAT, EF_CAT2); the including header #undefs them at its end.
 */

#define EF_CAT2(a, b) a##_##b
#define EF_CAT(a, b) EF_CAT2(a, b)
#define EF_FN(name) EF_CAT(name, EF_NAME)

typedef float EF_FN(vec) __attribute__((vector_size(EF_VW * 4)));
typedef int32_t EF_FN(ivec) __attribute__((vector_size(EF_VW * 4)));
/* The same vector at any float address (unaligned loads and stores; may alias float arrays). */
typedef float EF_FN(uvec) __attribute__((vector_size(EF_VW * 4), aligned(4), may_alias));
#define EF_LD(p) (*(const EF_FN(uvec) *)(p))
#define EF_ST(p, v) (*(EF_FN(uvec) *)(p) = (v))

/* out[r][0:NV*VW] = (bias[r] or out[r][...]) + sum_k wp[k][r] * xp[k][off : off + NV*VW], r < EF_MR (rows of
 * a packed tile); bias NULL: accumulate into out. */
EF_ATTR static void EF_FN(ef_tile)(int K, const float *wp, const float *const *xp, int off, const float *bias,
                                    float *out, int ostride)
{
    typedef EF_FN(vec) V;
    V acc[EF_MR][EF_NV];
    for (int r = 0; r < EF_MR; r++)
        for (int v = 0; v < EF_NV; v++) {
            if (bias) acc[r][v] = (V){0} + bias[r];
            else acc[r][v] = EF_LD(out + (size_t)r * ostride + v * EF_VW);
        }
    for (int k = 0; k < K; k++) {
        const float *x = xp[k] + off;
        V xv[EF_NV];
        for (int v = 0; v < EF_NV; v++) xv[v] = EF_LD(x + v * EF_VW);
        const float *w = wp + (size_t)k * EF_MR;
        for (int r = 0; r < EF_MR; r++)
            for (int v = 0; v < EF_NV; v++) acc[r][v] += w[r] * xv[v];
    }
    for (int r = 0; r < EF_MR; r++)
        for (int v = 0; v < EF_NV; v++) EF_ST(out + (size_t)r * ostride + v * EF_VW, acc[r][v]);
}

/* A packed GEMM over one column block and reduction rows [kb, ke) of W [Mp][K]: out[Mp][EF_NB] = (bias, or out
 * when bias is NULL) + W[:, kb:ke] X[kb:ke][EF_NB] (X rows by pointer), in reduction chunks of EF_KC rows so that
 * the chunk of X stays in L1 across the row tiles. */
EF_ATTR static void EF_FN(ef_gemm)(int Mp, int K, int kb, int ke, const float *wp, const float *bias,
                                    const float *const *xp, int j0, float *out)
{
    for (int k0 = kb; k0 < ke; k0 += EF_KC) {
        const int kc = ke - k0 < EF_KC ? ke - k0 : EF_KC;
        for (int mt = 0; mt < Mp; mt += EF_MR)
            for (int n = 0; n < EF_NB; n += EF_NV * EF_VW)
                EF_FN(ef_tile)(kc, wp + (size_t)mt * K + (size_t)k0 * EF_MR, xp + k0, j0 + n,
                               (k0 == kb && bias) ? bias + mt : NULL, out + (size_t)mt * EF_NB + n, EF_NB);
    }
}

/* Elementwise min / max through compare masks (C has no vector ?:). */
EF_ATTR static inline EF_FN(vec) EF_FN(ef_clamp)(EF_FN(vec) x, float lo, float hi)
{
    typedef EF_FN(vec) V;
    typedef EF_FN(ivec) I;
    V l = (V){0} + lo, h = (V){0} + hi;
    I m = x < l;
    x = (V)((m & (I)l) | (~m & (I)x));
    m = x > h;
    return (V)((m & (I)h) | (~m & (I)x));
}

/* exp(x) for x in [-87, 88] (Cephes polynomial, about 1 ulp), on a vector. */
EF_ATTR static inline EF_FN(vec) EF_FN(ef_exp)(EF_FN(vec) x)
{
    typedef EF_FN(vec) V;
    typedef EF_FN(ivec) I;
    x = EF_FN(ef_clamp)(x, -87.0f, 88.0f);
    V t = x * 1.44269504088896341f;
    V n = (t + 12582912.0f) - 12582912.0f;          /* round to nearest */
    V r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    V p = (V){0} + 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    I e = (__builtin_convertvector(n, I) + 127) << 23;
    return p * (V)e;                                /* 2^n from its exponent bits */
}

/* g[c][n] = tanh(a[c][n]) * sigmoid(a[C + c][n]), c < C, over the block. */
EF_ATTR static void EF_FN(ef_gate)(int C, const float *a, float *g)
{
    typedef EF_FN(vec) V;
    for (int c = 0; c < C; c++)
        for (int n = 0; n < EF_NB; n += EF_VW) {
            V u = EF_LD(a + (size_t)c * EF_NB + n), v = EF_LD(a + (size_t)(C + c) * EF_NB + n);
            u = EF_FN(ef_clamp)(u, -9.0f, 9.0f);
            V e1 = EF_FN(ef_exp)(u + u);                 /* tanh u = (e1 - 1) / (e1 + 1) */
            V e2 = EF_FN(ef_exp)((V){0} - v);            /* sigmoid v = 1 / (1 + e2) */
            V out = (e1 - 1.0f) / ((e1 + 1.0f) * (e2 + 1.0f));
            EF_ST(g + (size_t)c * EF_NB + n, out);
        }
}

/* x = (z - t) * exp(-log_s) over n values (the affine update of one row's block). */
EF_ATTR static void EF_FN(ef_affine)(int n, const float *z, const float *ls, const float *t, float *x)
{
    typedef EF_FN(vec) V;
    int j = 0;
    for (; j + EF_VW <= n; j += EF_VW) {
        V zz = EF_LD(z + j), ll = EF_LD(ls + j), tt = EF_LD(t + j);
        EF_ST(x + j, (zz - tt) * EF_FN(ef_exp)((V){0} - ll));
    }
    for (; j < n; j++) {
        float zz[EF_VW] = {0}, ll[EF_VW] = {0}, tt[EF_VW] = {0}, xx[EF_VW];
        zz[0] = z[j]; ll[0] = ls[j]; tt[0] = t[j];
        EF_FN(ef_affine)(EF_VW, zz, ll, tt, xx);
        x[j] = xx[0];
    }
}

