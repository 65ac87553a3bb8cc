/* The compiled kernels without Python: replays fixture files (tests/native/fixtures.py)
 * that hold the loops' described calls (struct scan), weight-gradient products and gate
 * functions of real layer runs, with the results the host's kernels gave, and compares.
 * Built for other CPUs and run under qemu by .ci/run (aarch64; x86 as Nehalem and Haswell,
 * so that the baseline and AVX2 variants run on an AVX-512 machine).
 *
 *   driver FIXTURE...      exit 0 when every case matches; one line per file
 */
#include <math.h>
#include <stdio.h>

#include "../../src/nprnn/functional/_native_core.h"

/* One thread runs every part in turn: the team's calls never wait for anyone. */
static void team_barrier(struct team *t, int me, int nthr) {
    (void)t, (void)me;
    if (nthr > 1) abort();
}
static void wave_wait(const struct scan *s, unsigned need) { (void)s, (void)need, abort(); }
static void wave_publish(const struct scan *s, unsigned done) { (void)s, (void)done, abort(); }

#define MAX_ITEMS 64
struct fx {
    int nints, nkeys, nblocks;
    char iname[MAX_ITEMS][16], kname[MAX_ITEMS][16];
    int64_t icount[MAX_ITEMS], ivals[MAX_ITEMS][MAX_PARTS + 1];
    int64_t kblock[MAX_ITEMS], koff[MAX_ITEMS];
    int64_t bdtype[MAX_ITEMS], bbytes[MAX_ITEMS];
    char *binit[MAX_ITEMS], *bwant[MAX_ITEMS], *braw[MAX_ITEMS];  /* binit: braw 64-byte aligned */
};

static int64_t rd(FILE *f) {
    int64_t v = 0;
    if (fread(&v, 8, 1, f) != 1) {
        fprintf(stderr, "driver: truncated fixture\n");
        exit(2);
    }
    return v;
}

static void rdname(FILE *f, char *name) {
    if (fread(name, 1, 16, f) != 16) exit(2);
    name[15] = 0;
}

static int read_case(FILE *f, struct fx *c) {
    memset(c, 0, sizeof *c);
    c->nints = (int)rd(f);
    for (int i = 0; i < c->nints; i++) {
        rdname(f, c->iname[i]);
        c->icount[i] = rd(f);
        for (int64_t j = 0; j < c->icount[i]; j++) c->ivals[i][j] = rd(f);
    }
    c->nblocks = (int)rd(f);
    for (int i = 0; i < c->nblocks; i++) {
        c->bdtype[i] = rd(f);
        c->bbytes[i] = rd(f);
        c->braw[i] = malloc((size_t)c->bbytes[i] + 64);
        c->binit[i] = c->braw[i] + (64 - (uintptr_t)c->braw[i] % 64);
        c->bwant[i] = malloc((size_t)c->bbytes[i] + 1);
        if (!c->braw[i] || !c->bwant[i]) return -1;
        if (fread(c->binit[i], 1, (size_t)c->bbytes[i], f) != (size_t)c->bbytes[i] ||
            fread(c->bwant[i], 1, (size_t)c->bbytes[i], f) != (size_t)c->bbytes[i])
            return -1;
    }
    c->nkeys = (int)rd(f);
    for (int i = 0; i < c->nkeys; i++) {
        rdname(f, c->kname[i]);
        c->kblock[i] = rd(f);
        c->koff[i] = rd(f);
    }
    return 0;
}

static void free_case(struct fx *c) {
    for (int i = 0; i < c->nblocks; i++) free(c->braw[i]), free(c->bwant[i]);
}

static int64_t ival(const struct fx *c, const char *name, int64_t j) {
    for (int i = 0; i < c->nints; i++)
        if (!strcmp(c->iname[i], name)) return j < c->icount[i] ? c->ivals[i][j] : 0;
    fprintf(stderr, "driver: fixture lacks %s\n", name);
    exit(2);
}

static void *ptr(const struct fx *c, const char *name) {
    for (int i = 0; i < c->nkeys; i++)
        if (!strcmp(c->kname[i], name)) return c->binit[c->kblock[i]] + c->koff[i];
    return NULL;
}

/* Every float block within tolerance of the host's result (NaN where it had NaN); others equal. */
static int compare(const struct fx *c, double rtol32, double rtol64, double *worst) {
    int bad = 0;
    for (int b = 0; b < c->nblocks; b++) {
        int64_t n = c->bbytes[b] / (c->bdtype[b] ? c->bdtype[b] : 1);
        for (int64_t i = 0; i < n; i++) {
            double g, w, rtol = c->bdtype[b] == 4 ? rtol32 : rtol64;
            if (c->bdtype[b] == 4)
                g = ((float *)c->binit[b])[i], w = ((float *)c->bwant[b])[i];
            else if (c->bdtype[b] == 8)
                g = ((double *)c->binit[b])[i], w = ((double *)c->bwant[b])[i];
            else {
                bad += c->binit[b][i] != c->bwant[b][i];
                continue;
            }
            if (isnan(w) || isnan(g)) {
                bad += isnan(w) != isnan(g);
                continue;
            }
            double err = fabs(g - w) / (rtol + fabs(w) * rtol);  /* 1: at the tolerance */
            if (err > *worst) *worst = err;
            bad += err > 1;
        }
    }
    return bad;
}

static const struct isa *pick(int64_t vector_bytes) {
    for (int i = 0; i < NVARIANTS; i++)
        if (VARIANTS[i]->vector_bytes == vector_bytes && cpu_runs(VARIANTS[i])) return VARIANTS[i];
    return NULL;
}

/* The fields of struct scan the fixture sets, by name. */
#define PTR_FIELDS(X)                                                                                        \
    X(batch_sizes) X(offsets) X(x) X(wih) X(whh) X(bias) X(bhn) X(whr) X(out) X(h) X(c) X(hbuf) X(xproj)      \
    X(gates) X(hprev) X(cprev) X(tc) X(m) X(ghn) X(gxs) X(dx) X(dgx) X(dgh) X(dproj) X(scratch) X(sih) X(shh)    \
    X(shr) X(uih) X(uhh) X(uhr) X(qx) X(qh) X(qxs) X(qhs) X(qxz) X(qhz) X(cs) X(dcs) X(lnw) X(lnx) X(lnr) X(lnsum)   \
    X(rmask) X(rbuf) X(zh) X(zc) X(zsave) X(dw) X(blk) X(bpk)

static int run_scan_case(const struct isa *is, const struct fx *c) {
    struct scan s;
    memset(&s, 0, sizeof s);
    s.kind = (int)ival(c, "kind", 0), s.train = (int)ival(c, "train", 0), s.reverse = (int)ival(c, "reverse", 0);
    s.accumulate = (int)ival(c, "accumulate", 0), s.back = (int)ival(c, "back", 0);
    s.G = ival(c, "G", 0), s.H = ival(c, "H", 0), s.P = ival(c, "P", 0), s.Hin = ival(c, "Hin", 0);
    s.steps = ival(c, "steps", 0), s.N = ival(c, "N", 0), s.rows = ival(c, "rows", 0);
    s.r0 = ival(c, "r0", 0), s.r1 = ival(c, "r1", 0), s.ldout = ival(c, "ldout", 0), s.parts = ival(c, "parts", 0);
    s.phase = ival(c, "phase", 0), s.nranges = 1;
    for (int64_t p = 0; p <= s.parts; p++) {
        s.units[p] = ival(c, "units", p), s.pcols[p] = ival(c, "pcols", p);
        if (p < s.parts) s.wih_at[p] = ival(c, "wih_at", p), s.whh_at[p] = ival(c, "whh_at", p), s.whr_at[p] = ival(c, "whr_at", p);
    }
#define SET(f) s.f = ptr(c, #f);
    PTR_FIELDS(SET)
#undef SET
    s.wq = (int)ival(c, "wq", 0), s.kx = ival(c, "kx", 0), s.kh = ival(c, "kh", 0);
    s.kblock = ival(c, "kblock", 0), s.ones = (int)ival(c, "ones", 0), s.rix = ival(c, "rix", 0);
    if (s.wq) s.qmm = q_best(s.wq, 99)->fn;  /* quantized weights: this CPU's best product (the same sums) */
    int dbl = ival(c, "itemsize", 0) == 8;
    s.kernel = s.back ? is->backward[dbl] : is->forward[dbl];
    s.kernel(&s, 0, 1);
    return dbl;
}

int main(int argc, char **argv) {
    int failed = 0;
    for (int a = 1; a < argc; a++) {
        FILE *f = fopen(argv[a], "rb");
        char magic[8];
        if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "NPRNNFX1", 8)) {
            fprintf(stderr, "driver: %s is not a fixture file\n", argv[a]);
            return 2;
        }
        int64_t vb = rd(f), ncases = rd(f);
        const struct isa *is = pick(vb);
        if (!is) {
            printf("%s: packed for %lld-byte vectors, which this CPU does not run: FAIL\n", argv[a], (long long)vb);
            failed = 1;
            continue;
        }
        int counts[3] = {0, 0, 0}, bad = 0;
        double worst = 0;
        for (int64_t k = 0; k < ncases; k++) {
            struct fx *c = malloc(sizeof *c);
            if (!c || read_case(f, c) < 0) {
                fprintf(stderr, "driver: %s: bad case %lld\n", argv[a], (long long)k);
                return 2;
            }
            int64_t type = ival(c, "case", 0);
            int nbad;
            if (type == 0) {  /* a loop: the parity tolerances */
                run_scan_case(is, c);
                nbad = compare(c, 1e-5, 1e-10, &worst);
            } else if (type == 1) {  /* a weight-gradient product */
                int64_t r0 = ival(c, "r0", 0), r1 = ival(c, "r1", 0), K = ival(c, "K", 0), M = ival(c, "M", 0);
                int64_t lda = ival(c, "lda", 0), acc = ival(c, "accumulate", 0);
                if (ival(c, "itemsize", 0) == 8)
                    is->at_d(r0, r1, K, M, ptr(c, "A"), lda, ptr(c, "Bp"), ptr(c, "C"), M, (int)acc);
                else
                    is->at_f(r0, r1, K, M, ptr(c, "A"), lda, ptr(c, "Bp"), ptr(c, "C"), M, (int)acc);
                nbad = compare(c, 1e-5, 1e-10, &worst);
            } else {  /* a gate function on a sweep: within its bound in ulps of the reference */
                int64_t which = ival(c, "which", 0), n = ival(c, "n", 0), dbl = ival(c, "itemsize", 0) == 8;
                double bound = (double)ival(c, "bound_centiulps", 0) / 100;
                void *x = ptr(c, "a");
                const double *ref = ptr(c, "ref");
                if (dbl)
                    is->apply_d((int)which, x, n);
                else
                    is->apply_f((int)which, x, n);
                nbad = 0;
                for (int64_t i = 0; i < n; i++) {
                    double g = dbl ? ((double *)x)[i] : ((float *)x)[i], w = ref[i];
                    if (isnan(w) || isinf(w) || isnan(g)) {
                        nbad += !(isnan(w) && isnan(g)) && g != w;
                        continue;
                    }
                    double ulp = dbl ? nextafter(fabs(w), INFINITY) - fabs(w)
                                     : (double)(nextafterf((float)fabs(w), INFINITY) - (float)fabs(w));
                    double e = fabs(g - w) / ulp / bound;
                    if (e > worst) worst = e;
                    nbad += e > 1;
                }
            }
            counts[type] += 1;
            bad += nbad != 0;
            free_case(c);
            free(c);
        }
        fclose(f);
        printf("%s: %s variant, %d loops, %d products, %d gate sweeps: %s (worst %.2f of the tolerance)\n", argv[a],
               is->name, counts[0], counts[1], counts[2], bad ? "FAIL" : "ok", worst);
        if (bad) {
            printf("%d cases differ\n", bad);
            failed = 1;
        }
    }
    return failed;
}
