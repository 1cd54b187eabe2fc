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
#define EF_VERSION 1

typedef struct {
    int n_flows, n_layers, C, k, n_mels, h, n_up, hop, pad;
    int K, Mab, Mres;                 /* GEMM reduction length, padded output rows */
    int *up_factors, *dil_h, *dil_w, *orders;
    float **up_w;                     /* per upsampler layer: s*9 phase weights then the bias */
    float *start_w, *start_b;         /* [n_flows][C] */
    float **ab_w, **ab_b;             /* [flow*L + layer]: packed [Mab/MR][K][MR], bias [Mab] */
    float **res_w, **res_b;           /* packed [Mres/MR][C][MR], bias [Mres] */
    float **skip_w, **skip_b;         /* [2][C], [2] */
} ef_wf;

typedef struct {                      /* one layer of one row step, as a thread sees it */
    const ef_wf *m;
    int W, Wp, RS, first, last;
    const float *ab_w, *ab_b, *res_w, *res_b, *skip_w, *skip_b, *start_w, *start_b;
    const float *const *xp;           /* K row pointers (column 0 of each reduction row) */
    const float *hid_cur;
    float *hid_next, *hid0_next, *skip, *zrow;
} ef_step;

typedef struct {
    float *a, *g, *r;
    const float **gp;
    const float **xp;
} ef_scratch;

typedef void (*ef_block_fn)(const ef_step *, int, ef_scratch *, double *);

/* The calling thread's CPU time in seconds (profiling). */
double ef_now(void);
/* The block kernel of instruction set isa; the instruction set in use. */
ef_block_fn ef_block_for(int isa);
int ef_get_isa(void);

#endif
