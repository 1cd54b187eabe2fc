/* Intel AMX (Advanced Matrix Extensions) for the INT8 convs of the stage kernel (ef_hq8.c, ef_hq_up.c), the text
 * encoder (ef_enc.c), the WaveNet couplings' INT8 layers (ef_wn_q8.c) and WaveFlow's (ef_wf_impl.h).
 *
 * Where the CPU has AMX-INT8 (Sapphire Rapids and later) and the kernel lets the process use it (Linux 5.16+:
 * arch_prctl ARCH_REQ_XCOMP_PERM), a conv's dot products run as tile matrix products instead of VNNI register tiles.
 * TDPBSUD multiplies s8 by u8, so the weights are the A tiles (16 output channels x 64 reduction bytes, packed here
 * per pair of 16-row blocks, tap and chunk of 16 quads) and the activations the B tiles, read in place from the
 * quantized window the VNNI path reads (rows: the channel quads, 16 columns x 4 bytes each, at the quad row stride).
 * The int32 sums are exact in both paths and each goes through the same fused multiply-add into the float output,
 * so the two paths give bit-identical results. Tiles: C 0-3 (32 rows x 32 columns of int32 sums), A 4-5, B 6-7.
 */

#include "ef_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__linux__)
#define EF_HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define EF_AMX_PAIR 32    /* output rows per step: two A tiles */
#define EF_AMX_TILE 1024  /* bytes of one A tile: 16 rows x 64 bytes */

static int ef_amx_use = -1;     /* -1: as available */

/* Whether this CPU has AMX-INT8 and the OS lets this process use the tile data (asked once; idempotent).
 * EDGEFLOW_NATIVE_AMX=0 in the environment: no, as on a CPU without it. */
EF_API int ef_amx_available(void)
{
#ifdef EF_HAVE_AMX
    static int ef_amx_avail = -1;   /* -1 not asked yet */
    const char *env = getenv("EDGEFLOW_NATIVE_AMX");
    if (ef_amx_avail < 0 && env && env[0] == '0') ef_amx_avail = 0;
    if (ef_amx_avail < 0) {
        unsigned a, b, c, d;
        int ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1) &&
                 __builtin_cpu_supports("avx512f");
        ef_amx_avail = ok && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    return ef_amx_avail;
#else
    return 0;
#endif
}

/* Use AMX for those INT8 convs (on: 1, where available; the default) or not (0: the VNNI / AVX2 tiles).
 * 0, or -1 (asked for AMX where there is none). Process-wide (tests, benchmarks). */
EF_API int ef_set_amx(int on)
{
    if (on && !ef_amx_available()) return -1;
    ef_amx_use = on ? 1 : 0;
    return 0;
}

/* Whether those convs run on AMX now (available, not switched off, and the AVX-512 instruction set in use). */
int ef_amx_on(void)
{
    if (ef_amx_use < 0) ef_amx_use = ef_amx_available();
    return ef_amx_use && ef_get_isa() == 2;
}

EF_API int ef_amx_in_use(void) { return ef_amx_on(); }

/* p->amx from q [M][C][k] (s8): per pair of 16-row blocks, tap j and chunk h of kc quads, two A tiles of 16 rows x 64
 * bytes (bytes 4 g + i of row r: channel 4 (h kc + g) + i of output row 32 pair + 16 t + r, tap j; 0 past C and
 * past M: the last pair is padded). Left NULL (the VNNI path) without AMX, or where the quads do not split into
 * chunks of at most 16. -1 out of memory. */
int ef_amx_pack(ef_q8 *p, int M, int C, int k, const int8_t *q)
{
    p->amx = NULL;
    const int cq = (C + 3) / 4, kc = cq <= 16 ? cq : 16, nkc = (cq + kc - 1) / kc;
    if (!ef_amx_available() || cq % kc || p->nq != k * cq) return 0;
    const size_t n = (size_t)((M + EF_AMX_PAIR - 1) / EF_AMX_PAIR) * k * nkc * 2 * EF_AMX_TILE;
    int8_t *a = aligned_alloc(64, n);
    if (!a) return -1;
    memset(a, 0, n);
    for (int o = 0; o < M; o++)
        for (int j = 0; j < k; j++)
            for (int ci = 0; ci < C; ci++) {
                const int pr = o / EF_AMX_PAIR, t = o % EF_AMX_PAIR / 16, r = o % 16, h = ci / 4 / kc;
                const size_t at = (((size_t)pr * k + j) * nkc + h) * 2 + t;
                a[at * EF_AMX_TILE + (size_t)r * 64 + (size_t)(ci / 4 % kc) * 4 + ci % 4] =
                    q[((size_t)o * C + ci) * k + j];
            }
    p->amx = a;
    p->amx_kc = kc;
    return 0;
}

int8_t *ef_amx_from_row(const ef_q8 *w, int k, int r0)
{
    if (!w->amx || r0 % EF_AMX_PAIR) return NULL;
    const int nkc = w->nq / k / w->amx_kc;
    return w->amx + (size_t)(r0 / EF_AMX_PAIR) * k * nkc * 2 * EF_AMX_TILE;
}

#ifdef EF_HAVE_AMX
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} ef_amx_cfg;

/* The taps [*ja, *jb) with a nonzero weight in rows [32 p, 32 p + 32): the union of qr's ranges over its 8 row tiles
 * (quads of tap j: [j cq, (j + 1) cq)); all k taps without qr. */
static void ef_amx_taps(const int *qr, int k, int cq, int M, int p, int *ja, int *jb)
{
    *ja = 0; *jb = k;
    if (!qr) return;
    int lo = k * cq, hi = 0;
    for (int b = p * EF_AMX_PAIR / EF_MR; b < (p + 1) * EF_AMX_PAIR / EF_MR && b * EF_MR < M; b++)
        if (qr[2 * b + 1] > qr[2 * b]) {
            lo = qr[2 * b] < lo ? qr[2 * b] : lo;
            hi = qr[2 * b + 1] > hi ? qr[2 * b + 1] : hi;
        }
    *ja = lo / cq; *jb = hi > lo ? hi / cq : *ja;
}

/* The sums acc of rows [r0, r0 + nr) (nr <= 32), columns [n0, n0 + 32) into o (acc NULL: zero sums, written only
 * where o->bias fuses the prefill). */
__attribute__((target("avx512f")))
static void ef_amx_store(const ef_amx_out *o, const int32_t *acc, int r0, int nr, int n0)
{
    for (int r = 0; r < nr; r++) {
        const int row = r0 + r;
        float *d = o->out + (size_t)row * o->os + n0;
        const float *res = o->res ? o->res + (size_t)row * o->os + n0 : NULL;
        const __m512 fr = _mm512_set1_ps(o->f[row]);
        for (int v = 0; v < 2; v++) {
            __m512 base = _mm512_loadu_ps(d + 16 * v);
            if (o->bias) {
                const __m512 b = _mm512_set1_ps(o->bias[row]);
                base = res ? _mm512_add_ps(_mm512_loadu_ps(res + 16 * v), b) : b;
            }
            if (acc) base = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(acc + 32 * r + 16 * v)), fr, base);
            _mm512_storeu_ps(d + 16 * v, base);
        }
    }
}

/* The product of w's A tiles and the B tiles of xq into o (see ef_internal.h): per pair of 16-row blocks and 32
 * columns, four C tiles summed over the taps and quad chunks, stored through ef_amx_store. */
__attribute__((target("amx-tile,amx-int8,avx512f")))
void ef_amx_gemm(const ef_q8 *w, int M, int k, const int *qr, const ef_amx_in *in, int ncols, const ef_amx_out *o)
{
    const uint8_t *const *xq = in->xq;
    const size_t bs = in->bs;
    const int off = in->off;
    const int kc = w->amx_kc, cq = w->nq / k, nkc = cq / kc;
    ef_amx_cfg cfg = {.palette = 1};
    for (int t = 0; t < 4; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    for (int t = 4; t < 6; t++) { cfg.rows[t] = 16; cfg.colsb[t] = (uint16_t)(4 * kc); }
    for (int t = 6; t < 8; t++) { cfg.rows[t] = (uint8_t)kc; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    int32_t acc[EF_AMX_PAIR * 32] __attribute__((aligned(64)));
    for (int p = 0; p * EF_AMX_PAIR < M; p++) {
        const int nr = M - p * EF_AMX_PAIR < EF_AMX_PAIR ? M - p * EF_AMX_PAIR : EF_AMX_PAIR;
        int ja, jb;
        ef_amx_taps(qr, k, cq, M, p, &ja, &jb);
        ja = ja > in->ja ? ja : in->ja;
        jb = jb < in->jb ? jb : in->jb;
        for (int n0 = 0; n0 < ncols; n0 += 32) {
            if (jb <= ja) {                                      /* all-zero rows: the prefill alone */
                if (o->bias) ef_amx_store(o, NULL, p * EF_AMX_PAIR, nr, n0);
                continue;
            }
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int j = ja; j < jb; j++)
                for (int h = 0; h < nkc; h++) {
                    const int8_t *a = w->amx + ((((size_t)p * k + j) * nkc + h) * 2) * EF_AMX_TILE;
                    const uint8_t *b = xq[j * cq + h * kc] + (size_t)(off + n0) * 4;
                    _tile_loadd(4, a, 64);
                    _tile_loadd(5, a + EF_AMX_TILE, 64);
                    _tile_loadd(6, b, bs);
                    _tile_loadd(7, b + 64, bs);
                    _tile_dpbsud(0, 4, 6);
                    _tile_dpbsud(1, 4, 7);
                    _tile_dpbsud(2, 5, 6);
                    _tile_dpbsud(3, 5, 7);
                }
            _tile_stored(0, acc, 128);
            _tile_stored(1, acc + 16, 128);
            _tile_stored(2, acc + 16 * 32, 128);
            _tile_stored(3, acc + 16 * 32 + 16, 128);
            ef_amx_store(o, acc, p * EF_AMX_PAIR, nr, n0);
        }
    }
    _tile_release();
}
#else
void ef_amx_gemm(const ef_q8 *w, int M, int k, const int *qr, const ef_amx_in *in, int ncols, const ef_amx_out *o)
{
    (void)w; (void)M; (void)k; (void)qr; (void)in; (void)ncols; (void)o;
}
#endif
