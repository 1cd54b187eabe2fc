/* The driver of the WaveNet-coupling engine: buffers, the couplings' inverse over time blocks (threads share the
 * blocks of each stage; OpenMP), the flips. See ef_wn.c. */

#include "ef_wn.h"

typedef struct {                        /* the buffers of one run */
    float *x, *hid[2], *cond, *st;
    float **xr;                         /* row pointers of x (flips reverse them) */
    float *V, *a_full;                  /* Winograd: transformed inputs [8][H][NTp], pre-activations [nblk][Mab][NB] */
    int nblk, RS, SS, T, ntiles, NTp;
    ef_wn_q8run q8;                     /* INT8 layers' state */
} ef_wn_bufs;

static void ef_wn_bufs_free(ef_wn_bufs *b)
{
    free(b->x); free(b->hid[0]); free(b->hid[1]); free(b->cond); free(b->st); free(b->xr); free(b->V);
    free(b->a_full);
    ef_wn_q8_free(&b->q8);
}

static int ef_wn_bufs_make(const ef_wn *m, const float *x, const float *cond, int T, ef_wn_bufs *b)
{
    memset(b, 0, sizeof *b);
    b->T = T;
    b->nblk = (T + EF_NB - 1) / EF_NB;
    b->SS = b->nblk * EF_NB;
    b->RS = b->SS + 2 * m->pad + 8;     /* + 8: a Winograd tile reads up to 5 frames past its 4 */
    b->ntiles = (T + 3) / 4;
    b->NTp = (b->ntiles + EF_NB - 1) / EF_NB * EF_NB;
    if (m->wg) {
        b->V = calloc((size_t)8 * m->H * b->NTp, sizeof(float));
        b->a_full = malloc((size_t)b->nblk * m->Mab * EF_NB * sizeof(float));
        if (!b->V || !b->a_full) return -3;
    }
    b->x = malloc((size_t)m->C * b->SS * sizeof(float));
    b->hid[0] = calloc((size_t)m->H * b->RS, sizeof(float));
    b->hid[1] = calloc((size_t)m->H * b->RS, sizeof(float));
    b->cond = m->n_cond ? calloc((size_t)m->n_cond * b->RS, sizeof(float)) : NULL;
    b->st = malloc((size_t)m->S * b->SS * sizeof(float));
    b->xr = malloc(m->C * sizeof(float *));
    if (!b->x || !b->hid[0] || !b->hid[1] || (m->n_cond && !b->cond) || !b->st || !b->xr) return -3;
    for (int c = 0; c < m->C; c++) {
        b->xr[c] = b->x + (size_t)c * b->SS;
        memcpy(b->xr[c], x + (size_t)c * T, T * sizeof(float));
        memset(b->xr[c] + T, 0, (b->SS - T) * sizeof(float));
    }
    for (int c = 0; c < m->n_cond; c++) memcpy(b->cond + (size_t)c * b->RS + m->pad, cond + (size_t)c * T,
                                              T * sizeof(float));
    return ef_wn_q8_make(m, b->cond, b->RS, b->nblk, &b->q8);
}

/* Layer i's dilated conv by Winograd F(4,5) into b->a_full: the input transform (threads split the channels),
 * then the GEMMs and output transform (threads split (tile block, row panel) jobs). */
static void ef_wn_winograd(const ef_wn *m, const ef_wn_fns *fn, int i, const float *hc, ef_wn_bufs *b,
                           ef_wn_scratch *w)
{
    #pragma omp for schedule(static)
    for (int c = 0; c < m->H; c++)
        fn->wg_in(m, c, hc + (size_t)c * b->RS, b->ntiles, b->NTp, b->V, w->ph);
    const int npan = (m->Mab + EF_WN_PANEL - 1) / EF_WN_PANEL, njob = b->NTp / EF_NB * npan;
    #pragma omp for schedule(dynamic, 1)
    for (int job = 0; job < njob; job++) {
        const int tb = job / npan, mt = job % npan * EF_WN_PANEL;
        const int np = m->Mab - mt < EF_WN_PANEL ? m->Mab - mt : EF_WN_PANEL;
        fn->wg_gemm(m, i, tb, mt, np, b->V, b->NTp, b->T, b->a_full, w);
    }
}

/* Coupling f's inverse on all blocks (called by every thread of the parallel region). */
static void ef_wn_coupling(const ef_wn *m, const ef_wn_fns *fn, int f, ef_wn_bufs *b, ef_wn_scratch *w)
{
    const int H = m->H, k = m->k, T = b->T;
    #pragma omp for schedule(static)
    for (int j = 0; j < b->nblk; j++)
        fn->pre(m, f, (const float *const *)b->xr, j * EF_NB, T - j * EF_NB < EF_NB ? T - j * EF_NB : EF_NB,
                b->hid[0], b->RS, w);
    for (int l = 0; l < m->n_layers; l++) {
        const float *hc = b->hid[l % 2];
        const int i = f * m->n_layers + l, wg = m->wg && m->wg[i];
        if (ef_wn_q8_on(m, i)) {
            ef_wn_q8_prepare(m, i, l, hc, b->RS, b->nblk, T, &b->q8);
            #pragma omp for schedule(static)
            for (int j = 0; j < b->nblk; j++) {
                ef_wn_q8_block(m, i, &b->q8, j * EF_NB, w->a);
                fn->layer(m, f, l, NULL, j * EF_NB, T - j * EF_NB < EF_NB ? T - j * EF_NB : EF_NB, hc,
                          b->hid[(l + 1) % 2], b->st, b->RS, b->SS, w->a, w);
            }
            continue;
        }
        if (wg) {
            ef_wn_winograd(m, fn, i, hc, b, w);
            #pragma omp for schedule(static)
            for (int j = 0; j < b->nblk; j++)
                fn->layer(m, f, l, NULL, j * EF_NB, T - j * EF_NB < EF_NB ? T - j * EF_NB : EF_NB, hc,
                          b->hid[(l + 1) % 2], b->st, b->RS, b->SS, b->a_full + (size_t)j * m->Mab * EF_NB, w);
            continue;
        }
        for (int kk = 0; kk < k; kk++)
            for (int c = 0; c < H; c++)
                w->xp[kk * H + c] = hc + (size_t)c * b->RS + m->pad + (kk - (k - 1) / 2) * m->dil[l];
        for (int c = 0; c < m->n_cond; c++) w->xp[k * H + c] = b->cond + (size_t)c * b->RS + m->pad;
        #pragma omp for schedule(static)
        for (int j = 0; j < b->nblk; j++)
            fn->layer(m, f, l, w->xp, j * EF_NB, T - j * EF_NB < EF_NB ? T - j * EF_NB : EF_NB, hc,
                      b->hid[(l + 1) % 2], b->st, b->RS, b->SS, NULL, w);
    }
    #pragma omp for schedule(static)
    for (int j = 0; j < b->nblk; j++)
        fn->update(m, b->xr + m->half, b->st, b->SS, j * EF_NB, T - j * EF_NB < EF_NB ? T - j * EF_NB : EF_NB);
}

/* A thread's buffers for the INT8 res / skip convs: the quantized gate output (columns past a short block's end
 * are computed and dropped: calloc keeps them defined). -3 out of memory. */
static int ef_wn_rs_scratch(const ef_wn *m, ef_wn_scratch *w)
{
    const int hq = (m->H + 3) / 4;
    w->gq = calloc((size_t)hq * EF_NB * 4, 1);
    w->gxq = malloc(hq * sizeof *w->gxq);
    if (!w->gq || !w->gxq) return -3;
    for (int c = 0; c < hq; c++) w->gxq[c] = w->gq + (size_t)c * EF_NB * 4;
    w->tile = ef_qtile_for(ef_get_isa());
    return 0;
}

/* out [C][T] = the flow's inverse of x [C][T] (cond [n_cond][T], or NULL when n_cond is 0), threads (0: OpenMP's
 * default). Returns 0, -1 on bad arguments, -3 out of memory. Reads the weights only: calls may run concurrently. */
EF_API int ef_wn_run(const ef_wn *m, const float *x, int T, const float *cond, float *out, int threads)
{
    if (!m || !x || !out || T < 1 || (m->n_cond && !cond)) return -1;
    ef_wn_bufs b;
    int nt = 1, rc = ef_wn_bufs_make(m, x, cond, T, &b);
#ifdef _OPENMP
    nt = threads > 0 ? threads : omp_get_max_threads();
#endif
    (void)threads;
    if (nt > b.nblk) nt = b.nblk;
    ef_wn_scratch *scr = calloc(nt, sizeof *scr);
    size_t rmax = (size_t)(m->H + m->S + EF_MR) * EF_NB;
    for (int t = 0; rc == 0 && scr && t < nt; t++) {
        scr[t].a = malloc((size_t)m->Mab * EF_NB * sizeof(float));
        scr[t].g = malloc((size_t)m->H * EF_NB * sizeof(float));
        scr[t].r = malloc(rmax * sizeof(float));
        scr[t].gp = malloc(m->H * sizeof(float *));
        scr[t].xp = malloc(m->K * sizeof(float *));
        scr[t].y = malloc((size_t)8 * EF_WN_PANEL * EF_NB * sizeof(float));
        scr[t].ph = malloc((size_t)4 * (b.NTp + 1) * sizeof(float));
        scr[t].zero = calloc(EF_WN_PANEL, sizeof(float));
        if (!scr[t].a || !scr[t].g || !scr[t].r || !scr[t].gp || !scr[t].xp || !scr[t].y || !scr[t].ph ||
            !scr[t].zero || (m->rs_q && ef_wn_rs_scratch(m, &scr[t]))) rc = -3;
        for (int c = 0; rc == 0 && c < m->H; c++) scr[t].gp[c] = scr[t].g + (size_t)c * EF_NB;
    }
    if (!scr) rc = -3;
    if (rc == 0) {
        const ef_wn_fns *fn = ef_wn_for(ef_get_isa());
        #pragma omp parallel num_threads(nt)
        {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            for (int f = m->n_flows - 1; f >= 0; f--) {
                if (m->flip) {                /* the previous coupling's omp for ended with a barrier */
                    #pragma omp single
                    for (int c = 0; c < m->half; c++) {
                        float *t = b.xr[c]; b.xr[c] = b.xr[m->C - 1 - c]; b.xr[m->C - 1 - c] = t;
                    }
                }
                ef_wn_coupling(m, fn, f, &b, &scr[tid]);
            }
        }
        for (int c = 0; c < m->C; c++) memcpy(out + (size_t)c * T, b.xr[c], T * sizeof(float));
    }
    for (int t = 0; scr && t < nt; t++) {
        free(scr[t].a); free(scr[t].g); free(scr[t].r); free(scr[t].gp); free(scr[t].xp);
        free(scr[t].y); free(scr[t].ph); free(scr[t].zero); free(scr[t].gq); free(scr[t].gxq);
    }
    free(scr);
    ef_wn_bufs_free(&b);
    return rc;
}
