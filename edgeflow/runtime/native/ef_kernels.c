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
 * blocks of each layer; the instruction set (AVX-512, AVX2+FMA, portable) is chosen at run time.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define EF_API __attribute__((visibility("default")))
#define EF_MR 4          /* rows of a packed weight tile */
#define EF_NB 64         /* columns (samples of a folded row) per block */
#define EF_VERSION 1

typedef struct {
    int n_flows, n_layers, C, k, n_mels, h, n_up, hop, pad;
    int K, Mab, Mres;                 /* GEMM reduction length, padded output rows */
    int *up_factors, *dil_h, *dil_w, *orders;
    float **up_w;                     /* per upsampler layer: s*9 phase weights then the bias */
    float *start_w, *start_b;         /* [n_flows][C] */
    float **ab_w, **ab_b;             /* [flow*L + layer]: packed [Mab/MR][K][MR], bias [Mab] */
    float **res_w, **res_b;           /* packed [Mres/MR][C][MR], bias [Mres] */
    float **skip_w, **skip_b;         /* [2][C], [2] */
} ef_wf;

typedef struct {                      /* one layer of one row step, as a thread sees it */
    const ef_wf *m;
    int W, Wp, RS, first, last;
    const float *ab_w, *ab_b, *res_w, *res_b, *skip_w, *skip_b, *start_w, *start_b;
    const float *const *xp;           /* K row pointers (column 0 of each reduction row) */
    const float *hid_cur;
    float *hid_next, *hid0_next, *skip, *zrow;
} ef_step;

typedef struct {
    float *a, *g, *r;
    const float **gp;
    const float **xp;
} ef_scratch;

static double ef_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

#define EF_VW 4
#define EF_ATTR
#define EF_NAME generic
#include "ef_wf_impl.h"
#undef EF_VW
#undef EF_ATTR
#undef EF_NAME

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EF_X86 1
#define EF_VW 8
#define EF_ATTR __attribute__((target("avx2,fma")))
#define EF_NAME avx2
#include "ef_wf_impl.h"
#undef EF_VW
#undef EF_ATTR
#undef EF_NAME
#define EF_VW 16
#define EF_ATTR __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define EF_NAME avx512
#include "ef_wf_impl.h"
#undef EF_VW
#undef EF_ATTR
#undef EF_NAME
#endif

typedef void (*ef_block_fn)(const ef_step *, int, ef_scratch *, double *);

static const char *ISA_NAMES[] = {"portable", "avx2", "avx512"};
static int ef_isa = -1;

/* Whether this CPU and build have instruction set isa (0 portable, 1 AVX2+FMA, 2 AVX-512). */
EF_API int ef_has_isa(int isa)
{
    if (isa == 0) return 1;
#ifdef EF_X86
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

static ef_block_fn ef_block_for(int isa)
{
#ifdef EF_X86
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
    need += 2LL * F * C + (long long)F * L * (2LL * C * C * k * k + 2LL * C * m->n_mels + 2 * C + C * C + C + 2 * C + 2);
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
    float *nat = malloc((size_t)2 * C * m->K * sizeof(float));
    if (!m->start_w || !m->start_b || !m->ab_w || !m->ab_b || !m->res_w || !m->res_b || !m->skip_w ||
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
                            nat[(size_t)o * m->K + (kh * k + kw) * C + c] = src[(((size_t)o * C + c) * k + kh) * k + kw];
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

/* One transposed-conv upsampler layer in phase form, rows [h0, h1) of H: y[hh][f*s + r] = leaky_0.4(bias +
 * sum_{a,c<3} k[r][a][c] x[hh+a-1][f+c-1]); into y [H][Fin*s], or (cond != NULL) into the folded conditioning
 * cond[hh][t % h][t / h] (row stride Wp). */
static void ef_upsample(const float *x, int H, int Fin, int s, const float *kw, float *y, float *cond, int h,
                        int Wp, int hh)
{
    const float bias = kw[9 * s];
    for (int f = 0; f < Fin; f++)
        for (int r = 0; r < s; r++) {
            float acc = bias;
            for (int a = 0; a < 3; a++) {
                int hr = hh + a - 1;
                if (hr < 0 || hr >= H) continue;
                const float *row = x + (size_t)hr * Fin;
                const float *kk = kw + (r * 3 + a) * 3;
                if (f > 0) acc += kk[0] * row[f - 1];
                acc += kk[1] * row[f];
                if (f + 1 < Fin) acc += kk[2] * row[f + 1];
            }
            float v = acc > 0 ? acc : 0.4f * acc;
            size_t t = (size_t)f * s + r;
            if (cond) cond[((size_t)hh * h + t % h) * Wp + t / h] = v;
            else y[(size_t)hh * Fin * s + t] = v;
        }
}

static float *ef_slot(float *const *hist, const ef_wf *m, size_t RS, int l, int step)
{
    int R = (m->k - 1) * m->dil_h[l] + 2;            /* receptive rows + 1 spare slot */
    return hist[l] + (size_t)(step % R) * m->C * RS;
}

typedef struct {
    const ef_wf *m;
    int W, Wp, RS;
    float *const *hist;
    float *zero, *cond, *skip, *zbuf;
} ef_run;

/* The per-thread view of layer l of row step i of flow f. */
static void ef_make_step(const ef_run *R, int f, int i, int l, ef_step *s, const float **xp)
{
    const ef_wf *m = R->m;
    const int C = m->C, k = m->k, L = m->n_layers, dh = m->dil_h[l], dw = m->dil_w[l], row = m->orders[f * m->h + i];
    const size_t RS = R->RS;
    for (int kh = 0; kh < k; kh++) {
        int st = i - (k - 1 - kh) * dh;
        const float *base = st < 0 ? R->zero : ef_slot(R->hist, m, RS, l, st);
        for (int kw = 0; kw < k; kw++)
            for (int c = 0; c < C; c++)
                xp[(kh * k + kw) * C + c] = base + c * RS + m->pad + (kw - (k - 1) / 2) * dw;
    }
    for (int q = 0; q < m->n_mels; q++)
        xp[k * k * C + q] = R->cond + ((size_t)q * m->h + row) * R->Wp;
    int li = f * L + l;
    s->m = m; s->W = R->W; s->Wp = R->Wp; s->RS = (int)RS; s->first = l == 0; s->last = l == L - 1;
    s->ab_w = m->ab_w[li]; s->ab_b = m->ab_b[li];
    s->res_w = l < L - 1 ? m->res_w[li] : NULL; s->res_b = m->res_b[li];
    s->skip_w = m->skip_w[li]; s->skip_b = m->skip_b[li];
    s->start_w = m->start_w + f * C; s->start_b = m->start_b + f * C;
    s->xp = xp;
    s->hid_cur = ef_slot(R->hist, m, RS, l, i) + m->pad;
    s->hid_next = l < L - 1 ? ef_slot(R->hist, m, RS, l + 1, i) + m->pad : NULL;
    s->hid0_next = (l == L - 1 && i + 1 < m->h) ? ef_slot(R->hist, m, RS, 0, i + 1) + m->pad : NULL;
    s->skip = R->skip;
    s->zrow = R->zbuf + (size_t)row * R->Wp;
}

/* Synthesis: audio [B][F*hop] = inverse(z * sigma, mel) for mel [B][n_mels][F], z [B][F*hop].
 * threads <= 0: OpenMP's default. prof (NULL, or 5 doubles, meaningful with threads == 1) accumulates the
 * seconds of: the layer GEMM (dilated conv + conditioning), the gate, residual + skip, the affine update and
 * start conv, and the upsampler. Returns 0, -1 (bad arguments), -2 (length not a multiple of h) or -3 (memory). */
EF_API int ef_wf_run(const ef_wf *m, const float *mel, int B, int F, const float *z, float sigma, float *audio,
                     int threads, double *prof)
{
    if (!m || !mel || !z || !audio || B < 1 || F < 1) return -1;
    const long long T = (long long)F * m->hop;
    if (T % m->h) return -2;
    const int W = (int)(T / m->h), Wp = (W + EF_NB - 1) / EF_NB * EF_NB, nblk = Wp / EF_NB;
    const size_t RS = (size_t)Wp + 2 * m->pad;
    int nt = threads;
#ifdef _OPENMP
    if (nt <= 0) nt = omp_get_max_threads();
#else
    nt = 1;
#endif
    if (nt > nblk) nt = nblk;
    if (nt < 1) nt = 1;
    size_t up_max = 1;
    for (int u = 0, n = 1; u + 1 < m->n_up; u++) { n *= m->up_factors[u]; if ((size_t)n > up_max) up_max = n; }
    up_max *= (size_t)m->n_mels * F;
    size_t hist_n = 0;
    for (int l = 0; l < m->n_layers; l++) hist_n += (size_t)((m->k - 1) * m->dil_h[l] + 2) * m->C * RS;
    float *mem[6];
    size_t sizes[6] = {hist_n, (size_t)m->C * RS, (size_t)m->n_mels * m->h * Wp, 2 * (size_t)Wp,
                       (size_t)m->h * Wp, 2 * up_max};
    int bad = 0;
    for (int j = 0; j < 6; j++) { mem[j] = calloc(sizes[j] ? sizes[j] : 1, sizeof(float)); bad |= !mem[j]; }
    float **hist = malloc(m->n_layers * sizeof(float *));
    ef_scratch *scr = calloc(nt, sizeof *scr);
    bad |= !hist || !scr;
    for (int t = 0; !bad && t < nt; t++) {
        scr[t].a = malloc((size_t)m->Mab * EF_NB * sizeof(float));
        scr[t].g = malloc((size_t)m->C * EF_NB * sizeof(float));
        scr[t].r = malloc((size_t)m->Mres * EF_NB * sizeof(float));
        scr[t].gp = malloc(m->C * sizeof(float *));
        scr[t].xp = malloc(m->K * sizeof(float *));
        bad |= !scr[t].a || !scr[t].g || !scr[t].r || !scr[t].gp || !scr[t].xp;
        for (int c = 0; !bad && c < m->C; c++) scr[t].gp[c] = scr[t].g + (size_t)c * EF_NB;
    }
    if (!bad) {
        for (int l = 0, off = 0; l < m->n_layers; l++) {
            hist[l] = mem[0] + off;
            off += (size_t)((m->k - 1) * m->dil_h[l] + 2) * m->C * RS;
        }
        ef_run R = {m, W, Wp, (int)RS, hist, mem[1], mem[2], mem[3], mem[4]};
        ef_block_fn block = ef_block_for(ef_get_isa());
        const int C = m->C, h = m->h;
        #pragma omp parallel num_threads(nt)
        {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            ef_scratch *w = &scr[tid];
            double *pr = tid == 0 ? prof : NULL;
            ef_step s;
            for (int b = 0; b < B; b++) {
                double t0 = pr ? ef_now() : 0;
                const float *x = mel + (size_t)b * m->n_mels * F;
                int Fin = F;
                for (int u = 0; u < m->n_up; u++) {
                    int last = u == m->n_up - 1, su = m->up_factors[u];
                    float *y = mem[5] + (u % 2) * up_max;
                    #pragma omp for schedule(static)
                    for (int hh = 0; hh < m->n_mels; hh++)
                        ef_upsample(x, m->n_mels, Fin, su, m->up_w[u], y, last ? R.cond : NULL, h, Wp, hh);
                    x = y;
                    Fin *= su;
                }
                if (pr) pr[4] += ef_now() - t0;
                #pragma omp for schedule(static)
                for (int i = 0; i < h; i++)
                    for (int j = 0; j < W; j++)
                        R.zbuf[(size_t)i * Wp + j] = z[(size_t)b * T + (size_t)j * h + i] * sigma;
                for (int f = m->n_flows - 1; f >= 0; f--) {
                    float *h0 = ef_slot(hist, m, RS, 0, 0) + m->pad;
                    #pragma omp for schedule(static)
                    for (int c = 0; c < C; c++)
                        for (int j = 0; j < W; j++) h0[(size_t)c * RS + j] = m->start_b[f * C + c];
                    for (int i = 0; i < h; i++)
                        for (int l = 0; l < m->n_layers; l++) {
                            ef_make_step(&R, f, i, l, &s, w->xp);
                            #pragma omp for schedule(static)
                            for (int blk = 0; blk < nblk; blk++) block(&s, blk * EF_NB, w, pr);
                        }
                }
                #pragma omp for schedule(static)
                for (int i = 0; i < h; i++)
                    for (int j = 0; j < W; j++)
                        audio[(size_t)b * T + (size_t)j * h + i] = R.zbuf[(size_t)i * Wp + j];
            }
        }
    }
    for (int t = 0; scr && t < nt; t++) {
        free(scr[t].a); free(scr[t].g); free(scr[t].r); free(scr[t].gp); free(scr[t].xp);
    }
    free(scr); free(hist);
    for (int j = 0; j < 6; j++) free(mem[j]);
    return bad ? -3 : 0;
}
