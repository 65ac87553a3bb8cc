/* The kernels' C side, without Python: the described loop (struct scan), the product
 * (struct gemm), every (dtype, instruction set) variant of _native_kernels.h and the table
 * that picks one.  _native.c (the Python module) and tests/native/driver.c (the kernels
 * run without Python, under qemu for other CPUs) include it; each defines team_barrier,
 * wave_wait and wave_publish.
 */
#ifndef NPRNN_NATIVE_CORE_H
#define NPRNN_NATIVE_CORE_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_RNN_TANH = 0, KIND_RNN_RELU = 1, KIND_LSTM = 2, KIND_GRU = 3, KIND_LN_LSTM = 4, KIND_LN_GRU = 5 };
#define KIND_CELL(k) ((k) == KIND_LSTM || (k) == KIND_LN_LSTM)  /* a cell state (and a projection) */
#define KIND_GRU_GATES(k) ((k) == KIND_GRU || (k) == KIND_LN_GRU)
#define KIND_NORMED(k) ((k) >= KIND_LN_LSTM)  /* the layer-norm kinds (whole rows: no unit split) */
/* The layer-norm kinds' record rows (struct scan's lnx, lnr) in elements of isz bytes, each
   padded to whole 64-byte lines so that every row (and the LSTM's chat in it) starts on a
   line and no vector load of it straddles two: lnx [xhat (G*H), inv], lnr [hhat (G*H),
   inv_h | chat (H) from LNR_C, inv_c]. */
#define LN_LINE(n, isz) (((n) + 64 / (isz) - 1) / (64 / (isz)) * (64 / (isz)))
#define LNX_W(GH, isz) LN_LINE((GH) + 1, isz)
#define LNR_C(GH, isz) LN_LINE((GH) + 1, isz)
#define LNR_W(lstm, GH, H, isz) ((lstm) ? LN_LINE(LNR_C(GH, isz) + (H) + 1, isz) : LNR_C(GH, isz))

struct team;
static void team_barrier(struct team *t, int me, int nthr);
/* A job a team runs: thread `me` of `nthr` calls fn(ctx, me, nthr). */
typedef void (*job_fn)(void *ctx, int me, int nthr);

#define MAX_PARTS 64
struct qmm;
typedef void (*qmm_fn)(const struct qmm *);  /* a quantized product (_native_quant.h) */
/* Everything one call needs: the described loop, filled from a dict by parse_scan (see
   SCAN_KEYS).  Forward: x the layer input, h, c the running states (h_0 in, h_n out), out
   receives every step's h.  Backward: h, c are the running state gradients, out is the
   output gradient, dx receives (or, with accumulate, adds) the input gradient.
   Rows r0..r1 of the batch only (a batch split across threads).
   The hidden units split into `parts` (units[p]..units[p+1]; with a projection the P
   columns of h split as pcols): each part's weights packed on their own, back to back
   (wih_at, whh_at, whr_at: where each starts, in elements), so that a thread reads only
   its own.  With xproj the input projection of every row runs before the loop, into
   xproj (rows, G*H); without it, inside the loop, step by step. */
struct scan;
typedef void (*scan_fn)(const struct scan *, int, int);
struct scan {
    int kind, train, reverse, accumulate, back;
    scan_fn kernel;  /* the loop: forward or backward, for this dtype and instruction set */
    int64_t G, H, P, Hin, steps, N, rows, r0, r1, ldout, parts;
    int64_t phase;  /* calls made before on this description (a _native.Call's steps alternate directions) */
    const int64_t *batch_sizes, *offsets;
    const void *x, *wih, *whh, *bias, *bhn, *whr;  /* backward: wih, whh, whr packed untransposed */
    void *out, *h, *c, *hbuf, *xproj;
    void *gates, *hprev, *cprev, *tc, *m, *ghn, *gxs;  /* the tape (training) or per-row work */
    void *dx, *dgx, *dgh, *dproj, *scratch;           /* backward */
    void *cs, *dcs;  /* LSTM, return_states: every step's cell state (rows, H) written, its gradient added; or NULL */
    /* The layer-norm kinds: lnw the norms' gains and shifts (g_ih, b_ih, g_hh, b_hh: G*H each;
       the LSTM's g_c, b_c: H each); training records per packed row: lnx the input norm's
       (xhat (G*H), inv), lnr the step's (hhat (G*H), inv_h; the LSTM's chat (H), inv_c), rows
       of whole lines (LNX_W, LNR_W);
       backward: lnsum, at row rix of (ranges, size of lnw), the gradients of lnw's entries
       summed over this row range's rows (each range adds into its own row). */
    const void *lnw;
    void *lnx, *lnr, *lnsum;
    /* The regularizers (issue 27; nprnn.functional.scan.Regularizers), NULL where off.
       rmask (N, P): recurrent dropout, training only: h_{t-1} * rmask meets W_hh, the
       masked rows made in rbuf (N, P), which backward uses for dg @ W_hh before the mask;
       backward then masks the tape's hprev rows (W_hh's gradient reads them).  zh (P) and
       zc (H): zoneout, h_t = d h_{t-1} + (1 - d) h~_t (c likewise), d per packed row when
       training (0/1), per batch row in inference (p); it needs hbuf (the step reads
       h_{t-1} after making h~_t).  zsave (N, P + H): the cell state before a step
       (inference; training has cprev), and backward's d * dh, d * dc past the step. */
    const void *rmask, *zh, *zc;
    void *rbuf, *zsave;
    /* Backward's weight gradients made in the loop (dw set; else after it, from dgx and dgh):
       the gradient rows of up to kblock steps gather in blk (this range's part: from batch row
       r0, kblock rows per batch row, the input side's, then a GRU's or layer-norm kind's
       hidden side's); then those rows' x and h_{t-1} are packed into bpk (likewise from row r0)
       and dw[rix] (G*H, wcols) (+)= the rows.T @ [x | h_{t-1} | 1] (one gradient for both
       sides) or [x | 1 | h_{t-1} | 1] (a GRU's, a layer-norm kind's); the 1s where there are
       biases (ones), their gradients. */
    void *dw, *blk, *bpk;
    int64_t kblock, rix;  /* rix: the range's row of dw (a call of several ranges: its first's) */
    int ones;
    int64_t units[MAX_PARTS + 1], pcols[MAX_PARTS + 1];
    int64_t nranges;                  /* > 1: the batch split into row ranges, each its own loop */
    int64_t ranges[MAX_PARTS + 1];    /* their bounds */
    int64_t wih_at[MAX_PARTS], whh_at[MAX_PARTS], whr_at[MAX_PARTS];
    struct team *team;  /* the threads that share the parts (NULL: this thread alone) */
    /* A wavefront (scan_many): this loop waits before each step until the loop below it
       has done as many steps (await), and counts its own (publish); slot: its thread's. */
    atomic_uint *await, *publish;
    int slot;
    /* Quantized weights (wq WQ_INT8 or WQ_BF16, float only; inference): wih, whh, whr hold
       int8 or bf16 panels (_native_quant.h), at offsets wih_at.. in elements of their
       storage; sih, shh, shr each output column's weight scale and uih, uhh, uhr its row sum
       (int8); qmm the product.  The input rows are quantized into qx (rows, kx) before the
       loop (qxs, qxz their scales and zero points); each thread quantizes the state (or m)
       into its first part's slot of qh (N rows, kh apart; qhs, qhz). */
    int wq;
    qmm_fn qmm;
    const float *sih, *shh, *shr;
    const int32_t *uih, *uhh, *uhr;
    void *qx, *qh;
    float *qxs, *qhs;
    int32_t *qxz, *qhz;
    int64_t kx, kh;
};
/* The diagonal linear scan (issue 29, _native_lscan.h): h_t = a_t h_{t-1} + b_t over packed
   rows (batch_sizes, offsets as struct scan's), every unit its own scan.  kind LS_PLAIN: a,
   b given (rows, H); LS_MINGRU / LS_MINLSTM: `a` holds the gate pre-activations u (rows, 2H
   or 3H) and logm picks h~ = g(v).  Forward: h (N, H) the running state (h_0 in, h_n out),
   out (rows, H) every h_t.  Backward: h the running gradient (dh_n in, dh_0 out), out the
   output's gradient, y the forward's output, h0 its initial state; da (and db) receive
   da, db (LS_PLAIN) or du (rows, 2H or 3H). */
enum { LS_PLAIN = 0, LS_MINGRU = 1, LS_MINLSTM = 2 };
enum { LS_FWD, LS_REDUCE, LS_BACK, LS_LOCAL, LS_BFIX };  /* a row's pass (_native_lscan.h's ls_row) */
struct lscan {
    int kind, logm, back, reverse, f64;  /* f64: double elements */
    int64_t H, steps, N;
    const int64_t *batch_sizes, *offsets;
    const void *a, *b, *y, *h0;
    void *h, *out, *da, *db;
    int64_t nthreads;
    int uniform;        /* every sequence runs every step: the steps split into chunks (lscan_chunks) */
    int stream;         /* the output is written past the caches (larger than they would keep) */
    void *work;         /* the chunks' carries, 6 nthreads (N, H) blocks; else the batch's rows split */
    struct team *team;
};
typedef void (*lscan_fn)(const struct lscan *, int64_t, int64_t);
typedef void (*lscan_chunks_fn)(const struct lscan *, int, int);

static void wave_wait(const struct scan *s, unsigned need);
static void wave_publish(const struct scan *s, unsigned done);

/* One matrix product C (n, M) = Cin + A1 (n, K1) @ B1 [+ A2 (n, K2) @ B2], each B packed,
   its panels ps1 (ps2) elements apart; A1[i][k] = A1[i * ars1 + k * aks1], A2 row-major
   with row stride ars2. */
struct gemm {
    int64_t n, M, K1;
    const void *A1;
    int64_t ars1, aks1;
    const void *B1;
    int64_t ps1, K2;
    const void *A2;
    int64_t ars2;
    const void *B2;
    int64_t ps2;
    void *C;
    int64_t ldc;
    const void *Cin;
    int64_t ldcin;
    int backwards;  /* run the tiles last to first */
};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_X86_VARIANTS 1  /* GCC and clang compile functions for AVX-512 and AVX2 beside the baseline */
#include <immintrin.h>
#endif
#include "_native_quant.h"
#define AT_KC 64  /* gemm_at's block of K */
#define AT_ROWS 12  /* gemm_at's row blocks are multiples of this (of every instruction set's MR) */
#define PASTE_(a, b) a##_##b
#define PASTE(a, b) PASTE_(a, b)

#define T float
#define ITYPE int32_t
#define TNAME f32
#include "_native_isas.h"
#undef T
#undef ITYPE
#undef TNAME

#define T double
#define ITYPE int64_t
#define TNAME f64
#include "_native_isas.h"
#undef T
#undef ITYPE
#undef TNAME

struct isa {
    const char *name;
    int vector_bytes;
    scan_fn forward[2], backward[2];  /* [float, double] */
    void (*pack_f)(const float *, int64_t, int64_t, int64_t, int64_t, float *, int64_t, int64_t);
    void (*pack_d)(const double *, int64_t, int64_t, int64_t, int64_t, double *, int64_t, int64_t);
    void (*at_f)(int64_t, int64_t, int64_t, int64_t, const float *, int64_t, const float *, float *, int64_t, int);
    void (*at_d)(int64_t, int64_t, int64_t, int64_t, const double *, int64_t, const double *, double *, int64_t, int);
    float (*read)(const float *, int64_t, int64_t);
    void (*apply_f)(int, float *, int64_t);
    void (*apply_d)(int, double *, int64_t);
    void (*bern_f)(float *, int64_t, uint64_t, uint64_t);
    void (*bern_d)(double *, int64_t, uint64_t, uint64_t);
    int (*width)(void);
    lscan_fn lscan[2];  /* [float, double]: batch rows r0..r1 of a linear scan */
    lscan_chunks_fn lscan_chunks[2];  /* [float, double]: a thread's chunk of the steps */
    void (*mm_f)(int64_t, int64_t, int64_t, int64_t, const float *, const float *, float *, const float *);
    void (*mm_d)(int64_t, int64_t, int64_t, int64_t, const double *, const double *, double *, const double *);
};

#define ISA(label, vb, s)                                                                                    \
    {label, vb, {forward_f32_##s, forward_f64_##s}, {backward_f32_##s, backward_f64_##s}, pack_f32_##s,   \
     pack_f64_##s, gemm_at_f32_##s, gemm_at_f64_##s, read_f32_##s, apply_f32_##s, apply_f64_##s,           \
     bernoulli_f32_##s, bernoulli_f64_##s, width_f32_##s, {lscan_rows_f32_##s, lscan_rows_f64_##s},        \
     {lscan_chunks_f32_##s, lscan_chunks_f64_##s}, rows_mm_f32_##s, rows_mm_f64_##s}
static const struct isa ISA_BASE = ISA("baseline", 16, base);
#ifdef HAVE_X86_VARIANTS
static const struct isa ISA_AVX2 = ISA("avx2", 32, avx2);
static const struct isa ISA_AVX512 = ISA("avx512", 64, avx512);
#endif

static const struct isa *best_isa(void) {
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
        return &ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &ISA_AVX2;
#endif
    return &ISA_BASE;
}

/* The variants compiled here, from the baseline up: a CPU runs those up to its best. */
static const struct isa *const VARIANTS[] = {
    &ISA_BASE,
#ifdef HAVE_X86_VARIANTS
    &ISA_AVX2, &ISA_AVX512,
#endif
};
#define NVARIANTS ((int)(sizeof VARIANTS / sizeof VARIANTS[0]))

/* Whether this CPU runs variant v. */
static int cpu_runs(const struct isa *v) {
    const struct isa *best = best_isa();
    for (int i = 0; i < NVARIANTS; i++) {
        if (VARIANTS[i] == v) return 1;
        if (VARIANTS[i] == best) return 0;
    }
    return 0;
}

#endif
