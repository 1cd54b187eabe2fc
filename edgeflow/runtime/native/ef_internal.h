/* Internal declarations shared by ef_kernels.c (instruction-set variants, weight packing, the C API) and
 * ef_run.c (the synthesis driver). Not a public header: the library's API is the EF_API functions. */

#ifndef EF_INTERNAL_H
#define EF_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define EF_API __attribute__((visibility("default")))
#define EF_MR 4          /* rows of a packed weight tile */
#define EF_NB 64         /* columns (samples of a folded row) per block */
#ifndef EF_KC
#define EF_KC 96         /* reduction rows per GEMM chunk: a chunk of the input block (EF_KC x EF_NB) fits L1 */
#endif
#define EF_VERSION 2      /* 2: INT8 layers (ef_wf_set_q8) */
#define EF_QK 16          /* most reduction chunks (kernel rows + the conditioning) of an INT8 layer */
#define EF_NPROF 6        /* profile slots: layer GEMM, gate, res + skip, affine + start, upsampler, quantize */

/* The INT8 weights of one conv of one layer: s8, symmetric per output channel (zero point 0).
 * w: packed [Mab/MR][nq][MR][4] (a quad = 4 consecutive reduction indices, the layout of a VNNI dot product);
 * wsum: [nchunk][Mab] the sums of each chunk's weights (for the activations' zero points); scale: [Mab]. */
typedef struct {
    int8_t *w;
    int32_t *wsum;
    float *scale;
    int nq, nchunk, chunk;            /* quads, chunks (reduction rows sharing one activation scale), quads each */
    int8_t *amx;                      /* the same weights as AMX tiles (ef_amx.c), or NULL */
    int amx_kc;                       /* quads per AMX reduction chunk */
} ef_q8;

typedef struct {
    int n_flows, n_layers, C, k, n_mels, h, n_up, hop, pad;
    int K, Mab, Mres;                 /* GEMM reduction length, padded output rows */
    int *up_factors, *dil_h, *dil_w, *orders;
    float **up_w;                     /* per upsampler layer: s*9 phase weights then the bias */
    float *start_w, *start_b;         /* [n_flows][C] */
    float **ab_w, **ab_b;             /* [flow*L + layer]: packed [Mab/MR][K][MR], bias [Mab] */
    float **res_w, **res_b;           /* packed [Mres/MR][C][MR], bias [Mres] */
    float **skip_w, **skip_b;         /* [2][C], [2] */
    int Cq, Mq;                       /* channel / mel quads: ceil(C / 4), ceil(n_mels / 4) */
    ef_q8 **conv_q, **cond_q;         /* [flow*L + layer]: INT8 dilated / conditioning conv, or NULL (float) */
} ef_wf;

/* An INT8 register tile: out[r][0:EF_NB] += f[r] * sum_q <w[q][r][0:4], x quad q at column off + n> for r <
 * EF_MR, over nq quads (xq[q]: quad row q at column 0, u8 [columns][4]); f NULL: store the int32 sums into
 * (int32_t *)out instead. */
typedef void (*ef_qtile_fn)(int nq, const int8_t *wp, const uint8_t *const *xq, int off, const float *f,
                            float *out, int ostride);

typedef struct {                      /* one layer of one row step, as a thread sees it */
    const ef_wf *m;
    int W, Wp, RS, first, last;
    const float *ab_w, *ab_b, *res_w, *res_b, *skip_w, *skip_b, *start_w, *start_b;
    const float *const *xp;           /* K row pointers (column 0 of each reduction row) */
    const float *hid_cur;
    float *hid_next, *hid0_next, *skip, *zrow;
    const ef_q8 *conv_q, *cond_q;     /* INT8 parts of this layer (NULL: float) */
    ef_qtile_fn qtile;
    int amx;                          /* the parts with AMX weights run on AMX (quad row strides bs_conv, bs_cond) */
    size_t bs_conv, bs_cond;
    const uint8_t *const *xq;         /* quad row pointers: k*k*Cq hidden quads, then Mq conditioning quads */
    float xs[EF_QK];                  /* activation scale of each INT8 chunk (kernel rows, then the cond) */
    const float *qbias;               /* the bias with the activations' zero points folded in [Mab] */
    float *mm_next;                   /* per-block [lo, hi] of the row written (an INT8 layer reads it), or NULL */
} ef_step;

typedef struct {
    float *a, *g, *r;
    const float **gp;
    const float **xp;
    const uint8_t **xq;
    float *qbias;
} ef_scratch;

typedef void (*ef_block_fn)(const ef_step *, int, ef_scratch *, double *);

/* The calling thread's CPU time in seconds (profiling). */
double ef_now(void);
/* The block kernel of instruction set isa; the instruction set in use. */
ef_block_fn ef_block_for(int isa);
int ef_get_isa(void);
/* The INT8 tile of instruction set isa (AVX-512 VNNI, AVX2 or portable). */
ef_qtile_fn ef_qtile_for(int isa);
void ef_q8_free(ef_q8 *q);
/* Where an AMX product goes (ef_amx_gemm): out rows of stride os; per-row factors f [M]; bias NULL: out += f sum,
 * else out = ((res ? res : 0) + bias) + f sum (the prefill fused: the same float operations), res rows of stride
 * os or NULL. */
typedef struct {
    float *out;
    size_t os;
    const float *f, *bias, *res;
} ef_amx_out;

/* The activations of an AMX product: quad g of tap j at column n is xq[j cq + g] + (off + n) 4, consecutive quads bs
 * bytes apart; the taps [ja, jb) are summed (one activation-scale chunk). */
typedef struct {
    const uint8_t *const *xq;
    size_t bs;
    int off, ja, jb;
} ef_amx_in;

/* AMX (ef_amx.c): p->amx from q [M][C][k] where AMX is available and the shape suits it (else NULL; -1 memory);
 * whether INT8 convs run on it now; the product (A . B)[o][n] for o < M, n < ncols (a multiple of 32) into o
 * (qr: per row tile of EF_MR, the quads [from, to) of its nonzero taps, or NULL). */
int ef_amx_pack(ef_q8 *p, int M, int C, int k, const int8_t *q);
/* w's AMX weights from output row r0 on (a conv's rows split between threads), or NULL (none, or r0 not at a
 * 32-row pair). */
int8_t *ef_amx_from_row(const ef_q8 *w, int k, int r0);
int ef_amx_on(void);
void ef_amx_gemm(const ef_q8 *w, int M, int k, const int *qr, const ef_amx_in *in, int ncols, const ef_amx_out *o);
/* Pack conv weights q [M][C][k] (s8) into the tile layout [Mp/MR][k * ceil(C / 4)][MR][4] (tap-major quads), one
 * activation chunk, per-output-channel scales scale [M]; NULL when out of memory (ef_wn_q8.c). */
ef_q8 *ef_q8_pack_conv(int M, int Mp, int C, int k, const int8_t *q, const float *scale);
/* ef_quant_rows of leaky_relu(src, slope); with dst2 (else NULL), each value's rounding error quantized again
 * with scale s2 and zero point zp2 into dst2 (two u8 planes: about 16-bit activations). */
void ef_quant_rows_lrelu(const float *src, size_t cstride, int C, int n, float slope, float s, int zp, uint8_t *dst,
                         size_t qstride, float s2, int zp2, uint8_t *dst2);
/* Quantize rows c < C of src (row c at src + c * cstride, n values) to u8 with scale s, zero point zp, into the
 * quad-interleaved dst: element (c, j) at dst[((c / 4) * qstride + j) * 4 + c % 4]; channels C..4*Cq-1 get zp. */
void ef_quant_rows(const float *src, size_t cstride, int C, int n, float s, int zp, uint8_t *dst, size_t qstride);
/* Min and max of rows c < C of src over n values (into lo, hi; not reset). */
void ef_minmax_rows(const float *src, size_t cstride, int C, int n, float *lo, float *hi);
/* (scale, zero point) of u8 asymmetric quantization of [lo, hi] (widened to hold 0 exactly). */
void ef_qparams(float lo, float hi, float *s, int *zp);
/* ef_qparams of the range of nblk per-block [lo, hi] pairs mm [nblk][2]. */
void ef_qparams_blocks(const float *mm, int nblk, float *s, int *zp);

#endif
