/* The diagonal linear scan h_t = a_t * h_{t-1} + b_t (issue 29), included by
 * _native_kernels.h once per (element type, instruction set).  With LS_MINGRU and
 * LS_MINLSTM, a and b are made from the gate pre-activations u row by row, in the same pass
 * (no (rows, H) array of a or b is ever written):
 *   minGRU   u = [k, v]:     a = sigmoid(-k), b = sigmoid(k) h~
 *   minLSTM  u = [f, i, v]:  a = F / (F + I), b = I / (F + I) h~,  F = sigmoid(f), I = sigmoid(i)
 * with h~ = v (mode linear) or g(v) = v + 0.5 for v >= 0, sigmoid(v) below (mode log).
 * Backward: the running g = dL/dh_t (dh in), g += dout_t, then da = g h_{t-1}, db = g (or
 * through the gates, du), and g = a g for h_{t-1}; g ends as dL/dh_0.  A batch whose
 * sequences all run every step splits its steps into chunks across the threads
 * (lscan_chunks); a ragged one splits its rows (lscan_rows), each row's sums the
 * one-thread sums, bit for bit. */
#define LS_BLK 512  /* units at a time: a whole row of H <= 512 in one go */
/* The chunks' products of a fall towards zero; below the smallest normal number they are
   zero (their share of a state is below its rounding), never subnormal (which is slow). */
#define LS_TINY ((T)(sizeof(T) == 4 ? 1.17549435e-38 : 2.2250738585072014e-308))
#define LS_MUL(p, a) ((p) = (p) * (a) < LS_TINY ? (T)0 : (p) * (a))

/* dst[0..w) = src[0..w): past the caches (non-temporal stores) where s->stream says the
   output is too large to stay in them and the instruction set has such stores. */
static TGT inline void FN(ls_store)(const struct lscan *s, T *restrict dst, const T *restrict src, int64_t w) {
    if (s->stream)
        FN(nt_copy)(dst, src, w);
    else
        memcpy(dst, src, (size_t)w * sizeof(T));
}

/* The fence after a pass of non-temporal stores (before another thread reads them). */
static TGT inline void FN(ls_fence)(const struct lscan *s) {
#ifdef NT_FENCE
    if (s->stream) NT_FENCE();
#endif
    (void)s;
}

/* a, b and h~ of units j0..j0+w of packed row `row`; with dv (backward) also g'(v), and in
   b the gate that scales h~ (minGRU's z), in a and b minLSTM's F and I. */
static TGT void FN(ls_ab)(const struct lscan *s, int64_t row, int64_t j0, int64_t w, T *restrict a,
                          T *restrict b, T *restrict ht, T *restrict dv) {
    const int64_t H = s->H;
    if (s->kind == LS_PLAIN) {
        memcpy(a, (const T *)s->a + row * H + j0, (size_t)w * sizeof(T));
        if (s->b) memcpy(b, (const T *)s->b + row * H + j0, (size_t)w * sizeof(T));  /* (backward: none) */
        return;
    }
    const int gru = s->kind == LS_MINGRU;
    const T *u = (const T *)s->a + row * (gru ? 2 : 3) * H;
    const T *v = u + (gru ? H : 2 * H) + j0;
    T e[LS_BLK], e2[LS_BLK];
    if (s->logm) {  /* h~ = g(v), and g'(v) for backward */
        for (int64_t j = 0; j < w; j++) e[j] = v[j] < (T)0 ? v[j] : (T)0;
        FN(exp_)(e, w);
        for (int64_t j = 0; j < w; j++) {
            T sg = e[j] / ((T)1 + e[j]);
            ht[j] = v[j] >= (T)0 ? v[j] + (T)0.5 : sg;
            if (dv) dv[j] = v[j] >= (T)0 ? (T)1 : sg * ((T)1 - sg);
        }
    } else {
        memcpy(ht, v, (size_t)w * sizeof(T));
        if (dv)
            for (int64_t j = 0; j < w; j++) dv[j] = (T)1;
    }
    const T *k = u + j0;
    for (int64_t j = 0; j < w; j++) e[j] = k[j] < (T)0 ? k[j] : -k[j];  /* exp(-|x|): no overflow */
    FN(exp_)(e, w);
    if (gru) {
        for (int64_t j = 0; j < w; j++) {
            T r = (T)1 / ((T)1 + e[j]), z = k[j] >= (T)0 ? r : e[j] * r;
            a[j] = k[j] >= (T)0 ? e[j] * r : r;  /* sigmoid(-k), not 1 - z: no cancellation */
            b[j] = dv ? z : z * ht[j];  /* (backward needs z itself) */
        }
        return;
    }
    const T *ki = u + H + j0;
    for (int64_t j = 0; j < w; j++) e2[j] = ki[j] < (T)0 ? ki[j] : -ki[j];
    FN(exp_)(e2, w);
    for (int64_t j = 0; j < w; j++) {
        T F = k[j] >= (T)0 ? (T)1 / ((T)1 + e[j]) : e[j] / ((T)1 + e[j]);
        T I = ki[j] >= (T)0 ? (T)1 / ((T)1 + e2[j]) : e2[j] / ((T)1 + e2[j]);
        T sum = F + I;
        a[j] = F / sum;
        b[j] = I / sum * ht[j];
        e[j] = F, e2[j] = I;  /* kept for backward, in a and b's place below */
    }
    if (dv)  /* backward needs F and I: a and b are recomputed from them there */
        for (int64_t j = 0; j < w; j++) a[j] = e[j], b[j] = e2[j];
}

/* The gradients of one row's units j0..j0+w from the true g = dL/dh_t (hp: h_{t-1}):
   da, db (LS_PLAIN) or du; then g = a g, for h_{t-1}. */
static TGT void FN(ls_grads)(const struct lscan *s, int64_t row, int64_t j0, int64_t w, const T *hp, T *g) {
    const int64_t H = s->H;
    T a[LS_BLK], b[LS_BLK], ht[LS_BLK], dv[LS_BLK];
    FN(ls_ab)(s, row, j0, w, a, b, ht, dv);
    if (s->kind == LS_PLAIN) {
        T *da = (T *)s->da + row * H + j0, *db = (T *)s->db + row * H + j0;
        for (int64_t j = 0; j < w; j++) {
            da[j] = g[j] * hp[j];
            db[j] = g[j];
            g[j] *= a[j];
        }
    } else if (s->kind == LS_MINGRU) {
        T *du = (T *)s->da + row * 2 * H;
        for (int64_t j = 0; j < w; j++) {
            T z = b[j];  /* dL/dk = g a z (h~ - h_{t-1}), dL/dv = g z g'(v) */
            du[j0 + j] = g[j] * a[j] * z * (ht[j] - hp[j]);
            du[H + j0 + j] = g[j] * z * dv[j];
            g[j] *= a[j];
        }
    } else {
        T *du = (T *)s->da + row * 3 * H;
        for (int64_t j = 0; j < w; j++) {
            T F = a[j], I = b[j], sum = F + I, s2 = sum * sum;
            T d = g[j] * (hp[j] - ht[j]) / s2;  /* dL/dF = g I (h_{t-1} - h~) / (F + I)^2 */
            du[j0 + j] = d * I * F * ((T)1 - F);
            du[H + j0 + j] = -d * F * I * ((T)1 - I);
            du[2 * H + j0 + j] = g[j] * I / sum * dv[j];
            g[j] *= F / sum;
        }
    }
}

/* Where backward keeps a row's local g between its passes (time chunks): db, or du's h~ part. */
static TGT inline T *FN(ls_keep)(const struct lscan *s, int64_t row) {
    const int64_t H = s->H;
    if (s->kind == LS_PLAIN) return (T *)s->db + row * H;
    return (T *)s->da + row * (s->kind == LS_MINGRU ? 2 : 3) * H + (s->kind == LS_MINGRU ? H : 2 * H);
}

/* One row of one step, every unit, in one of the passes:
   FWD    st = a st + b, out = st;
   REDUCE st = a st + b, pr *= a (a chunk's own recurrence from zero, and its product; no output);
   BACK  g += dout, the gradients from g, g = a g (hp: h_{t-1});
   LOCAL g += dout, kept (ls_keep), g = a g, pr *= a;
   BFIX  g = kept + pr R (R: the carried-in a g from above), the gradients from g, pr *= a. */
static TGT void FN(ls_row)(const struct lscan *s, int pass, int64_t row, int64_t r, T *st, T *pr, const T *hp) {
    const int64_t H = s->H;
    T a[LS_BLK], b[LS_BLK], ht[LS_BLK], g[LS_BLK];
    T *o = (T *)s->out + row * H;
    for (int64_t j0 = 0; j0 < H; j0 += LS_BLK) {
        const int64_t w = H - j0 < LS_BLK ? H - j0 : LS_BLK;
        T *x = st + r * H + j0, *p = pr ? pr + r * H + j0 : 0;
        if (pass == LS_FWD || pass == LS_REDUCE) {
            const T *ar = a, *br = b;
            if (s->kind == LS_PLAIN)  /* a and b read where they are */
                ar = (const T *)s->a + row * H + j0, br = (const T *)s->b + row * H + j0;
            else
                FN(ls_ab)(s, row, j0, w, a, b, ht, 0);
            for (int64_t j = 0; j < w; j++) x[j] = ar[j] * x[j] + br[j];
            if (pass == LS_REDUCE)
                for (int64_t j = 0; j < w; j++) LS_MUL(p[j], ar[j]);
            else
                FN(ls_store)(s, o + j0, x, w);
            continue;
        }
        if (pass == LS_BACK) {
            for (int64_t j = 0; j < w; j++) x[j] += o[j0 + j];
            FN(ls_grads)(s, row, j0, w, hp + j0, x);
            continue;
        }
        if (pass == LS_LOCAL) {
            T *keep = FN(ls_keep)(s, row) + j0;
            FN(ls_ab)(s, row, j0, w, a, b, ht, 0);
            for (int64_t j = 0; j < w; j++) {
                keep[j] = x[j] += o[j0 + j];
                x[j] *= a[j];
                LS_MUL(p[j], a[j]);
            }
            continue;
        }
        const T *keep = FN(ls_keep)(s, row) + j0;  /* LS_BFIX: x is R, the carried-in a g */
        for (int64_t j = 0; j < w; j++) g[j] = keep[j] + p[j] * x[j];
        FN(ls_ab)(s, row, j0, w, a, b, ht, 0);
        for (int64_t j = 0; j < w; j++) LS_MUL(p[j], a[j]);
        FN(ls_grads)(s, row, j0, w, hp + j0, g);
    }
}

/* The packed row of step q (in processing order) and its h_{t-1} rows (backward). */
static TGT inline int64_t FN(ls_t)(const struct lscan *s, int64_t q) { return s->reverse ? s->steps - 1 - q : q; }

/* Batch rows r0..r1 of the scan over all steps, forward or backward (a ragged batch's
   share of one thread: each thread's rows of a step lie together in memory). */
static TGT void FN(lscan_rows)(const struct lscan *s, int64_t r0, int64_t r1) {
    const int64_t H = s->H, steps = s->steps;
    for (int64_t qq = 0; qq < steps; qq++) {
        const int64_t q = s->back ? steps - 1 - qq : qq;  /* the step in forward processing order */
        const int64_t t = FN(ls_t)(s, q), n = s->batch_sizes[t], row = s->offsets[t];
        int64_t tp = -1, np = 0;  /* the step before, in processing order (backward's h_{t-1}) */
        if (s->back && q > 0) {
            tp = FN(ls_t)(s, q - 1);
            np = s->batch_sizes[tp];
        }
        for (int64_t r = r0; r < (n < r1 ? n : r1); r++) {
            const T *hp = s->back ? (r < np ? (const T *)s->y + (s->offsets[tp] + r) * H : (const T *)s->h0 + r * H)
                                  : 0;
            FN(ls_row)(s, s->back ? LS_BACK : LS_FWD, row + r, r, (T *)s->h, 0, hp);
        }
    }
    FN(ls_fence)(s);
}

/* Steps q0..q1 (processing order; backward walks them down) of every row, in one pass, with
   the state st (N, H) and the product pr (or none). */
static TGT void FN(ls_span)(const struct lscan *s, int pass, int64_t q0, int64_t q1, T *st, T *pr) {
    const int64_t H = s->H, N = s->N, down = pass >= LS_BACK;
    if (s->kind == LS_PLAIN && !down && !s->reverse) {  /* a and b given, in time order: one tight loop */
        const int64_t NH = N * H;
        const T *a = (const T *)s->a + q0 * NH, *b = (const T *)s->b + q0 * NH;
        T *o = (T *)s->out + q0 * NH;
        for (int64_t q = q0; q < q1; q++, a += NH, b += NH, o += NH) {
            for (int64_t i = 0; i < NH; i++) st[i] = a[i] * st[i] + b[i];
            if (pass == LS_REDUCE)
                for (int64_t i = 0; i < NH; i++) LS_MUL(pr[i], a[i]);
            else
                FN(ls_store)(s, o, st, NH);
        }
        return;
    }
    for (int64_t i = 0; i < q1 - q0; i++) {
        const int64_t q = down ? q1 - 1 - i : q0 + i, row = s->offsets[FN(ls_t)(s, q)];
        const T *hp = down ? (q > 0 ? (const T *)s->y + s->offsets[FN(ls_t)(s, q - 1)] * H : (const T *)s->h0) : 0;
        for (int64_t r = 0; r < N; r++) FN(ls_row)(s, pass, row + r, r, st, pr, hp ? hp + r * H : 0);
    }
}

/* Thread `me` of `nthr` over a batch whose every sequence runs every step, the steps split
   into nthr chunks (each thread streams its own stretch of memory).  Forward: chunk 0 runs
   from the true state writing its output while the others run their recurrence from zero
   without output, keeping the product of their a (and both where a piece begins inside
   them); then the steps after chunk 0 run again in nthr pieces, each from its true state
   (its chunk's own state there + product * the state carried into the chunk), writing the
   output once.  Backward: the last chunk from the true gradient, the others from zero
   keeping theirs in db / du; then fixed up in pieces, g_t = kept + (product of a since the
   chunk's end) * the R carried in, with the gradients from it.  work: 6 nthr (N, H)
   blocks: each chunk's end state and product, each piece's product and state at its start,
   each thread's running product and carried state. */
static TGT void FN(lscan_chunks)(const struct lscan *s, int me, int nthr) {
    const int64_t H = s->H, N = s->N, S = s->steps, NH = N * H, back = s->back;
    T *W = (T *)s->work, *h = (T *)s->h;
    T *end = W, *prod = W + nthr * NH, *start = W + 2 * nthr * NH, *run = W + 3 * nthr * NH + me * NH;
    T *carry = W + 4 * nthr * NH + me * NH, *at_state = W + 5 * nthr * NH;  /* (forward: the state at piece i) */
    /* chunk k = [QB(k), QB(k + 1)); forward, chunk 0 (which writes its output as it goes) is
       2/3 the others (which read a and b twice): every thread's first pass then moves as many
       bytes */
#define QB(k) (back ? S * (k) / nthr : (k) == 0 ? 0 : S * (3 * (k) - 1) / (3 * nthr - 1))
    /* the chunk that starts from the true state: the first forward, the last backward */
    const int first = back ? nthr - 1 : 0, k = me;
    /* the fixed-up steps [F0, F1), in pieces of equal length; piece i = [P(i), P(i + 1)) */
    const int64_t F0 = back ? 0 : QB(1), F1 = back ? QB(nthr - 1) : S;
#define PB(i) (F0 + (F1 - F0) * (i) / nthr)
    if (k == first) {
        FN(ls_span)(s, back ? LS_BACK : LS_FWD, QB(k), QB(k + 1), h, 0);
    } else {
        T *st = end + k * NH, *pr = prod + k * NH;
        memset(st, 0, NH * sizeof(T));
        for (int64_t i = 0; i < NH; i++) pr[i] = (T)1;
        /* walk the chunk, stopping where a piece starts inside it to keep the product there */
        int64_t lo = QB(k), hi = QB(k + 1);
        for (int i = 1; i < nthr; i++) {  /* piece i's head: forward its first step, backward its last + 1 */
            const int64_t at = back ? PB(nthr - i) : PB(i);
            if (at <= lo || at >= hi) continue;
            if (!back) {
                FN(ls_span)(s, LS_REDUCE, lo, at, st, pr);
                memcpy(at_state + i * NH, st, NH * sizeof(T));
                lo = at;
            } else {
                FN(ls_span)(s, LS_LOCAL, at, hi, st, pr);
                hi = at;
            }
            memcpy(start + i * NH, pr, NH * sizeof(T));
        }
        FN(ls_span)(s, back ? LS_LOCAL : LS_REDUCE, lo, hi, st, pr);
    }
    FN(ls_fence)(s);
    team_barrier(s->team, me, nthr);
    /* piece me: its steps, the chunk they begin in, the state carried into that chunk */
    const int64_t a0 = back ? PB(nthr - 1 - me) : PB(me), a1 = back ? PB(nthr - me) : PB(me + 1);
    if (a0 < a1) {
        int64_t c = back ? (a1 - 1) * nthr / S : a0 * nthr / S;  /* the chunk of the piece's first step */
        while (QB(c) > (back ? a1 - 1 : a0)) c--;
        while (QB(c + 1) <= (back ? a1 - 1 : a0)) c++;
        memcpy(carry, h, NH * sizeof(T));  /* the first chunk's final state (forward) or R out of it (backward) */
        if (!back)
            for (int64_t kk = 1; kk < c; kk++)
                for (int64_t i = 0; i < NH; i++) carry[i] = end[kk * NH + i] + prod[kk * NH + i] * carry[i];
        else
            for (int64_t kk = nthr - 2; kk > c; kk--)
                for (int64_t i = 0; i < NH; i++) carry[i] = end[kk * NH + i] + prod[kk * NH + i] * carry[i];
        const int64_t head = back ? a1 : a0;  /* where the piece begins in the walk */
        const int at_chunk_start = head == (back ? QB(c + 1) : QB(c));
        if (!back) {  /* forward: the true state before the piece, then one pass writing the output */
            if (!at_chunk_start)  /* the chunk's own state there, plus its product times the state carried in */
                for (int64_t i = 0; i < NH; i++)
                    carry[i] = at_state[me * NH + i] + start[me * NH + i] * carry[i];
            FN(ls_span)(s, LS_FWD, a0, a1, carry, 0);
        }
        if (at_chunk_start)  /* at its chunk's start: the product from 1 */
            for (int64_t i = 0; i < NH; i++) run[i] = (T)1;
        else  /* the product the chunk's walk kept there (start[i] was kept for piece i) */
            memcpy(run, start + me * NH, NH * sizeof(T));
        int64_t lo = a0, hi = a1;
        while (back && lo < hi) {  /* backward: one chunk's part of the piece at a time, fixed up */
            const int64_t stop = QB(c) > lo ? QB(c) : lo;
            FN(ls_span)(s, LS_BFIX, stop, hi, carry, run);
            hi = stop;
            if (lo < hi) {  /* into the chunk below: the R carried into it, the product from 1 */
                for (int64_t i = 0; i < NH; i++) carry[i] = end[c * NH + i] + prod[c * NH + i] * carry[i];
                for (int64_t i = 0; i < NH; i++) run[i] = (T)1;
                c--;
            }
        }
    }
    FN(ls_fence)(s);
    team_barrier(s->team, me, nthr);
    if (me == 0) {  /* the final state: forward the last step's rows; backward R out of chunk 0 */
        if (!back) {
            memcpy(h, (const T *)s->out + s->offsets[FN(ls_t)(s, S - 1)] * H, NH * sizeof(T));
        } else {
            memcpy(carry, h, NH * sizeof(T));
            for (int64_t kk = nthr - 2; kk >= 0; kk--)
                for (int64_t i = 0; i < NH; i++) carry[i] = end[kk * NH + i] + prod[kk * NH + i] * carry[i];
            memcpy(h, carry, NH * sizeof(T));
        }
    }
#undef QB
#undef PB
}
