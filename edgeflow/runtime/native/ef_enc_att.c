/* The attention of one head of the text-encoder kernel (ef_enc.c): scores against every key with the relative
 * keys of the window added, softmax, the weighted values with the relative values added. Float, on register blocks
 * written with GCC vector extensions (AVX-512 / AVX2 / SSE by the clone picked at load, NEON on aarch64).
 *
 * Reference: edgeflow/models/vits/text_encoder.py (RelativeMultiHeadAttention).
 */

#include "ef_enc.h"
#include <math.h>

typedef float ef_ev __attribute__((vector_size(64)));                          /* 16 floats */
typedef int32_t ef_eiv __attribute__((vector_size(64)));
typedef float ef_euv __attribute__((vector_size(64), aligned(4), may_alias));
#define EF_ENC_LD(p) (*(const ef_euv *)(p))
#define EF_ENC_DB 48   /* head channels per register block of P V: 3 vectors */
#define EF_ENC_IB 4    /* query rows per register block */

#define EF_ENC_SEL(m, a, b) ((ef_ev)(((m) & (ef_eiv)(a)) | (~(m) & (ef_eiv)(b))))

/* x[0:16] = exp(x[0:16] - mx) for x <= mx (a softmax's shifted scores): 2^n p(r) with r = x - n ln 2 and a degree-6
 * polynomial (Cephes' expf coefficients; relative error about 2e-7); 0 below -87. */
static inline __attribute__((always_inline)) void ef_enc_exp(float *xp, float mx)
{
    ef_ev x = EF_ENC_LD(xp) - mx;
    const ef_eiv under = x < -87.0f;
    x = EF_ENC_SEL(under, (ef_ev){0} - 87.0f, x);
    const ef_eiv n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, ef_eiv);      /* round, x <= 0 */
    const ef_ev nf = __builtin_convertvector(n, ef_ev);
    const ef_ev r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    ef_ev p = (ef_ev){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const ef_eiv bits = (n + 127) << 23;
    ef_ev two;
    memcpy(&two, &bits, sizeof two);
    *(ef_euv *)xp = EF_ENC_SEL(under, (ef_ev){0}, p * two);
}

/* Floats of one head's attention scratch: EF_ENC_IB rows of scores (T rounded up to 64), q and v transposed
 * ([T rounded up to EF_ENC_IB][dk], [T][dkp]), the relative keys' logits [2 window + 1][T], outputs [IB][dkp]. */
size_t ef_enc_scratch(const ef_enc *e, int T)
{
    const size_t dk = e->H / e->heads, dkp = (dk + EF_ENC_DB - 1) / EF_ENC_DB * EF_ENC_DB;
    const size_t Tp = (size_t)(T + 63) / 64 * 64, Ti = (size_t)(T + EF_ENC_IB - 1) / EF_ENC_IB * EF_ENC_IB;
    return EF_ENC_IB * (Tp + dkp) + Ti * dk + (size_t)T * (dkp + 2 * e->window + 1) + 16;
}

/* Scores of query rows i0 .. i0 + IB - 1 (q transposed, scaled) against every key: s [IB][Tp]. */
static inline __attribute__((always_inline)) void ef_enc_scores(const float *qt, int i0, int dk, const float *k,
                                                                 size_t S, int Tp, float *s)
{
    const float *q0 = qt + (size_t)i0 * dk, *q1 = q0 + dk, *q2 = q1 + dk, *q3 = q2 + dk;
    for (int j0 = 0; j0 < Tp; j0 += 32) {                     /* 4 rows x 32 keys: 8 registers */
        ef_ev a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, c0 = {0}, c1 = {0}, d0 = {0}, d1 = {0};
        for (int c = 0; c < dk; c++) {
            const float *kc = k + (size_t)c * S + j0;
            const ef_ev x0 = EF_ENC_LD(kc), x1 = EF_ENC_LD(kc + 16);
            a0 += q0[c] * x0; a1 += q0[c] * x1; b0 += q1[c] * x0; b1 += q1[c] * x1;
            c0 += q2[c] * x0; c1 += q2[c] * x1; d0 += q3[c] * x0; d1 += q3[c] * x1;
        }
        float *o = s + j0;
        *(ef_euv *)o = a0; *(ef_euv *)(o + 16) = a1; o += Tp;
        *(ef_euv *)o = b0; *(ef_euv *)(o + 16) = b1; o += Tp;
        *(ef_euv *)o = c0; *(ef_euv *)(o + 16) = c1; o += Tp;
        *(ef_euv *)o = d0; *(ef_euv *)(o + 16) = d1;
    }
}

/* out [IB][dkp] = p [IB][Tp] (rows of probabilities, T keys) times v transposed vt [T][dkp]. */
static inline __attribute__((always_inline)) void ef_enc_pv(const float *p, int Tp, int T, const float *vt, int dkp,
                                                             float *out)
{
    for (int c0 = 0; c0 < dkp; c0 += EF_ENC_DB) {             /* 4 rows x 48 channels: 12 registers */
        ef_ev a[EF_ENC_IB][3];
        memset(a, 0, sizeof a);
        for (int j = 0; j < T; j++) {
            const float *r = vt + (size_t)j * dkp + c0;
            const ef_ev x0 = EF_ENC_LD(r), x1 = EF_ENC_LD(r + 16), x2 = EF_ENC_LD(r + 32);
            for (int i = 0; i < EF_ENC_IB; i++) {
                const float w = p[(size_t)i * Tp + j];
                a[i][0] += w * x0; a[i][1] += w * x1; a[i][2] += w * x2;
            }
        }
        for (int i = 0; i < EF_ENC_IB; i++)
            for (int u = 0; u < 3; u++) *(ef_euv *)(out + (size_t)i * dkp + c0 + 16 * u) = a[i][u];
    }
}

/* Head h's attention: qkv [3 H][S] rows (q, k, v; k rows readable to column T rounded up to 64), out rows
 * [h dk, (h + 1) dk) of att [H][S]; sc: ef_enc_scratch floats. The products run on register blocks (vector
 * extensions: AVX-512 / AVX2 / SSE by the clone picked at load). */
EF_HQ_CLONES void ef_enc_head(const ef_enc *e, const ef_enc_layer *y, int h, const float *qkv, size_t S,
                                     int T, float *att, float *sc)
{
    const int dk = e->H / e->heads, w = e->window, nr = 2 * w + 1, Tp = (T + 63) / 64 * 64;
    const int dkp = (dk + EF_ENC_DB - 1) / EF_ENC_DB * EF_ENC_DB, Ti = (T + EF_ENC_IB - 1) / EF_ENC_IB * EF_ENC_IB;
    const float *q = qkv + (size_t)h * dk * S, *k = qkv + ((size_t)e->H + h * dk) * S;
    const float *v = qkv + ((size_t)2 * e->H + h * dk) * S;
    const float inv = 1.0f / sqrtf((float)dk);
    float *restrict s = sc, *restrict acc = s + (size_t)EF_ENC_IB * Tp, *restrict qt = acc + (size_t)EF_ENC_IB * dkp;
    float *restrict vt = qt + (size_t)Ti * dk, *restrict rl = vt + (size_t)T * dkp;
    for (int j = 0; j < Ti; j++)
        for (int c = 0; c < dkp; c++) {
            if (c < dk) qt[(size_t)j * dk + c] = j < T ? q[(size_t)c * S + j] * inv : 0.0f;
            if (j < T) vt[(size_t)j * dkp + c] = c < dk ? v[(size_t)c * S + j] : 0.0f;
        }
    for (int r = 0; r < nr * T; r++) rl[r] = 0.0f;
    for (int r = 0; r < nr; r++)                              /* rl[r][i] = q_i . rel_k[r] / sqrt(dk) */
        for (int c = 0; c < dk; c++) {
            const float a = y->rel_k[(size_t)r * dk + c] * inv, *restrict qc = q + (size_t)c * S;
            float *restrict o = rl + (size_t)r * T;
            for (int i = 0; i < T; i++) o[i] += a * qc[i];
        }
    for (int i0 = 0; i0 < T; i0 += EF_ENC_IB) {
        const int ni = T - i0 < EF_ENC_IB ? T - i0 : EF_ENC_IB;
        float sum[EF_ENC_IB];
        ef_enc_scores(qt, i0, dk, k, S, Tp, s);
        for (int ii = 0; ii < EF_ENC_IB; ii++) {
            float *restrict si = s + (size_t)ii * Tp;
            const int i = i0 + ii;
            for (int r = 0; r < nr && ii < ni; r++)           /* relative keys: j = i + r - w */
                if (i + r - w >= 0 && i + r - w < T) si[i + r - w] += rl[(size_t)r * T + i];
            float mx = si[0];
            for (int j = 1; j < T; j++) mx = si[j] > mx ? si[j] : mx;
            ef_ev sv = {0};
            for (int j = 0; j < Tp; j += 16) {                /* keys >= T get probability 0 */
                ef_enc_exp(si + j, mx);
                for (int u = 0; u < 16 && j + 16 > T; u++) si[j + u] = j + u < T ? si[j + u] : 0.0f;
                sv += EF_ENC_LD(si + j);
            }
            sum[ii] = 0.0f;
            for (int u = 0; u < 16; u++) sum[ii] += sv[u];
        }
        ef_enc_pv(s, Tp, T, vt, dkp, acc);
        for (int ii = 0; ii < ni; ii++) {
            const int i = i0 + ii;
            float *restrict ai = acc + (size_t)ii * dkp;
            for (int r = 0; r < nr; r++) {                    /* relative values */
                const int j = i + r - w;
                if (j < 0 || j >= T) continue;
                const float p = s[(size_t)ii * Tp + j], *restrict rv = y->rel_v + (size_t)r * dk;
                for (int c = 0; c < dk; c++) ai[c] += p * rv[c];
            }
            const float is = 1.0f / sum[ii];
            for (int c = 0; c < dk; c++) att[((size_t)h * dk + c) * S + i] = ai[c] * is;
        }
    }
}
