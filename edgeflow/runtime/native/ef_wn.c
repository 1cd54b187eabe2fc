/* edgeflow native kernels: the inverse of a stack of WaveNet affine couplings (VITS's prior flow; WaveGlow's
 * couplings have the same form), float32, the whole flow in one call per chunk.
 *
 * A coupling splits x [C][T] into x0 (the first C/2 channels) and x1; a WaveNet stack on x0 (start 1x1 conv
 * "pre", L layers of dilated kernel-k conv + optional 1x1 conditioning, tanh x sigmoid gate, residual and skip
 * 1x1 convs, end 1x1 conv "post") gives the statistics m (mean-only) or (m, logs), and the inverse update is
 * x1 = (x1 - m) * exp(-logs). The skip convs come with the end conv folded in (W_post W_skip; exact), so one GEMM
 * per layer gives the next layer's residual rows and the layer's contribution to the statistics. Optionally
 * each coupling is followed by a channel flip in the forward direction (VITS's Flip), undone here by reversing
 * the row pointers. The inverse runs the couplings last first; the time axis is cut into blocks of EF_NB frames
 * that threads (OpenMP) share per layer, on zero-padded row buffers (the convs' zero padding at the chunk ends,
 * as the ONNX graph). The GEMM, gate and exp are the WaveFlow engine's (ef_gemm_impl.h), per instruction set.
 * Kernel-5, dilation-1 layers without conditioning can run their dilated conv as Winograd F(4,5)
 * (ef_wn_set_winograd: 8 GEMMs of [2H][H] over tiles of 4 frames instead of one of [2H][5H] over frames, 2.5x
 * fewer multiplies). This file: the variants, weight packing and the C API; ef_wn_run.c: the driver.
 */

#include "ef_wn.h"

#define EF_IMPL "ef_wn_impl.h"
#include "ef_isa_each.h"
#undef EF_IMPL

const ef_wn_fns *ef_wn_for(int isa)
{
#ifdef EF_HAVE_X86
    if (isa == 2) return &ef_wn_table_avx512;
    if (isa == 1) return &ef_wn_table_avx2;
#endif
    (void)isa;
    return &ef_wn_table_generic;
}

EF_API int ef_wn_version(void) { return EF_WN_VERSION; }

static int ef_wn_rows(const ef_wn *m, int l) { return (l < m->n_layers - 1 ? m->H : 0) + m->S; }

EF_API void ef_wn_free(ef_wn *m)
{
    if (!m) return;
    int nl = m->n_flows * m->n_layers;
    float **per_layer[] = {m->in_w, m->in_b, m->rs_w, m->rs_b};
    for (int j = 0; j < 4; j++) {
        for (int i = 0; per_layer[j] && i < nl; i++) free(per_layer[j][i]);
        free(per_layer[j]);
    }
    for (int i = 0; m->wg && i < nl; i++) free(m->wg[i]);
    free(m->wg);
    for (int i = 0; m->in_q && i < nl; i++) ef_q8_free(m->in_q[i]);
    for (int i = 0; m->cond_q && i < nl; i++) ef_q8_free(m->cond_q[i]);
    for (int i = 0; m->rs_q && i < nl; i++) ef_q8_free(m->rs_q[i]);
    free(m->in_q); free(m->cond_q); free(m->rs_q);
    for (int f = 0; m->pre_w && f < m->n_flows; f++) free(m->pre_w[f]);
    for (int f = 0; m->pre_b && f < m->n_flows; f++) free(m->pre_b[f]);
    free(m->pre_w); free(m->pre_b); free(m->dil);
    free(m);
}

/* Pack W [M][K] (row m at w + m * K) into [Mp/MR][K][MR], zero rows past M (as ef_kernels.c's ef_pack). */
static float *ef_wn_pack(const float *w, int M, int K, int Mp)
{
    float *p = calloc((size_t)Mp * K, sizeof(float));
    if (!p) return NULL;
    for (int r = 0; r < M; r++)
        for (int k = 0; k < K; k++)
            p[((size_t)(r / EF_MR) * K + k) * EF_MR + r % EF_MR] = w[(size_t)r * K + k];
    return p;
}

static float *ef_wn_vec(const float **src, int n, int np)
{
    float *p = calloc(np, sizeof(float));
    if (p) memcpy(p, *src, n * sizeof(float));
    *src += n;
    return p;
}

/* Weights of coupling f, layer l from the blob: in conv [2H][H][k] reordered to K index kk * H + c, the
 * conditioning [2H][n_cond] after it, then the bias; the residual + statistics rows [R][H] and their bias. */
static int ef_wn_layer_weights(ef_wn *m, int i, int l, const float **src, float *nat)
{
    const int H = m->H, k = m->k;
    for (int o = 0; o < 2 * H; o++)
        for (int c = 0; c < H; c++)
            for (int kk = 0; kk < k; kk++)
                nat[(size_t)o * m->K + kk * H + c] = (*src)[((size_t)o * H + c) * k + kk];
    *src += (size_t)2 * H * H * k;
    for (int o = 0; o < 2 * H; o++)
        memcpy(nat + (size_t)o * m->K + k * H, *src + (size_t)o * m->n_cond, m->n_cond * sizeof(float));
    *src += (size_t)2 * H * m->n_cond;
    m->in_w[i] = ef_wn_pack(nat, 2 * H, m->K, m->Mab);
    m->in_b[i] = ef_wn_vec(src, 2 * H, m->Mab);
    const int R = ef_wn_rows(m, l), Rp = (R + EF_MR - 1) / EF_MR * EF_MR;
    m->rs_w[i] = ef_wn_pack(*src, R, H, Rp);
    *src += (size_t)R * H;
    m->rs_b[i] = ef_wn_vec(src, R, Rp);
    return m->in_w[i] && m->in_b[i] && m->rs_w[i] && m->rs_b[i];
}

/* cfg: [version, n_flows, n_layers, C, H, k, n_cond, mean_only, flip, dil[L]]; w: per coupling (model order)
 * pre.weight [H][C/2], pre.bias [H], per layer in.weight [2H][H][k], cond.weight [2H][n_cond], in.bias [2H],
 * rs.weight [R][H], rs.bias [R] (R = H residual rows except in the last layer, then S = C/2 (mean-only) or C
 * statistic rows). Returns a handle, or NULL on a bad configuration, a wrong weight count or no memory. */
EF_API ef_wn *ef_wn_create(const int *cfg, int n_cfg, const float *w, long long n_w)
{
    if (n_cfg < 9 || cfg[0] != EF_WN_VERSION) return NULL;
    ef_wn *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->n_flows = cfg[1]; m->n_layers = cfg[2]; m->C = cfg[3]; m->H = cfg[4]; m->k = cfg[5]; m->n_cond = cfg[6];
    m->mean_only = cfg[7] != 0; m->flip = cfg[8] != 0;
    const int F = m->n_flows, L = m->n_layers, H = m->H, k = m->k;
    if (F < 1 || L < 1 || m->C < 2 || m->C % 2 || H < 1 || k < 1 || k % 2 == 0 || m->n_cond < 0 ||
        n_cfg != 9 + L) { ef_wn_free(m); return NULL; }
    m->half = m->C / 2;
    m->S = m->mean_only ? m->half : m->C;
    m->K = k * H + m->n_cond;
    m->Hp = (H + EF_MR - 1) / EF_MR * EF_MR;
    m->Mab = (2 * H + EF_MR - 1) / EF_MR * EF_MR;
    m->dil = malloc(L * sizeof(int));
    if (!m->dil) { ef_wn_free(m); return NULL; }
    long long need = (long long)F * ((long long)H * m->half + H);
    for (int l = 0; l < L; l++) {
        m->dil[l] = cfg[9 + l];
        if (m->dil[l] < 1) { ef_wn_free(m); return NULL; }
        if (m->dil[l] * (k - 1) / 2 > m->pad) m->pad = m->dil[l] * (k - 1) / 2;
        need += (long long)F * (2LL * H * m->K + 2 * H + (long long)ef_wn_rows(m, l) * (H + 1));
    }
    if (n_w != need) { ef_wn_free(m); return NULL; }
    int nl = F * L;
    m->pre_w = calloc(F, sizeof(float *)); m->pre_b = calloc(F, sizeof(float *));
    m->in_w = calloc(nl, sizeof(float *)); m->in_b = calloc(nl, sizeof(float *));
    m->rs_w = calloc(nl, sizeof(float *)); m->rs_b = calloc(nl, sizeof(float *));
    float *nat = malloc((size_t)2 * H * m->K * sizeof(float));
    int ok = nat && m->pre_w && m->pre_b && m->in_w && m->in_b && m->rs_w && m->rs_b;
    const float *src = w;
    for (int f = 0; ok && f < F; f++) {
        m->pre_w[f] = ef_wn_pack(src, H, m->half, m->Hp);
        src += (size_t)H * m->half;
        m->pre_b[f] = ef_wn_vec(&src, H, m->Hp);
        ok = m->pre_w[f] && m->pre_b[f];
        for (int l = 0; ok && l < L; l++) ok = ef_wn_layer_weights(m, f * L + l, l, &src, nat);
    }
    free(nat);
    if (!ok) { ef_wn_free(m); return NULL; }
    return m;
}


/* Run layer l of coupling f's dilated conv as Winograd F(4,5) (kernel 5, dilation 1 only): u [8][2H][H] the
 * transformed weights G g, at [4][8] and bt [8][8] the output and input transforms (every layer uses the same).
 * Returns 0, or -1 when the layer is not kernel 5 / dilation 1, or out of memory. */
EF_API int ef_wn_set_winograd(ef_wn *m, int f, int l, const float *u, const float *at, const float *bt)
{
    if (!m || f < 0 || f >= m->n_flows || l < 0 || l >= m->n_layers || m->k != 5 || m->dil[l] != 1 ||
        m->n_cond) return -1;
    const int i = f * m->n_layers + l, H = m->H;
    if (!m->wg && !(m->wg = calloc((size_t)m->n_flows * m->n_layers, sizeof(float *)))) return -1;
    float *p = malloc((size_t)8 * m->Mab * H * sizeof(float));
    if (!p) return -1;
    for (int q = 0; q < 8; q++) {
        float *one = ef_wn_pack(u + (size_t)q * 2 * H * H, 2 * H, H, m->Mab);
        if (!one) { free(p); return -1; }
        memcpy(p + (size_t)q * m->Mab * H, one, (size_t)m->Mab * H * sizeof(float));
        free(one);
    }
    free(m->wg[i]);
    m->wg[i] = p;
    memcpy(m->wg_at, at, sizeof m->wg_at);
    memcpy(m->wg_bt, bt, sizeof m->wg_bt);
    return 0;
}
