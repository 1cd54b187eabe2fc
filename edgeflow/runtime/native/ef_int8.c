/* INT8 layers of the native WaveFlow engine: u8 x s8 dot products with int32 accumulation.
 *
 * Weights: s8, symmetric per output channel (the quantized ONNX graph's own int8 initializers and scales, set with
 * ef_wf_set_q8). Activations: u8 with a dynamic scale and zero point per WaveFlow row (each cached hidden row of a
 * layer, each row of the upsampled conditioning), quantized once when the row is complete (ef_run.c). A layer's
 * reduction is split in chunks that share one activation scale (one chunk per kernel row of the height-causal
 * conv, one for the conditioning): the int32 sums of a chunk are scaled into the float output at the chunk's end,
 * and the zero points are folded into the bias (sum_k w (x - zp) = sum_k w x - zp * sum_k w). The gate, the
 * res / skip convs, exp, the affine update and the log-det stay float.
 *
 * Activations are stored quad-interleaved (u8 [columns][4]: 4 consecutive channels of one column in one 32-bit
 * word), the operand layout of a VNNI dot product, so the GEMM reads the cached rows in place at any width shift.
 * Tiles: AVX-512 VNNI (vpdpbusd), AVX2 (u8 / s8 widened to s16 and vpmaddwd: exact, no u8 x s8 pair saturation
 * as with vpmaddubsw), NEON dot product on aarch64 CPUs that have it (sdot on shifted activations), portable C
 * (any compiler). All give the same int32 sums.
 */

#include "ef_internal.h"

#if EF_NB != 64
#error "the INT8 tiles assume EF_NB == 64"
#endif

/* Portable tile (plain C; the compiler vectorizes it where it can). */
static void ef_qtile_generic(int nq, const int8_t *wp, const uint8_t *const *xq, int off, const float *f,
                             float *out, int ostride)
{
    int32_t acc[EF_MR][EF_NB];
    memset(acc, 0, sizeof acc);
    for (int q = 0; q < nq; q++) {
        const uint8_t *x = xq[q] + (size_t)off * 4;
        const int8_t *w = wp + (size_t)q * EF_MR * 4;
        for (int r = 0; r < EF_MR; r++) {
            const int32_t w0 = w[4 * r], w1 = w[4 * r + 1], w2 = w[4 * r + 2], w3 = w[4 * r + 3];
            for (int n = 0; n < EF_NB; n++)
                acc[r][n] += w0 * x[4 * n] + w1 * x[4 * n + 1] + w2 * x[4 * n + 2] + w3 * x[4 * n + 3];
        }
    }
    for (int r = 0; r < EF_MR; r++) {
        if (f) {
            float *o = out + (size_t)r * ostride;
            for (int n = 0; n < EF_NB; n++) o[n] += f[r] * (float)acc[r][n];
        } else {
            memcpy((int32_t *)out + (size_t)r * ostride, acc[r], sizeof acc[r]);
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EF_Q8_X86 1
#include <immintrin.h>

/* AVX2: per quad and 4 columns, u8 -> s16 and s8 -> s16, vpmaddwd gives 2 pair sums per column (exact); the pairs
 * are added (vphaddd) at the end. 8 columns per step, EF_MR rows: 8 accumulators. */
__attribute__((target("avx2,fma")))
static void ef_qtile_avx2(int nq, const int8_t *wp, const uint8_t *const *xq, int off, const float *f, float *out,
                          int ostride)
{
    for (int n0 = 0; n0 < EF_NB; n0 += 8) {
        __m256i acc[EF_MR][2];
        for (int r = 0; r < EF_MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
        for (int q = 0; q < nq; q++) {
            const uint8_t *x = xq[q] + (size_t)(off + n0) * 4;
            const __m256i x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)x));
            const __m256i x1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(x + 16)));
            const int8_t *w = wp + (size_t)q * EF_MR * 4;
            for (int r = 0; r < EF_MR; r++) {
                int32_t w32;
                memcpy(&w32, w + 4 * r, 4);
                const __m256i wr = _mm256_cvtepi8_epi16(_mm_set1_epi32(w32));
                acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(x0, wr));
                acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(x1, wr));
            }
        }
        for (int r = 0; r < EF_MR; r++) {
            __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
            if (f) {
                float *o = out + (size_t)r * ostride + n0;
                _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(f[r]), _mm256_loadu_ps(o)));
            } else {
                _mm256_storeu_si256((__m256i *)((int32_t *)out + (size_t)r * ostride + n0), s);
            }
        }
    }
}

/* AVX-512 VNNI: vpdpbusd, 16 columns x 4 reduction indices per instruction; EF_MR x 4 accumulators (64 columns). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
static void ef_qtile_vnni(int nq, const int8_t *wp, const uint8_t *const *xq, int off, const float *f, float *out,
                          int ostride)
{
    __m512i acc[EF_MR][4];
    for (int r = 0; r < EF_MR; r++)
        for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_si512();
    for (int q = 0; q < nq; q++) {
        const uint8_t *x = xq[q] + (size_t)off * 4;
        __m512i xv[4];
        for (int v = 0; v < 4; v++) xv[v] = _mm512_loadu_si512((const void *)(x + 64 * v));
        const int8_t *w = wp + (size_t)q * EF_MR * 4;
        for (int r = 0; r < EF_MR; r++) {
            int32_t w32;
            memcpy(&w32, w + 4 * r, 4);
            const __m512i wr = _mm512_set1_epi32(w32);
            for (int v = 0; v < 4; v++) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], xv[v], wr);
        }
    }
    for (int r = 0; r < EF_MR; r++)
        for (int v = 0; v < 4; v++) {
            if (f) {
                float *o = out + (size_t)r * ostride + 16 * v;
                _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][v]), _mm512_set1_ps(f[r]),
                                                    _mm512_loadu_ps(o)));
            } else {
                _mm512_storeu_si512((void *)((int32_t *)out + (size_t)r * ostride + 16 * v), acc[r][v]);
            }
        }
}
#endif

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define EF_Q8_NEON 1
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#if EF_MR != 4
#error "the NEON dot-product tile assumes EF_MR == 4 (one weight quad per lane)"
#endif

/* NEON dot product (Armv8.2 dotprod: Cortex-A76 / A78, e.g. Raspberry Pi 5 and Jetson Orin). sdot multiplies
 * s8 x s8, so the u8 activations are shifted to s8 (x - 128: their top bit flipped) and 128 * sum(w) of each row is
 * added back, exactly, in int32: the same sums as the other tiles. vdotq_laneq_s32: 4 columns x 4 reduction
 * indices against row r's weight quad (lane r of the tile's 16 weight bytes); 16 columns per step, 16
 * accumulators. */
__attribute__((target("arch=armv8.2-a+dotprod")))
static void ef_qtile_neon_dot(int nq, const int8_t *wp, const uint8_t *const *xq, int off, const float *f,
                              float *out, int ostride)
{
    const uint8x16_t top = vdupq_n_u8(0x80);
    int32_t wsum[EF_MR] = {0};
    for (int q = 0; q < nq; q++)
        for (int r = 0; r < EF_MR; r++) {
            const int8_t *w = wp + (size_t)q * EF_MR * 4 + 4 * r;
            wsum[r] += w[0] + w[1] + w[2] + w[3];
        }
    for (int n0 = 0; n0 < EF_NB; n0 += 16) {
        int32x4_t acc[EF_MR][4];
        for (int r = 0; r < EF_MR; r++)
            for (int v = 0; v < 4; v++) acc[r][v] = vdupq_n_s32(128 * wsum[r]);
        for (int q = 0; q < nq; q++) {
            const uint8_t *x = xq[q] + (size_t)(off + n0) * 4;
            const int8x16_t wv = vld1q_s8(wp + (size_t)q * EF_MR * 4);
            for (int v = 0; v < 4; v++) {
                const int8x16_t xv = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x + 16 * v), top));
                acc[0][v] = vdotq_laneq_s32(acc[0][v], xv, wv, 0);
                acc[1][v] = vdotq_laneq_s32(acc[1][v], xv, wv, 1);
                acc[2][v] = vdotq_laneq_s32(acc[2][v], xv, wv, 2);
                acc[3][v] = vdotq_laneq_s32(acc[3][v], xv, wv, 3);
            }
        }
        for (int r = 0; r < EF_MR; r++)
            for (int v = 0; v < 4; v++) {
                if (f) {
                    float *o = out + (size_t)r * ostride + n0 + 4 * v;
                    vst1q_f32(o, vfmaq_n_f32(vld1q_f32(o), vcvtq_f32_s32(acc[r][v]), f[r]));
                } else {
                    vst1q_s32((int32_t *)out + (size_t)r * ostride + n0 + 4 * v, acc[r][v]);
                }
            }
    }
}

static int ef_has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
#endif

#ifdef EF_Q8_X86
static int ef_has_vnni(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}
#endif

ef_qtile_fn ef_qtile_for(int isa)
{
#ifdef EF_Q8_X86
    if (isa == 2 && ef_has_vnni()) return ef_qtile_vnni;
    if (isa >= 1) return ef_qtile_avx2;
#endif
#ifdef EF_Q8_NEON
    if (ef_has_dotprod()) return ef_qtile_neon_dot;     /* aarch64: isa is always 0 (portable float) */
#endif
    (void)isa;
    return ef_qtile_generic;
}

/* The INT8 kernel the instruction set in use runs: "avx512vnni", "avx2" or "portable". */
EF_API const char *ef_q8_kernel(void)
{
    ef_qtile_fn t = ef_qtile_for(ef_get_isa());
#ifdef EF_Q8_X86
    if (t == ef_qtile_vnni) return "avx512vnni";
    if (t == ef_qtile_avx2) return "avx2";
#endif
#ifdef EF_Q8_NEON
    if (t == ef_qtile_neon_dot) return "neon-dotprod";
#endif
    return t == ef_qtile_generic ? "portable" : "?";
}

/* The row quantizers: GCC vector extensions (16 lanes), cloned for AVX-512 / AVX2 on x86 (the clone is picked
 * by CPU features at load time; all clones compute the same values). */
#if defined(EF_Q8_X86) && !defined(__clang__)
#define EF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EF_CLONES
#endif
typedef float ef_v16 __attribute__((vector_size(64)));
typedef int32_t ef_i16 __attribute__((vector_size(64)));
typedef float ef_uv16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t ef_ui16 __attribute__((vector_size(64), aligned(4), may_alias));

#define ef_vsel(m, a, b) ((ef_v16)(((m) & (ef_i16)(a)) | (~(m) & (ef_i16)(b))))

EF_CLONES void ef_minmax_rows(const float *src, size_t cstride, int C, int n, float *lo, float *hi)
{
    float l = *lo, h = *hi;
    ef_v16 lv = {0}, hv = {0};
    for (int c = 0; c < C; c++) {
        const float *x = src + (size_t)c * cstride;
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            ef_v16 v = *(const ef_uv16 *)(x + j);
            lv = ef_vsel(v < lv, v, lv);
            hv = ef_vsel(v > hv, v, hv);
        }
        for (; j < n; j++) { l = x[j] < l ? x[j] : l; h = x[j] > h ? x[j] : h; }
    }
    for (int i = 0; i < 16; i++) { l = lv[i] < l ? lv[i] : l; h = hv[i] > h ? hv[i] : h; }
    *lo = l; *hi = h;
}

void ef_qparams(float lo, float hi, float *s, int *zp)
{
    lo = lo < 0.0f ? lo : 0.0f;
    hi = hi > 0.0f ? hi : 0.0f;
    float sc = (hi - lo) / 255.0f;
    if (!(sc > 0.0f) || sc != sc || sc > 1e30f) sc = 1.0f;
    int z = (int)(-lo / sc + 0.5f);
    *s = sc;
    *zp = z < 0 ? 0 : z > 255 ? 255 : z;
}

void ef_qparams_blocks(const float *mm, int nblk, float *s, int *zp)
{
    float lo = 0.0f, hi = 0.0f;
    for (int b = 0; b < nblk; b++) {
        lo = mm[2 * b] < lo ? mm[2 * b] : lo;
        hi = mm[2 * b + 1] > hi ? mm[2 * b + 1] : hi;
    }
    ef_qparams(lo, hi, s, zp);
}

static inline uint8_t ef_q(float v, float inv, float zp)
{
    float t = v * inv + zp;
    t = t > 0.0f ? t : 0.0f;
    t = t < 255.0f ? t : 255.0f;
    return (uint8_t)(int)(t + 0.5f);
}

/* Rows of src (leaky ReLU of slope `slope` applied first when lrelu) to u8 in the quad-interleaved layout; with
 * dst2, the rounding error of each value quantized again (scale s2, zero point zp2) into dst2. */
static inline __attribute__((always_inline)) void ef_quant_body(const float *src, size_t cstride, int C, int n,
                                                                 int lrelu, float slope, float s, int zp, uint8_t *dst,
                                                                 size_t qstride, float s2, int zp2, uint8_t *dst2)
{
    const float inv = 1.0f / s, z = (float)zp, inv2 = dst2 ? 1.0f / s2 : 0.0f, z2 = (float)zp2;
    for (int c0 = 0; c0 < C; c0 += 4) {
        const float *r[4];
        for (int i = 0; i < 4; i++) r[i] = c0 + i < C ? src + (size_t)(c0 + i) * cstride : NULL;
        uint8_t *d = dst + (size_t)(c0 / 4) * qstride * 4;
        uint8_t *d2 = dst2 ? dst2 + (size_t)(c0 / 4) * qstride * 4 : NULL;
        int j = 0;
        for (; j + 16 <= n; j += 16) {                 /* 16 columns: one 32-bit quad each, channel i in byte i */
            ef_i16 word = {0}, word2 = {0};
            for (int i = 0; i < 4; i++) {
                ef_v16 v = {0};
                if (r[i]) v = *(const ef_uv16 *)(r[i] + j);
                if (lrelu) v = ef_vsel(v < 0.0f, v * slope, v);
                ef_v16 t = v * inv + z;
                t = ef_vsel(t > 0.0f, t, (ef_v16){0});
                t = ef_vsel(t < 255.0f, t, (ef_v16){0} + 255.0f);
                const ef_i16 q = __builtin_convertvector(t + 0.5f, ef_i16);
                word |= q << (8 * i);
                if (d2) {
                    ef_v16 e = (v - (__builtin_convertvector(q, ef_v16) - z) * s) * inv2 + z2;
                    e = ef_vsel(e > 0.0f, e, (ef_v16){0});
                    e = ef_vsel(e < 255.0f, e, (ef_v16){0} + 255.0f);
                    word2 |= __builtin_convertvector(e + 0.5f, ef_i16) << (8 * i);
                }
            }
            *(ef_ui16 *)(d + 4 * (size_t)j) = word;
            if (d2) *(ef_ui16 *)(d2 + 4 * (size_t)j) = word2;
        }
        for (; j < n; j++)
            for (int i = 0; i < 4; i++) {
                float v = r[i] ? r[i][j] : 0.0f;
                if (lrelu && v < 0.0f) v *= slope;
                const uint8_t q = r[i] ? ef_q(v, inv, z) : (uint8_t)zp;
                d[4 * j + i] = q;
                if (d2) d2[4 * j + i] = r[i] ? ef_q(v - ((float)q - z) * s, inv2, z2) : (uint8_t)zp2;
            }
    }
}

EF_CLONES void ef_quant_rows(const float *src, size_t cstride, int C, int n, float s, int zp, uint8_t *dst,
                             size_t qstride)
{
    ef_quant_body(src, cstride, C, n, 0, 0.0f, s, zp, dst, qstride, 0.0f, 0, NULL);
}

EF_CLONES void ef_quant_rows_lrelu(const float *src, size_t cstride, int C, int n, float slope, float s, int zp,
                                   uint8_t *dst, size_t qstride, float s2, int zp2, uint8_t *dst2)
{
    ef_quant_body(src, cstride, C, n, 1, slope, s, zp, dst, qstride, s2, zp2, dst2);
}

void ef_q8_free(ef_q8 *q)
{
    if (!q) return;
    free(q->w); free(q->wsum); free(q->scale); free(q->amx);
    free(q);
}

/* Pack s8 weights: natural element (o, quad qi, byte i) = nat(o, qi, i) (a callback over the two layouts). */
static ef_q8 *ef_q8_pack(int M, int Mp, int nq, int nchunk, const int8_t *q, const float *scale, int conv, int C,
                         int k, int n_mels)
{
    ef_q8 *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nq = nq; p->nchunk = nchunk; p->chunk = nq / nchunk;
    p->w = calloc((size_t)Mp * nq * 4, 1);
    p->wsum = calloc((size_t)nchunk * Mp, sizeof(int32_t));
    p->scale = calloc(Mp, sizeof(float));
    if (!p->w || !p->wsum || !p->scale) { ef_q8_free(p); return NULL; }
    const int Cq = (C + 3) / 4;
    for (int o = 0; o < M; o++) {
        p->scale[o] = scale[o];
        for (int qi = 0; qi < nq; qi++)
            for (int i = 0; i < 4; i++) {
                int8_t v = 0;
                if (conv) {                                   /* qi = (kh * k + kw) * Cq + cq, q [M][C][k][k] */
                    int c = (qi % Cq) * 4 + i, khw = qi / Cq;
                    if (c < C) v = q[((size_t)o * C + c) * k * k + khw];
                } else {                                      /* qi = mel quad, q [M][n_mels] */
                    int mm = qi * 4 + i;
                    if (mm < n_mels) v = q[(size_t)o * n_mels + mm];
                }
                p->w[(((size_t)(o / EF_MR) * nq + qi) * EF_MR + o % EF_MR) * 4 + i] = v;
                p->wsum[(size_t)(qi / p->chunk) * Mp + o] += v;
            }
    }
    return p;
}

/* Make the dilated conv (part 0: q [2C][C][k][k]) or the conditioning conv (part 1: q [2C][n_mels]) of layer
 * `layer` of flow `flow` INT8, with per-output-channel scales scale [2C]. Returns 0, or -1 (bad arguments, memory). */
EF_API int ef_wf_set_q8(ef_wf *m, int flow, int layer, int part, const int8_t *q, const float *scale)
{
    if (!m || !q || !scale || flow < 0 || flow >= m->n_flows || layer < 0 || layer >= m->n_layers ||
        part < 0 || part > 1 || m->k + 1 > EF_QK)
        return -1;
    for (int o = 0; o < 2 * m->C; o++)
        if (!(scale[o] >= 0.0f) || scale[o] > 1e30f) return -1;
    int i = flow * m->n_layers + layer;
    ef_q8 **slot = part == 0 ? &m->conv_q[i] : &m->cond_q[i];
    ef_q8 *p = part == 0 ? ef_q8_pack(2 * m->C, m->Mab, m->k * m->k * m->Cq, m->k, q, scale, 1, m->C, m->k, 0)
                         : ef_q8_pack(2 * m->C, m->Mab, m->Mq, 1, q, scale, 0, m->C, 1, m->n_mels);
    if (p && ef_amx_pack(p, 2 * m->C, part == 0 ? m->C : m->n_mels, part == 0 ? m->k * m->k : 1, q)) {
        ef_q8_free(p);
        return -1;
    }
    if (!p) return -1;
    ef_q8_free(*slot);
    *slot = p;
    return 0;
}

/* Test hook: out[M][N] = w[M][K] (s8) x[K][N] (u8) in int32 with the INT8 tile of the instruction set in use.
 * Returns 0, or -1 (bad arguments, memory). */
EF_API int ef_q8_gemm_test(int M, int K, const int8_t *w, const uint8_t *x, int N, int32_t *out)
{
    if (M < 1 || K < 1 || N < 1 || !w || !x || !out) return -1;
    const int Mp = (M + EF_MR - 1) / EF_MR * EF_MR, nq = (K + 3) / 4, Np = (N + EF_NB - 1) / EF_NB * EF_NB;
    int8_t *wp = calloc((size_t)Mp * nq * 4, 1);
    uint8_t *xi = calloc((size_t)nq * Np * 4, 1);
    const uint8_t **xq = malloc(nq * sizeof *xq);
    int32_t *tmp = malloc((size_t)EF_MR * EF_NB * sizeof(int32_t));
    int rc = (!wp || !xi || !xq || !tmp) ? -1 : 0;
    if (!rc) {
        for (int o = 0; o < M; o++)
            for (int kk = 0; kk < K; kk++)
                wp[(((size_t)(o / EF_MR) * nq + kk / 4) * EF_MR + o % EF_MR) * 4 + kk % 4] = w[(size_t)o * K + kk];
        for (int kk = 0; kk < K; kk++)
            for (int n = 0; n < N; n++) xi[((size_t)(kk / 4) * Np + n) * 4 + kk % 4] = x[(size_t)kk * N + n];
        for (int qi = 0; qi < nq; qi++) xq[qi] = xi + (size_t)qi * Np * 4;
        ef_qtile_fn tile = ef_qtile_for(ef_get_isa());
        for (int mt = 0; mt < Mp; mt += EF_MR)
            for (int j0 = 0; j0 < Np; j0 += EF_NB) {
                tile(nq, wp + (size_t)mt * nq * 4, xq, j0, NULL, (float *)tmp, EF_NB);
                for (int r = 0; r < EF_MR && mt + r < M; r++)
                    for (int n = 0; n < EF_NB && j0 + n < N; n++)
                        out[(size_t)(mt + r) * N + j0 + n] = tmp[r * EF_NB + n];
            }
    }
    free(wp); free(xi); free(xq); free(tmp);
    return rc;
}
