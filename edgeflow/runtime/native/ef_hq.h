/* The waveform-stage kernel's shared definitions (ef_hq8.c: the stage and its convs; ef_hq_run.c: the chunks over
 * threads, conv_post; ef_hq_up.c: the upsampler ahead of it). */

#ifndef EF_HQ_H
#define EF_HQ_H

#include "ef_internal.h"

/* The float loops, cloned for AVX-512 / AVX2 on x86 (picked by CPU features at load time) so they vectorize. */
#if defined(__x86_64__) && (defined(__GNUC__) && !defined(__clang__))
#define EF_HQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EF_HQ_CLONES
#endif

#define EF_HQ_TW 128     /* output columns per tile (a multiple of EF_NB) sharing one quantized input window */
#define EF_HQ_UMAX 64    /* the largest upsampler stride ef_hq_set_up takes */
#define EF_HQ_CHUNK 1536 /* input columns of a chunk (halo included): 5 planes of 32 channels, near L2's size */
#define EF_HQ_MINCHUNK 256 /* output columns from which a stage is split in at least two chunks */

typedef struct {
    int cin, cout, k, d, mode, planes;   /* planes: 1 (u8 activations) or 2 (the rounding error too) */
    ef_q8 *q;            /* NULL until set */
    float *bias;         /* [cout] */
    int *qr;             /* per row tile [Mp / EF_MR][2]: the quads [from, to) its nonzero taps span (NULL: all) */
} ef_hqconv;

typedef struct {
    int C, n_blocks, n_convs, kp;
    ef_hqconv *up;       /* the last upsampler ahead of the stage (ef_hq_set_up), or NULL */
    int u;               /* its stride */
    float up_slope;      /* the leaky ReLU before it */
    int *first;          /* [n_blocks + 1]: block b's convs are first[b] .. first[b + 1] - 1 */
    ef_hqconv *convs;
    float slope, post_slope, post_b;
    float *post_w;       /* [C][kp] */
} ef_hq;

/* One chunk's scratch: planes of `rows` rows and stride S, the block ranges, a quantized window; with an upsampler,
 * its input and output at the input rate (rows of stride Sl). */
typedef struct {
    float *pl[4], *tb, *mm, *mmx, *mmo[2], *lin, *lout;   /* mm*: [block][2] minima and maxima (mmx: the input's) */
    uint8_t *buf, *buf2;
    const uint8_t **xq, **xq2;
    size_t S, Sl;
    int amx;             /* run the convs that have AMX weights on AMX */
} ef_hq_ws;

/* A conv over a chunk's window with block-scaled u8 activations (ef_hq8.c). */
void ef_hq_conv(const ef_hqconv *c, float slope, const float *in, const float *mm_in, const float *res, float *out,
                float *mm_out, int L, int va, int vb, ef_hq_ws *w, ef_qtile_fn tile);

/* Per-block [lo, hi] of rows c < C of src (stride S) over the blocks of EF_NB columns that meet [va, vb) (ef_hq8.c). */
void ef_hq_block_minmax(const float *src, size_t S, int C, int va, int vb, float *mm);

/* Output columns per chunk of a stage of T output columns and receptive half width H (ef_hq8.c). */
int ef_hq_chunk_len(int T, int H);

/* The upsampler's output at a chunk's audio window (ef_hq_up.c). */
void ef_hq_up_chunk(const ef_hq *m, const float *x, int Tl, int g0, int L, float *xin, ef_hq_ws *w, ef_qtile_fn tile);

#endif
