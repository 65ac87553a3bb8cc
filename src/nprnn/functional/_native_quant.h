/* Quantized products (issue 25): the arithmetic of nprnn.functional.quant, which is their
 * oracle, compiled.
 *
 * int8: weights int8 per output row, packed into panels of QNR = 16 columns, k in groups of
 * four: panel j holds, for each group kq, 16 columns x 4 bytes (what one vpdpbusd takes).
 * Activations are quantized row by row (quant_rows_u8: onnxruntime's DynamicQuantizeLinear
 * per row) into uint8 rows padded to a multiple of 4 with zeros.  A product's int32 sums
 * are exact on every path (VNNI, AVX2 by widening to 16 bits and vpmaddwd, plain C), so the
 * paths agree integer for integer; one finisher, compiled once for the baseline, turns them
 * into floats: C = Cin + float(acc - z_x * rowsum_w) * (s_x * s_w).
 *
 * bf16: weights as bfloat16 bits, panels of 16 columns with k in pairs (what one vdpbf16ps
 * takes); activations rounded to bfloat16 (round to nearest even, denormals to zero as the
 * instruction reads them).  Each column's float32 sum runs over k pairs in order, adding
 * the odd element's product, then the even one's (vdpbf16ps's order); a product of two
 * bfloat16 values is exact in float32, so an emulation with fused or unfused multiply-adds
 * rounds as the instruction does, and every path gives the same sums (sums that fall
 * below 2^-126 in magnitude, which the instruction flushes to zero, excepted).
 */
#ifndef NPRNN_NATIVE_QUANT_H
#define NPRNN_NATIVE_QUANT_H
#include <stdint.h>
#include <string.h>

#define QNR 16  /* columns per panel of quantized weights, on every path */
#define QPAD(M) (((M) + QNR - 1) / QNR * QNR)
enum { WQ_FLOAT = 0, WQ_INT8 = 1, WQ_BF16 = 2 };
/* A quantized element's bytes, and K padded to the group of k one instruction reads
   (4 for int8, 2 for bf16): the packed panels' and the quantized rows' row length. */
static inline int64_t q_esize(int wq) { return wq == WQ_INT8 ? 1 : 2; }
static inline int64_t q_kpad(int64_t K, int wq) { return wq == WQ_INT8 ? (K + 3) / 4 * 4 : (K + 1) / 2 * 2; }

/* One quantized product: C (n, M) = Cin + A (n, K) @ B, B packed (K a multiple of 4 for
   int8, of 2 for bf16, zero-padded), A row-major uint8 (int8) or uint16 bf16 bits, lda
   apart.  int8 also takes each A row's scale and zero point and each column's weight
   scale and row sum.  Cin may be NULL, C, or a row broadcast (ldcin 0). */
struct qmm {
    int64_t n, K, M;
    const void *A;
    int64_t lda;
    const float *as;
    const int32_t *az;
    const void *B;
    const float *ws;
    const int32_t *wu;
    float *C;
    int64_t ldc;
    const float *Cin;
    int64_t ldcin;
    int32_t *Ci;  /* int8, tests: the exact sums acc - z_x * rowsum_w here (ldc apart), not C */
    int back;     /* the tiles last to first (each column's sum is the same) */
};
typedef void (*qmm_fn)(const struct qmm *);  /* (also declared in _native_core.h: C11 allows both) */

/* ------------------------------------------------------------ the shared, baseline parts */
/* A value the compiler may not fuse into the next addition: every path then rounds the
   product and the sum apart, as the oracle does (only x86 has several paths to agree). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define Q_UNFUSED(v) __asm__("" : "+x"(v))
#define Q_UNFUSED_V(v) __asm__("" : "+v"(v))
#else
#define Q_UNFUSED(v) ((void)0)
#endif

static inline float q_rint(float v) {  /* round half to even, for |v| < 2^22 (no libm call) */
    const float big = 12582912.0f;  /* 1.5 * 2^23 */
    return (v + big) - big;
}

/* Rows of x (n, K) quantized as uint8 with a zero point, row by row (quant.quantize_rows_uint8):
   q (n, Kp) zero-padded past K, scale (n,), zero (n,).  A row holding NaN or infinity gets
   scale NaN (its products are NaN, as float32 arithmetic would make them). */
static __attribute__((unused)) void quant_rows_u8_c(int64_t n, int64_t K, int64_t Kp, const float *x, int64_t ldx,
                                                  uint8_t *q, int64_t ldq, float *scale, int32_t *zero) {
    for (int64_t i = 0; i < n; i++) {
        const float *r = x + i * ldx;
        uint8_t *qr = q + i * ldq;
        float lo = 0.0f, hi = 0.0f, bad = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float v = r[k];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            bad += v - v;  /* NaN for NaN or infinity */
        }
        if (bad != bad) {
            memset(qr, 0, (size_t)Kp);
            scale[i] = bad;
            zero[i] = 0;
            continue;
        }
        float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
        float z = q_rint(0.0f - lo / s);
        z = z < 0.0f ? 0.0f : z > 255.0f ? 255.0f : z;
        for (int64_t k = 0; k < K; k++) {
            float v = q_rint(r[k] / s) + z;
            qr[k] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
        memset(qr + K, 0, (size_t)(Kp - K));
        scale[i] = s;
        zero[i] = (int32_t)z;
    }
}

/* float32 -> bfloat16 bits, round to nearest even, NaN kept quiet, denormals to (signed) zero. */
static inline uint16_t q_bf16(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static __attribute__((unused)) void quant_rows_bf16_c(int64_t n, int64_t K, int64_t Kp, const float *x, int64_t ldx,
                                                    uint16_t *q, int64_t ldq) {
    for (int64_t i = 0; i < n; i++) {
        for (int64_t k = 0; k < K; k++) q[i * ldq + k] = q_bf16(x[i * ldx + k]);
        for (int64_t k = K; k < Kp; k++) q[i * ldq + k] = 0;
    }
}

static inline float q_f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* The int32 sums of rows i0.. (mr of them) and columns j0.. (cols), acc[i][c], into C. */
static void q_finish_i8(const struct qmm *g, int64_t i0, int mr, int64_t j0, int64_t cols, const int32_t *acc,
                        int64_t lda) {
    for (int i = 0; i < mr; i++) {
        const int64_t r = i0 + i;
        float *C = g->C + r * g->ldc + j0;
        const float *Cin = g->Cin ? g->Cin + r * g->ldcin + j0 : 0;
        const float sx = g->as[r];
        const int32_t zx = g->az[r];
        if (g->Ci) {
            for (int64_t c = 0; c < cols; c++) g->Ci[r * g->ldc + j0 + c] = acc[i * lda + c] - zx * g->wu[j0 + c];
            continue;
        }
        for (int64_t c = 0; c < cols; c++) {
            float y = (float)(acc[i * lda + c] - zx * g->wu[j0 + c]) * (sx * g->ws[j0 + c]);
            Q_UNFUSED(y);
            C[c] = Cin ? Cin[c] + y : y;
        }
    }
}

static void q_finish_bf16(const struct qmm *g, int64_t i0, int mr, int64_t j0, int64_t cols, const float *acc,
                          int64_t lda) {
    for (int i = 0; i < mr; i++) {
        const int64_t r = i0 + i;
        float *C = g->C + r * g->ldc + j0;
        const float *Cin = g->Cin ? g->Cin + r * g->ldcin + j0 : 0;
        for (int64_t c = 0; c < cols; c++) C[c] = Cin ? Cin[c] + acc[i * lda + c] : acc[i * lda + c];
    }
}

/* Pack q (M, K) row-major (int8 or bf16 bits: `bytes` 1 or 2) into panels: int8 groups of
   4 k, bf16 pairs, zero past K and M.  dst holds QPAD(M) * Kp elements. */
static __attribute__((unused)) void q_pack(const void *src, int64_t M, int64_t K, int bytes, void *dst) {
    const int grp = bytes == 1 ? 4 : 2;
    const int64_t Kp = q_kpad(K, bytes == 1 ? WQ_INT8 : WQ_BF16);
    const int64_t np = QPAD(M) / QNR;
    for (int64_t j = 0; j < np; j++)
        for (int64_t kq = 0; kq < Kp / grp; kq++)
            for (int c = 0; c < QNR; c++)
                for (int e = 0; e < grp; e++) {
                    const int64_t m = j * QNR + c, k = kq * grp + e;
                    const int64_t at = ((j * (Kp / grp) + kq) * QNR + c) * grp + e;
                    if (bytes == 1) {
                        ((int8_t *)dst)[at] = m < M && k < K ? ((const int8_t *)src)[m * K + k] : 0;
                    } else {
                        uint16_t v = m < M && k < K ? ((const uint16_t *)src)[m * K + k] : 0;
                        if ((v & 0x7f80) == 0) v &= 0x8000;  /* denormals read as zero, as the instruction reads them */
                        ((uint16_t *)dst)[at] = v;
                    }
                }
}

/* ------------------------------------------------------------------- int8, plain C */
#define Q_TILE 4  /* rows of a tile; columns: up to Q_PANELS panels (Q_WIDE(mr) for mr rows) */
#define Q_PANELS 8
#define Q_WIDE(mr) ((mr) == 1 ? 8 : (mr) == 2 ? 6 : 4)  /* one row: 8 chains of sums, to cover the latency */

static __attribute__((unused)) void qmm_i8_base(const struct qmm *g) {
    const int64_t Kq = g->K / 4, np = QPAD(g->M) / QNR;
    int32_t acc[QNR];
    for (int64_t i = 0; i < g->n; i++) {
        const uint8_t *a = (const uint8_t *)g->A + i * g->lda;
        for (int64_t j = 0; j < np; j++) {
            const int8_t *b = (const int8_t *)g->B + j * Kq * 4 * QNR;
            for (int c = 0; c < QNR; c++) acc[c] = 0;
            for (int64_t kq = 0; kq < Kq; kq++, b += 4 * QNR)
                for (int c = 0; c < QNR; c++)
                    for (int e = 0; e < 4; e++) acc[c] += (int32_t)a[kq * 4 + e] * (int32_t)b[c * 4 + e];
            const int64_t cols = g->M - j * QNR < QNR ? g->M - j * QNR : QNR;
            q_finish_i8(g, i, 1, j * QNR, cols, acc, QNR);
        }
    }
}

static __attribute__((unused)) void qmm_bf16_base(const struct qmm *g) {
    const int64_t Kp = g->K / 2, np = QPAD(g->M) / QNR;
    float acc[QNR];
    for (int64_t i = 0; i < g->n; i++) {
        const uint16_t *a = (const uint16_t *)g->A + i * g->lda;
        for (int64_t j = 0; j < np; j++) {
            const uint16_t *b = (const uint16_t *)g->B + j * Kp * 2 * QNR;
            for (int c = 0; c < QNR; c++) acc[c] = 0.0f;
            for (int64_t kp = 0; kp < Kp; kp++, b += 2 * QNR) {
                const float x0 = q_f32((uint32_t)a[2 * kp] << 16), x1 = q_f32((uint32_t)a[2 * kp + 1] << 16);
                for (int c = 0; c < QNR; c++) {  /* (exact products) */
                    uint32_t pair;
                    memcpy(&pair, b + 2 * c, 4);
                    const float t = acc[c] + x1 * q_f32(pair & 0xffff0000u);
                    acc[c] = t + x0 * q_f32(pair << 16);
                }
            }
            const int64_t cols = g->M - j * QNR < QNR ? g->M - j * QNR : QNR;
            q_finish_bf16(g, i, 1, j * QNR, cols, acc, QNR);
        }
    }
}

#ifdef HAVE_X86_VARIANTS
/* Tiles of mr rows by np panels, always inlined into a switch so that mr and np are
   constants: the accumulators stay in registers. */
#define Q_TILE_LOOP(WIDE, body)                                                                           \
    {                                                                                                \
        /* column blocks outside, row tiles inside: a block of B stays in cache while every        \
           row goes by (many rows: the projection before the loop) */                              \
        const int wide = WIDE(g->n < Q_TILE ? (int)g->n : Q_TILE);                                  \
        const int64_t tiles = (npan + wide - 1) / wide;                                              \
        for (int64_t t = 0; t < tiles; t++) {                                                        \
            const int64_t j = (g->back ? tiles - 1 - t : t) * wide;                                  \
            const int np = npan - j < wide ? (int)(npan - j) : wide;                                 \
            for (int64_t i = 0; i < g->n; i += Q_TILE) {                                             \
                const int mr = g->n - i < Q_TILE ? (int)(g->n - i) : Q_TILE;                         \
                body                                                                                 \
            }                                                                                        \
        }                                                                                            \
    }

/* ----------------------------------------------------------------- int8, AVX-512 VNNI */
#define VNNI_TGT __attribute__((target("avx512f,avx512bw,avx512vnni")))
/* The int32 sums of a tile (acc[r * stride + p]: mr rows by np panels from panel j) into C,
   q_finish_i8's arithmetic 16 columns at a time. */
static VNNI_TGT inline __attribute__((always_inline)) void q_vnni_finish(const struct qmm *g, int64_t i, int mr,
                                                                         int64_t j, int np, const __m512i *acc,
                                                                         int stride) {
    const int64_t M = g->M;
    const int64_t cols = M - j * QNR < np * QNR ? M - j * QNR : np * QNR;
    if (g->Ci) {
        int32_t out[Q_TILE * Q_PANELS * QNR];
        for (int r = 0; r < mr; r++)
            for (int p = 0; p < np; p++) _mm512_storeu_si512(out + (r * Q_PANELS + p) * QNR, acc[r * stride + p]);
        q_finish_i8(g, i, mr, j * QNR, cols, out, Q_PANELS * QNR);
        return;
    }
    for (int p = 0; p < np; p++) {  /* q_finish_i8, 16 columns at a time */
        const int64_t c0 = (j + p) * QNR, left = M - c0;
        if (left <= 0) break;
        const __mmask16 k = left >= QNR ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        const __m512i wu = _mm512_maskz_loadu_epi32(k, g->wu + c0);
        const __m512 ws = _mm512_maskz_loadu_ps(k, g->ws + c0);
        for (int r = 0; r < mr; r++) {
            const int64_t row = i + r;
            __m512i a = _mm512_sub_epi32(acc[r * stride + p], _mm512_mullo_epi32(_mm512_set1_epi32(g->az[row]), wu));
            __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(_mm512_set1_ps(g->as[row]), ws));
            Q_UNFUSED_V(y);
            if (g->Cin) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, g->Cin + row * g->ldcin + c0));
            _mm512_mask_storeu_ps(g->C + row * g->ldc + c0, k, y);
        }
    }
}

static VNNI_TGT inline __attribute__((always_inline)) void q_vnni_tile(const struct qmm *g, int64_t i, int64_t j,
                                                                       int mr, int np) {
    const int64_t Kq = g->K / 4;
    __m512i acc[Q_TILE][Q_PANELS];
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++) acc[r][p] = _mm512_setzero_si512();
    const int8_t *B = (const int8_t *)g->B + j * Kq * 4 * QNR;
    const uint8_t *A = (const uint8_t *)g->A + i * g->lda;
    for (int64_t kq = 0; kq < Kq; kq++) {
        __m512i w[Q_PANELS];
        for (int p = 0; p < np; p++) w[p] = _mm512_loadu_si512(B + (p * Kq + kq) * 4 * QNR);
        for (int r = 0; r < mr; r++) {
            int32_t a4;
            memcpy(&a4, A + r * g->lda + kq * 4, 4);
            const __m512i a = _mm512_set1_epi32(a4);
            for (int p = 0; p < np; p++) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], a, w[p]);
        }
    }
    q_vnni_finish(g, i, mr, j, np, &acc[0][0], Q_PANELS);
}

static VNNI_TGT inline __attribute__((always_inline)) void q_vnni_row8(const struct qmm *g, int64_t i, int64_t j) {
    const int64_t Kq = g->K / 4, ps = Kq * 4 * QNR;
    const int8_t *B = (const int8_t *)g->B + j * ps;
    const uint8_t *A = (const uint8_t *)g->A + i * g->lda;
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    for (int64_t kq = 0; kq < Kq; kq++, B += 4 * QNR) {
        int32_t a4;
        memcpy(&a4, A + kq * 4, 4);
        const __m512i a = _mm512_set1_epi32(a4);
        c0 = _mm512_dpbusd_epi32(c0, a, _mm512_loadu_si512(B));
        c1 = _mm512_dpbusd_epi32(c1, a, _mm512_loadu_si512(B + ps));
        c2 = _mm512_dpbusd_epi32(c2, a, _mm512_loadu_si512(B + 2 * ps));
        c3 = _mm512_dpbusd_epi32(c3, a, _mm512_loadu_si512(B + 3 * ps));
        c4 = _mm512_dpbusd_epi32(c4, a, _mm512_loadu_si512(B + 4 * ps));
        c5 = _mm512_dpbusd_epi32(c5, a, _mm512_loadu_si512(B + 5 * ps));
        c6 = _mm512_dpbusd_epi32(c6, a, _mm512_loadu_si512(B + 6 * ps));
        c7 = _mm512_dpbusd_epi32(c7, a, _mm512_loadu_si512(B + 7 * ps));
    }
    const __m512i acc[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
    q_vnni_finish(g, i, 1, j, 8, (const __m512i *)acc, 8);
}

static VNNI_TGT void qmm_i8_vnni(const struct qmm *g) {
    const int64_t npan = QPAD(g->M) / QNR;
    Q_TILE_LOOP(Q_WIDE,
        switch (mr * 8 + np) {
            case 8 + 8: q_vnni_row8(g, i, j); break;
            case 16 + 6: q_vnni_tile(g, i, j, 2, 6); break;
            case 24 + 4: q_vnni_tile(g, i, j, 3, 4); break;
            case 32 + 4: q_vnni_tile(g, i, j, 4, 4); break;
            default: q_vnni_tile(g, i, j, mr, np); break;
        })
}

/* quant_rows_u8 and quant_rows_bf16 on AVX-512: the same operations on 16 values at a time
   (a division, the same rounding, the same clamps), so the same bytes. */
#define AVX512_TGT __attribute__((target("avx512f,avx512bw,avx512vl")))
static AVX512_TGT void quant_rows_u8_avx512(int64_t n, int64_t K, int64_t Kp, const float *x, int64_t ldx,
                                            uint8_t *q, int64_t ldq, float *scale, int32_t *zero) {
    for (int64_t i = 0; i < n; i++) {
        const float *r = x + i * ldx;
        uint8_t *qr = q + i * ldq;
        __m512 lo = _mm512_setzero_ps(), hi = lo, bad = lo;
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(m, r + k);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            bad = _mm512_add_ps(bad, _mm512_sub_ps(v, v));
        }
        const float badsum = _mm512_reduce_add_ps(bad);
        if (badsum != badsum) {
            memset(qr, 0, (size_t)Kp);
            scale[i] = badsum;
            zero[i] = 0;
            continue;
        }
        const float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
        const float sc = h > l ? (h - l) / 255.0f : 1.0f;
        float z = q_rint(0.0f - l / sc);
        z = z < 0.0f ? 0.0f : z > 255.0f ? 255.0f : z;
        const __m512 vs = _mm512_set1_ps(sc), vz = _mm512_set1_ps(z), big = _mm512_set1_ps(12582912.0f);
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, r + k), vs);
            v = _mm512_sub_ps(_mm512_add_ps(v, big), big);
            v = _mm512_add_ps(v, vz);
            v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
            _mm_mask_storeu_epi8(qr + k, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
        }
        memset(qr + K, 0, (size_t)(Kp - K));
        scale[i] = sc;
        zero[i] = (int32_t)z;
    }
}

static AVX512_TGT void quant_rows_bf16_avx512(int64_t n, int64_t K, int64_t Kp, const float *x, int64_t ldx,
                                              uint16_t *q, int64_t ldq) {
    const __m512i absm = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            const __m512i u = _mm512_maskz_loadu_epi32(m, x + i * ldx + k);
            const __m512i a = _mm512_and_si512(u, absm);
            __m512i r = _mm512_srli_epi32(
                _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                 _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
            const __mmask16 nan = _mm512_cmpgt_epu32_mask(a, inf);
            const __mmask16 den = _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, inf), _mm512_setzero_si512());
            r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
            r = _mm512_mask_mov_epi32(r, den, _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)));
            _mm256_mask_storeu_epi16(q + i * ldq + k, m, _mm512_cvtepi32_epi16(r));
        }
        for (int64_t k = K; k < Kp; k++) q[i * ldq + k] = 0;
    }
}

/* ------------------------------------------- int8, AVX2: 16-bit products and vpmaddwd */
#define AVX2_TGT __attribute__((target("avx2,fma")))
static AVX2_TGT inline __attribute__((always_inline)) void q_avx2_tile(const struct qmm *g, int64_t i, int64_t j,
                                                                       int mr, int np) {
    /* a panel's 64 bytes per k group are 16 columns x 4 k: as four quarters of 4 columns,
       each widened to 16 int16 [c0k0..c0k3, c1k0.., ..]; vpmaddwd with the row's 4 values
       (as int16, repeated) gives two int32 per column, (k0 + k1) and (k2 + k3), summed at the end. */
    const int64_t Kq = g->K / 4, M = g->M;
    __m256i acc[Q_TILE][Q_PANELS][4];
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++)
            for (int q = 0; q < 4; q++) acc[r][p][q] = _mm256_setzero_si256();
    const int8_t *B = (const int8_t *)g->B + j * Kq * 4 * QNR;
    const uint8_t *A = (const uint8_t *)g->A + i * g->lda;
    for (int64_t kq = 0; kq < Kq; kq++) {
        __m256i a[Q_TILE];
        for (int r = 0; r < mr; r++) {
            int32_t a4;
            memcpy(&a4, A + r * g->lda + kq * 4, 4);
            a[r] = _mm256_cvtepu8_epi16(_mm_set1_epi32(a4));
        }
        for (int p = 0; p < np; p++) {
            const int8_t *w = B + (p * Kq + kq) * 4 * QNR;
            for (int q = 0; q < 4; q++) {
                const __m256i wq = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16 * q)));
                for (int r = 0; r < mr; r++) acc[r][p][q] = _mm256_add_epi32(acc[r][p][q], _mm256_madd_epi16(a[r], wq));
            }
        }
    }
    int32_t out[Q_TILE * Q_PANELS * QNR];
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++)
            for (int q = 0; q < 4; q++) {
                int32_t pair[8];
                _mm256_storeu_si256((__m256i *)pair, acc[r][p][q]);
                for (int c = 0; c < 4; c++) out[(r * Q_PANELS + p) * QNR + 4 * q + c] = pair[2 * c] + pair[2 * c + 1];
            }
    const int64_t cols = M - j * QNR < np * QNR ? M - j * QNR : np * QNR;
    q_finish_i8(g, i, mr, j * QNR, cols, out, Q_PANELS * QNR);
}

#define Q_WIDE_AVX2(mr) ((mr) == 1 ? 2 : 1)  /* 16 registers: 4 accumulators a panel */
static AVX2_TGT void qmm_i8_avx2(const struct qmm *g) {
    const int64_t npan = QPAD(g->M) / QNR;
    Q_TILE_LOOP(Q_WIDE_AVX2,
        switch (mr * 8 + np) {
            case 8 + 2: q_avx2_tile(g, i, j, 1, 2); break;
            case 16 + 1: q_avx2_tile(g, i, j, 2, 1); break;
            default: q_avx2_tile(g, i, j, mr, np); break;
        })
}

/* ------------------------------------------ bf16: vdpbf16ps, and its emulation on AVX-512 */
#define BF16_TGT __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define Q_BF16_TILE(NAME, TGT_, DOT)                                                                          \
    static TGT_ inline __attribute__((always_inline)) void NAME##_tile(const struct qmm *g, int64_t i, int64_t j, \
                                                                       int mr, int np) {                      \
        const int64_t Kp = g->K / 2, M = g->M;                                                                \
        __m512 acc[Q_TILE][Q_PANELS];                                                                         \
        for (int r = 0; r < mr; r++)                                                                          \
            for (int p = 0; p < np; p++) acc[r][p] = _mm512_setzero_ps();                                     \
        const uint16_t *B = (const uint16_t *)g->B + j * Kp * 2 * QNR;                                        \
        const uint16_t *A = (const uint16_t *)g->A + i * g->lda;                                              \
        for (int64_t kp = 0; kp < Kp; kp++) {                                                                 \
            __m512i w[Q_PANELS];                                                                              \
            for (int p = 0; p < np; p++) w[p] = _mm512_loadu_si512(B + (p * Kp + kp) * 2 * QNR);              \
            for (int r = 0; r < mr; r++) {                                                                    \
                int32_t a2;                                                                                   \
                memcpy(&a2, A + r * g->lda + kp * 2, 4);                                                      \
                const __m512i a = _mm512_set1_epi32(a2);                                                      \
                for (int p = 0; p < np; p++) DOT(acc[r][p], a, w[p]);                                         \
            }                                                                                                 \
        }                                                                                                     \
        float out[Q_TILE * Q_PANELS * QNR];                                                                   \
        for (int r = 0; r < mr; r++)                                                                          \
            for (int p = 0; p < np; p++) _mm512_storeu_ps(out + (r * Q_PANELS + p) * QNR, acc[r][p]);         \
        const int64_t cols = M - j * QNR < np * QNR ? M - j * QNR : np * QNR;                                 \
        q_finish_bf16(g, i, mr, j * QNR, cols, out, Q_PANELS * QNR);                                          \
    }                                                                                                         \
    /* one row by 16 panels: 16 chains of sums, to cover the instruction's latency */                       \
    static TGT_ inline __attribute__((always_inline)) void NAME##_row16(const struct qmm *g, int64_t i,        \
                                                                        int64_t j) {                          \
        const int64_t Kp = g->K / 2, ps = Kp * 2 * QNR;                                                       \
        const uint16_t *B = (const uint16_t *)g->B + j * ps;                                                  \
        const uint16_t *A = (const uint16_t *)g->A + i * g->lda;                                              \
        __m512 acc[16];                                                                                       \
        for (int p = 0; p < 16; p++) acc[p] = _mm512_setzero_ps();                                            \
        for (int64_t kp = 0; kp < Kp; kp++, B += 2 * QNR) {                                                   \
            int32_t a2;                                                                                       \
            memcpy(&a2, A + kp * 2, 4);                                                                       \
            const __m512i a = _mm512_set1_epi32(a2);                                                          \
            for (int p = 0; p < 16; p++) DOT(acc[p], a, _mm512_loadu_si512(B + p * ps));                      \
        }                                                                                                     \
        float out[16 * QNR];                                                                                  \
        for (int p = 0; p < 16; p++) _mm512_storeu_ps(out + p * QNR, acc[p]);                                  \
        const int64_t cols = g->M - j * QNR < 16 * QNR ? g->M - j * QNR : 16 * QNR;                           \
        q_finish_bf16(g, i, 1, j * QNR, cols, out, 16 * QNR);                                                 \
    }                                                                                                         \
    static TGT_ void NAME(const struct qmm *g) {                                                              \
        const int64_t npan = QPAD(g->M) / QNR;                                                                \
        if (g->n < Q_TILE) { /* a matrix-vector product or two: 16 panels at a time, then the rest */         \
            const int64_t full = npan / 16, tiles = full + (npan - full * 16 + 7) / 8;                        \
            for (int64_t i = 0; i < g->n; i++)                                                                \
                for (int64_t q = 0; q < tiles; q++) {                                                         \
                    const int64_t t = g->back ? tiles - 1 - q : q;                                            \
                    if (t < full) {                                                                           \
                        NAME##_row16(g, i, t * 16);                                                           \
                    } else {                                                                                  \
                        const int64_t j = full * 16 + (t - full) * 8;                                         \
                        const int np = npan - j < 8 ? (int)(npan - j) : 8;                                    \
                        if (np == 8) NAME##_tile(g, i, j, 1, 8);                                              \
                        else NAME##_tile(g, i, j, 1, np);                                                     \
                    }                                                                                         \
                }                                                                                             \
            return;                                                                                           \
        }                                                                                                     \
        Q_TILE_LOOP(Q_WIDE,                                                                                   \
            switch (mr * 8 + np) {                                                                            \
                case 8 + 8: NAME##_tile(g, i, j, 1, 8); break;                                                \
                case 16 + 6: NAME##_tile(g, i, j, 2, 6); break;                                               \
                case 24 + 4: NAME##_tile(g, i, j, 3, 4); break;                                               \
                case 32 + 4: NAME##_tile(g, i, j, 4, 4); break;                                               \
                default: NAME##_tile(g, i, j, mr, np); break;                                                 \
            })                                                                                                \
    }

#define DOT_BF16(acc, a, w) acc = _mm512_dpbf16_ps(acc, (__m512bh)(a), (__m512bh)(w))
/* the odd element's product, then the even one's: each exact, each added with one rounding */
#define DOT_EMU(acc, a, w)                                                                                     \
    do {                                                                                                       \
        const __m512i hi_ = _mm512_set1_epi32((int)0xffff0000);                                                \
        acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(a, hi_)),                                   \
                              _mm512_castsi512_ps(_mm512_and_si512(w, hi_)), acc);                             \
        acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),                                   \
                              _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), acc);                             \
    } while (0)
Q_BF16_TILE(qmm_bf16_native, BF16_TGT, DOT_BF16)
Q_BF16_TILE(qmm_bf16_avx512, AVX512_TGT, DOT_EMU)

static AVX2_TGT void qmm_bf16_avx2(const struct qmm *g) {  /* 8 columns at a time, the same order */
    const int64_t Kp = g->K / 2, np = QPAD(g->M) / QNR;
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000);
    for (int64_t i = 0; i < g->n; i++) {
        const uint16_t *A = (const uint16_t *)g->A + i * g->lda;
        for (int64_t j = 0; j < np; j++) {
            const uint16_t *B = (const uint16_t *)g->B + j * Kp * 2 * QNR;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            for (int64_t kp = 0; kp < Kp; kp++) {
                int32_t a2;
                memcpy(&a2, A + kp * 2, 4);
                const __m256i a = _mm256_set1_epi32(a2);
                const __m256 ahi = _mm256_castsi256_ps(_mm256_and_si256(a, hi));
                const __m256 alo = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(B + kp * 2 * QNR));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(B + kp * 2 * QNR + 16));
                acc0 = _mm256_fmadd_ps(ahi, _mm256_castsi256_ps(_mm256_and_si256(w0, hi)), acc0);
                acc1 = _mm256_fmadd_ps(ahi, _mm256_castsi256_ps(_mm256_and_si256(w1, hi)), acc1);
                acc0 = _mm256_fmadd_ps(alo, _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), acc0);
                acc1 = _mm256_fmadd_ps(alo, _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), acc1);
            }
            float out[QNR];
            _mm256_storeu_ps(out, acc0);
            _mm256_storeu_ps(out + 8, acc1);
            const int64_t cols = g->M - j * QNR < QNR ? g->M - j * QNR : QNR;
            q_finish_bf16(g, i, 1, j * QNR, cols, out, QNR);
        }
    }
}
#endif

/* ------------------------------------------- int8, AMX: 16-row tiles (Sapphire Rapids on) */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define HAVE_AMX 1
#define AMX_TGT __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni")))
/* The tiles: C in 0..3 (16 rows x 16 int32, a panel each), A in 4 (16 rows x 64 k), B in 5..7
   (16 groups of 4 k x 16 columns: a panel's 1 KiB, as packed). */
struct q_tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* A block of 16 rows from i by np <= 4 panels from j, K a multiple of 64: its exact int32
   sums through the tiles, then finished as the VNNI tiles finish theirs. */
static AMX_TGT void q_amx_block(const struct qmm *g, int64_t i, int64_t j, int np) {
    const int64_t ps = g->K / 4 * 4 * QNR;  /* bytes between panels */
    const uint8_t *A = (const uint8_t *)g->A + i * g->lda;
    const int8_t *B = (const int8_t *)g->B + j * ps;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k0 = 0; k0 < g->K; k0 += 64) {
        const int8_t *b = B + k0 / 4 * 4 * QNR;
        _tile_loadd(4, A + k0, g->lda);
        _tile_loadd(5, b, 4 * QNR);
        _tile_dpbusd(0, 4, 5);
        if (np > 1) {
            _tile_loadd(6, b + ps, 4 * QNR);
            _tile_dpbusd(1, 4, 6);
        }
        if (np > 2) {
            _tile_loadd(7, b + 2 * ps, 4 * QNR);
            _tile_dpbusd(2, 4, 7);
        }
        if (np > 3) {
            _tile_loadd(5, b + 3 * ps, 4 * QNR);
            _tile_dpbusd(3, 4, 5);
        }
    }
    __m512i out[16 * 4];  /* row r, panel p at r * 4 + p */
    _tile_stored(0, out, 4 * 64);
    if (np > 1) _tile_stored(1, out + 1, 4 * 64);
    if (np > 2) _tile_stored(2, out + 2, 4 * 64);
    if (np > 3) _tile_stored(3, out + 3, 4 * 64);
    for (int r0 = 0; r0 < 16; r0 += Q_TILE) q_vnni_finish(g, i + r0, Q_TILE, j, np, out + r0 * 4, 4);
}

/* 32 rows from i by 2 panels from j: each B tile loaded once for two row blocks (the
   weights come from L2, the rows stay in L1), C in tiles 0..3 (row block r, panel p: 2r + p). */
static AMX_TGT void q_amx_block2(const struct qmm *g, int64_t i, int64_t j) {
    const int64_t ps = g->K / 4 * 4 * QNR;
    const uint8_t *A = (const uint8_t *)g->A + i * g->lda;
    const int8_t *B = (const int8_t *)g->B + j * ps;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k0 = 0; k0 < g->K; k0 += 64) {
        const int8_t *b = B + k0 / 4 * 4 * QNR;
        _tile_loadd(4, A + k0, g->lda);
        _tile_loadd(5, A + 16 * g->lda + k0, g->lda);
        _tile_loadd(6, b, 4 * QNR);
        _tile_loadd(7, b + ps, 4 * QNR);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
    }
    __m512i out[32 * 2];  /* row r, panel p at r * 2 + p */
    _tile_stored(0, out, 2 * 64);
    _tile_stored(1, out + 1, 2 * 64);
    _tile_stored(2, out + 32, 2 * 64);
    _tile_stored(3, out + 33, 2 * 64);
    for (int r0 = 0; r0 < 32; r0 += Q_TILE) q_vnni_finish(g, i + r0, Q_TILE, j, 2, out + r0 * 2, 2);
}

static void qmm_i8_vnni(const struct qmm *g);
/* Blocks of 16 rows on the tiles where K is a multiple of 64, the other rows (and every row
   of other K) on VNNI: the same integers either way. */
static AMX_TGT void qmm_i8_amx(const struct qmm *g) {
    const int64_t full = g->K % 64 ? 0 : g->n / 16 * 16, npan = QPAD(g->M) / QNR;
    if (full) {
        struct q_tilecfg cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) {
            cfg.rows[t] = 16;
            cfg.colsb[t] = 64;
        }
        _tile_loadconfig(&cfg);
        const int64_t pairs = full / 32 * 32;  /* rows in 32-row pairs of blocks */
        if (pairs) {  /* 2 row blocks x 2 panels: each B tile serves both row blocks */
            const int64_t tiles = (npan + 1) / 2;
            for (int64_t t = 0; t < tiles; t++) {
                const int64_t j = (g->back ? tiles - 1 - t : t) * 2;
                for (int64_t i = 0; i < pairs; i += 32) {
                    if (npan - j >= 2)
                        q_amx_block2(g, i, j);
                    else
                        for (int64_t r = i; r < i + 32; r += 16) q_amx_block(g, r, j, 1);
                }
            }
        }
        const int64_t tiles = (npan + 3) / 4;
        /* a block of B (4 KiB a step of k) for every row block */
        for (int64_t t = 0; pairs < full && t < tiles; t++) {
            const int64_t j = (g->back ? tiles - 1 - t : t) * 4;
            const int np = npan - j < 4 ? (int)(npan - j) : 4;
            for (int64_t i = pairs; i < full; i += 16) q_amx_block(g, i, j, np);
        }
        _tile_release();
    }
    if (full < g->n) {
        struct qmm rest = *g;
        rest.n = g->n - full;
        rest.A = (const uint8_t *)g->A + full * g->lda;
        rest.as = g->as + full;
        rest.az = g->az + full;
        rest.C = g->C + full * g->ldc;
        rest.Cin = g->Cin ? g->Cin + (g->ldcin ? full * g->ldcin : 0) : 0;
        rest.Ci = g->Ci ? g->Ci + full * g->ldc : 0;
        qmm_i8_vnni(&rest);
    }
}
#endif

/* The quantized products this build has, from the plainest up; q_best picks what the CPU runs. */
struct qpath {
    const char *name;
    int storage;  /* WQ_INT8 or WQ_BF16 */
    qmm_fn fn;
    int need;  /* 0: any CPU; 1: AVX2; 2: AVX-512; 3: AVX-512 VNNI; 4: AVX-512 BF16; 5: AMX-INT8 (permitted) */
};
static const struct qpath QPATHS[] = {
    {"c", WQ_INT8, qmm_i8_base, 0},
    {"c", WQ_BF16, qmm_bf16_base, 0},
#ifdef HAVE_X86_VARIANTS
    {"avx2", WQ_INT8, qmm_i8_avx2, 1},
    {"avx2", WQ_BF16, qmm_bf16_avx2, 1},
    {"avx512", WQ_BF16, qmm_bf16_avx512, 2},
    {"avx512vnni", WQ_INT8, qmm_i8_vnni, 3},
#ifdef HAVE_AMX
    {"amx", WQ_INT8, qmm_i8_amx, 5},
#endif
    {"avx512bf16", WQ_BF16, qmm_bf16_native, 4},
#endif
};
#define NQPATHS ((int)(sizeof QPATHS / sizeof QPATHS[0]))

#ifdef HAVE_X86_VARIANTS
#include <cpuid.h>
#endif
#if defined(HAVE_AMX) && defined(__linux__)
#include <sys/syscall.h>
long syscall(long number, ...);  /* (unistd.h declares it only with _GNU_SOURCE or _DEFAULT_SOURCE) */
#endif
/* The activations' quantizers in use: AVX-512 where the paths in use may run it (the same
   bytes as the plain C ones, which a forced "c" or "avx2" path runs). */
typedef void (*q_u8_fn)(int64_t, int64_t, int64_t, const float *, int64_t, uint8_t *, int64_t, float *, int32_t *);
typedef void (*q_bf16_fn)(int64_t, int64_t, int64_t, const float *, int64_t, uint16_t *, int64_t);
static q_u8_fn quant_rows_u8 = quant_rows_u8_c;
static q_bf16_fn quant_rows_bf16 = quant_rows_bf16_c;

/* The highest `need` level this CPU meets, asked once (CPUID traps to the hypervisor on a
   virtual machine: tens of microseconds). */
static int q_level_asked = -1;
static int q_ask_level(void);
static int q_level(void) {
    if (q_level_asked < 0) q_level_asked = q_ask_level();
    return q_level_asked;
}
static int q_ask_level(void) {
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    int level = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
    if (level && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        level = 2;
    unsigned a, b, c, d;
    int vnni = 0, bf16 = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) vnni = (c >> 11) & 1;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) bf16 = (a >> 5) & 1;
    if (level == 2 && vnni) level = 3;
    if (level == 3 && bf16) level = 4;
#if defined(HAVE_AMX) && defined(__linux__)
    /* AMX: the CPU has it (CPUID 7.0 EDX bits 24, 25) and Linux lets this process use the
       tile data (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18 XTILEDATA) */
    if (level == 4 && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 3) == 3 &&
        syscall(SYS_arch_prctl, 0x1023, 18) == 0)
        level = 5;
#endif
    return level;
#else
    return 0;
#endif
}

/* Use paths up to level `cap`: the quantizers follow. */
static __attribute__((unused)) void q_set_cap(int cap) {
#ifdef HAVE_X86_VARIANTS
    const int v = q_level() >= 2 && cap >= 2;
    quant_rows_u8 = v ? quant_rows_u8_avx512 : quant_rows_u8_c;
    quant_rows_bf16 = v ? quant_rows_bf16_avx512 : quant_rows_bf16_c;
#else
    (void)cap;
#endif
}

/* The best path for `storage` this CPU runs, at most `cap` (the level set_isa allows). */
static __attribute__((unused)) const struct qpath *q_best(int storage, int cap) {
    const struct qpath *best = NULL;
    int level = q_level();
    for (int i = 0; i < NQPATHS; i++)
        if (QPATHS[i].storage == storage && QPATHS[i].need <= level && QPATHS[i].need <= cap &&
            (!best || QPATHS[i].need > best->need))
            best = &QPATHS[i];
    return best;
}
#endif
