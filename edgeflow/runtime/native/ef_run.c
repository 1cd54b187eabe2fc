/* The WaveFlow synthesis driver of the native engine: the upsampler, the per-row, per-layer steps over column
 * blocks (threads split the blocks of each layer; OpenMP), the fold and the row orders. See ef_kernels.c. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
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
    float *buf = malloc((size_t)4 * (Fin + 2) * sizeof(float));    /* 3 zero-padded input rows + one output row */
    if (!buf) return;
    const float *rows[3];
    for (int a = 0; a < 3; a++) {
        int hr = hh + a - 1;
        rows[a] = NULL;
        if (hr < 0 || hr >= H) continue;
        float *p = buf + (size_t)a * (Fin + 2);
        p[0] = p[Fin + 1] = 0.0f;
        memcpy(p + 1, x + (size_t)hr * Fin, Fin * sizeof(float));
        rows[a] = p + 1;
    }
    float *acc = buf + (size_t)3 * (Fin + 2);
    for (int r = 0; r < s; r++) {
        for (int f = 0; f < Fin; f++) acc[f] = bias;
        for (int a = 0; a < 3; a++) {                   /* vectorizable over f: no boundary branches */
            const float *row = rows[a], *kk = kw + (r * 3 + a) * 3;
            if (!row) continue;
            const float k0 = kk[0], k1 = kk[1], k2 = kk[2];
            for (int f = 0; f < Fin; f++) acc[f] = ((acc[f] + k0 * row[f - 1]) + k1 * row[f]) + k2 * row[f + 1];
        }
        for (int f = 0; f < Fin; f++) acc[f] = acc[f] > 0 ? acc[f] : 0.4f * acc[f];
        float *dst = NULL;
        size_t stride = 0;
        if (!cond) { dst = y + (size_t)hh * Fin * s + r; stride = s; }
        else if (s % h == 0) { dst = cond + ((size_t)hh * h + r % h) * Wp + r / h; stride = s / h; }
        if (dst)
            for (int f = 0; f < Fin; f++) dst[(size_t)f * stride] = acc[f];
        else
            for (int f = 0; f < Fin; f++) {
                size_t t = (size_t)f * s + r;
                cond[((size_t)hh * h + t % h) * Wp + t / h] = acc[f];
            }
    }
    free(buf);
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
    /* INT8: u8 rings of the hidden rows (per layer, NULL where no flow's layer is INT8), their scales and zero
     * points per slot [L][rmax], the u8 zero row, the u8 conditioning [h][Mq][Wp][4] with one scale per row,
     * per-block min / max scratch [nblk][2], the tile */
    uint8_t **hq, *zero8, *cond8;
    float *hq_s, *cond_s, *mm;
    int *hq_z, *cond_z;
    int rmax, amx;                    /* amx: the INT8 parts with AMX weights run on AMX (ef_amx.c) */
    ef_qtile_fn qtile;
} ef_run;

static int ef_ring(const ef_wf *m, int l) { return (m->k - 1) * m->dil_h[l] + 2; }

/* Quantize row `step` of layer l's hidden ring to u8 (all threads call it). Its per-block range is in R->mm when
 * have_mm (the blocks that wrote the row measured it), else it is measured here first (one more barrier). */
static void ef_quantize_slot(const ef_run *R, int l, int step, int tid, int nblk, int have_mm)
{
    const ef_wf *m = R->m;
    const int C = m->C, pad = m->pad, slot = step % ef_ring(m, l);
    const float *src = ef_slot(R->hist, m, R->RS, l, step) + pad;
    uint8_t *dst = R->hq[l] + (size_t)slot * m->Cq * R->RS * 4 + (size_t)pad * 4;
    if (!have_mm) {
        #pragma omp for schedule(static)
        for (int b = 0; b < nblk; b++) {
            float lo = 0.0f, hi = 0.0f;
            int n = R->W - b * EF_NB < EF_NB ? R->W - b * EF_NB : EF_NB;
            ef_minmax_rows(src + b * EF_NB, R->RS, C, n, &lo, &hi);
            R->mm[2 * b] = lo; R->mm[2 * b + 1] = hi;
        }
    }
    float sc;
    int zp;
    ef_qparams_blocks(R->mm, nblk, &sc, &zp);
    if (tid == 0) { R->hq_s[l * R->rmax + slot] = sc; R->hq_z[l * R->rmax + slot] = zp; }
    #pragma omp for schedule(static)
    for (int b = 0; b < nblk; b++) {
        int c0 = b * EF_NB, n = EF_NB;
        if (b == 0) { c0 -= pad; n += pad; }
        if (b == nblk - 1) n += pad;
        ef_quant_rows(src + c0, R->RS, C, n, sc, zp, dst + (ptrdiff_t)c0 * 4, R->RS);
    }
}

/* The INT8 operands of a step: quad pointers, chunk scales, and the bias with the zero points folded in. */
static void ef_make_qstep(const ef_run *R, int f, int i, int l, int row, ef_step *s, ef_scratch *w)
{
    const ef_wf *m = R->m;
    const int k = m->k, li = f * m->n_layers + l, Mab = m->Mab, Cq = m->Cq, RS = R->RS;
    s->conv_q = m->conv_q[li]; s->cond_q = m->cond_q[li]; s->qtile = R->qtile;
    s->amx = R->amx; s->bs_conv = (size_t)RS * 4; s->bs_cond = (size_t)R->Wp * 4;
    s->qbias = s->ab_b;
    if (!s->conv_q && !s->cond_q) return;
    float *qb = w->qbias;
    memcpy(qb, s->ab_b, Mab * sizeof(float));
    if (s->conv_q)
        for (int kh = 0; kh < k; kh++) {
            int st = i - (k - 1 - kh) * m->dil_h[l], slot = st < 0 ? 0 : st % ef_ring(m, l), zp = 0;
            const uint8_t *base = R->zero8;
            s->xs[kh] = 0.0f;
            if (st >= 0) {
                base = R->hq[l] + (size_t)slot * Cq * RS * 4;
                s->xs[kh] = R->hq_s[l * R->rmax + slot];
                zp = R->hq_z[l * R->rmax + slot];
            }
            for (int kw = 0; kw < k; kw++)
                for (int cq = 0; cq < Cq; cq++)
                    w->xq[(kh * k + kw) * Cq + cq] =
                        base + ((size_t)cq * RS + m->pad + (kw - (k - 1) / 2) * m->dil_w[l]) * 4;
            for (int o = 0; o < Mab; o++)
                qb[o] -= s->xs[kh] * s->conv_q->scale[o] * (float)(zp * s->conv_q->wsum[(size_t)kh * Mab + o]);
        }
    if (s->cond_q) {
        s->xs[k] = R->cond_s[row];
        for (int q = 0; q < m->Mq; q++)
            w->xq[k * k * Cq + q] = R->cond8 + ((size_t)row * m->Mq + q) * R->Wp * 4;
        for (int o = 0; o < Mab; o++)
            qb[o] -= s->xs[k] * s->cond_q->scale[o] * (float)(R->cond_z[row] * s->cond_q->wsum[o]);
    }
    s->qbias = qb;
    s->xq = w->xq;
}

/* The per-thread view of layer l of row step i of flow f. */
static void ef_make_step(const ef_run *R, int f, int i, int l, ef_step *s, ef_scratch *w)
{
    const float **xp = w->xp;
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
    s->mm_next = NULL;
    if ((s->hid_next && m->conv_q[li + 1]) || (s->hid0_next && m->conv_q[f * L]))
        s->mm_next = R->mm;
    ef_make_qstep(R, f, i, l, row, s, w);
}

/* The INT8 buffers of a run (only what the model's INT8 layers need). Returns 0, or -3 (memory). */
static int ef_q8_alloc(ef_run *R, int nblk)
{
    const ef_wf *m = R->m;
    const int L = m->n_layers, nl = m->n_flows * L;
    int any_cond = 0, bad = 0;
    R->qtile = ef_qtile_for(ef_get_isa());
    R->amx = ef_amx_on();
    R->rmax = 1;
    for (int l = 0; l < L; l++) R->rmax = ef_ring(m, l) > R->rmax ? ef_ring(m, l) : R->rmax;
    R->hq = calloc(L, sizeof(uint8_t *));
    R->hq_s = calloc((size_t)L * R->rmax, sizeof(float));
    R->hq_z = calloc((size_t)L * R->rmax, sizeof(int));
    R->mm = calloc(2 * (size_t)nblk, sizeof(float));
    R->zero8 = calloc((size_t)m->Cq * R->RS * 4, 1);
    bad = !R->hq || !R->hq_s || !R->hq_z || !R->mm || !R->zero8;
    for (int i = 0; i < nl; i++) any_cond |= m->cond_q[i] != NULL;
    for (int l = 0; !bad && l < L; l++)
        for (int f = 0; f < m->n_flows; f++)
            if (m->conv_q[f * L + l] && !R->hq[l]) {
                R->hq[l] = calloc((size_t)ef_ring(m, l) * m->Cq * R->RS * 4, 1);
                bad |= !R->hq[l];
            }
    if (!bad && any_cond) {
        R->cond8 = calloc((size_t)m->h * m->Mq * R->Wp * 4, 1);
        R->cond_s = calloc(m->h, sizeof(float));
        R->cond_z = calloc(m->h, sizeof(int));
        bad = !R->cond8 || !R->cond_s || !R->cond_z;
    }
    return bad ? -3 : 0;
}

static void ef_q8_release(ef_run *R)
{
    for (int l = 0; R->hq && l < R->m->n_layers; l++) free(R->hq[l]);
    free(R->hq); free(R->hq_s); free(R->hq_z); free(R->mm); free(R->zero8);
    free(R->cond8); free(R->cond_s); free(R->cond_z);
}

/* Quantize the upsampled conditioning, one scale per row of the fold (inside the parallel region). */
static void ef_quantize_cond(const ef_run *R)
{
    const ef_wf *m = R->m;
    if (!R->cond8) return;
    #pragma omp for schedule(static)
    for (int i = 0; i < m->h; i++) {
        float lo = 0.0f, hi = 0.0f;
        const float *src = R->cond + (size_t)i * R->Wp;
        ef_minmax_rows(src, (size_t)m->h * R->Wp, m->n_mels, R->W, &lo, &hi);
        ef_qparams(lo, hi, &R->cond_s[i], &R->cond_z[i]);
        ef_quant_rows(src, (size_t)m->h * R->Wp, m->n_mels, R->Wp, R->cond_s[i], R->cond_z[i],
                      R->cond8 + (size_t)i * m->Mq * R->Wp * 4, R->Wp);
    }
}

/* Synthesis: audio [B][F*hop] = inverse(z * sigma, mel) for mel [B][n_mels][F], z [B][F*hop].
 * threads <= 0: OpenMP's default. prof (NULL, or EF_NPROF doubles, meaningful with threads == 1) accumulates the
 * CPU seconds of: the layer GEMM (dilated conv + conditioning), the gate, residual + skip, the affine update and
 * start conv, the upsampler, and the INT8 layers' activation quantization. Returns 0, -1 (bad arguments), -2
 * (length not a multiple of h) or -3 (memory). */
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
        scr[t].xq = malloc(((size_t)m->k * m->k * m->Cq + m->Mq) * sizeof(uint8_t *));
        scr[t].qbias = malloc(m->Mab * sizeof(float));
        bad |= !scr[t].a || !scr[t].g || !scr[t].r || !scr[t].gp || !scr[t].xp || !scr[t].xq || !scr[t].qbias;
        for (int c = 0; !bad && c < m->C; c++) scr[t].gp[c] = scr[t].g + (size_t)c * EF_NB;
    }
    ef_run R = {m, W, Wp, (int)RS, hist, mem[1], mem[2], mem[3], mem[4]};
    if (!bad) bad = ef_q8_alloc(&R, nblk);
    if (!bad) {
        size_t off = 0;
        for (int l = 0; l < m->n_layers; l++) {
            hist[l] = mem[0] + off;
            off += (size_t)((m->k - 1) * m->dil_h[l] + 2) * m->C * RS;
        }
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
                if (R.cond8) {
                    if (pr) t0 = ef_now();
                    ef_quantize_cond(&R);
                    if (pr) pr[5] += ef_now() - t0;
                }
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
                            if (m->conv_q[f * m->n_layers + l]) {
                                double tq = pr ? ef_now() : 0;
                                ef_quantize_slot(&R, l, i, tid, nblk, l > 0 || i > 0);
                                if (pr) pr[5] += ef_now() - tq;
                            }
                            ef_make_step(&R, f, i, l, &s, w);
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
        free(scr[t].xq); free(scr[t].qbias);
    }
    ef_q8_release(&R);
    free(scr); free(hist);
    for (int j = 0; j < 6; j++) free(mem[j]);
    return bad ? -3 : 0;
}
