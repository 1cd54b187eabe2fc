/* A command-line driver of the WaveFlow kernels, for running them where Python is not (an aarch64 build under
 * qemu-user in tests/test_native_cross.py). Link it with ef_kernels.c and ef_run.c:
 *
 *     ef_driver IN OUT [ISA]
 *
 * IN (little-endian): int32 n_cfg, int32 cfg[n_cfg], int64 n_w, float32 w[n_w], int32 n_q8, n_q8 times (int32
 * flow, layer, part; int8 q[2C * C * k * k (part 0) or 2C * n_mels (part 1)]; float32 scale[2C]), int32 B, int32 F,
 * float32 sigma, float32 mel[B * n_mels * F], float32 z[B * F * hop]. OUT: float32 audio[B * F * hop]. ISA: 0
 * portable (the default), 1 AVX2, 2 AVX-512. Exit status 0, or 1 with a message on stderr.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ef_wf ef_wf;
ef_wf *ef_wf_create(const int *cfg, int n_cfg, const float *w, long long n_w);
int ef_wf_run(const ef_wf *m, const float *mel, int B, int F, const float *z, float sigma, float *audio,
              int threads, double *prof);
int ef_set_isa(int isa);
int ef_wf_set_q8(ef_wf *m, int flow, int layer, int part, const int8_t *q, const float *scale);
const char *ef_q8_kernel(void);
void ef_wf_free(ef_wf *m);

static void *readn(FILE *f, size_t size, size_t n)
{
    void *p = malloc(size * (n ? n : 1));
    if (!p || fread(p, size, n, f) != n) { fprintf(stderr, "ef_driver: short input\n"); exit(1); }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: ef_driver IN OUT [ISA]\n"); return 1; }
    if (ef_set_isa(argc > 3 ? atoi(argv[3]) : 0) != 0) { fprintf(stderr, "ef_driver: ISA not available\n"); return 1; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { fprintf(stderr, "ef_driver: cannot open %s\n", argv[1]); return 1; }
    int32_t n_cfg = *(int32_t *)readn(f, 4, 1);
    int32_t *cfg = readn(f, 4, n_cfg);
    int64_t n_w = *(int64_t *)readn(f, 8, 1);
    float *w = readn(f, 4, n_w);
    ef_wf *m = ef_wf_create(cfg, n_cfg, w, n_w);
    if (!m) { fprintf(stderr, "ef_driver: weights refused\n"); return 1; }
    int32_t n_q8 = *(int32_t *)readn(f, 4, 1), C = cfg[3], k = cfg[4];
    for (int i = 0; i < n_q8; i++) {
        int32_t *id = readn(f, 4, 3);
        size_t nq = (size_t)2 * C * (id[2] == 0 ? (size_t)C * k * k : (size_t)cfg[5]);
        int8_t *q = readn(f, 1, nq);
        float *scale = readn(f, 4, (size_t)2 * C);
        if (ef_wf_set_q8(m, id[0], id[1], id[2], q, scale) != 0) {
            fprintf(stderr, "ef_driver: INT8 refused\n");
            return 1;
        }
    }
    int32_t B = *(int32_t *)readn(f, 4, 1), F = *(int32_t *)readn(f, 4, 1);
    float sigma = *(float *)readn(f, 4, 1);
    int hop = 1;
    for (int u = 0; u < cfg[7]; u++) hop *= cfg[8 + u];
    size_t T = (size_t)F * hop;
    float *mel = readn(f, 4, (size_t)B * cfg[5] * F), *z = readn(f, 4, (size_t)B * T);
    fclose(f);
    float *audio = malloc((size_t)B * T * 4);
    int rc = ef_wf_run(m, mel, B, F, z, sigma, audio, 1, NULL);
    if (rc) { fprintf(stderr, "ef_driver: run failed (%d)\n", rc); return 1; }
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(audio, 4, (size_t)B * T, o) != (size_t)B * T) {
        fprintf(stderr, "ef_driver: write failed\n");
        return 1;
    }
    fclose(o);
    ef_wf_free(m);
    printf("int8_kernel %s\n", ef_q8_kernel());
    return 0;
}
