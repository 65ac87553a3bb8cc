/* nprnn's compiled kernels: one call runs one layer-direction's whole time loop.
 *
 * Python (nprnn/functional/native.py) validates every argument and allocates every array;
 * the calls here check only that each buffer is large enough for the loop they run, so a
 * bug upstream raises ValueError instead of touching memory it should not.  The loop runs
 * with the GIL released and allocates nothing.
 *
 * The kernels are written once (_native_kernels.h) and compiled for float and double, each
 * for AVX-512, AVX2+FMA and the baseline; the best the CPU supports is chosen at import.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE  /* sched_getcpu, sched_setaffinity: a helper woken onto its caller's core moves off */
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _WIN32
#include <process.h>
#include <windows.h>
#define getpid _getpid
#else
#include <sched.h>
#include <unistd.h>
#endif

#include "_native_core.h"

static const struct isa *isa = &ISA_BASE;  /* the variant in use: best_isa() at import, or set_isa */

/* ------------------------------------------------------------------ the team
 * Threads that share one loop's parts: the caller (thread 0) and helpers, Python threads
 * that each called Team.serve(i) and wait inside it, without the GIL, for the next job.
 * They meet at team_barrier once per step.  A waiting thread spins, then sleeps on its own
 * lock (a PyThread lock: portable, usable without the GIL) until the thread that ends the
 * wait releases it; so an idle team holds no core.  A helper waiting for the next job
 * spins `spin` ns; a thread waiting for the others inside a loop spins `step_spin` ns,
 * longer: they are working on the same job and come within a step, while a thread
 * woken from sleep can take longer than a step to run again (on a virtual machine, up to
 * 100 us), and a partner that slept at one step would arrive late at the next one. */
#define MAX_THREADS 64
typedef struct team {
    PyObject_HEAD
    int n;          /* threads, the caller's included */
    long pid;       /* the process whose threads serve it (a forked child's copy has none) */
    int64_t spin, step_spin;  /* ns a thread waiting for a job, for a step, spins before it sleeps */
    atomic_int ready, stop, busy;
    atomic_uint job_gen;
    atomic_llong runs, alone, moves;  /* jobs run on the team; alone, because it was busy; helper moves */
    void *job;
    job_fn fn;
    int job_threads;
    atomic_int caller_cpu;  /* the processor the caller posted the job from (-1: unknown) */
    unsigned epoch;         /* the barriers counted before the current job (set by its caller) */
    atomic_int sleeping[MAX_THREADS];
    PyThread_type_lock sem[MAX_THREADS];
    /* thread i's barriers: `arrived` the last it reached (others read it), `next` its own count */
    struct {
        atomic_uint arrived;
        unsigned next;
        char pad[64 - sizeof(atomic_uint) - sizeof(unsigned)];
    } at[MAX_THREADS];
} TeamObject;

static inline void cpu_relax(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    _mm_pause();
#elif defined(__GNUC__) && (defined(__aarch64__) || defined(__arm__))
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void yield_cpu(void) {
#ifdef _WIN32
    SwitchToThread();
#else
    sched_yield();
#endif
}

/* Whether *g has moved on: differs from v, or with `count` has reached v (wrapping). */
static inline int moved(atomic_uint *g, unsigned v, int count) {
    unsigned now = atomic_load(g);
    return count ? (int)(now - v) >= 0 : now != v;
}

/* Wait until moved(g, v, count): spin for spin_ns, then sleep until wake() releases this
   slot.  After the first few spins each one yields the processor: if the thread it waits
   for was woken onto this same processor (the scheduler may put it beside its waker), it
   runs at once instead of after the spinner's time slice. */
static void waitfor(struct team *t, atomic_uint *g, unsigned v, int count, int me, int64_t spin_ns) {
    int64_t deadline = 0;
    for (int64_t k = 0;; k++) {
        if (moved(g, v, count)) return;
        if (k < 512) {
            cpu_relax();
            continue;
        }
        yield_cpu();
        if (k % 8 == 0) {
            int64_t now = now_ns();
            if (!deadline) deadline = now + spin_ns;
            else if (now > deadline) break;
        }
    }
    for (;;) {
        atomic_store(&t->sleeping[me], 1);
        if (moved(g, v, count)) {
            /* claim the flag back; if a waker took it first, its release must be consumed */
            if (atomic_exchange(&t->sleeping[me], 0) == 0) PyThread_acquire_lock(t->sem[me], WAIT_LOCK);
            return;
        }
        PyThread_acquire_lock(t->sem[me], WAIT_LOCK);
        if (moved(g, v, count)) return;
    }
}

static void wake(struct team *t) {
    for (int i = 0; i < t->n; i++)
        if (atomic_load(&t->sleeping[i]) && atomic_exchange(&t->sleeping[i], 0)) PyThread_release_lock(t->sem[i]);
}

/* The scheduler may wake a sleeping helper on its waker's processor (it expects them to
   share data), or later move the caller onto its helper's, where the two then take turns
   while another processor idles: the loop runs at one core's speed until the balancer
   separates them, which can take many calls.  So while a job runs on the team, each
   thread stays on its own processor: the caller holds to the one it is on (its own
   affinity is given back when the job ends), and a helper leaves the caller's out of its
   affinity (the kernel moves it at once if it is there), for as long as the caller is
   there.  Linux only; elsewhere the scheduler decides. */
#ifdef __linux__
typedef cpu_set_t cpus_t;
#else
typedef int cpus_t;
#endif

static int hold_cpu(cpus_t *saved) {  /* the caller: stay here; returns the processor, or -1 */
#ifdef __linux__
    int cpu = sched_getcpu();
    cpu_set_t here;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof *saved, saved)) return -1;
    CPU_ZERO(&here);
    CPU_SET(cpu, &here);
    return sched_setaffinity(0, sizeof here, &here) ? -1 : cpu;
#else
    (void)saved;
    return -1;
#endif
}

static void release_cpu(int cpu, const cpus_t *saved) {
#ifdef __linux__
    if (cpu >= 0) sched_setaffinity(0, sizeof *saved, saved);
#else
    (void)cpu;
    (void)saved;
#endif
}

static int avoid_cpu(int cpu, int avoided) {  /* a helper: keep off the caller's processor */
#ifdef __linux__
    if (cpu == avoided) return avoided;
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask)) return avoided;
    if (avoided >= 0 && avoided < CPU_SETSIZE) CPU_SET(avoided, &mask);  /* free again */
    if (cpu >= 0 && cpu < CPU_SETSIZE) {
        CPU_CLR(cpu, &mask);
        if (!CPU_COUNT(&mask)) return avoided;
    }
    return sched_setaffinity(0, sizeof mask, &mask) ? avoided : cpu;
#else
    (void)avoided;
    return cpu;
#endif
}

static void wave_wait(const struct scan *s, unsigned need) {
    if (s->team) waitfor(s->team, s->await, need, 1, s->slot, s->team->step_spin);
    else
        while (atomic_load(s->await) < need) yield_cpu();
}

static void wave_publish(const struct scan *s, unsigned done) {
    atomic_store(s->publish, done);
    if (s->team) wake(s->team);
}

/* Each thread counts its barriers from the job's epoch and publishes the count on a line of
   its own; it waits for every other thread of the job to publish the same count.  One line
   crosses between two cores per barrier (a shared counter and a generation took two). */
static void team_barrier(struct team *t, int me, int nthr) {
    if (nthr < 2) return;
    unsigned e = ++t->at[me].next;
    atomic_store(&t->at[me].arrived, e);
    wake(t);
    for (int i = 0; i < nthr; i++)
        if (i != me) waitfor(t, &t->at[i].arrived, e, 1, me, t->step_spin);
}

/* Run fn(ctx, me, nthr) on `want` threads of the team t when there is a team, it is free
   and want > 1; else fn(ctx, 0, 1) on this thread alone, which must do the same work (a
   job's parts are fixed by its description, not by the threads that run them). */
static void run_job(struct team *t, int64_t want, job_fn fn, void *ctx) {
    if (t && (atomic_load(&t->stop) || t->pid != (long)getpid())) {
        atomic_fetch_add(&t->alone, 1);  /* closed, or a forked child's copy: nobody serves it */
        t = NULL;
    }
    if (t && want > 1 && atomic_exchange(&t->busy, 1) == 0) {
        int nthr = t->n < want ? t->n : (int)want;
        atomic_fetch_add(&t->runs, 1);
        cpus_t saved;
        int cpu = hold_cpu(&saved);
        t->job = ctx;
        t->fn = fn;
        t->job_threads = nthr;
        t->epoch = t->at[0].next;  /* every count so far: the job's barriers count on from it */
        atomic_store(&t->caller_cpu, cpu);
        atomic_fetch_add(&t->job_gen, 1);
        wake(t);
        fn(ctx, 0, nthr);
        team_barrier(t, 0, nthr);
        release_cpu(cpu, &saved);
        atomic_store(&t->busy, 0);
        return;
    }
    if (t && want > 1) atomic_fetch_add(&t->alone, 1);
    fn(ctx, 0, 1);
}

/* A loop split into parts (hidden units): each thread runs its share of every step. */
static void parts_job(void *ctx, int me, int nthr) {
    const struct scan *s = ctx;
    s->kernel(s, me, nthr);
}

/* A loop split into row ranges: each is a whole loop of its own; the threads take the
   next range as they come free. */
struct ranges_ctx {
    const struct scan *s;
    atomic_llong next;
};

static void ranges_job(void *ctx, int me, int nthr) {
    (void)me;
    (void)nthr;
    struct ranges_ctx *c = ctx;
    for (int64_t i; (i = atomic_fetch_add(&c->next, 1)) < c->s->nranges;) {
        struct scan one = *c->s;
        one.r0 = one.ranges[i];
        one.r1 = one.ranges[i + 1];
        one.rix = c->s->rix + i;
        one.kernel(&one, 0, 1);
    }
}

/* A wavefront: the loops of a stack's layers, thread `me` running loops me, me + nthr, ...
   each whole; loop i waits for loop i - 1 step by step (see struct scan's await). */
struct wave_ctx {
    struct scan *scans;
    int64_t n;
};

static void wave_job(void *ctx, int me, int nthr) {
    struct wave_ctx *c = ctx;
    for (int64_t i = me; i < c->n; i += nthr) {
        c->scans[i].slot = me;
        c->scans[i].kernel(&c->scans[i], 0, 1);
    }
}

static void run_scan(struct scan *s) {
    if (s->nranges > 1) {
        struct ranges_ctx c = {s, 0};
        run_job(s->team, s->nranges, ranges_job, &c);
    } else {
        run_job(s->team, s->parts, parts_job, s);
    }
}

/* ------------------------------------------------------------------ buffers */
#define MAX_BUFS 64
struct bufs {
    Py_buffer v[MAX_BUFS];
    int n;
};

static void release(struct bufs *b) {
    for (int i = 0; i < b->n; i++) PyBuffer_Release(&b->v[i]);
    b->n = 0;
}

/* The data of `obj` (NULL or None gives NULL when optional) as an array of `items`
   elements of `itemsize` bytes at least, contiguous unless `ld` is given: then 2-D rows
   of `cols` elements, any row stride, returned in *ld. */
static void *get(struct bufs *b, PyObject *obj, const char *name, int writable, Py_ssize_t itemsize,
                 Py_ssize_t items, int optional, int64_t cols, int64_t *ld) {
    if (obj == NULL || obj == Py_None) {
        if (optional) return NULL;
        PyErr_Format(PyExc_ValueError, "_native: %s is required", name);
        return NULL;
    }
    if (b->n == MAX_BUFS) {
        PyErr_SetString(PyExc_ValueError, "_native: too many buffers");
        return NULL;
    }
    Py_buffer *v = &b->v[b->n];
    int flags = (ld ? PyBUF_STRIDES : PyBUF_C_CONTIGUOUS) | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) return NULL;
    b->n++;
    if (v->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "_native: %s has items of %zd bytes, expected %zd", name, v->itemsize,
                     itemsize);
        return NULL;
    }
    if (ld) {
        if (v->ndim != 2 || v->shape[1] != cols || v->shape[0] * cols < items ||
            (v->shape[0] > 1 && (v->strides[0] % itemsize || v->strides[0] < cols * itemsize)) ||
            (cols > 1 && v->strides[1] != itemsize)) {
            PyErr_Format(PyExc_ValueError, "_native: %s must have rows of %lld elements (%zd in all)", name,
                         (long long)cols, items);
            return NULL;
        }
        *ld = v->shape[0] > 1 ? (int64_t)(v->strides[0] / itemsize) : cols;
    } else if (v->len / itemsize < items) {
        PyErr_Format(PyExc_ValueError, "_native: %s holds %zd elements, the loop needs %zd", name,
                     v->len / itemsize, items);
        return NULL;
    }
    return v->buf;
}

static int64_t as_i64(PyObject *o, int *err) {
    long long v = o ? PyLong_AsLongLong(o) : 0;
    if (v == -1 && PyErr_Occurred()) *err = 1;
    return (int64_t)v;
}

static int64_t panels(int64_t M, Py_ssize_t itemsize) {
    int64_t nr = 2 * isa->vector_bytes / (int64_t)itemsize;
    return (M + nr - 1) / nr * nr;
}

/* Bounds 0 = v[0] < v[1] < ... < v[parts] = total from an int64 array (or [0, total]). */
static int bounds(struct bufs *b, PyObject *obj, const char *name, int64_t parts, int64_t total, int64_t *v) {
    if (parts == 1 && (obj == NULL || obj == Py_None)) {
        v[0] = 0;
        v[1] = total;
        return 0;
    }
    const int64_t *src = get(b, obj, name, 0, 8, parts + 1, 0, 0, NULL);
    if (!src) return -1;
    for (int64_t p = 0; p <= parts; p++) {
        v[p] = src[p];
        if ((p == 0 && v[p] != 0) || (p > 0 && v[p] <= v[p - 1]) || (p == parts && v[p] != total)) {
            PyErr_Format(PyExc_ValueError, "_native: %s must rise from 0 to %lld", name, (long long)total);
            return -1;
        }
    }
    return 0;
}

/* The elements each part's packed weights take: K rows of its gate columns (every gate of
   its units, gate by gate; one part: all G*H columns at once), or of its w columns. */
static int64_t gate_block(const struct scan *s, int64_t p, int64_t K, Py_ssize_t isz) {
    if (s->parts == 1) return K * panels(s->G * s->H, isz);
    return s->G * K * panels(s->units[p + 1] - s->units[p], isz);
}

/* The same for quantized weights: panels of QNR columns, K padded to its group (q_kpad). */
static int64_t q_gate_block(const struct scan *s, int64_t p, int64_t K) {
    if (s->parts == 1) return q_kpad(K, s->wq) * QPAD(s->G * s->H);
    return s->G * q_kpad(K, s->wq) * QPAD(s->units[p + 1] - s->units[p]);
}

static int q_cap = 99;  /* the highest quantized path allowed (set_qpath, for tests) */

/* The keys a scan dict may hold (SCAN_KEYS); anything else is refused (a misspelt option
   would otherwise be ignored).  To add an option: a field of struct scan, a key in
   SCAN_KEYS, its check in parse_scan, and the key in nprnn.functional.native.call_args. */
#define SCAN_KEYS(X)                                                                                          \
    X(back) X(kind) X(train) X(reverse) X(accumulate) X(r0) X(r1) X(H) X(P) X(Hin) X(parts) X(units) X(pcols)  \
    X(itemsize) X(ranges) X(batch_sizes) X(offsets) X(x) X(out) X(h) X(c) X(hbuf) X(xproj) X(wih) X(whh)      \
    X(bias) X(bhn) X(whr) X(gates) X(hprev) X(cprev) X(tc) X(m) X(ghn) X(gxs) X(dx) X(dgx) X(dgh) X(dproj)     \
    X(scratch) X(team) X(wq) X(sih) X(shh) X(shr) X(uih) X(uhh) X(uhr) X(qx) X(qxs) X(qxz) X(qh) X(qhs) X(qhz)    \
    X(cs) X(dcs) X(lnw) X(lnx) X(lnr) X(lnsum) X(rmask) X(rbuf) X(zh) X(zc) X(zsave) X(dw) X(blk) X(bpk)         \
    X(kblock) X(rix)
#define KEY_ENUM(k) K_##k,
enum { SCAN_KEYS(KEY_ENUM) NKEYS };
#undef KEY_ENUM
static PyObject *KEY_OBJ[NKEYS];  /* the keys as interned strings, made at import */

static int make_keys(void) {
    int i = 0;
#define KEY_MAKE(k) KEY_OBJ[i++] = PyUnicode_InternFromString(#k);
    SCAN_KEYS(KEY_MAKE)
#undef KEY_MAKE
    for (i = 0; i < NKEYS; i++)
        if (!KEY_OBJ[i]) return -1;
    return 0;
}

static PyTypeObject TeamType;

/* Parse and check scan()'s dict into *sp, the buffers held in *bp (released on
   failure); returns the loop to run, or NULL with an exception set. */
static scan_fn parse_scan(PyObject *spec, struct scan *sp, struct bufs *bp, PyObject **team) {
    bp->n = 0;
    if (!PyDict_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "_native.scan takes one dict");
        return NULL;
    }
    PyObject *vals[NKEYS];
    Py_ssize_t known = 0;
    for (int i = 0; i < NKEYS; i++) known += (vals[i] = PyDict_GetItem(spec, KEY_OBJ[i])) != NULL;
    if (known != PyDict_Size(spec)) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: the dict holds a key the kernel does not know");
        return NULL;
    }
#define ITEM(name) vals[K_##name]
    int err = 0;
    struct scan s;
    memset(&s, 0, sizeof s);
    int back = s.back = (int)as_i64(ITEM(back), &err);
    s.kind = (int)as_i64(ITEM(kind), &err);
    s.train = (int)as_i64(ITEM(train), &err);
    s.reverse = (int)as_i64(ITEM(reverse), &err);
    s.accumulate = (int)as_i64(ITEM(accumulate), &err);
    s.r0 = as_i64(ITEM(r0), &err);
    s.r1 = as_i64(ITEM(r1), &err);
    s.H = as_i64(ITEM(H), &err);
    s.P = as_i64(ITEM(P), &err);
    s.Hin = as_i64(ITEM(Hin), &err);
    s.parts = ITEM(parts) ? as_i64(ITEM(parts), &err) : 1;
    Py_ssize_t isz = (Py_ssize_t)as_i64(ITEM(itemsize), &err);
    if (err) return NULL;
    if (s.kind < 0 || s.kind > KIND_LN_GRU || (isz != 4 && isz != 8) || s.H < 1 || s.P < 1 || s.Hin < 1 || s.r0 < 0 ||
        s.r1 <= s.r0 || s.parts < 1 || s.parts > MAX_PARTS || s.parts > s.H || (back && s.parts != 1)) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: bad kind, size, row range or parts");
        return NULL;
    }
    s.G = KIND_CELL(s.kind) ? 4 : KIND_GRU_GATES(s.kind) ? 3 : 1;
    s.train = back ? 1 : s.train;
    const int64_t GH = s.G * s.H, H = s.H, P = s.P, Hin = s.Hin;
    struct bufs b;
    b.n = 0;
    scan_fn fn = NULL;
    PyObject *t = ITEM(team);
    if (t && t != Py_None && !PyObject_TypeCheck(t, &TeamType)) {
        PyErr_SetString(PyExc_TypeError, "_native.scan: team must be a _native.Team");
        goto fail;
    }
    s.batch_sizes = get(&b, ITEM(batch_sizes), "batch_sizes", 0, 8, 1, 0, 0, NULL);
    if (!s.batch_sizes) goto fail;
    s.steps = (int64_t)(b.v[b.n - 1].len / 8);
    s.offsets = get(&b, ITEM(offsets), "offsets", 0, 8, s.steps, 0, 0, NULL);
    if (!s.offsets) goto fail;
    int64_t rows = 0, N = s.N = s.batch_sizes[0];
    for (int64_t i = 0; i < s.steps; i++) {
        if (s.batch_sizes[i] < 1 || s.batch_sizes[i] > N || (i && s.batch_sizes[i] > s.batch_sizes[i - 1]) ||
            s.offsets[i] != rows) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: batch_sizes must be positive and non-increasing, "
                                              "offsets their running sum");
            goto fail;
        }
        rows += s.batch_sizes[i];
    }
    s.rows = rows;
    if (s.r1 > N) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: row range past the batch");
        goto fail;
    }
    int lstm = KIND_CELL(s.kind), gru = KIND_GRU_GATES(s.kind), normed = KIND_NORMED(s.kind);
    int64_t tape_rows = s.train ? rows : N;  /* per packed row when training, else per batch row */
    s.out = get(&b, ITEM(out), back ? "dout" : "out", !back, isz, rows * P, 0, P, &s.ldout);
    s.h = get(&b, ITEM(h), "h", 1, isz, N * P, 0, 0, NULL);
    if (!s.out || !s.h) goto fail;
    s.c = get(&b, ITEM(c), "c", 1, isz, N * H, !lstm, 0, NULL);
    /* (a layer-norm kind's gates: per batch row, backward makes them again there) */
    s.gates = get(&b, ITEM(gates), "gates", !back || normed, isz, (normed ? N : tape_rows) * GH, 0, 0, NULL);
    if ((lstm && !s.c) || !s.gates) goto fail;
    s.bhn = get(&b, ITEM(bhn), "bhn", 0, isz, H, 1, 0, NULL);
    if (PyErr_Occurred()) goto fail;
    PyObject *whr = ITEM(whr);
    int proj = whr != NULL && whr != Py_None;
    if (proj && !lstm) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: a projection is for LSTM only");
        goto fail;
    }
    if (!proj && P != H) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: H_out must equal H without a projection");
        goto fail;
    }
    PyObject *ranges = ITEM(ranges);
    s.nranges = 1;
    if (ranges && ranges != Py_None) {
        Py_buffer *v = &b.v[b.n];
        if (PyObject_GetBuffer(ranges, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto fail;
        b.n++;
        s.nranges = (int64_t)(v->len / 8) - 1;
        if (v->itemsize != 8 || s.nranges < 1 || s.nranges > MAX_PARTS) {
            PyErr_Format(PyExc_ValueError, "_native.scan: ranges must be 2 to %d int64 bounds", MAX_PARTS + 1);
            goto fail;
        }
        if (s.r0 != 0 || s.r1 != N || s.parts != 1) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: ranges split a whole batch of one part");
            goto fail;
        }
    }
    if (bounds(&b, ranges, "ranges", s.nranges, N, s.ranges) < 0 ||
        bounds(&b, ITEM(units), "units", s.parts, H, s.units) < 0 ||
        bounds(&b, ITEM(pcols), "pcols", s.parts, proj ? P : H, s.pcols) < 0)
        goto fail;
    s.wq = ITEM(wq) ? (int)as_i64(ITEM(wq), &err) : WQ_FLOAT;
    if (err) goto fail;
    if (s.wq) {
        const struct qpath *path = s.wq == WQ_INT8 || s.wq == WQ_BF16 ? q_best(s.wq, q_cap) : NULL;
        if (!path || isz != 4 || back || s.train) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: quantized weights (wq 1 int8, 2 bf16) are for float32 "
                                              "inference of a whole batch");
            goto fail;
        }
        s.qmm = path->fn;
    }
    const Py_ssize_t wsz = s.wq == WQ_INT8 ? 1 : s.wq == WQ_BF16 ? 2 : isz;  /* a weight's element */
    int64_t wih_n = 0, whh_n = 0, whr_n = 0;
    for (int64_t p = 0; p < s.parts; p++) {
        s.wih_at[p] = wih_n;
        s.whh_at[p] = whh_n;
        s.whr_at[p] = whr_n;
        if (s.wq) {
            wih_n += q_gate_block(&s, p, Hin);
            whh_n += q_gate_block(&s, p, P);
            whr_n += q_kpad(H, s.wq) * QPAD(s.pcols[p + 1] - s.pcols[p]);
        } else {
            wih_n += gate_block(&s, p, Hin, isz);
            whh_n += gate_block(&s, p, P, isz);
            whr_n += H * panels(s.pcols[p + 1] - s.pcols[p], isz);
        }
    }
    if (s.wq) {  /* the scales and row sums, the quantized rows */
        const int i8 = s.wq == WQ_INT8;
        s.kx = q_kpad(Hin, s.wq);
        s.kh = proj && q_kpad(H, s.wq) > q_kpad(P, s.wq) ? q_kpad(H, s.wq) : q_kpad(P, s.wq);
        s.sih = get(&b, ITEM(sih), "sih", 0, 4, GH, !i8, 0, NULL);
        s.shh = get(&b, ITEM(shh), "shh", 0, 4, GH, !i8, 0, NULL);
        s.uih = get(&b, ITEM(uih), "uih", 0, 4, GH, !i8, 0, NULL);
        s.uhh = get(&b, ITEM(uhh), "uhh", 0, 4, GH, !i8, 0, NULL);
        s.shr = get(&b, ITEM(shr), "shr", 0, 4, P, !(i8 && proj), 0, NULL);
        s.uhr = get(&b, ITEM(uhr), "uhr", 0, 4, P, !(i8 && proj), 0, NULL);
        /* the input rows: all of them before the loop (with xproj), else each thread's step */
        const int64_t xrows = ITEM(xproj) && ITEM(xproj) != Py_None ? rows : s.parts * N;
        s.qx = get(&b, ITEM(qx), "qx", 1, wsz, xrows * s.kx, 0, 0, NULL);
        s.qh = get(&b, ITEM(qh), "qh", 1, wsz, s.parts * N * s.kh, 0, 0, NULL);
        s.qxs = get(&b, ITEM(qxs), "qxs", 1, 4, xrows, !i8, 0, NULL);
        s.qxz = get(&b, ITEM(qxz), "qxz", 1, 4, xrows, !i8, 0, NULL);
        s.qhs = get(&b, ITEM(qhs), "qhs", 1, 4, s.parts * N, !i8, 0, NULL);
        s.qhz = get(&b, ITEM(qhz), "qhz", 1, 4, s.parts * N, !i8, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    }
    if (!back) {
        s.x = get(&b, ITEM(x), "x", 0, isz, rows * Hin, 0, 0, NULL);
        s.wih = get(&b, ITEM(wih), "wih", 0, wsz, wih_n, 0, 0, NULL);
        s.whh = get(&b, ITEM(whh), "whh", 0, wsz, whh_n, 0, 0, NULL);
        if (!s.x || !s.wih || !s.whh) goto fail;
        s.bias = get(&b, ITEM(bias), "bias", 0, isz, GH, 1, 0, NULL);
        s.whr = get(&b, whr, "whr", 0, wsz, whr_n, 1, 0, NULL);
        s.xproj = get(&b, ITEM(xproj), "xproj", 1, isz, rows * GH, 1, 0, NULL);
        s.hbuf = get(&b, ITEM(hbuf), "hbuf", 1, isz, 2 * N * P, s.parts == 1, 0, NULL);
        if (PyErr_Occurred()) goto fail;
        s.gxs = get(&b, ITEM(gxs), "gxs", 1, isz, N * GH, !(gru || normed) || s.xproj, 0, NULL);
        s.cs = get(&b, ITEM(cs), "cs", 1, isz, rows * H, 1, 0, NULL);
        if (PyErr_Occurred()) goto fail;
        if ((s.xproj || s.parts > 1) && (s.r0 != 0 || s.r1 != N || s.nranges > 1)) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: xproj and parts are for a whole batch, not a row range");
            goto fail;
        }
        if (s.parts > 1 && !s.xproj && !s.wq) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: a loop split into parts needs xproj");
            goto fail;
        }
    } else {
        s.wih = get(&b, ITEM(wih), "wih", 0, isz, GH * panels(Hin, isz), 0, 0, NULL);
        s.whh = get(&b, ITEM(whh), "whh", 0, isz, GH * panels(P, isz), 0, 0, NULL);
        if (!s.wih || !s.whh) goto fail;
        s.whr = get(&b, whr, "whr", 0, isz, P * panels(H, isz), 1, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    }
    /* the regularizers (see struct scan) */
    s.rmask = get(&b, ITEM(rmask), "rmask", 0, isz, N * P, 1, 0, NULL);
    s.zh = get(&b, ITEM(zh), "zh", 0, isz, tape_rows * P, 1, 0, NULL);
    s.zc = get(&b, ITEM(zc), "zc", 0, isz, tape_rows * H, !(lstm && s.zh), 0, NULL);
    if (PyErr_Occurred()) goto fail;
    if ((s.rmask && (!s.train || s.parts != 1 || s.wq)) || (s.zh && (s.wq || (!back && !s.hbuf))) ||
        (s.zc && !s.zh)) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: recurrent dropout is for training in one part, zoneout "
                                          "(zh, and zc for a cell state) needs hbuf; neither for quantized weights");
        goto fail;
    }
    s.rbuf = get(&b, ITEM(rbuf), "rbuf", 1, isz, N * P, !s.rmask, 0, NULL);
    s.zsave = get(&b, ITEM(zsave), "zsave", 1, isz, N * (P + H), !(s.zh && (back || (lstm && !s.train))), 0, NULL);
    if (PyErr_Occurred()) goto fail;
    s.hprev = get(&b, ITEM(hprev), "hprev", !back || s.rmask, isz, rows * P, !(s.train && (!back || gru || s.rmask)),
                  0, NULL);
    s.cprev = get(&b, ITEM(cprev), "cprev", !back, isz, rows * H, !(s.train && lstm), 0, NULL);
    s.tc = get(&b, ITEM(tc), "tc", !back, isz, tape_rows * H, !lstm, 0, NULL);
    s.m = get(&b, ITEM(m), "m", !back, isz, tape_rows * H, !(lstm && proj && !back), 0, NULL);
    s.ghn = get(&b, ITEM(ghn), "ghn", !back, isz, tape_rows * H, !gru, 0, NULL);
    if (PyErr_Occurred()) goto fail;
    if (normed) {  /* the norms' gains and shifts; their records when training */
        if (s.parts != 1 || s.wq) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: the layer-norm kinds run whole rows (one part, float)");
            goto fail;
        }
        s.lnw = get(&b, ITEM(lnw), "lnw", 0, isz, 4 * GH + (lstm ? 2 * H : 0), 0, 0, NULL);
        s.lnx = get(&b, ITEM(lnx), "lnx", !back, isz, rows * LNX_W(GH, isz), !s.train, 0, NULL);
        s.lnr = get(&b, ITEM(lnr), "lnr", !back, isz, rows * LNR_W(lstm, GH, H, isz), !s.train, 0, NULL);
        if (PyErr_Occurred() || !s.lnw) goto fail;
    }
    if (back) {  /* the weight gradients inside the loop (dw), or their rows for after it (dgx, dgh) */
        const int sep = gru || normed;
        s.ones = ITEM(bias) && ITEM(bias) != Py_None;
        const int64_t wcols = Hin + P + (sep ? 2 : 1) * s.ones;
        s.rix = ITEM(rix) ? as_i64(ITEM(rix), &err) : 0;  /* this call's first range's index (its sums' row) */
        if (err || s.rix < 0 || s.rix > MAX_PARTS) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: rix must be 0 to 64");
            goto fail;
        }
        s.dw = get(&b, ITEM(dw), "dw", 1, isz, (s.rix + s.nranges) * GH * wcols, 1, 0, NULL);
        if (s.dw) {
            s.kblock = ITEM(kblock) ? as_i64(ITEM(kblock), &err) : 0;
            if (err || s.kblock < 1 || s.kblock > (1 << 20)) {
                PyErr_SetString(PyExc_ValueError, "_native.scan: dw needs kblock, 1 to 2**20 steps");
                goto fail;
            }
            s.x = get(&b, ITEM(x), "x", 0, isz, rows * Hin, 0, 0, NULL);
            s.blk = get(&b, ITEM(blk), "blk", 1, isz, N * s.kblock * GH * (sep ? 2 : 1), 0, 0, NULL);
            s.bpk = get(&b, ITEM(bpk), "bpk", 1, isz, N * s.kblock * (panels(Hin + s.ones, isz) +
                                                                    panels(P + s.ones, isz)), 0, 0, NULL);
            if (!s.x || !s.blk || !s.bpk || !s.hprev) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_native: dw needs hprev");
                goto fail;
            }
        }
        s.dx = get(&b, ITEM(dx), "dx", 1, isz, rows * Hin, 1, 0, NULL);  /* (None: no input gradient) */
        s.dgx = get(&b, ITEM(dgx), "dgx", 1, isz, rows * GH, s.dw != NULL, 0, NULL);
        if (PyErr_Occurred() || (!s.dgx && !s.dw)) goto fail;
        s.dgh = get(&b, ITEM(dgh), "dgh", 1, isz, rows * GH, !sep || s.dw, 0, NULL);
        s.lnsum = get(&b, ITEM(lnsum), "lnsum", 1, isz, (s.rix + s.nranges) * (4 * GH + (lstm ? 2 * H : 0)), !normed,
                      0, NULL);
        s.dproj = get(&b, ITEM(dproj), "dproj", 1, isz, rows * P, !proj, 0, NULL);
        /* (dm through a projection; a layer-norm kind's: a cell's d(c_t), the step's gradient rows, ln_hot) */
        s.scratch = get(&b, ITEM(scratch), "scratch", 1, isz, normed ? 2 * N * (H + GH) : N * H, !proj && !normed,
                        0, NULL);
        s.dcs = get(&b, ITEM(dcs), "dcs", 0, isz, rows * H, 1, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    }
#undef ITEM
    fn = s.kernel = back ? isa->backward[isz == 8] : isa->forward[isz == 8];
    *team = t == Py_None ? NULL : t;
    *sp = s;
    *bp = b;
    return fn;
fail:
    release(&b);
    return NULL;
}

/* describe(spec): the sizes and offsets parse_scan makes of a scan dict, by their names in
   struct scan (for tests/native: the kernels run without Python from these and the arrays). */
static PyObject *int_list(const int64_t *v, int64_t n) {
    PyObject *l = PyList_New((Py_ssize_t)n);
    for (int64_t i = 0; l && i < n; i++) {
        PyObject *o = PyLong_FromLongLong((long long)v[i]);
        if (!o) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, o);
    }
    return l;
}

static PyObject *py_describe(PyObject *self, PyObject *spec) {
    (void)self;
    struct scan s;
    struct bufs b;
    PyObject *team = NULL;
    if (!parse_scan(spec, &s, &b, &team)) return NULL;
    release(&b);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:N,s:N,s:N,s:N,s:N,"
                         "s:i,s:L,s:L,s:L,s:i,s:L}",
                         "kind", s.kind, "train", s.train, "reverse", s.reverse, "accumulate", s.accumulate, "back",
                         s.back, "G", (long long)s.G, "H", (long long)s.H, "P", (long long)s.P, "Hin",
                         (long long)s.Hin, "steps", (long long)s.steps, "N", (long long)s.N, "rows",
                         (long long)s.rows, "r0", (long long)s.r0, "r1", (long long)s.r1, "ldout",
                         (long long)s.ldout, "parts", (long long)s.parts, "phase", (long long)s.phase, "units",
                         int_list(s.units, s.parts + 1), "pcols", int_list(s.pcols, s.parts + 1), "wih_at",
                         int_list(s.wih_at, s.parts), "whh_at", int_list(s.whh_at, s.parts), "whr_at",
                         int_list(s.whr_at, s.parts), "wq", s.wq, "kx", (long long)s.kx, "kh", (long long)s.kh,
                         "kblock", (long long)s.kblock, "ones", s.ones, "rix", (long long)s.rix);
}

static PyObject *py_scan(PyObject *self, PyObject *spec) {
    (void)self;
    struct scan s;
    struct bufs b;
    PyObject *team = NULL;
    scan_fn fn = parse_scan(spec, &s, &b, &team);
    if (!fn) return NULL;
    Py_XINCREF(team);
    s.team = (struct team *)team;
    Py_BEGIN_ALLOW_THREADS
    run_scan(&s);
    Py_END_ALLOW_THREADS
    Py_XDECREF(team);
    release(&b);
    Py_RETURN_NONE;
}

/* scan_many(specs, team): the loops of a one-directional stack's layers (each a scan()
   dict of one part and one range, forward in time or a backward), run as a wavefront on
   the team: loop i + 1's step t beside loop i's step t + 1. */
static PyObject *py_scan_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyList_Check(args[0]) || (args[1] != Py_None && !PyObject_TypeCheck(args[1], &TeamType))) {
        PyErr_SetString(PyExc_TypeError, "_native.scan_many(specs: list of dicts, team: Team or None)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args[0]);
    if (n < 1 || n > MAX_PARTS) {
        PyErr_Format(PyExc_ValueError, "_native.scan_many: 1 to %d loops", MAX_PARTS);
        return NULL;
    }
    struct scan *scans = PyMem_Calloc((size_t)n, sizeof *scans);
    struct bufs *bufs = PyMem_Calloc((size_t)n, sizeof *bufs);
    atomic_uint *counts = PyMem_Calloc((size_t)n, sizeof *counts);
    PyObject *team = args[1] == Py_None ? NULL : args[1];
    Py_ssize_t ok = 0;
    if (!scans || !bufs || !counts) {
        PyErr_NoMemory();
        goto done;
    }
    for (; ok < n; ok++) {
        PyObject *own = NULL;
        if (!parse_scan(PyList_GET_ITEM(args[0], ok), &scans[ok], &bufs[ok], &own)) goto done;
        struct scan *sc = &scans[ok];
        if (sc->parts != 1 || sc->nranges != 1 || sc->r0 != 0 || sc->r1 != sc->N || (ok && sc->xproj) ||
            (!sc->back && sc->reverse) || (ok && sc->steps != scans[0].steps)) {
            PyErr_SetString(PyExc_ValueError, "_native.scan_many: every loop whole (one part, one range), forward in "
                                              "time, of the same steps, the projection inside all but the first");
            ok++;
            goto done;
        }
        atomic_init(&counts[ok], 0);
        sc->team = (struct team *)team;
        sc->publish = &counts[ok];
        sc->await = ok ? &counts[ok - 1] : NULL;
    }
    {
        struct wave_ctx ctx = {scans, n};
        Py_XINCREF(team);
        Py_BEGIN_ALLOW_THREADS
        run_job((struct team *)team, n, wave_job, &ctx);
        Py_END_ALLOW_THREADS
        Py_XDECREF(team);
    }
done:
    for (Py_ssize_t i = 0; i < ok && bufs; i++) release(&bufs[i]);
    PyMem_Free(scans);
    PyMem_Free(bufs);
    PyMem_Free(counts);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* Call(spec): scan()'s dict parsed and checked once, the arrays held; call() runs the loop
   again on them (a stream's step: the same arrays every time, new contents). */
typedef struct {
    PyObject_HEAD
    struct scan s;
    struct bufs b;
    scan_fn fn;
    PyObject *team;
} CallObject;

static void call_dealloc(CallObject *self) {
    release(&self->b);
    Py_XDECREF(self->team);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *call_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if ((kwds && PyDict_Size(kwds)) || PyTuple_GET_SIZE(args) != 1) {
        PyErr_SetString(PyExc_TypeError, "_native.Call takes one dict");
        return NULL;
    }
    CallObject *self = (CallObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    PyObject *team = NULL;
    self->fn = parse_scan(PyTuple_GET_ITEM(args, 0), &self->s, &self->b, &team);
    if (!self->fn) {
        self->b.n = 0;
        Py_DECREF(self);
        return NULL;
    }
    Py_XINCREF(team);
    self->team = team;
    self->s.team = (struct team *)team;
    return (PyObject *)self;
}

static PyObject *call_call(CallObject *self, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_Size(kwds))) {
        PyErr_SetString(PyExc_TypeError, "a _native.Call takes no arguments");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    run_scan(&self->s);
    Py_END_ALLOW_THREADS
    self->s.phase++;
    Py_RETURN_NONE;
}

static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nprnn.functional._native.Call",
    .tp_basicsize = sizeof(CallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "scan()'s dict, checked once; calling it runs the loop on it again.",
    .tp_new = call_new,
    .tp_dealloc = (destructor)call_dealloc,
    .tp_call = (ternaryfunc)call_call,
};

/* Team(threads, spin_ns, step_spin_ns): see "the team" above.  serve(i) is what helper thread i runs (it
   returns after close()); ready() counts the helpers inside serve(). */
static PyObject *team_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    long long n = 0, spin = 0, step_spin = 0;
    if ((kwds && PyDict_Size(kwds)) || !PyArg_ParseTuple(args, "LLL", &n, &spin, &step_spin)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "_native.Team(threads, spin, step_spin)");
        return NULL;
    }
    if (n < 1 || n > MAX_THREADS || spin < 0 || step_spin < 0) {
        PyErr_Format(PyExc_ValueError, "_native.Team: threads must be in 1..%d and spin >= 0", MAX_THREADS);
        return NULL;
    }
    TeamObject *t = (TeamObject *)type->tp_alloc(type, 0);
    if (!t) return NULL;
    t->n = (int)n;
    t->pid = (long)getpid();
    t->spin = spin;
    t->step_spin = step_spin;
    atomic_init(&t->ready, 0);
    atomic_init(&t->stop, 0);
    atomic_init(&t->busy, 0);
    atomic_init(&t->job_gen, 0);
    atomic_init(&t->runs, 0);
    atomic_init(&t->alone, 0);
    atomic_init(&t->moves, 0);
    atomic_init(&t->caller_cpu, -1);
    for (int i = 0; i < t->n; i++) {
        atomic_init(&t->sleeping[i], 0);
        t->sem[i] = PyThread_allocate_lock();
        if (!t->sem[i] || !PyThread_acquire_lock(t->sem[i], NOWAIT_LOCK)) {  /* held: acquire() sleeps */
            Py_DECREF(t);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)t;
}

static void team_dealloc(TeamObject *t) {
    for (int i = 0; i < t->n; i++)
        if (t->sem[i]) PyThread_free_lock(t->sem[i]);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *team_serve(TeamObject *t, PyObject *arg) {
    long me = PyLong_AsLong(arg);
    if (me < 1 || me >= t->n) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "Team.serve: i must be in 1..%d", t->n - 1);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    unsigned seen = atomic_load(&t->job_gen);
    int avoided = -1;  /* the processor this helper keeps off (its caller's) */
    atomic_fetch_add(&t->ready, 1);
    for (;;) {
        waitfor(t, &t->job_gen, seen, 0, (int)me, t->spin);
        seen = atomic_load(&t->job_gen);
        if (atomic_load(&t->stop)) break;
        int nthr = t->job_threads;
        if (me < nthr) {
            t->at[me].next = t->epoch;
            int caller = atomic_load(&t->caller_cpu);
            if (caller != avoided) {
                avoided = avoid_cpu(caller, avoided);
                atomic_fetch_add(&t->moves, 1);
            }
            t->fn(t->job, (int)me, nthr);
            team_barrier(t, (int)me, nthr);
        }
    }
    atomic_fetch_sub(&t->ready, 1);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *team_close(TeamObject *t, PyObject *noargs) {
    (void)noargs;
    atomic_store(&t->stop, 1);
    atomic_fetch_add(&t->job_gen, 1);
    wake(t);
    Py_RETURN_NONE;
}

static PyObject *team_ready(TeamObject *t, PyObject *noargs) {
    (void)noargs;
    return PyLong_FromLong(atomic_load(&t->ready));
}

static PyObject *team_stats(TeamObject *t, PyObject *noargs) {
    (void)noargs;
    return Py_BuildValue("{s:i,s:L,s:L,s:L,s:L,s:L}", "threads", t->n, "spin", (long long)t->spin, "step_spin",
                         (long long)t->step_spin, "runs", (long long)atomic_load(&t->runs), "alone",
                         (long long)atomic_load(&t->alone), "moves", (long long)atomic_load(&t->moves));
}

static PyMethodDef team_methods[] = {
    {"serve", (PyCFunction)team_serve, METH_O, "Helper thread i's loop: run its share of each job until close()."},
    {"close", (PyCFunction)team_close, METH_NOARGS, "Make every serve() return."},
    {"ready", (PyCFunction)team_ready, METH_NOARGS, "How many helpers are inside serve()."},
    {"stats", (PyCFunction)team_stats, METH_NOARGS, "threads, spin, jobs run on the team, jobs run alone."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TeamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nprnn.functional._native.Team",
    .tp_basicsize = sizeof(TeamObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Threads that share a loop split into parts: the caller and helpers inside serve().",
    .tp_new = team_new,
    .tp_dealloc = (destructor)team_dealloc,
    .tp_methods = team_methods,
};

/* pack(src, dst, K, M, sk, sm[, col0, Mtot]): columns col0..col0+M of a packed B (K, Mtot)
   from src, B[k][col0 + m] = src[k * sk + m * sm] (by default col0 = 0, Mtot = M). */
static PyObject *py_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "_native.pack takes 6 or 8 arguments");
        return NULL;
    }
    int err = 0;
    int64_t K = as_i64(args[2], &err), M = as_i64(args[3], &err), sk = as_i64(args[4], &err),
            sm = as_i64(args[5], &err);
    int64_t col0 = nargs == 8 ? as_i64(args[6], &err) : 0, Mtot = nargs == 8 ? as_i64(args[7], &err) : M;
    if (err) return NULL;
    struct bufs b;
    b.n = 0;
    Py_buffer *src = &b.v[0];
    if (PyObject_GetBuffer(args[0], src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    b.n = 1;
    Py_ssize_t isz = src->itemsize;
    if ((isz != 4 && isz != 8) || K < 1 || M < 1 || sk < 0 || sm < 0 || col0 < 0 || col0 + M > Mtot ||
        (K - 1) * sk + (M - 1) * sm >= src->len / isz) {
        PyErr_SetString(PyExc_ValueError, "_native.pack: the source does not hold a (K, M) matrix");
        goto fail;
    }
    void *dst = get(&b, args[1], "dst", 1, isz, K * panels(Mtot, isz), 0, 0, NULL);
    if (!dst) goto fail;
    if (isz == 4)
        isa->pack_f((const float *)src->buf, K, M, sk, sm, (float *)dst, col0, Mtot);
    else
        isa->pack_d((const double *)src->buf, K, M, sk, sm, (double *)dst, col0, Mtot);
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* gemm_at(A, Bp, C, r0, r1, accumulate[, team, blocks[, sources]]): C[r0:r1] (+)= A[:, r0:r1].T
   @ B for A (K, M1) and C (M1, M) C-contiguous, B (K, M) packed by pack() into Bp, or, given
   sources (a tuple of (K, w) arrays, B's columns side by side), packed into Bp first by the
   team's threads.  The GIL is released. */
/* gemm_at's rows r0..r1 cut into `blocks` near-equal blocks of whole groups of AT_ROWS rows
   that the team's threads take as they come free. */
#define AT_SOURCES 8
struct at_ctx {
    int64_t r0, r1, blocks, K, M, M1;
    const void *A, *Bp;
    void *C;
    int accumulate, dbl;
    atomic_llong next;
    /* sources to pack side by side into Bp first (nsrc > 0), C-contiguous (K, width) */
    int nsrc;
    const char *src[AT_SOURCES];
    int64_t width[AT_SOURCES];
    struct team *team;
};

/* at_ctx's sources packed into its Bp, thread me's share of the panels (the last one also
   writes the padding). */
static void at_pack(const struct at_ctx *c, int me, int nthr) {
    const int64_t esz = c->dbl ? 8 : 4, nr = 2 * isa->vector_bytes / esz, np = (c->M + nr - 1) / nr;
    const int64_t lo = np * me / nthr * nr, hi = np * (me + 1) / nthr * nr;
    int64_t col = 0;  /* source i's first column */
    for (int i = 0; i < c->nsrc; col += c->width[i], i++) {
        const int64_t a = col > lo ? col : lo, z = col + c->width[i] < hi ? col + c->width[i] : hi;
        if (a >= z) continue;
        const char *from = c->src[i] + (a - col) * esz;
        if (c->dbl)
            isa->pack_d((const double *)from, c->K, z - a, c->width[i], 1, (double *)c->Bp, a, c->M);
        else
            isa->pack_f((const float *)from, c->K, z - a, c->width[i], 1, (float *)c->Bp, a, c->M);
    }
}

static void at_job(void *ctx, int me, int nthr) {
    struct at_ctx *c = ctx;
    if (c->nsrc) {  /* every thread packs its share of B, and waits for the others' */
        at_pack(c, me, nthr);
        team_barrier(c->team, me, nthr);
    }
    const int64_t groups = (c->r1 - c->r0 + AT_ROWS - 1) / AT_ROWS;
    for (int64_t i; (i = atomic_fetch_add(&c->next, 1)) < c->blocks;) {
        int64_t a = c->r0 + groups * i / c->blocks * AT_ROWS, z = c->r0 + groups * (i + 1) / c->blocks * AT_ROWS;
        z = z < c->r1 ? z : c->r1;
        if (c->dbl)
            isa->at_d(a, z, c->K, c->M, c->A, c->M1, c->Bp, c->C, c->M, c->accumulate);
        else
            isa->at_f(a, z, c->K, c->M, c->A, c->M1, c->Bp, c->C, c->M, c->accumulate);
    }
}

/* A call's team argument and the parts it asks for checked: a _native.Team or None, and
   count >= 1; 0, or -1 with a ValueError naming the function.  run_team then runs fn as a
   job of `want` threads on it, the GIL released. */
static int team_arg(PyObject *team, int64_t count, const char *msg) {
    if ((team == Py_None || PyObject_TypeCheck(team, &TeamType)) && count >= 1) return 0;
    PyErr_SetString(PyExc_ValueError, msg);
    return -1;
}

static void run_team(PyObject *team, int64_t want, job_fn fn, void *ctx) {
    Py_INCREF(team);
    Py_BEGIN_ALLOW_THREADS
    run_job(team == Py_None ? NULL : (struct team *)team, want, fn, ctx);
    Py_END_ALLOW_THREADS
    Py_DECREF(team);
}

/* The product entries' A (read) and C (written), C-contiguous, into b->v[0] and b->v[1]
   (b->n counts what was taken, for release): 0 when both are 2-D of one item size, 4 or 8
   bytes; -2 when not (the caller words the error); -1 when a buffer cannot be taken (the
   buffer protocol's exception set). */
static int take_ac(struct bufs *b, PyObject *A, PyObject *C) {
    b->n = 0;
    if (PyObject_GetBuffer(A, &b->v[0], PyBUF_C_CONTIGUOUS | PyBUF_ND | PyBUF_FORMAT) < 0) return -1;
    b->n = 1;
    if (PyObject_GetBuffer(C, &b->v[1], PyBUF_C_CONTIGUOUS | PyBUF_ND | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) return -1;
    b->n = 2;
    const Py_buffer *a = &b->v[0], *c = &b->v[1];
    return (a->itemsize == 4 || a->itemsize == 8) && c->itemsize == a->itemsize && a->ndim == 2 && c->ndim == 2 ? 0
                                                                                                               : -2;
}

static PyObject *py_gemm_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6 && nargs != 8 && nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "_native.gemm_at takes 6, 8 or 9 arguments");
        return NULL;
    }
    int err = 0;
    int64_t r0 = as_i64(args[3], &err), r1 = as_i64(args[4], &err);
    int accumulate = (int)as_i64(args[5], &err);
    int64_t blocks = nargs >= 8 ? as_i64(args[7], &err) : 1;
    if (err) return NULL;
    PyObject *team = nargs >= 8 ? args[6] : Py_None;
    if (team_arg(team, blocks, "_native.gemm_at: team must be a _native.Team or None, blocks >= 1") < 0) return NULL;
    struct bufs b;
    int took = take_ac(&b, args[0], args[2]);
    if (took == -1) goto fail;
    Py_buffer *a = &b.v[0], *c = &b.v[1];
    Py_ssize_t isz = a->itemsize;
    if (took < 0 || c->shape[0] != a->shape[1] || a->shape[0] < 1 || r0 < 0 || r1 > c->shape[0] || r0 > r1) {
        PyErr_SetString(PyExc_ValueError, "_native.gemm_at: A (K, M1), C (M1, M) and 0 <= r0 <= r1 <= M1 expected");
        goto fail;
    }
    int64_t K = (int64_t)a->shape[0], M1 = (int64_t)a->shape[1], M = (int64_t)c->shape[1];
    PyObject *srcs = nargs == 9 && args[8] != Py_None ? args[8] : NULL;
    const void *bp = get(&b, args[1], "Bp", srcs != NULL, isz, K * panels(M, isz), 0, 0, NULL);
    if (!bp) goto fail;
    struct at_ctx ctx = {r0, r1, blocks, K, M, M1, a->buf, bp, c->buf, accumulate, isz == 8, 0, 0, {0}, {0},
                         team == Py_None ? NULL : (struct team *)team};
    if (srcs) {  /* the sources of B, side by side: 2-D, C-contiguous, K rows, M columns in all */
        int64_t cols = 0;
        if (!PyTuple_Check(srcs) || PyTuple_GET_SIZE(srcs) < 1 || PyTuple_GET_SIZE(srcs) > AT_SOURCES) goto bad_src;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(srcs); i++) {
            Py_buffer *v = &b.v[b.n];
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(srcs, i), v, PyBUF_C_CONTIGUOUS | PyBUF_ND | PyBUF_FORMAT) < 0)
                goto fail;
            b.n++;
            if (v->itemsize != isz || v->ndim != 2 || v->shape[0] != K || v->shape[1] < 1) goto bad_src;
            ctx.src[i] = v->buf;
            ctx.width[i] = (int64_t)v->shape[1];
            cols += ctx.width[i];
        }
        if (cols != M) goto bad_src;
        ctx.nsrc = (int)PyTuple_GET_SIZE(srcs);
    }
    run_team(team, blocks, at_job, &ctx);
    release(&b);
    Py_RETURN_NONE;
bad_src:
    PyErr_Format(PyExc_ValueError, "_native.gemm_at: sources must be a tuple of 1 to %d arrays (K, w) of A's item "
                 "size, their widths adding up to C's columns", AT_SOURCES);
fail:
    release(&b);
    return NULL;
}

/* linear_scan(spec): one diagonal linear scan (struct lscan) on the team's threads.  spec:
   kind, logm, back, reverse, H, itemsize, batch_sizes, offsets, a, b, y, h0, h, out, da, db,
   team, threads, work (see struct lscan; a key it does not know is refused).  With work, the
   batch must be uniform (every step N rows) and work hold 6 threads (N, H) blocks: the steps
   split into chunks; without it, the batch's rows. */
static const char *const LS_KEYS[] = {"kind", "logm", "back", "reverse", "H", "itemsize", "batch_sizes", "offsets",
                                      "a", "b", "y", "h0", "h", "out", "da", "db", "team", "threads", "work"};
#define LS_NKEYS ((int)(sizeof LS_KEYS / sizeof LS_KEYS[0]))

static void lscan_job(void *ctx, int me, int nthr) {
    const struct lscan *s = ctx;
    if (s->work && nthr > 1) {  /* one stretch of the steps each: every thread streams its own memory */
        isa->lscan_chunks[s->f64](s, me, nthr);
        return;
    }
    const int64_t r0 = s->N * me / nthr, r1 = s->N * (me + 1) / nthr;  /* a share of the batch's rows */
    if (r0 < r1) isa->lscan[s->f64](s, r0, r1);
}

static PyObject *py_linear_scan(PyObject *self, PyObject *spec) {
    (void)self;
    if (!PyDict_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "_native.linear_scan takes one dict");
        return NULL;
    }
    PyObject *v[LS_NKEYS];
    Py_ssize_t known = 0;
    for (int i = 0; i < LS_NKEYS; i++) known += (v[i] = PyDict_GetItemString(spec, LS_KEYS[i])) != NULL;
    if (known != PyDict_Size(spec)) {
        PyErr_SetString(PyExc_ValueError, "_native.linear_scan: the dict holds a key the kernel does not know");
        return NULL;
    }
    int err = 0;
    struct lscan s;
    memset(&s, 0, sizeof s);
    s.kind = (int)as_i64(v[0], &err);
    s.logm = (int)as_i64(v[1], &err);
    s.back = (int)as_i64(v[2], &err);
    s.reverse = (int)as_i64(v[3], &err);
    s.H = as_i64(v[4], &err);
    Py_ssize_t isz = (Py_ssize_t)as_i64(v[5], &err);
    int64_t threads = v[17] ? as_i64(v[17], &err) : 1;
    if (err) return NULL;
    PyObject *team = v[16] ? v[16] : Py_None;
    const char *bad = "_native.linear_scan: bad kind, mode, size, item size, threads or team";
    if (team_arg(team, threads, bad) < 0) return NULL;
    if (s.kind < LS_PLAIN || s.kind > LS_MINLSTM || (s.logm != 0 && s.logm != 1) || s.H < 1 ||
        (isz != 4 && isz != 8)) {
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    struct bufs b;
    b.n = 0;
    s.batch_sizes = get(&b, v[6], "batch_sizes", 0, 8, 1, 0, 0, NULL);
    if (!s.batch_sizes) goto fail;
    s.steps = (int64_t)(b.v[b.n - 1].len / 8);
    s.offsets = get(&b, v[7], "offsets", 0, 8, s.steps, 0, 0, NULL);
    if (!s.offsets) goto fail;
    int64_t rows = 0, N = s.N = s.batch_sizes[0];
    for (int64_t i = 0; i < s.steps; i++) {
        if (s.batch_sizes[i] < 1 || s.batch_sizes[i] > N || (i && s.batch_sizes[i] > s.batch_sizes[i - 1]) ||
            s.offsets[i] != rows) {
            PyErr_SetString(PyExc_ValueError, "_native.linear_scan: batch_sizes must be positive and "
                                              "non-increasing, offsets their running sum");
            goto fail;
        }
        rows += s.batch_sizes[i];
    }
    const int64_t H = s.H, width = s.kind == LS_PLAIN ? H : s.kind == LS_MINGRU ? 2 * H : 3 * H;
    s.a = get(&b, v[8], "a", 0, isz, rows * width, 0, 0, NULL);
    s.b = get(&b, v[9], "b", 0, isz, rows * H, s.kind != LS_PLAIN || s.back, 0, NULL);
    s.h = get(&b, v[12], "h", 1, isz, N * H, 0, 0, NULL);
    s.out = get(&b, v[13], "out", !s.back, isz, rows * H, 0, 0, NULL);
    if (PyErr_Occurred()) goto fail;
    if (s.back) {
        s.y = get(&b, v[10], "y", 0, isz, rows * H, 0, 0, NULL);
        s.h0 = get(&b, v[11], "h0", 0, isz, N * H, 0, 0, NULL);
        s.da = get(&b, v[14], "da", 1, isz, rows * width, 0, 0, NULL);
        s.db = get(&b, v[15], "db", 1, isz, rows * H, s.kind != LS_PLAIN, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    }
    s.nthreads = threads;
    s.f64 = isz == 8;
    for (int64_t i = 0; i < s.steps; i++) s.uniform += s.batch_sizes[i] == N;
    s.uniform = s.uniform == s.steps;
    s.work = get(&b, v[18], "work", 1, isz, 6 * threads * N * H, 1, 0, NULL);
    if (PyErr_Occurred()) goto fail;
    if (s.work && (!s.uniform || s.steps < 2 * threads)) {
        PyErr_SetString(PyExc_ValueError, "_native.linear_scan: work (chunks of the steps) needs every step to "
                                          "have the whole batch and two steps a thread");
        goto fail;
    }
    s.team = team == Py_None ? NULL : (struct team *)team;
    s.stream = s.kind == LS_PLAIN && !s.back && rows * H * isz >= ((int64_t)64 << 20);  /* (a, b and h: 3x that) */
    run_team(team, threads, lscan_job, &s);
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* matmul(A, Bp, C, bias, team, threads): C = A @ B + bias for A (n, K) C-contiguous, B (K, M)
   packed (pack), C (n, M), bias (M,) or None; the rows split into blocks the team's threads
   take as they come (the linear-scan kinds' products, beside their scan). */
struct mm_ctx {
    int64_t n, K, M, blocks;
    const void *A, *Bp, *bias;
    void *C;
    int dbl;
    atomic_llong next;
};

static void mm_job(void *ctx, int me, int nthr) {
    (void)me;
    (void)nthr;
    struct mm_ctx *c = ctx;
    const int64_t groups = (c->n + AT_ROWS - 1) / AT_ROWS;
    for (int64_t i; (i = atomic_fetch_add(&c->next, 1)) < c->blocks;) {
        int64_t a = groups * i / c->blocks * AT_ROWS, z = groups * (i + 1) / c->blocks * AT_ROWS;
        z = z < c->n ? z : c->n;
        if (a >= z) continue;
        if (c->dbl)
            isa->mm_d(a, z, c->K, c->M, c->A, c->Bp, c->C, c->bias);
        else
            isa->mm_f(a, z, c->K, c->M, c->A, c->Bp, c->C, c->bias);
    }
}

static PyObject *py_matmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_native.matmul(A, Bp, C, bias, team, threads)");
        return NULL;
    }
    int err = 0;
    int64_t threads = as_i64(args[5], &err);
    if (err) return NULL;
    PyObject *team = args[4];
    if (team_arg(team, threads, "_native.matmul: team must be a _native.Team or None, threads >= 1") < 0) return NULL;
    struct bufs b;
    int took = take_ac(&b, args[0], args[2]);
    if (took == -1) goto fail;
    Py_buffer *a = &b.v[0], *c = &b.v[1];
    Py_ssize_t isz = a->itemsize;
    if (took < 0 || c->shape[0] != a->shape[0] || a->shape[1] < 1 || c->shape[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "_native.matmul: A (n, K), C (n, M) of one item size expected");
        goto fail;
    }
    int64_t n = (int64_t)a->shape[0], K = (int64_t)a->shape[1], M = (int64_t)c->shape[1];
    const void *bp = get(&b, args[1], "Bp", 0, isz, K * panels(M, isz), 0, 0, NULL);
    const void *bias = get(&b, args[3], "bias", 0, isz, M, 1, 0, NULL);
    if (!bp || PyErr_Occurred()) goto fail;
    struct mm_ctx ctx = {n, K, M, threads, a->buf, bp, bias, c->buf, isz == 8, 0};
    run_team(team, threads, mm_job, &ctx);
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(isa->name);
}

/* apply(which, a): exp (0), tanh (1) or sigmoid (2) of a C-contiguous float32/float64
   array in place, on the kernels' own vector math (for the tests). */
static PyObject *py_apply(PyObject *self, PyObject *args) {
    (void)self;
    int which;
    PyObject *arr;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "iO", &which, &arr)) return NULL;
    if (PyObject_GetBuffer(arr, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) return NULL;
    const char *fmt = v.format ? v.format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    int dbl = strcmp(fmt, "d") == 0;
    if (which < 0 || which > 2 || (!dbl && strcmp(fmt, "f") != 0)) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError,
                        "_native.apply: which in 0..2 and a contiguous float32/float64 array expected");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dbl)
        isa->apply_d(which, (double *)v.buf, (int64_t)(v.len / 8));
    else
        isa->apply_f(which, (float *)v.buf, (int64_t)(v.len / 4));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* bernoulli(out, key, t): stack.bernoulli's 0/1 values into a C-contiguous float32/float64
   array, from SplitMix64 state key (0 <= key < 2^64) and threshold t (0 <= t <= 2^32). */
static PyObject *py_bernoulli(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arr, *okey, *othr;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "OO!O!", &arr, &PyLong_Type, &okey, &PyLong_Type, &othr)) return NULL;
    const unsigned long long key = PyLong_AsUnsignedLongLong(okey), t = PyLong_AsUnsignedLongLong(othr);
    if (PyErr_Occurred()) return NULL;
    if (t > (1ull << 32)) {
        PyErr_Format(PyExc_ValueError, "_native.bernoulli: t must be at most 2**32, got %llu", t);
        return NULL;
    }
    if (PyObject_GetBuffer(arr, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) return NULL;
    const char *fmt = v.format ? v.format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    const int dbl = strcmp(fmt, "d") == 0;
    if (!dbl && strcmp(fmt, "f") != 0) {
        PyBuffer_Release(&v);
        PyErr_Format(PyExc_ValueError, "_native.bernoulli: out must be a float32 or float64 array, got format '%s'",
                     fmt);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dbl)
        isa->bern_d((double *)v.buf, (int64_t)(v.len / 8), key, t);
    else
        isa->bern_f((float *)v.buf, (int64_t)(v.len / 4), key, t);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* compiler(): what built the extension. */
static PyObject *py_compiler(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#if defined(__clang__)
    return PyUnicode_FromString("clang " __clang_version__);
#elif defined(__GNUC__)
    return PyUnicode_FromString("gcc " __VERSION__);
#elif defined(_MSC_VER)
    return PyUnicode_FromFormat("msvc %d", _MSC_VER);
#else
    return PyUnicode_FromString("unknown");
#endif
}

/* cpu(): the CPU features the variants need, as this CPU reports them ({} off x86). */
static PyObject *py_cpu(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    return Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O}", "avx512f", __builtin_cpu_supports("avx512f") ? Py_True : Py_False,
                         "avx512vl", __builtin_cpu_supports("avx512vl") ? Py_True : Py_False, "avx512dq",
                         __builtin_cpu_supports("avx512dq") ? Py_True : Py_False, "avx512bw",
                         __builtin_cpu_supports("avx512bw") ? Py_True : Py_False, "avx2",
                         __builtin_cpu_supports("avx2") ? Py_True : Py_False, "fma",
                         __builtin_cpu_supports("fma") ? Py_True : Py_False);
#else
    return PyDict_New();
#endif
}

/* widths(): {variant: vector bytes} from each variant's FN(width), for the variants this
   CPU runs: proof that each was compiled for its instruction set. */
static PyObject *py_widths(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < NVARIANTS; i++) {
        if (!cpu_runs(VARIANTS[i])) continue;
        PyObject *w = PyLong_FromLong(VARIANTS[i]->width());
        if (!w || PyDict_SetItemString(d, VARIANTS[i]->name, w) < 0) Py_CLEAR(d);
        Py_XDECREF(w);
    }
    return d;
}

static PyObject *py_panel(PyObject *self, PyObject *arg) {
    (void)self;
    long itemsize = PyLong_AsLong(arg);
    if (itemsize != 4 && itemsize != 8) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_native.panel_width: itemsize must be 4 or 8");
        return NULL;
    }
    return PyLong_FromLong(2 * isa->vector_bytes / itemsize);
}

/* set_isa(name): for the tests, run a lesser instruction set than the best. */
static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const struct isa *want = !strcmp(name, "best") ? best_isa() : NULL;
    for (int i = 0; i < NVARIANTS; i++)
        if (!strcmp(name, VARIANTS[i]->name) && cpu_runs(VARIANTS[i])) want = VARIANTS[i];
    if (!want) {
        PyErr_Format(PyExc_ValueError, "_native.set_isa: %s is not available on this CPU", name);
        return NULL;
    }
    isa = want;
    Py_RETURN_NONE;
}

/* read_seconds(buf, reps): seconds to read a float32 buffer reps times with the GIL released
   (the benchmarks' bandwidth probe; several Python threads each read their own buffer). */
static PyObject *py_read_seconds(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int err = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_native.read_seconds takes 2 arguments");
        return NULL;
    }
    int64_t reps = as_i64(args[1], &err);
    if (err) return NULL;
    struct bufs b;
    b.n = 0;
    const float *p = get(&b, args[0], "buf", 0, 4, 1, 0, 0, NULL);
    if (!p) {
        release(&b);
        return NULL;
    }
    int64_t n = (int64_t)(b.v[0].len / 4);
    volatile float sink;
    int64_t t0;
    Py_BEGIN_ALLOW_THREADS
    t0 = now_ns();
    sink = isa->read(p, n, reps);
    t0 = now_ns() - t0;
    Py_END_ALLOW_THREADS
    (void)sink;
    release(&b);
    return PyFloat_FromDouble((double)t0 * 1e-9);
}

/* qpack(src, dst, M, K, bytes): pack a quantized weight q (M, K), int8 (bytes 1) or bf16
   bits (2), into the panels of _native_quant.h. */
static PyObject *py_qpack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int err = 0;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_native.qpack takes 5 arguments");
        return NULL;
    }
    int64_t M = as_i64(args[2], &err), K = as_i64(args[3], &err), bytes = as_i64(args[4], &err);
    if (err) return NULL;
    if (M < 1 || K < 1 || (bytes != 1 && bytes != 2)) {
        PyErr_SetString(PyExc_ValueError, "_native.qpack: bad sizes or bytes");
        return NULL;
    }
    struct bufs b;
    b.n = 0;
    const void *src = get(&b, args[0], "src", 0, (Py_ssize_t)bytes, M * K, 0, 0, NULL);
    void *dst = src ? get(&b, args[1], "dst", 1, (Py_ssize_t)bytes, QPAD(M) * q_kpad(K, bytes == 1 ? WQ_INT8 : WQ_BF16),
                          0, 0, NULL)
                    : NULL;
    if (dst) q_pack(src, M, K, (int)bytes, dst);
    release(&b);
    if (!dst) return NULL;
    Py_RETURN_NONE;
}

/* qlinear(x, w, wq, M, ws, wu, bias, out, sums): out (n, M) = x (n, K) @ W.T + bias for a
   packed quantized W (qpack), x quantized row by row; int8 with sums (an int32 (n, M)
   array) writes the exact integer sums there instead (tests). */
static PyObject *py_qlinear(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int err = 0;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "_native.qlinear takes 9 arguments");
        return NULL;
    }
    int wq = (int)as_i64(args[2], &err);
    int64_t M = as_i64(args[3], &err);
    if (err) return NULL;
    const struct qpath *path = wq == WQ_INT8 || wq == WQ_BF16 ? q_best(wq, q_cap) : NULL;
    if (!path || M < 1) {
        PyErr_SetString(PyExc_ValueError, "_native.qlinear: bad storage or size");
        return NULL;
    }
    struct bufs b;
    b.n = 0;
    Py_buffer *xv = &b.v[0];
    if (PyObject_GetBuffer(args[0], xv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    b.n = 1;
    int64_t n = xv->ndim == 2 ? xv->shape[0] : 0, K = xv->ndim == 2 ? xv->shape[1] : 0;
    const int i8 = wq == WQ_INT8;
    const int64_t esz = q_esize(wq);
    const int64_t Kp = q_kpad(K, wq);
    void *q = NULL;
    float *qs = NULL;
    int32_t *qz = NULL;
    if (xv->itemsize != 4 || n < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "_native.qlinear: x must be float32 (n, K)");
        goto done;
    }
    const void *w = get(&b, args[1], "w", 0, esz, QPAD(M) * Kp, 0, 0, NULL);
    const float *ws = w ? get(&b, args[4], "ws", 0, 4, M, !i8, 0, NULL) : NULL;
    const int32_t *wu = w ? get(&b, args[5], "wu", 0, 4, M, !i8, 0, NULL) : NULL;
    const float *bias = w ? get(&b, args[6], "bias", 0, 4, M, 1, 0, NULL) : NULL;
    float *out = w ? get(&b, args[7], "out", 1, 4, n * M, 0, 0, NULL) : NULL;
    int32_t *sums = w ? get(&b, args[8], "sums", 1, 4, n * M, 1, 0, NULL) : NULL;
    if (PyErr_Occurred()) goto done;
    if (sums && !i8) {
        PyErr_SetString(PyExc_ValueError, "_native.qlinear: sums are for int8");
        goto done;
    }
    q = PyMem_Malloc((size_t)(n * Kp * esz) + 64);
    qs = PyMem_Malloc((size_t)n * 4 + 4);
    qz = PyMem_Malloc((size_t)n * 4 + 4);
    if (!q || !qs || !qz) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (i8)
        quant_rows_u8(n, K, Kp, xv->buf, K, q, Kp, qs, qz);
    else
        quant_rows_bf16(n, K, Kp, xv->buf, K, q, Kp);
    struct qmm m = {n, Kp, M, q, Kp, qs, qz, w, ws, wu, out, M, bias, 0, sums, 0};
    path->fn(&m);
    Py_END_ALLOW_THREADS
done:
    PyMem_Free(q);
    PyMem_Free(qs);
    PyMem_Free(qz);
    release(&b);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* qpaths(): {"int8": [...], "bf16": [...]} the quantized paths this CPU runs, plainest first;
   qpath(storage): the one in use; set_qpath(name): use at most that one ("best": all). */
static PyObject *py_qpaths(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *d = PyDict_New(), *l8 = PyList_New(0), *l16 = PyList_New(0);
    int level = q_level();
    for (int i = 0; d && l8 && l16 && i < NQPATHS; i++) {
        if (QPATHS[i].need > level) continue;
        PyObject *name = PyUnicode_FromString(QPATHS[i].name);
        if (!name || PyList_Append(QPATHS[i].storage == WQ_INT8 ? l8 : l16, name) < 0) {
            Py_XDECREF(name);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(name);
    }
    if (d && (PyDict_SetItemString(d, "int8", l8) < 0 || PyDict_SetItemString(d, "bf16", l16) < 0)) Py_CLEAR(d);
    Py_XDECREF(l8);
    Py_XDECREF(l16);
    return d;
}

static PyObject *py_qpath(PyObject *self, PyObject *arg) {
    (void)self;
    const char *storage = PyUnicode_AsUTF8(arg);
    if (!storage) return NULL;
    int wq = !strcmp(storage, "int8") ? WQ_INT8 : !strcmp(storage, "bf16") ? WQ_BF16 : 0;
    const struct qpath *p = wq ? q_best(wq, q_cap) : NULL;
    if (!p) {
        PyErr_SetString(PyExc_ValueError, "_native.qpath: storage must be 'int8' or 'bf16'");
        return NULL;
    }
    return PyUnicode_FromString(p->name);
}

static PyObject *py_set_qpath(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    if (!strcmp(name, "best")) {
        q_set_cap(q_cap = 99);
        Py_RETURN_NONE;
    }
    int level = q_level();
    for (int i = 0; i < NQPATHS; i++)
        if (!strcmp(name, QPATHS[i].name) && QPATHS[i].need <= level) {
            q_set_cap(q_cap = QPATHS[i].need);
            Py_RETURN_NONE;
        }
    PyErr_Format(PyExc_ValueError, "_native.set_qpath: %s is not available on this CPU", name);
    return NULL;
}

static PyMethodDef methods[] = {
    {"qpack", (PyCFunction)(void (*)(void))py_qpack, METH_FASTCALL, "Pack an int8 or bf16 weight into panels."},
    {"qlinear", (PyCFunction)(void (*)(void))py_qlinear, METH_FASTCALL, "A quantized product x @ W.T + b."},
    {"qpaths", py_qpaths, METH_NOARGS, "The quantized product paths this CPU runs."},
    {"qpath", py_qpath, METH_O, "The quantized product path in use for a storage."},
    {"set_qpath", py_set_qpath, METH_O, "Use at most this quantized path (tests)."},
    {"scan_many", (PyCFunction)(void (*)(void))py_scan_many, METH_FASTCALL,
     "Run the loops of a stack's layers as a wavefront on a team."},
    {"read_seconds", (PyCFunction)(void (*)(void))py_read_seconds, METH_FASTCALL,
     "Seconds to read a float32 buffer reps times (the benchmarks' bandwidth probe)."},
    {"scan", (PyCFunction)py_scan, METH_O, "Run one layer-direction's time loop, described by a dict."},
    {"pack", (PyCFunction)(void (*)(void))py_pack, METH_FASTCALL, "Pack a weight matrix into panels."},
    {"gemm_at", (PyCFunction)(void (*)(void))py_gemm_at, METH_FASTCALL, "A weight gradient: C (+)= A.T @ B."},
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_FASTCALL, "C = A @ B + bias, B packed, rows split."},
    {"isa", py_isa, METH_NOARGS, "The instruction set the kernels run on."},
    {"linear_scan", py_linear_scan, METH_O, "A diagonal linear scan h_t = a_t h_{t-1} + b_t, or its backward."},
    {"apply", py_apply, METH_VARARGS, "exp (0), tanh (1) or sigmoid (2) of an array in place (tests)."},
    {"bernoulli", py_bernoulli, METH_VARARGS, "0/1 values from SplitMix64 words below a threshold, in place."},
    {"widths", py_widths, METH_NOARGS, "Each variant's vector width, as compiled (tests)."},
    {"compiler", py_compiler, METH_NOARGS, "The compiler that built the extension."},
    {"describe", py_describe, METH_O, "The sizes parse_scan makes of a scan dict (tests/native)."},
    {"cpu", py_cpu, METH_NOARGS, "The CPU features the instruction set variants need."},
    {"panel_width", py_panel, METH_O, "Columns per packed panel for an item size."},
    {"set_isa", py_set_isa, METH_O, "Choose the instruction set (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    isa = best_isa();
    q_set_cap(q_cap);  /* (asks the CPU once, here, with the GIL held) */
    if (PyType_Ready(&CallType) < 0 || PyType_Ready(&TeamType) < 0 || make_keys() < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&CallType);
    if (PyModule_AddObject(m, "Call", (PyObject *)&CallType) < 0) {
        Py_DECREF(&CallType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TeamType);
    if (PyModule_AddObject(m, "Team", (PyObject *)&TeamType) < 0) {
        Py_DECREF(&TeamType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
