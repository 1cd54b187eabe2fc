/* edgeflow native kernels: the WaveFlow inverse (synthesis) in float32, row loop inside.
 *
 * A plain C shared library (no Python C API), loaded with ctypes by edgeflow/runtime/native/__init__.py.
 * Weights come in their natural layout (the bundle's kernels.npz, see edgeflow/runtime/native/format.py) and are
 * packed once by ef_wf_create into the GEMM tile layout. Per flow (last first, as the model's inverse), per row
 * (in the flow's row order), per layer: the height-causal dilated k x k convolution over the cached rows and the
 * conditioning 1x1 conv as ONE packed GEMM over column blocks of EF_NB samples (the input rows are read in place
 * through a pointer per reduction index, no im2col copy), gated tanh x sigmoid, the residual 1x1 conv into the
 * next layer's row cache, the skip 1x1 conv (the end conv folded in) into the row's (log s, t), and after the last
 * layer the affine update of the row and the start conv of the next row. Threads (OpenMP) split the column
 * blocks of each layer; the instruction set (AVX-512, AVX2+FMA, portable) is chosen at run time. This file: the
 * instruction-set variants (ef_wf_impl.h), their dispatch, weight packing and the C API; ef_run.c: the driver;
 * ef_int8.c: the INT8 layers (u8 x s8 tiles, activation quantization).
 */

#include "ef_internal.h"

#define EF_IMPL "ef_wf_impl.h"
#include "ef_isa_each.h"
#undef EF_IMPL

static const char *ISA_NAMES[] = {"portable", "avx2", "avx512"};
static int ef_isa = -1;

/* Whether this CPU and build have instruction set isa (0 portable, 1 AVX2+FMA, 2 AVX-512). */
EF_API int ef_has_isa(int isa)
{
    if (isa == 0) return 1;
#ifdef EF_HAVE_X86
    __builtin_cpu_init();
    if (isa == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == 2) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

/* The instruction set in use: 0 portable, 1 AVX2+FMA, 2 AVX-512 (the best this CPU has, unless set). */
EF_API int ef_get_isa(void)
{
    if (ef_isa < 0)
        ef_isa = ef_has_isa(2) ? 2 : ef_has_isa(1) ? 1 : 0;
    return ef_isa;
}

EF_API const char *ef_isa_name(int isa) { return (isa >= 0 && isa < 3) ? ISA_NAMES[isa] : "?"; }

/* Force an instruction set (tests, benchmarks). Returns 0, or -1 when this CPU or build lacks it. */
EF_API int ef_set_isa(int isa)
{
    if (isa < 0 || isa > 2 || !ef_has_isa(isa)) return -1;
    ef_isa = isa;
    return 0;
}

EF_API int ef_version(void) { return EF_VERSION; }

EF_API int ef_openmp(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

ef_block_fn ef_block_for(int isa)
{
#ifdef EF_HAVE_X86
    if (isa == 2) return ef_block_avx512;
    if (isa == 1) return ef_block_avx2;
#endif
    (void)isa;
    return ef_block_generic;
}

EF_API void ef_wf_free(ef_wf *m)
{
    if (!m) return;
    int nl = m->n_flows * m->n_layers;
    for (int i = 0; m->up_w && i < m->n_up; i++) free(m->up_w[i]);
    float **lists[] = {m->ab_w, m->ab_b, m->res_w, m->res_b, m->skip_w, m->skip_b};
    for (int j = 0; j < 6; j++) {
        for (int i = 0; lists[j] && i < nl; i++) free(lists[j][i]);
        free(lists[j]);
    }
    for (int i = 0; m->conv_q && i < nl; i++) ef_q8_free(m->conv_q[i]);
    for (int i = 0; m->cond_q && i < nl; i++) ef_q8_free(m->cond_q[i]);
    free(m->conv_q); free(m->cond_q);
    free(m->up_w); free(m->up_factors); free(m->dil_h); free(m->dil_w); free(m->orders);
    free(m->start_w); free(m->start_b);
    free(m);
}

static float *ef_copy(const float **src, size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (p) memcpy(p, *src, n * sizeof(float));
    *src += n;
    return p;
}

/* Pack W [M][K] (row m at w + m * K) into [Mp/MR][K][MR], zero rows past M. */
static float *ef_pack(const float *w, int M, int K, int Mp)
{
    float *p = calloc((size_t)Mp * K, sizeof(float));
    if (!p) return NULL;
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++)
            p[((size_t)(m / EF_MR) * K + k) * EF_MR + m % EF_MR] = w[(size_t)m * K + k];
    return p;
}

static int *ef_ints(const int **src, int n)
{
    int *p = malloc((n > 0 ? n : 1) * sizeof(int));
    if (p) memcpy(p, *src, n * sizeof(int));
    *src += n;
    return p;
}

/* cfg: [version, n_flows, n_layers, C, k, n_mels, h, n_up, up_factors[n_up], dil_h[L], dil_w[L],
 *       orders[n_flows * h]]; w: the weights in natural layout, in the order of format.py's blob().
 * Returns a handle, or NULL on a bad configuration, a wrong weight count or no memory. */
EF_API ef_wf *ef_wf_create(const int *cfg, int n_cfg, const float *w, long long n_w)
{
    if (n_cfg < 8 || cfg[0] != EF_VERSION) return NULL;
    ef_wf *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->n_flows = cfg[1]; m->n_layers = cfg[2]; m->C = cfg[3]; m->k = cfg[4]; m->n_mels = cfg[5]; m->h = cfg[6];
    m->n_up = cfg[7];
    int F = m->n_flows, L = m->n_layers, C = m->C, k = m->k;
    if (F < 1 || L < 1 || C < 1 || k < 1 || k % 2 == 0 || m->n_mels < 1 || m->h < 1 || m->n_up < 1 ||
        n_cfg != 8 + m->n_up + 2 * L + F * m->h) { ef_wf_free(m); return NULL; }
    const int *ci = cfg + 8;
    m->up_factors = ef_ints(&ci, m->n_up);
    m->dil_h = ef_ints(&ci, L);
    m->dil_w = ef_ints(&ci, L);
    m->orders = ef_ints(&ci, F * m->h);
    m->hop = 1;
    long long need = 0;
    for (int u = 0; u < m->n_up; u++) { m->hop *= m->up_factors[u]; need += 9LL * m->up_factors[u] + 1; }
    m->K = k * k * C + m->n_mels;
    m->Mab = (2 * C + EF_MR - 1) / EF_MR * EF_MR;
    m->Mres = (C + EF_MR - 1) / EF_MR * EF_MR;
    m->Cq = (C + 3) / 4;
    m->Mq = (m->n_mels + 3) / 4;
    need += 2LL * F * C +
            (long long)F * L * (2LL * C * C * k * k + 2LL * C * m->n_mels + 2 * C + C * C + C + 2 * C + 2);
    if (n_w != need) { ef_wf_free(m); return NULL; }
    for (int l = 0; l < L; l++) {
        int p = m->dil_w[l] * (k - 1) / 2;
        if (m->dil_h[l] < 1 || m->dil_w[l] < 1) { ef_wf_free(m); return NULL; }
        if (p > m->pad) m->pad = p;
    }
    const float *src = w;
    m->up_w = calloc(m->n_up, sizeof(float *));
    for (int u = 0; u < m->n_up; u++) m->up_w[u] = ef_copy(&src, 9 * (size_t)m->up_factors[u] + 1);
    m->start_w = malloc((size_t)F * C * sizeof(float));
    m->start_b = malloc((size_t)F * C * sizeof(float));
    int nl = F * L;
    m->ab_w = calloc(nl, sizeof(float *)); m->ab_b = calloc(nl, sizeof(float *));
    m->res_w = calloc(nl, sizeof(float *)); m->res_b = calloc(nl, sizeof(float *));
    m->skip_w = calloc(nl, sizeof(float *)); m->skip_b = calloc(nl, sizeof(float *));
    m->conv_q = calloc(nl, sizeof(ef_q8 *)); m->cond_q = calloc(nl, sizeof(ef_q8 *));
    float *nat = malloc((size_t)2 * C * m->K * sizeof(float));
    if (!m->conv_q || !m->cond_q || !m->start_w || !m->start_b || !m->ab_w || !m->ab_b || !m->res_w || !m->res_b ||
        !m->skip_w ||
        !m->skip_b || !nat) { free(nat); ef_wf_free(m); return NULL; }
    for (int f = 0; f < F; f++) {
        memcpy(m->start_w + f * C, src, C * sizeof(float)); src += C;
        memcpy(m->start_b + f * C, src, C * sizeof(float)); src += C;
        for (int l = 0; l < L; l++) {
            int i = f * L + l;
            for (int o = 0; o < 2 * C; o++)              /* conv [2C][C][k][k] -> K index (kh * k + kw) * C + c */
                for (int c = 0; c < C; c++)
                    for (int kh = 0; kh < k; kh++)
                        for (int kw = 0; kw < k; kw++)
                            nat[(size_t)o * m->K + (kh * k + kw) * C + c] =
                                src[(((size_t)o * C + c) * k + kh) * k + kw];
            src += (size_t)2 * C * C * k * k;
            for (int o = 0; o < 2 * C; o++)
                memcpy(nat + (size_t)o * m->K + k * k * C, src + (size_t)o * m->n_mels, m->n_mels * sizeof(float));
            src += (size_t)2 * C * m->n_mels;
            m->ab_w[i] = ef_pack(nat, 2 * C, m->K, m->Mab);
            m->ab_b[i] = calloc(m->Mab, sizeof(float));
            if (m->ab_b[i]) memcpy(m->ab_b[i], src, 2 * C * sizeof(float));
            src += 2 * C;
            m->res_w[i] = ef_pack(src, C, C, m->Mres); src += (size_t)C * C;
            m->res_b[i] = calloc(m->Mres, sizeof(float));
            if (m->res_b[i]) memcpy(m->res_b[i], src, C * sizeof(float));
            src += C;
            m->skip_w[i] = ef_copy(&src, 2 * (size_t)C);
            m->skip_b[i] = ef_copy(&src, 2);
            if (!m->ab_w[i] || !m->ab_b[i] || !m->res_w[i] || !m->res_b[i] || !m->skip_w[i] || !m->skip_b[i]) {
                free(nat); ef_wf_free(m); return NULL;
            }
        }
    }
    free(nat);
    return m;
}

