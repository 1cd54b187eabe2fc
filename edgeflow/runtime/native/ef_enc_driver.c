/* A command-line driver of the text-encoder kernel (ef_enc.c), for running it where Python is not (an aarch64 build
 * under qemu-user in tests/test_native_cross.py). Link it with ef_enc.c, ef_enc_att.c and the waveform stage's
 * sources (ef_hq8.c, ef_hq_up.c, ef_int8.c, ef_kernels.c, ef_run.c, ef_wn.c, ef_wn_run.c, ef_wn_q8.c):
 *
 *     ef_enc_driver IN OUT [ISA]
 *
 * IN (little-endian): int32 H, F, heads, layers, k, window, n_vocab; float32 eps, emb[n_vocab * H]; per layer, per
 * conv (q / k / v stacked, o, FFN 1, FFN 2; text_encoder.pack_text_encoder's shapes): int8 q[cout * cin * taps],
 * float32 scale[cout], bias[cout]; then float32 rel_k[(2 window + 1) * H / heads], rel_v[same], ln[4 * H]; int32 T;
 * int64 ids[T]. OUT: float32 [H * T]. ISA: 0 portable (the default), 1 AVX2, 2 AVX-512. Exit status 0, or 1 with a
 * message on stderr.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ef_enc ef_enc;
ef_enc *ef_enc_create(int H, int F, int heads, int n_layers, int k, int window, int n_vocab, const float *emb,
                      float eps);
int ef_enc_set_conv(ef_enc *e, int l, int which, const int8_t *q, const float *scale, const float *bias);
int ef_enc_set_float(ef_enc *e, int l, const float *rel_k, const float *rel_v, const float *ln);
int ef_enc_run(const ef_enc *e, const int64_t *ids, int T, float *out, int nthreads);
void ef_enc_free(ef_enc *e);
int ef_set_isa(int isa);

static void *readn(FILE *f, size_t size, size_t n)
{
    void *p = malloc(size * (n ? n : 1));
    if (!p || fread(p, size, n, f) != n) { fprintf(stderr, "ef_enc_driver: short input\n"); exit(1); }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: ef_enc_driver IN OUT [ISA]\n"); return 1; }
    if (ef_set_isa(argc > 3 ? atoi(argv[3]) : 0) != 0) {
        fprintf(stderr, "ef_enc_driver: ISA not available\n");
        return 1;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { fprintf(stderr, "ef_enc_driver: cannot open %s\n", argv[1]); return 1; }
    int32_t *c = readn(f, 4, 7);
    const int H = c[0], F = c[1], heads = c[2], L = c[3], k = c[4], w = c[5], V = c[6];
    float *eps = readn(f, 4, 1), *emb = readn(f, 4, (size_t)V * H);
    ef_enc *e = ef_enc_create(H, F, heads, L, k, w, V, emb, *eps);
    if (!e) { fprintf(stderr, "ef_enc_driver: bad encoder\n"); return 1; }
    const int dims[4][3] = {{H, 3 * H, 1}, {H, H, 1}, {H, F, k}, {F, H, k}};       /* cin, cout, taps */
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < 4; i++) {
            int8_t *q = readn(f, 1, (size_t)dims[i][1] * dims[i][0] * dims[i][2]);
            float *scale = readn(f, 4, dims[i][1]), *bias = readn(f, 4, dims[i][1]);
            if (ef_enc_set_conv(e, l, i, q, scale, bias)) { fprintf(stderr, "ef_enc_driver: bad conv\n"); return 1; }
            free(q); free(scale); free(bias);
        }
        const size_t nr = (size_t)(2 * w + 1) * (H / heads);
        float *rk = readn(f, 4, nr), *rv = readn(f, 4, nr), *ln = readn(f, 4, (size_t)4 * H);
        if (ef_enc_set_float(e, l, rk, rv, ln)) { fprintf(stderr, "ef_enc_driver: bad layer\n"); return 1; }
        free(rk); free(rv); free(ln);
    }
    const int T = *(int32_t *)readn(f, 4, 1);
    int64_t *ids = readn(f, 8, T);
    float *out = malloc((size_t)H * T * 4);
    fclose(f);
    if (!out || ef_enc_run(e, ids, T, out, 1) != 0) { fprintf(stderr, "ef_enc_driver: run failed\n"); return 1; }
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 4, (size_t)H * T, o) != (size_t)H * T) {
        fprintf(stderr, "ef_enc_driver: cannot write %s\n", argv[2]);
        return 1;
    }
    fclose(o);
    ef_enc_free(e);
    return 0;
}
