/* The WaveFlow synthesis driver of the native engine: the upsampler, the per-row, per-layer steps over column
 * blocks (threads split the blocks of each layer; OpenMP), the fold and the row orders. See ef_kernels.c. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ef_internal.h"

/* The calling thread's CPU time (profiling only: load on a shared CPU does not inflate it). */
double ef_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* One transposed-conv upsampler layer in phase form, row hh of H: y[hh][f*s + r] = leaky_0.4(bias +
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
 * CPU seconds of: the layer GEMM (dilated conv + conditioning), the gate, residual + skip, the affine update and
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
        size_t off = 0;
        for (int l = 0; l < m->n_layers; l++) {
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
