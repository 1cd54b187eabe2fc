/* A command-line driver of the INT8 waveform-stage kernel (ef_hq8.c), for running it where Python is not (an
 * aarch64 build under qemu-user in tests/test_native_cross.py). Link it with ef_hq8.c, ef_hq_up.c, ef_int8.c,
 * ef_kernels.c, ef_run.c and ef_wn_q8.c (with ef_wn.c, ef_wn_run.c):
 *
 *     ef_hq_driver IN OUT [ISA]
 *
 * IN (little-endian): int32 C, n_blocks, n_convs, kp; int32 spec[n_convs][7] (wave_stage.pack_stage's); float32
 * slope, post_slope, post_b, post_w[C * kp]; per conv: int8 q[cout * cin * k], float32 scale[cout], bias[cout];
 * int32 has_up, and when 1 the upsampler: int32 cin, u, k, planes; float32 slope; int8 q[u C * cin * k], float32
 * scale[u C], bias[u C]; int32 T; float32 x[(has_up ? cin : C) * T]. OUT: float32 audio[(has_up ? u : 1) * T], or
 * with kp 0 (no conv_post) the resblocks' mean [C][(has_up ? u : 1) * T].
 * ISA: 0 portable (the default), 1 AVX2, 2 AVX-512. Exit status 0, or 1 with a message on stderr.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ef_hq ef_hq;
ef_hq *ef_hq_create(int C, int n_blocks, int n_convs, const int *spec, float slope, float post_slope, int kp,
                    const float *post_w, float post_b);
int ef_hq_set_conv(ef_hq *m, int i, const int8_t *q, const float *scale, const float *bias);
int ef_hq_set_up(ef_hq *m, int cin, int u, int k, int planes, float slope, const int8_t *q, const float *scale,
                 const float *bias);
int ef_hq_run(const ef_hq *m, const float *x, int T, float *audio, int nthreads);
void ef_hq_free(ef_hq *m);
int ef_set_isa(int isa);

static void *readn(FILE *f, size_t size, size_t n)
{
    void *p = malloc(size * (n ? n : 1));
    if (!p || fread(p, size, n, f) != n) { fprintf(stderr, "ef_hq_driver: short input\n"); exit(1); }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: ef_hq_driver IN OUT [ISA]\n"); return 1; }
    if (ef_set_isa(argc > 3 ? atoi(argv[3]) : 0) != 0) { fprintf(stderr, "ef_hq_driver: ISA not available\n"); return 1; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { fprintf(stderr, "ef_hq_driver: cannot open %s\n", argv[1]); return 1; }
    int32_t *head = readn(f, 4, 4);
    const int C = head[0], nb = head[1], nc = head[2], kp = head[3];
    int32_t *spec = readn(f, 4, (size_t)nc * 7);
    float *sl = readn(f, 4, 3), *pw = readn(f, 4, (size_t)C * kp);
    ef_hq *m = ef_hq_create(C, nb, nc, spec, sl[0], sl[1], kp, kp ? pw : NULL, sl[2]);
    if (!m) { fprintf(stderr, "ef_hq_driver: bad stage\n"); return 1; }
    for (int i = 0; i < nc; i++) {
        const int *s = spec + 7 * i;
        int8_t *q = readn(f, 1, (size_t)s[2] * s[1] * s[3]);
        float *scale = readn(f, 4, s[2]), *bias = readn(f, 4, s[2]);
        if (ef_hq_set_conv(m, i, q, scale, bias) != 0) { fprintf(stderr, "ef_hq_driver: bad conv %d\n", i); return 1; }
        free(q); free(scale); free(bias);
    }
    int cin = C, u = 1;
    if (*(int32_t *)readn(f, 4, 1)) {
        int32_t *us = readn(f, 4, 4);
        float *slope = readn(f, 4, 1);
        cin = us[0]; u = us[1];
        int8_t *q = readn(f, 1, (size_t)u * C * cin * us[2]);
        float *scale = readn(f, 4, (size_t)u * C), *bias = readn(f, 4, (size_t)u * C);
        if (ef_hq_set_up(m, cin, u, us[2], us[3], *slope, q, scale, bias) != 0) {
            fprintf(stderr, "ef_hq_driver: bad upsampler\n");
            return 1;
        }
    }
    const int T = *(int32_t *)readn(f, 4, 1);
    const size_t n = (size_t)T * u * (kp ? 1 : C);
    float *x = readn(f, 4, (size_t)cin * T), *out = malloc(n * 4);
    fclose(f);
    if (!out || ef_hq_run(m, x, T, out, 1) != 0) { fprintf(stderr, "ef_hq_driver: run failed\n"); return 1; }
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 4, n, o) != n) {
        fprintf(stderr, "ef_hq_driver: cannot write %s\n", argv[2]);
        return 1;
    }
    fclose(o);
    ef_hq_free(m);
    return 0;
}
