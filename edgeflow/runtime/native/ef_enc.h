/* The text-encoder kernel's shared definitions (ef_enc.c: weights, convs, LayerNorm, the run; ef_enc_att.c: the
 * attention of one head). */

#ifndef EF_ENC_H
#define EF_ENC_H

#include "ef_hq.h"

enum { EF_ENC_QKV, EF_ENC_O, EF_ENC_FFN1, EF_ENC_FFN2, EF_ENC_NCONV };

typedef struct {
    ef_hqconv conv[EF_ENC_NCONV];
    float *rel_k, *rel_v;            /* [2 window + 1][dk] */
    float *ln[4];                    /* gamma 1, beta 1, gamma 2, beta 2: [H] */
} ef_enc_layer;

typedef struct {
    int H, F, heads, n_layers, k, window, n_vocab;
    float eps;
    float *emb;                      /* [n_vocab][H], times sqrt(H) */
    ef_enc_layer *layers;
} ef_enc;

/* Floats of one head's attention scratch for T tokens (ef_enc_att.c). */
size_t ef_enc_scratch(const ef_enc *e, int T);

/* Head h's attention: qkv [3 H][S] rows (q, k, v; k rows readable to column T rounded up to 64), out rows
 * [h dk, (h + 1) dk) of att [H][S]; sc: ef_enc_scratch floats (ef_enc_att.c). */
void ef_enc_head(const ef_enc *e, const ef_enc_layer *y, int h, const float *qkv, size_t S, int T, float *att,
                 float *sc);

#endif
