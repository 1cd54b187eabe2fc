/* ef_isa_each.h: instantiate the per-instruction-set implementation header named by EF_IMPL (a quoted file
 * name) once per variant: "generic" (portable C, vectorized by the compiler; NEON on aarch64) everywhere, and
 * on x86-64 with GCC or Clang also "avx2" (AVX2 + FMA) and "avx512" (AVX-512 F/DQ/BW/VL + FMA), each compiled
 * with its own target attribute and chosen at run time by CPU features. Defines EF_HAVE_X86 when the x86
 * variants exist. The implementation header sees EF_VW (floats per vector), EF_NV (vectors per tile row),
 * EF_ATTR (function attribute) and EF_NAME (the suffix of its names).
 */

#define EF_VW 4
#define EF_NV 2
#define EF_ATTR
#define EF_NAME generic
#include EF_IMPL
#undef EF_VW
#undef EF_NV
#undef EF_ATTR
#undef EF_NAME

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EF_HAVE_X86 1
#define EF_VW 8
#define EF_NV 2
#define EF_ATTR __attribute__((target("avx2,fma")))
#define EF_NAME avx2
#include EF_IMPL
#undef EF_VW
#undef EF_NV
#undef EF_ATTR
#undef EF_NAME
#define EF_VW 16
#define EF_NV 4
#define EF_ATTR __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define EF_NAME avx512
#include EF_IMPL
#undef EF_VW
#undef EF_NV
#undef EF_ATTR
#undef EF_NAME
#endif
