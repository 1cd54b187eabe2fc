/* The text encoder of a VITS voice (Piper's): phoneme embedding, then a post-LN transformer of n_layers x
 * (self-attention with windowed relative keys and values shared by the heads, LayerNorm, a two-conv ReLU FFN,
 * LayerNorm), for one unpadded sequence. Its output feeds the voice's projection and duration model (the rest of
 * model.onnx, run by onnxruntime).
 *
 * The convs (q / k / v as one of 3 H rows, o, and the FFN's two k-tap convs) run on the INT8 tiles of the
 * waveform stage (ef_hq_conv): s8 weights per output channel, u8 activations with one scale per tile of
 * EF_HQ_TW tokens (the FFN's ReLU is its leaky ReLU of slope 0; slope 1 is no activation). Attention, softmax and
 * LayerNorm stay float. A conv's output rows are split between the threads; attention is split by head.
 *
 * Reference: edgeflow/models/vits/text_encoder.py (RelativeMultiHeadAttention, FFN, Encoder).
 */

#include "ef_enc.h"
#include <math.h>

EF_API void ef_enc_free(ef_enc *e)
{
    if (!e) return;
    for (int l = 0; e->layers && l < e->n_layers; l++) {
        ef_enc_layer *y = &e->layers[l];
        for (int i = 0; i < EF_ENC_NCONV; i++) { ef_q8_free(y->conv[i].q); free(y->conv[i].bias); }
        free(y->rel_k); free(y->rel_v);
        for (int i = 0; i < 4; i++) free(y->ln[i]);
    }
    free(e->layers); free(e->emb); free(e);
}

/* An encoder of hidden size H, FFN width F, `heads` heads, n_layers layers, FFN kernel k (odd), relative window
 * `window`, embedding emb [n_vocab][H] (already times sqrt(H)), LayerNorm eps. NULL: bad arguments or memory. */
EF_API ef_enc *ef_enc_create(int H, int F, int heads, int n_layers, int k, int window, int n_vocab, const float *emb,
                             float eps)
{
    if (H < 4 || F < 4 || heads < 1 || H % heads || n_layers < 1 || k < 1 || k % 2 == 0 || window < 0 ||
        n_vocab < 1 || !emb || !(eps > 0.0f))
        return NULL;
    ef_enc *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    *e = (ef_enc){.H = H, .F = F, .heads = heads, .n_layers = n_layers, .k = k, .window = window,
                  .n_vocab = n_vocab, .eps = eps};
    e->emb = malloc((size_t)n_vocab * H * sizeof(float));
    e->layers = calloc(n_layers, sizeof(ef_enc_layer));
    if (!e->emb || !e->layers) { ef_enc_free(e); return NULL; }
    memcpy(e->emb, emb, (size_t)n_vocab * H * sizeof(float));
    const int dims[EF_ENC_NCONV][3] = {{H, 3 * H, 1}, {H, H, 1}, {H, F, k}, {F, H, k}};   /* cin, cout, taps */
    for (int l = 0; l < n_layers; l++)
        for (int i = 0; i < EF_ENC_NCONV; i++)
            e->layers[l].conv[i] = (ef_hqconv){.cin = dims[i][0], .cout = dims[i][1], .k = dims[i][2], .d = 1,
                                               .planes = 1};
    return e;
}

/* Layer l's conv `which` (0: q, k, v stacked [3 H][H][1]; 1: o [H][H][1]; 2: FFN conv 1 [F][H][k]; 3: FFN conv 2
 * [H][F][k]): s8 weights q, per-output-channel scales, bias. 0, or -1. */
EF_API int ef_enc_set_conv(ef_enc *e, int l, int which, const int8_t *q, const float *scale, const float *bias)
{
    if (!e || l < 0 || l >= e->n_layers || which < 0 || which >= EF_ENC_NCONV || !q || !scale || !bias) return -1;
    ef_hqconv *c = &e->layers[l].conv[which];
    for (int o = 0; o < c->cout; o++)
        if (!(scale[o] >= 0.0f) || scale[o] > 1e30f) return -1;
    ef_q8 *p = ef_q8_pack_conv(c->cout, (c->cout + EF_MR - 1) / EF_MR * EF_MR, c->cin, c->k, q, scale);
    float *b = malloc(c->cout * sizeof(float));
    if (!p || !b) { ef_q8_free(p); free(b); return -1; }
    memcpy(b, bias, c->cout * sizeof(float));
    ef_q8_free(c->q); free(c->bias);
    c->q = p; c->bias = b;
    return 0;
}

/* Layer l's float parts: rel_k, rel_v [2 window + 1][H / heads], LayerNorm ln [4][H] (gamma 1, beta 1, gamma 2,
 * beta 2). 0, or -1. */
EF_API int ef_enc_set_float(ef_enc *e, int l, const float *rel_k, const float *rel_v, const float *ln)
{
    if (!e || l < 0 || l >= e->n_layers || !rel_k || !rel_v || !ln) return -1;
    ef_enc_layer *y = &e->layers[l];
    const size_t nr = (size_t)(2 * e->window + 1) * (e->H / e->heads);
    if (!y->rel_k) y->rel_k = malloc(nr * sizeof(float));
    if (!y->rel_v) y->rel_v = malloc(nr * sizeof(float));
    for (int i = 0; i < 4; i++) if (!y->ln[i]) y->ln[i] = malloc(e->H * sizeof(float));
    if (!y->rel_k || !y->rel_v || !y->ln[0] || !y->ln[1] || !y->ln[2] || !y->ln[3]) return -1;
    memcpy(y->rel_k, rel_k, nr * sizeof(float));
    memcpy(y->rel_v, rel_v, nr * sizeof(float));
    for (int i = 0; i < 4; i++) memcpy(y->ln[i], ln + (size_t)i * e->H, e->H * sizeof(float));
    return 0;
}

/* One conv over all T columns, out = (res ? res : 0) + bias + conv(lrelu(in, slope)), its output rows split
 * between the threads (each with its own scratch ws[thread]). */
static void ef_enc_conv(const ef_hqconv *c, float slope, const float *in, const float *res, float *out, int T,
                        ef_hq_ws *ws, int nt, ef_qtile_fn tile)
{
    const int nb = (c->cout + EF_MR - 1) / EF_MR;
    const size_t S = ws[0].S, nq = c->q->nq;
    #pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        const int b0 = nb * t / nt, b1 = nb * (t + 1) / nt, r0 = b0 * EF_MR;
        if (b1 <= b0) continue;
        ef_q8 q = *c->q;
        q.w += (size_t)r0 * nq * 4; q.wsum += r0; q.scale += r0;
        ef_hqconv v = *c;
        v.q = &q; v.bias = c->bias + r0; v.qr = NULL;
        v.cout = (b1 * EF_MR < c->cout ? b1 * EF_MR : c->cout) - r0;
        q.amx = ef_amx_from_row(c->q, c->k, r0);                            /* NULL: the tiles */
        ef_hq_conv(&v, slope, in, NULL, res ? res + r0 * S : NULL, out + r0 * S, NULL, T, 0, T, &ws[t], tile);
    }
}

/* x [H][S] (first T columns) = LayerNorm over the channels of x, per column. */
EF_HQ_CLONES static void ef_enc_layernorm(float *x, size_t S, int H, int T, const float *g, const float *b, float eps,
                             float *mean, float *var)
{
    for (int t = 0; t < T; t++) mean[t] = var[t] = 0.0f;
    for (int c = 0; c < H; c++) {
        const float *restrict r = x + (size_t)c * S;
        for (int t = 0; t < T; t++) mean[t] += r[t];
    }
    for (int t = 0; t < T; t++) mean[t] /= (float)H;
    for (int c = 0; c < H; c++) {
        const float *restrict r = x + (size_t)c * S;
        for (int t = 0; t < T; t++) { const float d = r[t] - mean[t]; var[t] += d * d; }
    }
    for (int t = 0; t < T; t++) var[t] = 1.0f / sqrtf(var[t] / (float)H + eps);
    for (int c = 0; c < H; c++) {
        float *restrict r = x + (size_t)c * S;
        for (int t = 0; t < T; t++) r[t] = (r[t] - mean[t]) * var[t] * g[c] + b[c];
    }
}

static void ef_enc_ws_free(ef_hq_ws *ws, int nt)
{
    for (int t = 0; ws && t < nt; t++) { free(ws[t].mm); free(ws[t].buf); free((void *)ws[t].xq); }
    free(ws);
}

static ef_hq_ws *ef_enc_ws(const ef_enc *e, size_t S, int nt)
{
    ef_hq_ws *ws = calloc(nt, sizeof *ws);
    const int cq = ((e->F > e->H ? e->F : e->H) + 3) / 4, R = (e->k - 1) / 2;
    const size_t qbytes = (size_t)cq * (EF_HQ_TW + 2 * R + 16) * 4 + 64;
    for (int t = 0; ws && t < nt; t++) {
        ws[t].S = S;
        ws[t].amx = ef_amx_on();
        ws[t].mm = malloc((S / EF_NB + 1) * 2 * sizeof(float));
        ws[t].buf = malloc(2 * qbytes);
        ws[t].buf2 = ws[t].buf ? ws[t].buf + qbytes : NULL;
        ws[t].xq = malloc(2 * (size_t)cq * e->k * sizeof *ws[t].xq);
        ws[t].xq2 = ws[t].xq ? ws[t].xq + (size_t)cq * e->k : NULL;
        if (!ws[t].mm || !ws[t].buf || !ws[t].xq) { ef_enc_ws_free(ws, nt); return NULL; }
    }
    return ws;
}

/* The encoder on phoneme ids [T]: out [H][T]. nthreads <= 0: OpenMP's default. 0, -1 (bad arguments, an id out of
 * range, weights not set) or -3 (memory). */
EF_API int ef_enc_run(const ef_enc *e, const int64_t *ids, int T, float *out, int nthreads)
{
    if (!e || !ids || !out || T < 1 || T > 1 << 16) return -1;
    for (int t = 0; t < T; t++) if (ids[t] < 0 || ids[t] >= e->n_vocab) return -1;
    for (int l = 0; l < e->n_layers; l++) {
        if (!e->layers[l].rel_k) return -1;
        for (int i = 0; i < EF_ENC_NCONV; i++) if (!e->layers[l].conv[i].q) return -1;
    }
#ifdef _OPENMP
    int nt = nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    int nt = 1;
    (void)nthreads;
#endif
    const int H = e->H, Hp = (H + EF_MR - 1) / EF_MR * EF_MR;          /* planes: whole row tiles */
    const int rows = ((3 * H > e->F ? 3 * H : e->F) + EF_MR - 1) / EF_MR * EF_MR;
    const size_t S = (size_t)(T + EF_HQ_TW + EF_NB) / EF_NB * EF_NB + 64;
    const size_t nsc = ef_enc_scratch(e, T);                            /* per head */
    float *x = calloc((size_t)(2 * Hp + 2 * rows) * S + e->heads * nsc + 2 * (size_t)T, sizeof(float));
    ef_hq_ws *ws = ef_enc_ws(e, S, nt);
    if (!x || !ws) { free(x); ef_enc_ws_free(ws, nt); return -3; }
    float *y1 = x + (size_t)Hp * S, *big = y1 + (size_t)Hp * S, *att = big + (size_t)rows * S;
    float *sc = att + (size_t)rows * S, *mean = sc + e->heads * nsc, *var = mean + T;
    const ef_qtile_fn tile = ef_qtile_for(ef_get_isa());
    for (int t = 0; t < T; t++)
        for (int c = 0; c < H; c++) x[(size_t)c * S + t] = e->emb[(size_t)ids[t] * H + c];
    for (int l = 0; l < e->n_layers; l++) {
        const ef_enc_layer *y = &e->layers[l];
        ef_enc_conv(&y->conv[EF_ENC_QKV], 1.0f, x, NULL, big, T, ws, nt, tile);
        #pragma omp parallel for num_threads(nt < e->heads ? nt : e->heads)
        for (int h = 0; h < e->heads; h++) ef_enc_head(e, y, h, big, S, T, att, sc + h * nsc);
        ef_enc_conv(&y->conv[EF_ENC_O], 1.0f, att, x, y1, T, ws, nt, tile);
        ef_enc_layernorm(y1, S, H, T, y->ln[0], y->ln[1], e->eps, mean, var);
        ef_enc_conv(&y->conv[EF_ENC_FFN1], 1.0f, y1, NULL, big, T, ws, nt, tile);
        ef_enc_conv(&y->conv[EF_ENC_FFN2], 0.0f, big, y1, x, T, ws, nt, tile);
        ef_enc_layernorm(x, S, H, T, y->ln[2], y->ln[3], e->eps, mean, var);
    }
    for (int c = 0; c < H; c++) memcpy(out + (size_t)c * T, x + (size_t)c * S, T * sizeof(float));
    free(x);
    ef_enc_ws_free(ws, nt);
    return 0;
}
