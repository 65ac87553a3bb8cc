/* The diagonal linear scan h_t = a_t * h_{t-1} + b_t (issue 29), included by
 * _native_kernels.h once per (element type, instruction set).  With LS_MINGRU and
 * LS_MINLSTM, a and b are made from the gate pre-activations u row by row, in the same pass
 * (no (rows, H) array of a or b is ever written):
 *   minGRU   u = [k, v]:     a = sigmoid(-k), b = sigmoid(k) h~
 *   minLSTM  u = [f, i, v]:  a = F / (F + I), b = I / (F + I) h~,  F = sigmoid(f), I = sigmoid(i)
 * with h~ = v (mode linear) or g(v) = v + 0.5 for v >= 0, sigmoid(v) below (mode log).
 * Backward: the running g = dL/dh_t (dh in), g += dout_t, then da = g h_{t-1}, db = g (or
 * through the gates, du), and g = a g for h_{t-1}; g ends as dL/dh_0.  The units split
 * across the threads (each scan of a unit is independent): every unit's sums are the
 * one-thread sums, bit for bit. */
#define LS_BLK 128

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

/* The units ua..ub of the scan, forward or backward (see struct lscan). */
static TGT void FN(lscan_units)(const struct lscan *s, int64_t ua, int64_t ub) {
    const int64_t H = s->H, steps = s->steps;
    T *h = (T *)s->h;
    T a[LS_BLK], b[LS_BLK], ht[LS_BLK], dv[LS_BLK];
    for (int64_t qq = 0; qq < steps; qq++) {
        const int64_t q = s->back ? steps - 1 - qq : qq;  /* the step in forward processing order */
        const int64_t t = s->reverse ? steps - 1 - q : q, n = s->batch_sizes[t], row = s->offsets[t];
        int64_t tp = -1, np = 0;  /* the step before, in processing order (backward's h_{t-1}) */
        if (s->back && q > 0) {
            tp = s->reverse ? t + 1 : t - 1;
            np = s->batch_sizes[tp];
        }
        for (int64_t r = 0; r < n; r++) {
            T *hr = h + r * H, *o = (T *)s->out + (row + r) * H;
            for (int64_t j0 = ua; j0 < ub; j0 += LS_BLK) {
                const int64_t w = ub - j0 < LS_BLK ? ub - j0 : LS_BLK;
                if (!s->back) {
                    FN(ls_ab)(s, row + r, j0, w, a, b, ht, 0);
                    for (int64_t j = 0; j < w; j++) o[j0 + j] = hr[j0 + j] = a[j] * hr[j0 + j] + b[j];
                    continue;
                }
                const T *hp = (r < np ? (const T *)s->y + (s->offsets[tp] + r) * H : (const T *)s->h0 + r * H) + j0;
                T *g = hr + j0;
                const T *dout = o + j0;  /* backward: out is the output's gradient */
                for (int64_t j = 0; j < w; j++) g[j] += dout[j];
                FN(ls_ab)(s, row + r, j0, w, a, b, ht, dv);
                if (s->kind == LS_PLAIN) {
                    T *da = (T *)s->da + (row + r) * H + j0, *db = (T *)s->db + (row + r) * H + j0;
                    for (int64_t j = 0; j < w; j++) {
                        da[j] = g[j] * hp[j];
                        db[j] = g[j];
                        g[j] *= a[j];
                    }
                } else if (s->kind == LS_MINGRU) {
                    T *du = (T *)s->da + (row + r) * 2 * H;
                    for (int64_t j = 0; j < w; j++) {
                        T z = b[j];  /* dL/dk = g a z (h~ - h_{t-1}), dL/dv = g z g'(v) */
                        du[j0 + j] = g[j] * a[j] * z * (ht[j] - hp[j]);
                        du[H + j0 + j] = g[j] * z * dv[j];
                        g[j] *= a[j];
                    }
                } else {
                    T *du = (T *)s->da + (row + r) * 3 * H;
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
        }
    }
}
