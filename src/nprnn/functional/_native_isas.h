/* _native_kernels.h compiled for the element type T (TNAME set by _native.c) on each
 * instruction set: AVX-512 (32 vector registers: a 12-row tile) and AVX2+FMA (16: a 6-row
 * tile) on x86 where the compiler can target them, and the baseline.  Every function of a
 * variant carries the variant's target attribute (TGT), which GCC and clang both honour
 * (clang ignores `#pragma GCC target`); _native.c picks a variant at import, and each
 * variant's FN(width) proves at build time that its target is in force.
 */
#ifdef HAVE_X86_VARIANTS
#define TGT __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define VB 64
#define MR 12
#define ACC 24
#define SFX PASTE(TNAME, avx512)
#define WIDTH_PROOF() (int)_mm512_reduce_add_ps(_mm512_set1_ps(4.0f))  /* 16 lanes of 4 */
#define RECIP14 1  /* the gates' reciprocals from vrcp14 and Newton steps, not a division */
/* a vector stored past the caches (an aligned address), and the fence after such stores */
#define NT_STORE(p, v) (sizeof(T) == 4 ? _mm512_stream_ps((float *)(p), (__m512)(v)) \
                                       : _mm512_stream_pd((double *)(p), (__m512d)(v)))
#define NT_FENCE() _mm_sfence()
#include "_native_kernels.h"

#define TGT __attribute__((target("avx2,fma")))
#define VB 32
#define MR 6
#define ACC 12
#define SFX PASTE(TNAME, avx2)
#define WIDTH_PROOF() /* 4 x 8 */ \
    (int)_mm_cvtss_f32(_mm256_castps256_ps128(_mm256_fmadd_ps(_mm256_set1_ps(4.0f), _mm256_set1_ps(8.0f), \
                                                              _mm256_setzero_ps())))
#define NT_STORE(p, v) (sizeof(T) == 4 ? _mm256_stream_ps((float *)(p), (__m256)(v)) \
                                       : _mm256_stream_pd((double *)(p), (__m256d)(v)))
#define NT_FENCE() _mm_sfence()
#include "_native_kernels.h"
#endif

#define TGT
#define VB 16
#ifdef __aarch64__
#define MR 12  /* 32 vector registers, as AVX-512 */
#define ACC 24
#else
#define MR 6
#define ACC 12
#endif
#define SFX PASTE(TNAME, base)
#define WIDTH_PROOF() VB  /* the baseline's target is the compiler's default */
#ifdef HAVE_X86_VARIANTS  /* (SSE2 is x86-64's baseline) */
#define NT_STORE(p, v) (sizeof(T) == 4 ? _mm_stream_ps((float *)(p), (__m128)(v)) \
                                       : _mm_stream_pd((double *)(p), (__m128d)(v)))
#define NT_FENCE() _mm_sfence()
#endif
#include "_native_kernels.h"
