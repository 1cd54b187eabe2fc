/* A command-line driver of the WaveNet-coupling kernels (the VITS prior flow, WaveGlow's couplings), for running
 * them where Python is not (an aarch64 build under qemu-user in tests/test_native_cross.py). Link it with
 * ef_kernels.c, ef_int8.c, ef_run.c, ef_wn.c, ef_wn_run.c and ef_wn_q8.c:
 *
 *     ef_wn_driver IN OUT [ISA]
 *
 * IN (little-endian): int32 n_cfg, int32 cfg[n_cfg], int64 n_w, float32 w[n_w] (wn.blob's order), int32 n_wg,
 * n_wg times (int32 flow, layer; float32 u[8 * 2H * H], at[4 * 8], bt[8 * 8]: the Winograd F(4,5) weights and
 * transforms, as wn.NativeFlow sets them), int32 n_q8, n_q8 times (int32 flow, layer, part, n, n_scale; int8 q[n];
 * float32 scale[n_scale]: an INT8 conv, as ef_wn_set_q8 takes it), int32 B, int32 T, int32 M, float32
 * x[B * C * T], float32 cond[B * M * T] (M = 0: none). OUT: float32 out[B * C * T], the flow's inverse of each
 * item. ISA: 0 portable (the default), 1 AVX2, 2 AVX-512. Exit status 0, or 1 with a message on stderr.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ef_wn ef_wn;
ef_wn *ef_wn_create(const int *cfg, int n_cfg, const float *w, long long n_w);
int ef_wn_set_winograd(ef_wn *m, int f, int l, const float *u, const float *at, const float *bt);
int ef_wn_set_q8(ef_wn *m, int f, int l, int part, const int8_t *q, const float *scale);
int ef_wn_run(const ef_wn *m, const float *x, int T, const float *cond, float *out, int threads);
void ef_wn_free(ef_wn *m);
int ef_set_isa(int isa);

static void *readn(FILE *f, size_t size, size_t n)
{
    void *p = malloc(size * (n ? n : 1));
    if (!p || fread(p, size, n, f) != n) { fprintf(stderr, "ef_wn_driver: short input\n"); exit(1); }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: ef_wn_driver IN OUT [ISA]\n"); return 1; }
    if (ef_set_isa(argc > 3 ? atoi(argv[3]) : 0) != 0) { fprintf(stderr, "ef_wn_driver: ISA not available\n"); return 1; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { fprintf(stderr, "ef_wn_driver: cannot open %s\n", argv[1]); return 1; }
    int32_t n_cfg = *(int32_t *)readn(f, 4, 1);
    int32_t *cfg = readn(f, 4, n_cfg);
    int64_t n_w = *(int64_t *)readn(f, 8, 1);
    float *w = readn(f, 4, n_w);
    ef_wn *m = ef_wn_create(cfg, n_cfg, w, n_w);
    if (!m) { fprintf(stderr, "ef_wn_driver: weights refused\n"); return 1; }
    int32_t C = cfg[3], H = cfg[4];                /* cfg = FORMAT, F, L, C, H, k, M, mean_only, flip, dil... */
    int32_t n_wg = *(int32_t *)readn(f, 4, 1);
    for (int i = 0; i < n_wg; i++) {
        int32_t *id = readn(f, 4, 2);
        float *u = readn(f, 4, (size_t)8 * 2 * H * H), *at = readn(f, 4, 32), *bt = readn(f, 4, 64);
        if (ef_wn_set_winograd(m, id[0], id[1], u, at, bt) != 0) { fprintf(stderr, "ef_wn_driver: Winograd refused\n"); return 1; }
    }
    int32_t n_q8 = *(int32_t *)readn(f, 4, 1);
    for (int i = 0; i < n_q8; i++) {
        int32_t *id = readn(f, 4, 5);
        int8_t *q = readn(f, 1, id[3]);
        float *scale = readn(f, 4, id[4]);
        if (ef_wn_set_q8(m, id[0], id[1], id[2], q, scale) != 0) { fprintf(stderr, "ef_wn_driver: INT8 refused\n"); return 1; }
    }
    int32_t B = *(int32_t *)readn(f, 4, 1), T = *(int32_t *)readn(f, 4, 1), M = *(int32_t *)readn(f, 4, 1);
    float *x = readn(f, 4, (size_t)B * C * T), *cond = M ? readn(f, 4, (size_t)B * M * T) : NULL;
    fclose(f);
    float *out = malloc((size_t)B * C * T * 4);
    for (int b = 0; b < B; b++) {
        int rc = ef_wn_run(m, x + (size_t)b * C * T, T, cond ? cond + (size_t)b * M * T : NULL,
                           out + (size_t)b * C * T, 1);
        if (rc) { fprintf(stderr, "ef_wn_driver: run failed (%d)\n", rc); return 1; }
    }
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 4, (size_t)B * C * T, o) != (size_t)B * C * T) {
        fprintf(stderr, "ef_wn_driver: write failed\n");
        return 1;
    }
    fclose(o);
    ef_wn_free(m);
    return 0;
}
