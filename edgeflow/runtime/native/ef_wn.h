/* Internal declarations of the WaveNet-coupling engine, shared by ef_wn.c (instruction-set variants, weight
 * packing, the C API) and ef_wn_run.c (the driver). See ef_wn.c. */

#ifndef EF_WN_H
#define EF_WN_H

#include "ef_internal.h"

#define EF_WN_VERSION 1
#define EF_WN_PANEL 32                  /* rows of a Winograd GEMM job (its accumulators stay in L1 / L2) */

typedef struct {
    int n_flows, n_layers, C, H, k, n_cond, mean_only, flip;
    int half, S, K, Hp, Mab, pad;       /* C/2, statistic rows, in-conv reduction k*H + n_cond, padded rows */
    int *dil;                           /* [L] */
    float **pre_w, **pre_b;             /* [F]: packed [Hp/MR][half][MR], bias [Hp] */
    float **in_w, **in_b;               /* [F*L]: packed [Mab/MR][K][MR] (K index kk*H + c, then cond), [Mab] */
    float **rs_w, **rs_b;               /* [F*L]: residual rows (H; none in the last layer), then S stat rows */
    float **wg;                         /* [F*L]: Winograd F(4,5) weights (8 packed [Mab/MR][H][MR]) or NULL */
    float wg_at[4 * 8], wg_bt[8 * 8];   /* its output and input transforms */
    ef_q8 **in_q, **cond_q;             /* [F*L]: INT8 dilated / conditioning conv (ef_wn_q8.c), or NULL */
    ef_q8 **rs_q;                       /* [F*L]: INT8 residual / statistics conv, or NULL */
} ef_wn;

typedef struct {                        /* one thread's scratch */
    float *a, *g, *r;
    float **gp;
    const float **xp;
    float *y, *ph, *zero;               /* Winograd: the 8 GEMM blocks of a job, the phases, a zero bias */
    uint8_t *gq;                        /* INT8 res / skip conv: the block's gate output [Hq][EF_NB][4] */
    const uint8_t **gxq;                /* and its quad row pointers */
    ef_qtile_fn tile;
} ef_wn_scratch;

typedef struct {
    void (*pre)(const ef_wn *, int, const float *const *, int, int, float *, int, ef_wn_scratch *);
    void (*layer)(const ef_wn *, int, int, const float *const *, int, int, const float *, float *, float *, int,
                  int, const float *, ef_wn_scratch *);
    void (*update)(const ef_wn *, float *const *, const float *, int, int, int);
    void (*wg_in)(const ef_wn *, int, const float *, int, int, float *, float *);
    void (*wg_gemm)(const ef_wn *, int, int, int, int, const float *, int, int, float *, ef_wn_scratch *);
} ef_wn_fns;

typedef struct {                        /* one run's INT8 state (ef_wn_q8.c) */
    uint8_t *hq, *cq;                   /* quantized layer input [Hq][RS][4], conditioning [Mq][RS][4] */
    const uint8_t **xh, **xc;           /* quad row pointers: the layer's k taps x Hq, the Mq conditioning quads */
    float *fh, *fc, *qb, *mm;           /* [Mab] factors w_scale x x_scale, bias with zero points; [nblk][2] */
    float sh, sc;                       /* activation scales (layer input, conditioning) */
    int zh, zc;                         /* and zero points */
    ef_qtile_fn tile;
    int amx;                            /* the convs with AMX weights run on AMX (ef_amx.c) */
    size_t bs;                          /* bytes between consecutive quad rows (hq, cq) */
} ef_wn_q8run;

int ef_wn_q8_on(const ef_wn *m, int i);
int ef_wn_q8_make(const ef_wn *m, const float *cond, int RS, int nblk, ef_wn_q8run *q);
void ef_wn_q8_free(ef_wn_q8run *q);
void ef_wn_q8_prepare(const ef_wn *m, int i, int l, const float *hc, int RS, int nblk, int T, ef_wn_q8run *q);
void ef_wn_q8_block(const ef_wn *m, int i, const ef_wn_q8run *q, int j0, float *a);
void ef_wn_q8_rs(const ef_wn *m, int i, int rows, ef_wn_scratch *w, int valid);

/* The kernels of instruction set isa. */
const ef_wn_fns *ef_wn_for(int isa);

#endif
