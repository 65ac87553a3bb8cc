/* The native time loop, written once and compiled for every (dtype, instruction set) pair.
 *
 * _native_isas.h includes this file once per pair with these macros set:
 *   T       float or double
 *   VB      vector width in bytes (64 AVX-512, 32 AVX2, 16 SSE2)
 *   MR      rows of the register tile (12 with 32 vector registers, 6 with 16)
 *   ACC     accumulator registers the tile may use (24 or 12)
 *   SFX     name suffix, e.g. f32_avx512
 *   TGT     the instruction set's target attribute, on every function
 *   WIDTH_PROOF()  an expression that compiles only under that target, giving VB
 *
 * The equations are in nprnn.functional.cells (the NumPy kernels, our oracle) and in the
 * layer docstrings; here is only the mechanics.  The hidden-to-hidden product of a step,
 * (n, K) @ (K, M), runs on weights packed once into panels of NR = 2 vectors of columns:
 * panel j holds B[k][j*NR .. j*NR+NR-1] for k = 0..K-1, contiguous, zero past M.  A
 * register tile of mr rows by 1..4 panels accumulates over k with one broadcast of A per
 * row and two loads of B per panel.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)
#define VL (VB / (int)sizeof(T))
#define NR (2 * VL)

typedef T FN(vec) __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));
#define V FN(vec)
typedef ITYPE FN(ivec) __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));  /* T's bits */

static TGT inline __attribute__((always_inline)) V FN(vload)(const T *p) { return *(const V *)p; }
static TGT inline __attribute__((always_inline)) void FN(vstore)(T *p, V v) { *(V *)p = v; }

/* C[0:mr, panels j..j+np-1] = Cin + A1 @ B1 (+ A2 @ B2): A[i][k] = A[i * ars + k * aks].
   Cin may be NULL (zero), C itself, or one row broadcast to all (ldcin = 0, a bias).  The
   panels of B1 lie ps1 elements apart (K1 * NR unless K is cut into blocks), those of B2 ps2.
   The last panel may be partial (cols < np * NR valid columns). */
static TGT inline __attribute__((always_inline)) void FN(tile)(
    int mr, int np, int64_t K1, const T *A1, int64_t ars1, int64_t aks1, const T *B1, int64_t ps1, int64_t K2,
    const T *A2, int64_t ars2, const T *B2, int64_t ps2, T *C, int64_t ldc, const T *Cin, int64_t ldcin,
    int64_t cols) {
    V acc[MR][8];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < 2 * np; v++) acc[i][v] = (V){0};
    for (int src = 0; src < 2; src++) {
        const int64_t K = src ? K2 : K1;
        const T *A = src ? A2 : A1;
        const T *b = src ? B2 : B1;
        const int64_t ars = src ? ars2 : ars1, aks = src ? 1 : aks1;
        const int64_t pstride = src ? ps2 : ps1;
        for (int64_t k = 0; k < K; k++, b += NR) {
            V bv[8];
            for (int p = 0; p < np; p++) {
                bv[2 * p] = FN(vload)(b + p * pstride);
                bv[2 * p + 1] = FN(vload)(b + p * pstride + VL);
            }
            for (int i = 0; i < mr; i++) {
                T a = A[i * ars + k * aks];
                for (int v = 0; v < 2 * np; v++) acc[i][v] += a * bv[v];
            }
        }
    }
    if (cols == (int64_t)np * NR) {
        for (int i = 0; i < mr; i++)
            for (int v = 0; v < 2 * np; v++) {
                V r = acc[i][v];
                if (Cin) r += FN(vload)(Cin + i * ldcin + v * VL);
                FN(vstore)(C + i * ldc + v * VL, r);
            }
    } else {
        T tmp[8 * VL] = {0};
        for (int i = 0; i < mr; i++) {
            for (int v = 0; v < 2 * np; v++) FN(vstore)(tmp + v * VL, acc[i][v]);
            for (int64_t m = 0; m < cols; m++) C[i * ldc + m] = tmp[m] + (Cin ? Cin[i * ldcin + m] : (T)0);
        }
    }
}

/* How many panels a tile of mr rows takes at once: as many as the accumulators allow, up
   to 4 (small row counts are bound by loading B, so more panels in flight help). */
#define PANELS(mr) ((ACC / (2 * (mr))) < 1 ? 1 : (ACC / (2 * (mr))) > 4 ? 4 : (ACC / (2 * (mr))))

static TGT inline __attribute__((always_inline)) void FN(row_block)(int mr, const struct gemm *g, int64_t i) {
    const int64_t M = g->M, npan = (M + NR - 1) / NR;
    const int wide = PANELS(mr);
    const T *A1 = (const T *)g->A1 + i * g->ars1, *A2 = g->A2 ? (const T *)g->A2 + i * g->ars2 : 0;
    T *C = (T *)g->C + i * g->ldc;
    const T *Cin = g->Cin ? (const T *)g->Cin + i * g->ldcin : 0;
    const T *B1 = (const T *)g->B1, *B2 = (const T *)g->B2;
    const int64_t K1 = g->K1, K2 = g->A2 ? g->K2 : 0;
    const int64_t ps1 = g->ps1, ps2 = g->ps2;
    int64_t nwide = 0;  /* tiles of `wide` panels first, then one panel at a time */
    while ((nwide + 1) * wide <= npan && (nwide + 1) * wide * NR <= M) nwide++;
    const int64_t tiles = nwide + npan - nwide * wide;
    for (int64_t q = 0; q < tiles; q++) {
        const int64_t t = g->backwards ? tiles - 1 - q : q;
        if (t < nwide) {
            const int64_t j = t * wide;
            FN(tile)(mr, wide, K1, A1, g->ars1, g->aks1, B1 + j * ps1, ps1, K2, A2, g->ars2, B2 + j * ps2, ps2,
                     C + j * NR, g->ldc, Cin ? Cin + j * NR : 0, g->ldcin, (int64_t)wide * NR);
        } else {
            const int64_t j = nwide * wide + t - nwide, cols = M - j * NR < NR ? M - j * NR : NR;
            FN(tile)(mr, 1, K1, A1, g->ars1, g->aks1, B1 + j * ps1, ps1, K2, A2, g->ars2, B2 + j * ps2, ps2,
                     C + j * NR, g->ldc, Cin ? Cin + j * NR : 0, g->ldcin, cols);
        }
    }
}

#define ROWS_CASE(r) \
    case r: FN(row_block)(r, g, i); break;

/* C (n, M) = Cin + A1 (n, K1) @ B1 [+ A2 (n, K2) @ B2], the B packed by FN(pack). */
static TGT void FN(gemm)(const struct gemm *g) {
    for (int64_t i = 0; i < g->n; i += MR) {
        int64_t mr = g->n - i < MR ? g->n - i : MR;
        switch (mr) {
            ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4) ROWS_CASE(5) ROWS_CASE(6)
#if MR > 6
            ROWS_CASE(7) ROWS_CASE(8) ROWS_CASE(9) ROWS_CASE(10) ROWS_CASE(11) ROWS_CASE(12)
#endif
            default: break;
        }
    }
}
#undef ROWS_CASE

/* C = Cin + A @ B for row-major A (n, K), the common case of the loop. */
static TGT inline void FN(mm)(int64_t n, int64_t K, int64_t M, const T *A, int64_t lda, const T *Bp, T *C, int64_t ldc,
                              const T *Cin, int64_t ldcin) {
    struct gemm g = {n, M, K, A, lda, 1, Bp, K * NR, 0, 0, 0, 0, 0, C, ldc, Cin, ldcin};
    FN(gemm)(&g);
}

/* C = bias + A @ B for rows r0..r1 of A (n, K), B packed; bias (M,) or NULL (_native.matmul). */
static TGT void FN(rows_mm)(int64_t r0, int64_t r1, int64_t K, int64_t M, const T *A, const T *Bp, T *C,
                            const T *bias) {
    FN(mm)(r1 - r0, K, M, A + r0 * K, K, Bp, C + r0 * M, M, bias, 0);
}

/* C = Cin + A1 @ B1 + A2 @ B2, both A row-major. */
static TGT inline void FN(mm2)(int64_t n, int64_t M, int64_t K1, const T *A1, int64_t lda1, const T *B1, int64_t K2,
                               const T *A2, int64_t lda2, const T *B2, T *C, int64_t ldc, const T *Cin, int64_t ldcin) {
    struct gemm g = {n, M, K1, A1, lda1, 1, B1, K1 * NR, K2, A2, lda2, B2, K2 * NR, C, ldc, Cin, ldcin};
    FN(gemm)(&g);
}

/* C[r0:r1] (+)= A[:, r0:r1].T @ B (C the whole (lda, M) output) for A (K, lda) row-major
   and B (K, M) packed: a weight gradient, summed over the K packed rows of a sequence.  K
   is cut into blocks of AT_KC rows.  In a block, tiles of MR/2 rows of C by two panels of
   B (the last odd panel: MR rows by one) go down the rows r0..r1 while the two panels'
   block stays in L1; A is read where it lies, a row of A giving a tile its values side by
   side, lda apart from one k to the next. */
#define AT_TILE(r, np)                                                                                   \
    case r:                                                                                              \
        FN(tile)(r, np, kc, A + k0 * lda + i, 1, lda, B, K * NR, 0, 0, 0, 0, 0, Cq, ldc, first ? 0 : Cq, ldc, cols); \
        break;
static TGT void FN(gemm_at)(int64_t r0, int64_t r1, int64_t K, int64_t M, const T *A, int64_t lda, const T *Bp, T *C,
                            int64_t ldc, int accumulate) {
    const int64_t npan = (M + NR - 1) / NR;
    for (int64_t k0 = 0; k0 < K; k0 += AT_KC) {
        const int64_t kc = K - k0 < AT_KC ? K - k0 : AT_KC;
        const int first = !accumulate && k0 == 0;
        for (int64_t j = 0; j < npan; j += 2) {
            const int two = j + 2 <= npan;
            const int64_t rows = two ? MR / 2 : MR, cols = M - j * NR < 2 * NR ? M - j * NR : 2 * NR;
            const T *B = Bp + k0 * NR + j * K * NR;
            for (int64_t i = r0; i < r1; i += rows) {
                T *Cq = C + i * ldc + j * NR;
                const int64_t mr = r1 - i < rows ? r1 - i : rows;
                if (two)
                    switch (mr) {
                        AT_TILE(1, 2) AT_TILE(2, 2) AT_TILE(3, 2)
#if MR > 6
                        AT_TILE(4, 2) AT_TILE(5, 2) AT_TILE(6, 2)
#endif
                        default: break;
                    }
                else
                    switch (mr) {
                        AT_TILE(1, 1) AT_TILE(2, 1) AT_TILE(3, 1) AT_TILE(4, 1) AT_TILE(5, 1) AT_TILE(6, 1)
#if MR > 6
                        AT_TILE(7, 1) AT_TILE(8, 1) AT_TILE(9, 1) AT_TILE(10, 1) AT_TILE(11, 1) AT_TILE(12, 1)
#endif
                        default: break;
                    }
            }
        }
    }
}
#undef AT_TILE

/* Pack B (K, M) into columns col0.. of a panel array of Mtot columns: B[k][m] =
   src[k * sk + m * sm].  The segment that ends at Mtot also writes the zero padding, so
   several sources side by side (each its own call) make one packed matrix.  pack_at: rows
   k of a matrix whose panels are kstride rows long (dst at its row, K of them). */
static TGT void FN(pack_at)(const T *src, int64_t K, int64_t M, int64_t sk, int64_t sm, T *dst, int64_t col0,
                            int64_t Mtot, int64_t kstride) {
    for (int64_t k = 0; k < K; k++) {
        const T *row = src + k * sk;
        int64_t m = 0;
        while (sm == 1 && m < M) {  /* contiguous rows: a whole panel row at once where it fits */
            int64_t col = col0 + m;
            if (col % NR == 0 && m + NR <= M) {
                memcpy(dst + ((col / NR) * kstride + k) * NR, row + m, NR * sizeof(T));
                m += NR;
            } else {
                dst[((col / NR) * kstride + k) * NR + col % NR] = row[m];
                m++;
            }
        }
        for (; m < M; m++) {
            int64_t col = col0 + m;
            dst[((col / NR) * kstride + k) * NR + col % NR] = row[m * sm];
        }
        if (col0 + M == Mtot && Mtot % NR)
            memset(dst + ((Mtot / NR) * kstride + k) * NR + Mtot % NR, 0, (size_t)(NR - Mtot % NR) * sizeof(T));
    }
}

static TGT void FN(pack)(const T *src, int64_t K, int64_t M, int64_t sk, int64_t sm, T *dst, int64_t col0,
                         int64_t Mtot) {
    FN(pack_at)(src, K, M, sk, sm, dst, col0, Mtot, K);
}

/* ---------------------------------------------------------------- elementwise */
/* The vector width this variant was compiled for, from an expression that compiles only
   under its target: a build whose target attribute is not honoured fails here. */
static TGT __attribute__((unused)) int FN(width)(void) { return WIDTH_PROOF(); }

/* exp, tanh and sigmoid on whole vectors, our own (no libm or libmvec call, so nothing ties
   the extension to a C library's version, and every compiler and CPU vectorises the
   gates).  The error bounds are tested against NumPy in tests/test_vector_math.py.
   This file is compiled without -ffast-math: reassociation would undo the split of ln 2
   and the rounding constant below. */
#define IV FN(ivec)
static TGT inline __attribute__((always_inline)) V FN(select)(IV m, V a, V b) {
    return (V)((m & (IV)a) | (~m & (IV)b));
}

/* e^x = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts: n * LN2_HI is
   exact) with |r| <= ln(2)/2, and e^r by a polynomial: float, Cephes' minimax one of degree
   7; double, the Taylor series to r^13 (the first term left out is under 2^-56 of the sum).  2^n is
   applied in two halves, so that results under the smallest normal number round once, as
   denormals; x is first held to [XMIN, XMAX], beyond which the result is 0 or inf anyway
   (NaN passes: every comparison with it is false, and NaN * s is NaN). */
static TGT inline __attribute__((always_inline)) V FN(vexp)(V x) {
    const int f = sizeof(T) == 4;
    const T xmax = f ? (T)89.0f : (T)710.0, xmin = f ? (T)-104.0f : (T)-746.0;
    const T log2e = (T)1.4426950408889634, ln2_hi = f ? (T)0.693145751953125f : (T)6.93147180369123816490e-01,
            ln2_lo = f ? (T)1.428606765330187e-06f : (T)1.90821492927058770002e-10;
    const T round = f ? (T)12582912.0f : (T)6755399441055744.0;  /* 1.5 * 2^23, 1.5 * 2^52 */
#ifdef RECIP14  /* vminps, vmaxps: the same, the bound first so that a NaN x comes back as itself */
    if (f) {
        x = (V)_mm512_max_ps(_mm512_set1_ps((float)xmin), _mm512_min_ps(_mm512_set1_ps((float)xmax), (__m512)x));
    } else {
        x = (V)_mm512_max_pd(_mm512_set1_pd((double)xmin), _mm512_min_pd(_mm512_set1_pd((double)xmax), (__m512d)x));
    }
#else
    x = FN(select)((IV)(x > xmax), (V){0} + xmax, x);
    x = FN(select)((IV)(x < xmin), (V){0} + xmin, x);
#endif
    V t = x * log2e + round;  /* n in the low bits of t */
    V n = t - round;
    V r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    V p;
    if (f) {  /* Cephes' minimax polynomial for e^r - 1 - r on [-ln2/2, ln2/2] (about 1 ulp) */
        p = (V){0} + (T)1.9875691500e-4f;
        p = p * r + (T)1.3981999507e-3f;
        p = p * r + (T)8.3334519073e-3f;
        p = p * r + (T)4.1665795894e-2f;
        p = p * r + (T)1.6666665459e-1f;
        p = p * r + (T)5.0000001201e-1f;
        p = p * (r * r) + r + (T)1;
    } else {  /* the Taylor series to r^13 */
        p = (V){0} + (T)(1.0 / 6227020800.0);
        p = p * r + (T)(1.0 / 479001600.0);
        p = p * r + (T)(1.0 / 39916800.0);
        p = p * r + (T)(1.0 / 3628800.0);
        p = p * r + (T)(1.0 / 362880.0);
        p = p * r + (T)(1.0 / 40320.0);
        p = p * r + (T)(1.0 / 5040.0);
        p = p * r + (T)(1.0 / 720.0);
        p = p * r + (T)(1.0 / 120);
        p = p * r + (T)(1.0 / 24);
        p = p * r + (T)(1.0 / 6);
        p = p * r + (T)0.5;
        p = p * r + (T)1;
        p = p * r + (T)1;
    }
#ifdef RECIP14
    (void)t;  /* vscalef: p 2^n in one rounding, denormals and overflow included */
    return f ? (V)_mm512_scalef_ps((__m512)p, (__m512)n) : (V)_mm512_scalef_pd((__m512d)p, (__m512d)n);
#else
    const int mant = f ? 23 : 52, bias = f ? 127 : 1023;
    IV k = (IV)t - (IV)((V){0} + round);  /* n as an integer */
    IV k1 = k >> 1, k2 = k - k1;
    V s1 = (V)((k1 + bias) << mant), s2 = (V)((k2 + bias) << mant);
    return p * s1 * s2;
#endif
}

/* 1 / d for d in [1, 2] (or NaN): where RECIP14 is set (AVX-512), the 14-bit estimate and
   Newton steps (one for float, two for double: relative error under 2^-28 and 2^-56 before
   the last rounding), elsewhere a division. */
static TGT inline __attribute__((always_inline)) V FN(recip)(V d) {
#ifdef RECIP14
    V r = sizeof(T) == 4 ? (V)_mm512_rcp14_ps((__m512)d) : (V)_mm512_rcp14_pd((__m512d)d);
    r = r + r * ((T)1 - d * r);
    if (sizeof(T) == 8) r = r + r * ((T)1 - d * r);
    return r;
#else
    return (T)1 / d;
#endif
}

/* a < b ? p : q, lane by lane (AVX-512: a compare into a mask register, then a blend) */
static TGT inline __attribute__((always_inline)) V FN(where_lt)(V a, V b, V p, V q) {
#ifdef RECIP14
    if (sizeof(T) == 4)
        return (V)_mm512_mask_blend_ps(_mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_LT_OQ), (__m512)q, (__m512)p);
    return (V)_mm512_mask_blend_pd(_mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_LT_OQ), (__m512d)q, (__m512d)p);
#else
    return FN(select)((IV)(a < b), p, q);
#endif
}

/* tanh x = sign(x) (1 - 2 e / (1 + e)), e = e^(-2|x|); below |x| = 0.55 (float) or 0.25
   (double), where that subtraction would lose leading digits, its odd Taylor series to x^21
   instead (the first term left out is under 2^-33 and 2^-58 of the sum). */
static TGT inline __attribute__((always_inline)) V FN(vtanh)(V x) {
    const IV sign = ((IV){0} + 1) << (8 * sizeof(T) - 1);
    V ax = (V)((IV)x & ~sign);
    V e = FN(vexp)(-(ax + ax));
    V big = (T)1 - (T)2 * e * FN(recip)((T)1 + e);
    V a2 = ax * ax;
    V p = (V){0} + (T)(18888466084.0 / 194896477400625.0);
    p = p * a2 + (T)(-443861162.0 / 1856156927625.0);
    p = p * a2 + (T)(6404582.0 / 10854718875.0);
    p = p * a2 + (T)(-929569.0 / 638512875.0);
    p = p * a2 + (T)(21844.0 / 6081075.0);
    p = p * a2 + (T)(-1382.0 / 155925.0);
    p = p * a2 + (T)(62.0 / 2835.0);
    p = p * a2 + (T)(-17.0 / 315.0);
    p = p * a2 + (T)(2.0 / 15.0);
    p = p * a2 + (T)(-1.0 / 3.0);
    V small = ax + ax * a2 * p;
    const T cut = sizeof(T) == 4 ? (T)0.55f : (T)0.25;
    return (V)((IV)FN(where_lt)(ax, (V){0} + cut, small, big) | ((IV)x & sign));  /* tanh(-x) = -tanh(x) */
}

/* sigmoid x = 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: e^-|x| never overflows,
   so the result stays exact to the smallest numbers. */
static TGT inline __attribute__((always_inline)) V FN(vsigmoid)(V x) {
    const IV sign = ((IV){0} + 1) << (8 * sizeof(T) - 1);
    V e = FN(vexp)((V)((IV)x | sign));  /* e^-|x| */
    V r = FN(recip)((T)1 + e);
    return FN(where_lt)(x, (V){0}, e * r, r);
}

/* The function of a whole array: full vectors, then the rest through one vector. */
#define ARRAY_FN(name, body)                                                     \
    static TGT inline void FN(name)(T *restrict a, int64_t n) {                  \
        int64_t j = 0;                                                           \
        for (; j + VL <= n; j += VL) {                                           \
            V x;                                                                 \
            memcpy(&x, a + j, sizeof x);                                         \
            x = body;                                                            \
            memcpy(a + j, &x, sizeof x);                                         \
        }                                                                        \
        if (j < n) {                                                             \
            T tmp[VL] = {0};                                                     \
            memcpy(tmp, a + j, (size_t)(n - j) * sizeof(T));                     \
            V x;                                                                 \
            memcpy(&x, tmp, sizeof x);                                           \
            x = body;                                                            \
            memcpy(tmp, &x, sizeof x);                                           \
            memcpy(a + j, tmp, (size_t)(n - j) * sizeof(T));                     \
        }                                                                        \
    }
ARRAY_FN(sigmoid, FN(vsigmoid)(x))
ARRAY_FN(tanh_, FN(vtanh)(x))
ARRAY_FN(exp_, FN(vexp)(x))
#undef ARRAY_FN

/* For the tests: exp (0), tanh (1) or sigmoid (2) of an array, in place. */
static TGT void FN(apply)(int which, T *a, int64_t n) {
    if (which == 0) FN(exp_)(a, n);
    else if (which == 1) FN(tanh_)(a, n);
    else FN(sigmoid)(a, n);
}

/* SplitMix64's output from state z: Stafford's "Mix13" of it. */
static TGT inline uint64_t FN(mix64)(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

/* stack.bernoulli's 0/1 values (its docstring has the definition): out[i] = 1 where the
   i-th 32-bit word of SplitMix64 from state key (each output's low half first) is below t
   (t <= 2^32); words in pairs, so that every output is one vector lane's work. */
static TGT void FN(bernoulli)(T *restrict out, int64_t n, uint64_t key, uint64_t t) {
    const uint64_t golden = 0x9E3779B97F4A7C15u;
    for (int64_t j = 0; j < n / 2; j++) {
        const uint64_t z = FN(mix64)(key + (uint64_t)(j + 1) * golden);
        out[2 * j] = (T)((z & 0xFFFFFFFFu) < t);
        out[2 * j + 1] = (T)((z >> 32) < t);
    }
    if (n % 2) out[n - 1] = (T)((FN(mix64)(key + (uint64_t)(n / 2 + 1) * golden) & 0xFFFFFFFFu) < t);
}

/* An LSTM row's gate activations in place, units 0..w of each gate (H apart): i, f, o
   through sigmoid, g through tanh. */
static TGT inline void FN(lstm_gates)(T *g, int64_t H, int64_t w) {
    FN(sigmoid)(g, w);  /* i */
    FN(sigmoid)(g + H, w);  /* f */
    FN(tanh_)(g + 2 * H, w);  /* g */
    FN(sigmoid)(g + 3 * H, w);  /* o */
}

/* Zoneout of one row's w units: now = d prev + (1 - d) now. */
static TGT void FN(zone)(int64_t w, const T *restrict d, const T *restrict prev, T *restrict now) {
    for (int64_t j = 0; j < w; j++) now[j] = d[j] * prev[j] + ((T)1 - d[j]) * now[j];
}

/* The elementwise work of one batch row, one function each so that every array is a
   restrict parameter of its own (GCC then vectorises the loops; slices of one row's gates
   are disjoint ranges of H). */
static TGT void FN(lstm_cell_row)(int64_t H, const T *restrict i, const T *restrict f, const T *restrict g,
                              const T *restrict o, T *restrict c, T *restrict tc, T *restrict m) {
    for (int64_t j = 0; j < H; j++) tc[j] = c[j] = f[j] * c[j] + i[j] * g[j];  /* c' = f c + i g */
    FN(tanh_)(tc, H);
    for (int64_t j = 0; j < H; j++) m[j] = o[j] * tc[j];  /* o * tanh(c') */
}

static TGT void FN(gru_cell_row)(int64_t H, T *restrict r, T *restrict z, T *restrict n, const T *restrict xr,
                             const T *restrict xz, const T *restrict xn, const T *restrict bhn, T *restrict ghn,
                             const T *hin, T *hout) {
    for (int64_t j = 0; j < H; j++) r[j] += xr[j];
    for (int64_t j = 0; j < H; j++) z[j] += xz[j];
    FN(sigmoid)(r, H);
    FN(sigmoid)(z, H);
    for (int64_t j = 0; j < H; j++) {
        ghn[j] = n[j] + (bhn ? bhn[j] : (T)0);  /* W_hn h + b_hn */
        n[j] = xn[j] + r[j] * ghn[j];
    }
    FN(tanh_)(n, H);
    for (int64_t j = 0; j < H; j++) hout[j] = n[j] + z[j] * (hin[j] - n[j]);  /* h' = n + z (h - n) */
}

static TGT void FN(lstm_back_row)(int64_t H, const T *restrict i, const T *restrict f, const T *restrict g,
                              const T *restrict o, const T *restrict tc, const T *restrict cp,
                              const T *restrict dm, T *restrict di, T *restrict df, T *restrict dg,
                              T *restrict d_o, T *restrict dc) {
    for (int64_t j = 0; j < H; j++) {
        T dcj = dc[j] + dm[j] * o[j] * ((T)1 - tc[j] * tc[j]);  /* through tanh(c') */
        di[j] = dcj * g[j] * i[j] * ((T)1 - i[j]);  /* through the gates: s(1 - s), 1 - g^2 */
        df[j] = dcj * cp[j] * f[j] * ((T)1 - f[j]);
        dg[j] = dcj * i[j] * ((T)1 - g[j] * g[j]);
        d_o[j] = dm[j] * tc[j] * o[j] * ((T)1 - o[j]);
        dc[j] = dcj * f[j];  /* to c_prev */
    }
}

static TGT void FN(gru_back_row)(int64_t H, const T *restrict r, const T *restrict z, const T *restrict n,
                             const T *restrict ghn, const T *restrict hp, T *restrict dxr, T *restrict dxz,
                             T *restrict dxn, T *restrict dhr, T *restrict dhz, T *restrict dhn, T *restrict dh) {
    for (int64_t j = 0; j < H; j++) {
        T d = dh[j];
        T dn = d * ((T)1 - z[j]) * ((T)1 - n[j] * n[j]);  /* through tanh */
        T dz = d * (hp[j] - n[j]) * z[j] * ((T)1 - z[j]);
        T dr = dn * ghn[j] * r[j] * ((T)1 - r[j]);
        dxr[j] = dhr[j] = dr;
        dxz[j] = dhz[j] = dz;
        dxn[j] = dn;
        dhn[j] = dn * r[j];  /* the hidden part of n sits inside r * */
        dh[j] = d * z[j];  /* the direct path */
    }
}

/* The layer norms (the layer-norm kinds).  1 / sqrt(x) by Newton's iteration in double
   from a bit-level first guess (no libm call): three steps reach 1e-10 (float's results
   round from there), four double precision. */
static inline double FN(rsqrt)(double x) {
    union { double d; uint64_t u; } v = {x};
    v.u = 0x5fe6eb50c7b537a9ULL - (v.u >> 1);
    double y = v.d;
    for (int k = 0; k < (sizeof(T) == 4 ? 3 : 4); k++) y = y * (1.5 - 0.5 * x * y * y);
    return y;
}

/* Sums of a vector's lanes, in double, pairwise. */
static TGT inline double FN(lanes)(V v) {
    double t[VL];
    for (int k = 0; k < VL; k++) t[k] = (double)v[k];
    for (int w = VL / 2; w > 0; w /= 2)
        for (int k = 0; k < w; k++) t[k] += t[k + w];
    return t[0];
}

/* A vector of a row (mu NULL), or of its squared differences from *mu. */
static TGT inline __attribute__((always_inline)) V FN(row_term)(const T *p, const T *mu) {
    V v = FN(vload)(p);
    if (mu) {
        v -= *mu;
        v *= v;
    }
    return v;
}

/* A row's sum of a[j] (mu NULL) or of (a[j] - *mu)^2 over its whole vectors, in four
   vector accumulators (no addition waits for the one before), then in double; *j is
   left at the first element past them. */
static TGT inline double FN(row_sum)(int64_t n, const T *a, const T *mu, int64_t *j) {
    V acc[4] = {{0}, {0}, {0}, {0}};
    int64_t k = 0;
    for (; k + 4 * VL <= n; k += 4 * VL)
        for (int u = 0; u < 4; u++) acc[u] += FN(row_term)(a + k + u * VL, mu);
    for (; k + VL <= n; k += VL) acc[0] += FN(row_term)(a + k, mu);
    *j = k;
    return FN(lanes)((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

/* dst[0..w) = src[0..w), past the caches (non-temporal stores) where the instruction set
   has them: rows written now and read only much later, by another pass (NT_FENCE before
   another thread reads them). */
static TGT inline void FN(nt_copy)(T *restrict dst, const T *restrict src, int64_t w) {
#ifdef NT_STORE
    int64_t j = 0;
    for (; j < w && ((uintptr_t)(dst + j) % VB); j++) dst[j] = src[j];
    for (; j + VL <= w; j += VL) {
        V v;
        memcpy(&v, src + j, sizeof v);
        NT_STORE(dst + j, v);
    }
    for (; j < w; j++) dst[j] = src[j];
#else
    memcpy(dst, src, (size_t)w * sizeof(T));
#endif
}

/* One row in place: a = g * xhat + b, xhat = (a - mean) * inv, inv = 1 / sqrt(var + 1e-5)
   (biased variance; partial sums in vector lanes, added up in double); xhat and *inv kept
   where given (training). */
static TGT void FN(ln_row)(int64_t n, T *restrict a, const T *restrict g, const T *restrict b, T *restrict xhat,
                           T *inv_out) {
    int64_t j;
    double sum = FN(row_sum)(n, a, 0, &j);
    for (int64_t k = j; k < n; k++) sum += (double)a[k];
    const T mu = (T)(sum / (double)n);
    double sq = FN(row_sum)(n, a, &mu, &j);
    for (int64_t k = j; k < n; k++) sq += (double)(a[k] - mu) * (double)(a[k] - mu);
    const T inv = (T)FN(rsqrt)(sq / (double)n + 1e-5);
    if (inv_out) *inv_out = inv;
    if (xhat) {
        int64_t k = 0;
#ifdef NT_STORE
        if (!((uintptr_t)xhat % VB))  /* the record's row past the caches: backward reads it much later */
            for (; k + VL <= n; k += VL) {
                const V v = (FN(vload)(a + k) - mu) * inv;
                NT_STORE(xhat + k, v);
                const V o = FN(vload)(g + k) * v + FN(vload)(b + k);
                memcpy(a + k, &o, sizeof o);
            }
#endif
        for (int64_t j = k; j < n; j++) xhat[j] = (a[j] - mu) * inv;
        for (; k < n; k++) a[k] = g[k] * xhat[k] + b[k];
    } else {
        for (int64_t k = 0; k < n; k++) a[k] = g[k] * ((a[k] - mu) * inv) + b[k];
    }
}

/* The gradient of a normalised row from that of its output dy (out may be dy):
   inv * (dy g - mean(dy g) - xhat mean(dy g xhat)). */
static TGT void FN(ln_back_row)(int64_t n, const T *dy, const T *restrict xhat, T inv, const T *restrict g, T *out) {
    V v1[2] = {{0}, {0}}, v2[2] = {{0}, {0}};  /* (two accumulators each: no addition waits for the one before) */
    int64_t j = 0;
    for (; j + 2 * VL <= n; j += 2 * VL)
        for (int u = 0; u < 2; u++) {
            const V d = FN(vload)(dy + j + u * VL) * FN(vload)(g + j + u * VL);
            v1[u] += d;
            v2[u] += d * FN(vload)(xhat + j + u * VL);
        }
    for (; j + VL <= n; j += VL) {
        const V d = FN(vload)(dy + j) * FN(vload)(g + j);
        v1[0] += d;
        v2[0] += d * FN(vload)(xhat + j);
    }
    double s1 = FN(lanes)(v1[0] + v1[1]), s2 = FN(lanes)(v2[0] + v2[1]);
    for (int64_t k = j; k < n; k++) {
        s1 += (double)(dy[k] * g[k]);
        s2 += (double)(dy[k] * g[k]) * (double)xhat[k];
    }
    const T m1 = (T)(s1 / (double)n), m2 = (T)(s2 / (double)n);
    for (j = 0; j + VL <= n; j += VL) {  /* (vector by vector: out may be dy) */
        const V o = inv * (FN(vload)(dy + j) * FN(vload)(g + j) - m1 - FN(vload)(xhat + j) * m2);
        memcpy(out + j, &o, sizeof o);
    }
    for (; j < n; j++) out[j] = inv * (dy[j] * g[j] - m1 - xhat[j] * m2);
}

/* The layer-norm LSTM's cell, backwards: dcn = d(c_t) (kept for the gains' sums), through
   LN_c into dc, then the gates' gradients dz (i, f, g, o) and dc to c_prev. */
static TGT void FN(ln_lstm_back_row)(int64_t H, const T *restrict gt, const T *restrict tc, const T *restrict cp,
                                     const T *restrict dm, const T *restrict chat, T inv_c, const T *restrict gc,
                                     T *restrict dz, T *restrict dcn, T *restrict dc) {
    const T *i = gt, *f = gt + H, *g = gt + 2 * H, *o = gt + 3 * H;
    for (int64_t j = 0; j < H; j++) dcn[j] = dc[j] + dm[j] * o[j] * ((T)1 - tc[j] * tc[j]);  /* through tanh(c_t) */
    FN(ln_back_row)(H, dcn, chat, inv_c, gc, dc);  /* through LN_c */
    for (int64_t j = 0; j < H; j++) {
        const T d = dc[j];
        dz[j] = d * g[j] * i[j] * ((T)1 - i[j]);
        dz[H + j] = d * cp[j] * f[j] * ((T)1 - f[j]);
        dz[2 * H + j] = d * i[j] * ((T)1 - g[j] * g[j]);
        dz[3 * H + j] = dm[j] * tc[j] * o[j] * ((T)1 - o[j]);
        dc[j] = d * f[j];  /* to c_prev */
    }
}

/* C (n, M) = Cin + A (n, K) @ B a panel at a time, all rows under each panel: a product of
   many rows (the input projection of every step) reads each panel of B once. */
static TGT void FN(mm_cols)(int64_t n, int64_t K, int64_t M, const T *A, int64_t lda, const T *Bp, T *C, int64_t ldc,
                        const T *Cin, int64_t ldcin) {
    if (n <= MR) {
        FN(mm)(n, K, M, A, lda, Bp, C, ldc, Cin, ldcin);
        return;
    }
    for (int64_t j = 0; j * NR < M; j++) {
        const int64_t cols = M - j * NR < NR ? M - j * NR : NR;
        FN(mm)(n, K, cols, A, lda, Bp + j * K * NR, C + j * NR, ldc, Cin ? Cin + j * NR : 0, ldcin);
    }
}

#define PAN(M) (((M) + NR - 1) / NR * NR)

/* Read n elements of p reps times with vector loads (n a multiple of 4 vectors): the
   bandwidth probe of the benchmarks, the limit a matrix-vector step meets. */
static TGT __attribute__((unused)) T FN(read)(const T *p, int64_t n, int64_t reps) {
    V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (int64_t r = 0; r < reps; r++)
        for (int64_t i = 0; i + 4 * VL <= n; i += 4 * VL) {
            a0 += FN(vload)(p + i);
            a1 += FN(vload)(p + i + VL);
            a2 += FN(vload)(p + i + 2 * VL);
            a3 += FN(vload)(p + i + 3 * VL);
        }
    a0 += a1 + a2 + a3;
    T sum = 0;
    for (int j = 0; j < VL; j++) sum += a0[j];
    return sum;
}

/* The gate columns of part p: C (n, G*H) (+)= A @ B_p, B_p the part's packed weights.  One
   part (no split) covers all G*H columns in one product; a part of a split covers units
   a..a+w of each gate, packed gate by gate, so it runs one product per gate.  With `back`
   the products and their tiles run in the opposite order: a loop whose weights do not
   quite fit in the cache reads them forwards at one step and backwards at the next, so
   that the last ones read are the first ones needed, still in the cache (read in one
   direction only, each step would find none of them there). */
static TGT inline void FN(part_mm)(const struct scan *s, int64_t p, int64_t n, int64_t K, const T *A, int64_t lda,
                               const T *Bp, T *C, const T *Cin, int64_t ldcin, int back) {
    const int64_t GH = s->G * s->H;
    if (n > MR) {  /* many rows: a panel at a time, each read once */
        if (s->parts == 1) {
            FN(mm_cols)(n, K, GH, A, lda, Bp, C, GH, Cin, ldcin);
            return;
        }
        const int64_t a = s->units[p], w = s->units[p + 1] - a;
        for (int64_t g = 0; g < s->G; g++)
            FN(mm_cols)(n, K, w, A, lda, Bp + g * K * PAN(w), C + g * s->H + a, GH, Cin ? Cin + g * s->H + a : 0,
                        ldcin);
        return;
    }
    const int64_t a = s->parts == 1 ? 0 : s->units[p], w = s->parts == 1 ? GH : s->units[p + 1] - a;
    const int64_t G = s->parts == 1 ? 1 : s->G;
    for (int64_t q = 0; q < G; q++) {  /* (the tiles in the opposite order: each column's sum is the same) */
        const int64_t g = back ? G - 1 - q : q, at = g * s->H + a;
        struct gemm prod = {n, w, K, A, lda, 1, Bp + g * K * PAN(w), K * NR, 0, 0, 0, 0, 0, C + at, GH,
                            Cin ? Cin + at : 0, ldcin, back};
        FN(gemm)(&prod);
    }
}

/* Rows quantized for a quantized product: data (ld elements apart), and for int8 each row's
   scale and zero point. */
struct FN(qrows) {
    const void *q;
    int64_t ld;
    const float *s;
    const int32_t *z;
};

/* The quantized products of a weight whose columns are `nblk` blocks (one gate each, `stride`
   columns apart) of w columns from column a, each block its own panels: C = Cin + A_q @ B. */
static TGT void FN(qblocks)(const struct scan *s, int64_t nblk, int64_t stride, int64_t a, int64_t w, int64_t n,
                            int64_t K, const struct FN(qrows) *A, const void *B, const float *ws, const int32_t *wu,
                            float *C, int64_t ldc, const float *Cin, int64_t ldcin, int back) {
    const int64_t esz = q_esize(s->wq), Kp = q_kpad(K, s->wq);
    for (int64_t q = 0; q < nblk; q++) {  /* (back: blocks and tiles last to first, as part_mm) */
        const int64_t g = back ? nblk - 1 - q : q, at = g * stride + a;
        struct qmm m = {n, Kp, w, A->q, A->ld, A->s, A->z, (const char *)B + g * Kp * QPAD(w) * esz,
                        ws ? ws + at : 0, wu ? wu + at : 0, C + at, ldc, Cin ? Cin + at : 0, ldcin, 0, back};
        s->qmm(&m);
    }
}

/* Part p's gate columns of a quantized W_ih (ih) or W_hh: C (n, G*H) = Cin + A_q @ B_p. */
static TGT inline void FN(qpart)(const struct scan *s, int ih, int64_t p, int64_t n, const struct FN(qrows) *A,
                                 float *C, const float *Cin, int64_t ldcin, int back) {
    const int64_t GH = s->G * s->H, esz = q_esize(s->wq);
    const int one = s->parts == 1;
    const void *B = ih ? (const char *)s->wih + s->wih_at[p] * esz : (const char *)s->whh + s->whh_at[p] * esz;
    FN(qblocks)(s, one ? 1 : s->G, s->H, one ? 0 : s->units[p], one ? GH : s->units[p + 1] - s->units[p], n,
                ih ? s->Hin : s->P, A, B, ih ? s->sih : s->shh, ih ? s->uih : s->uhh, C, GH, Cin, ldcin, back);
}

/* Rows of x (n, K) quantized into the given buffers (int8: with scales and zero points). */
static TGT inline struct FN(qrows) FN(quantize)(const struct scan *s, int64_t n, int64_t K, const float *x,
                                                int64_t ldx, void *q, int64_t ldq, float *sc, int32_t *zp) {
    if (s->wq == WQ_INT8)
        quant_rows_u8(n, K, q_kpad(K, s->wq), x, ldx, (uint8_t *)q, ldq, sc, zp);
    else
        quant_rows_bf16(n, K, q_kpad(K, s->wq), x, ldx, (uint16_t *)q, ldq);
    struct FN(qrows) r = {q, ldq, sc, zp};
    return r;
}

/* n rows of K values quantized into the rows from `at` of the input's buffer (qx: input,
   K = Hin) or the state's (qh). */
static TGT inline struct FN(qrows) FN(quantize_at)(const struct scan *s, int input, int64_t at, int64_t n, int64_t K,
                                                   const float *x, int64_t ldx) {
    const int64_t ld = input ? s->kx : s->kh;
    char *q = (char *)(input ? s->qx : s->qh) + at * ld * q_esize(s->wq);
    return FN(quantize)(s, n, K, x, ldx, q, ld, (input ? s->qxs : s->qhs) + at, (input ? s->qxz : s->qhz) + at);
}

/* This thread's slot in the state's (or, projected in the loop, the input's) quantized rows:
   its first part's N rows, or a row range's own rows. */
static TGT inline int64_t FN(qslot)(const struct scan *s, int64_t p0) { return s->parts > 1 ? p0 * s->N : s->r0; }

/* Every packed input row, quantized before the loop. */
static TGT inline struct FN(qrows) FN(qx_all)(const struct scan *s) {
    const struct FN(qrows) all = {s->qx, s->kx, s->qxs, s->qxz};
    return all;
}

/* A quantized loop's input projection before the loop: thread me quantizes its share of
   the rows, then (every row quantized) each part's columns of every row, bias added. */
static TGT void FN(qproject)(const struct scan *s, int me, int nthr, int64_t p0, int64_t p1, int late) {
    const int64_t r0 = s->rows * me / nthr, r1 = s->rows * (me + 1) / nthr;
    FN(quantize_at)(s, 1, r0, r1 - r0, s->Hin, (const float *)s->x + r0 * s->Hin, s->Hin);
    team_barrier(s->team, me, nthr);
    if (late) return;  /* (a stream's odd call projects after h @ W_hh.T: see step_part) */
    const struct FN(qrows) all = FN(qx_all)(s);
    for (int64_t p = p0; p < p1; p++)
        FN(qpart)(s, 1, p, s->rows, &all, (float *)s->xproj, (const float *)s->bias, 0, 0);
}

/* One step of a layer-norm kind over n rows (whole rows, one part): LN_hh(h @ W_hh.T) plus
   the normalised input side (xp, or LN_ih(x @ W_ih.T) made here for these rows), then the
   gates; the LSTM's new cell state normalised (LN_c) is the one carried. */
static TGT void FN(ln_step)(const struct scan *s, int64_t n, int64_t row, int64_t rr, const T *hc, const T *hw,
                            T *hn, int back, T *gates, const T *xp) {
    const int64_t H = s->H, P = s->P, GH = s->G * H, Hin = s->Hin;
    const T *w = (const T *)s->lnw;  /* g_ih, b_ih, g_hh, b_hh, (g_c, b_c) */
    const int lstm = s->kind == KIND_LN_LSTM;
    const int64_t R = LNR_W(lstm, GH, H, sizeof(T)), C0 = LNR_C(GH, sizeof(T));  /* a row's records, chat's start */
    if (!xp) {  /* in the loop: LN_ih(x @ W_ih.T) for this step's rows */
        T *gxs = (T *)s->gxs + rr * GH;
        FN(mm)(n, Hin, GH, (const T *)s->x + row * Hin, Hin, (const T *)s->wih, gxs, GH, 0, 0);
        for (int64_t r = 0; r < n; r++) {
            T *lx = s->lnx ? (T *)s->lnx + (row + r) * LNX_W(GH, sizeof(T)) : 0;
            FN(ln_row)(GH, gxs + r * GH, w, w + GH, lx, lx ? lx + GH : 0);
        }
        xp = gxs;
    }
    FN(part_mm)(s, 0, n, P, hw, P, (const T *)s->whh, gates, 0, 0, back);  /* h @ W_hh.T */
    for (int64_t r = 0; r < n; r++) {
        T *g = gates + r * GH, *rec = s->lnr ? (T *)s->lnr + (row + r) * R : 0;
        const T *x = xp + r * GH;
        FN(ln_row)(GH, g, w + 2 * GH, w + 3 * GH, rec, rec ? rec + GH : 0);  /* LN_hh */
        if (!lstm) {  /* the GRU's cell on b = LN_hh(...) and a = LN_ih(...): its n part keeps b_n */
            T *ghn = (T *)s->ghn + (s->train ? row + r : rr + r) * H;
            FN(gru_cell_row)(H, g, g + H, g + 2 * H, x, x + H, x + 2 * H, 0, ghn, hc + r * P, hn + r * P);
            continue;
        }
        for (int64_t j = 0; j < GH; j++) g[j] += x[j];
        FN(lstm_gates)(g, H, H);
        T *c = (T *)s->c + (rr + r) * H, *tc = (T *)s->tc + (s->train ? row + r : rr + r) * H;
        T *cold = s->train ? (T *)s->cprev + (row + r) * H : s->zc ? (T *)s->zsave + (rr + r) * (P + H) + P : 0;
        if (cold && s->train && !s->zc) FN(nt_copy)(cold, c, H);  /* (zoneout reads it again below) */
        else if (cold) memcpy(cold, c, H * sizeof(T));
        for (int64_t j = 0; j < H; j++) c[j] = g[H + j] * c[j] + g[j] * g[2 * H + j];  /* f c + i g */
        FN(ln_row)(H, c, w + 4 * GH, w + 4 * GH + H, rec ? rec + C0 : 0, rec ? rec + C0 + H : 0);
        T *th = s->train ? g : tc;  /* tanh(c_t); training makes it in i's place, then stores it past the caches */
        memcpy(th, c, H * sizeof(T));
        FN(tanh_)(th, H);
        T *m = s->whr ? (T *)s->m + (s->train ? row + r : rr + r) * H : hn + r * P;
        for (int64_t j = 0; j < H; j++) m[j] = g[3 * H + j] * th[j];  /* o * tanh(c_t) */
        if (th != tc) FN(nt_copy)(tc, th, H);
        if (s->zc) FN(zone)(H, (const T *)s->zc + (s->train ? row + r : rr + r) * H, cold, c);
        if (s->cs) memcpy((T *)s->cs + (row + r) * H, c, H * sizeof(T));  /* return_states */
    }
}

/* An LSTM's step backwards from dh: with a projection dm = dh @ W_hr (dh kept in dproj for
   W_hr's gradient; *ldm becomes H), else dh itself. */
static TGT const T *FN(back_through_projection)(const struct scan *s, int64_t n, int64_t row, const T *dhr,
                                                int64_t *ldm) {
    if (!s->whr) return dhr;
    const int64_t H = s->H, P = s->P;
    memcpy((T *)s->dproj + row * P, dhr, n * P * sizeof(T));
    T *scratch = (T *)s->scratch + s->r0 * H;
    FN(mm)(n, P, H, dhr, P, (const T *)s->whr, scratch, H, 0, 0);
    *ldm = H;
    return scratch;
}

/* A row's share of the norms' gain and shift gradients (lnsum, see struct scan): da the
   gradient of the input norm's output, db the hidden norm's, dcn the cell norm's (LSTM). */
static TGT void FN(ln_sums)(int64_t GH, int64_t H, T *restrict acc, const T *restrict da, const T *restrict xhat,
                            const T *restrict db, const T *restrict hhat, const T *restrict dcn,
                            const T *restrict chat) {
    for (int64_t j = 0; j < GH; j++) {
        acc[j] += da[j] * xhat[j];
        acc[GH + j] += da[j];
        acc[2 * GH + j] += db[j] * hhat[j];
        acc[3 * GH + j] += db[j];
    }
    if (dcn)
        for (int64_t j = 0; j < H; j++) {
            acc[4 * GH + j] += dcn[j] * chat[j];
            acc[4 * GH + H + j] += dcn[j];
        }
}

/* The gradient reaching h_{t-1} through W_hh from dG (n, G*H), the gradient of h @ W_hh.T:
   dhr (+)= dG @ W_hh.  With recurrent dropout times the mask (what a GRU already put in dhr,
   z dh, is not masked), and the tape's h_{t-1} rows become the rows that met W_hh. */
static TGT void FN(to_hprev)(const struct scan *s, int64_t n, int64_t row, const T *dG, T *dhr, int add) {
    const int64_t GH = s->G * s->H, P = s->P;
    if (!s->rmask) {
        FN(mm)(n, GH, P, dG, GH, (const T *)s->whh, dhr, P, add ? dhr : 0, P);
        return;
    }
    T *t = (T *)s->rbuf + s->r0 * P, *hp = (T *)s->hprev + row * P;
    const T *mk = (const T *)s->rmask + s->r0 * P;
    FN(mm)(n, GH, P, dG, GH, (const T *)s->whh, t, P, 0, 0);
    for (int64_t i = 0; i < n * P; i++) {
        dhr[i] = add ? dhr[i] + t[i] * mk[i] : t[i] * mk[i];
        hp[i] *= mk[i];
    }
}

/* Zoneout backwards over n rows of w units: keep = d * g (it skips the step), g *= 1 - d. */
static TGT void FN(unzone)(int64_t n, int64_t w, const T *restrict d, T *restrict g, T *restrict keep, int64_t ldk) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < w; j++) {
            keep[r * ldk + j] = d[r * w + j] * g[r * w + j];
            g[r * w + j] *= (T)1 - d[r * w + j];
        }
}

/* A layer-norm kind's gate activations of one row made again from its norms' records (xhat
   of the input side's, hhat of the hidden side's) as ln_step made them: a training tape
   keeps no gates (2 KB a row at H = 128), and this arithmetic costs about what reading them
   back did. */
static TGT void FN(ln_acts)(const struct scan *s, const T *restrict xhat, const T *restrict hhat, T *restrict g) {
    const int64_t H = s->H, GH = s->G * H;
    const T *w = (const T *)s->lnw;
    const T *restrict gi = w, *restrict bi = w + GH, *restrict gh = w + 2 * GH, *restrict bh = w + 3 * GH;
    if (s->kind == KIND_LN_LSTM) {
        for (int64_t j = 0; j < GH; j++) g[j] = (gh[j] * hhat[j] + bh[j]) + (gi[j] * xhat[j] + bi[j]);
        FN(lstm_gates)(g, H, H);
        return;
    }
    for (int64_t j = 0; j < 2 * H; j++) g[j] = (gh[j] * hhat[j] + bh[j]) + (gi[j] * xhat[j] + bi[j]);
    FN(sigmoid)(g, 2 * H);  /* r, z */
    for (int64_t j = 2 * H; j < GH; j++)  /* n = tanh(a_n + r b_n) */
        g[j] = (gi[j] * xhat[j] + bi[j]) + g[j - 2 * H] * ((gh[j] * hhat[j] + bh[j]) + (T)0);
    FN(tanh_)(g + 2 * H, H);
}

/* A layer-norm kind's rows of the gradients of x @ W_ih.T (which = 0) and h @ W_hh.T (1) for
   this range's step: scratch's third and fourth parts, reused at every step (written where
   they are already in the cache; backward then copies them past the caches into dgx and
   dgh for the weight gradients' products, so that no step waits for their lines). */
static TGT inline T *FN(ln_hot)(const struct scan *s, int which) {
    return (T *)s->scratch + 2 * s->N * s->H + (which * s->N + s->r0) * s->G * s->H;
}

/* A layer-norm kind's step backwards (see ln_step): the gates' gradients, then through the
   hidden-side norm (the gradient of h @ W_hh.T, into dgh's rows) and the input-side norm
   (that of x @ W_ih.T, into dgx's); the gains' and shifts' sums into lnsum; dh (+)= dgh @ W_hh. */
static TGT void FN(ln_back)(const struct scan *s, int64_t n, int64_t row, T *dhr, T *dcr, T *dgx, T *dgh) {
    const int64_t H = s->H, P = s->P, GH = s->G * H;
    const T *w = (const T *)s->lnw;
    const int lstm = s->kind == KIND_LN_LSTM;
    const int64_t R = LNR_W(lstm, GH, H, sizeof(T)), C0 = LNR_C(GH, sizeof(T));
    T *acc = (T *)s->lnsum + s->rix * (4 * GH + (lstm ? 2 * H : 0));
    T *dcn = lstm ? (T *)s->scratch + (s->N + s->r0) * H : 0;  /* a row's d(c_t): scratch's second half */
    T *gates = (T *)s->gates + s->r0 * GH;  /* this range's rows of the work array */
    int64_t ldm = P;
    const T *dm = lstm ? FN(back_through_projection)(s, n, row, dhr, &ldm) : dhr;
    for (int64_t r = 0; r < n; r++) {
        const T *rec = (const T *)s->lnr + (row + r) * R;
        const T *lx = (const T *)s->lnx + (row + r) * LNX_W(GH, sizeof(T));
        T *g = gates + r * GH;
        FN(ln_acts)(s, lx, rec, g);
        T *dx_ = dgx + r * GH, *dh_ = dgh + r * GH;
        if (lstm) {
            FN(ln_lstm_back_row)(H, g, (const T *)s->tc + (row + r) * H, (const T *)s->cprev + (row + r) * H,
                                 dm + r * ldm, rec + C0, rec[C0 + H], w + 4 * GH, dx_, dcn, dcr + r * H);
            FN(ln_sums)(GH, H, acc, dx_, lx, dx_, rec, dcn, rec + C0);
            FN(ln_back_row)(GH, dx_, rec, rec[GH], w + 2 * GH, dh_);  /* the gates' gradient through LN_hh */
        } else {
            FN(gru_back_row)(H, g, g + H, g + 2 * H, (const T *)s->ghn + (row + r) * H,
                             (const T *)s->hprev + (row + r) * P, dx_, dx_ + H, dx_ + 2 * H, dh_, dh_ + H,
                             dh_ + 2 * H, dhr + r * P);
            FN(ln_sums)(GH, H, acc, dx_, lx, dh_, rec, 0, 0);
            FN(ln_back_row)(GH, dh_, rec, rec[GH], w + 2 * GH, dh_);  /* through LN_hh */
        }
        FN(ln_back_row)(GH, dx_, lx, lx[GH], w, dx_);  /* through LN_ih */
    }
    FN(to_hprev)(s, n, row, dgh, dhr, !lstm);  /* to h_prev (GRU: plus z dh) */
}

/* Backward's weight gradients inside the loop (see struct scan's dw): does the kind keep a
   hidden side's gradient of its own (a GRU's, a layer-norm kind's), and this range's block
   rows of the input side's gradient (side 0) or of the hidden side's (1). */
#define SEP_DGH(s) (KIND_NORMED((s)->kind) || KIND_GRU_GATES((s)->kind))
#define DW_COLS(s) ((s)->Hin + (s)->P + (SEP_DGH(s) ? 2 : 1) * (s)->ones)  /* a range's columns of dw */
static TGT inline T *FN(block_rows)(const struct scan *s, int side) {
    const int64_t cap = s->kblock * (s->r1 - s->r0);
    return (T *)s->blk + (s->r0 * s->kblock * (SEP_DGH(s) ? 2 : 1) + side * cap) * s->G * s->H;
}

/* The weight gradients of backward's steps q0 down to q1, whose K gradient rows are in the
   block: those rows' x and h_{t-1} packed (beside a column of ones for the biases), then
   dw[rix] (+)= the rows.T @ them (first: =). */
static TGT void FN(block_grads)(const struct scan *s, int64_t q0, int64_t q1, int64_t K, int first) {
    static const T one = 1;
    const int64_t GH = s->G * s->H, Hin = s->Hin, P = s->P, nb = s->ones, sep = SEP_DGH(s);
    const int64_t mx = sep ? Hin + nb : Hin + P + nb, mh = P + nb;  /* the columns of each product */
    T *bx = (T *)s->bpk + s->r0 * s->kblock * (PAN(Hin + nb) + PAN(mh)), *bh = bx + PAN(mx) * K;
    for (int64_t q = q0, k = 0; q >= q1; q--) {
        const int64_t t = s->reverse ? s->steps - 1 - q : q, row = s->offsets[t] + s->r0;
        const int64_t n = (s->batch_sizes[t] < s->r1 ? s->batch_sizes[t] : s->r1) - s->r0;
        if (n <= 0) continue;
        T *ph = sep ? bh + k * NR : bx + k * NR;  /* where h_{t-1}'s rows go, from column hc */
        const int64_t hc = sep ? 0 : Hin;
        FN(pack_at)((const T *)s->x + row * Hin, n, Hin, Hin, 1, bx + k * NR, 0, mx, K);
        FN(pack_at)((const T *)s->hprev + row * P, n, P, P, 1, ph, hc, sep ? mh : mx, K);
        if (nb) FN(pack_at)(&one, n, 1, 0, 0, bx + k * NR, mx - 1, mx, K);
        if (nb && sep) FN(pack_at)(&one, n, 1, 0, 0, ph, mh - 1, mh, K);
        k += n;
    }
    T *dw = (T *)s->dw + s->rix * GH * DW_COLS(s);
    FN(gemm_at)(0, GH, K, mx, FN(block_rows)(s, 0), GH, bx, dw, DW_COLS(s), !first);
    if (sep) FN(gemm_at)(0, GH, K, mh, FN(block_rows)(s, 1), GH, bh, dw + mx, DW_COLS(s), !first);
}

/* One step of part p over n rows: its gate columns from h (hc) and the projected input,
   then the cell's elementwise work on units a..b, writing the new state's units to hn
   (or, with a projection, m).  row: the first packed row of the step; rr: its batch row. */
static TGT inline void FN(step_part)(const struct scan *s, int64_t p, int64_t n, int64_t row, int64_t rr, const T *hc,
                                 const T *hw, T *hn, int back, int late, const struct FN(qrows) *qh,
                                 const struct FN(qrows) *qx) {
    const int64_t H = s->H, P = s->P, GH = s->G * H, Hin = s->Hin;
    const int64_t a = s->units[p], w = s->units[p + 1] - a;
    const T *whh = (const T *)s->whh + s->whh_at[p];
    const T *x = (const T *)s->x + row * Hin, *bias = (const T *)s->bias;
    /* (the layer-norm kinds keep no gates on the tape: backward makes them again, ln_acts) */
    T *gates = s->train && !KIND_NORMED(s->kind) ? (T *)s->gates + row * GH : (T *)s->gates + rr * GH;
    T *xp = s->xproj ? (T *)s->xproj + row * GH : 0;
    if (KIND_NORMED(s->kind)) {
        FN(ln_step)(s, n, row, rr, hc, hw, hn, back, gates, xp);
        return;
    }
    if (late) {  /* h @ W_hh.T, then the projection, both backwards; added as the tile adds it */
        if (qh) {  /* quantized: x @ W_ih.T + b, then h's product added to it (a + b = b + a: the same bits) */
            const struct FN(qrows) all = FN(qx_all)(s);
            FN(qpart)(s, 0, p, n, qh, (float *)gates, 0, 0, 1);
            FN(qpart)(s, 1, p, n, &all, (float *)xp, (const float *)bias, 0, 1);
        } else {
            FN(part_mm)(s, p, n, P, hw, P, whh, gates, 0, 0, 1);
            FN(part_mm)(s, p, n, Hin, x, Hin, (const T *)s->wih + s->wih_at[p], xp, bias, 0, 1);
        }
        if (s->kind != KIND_GRU)
            for (int64_t r = 0; r < n; r++)
                for (int64_t g = 0; g < s->G; g++)
                    for (int64_t j = 0; j < w; j++) gates[r * GH + g * H + a + j] += xp[r * GH + g * H + a + j];
    }
    if (s->kind == KIND_GRU) {
        const T *gx = xp;
        if (!gx && qx) {  /* in the loop, quantized: this part's columns of x @ W_ih.T + b */
            T *gxs = (T *)s->gxs + rr * GH;
            FN(qpart)(s, 1, p, n, qx, (float *)gxs, (const float *)bias, 0, back);
            gx = gxs;
        } else if (!gx) {  /* in the loop: x @ W_ih.T + b for this step's rows */
            T *gxs = (T *)s->gxs + rr * GH;
            FN(mm)(n, Hin, GH, x, Hin, (const T *)s->wih, gxs, GH, bias, 0);
            gx = gxs;
        }
        if (qh && !late) FN(qpart)(s, 0, p, n, qh, (float *)gates, 0, 0, back);  /* h @ W_hh.T, quantized */
        else if (!late) FN(part_mm)(s, p, n, P, hw, P, whh, gates, 0, 0, back);  /* h @ W_hh.T */
        T *ghn = s->train ? (T *)s->ghn + row * H : (T *)s->ghn + rr * H;
        const T *bhn = (const T *)s->bhn;
        for (int64_t r = 0; r < n; r++) {
            T *g = gates + r * GH + a;
            const T *xr = gx + r * GH + a;
            FN(gru_cell_row)(w, g, g + H, g + 2 * H, xr, xr + H, xr + 2 * H, bhn ? bhn + a : 0, ghn + r * H + a,
                             hc + r * P + a, hn + r * P + a);
        }
        return;
    }
    if (qh && qx) {  /* in the loop, quantized: x @ W_ih.T + b, then + h @ W_hh.T */
        FN(qpart)(s, 1, p, n, qx, (float *)gates, (const float *)bias, 0, back);
        FN(qpart)(s, 0, p, n, qh, (float *)gates, (const float *)gates, GH, back);
    } else if (qh && !late)
        FN(qpart)(s, 0, p, n, qh, (float *)gates, (const float *)xp, GH, back);  /* projected x + h @ W_hh.T */
    else if (!late && xp)
        FN(part_mm)(s, p, n, P, hw, P, whh, gates, xp, GH, back);  /* projected x + h @ W_hh.T */
    else if (!late)  /* x @ W_ih.T + h @ W_hh.T + b, one pass over the tile */
        FN(mm2)(n, GH, Hin, x, Hin, (const T *)s->wih, P, hw, P, whh, gates, GH, bias, 0);
    if (s->kind == KIND_LSTM) {
        T *c = (T *)s->c + rr * H + a;
        T *tc = s->train ? (T *)s->tc + row * H + a : (T *)s->tc + rr * H + a;
        /* the cell state before the step: the tape's, or zoneout's copy in inference */
        T *cprev = s->train ? (T *)s->cprev + row * H + a : s->zc ? (T *)s->zsave + rr * (P + H) + P + a : 0;
        const int64_t ldp = s->train ? H : P + H;
        const T *zc = s->zc ? (const T *)s->zc + (s->train ? row : rr) * H + a : 0;
        T *m = s->whr ? (s->train ? (T *)s->m + row * H + a : (T *)s->m + rr * H + a) : 0;
        for (int64_t r = 0; r < n; r++) {
            T *g = gates + r * GH + a;
            FN(lstm_gates)(g, H, w);
            if (cprev) memcpy(cprev + r * ldp, c + r * H, w * sizeof(T));
            /* o * tanh(c') is the new state, or what the projection multiplies */
            FN(lstm_cell_row)(w, g, g + H, g + 2 * H, g + 3 * H, c + r * H, tc + r * H, m ? m + r * H : hn + r * P + a);
            if (zc) FN(zone)(w, zc + r * H, cprev + r * ldp, c + r * H);  /* zoneout */
            if (s->cs) memcpy((T *)s->cs + (row + r) * H + a, c + r * H, w * sizeof(T));  /* return_states */
        }
        return;
    }
    for (int64_t r = 0; r < n; r++) {
        T *g = gates + r * GH + a, *o = hn + r * P + a;
        if (s->kind == KIND_RNN_TANH) FN(tanh_)(g, w);
        else for (int64_t j = 0; j < w; j++) g[j] = g[j] > (T)0 ? g[j] : (g[j] == g[j] ? (T)0 : g[j]);
        memcpy(o, g, w * sizeof(T));
    }
}

/* One layer-direction over all steps, or thread `me` of `nthr`'s share of it: parts
   me*K/nthr .. (me+1)*K/nthr - 1 of the K parts the hidden units are split into (see
   struct scan in _native.c).  With K > 1 the state a step reads (hbuf[q % 2]) is not the
   one it writes (hbuf[(q + 1) % 2]), so the threads meet once per step (a projected LSTM:
   twice, as the projection needs every unit's m). */
static TGT void FN(forward)(const struct scan *s, int me, int nthr) {
    const int64_t H = s->H, P = s->P, Hin = s->Hin, N = s->N;
    const int64_t p0 = s->parts * me / nthr, p1 = s->parts * (me + 1) / nthr;
    T *h = (T *)s->h, *hbuf = (T *)s->hbuf;
    /* the state columns part p writes: its units, or with a projection its share of P */
    const int64_t *hcols = s->whr ? s->pcols : s->units;
    /* A one-step call (a stream's step) reads W_ih and W_hh, more than the cache holds when
       they are large: every other call reads them backwards, W_hh first (the last weights
       the call before read, still in the cache), the projection after it; the sum the tile
       makes of the two is the same either way (x @ W_ih.T + b, then + h @ W_hh.T). */
    const int late = s->steps == 1 && s->xproj && s->xproj != s->gates && (s->phase & 1) && !KIND_NORMED(s->kind);
    if (s->wq && s->xproj) /* quantized weights: the input rows quantized, then projected, before the loop */
        FN(qproject)(s, me, nthr, p0, p1, late);
    else if (s->xproj && !late)  /* the input projection of every packed row, before the loop */
        for (int64_t p = p0; p < p1; p++)
            FN(part_mm)(s, p, s->rows, Hin, (const T *)s->x, Hin, (const T *)s->wih + s->wih_at[p], (T *)s->xproj,
                        (const T *)s->bias, 0, 0);
    if (KIND_NORMED(s->kind) && s->xproj && p0 < p1) {  /* LN_ih of every projected row (one part) */
        const int64_t GH = s->G * H;
        const T *w = (const T *)s->lnw;
        for (int64_t r = 0; r < s->rows; r++) {
            T *lx = s->lnx ? (T *)s->lnx + r * LNX_W(GH, sizeof(T)) : 0;
            FN(ln_row)(GH, (T *)s->xproj + r * GH, w, w + GH, lx, lx ? lx + GH : 0);
        }
    }
    if (hbuf) {  /* both halves start as h_0: a row that joins later (reverse) reads it (this range's rows) */
        for (int64_t p = p0; p < p1; p++)
            for (int64_t r = s->r0; r < (s->r1 < N ? s->r1 : N); r++)
                for (int k = 0; k < 2; k++)
                    memcpy(hbuf + k * N * P + r * P + hcols[p], h + r * P + hcols[p],
                           (hcols[p + 1] - hcols[p]) * sizeof(T));
        team_barrier(s->team, me, nthr);
    }
    for (int64_t q = 0; q < s->steps; q++) {
        const int64_t t = s->reverse ? s->steps - 1 - q : q;
        const int64_t n = (s->batch_sizes[t] < s->r1 ? s->batch_sizes[t] : s->r1) - s->r0;
        if (n <= 0) continue;
        if (s->await) wave_wait(s, (unsigned)q + 1);  /* this step's input rows are written */
        const int64_t row = s->offsets[t] + s->r0, rr = s->r0;  /* this slice's first packed row, batch row */
        const T *hc = (hbuf ? hbuf + (q & 1) * N * P : h) + rr * P;
        T *hn = (hbuf ? hbuf + ((q + 1) & 1) * N * P : h) + rr * P;
        if (s->train)
            for (int64_t p = p0; p < p1; p++)
                for (int64_t r = 0; r < n; r++)
                    memcpy((T *)s->hprev + (row + r) * P + hcols[p], hc + r * P + hcols[p],
                           (hcols[p + 1] - hcols[p]) * sizeof(T));
        if (hbuf)  /* the other threads wrote this state: fetch all its lines at once, not one per wait */
            for (int64_t i = 0; i < n * P; i += 64 / (int64_t)sizeof(T)) __builtin_prefetch(hc + i);
        struct FN(qrows) qrows, qxrows;  /* quantized weights: this thread's copy of the state (and of
                                            the step's input rows, projected in the loop), quantized */
        if (s->wq) qrows = FN(quantize_at)(s, 0, FN(qslot)(s, p0), n, P, (const float *)hc, P);
        if (s->wq && !s->xproj)
            qxrows = FN(quantize_at)(s, 1, FN(qslot)(s, p0), n, Hin, (const float *)s->x + row * Hin, Hin);
        const T *hw = hc;  /* the state that meets W_hh: with recurrent dropout (one part), h * mask */
        if (s->rmask) {
            T *rb = (T *)s->rbuf + rr * P;
            const T *mk = (const T *)s->rmask + rr * P;
            for (int64_t i = 0; i < n * P; i++) rb[i] = hc[i] * mk[i];
            hw = rb;
        }
        for (int64_t p = p0; p < p1; p++)
            FN(step_part)(s, p, n, row, rr, hc, hw, hn, (int)((q + s->phase) & 1), late, s->wq ? &qrows : 0,
                          s->wq && !s->xproj ? &qxrows : 0);
        if (s->xproj && q + 1 < s->steps && n <= 4) {  /* the next step's projected rows, on their way */
            const int64_t tn = s->reverse ? s->steps - 2 - q : q + 1, GH = s->G * H;
            const T *nx = (const T *)s->xproj + (s->offsets[tn] + s->r0) * GH;
            for (int64_t r = 0; r < n; r++)
                for (int64_t g = 0; g < s->G; g++)
                    for (int64_t j = s->units[p0]; j < s->units[p1]; j += 64 / (int64_t)sizeof(T))
                        __builtin_prefetch(nx + r * GH + g * H + j);
        }
        if (s->whr) {  /* h' = m @ W_hr.T, each part its share of the P columns */
            team_barrier(s->team, me, nthr);
            const T *m = s->train ? (const T *)s->m + row * H : (const T *)s->m + rr * H;
            if (s->wq) qrows = FN(quantize_at)(s, 0, FN(qslot)(s, p0), n, H, (const float *)m, H);
            for (int64_t p = p0; p < p1; p++) {
                const int64_t b = s->pcols[p], w = s->pcols[p + 1] - b;
                if (s->wq)
                    FN(qblocks)(s, 1, 0, b, w, n, H, &qrows,
                                (const char *)s->whr + s->whr_at[p] * q_esize(s->wq), s->shr, s->uhr,
                                (float *)hn, P, 0, 0, (int)((q + s->phase) & 1));
                else
                    FN(mm)(n, H, w, m, H, (const T *)s->whr + s->whr_at[p], hn + b, P, 0, 0);
            }
        }
        T *out = (T *)s->out + row * s->ldout;
        /* with hbuf, h receives a row's state only at its last step (the rows past the next
           step's batch; every row at the loop's last step) */
        int64_t ends = 0;
        if (hbuf && q + 1 < s->steps) {
            const int64_t tn = s->reverse ? s->steps - 2 - q : q + 1;
            ends = (s->batch_sizes[tn] < s->r1 ? s->batch_sizes[tn] : s->r1) - s->r0;
        }
        for (int64_t p = p0; p < p1; p++) {
            const int64_t b = hcols[p], w = hcols[p + 1] - b;
            for (int64_t r = 0; r < n; r++) {
                if (s->zh)  /* zoneout: h = d h_{t-1} + (1 - d) h~ */
                    FN(zone)(w, (const T *)s->zh + (s->train ? row + r : rr + r) * P + b, hc + r * P + b,
                             hn + r * P + b);
                memcpy(out + r * s->ldout + b, hn + r * P + b, w * sizeof(T));
                if (hbuf && r >= ends) memcpy(h + (rr + r) * P + b, hn + r * P + b, w * sizeof(T));
            }
        }
        team_barrier(s->team, me, nthr);
        if (s->publish) wave_publish(s, (unsigned)q + 1);
    }
#ifdef NT_FENCE
    if (KIND_NORMED(s->kind) && s->train) NT_FENCE();  /* (the rows ln_step stored past the caches) */
#endif
}

/* Backward of a training forward: walks the steps in the opposite order. */
static TGT void FN(backward)(const struct scan *s, int me, int nthr) {
    (void)me;
    (void)nthr;
    const int64_t H = s->H, P = s->P, GH = s->G * s->H, Hin = s->Hin;
    T *dh = (T *)s->h, *dc = (T *)s->c;
    const int fused = s->dw != 0;  /* the weight gradients in blocks of steps, inside the loop */
    int64_t used = 0, qb = s->steps - 1, nsteps = 0;  /* the block's rows, its first step, its steps */
    int first = 1;
    for (int64_t q = s->steps - 1; q >= 0; q--) {
        const int64_t t = s->reverse ? s->steps - 1 - q : q;
        const int64_t n = (s->batch_sizes[t] < s->r1 ? s->batch_sizes[t] : s->r1) - s->r0;
        if (n <= 0) continue;
        if (s->await) wave_wait(s, (unsigned)(s->steps - q));  /* the loop above wrote this step's dout */
        const int64_t row = s->offsets[t] + s->r0;
        T *dhr = dh + s->r0 * P;
        const T *dout = (const T *)s->out + row * s->ldout;
        for (int64_t r = 0; r < n; r++)
            for (int64_t j = 0; j < P; j++) dhr[r * P + j] += dout[r * s->ldout + j];
        const T *gates = (const T *)s->gates + row * GH;
        /* the step's gradient rows: in the block (fused); else a layer-norm kind makes them in
           the cache (ln_hot) and copies them out below, the others write them to dgx, dgh */
        T *dgx = fused ? FN(block_rows)(s, 0) + used * GH : KIND_NORMED(s->kind) ? FN(ln_hot)(s, 0)
                                                                                  : (T *)s->dgx + row * GH;
        T *dgh = !SEP_DGH(s) ? 0 : fused ? FN(block_rows)(s, 1) + used * GH : KIND_NORMED(s->kind) ? FN(ln_hot)(s, 1)
                                                                                  : (T *)s->dgh + row * GH;
        if (s->dcs)  /* return_states: the gradient of this step's cell state, from outside */
            for (int64_t r = 0; r < n; r++)
                for (int64_t j = 0; j < H; j++) dc[(s->r0 + r) * H + j] += ((const T *)s->dcs)[(row + r) * H + j];
        T *keep = s->zh ? (T *)s->zsave + s->r0 * (P + H) : 0;  /* zoneout: d dh, d dc skip the step */
        if (keep) FN(unzone)(n, P, (const T *)s->zh + row * P, dhr, keep, P + H);
        if (keep && s->zc) FN(unzone)(n, H, (const T *)s->zc + row * H, dc + s->r0 * H, keep + P, P + H);
        if (KIND_NORMED(s->kind)) {
            FN(ln_back)(s, n, row, dhr, dc ? dc + s->r0 * H : 0, dgx, dgh);
        } else if (s->kind == KIND_LSTM) {
            T *dcr = dc + s->r0 * H;
            const T *tc = (const T *)s->tc + row * H, *cprev = (const T *)s->cprev + row * H;
            int64_t ldm = P;
            const T *dm = FN(back_through_projection)(s, n, row, dhr, &ldm);
            for (int64_t r = 0; r < n; r++) {
                const T *g = gates + r * GH;
                T *d = dgx + r * GH;
                FN(lstm_back_row)(H, g, g + H, g + 2 * H, g + 3 * H, tc + r * H, cprev + r * H, dm + r * ldm, d,
                                  d + H, d + 2 * H, d + 3 * H, dcr + r * H);
            }
            FN(to_hprev)(s, n, row, dgx, dhr, 0);
        } else if (s->kind == KIND_GRU) {
            const T *ghn = (const T *)s->ghn + row * H, *hprev = (const T *)s->hprev + row * P;
            for (int64_t r = 0; r < n; r++) {
                const T *g = gates + r * GH;
                T *dx_ = dgx + r * GH, *dh_ = dgh + r * GH;
                FN(gru_back_row)(H, g, g + H, g + 2 * H, ghn + r * H, hprev + r * P, dx_, dx_ + H, dx_ + 2 * H, dh_,
                                 dh_ + H, dh_ + 2 * H, dhr + r * P);
            }
            FN(to_hprev)(s, n, row, dgh, dhr, 1);  /* plus the gates */
        } else {
            for (int64_t r = 0; r < n; r++) {
                const T *restrict a = gates + r * GH;
                T *restrict d = dgx + r * GH, *restrict dhj = dhr + r * P;
                if (s->kind == KIND_RNN_TANH)
                    for (int64_t j = 0; j < H; j++) d[j] = dhj[j] * ((T)1 - a[j] * a[j]);  /* through tanh */
                else
                    for (int64_t j = 0; j < H; j++) d[j] = a[j] <= (T)0 ? (T)0 : dhj[j];  /* through relu, NaN passes */
            }
            FN(to_hprev)(s, n, row, dgx, dhr, 0);
        }
        if (keep)
            for (int64_t r = 0; r < n; r++) {
                for (int64_t j = 0; j < P; j++) dhr[r * P + j] += keep[r * (P + H) + j];
                if (s->zc)
                    for (int64_t j = 0; j < H; j++) dc[(s->r0 + r) * H + j] += keep[r * (P + H) + P + j];
            }
        if (s->dx) {  /* the input gradient of this step's rows: dx (+)= dgx @ W_ih */
            T *dx = (T *)s->dx + row * Hin;
            FN(mm)(n, GH, Hin, dgx, GH, (const T *)s->wih, dx, Hin, s->accumulate ? dx : 0, Hin);
        }
        if (KIND_NORMED(s->kind) && !fused) {  /* the rows for the weight gradients' products, after the loop */
            FN(nt_copy)((T *)s->dgx + row * GH, dgx, n * GH);
            FN(nt_copy)((T *)s->dgh + row * GH, dgh, n * GH);
        }
        if (fused && (used += n, ++nsteps == s->kblock)) {  /* a whole block: its weight gradients */
            FN(block_grads)(s, qb, q, used, first);
            first = 0, used = nsteps = 0, qb = q - 1;
        }
        if (s->publish) wave_publish(s, (unsigned)(s->steps - q));
    }
    if (fused && (used || first)) {  /* the last block's (a range without rows: zeros) */
        if (used) FN(block_grads)(s, qb, 0, used, first);
        else memset((T *)s->dw + s->rix * GH * DW_COLS(s), 0, (size_t)(GH * DW_COLS(s)) * sizeof(T));
    }
#ifdef NT_FENCE
    if (KIND_NORMED(s->kind) && !fused) NT_FENCE();  /* (the non-temporal rows, before the products read them) */
#endif
}

#include "_native_lscan.h"

#undef PAN
#undef SEP_DGH
#undef DW_COLS
#undef V
#undef NT_STORE
#undef NT_FENCE
#undef IV
#undef VL
#undef NR
#undef FN
#undef CAT
#undef CAT_
#undef TGT
#undef RECIP14
#undef WIDTH_PROOF
#undef VB
#undef MR
#undef ACC
#undef SFX
