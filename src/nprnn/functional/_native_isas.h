/* _native_kernels.h compiled for the element type T (TNAME, EXP, TANH set by _native.c) on
 * each instruction set: AVX-512 (32 vector registers: a 12-row tile) and AVX2+FMA (16: a
 * 6-row tile) where GCC can target them, and the baseline.  _native.c picks one at import.
 */
#ifdef HAVE_X86_VARIANTS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define VB 64
#define MR 12
#define ACC 24
#define SFX PASTE(TNAME, avx512)
#include "_native_kernels.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define VB 32
#define MR 6
#define ACC 12
#define SFX PASTE(TNAME, avx2)
#include "_native_kernels.h"
#pragma GCC pop_options
#endif

#define VB 16
#define MR 6
#define ACC 12
#define SFX PASTE(TNAME, base)
#include "_native_kernels.h"
