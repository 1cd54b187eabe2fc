/* The waveform-stage kernel's driver (ef_hq8.c has the stage and its convs): the stage's output columns in chunks
 * over the threads, each chunk's resblocks (ef_hq_conv), their mean, and conv_post with tanh where the stage has it. */

#include "ef_hq.h"
/* dst[t] = src[t] * f for t < n. */
EF_HQ_CLONES static void ef_hq_scale_cols(float *restrict dst, const float *restrict src, float f, int n)
{
    for (int t = 0; t < n; t++) dst[t] = src[t] * f;
}

/* dst[t] += src[t] for t < n. */
EF_HQ_CLONES static void ef_hq_add(float *restrict dst, const float *restrict src, int n)
{
    for (int t = 0; t < n; t++) dst[t] += src[t];
}

/* tanh(x) as a rational function (Eigen's float tanh: max error 4e-7 on [-9, 9]), so that the loop vectorizes. */
static inline float ef_tanh(float x)
{
    const float c = 7.90531110763549805f;
    x = x > c ? c : x < -c ? -c : x;
    const float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f; p = p * x2 - 8.60467152213735e-11f; p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f; p = p * x2 + 6.37261928875436e-04f; p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f; q = q * x2 + 2.26843463243900e-03f; q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}

/* Local columns [t0, t0 + n) (n <= 256) of the stage's output into out[t0 ..]: tanh(post_b + conv_post(lrelu(acc *
 * inv, post_slope))), acc's columns outside [va, vb) read as 0 (rows of stride S). */
EF_HQ_CLONES static void ef_hq_post_cols(const ef_hq *m, const float *acc, size_t S, float inv, int va, int vb,
                                         int t0, int n, float *out)
{
    const int C = m->C, kp = m->kp, P = (kp - 1) / 2, nv = n + 2 * P, a = t0 - P;
    const int lo = va - a > 0 ? va - a : 0, hi = vb - a < nv ? vb - a : nv;
    const float ps = m->post_slope;
    float y[256], v[256 + 64];
    for (int t = 0; t < n; t++) y[t] = m->post_b;
    for (int c = 0; c < C; c++) {
        const float *restrict r = acc + (size_t)c * S + a, *restrict w = m->post_w + (size_t)c * kp;
        for (int u = 0; u < nv; u++) v[u] = 0.0f;
        for (int u = lo; u < hi; u++) {                          /* v[u] = lrelu(acc[a + u] * inv), 0 outside */
            const float x = r[u] * inv;
            v[u] = x < 0.0f ? x * ps : x;
        }
        for (int j = 0; j < kp; j++) {
            const float wj = w[j], *restrict vj = v + j;
            for (int t = 0; t < n; t++) y[t] += wj * vj[t];
        }
    }
    for (int t = 0; t < n; t++) out[t0 + t] = ef_tanh(y[t]);
}

/* Output columns [c0, c1) of the stage: its input window [c0 - H, c1 + H) of x (H: the blocks' receptive half
 * width and conv_post's), every conv on the whole window, the central columns kept. With an upsampler, x is its
 * input [cin][T / u]. */
static void ef_hq_chunk(const ef_hq *m, const float *x, int T, int c0, int c1, int H, float *audio, ef_hq_ws *w,
                        ef_qtile_fn tile)
{
    const int g0 = c0 - H, L = c1 - c0 + 2 * H, va = g0 < 0 ? -g0 : 0, vb = T - g0 < L ? T - g0 : L;
    const size_t S = w->S;
    float *xin = w->pl[0], *acc = NULL;
    if (m->up) ef_hq_up_chunk(m, x, T / m->u, g0, L, xin, w, tile);
    else
        for (int c = 0; c < m->C; c++) {
            float *row = xin + (size_t)c * S;
            memset(row, 0, S * sizeof(float));
            memcpy(row + va, x + (size_t)c * T + g0 + va, (size_t)(vb - va) * sizeof(float));
        }
    ef_hq_block_minmax(xin, S, m->C, va, vb, w->mmx);                   /* once: every resblock reads xin */
    for (int b = 0; b < m->n_blocks; b++) {
        float *work[2], *cur = xin;
        const float *mm = w->mmx;
        for (int i = 1, k = 0; i < 4; i++) if (w->pl[i] != acc && k < 2) work[k++] = w->pl[i];
        for (int i = m->first[b]; i < m->first[b + 1]; i++) {
            const ef_hqconv *c = &m->convs[i];
            float *next = cur == work[0] ? work[1] : work[0], *mo = i + 1 < m->first[b + 1] ? w->mmo[i % 2] : NULL;
            if (c->mode == 1) ef_hq_conv(c, m->slope, cur, mm, NULL, w->tb, mo, L, va, vb, w, tile);
            else {
                ef_hq_conv(c, m->slope, c->mode == 2 ? w->tb : cur, mm, cur, next, mo, L, va, vb, w, tile);
                cur = next;
            }
            mm = mo;
        }
        if (!acc) { acc = cur; continue; }
        for (int c = 0; c < m->C; c++) ef_hq_add(acc + (size_t)c * S, cur + (size_t)c * S, L);
    }
    if (!m->kp) {                                                       /* no conv_post: the mean, [C][T] */
        for (int c = 0; c < m->C; c++) ef_hq_scale_cols(audio + (size_t)c * T + c0, acc + (size_t)c * S + H,
                                                        1.0f / (float)m->n_blocks, c1 - c0);
        return;
    }
    for (int t = H; t < H + c1 - c0; t += 256)
        ef_hq_post_cols(m, acc, S, 1.0f / (float)m->n_blocks, va, vb, t, H + c1 - c0 - t < 256 ? H + c1 - c0 - t :
                        256, audio + (c0 - H));
}

/* The stage on x [C][T] (the last upsampler's output): audio [T] = tanh(conv_post(lrelu(mean of the resblocks,
 * post_slope)) + post_b), or without conv_post (kp 0) the mean itself into audio [C][T], in chunks of about
 * EF_HQ_CHUNK columns (ef_hq_chunk_len; each thread one chunk at a time, its planes in its L2 cache). With an
 * upsampler (ef_hq_set_up), x is its input [cin][T] and the audio has u T samples.
 * nthreads <= 0: OpenMP's default. Returns 0, -1 (bad arguments, weights not set) or -3 (memory). */
EF_API int ef_hq_run(const ef_hq *m, const float *x, int Tin, float *audio, int nthreads)
{
    if (!m || !x || !audio || Tin < 1 || m->kp > 65 || (m->up && Tin > INT32_MAX / m->u)) return -1;
    const int T = m->up ? Tin * m->u : Tin;
    int cmax = m->C, H = 0;
    for (int b = 0; b < m->n_blocks; b++) {
        int h = 0;
        for (int i = m->first[b]; i < m->first[b + 1]; i++) h += (m->convs[i].k - 1) / 2 * m->convs[i].d;
        H = h > H ? h : H;
    }
    H += m->kp ? (m->kp - 1) / 2 : 0;
    for (int i = 0; i < m->n_convs; i++) {
        if (!m->convs[i].q) return -1;
        cmax = m->convs[i].cout > cmax ? m->convs[i].cout : cmax;
        cmax = m->convs[i].cin > cmax ? m->convs[i].cin : cmax;
    }
#ifdef _OPENMP
    const int nt = nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    const int nt = 1;
    (void)nthreads; (void)nt;
#endif
    const int chunk = ef_hq_chunk_len(T, H), nchunk = (T + chunk - 1) / chunk;
    const int Ru = m->up ? (m->up->k - 1) / 2 : 0, Rmax = H > Ru ? H : Ru;
    const int Lmax = chunk + 2 * H, rows = (cmax + EF_MR - 1) / EF_MR * EF_MR;
    const size_t S = (size_t)(Lmax + EF_HQ_TW) / EF_NB * EF_NB + 64, plane = (size_t)rows * S;
    const size_t Sl = m->up ? (size_t)(Lmax / m->u + 2 + 2 * Ru + EF_HQ_TW) / EF_NB * EF_NB + 64 : 0;
    const size_t lbytes = m->up ? ((size_t)m->up->cin + (m->up->cout + EF_MR - 1) / EF_MR * EF_MR) * Sl : 0;
    int cqmax = 0, nqmax = 0, fail = 0;
    for (int i = -1; i < m->n_convs; i++) {
        const ef_hqconv *c = i < 0 ? m->up : &m->convs[i];
        if (!c) continue;
        if (!c->q) return -1;
        const int cq = (c->cin + 3) / 4;
        cqmax = cq > cqmax ? cq : cqmax;
        nqmax = cq * c->k > nqmax ? cq * c->k : nqmax;
    }
    ef_qtile_fn tile = ef_qtile_for(ef_get_isa());
    #pragma omp parallel num_threads(nt < nchunk ? nt : nchunk) reduction(|:fail)
    {
        ef_hq_ws w = {.S = S, .Sl = Sl, .amx = ef_amx_on()};
        const size_t nmm = (S / EF_NB + 1) * 2;                         /* one block range array */
        float *mem = malloc((5 * plane + 4 * nmm + lbytes) * sizeof(float));
        const size_t qbytes = (size_t)cqmax * (EF_HQ_TW + 2 * Rmax + 16) * 4 + 64;
        w.buf = malloc(2 * qbytes);
        w.buf2 = w.buf ? w.buf + qbytes : NULL;
        w.xq = malloc(2 * nqmax * sizeof *w.xq);
        w.xq2 = w.xq ? w.xq + nqmax : NULL;
        if (!mem || !w.buf || !w.xq) fail = 1;
        else {
            for (int i = 0; i < 4; i++) w.pl[i] = mem + i * plane;
            w.tb = mem + 4 * plane; w.mm = mem + 5 * plane;
            w.mmx = w.mm + nmm; w.mmo[0] = w.mm + 2 * nmm; w.mmo[1] = w.mm + 3 * nmm;
            w.lin = m->up ? w.mm + 4 * nmm : NULL;
            w.lout = m->up ? w.lin + (size_t)m->up->cin * Sl : NULL;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int ci = 0; ci < nchunk; ci++)
            if (!fail) ef_hq_chunk(m, x, T, ci * chunk, (ci + 1) * chunk < T ? (ci + 1) * chunk : T, H, audio, &w,
                                   tile);
        free(mem); free(w.buf); free((void *)w.xq);
    }
    return fail ? -3 : 0;
}
