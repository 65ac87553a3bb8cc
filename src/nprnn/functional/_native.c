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
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* libmvec (glibc, x86-64) has vector versions of exp and tanh.  GCC declares them only
   under -ffast-math's finite-math assumption, which we do not make (NaN and inf must
   propagate as in PyTorch); libmvec itself handles them, so declare the clones here. */
#if defined(__GLIBC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((__simd__("notinbranch"))) float expf(float);
__attribute__((__simd__("notinbranch"))) float tanhf(float);
__attribute__((__simd__("notinbranch"))) double exp(double);
__attribute__((__simd__("notinbranch"))) double tanh(double);
#endif

enum { KIND_RNN_TANH = 0, KIND_RNN_RELU = 1, KIND_LSTM = 2, KIND_GRU = 3 };

/* Everything one call needs.  Forward: x the layer input, h, c the running states (h_0
   in, h_n out), out receives every step's h.  Backward: h, c are the running state
   gradients, out is the output gradient, dx receives (or, with accumulate, adds) the
   input gradient.  Rows r0..r1 of the batch only (a batch split across threads). */
struct scan {
    int kind, train, reverse, accumulate;
    long G, H, P, Hin, steps, r0, r1, ldout;
    const int64_t *batch_sizes, *offsets;
    const void *x, *wih, *whh, *bias, *bhn, *whr;  /* backward: wih, whh, whr packed untransposed */
    void *out, *h, *c;
    void *gates, *hprev, *cprev, *tc, *m, *ghn, *gxs;  /* the tape (training) or per-row work */
    void *dx, *dgx, *dgh, *dproj, *scratch;           /* backward */
};

/* One matrix product C (n, M) = Cin + A1 (n, K1) @ B1 [+ A2 (n, K2) @ B2], each B packed,
   its panels ps1 (ps2) elements apart; A1[i][k] = A1[i * ars1 + k * aks1], A2 row-major
   with row stride ars2. */
struct gemm {
    long n, M, K1;
    const void *A1;
    long ars1, aks1;
    const void *B1;
    long ps1, K2;
    const void *A2;
    long ars2;
    const void *B2;
    long ps2;
    void *C;
    long ldc;
    const void *Cin;
    long ldcin;
};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_X86_VARIANTS 1  /* GCC can compile functions for AVX-512 and AVX2 beside the baseline */
#endif
#define PASTE_(a, b) a##_##b
#define PASTE(a, b) PASTE_(a, b)

#define T float
#define TNAME f32
#define EXP expf
#define TANH tanhf
#include "_native_isas.h"
#undef T
#undef TNAME
#undef EXP
#undef TANH

#define T double
#define TNAME f64
#define EXP exp
#define TANH tanh
#include "_native_isas.h"
#undef T
#undef TNAME
#undef EXP
#undef TANH

typedef void (*scan_fn)(const struct scan *);
struct isa {
    const char *name;
    int vector_bytes;
    scan_fn forward[2], backward[2];  /* [float, double] */
    void (*pack_f)(const float *, long, long, long, long, float *, long, long);
    void (*pack_d)(const double *, long, long, long, long, double *, long, long);
    void (*at_f)(long, long, long, long, const float *, long, const float *, float *, long, int);
    void (*at_d)(long, long, long, long, const double *, long, const double *, double *, long, int);
};

#define ISA(label, vb, s)                                                                                  \
    {label, vb, {forward_f32_##s, forward_f64_##s}, {backward_f32_##s, backward_f64_##s}, pack_f32_##s, \
     pack_f64_##s, gemm_at_f32_##s, gemm_at_f64_##s}
static const struct isa ISA_BASE = ISA("baseline", 16, base);
#ifdef HAVE_X86_VARIANTS
static const struct isa ISA_AVX2 = ISA("avx2", 32, avx2);
static const struct isa ISA_AVX512 = ISA("avx512", 64, avx512);
#endif
static const struct isa *isa = &ISA_BASE;

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

/* ------------------------------------------------------------------ buffers */
#define MAX_BUFS 32
struct bufs {
    Py_buffer v[MAX_BUFS];
    int n;
};

static void release(struct bufs *b) {
    for (int i = 0; i < b->n; i++) PyBuffer_Release(&b->v[i]);
    b->n = 0;
}

/* The data of `obj` (None gives NULL when optional) as an array of `items` elements of
   `itemsize` bytes at least, contiguous unless `ld` is given: then 2-D rows of `cols`
   elements, any row stride, returned in *ld. */
static void *get(struct bufs *b, PyObject *obj, const char *name, int writable, Py_ssize_t itemsize,
                 Py_ssize_t items, int optional, long cols, long *ld) {
    if (obj == Py_None) {
        if (optional) return NULL;
        PyErr_Format(PyExc_ValueError, "_native: %s is required", name);
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
            PyErr_Format(PyExc_ValueError, "_native: %s must have rows of %ld elements (%zd in all)", name, cols,
                         items);
            return NULL;
        }
        *ld = v->shape[0] > 1 ? (long)(v->strides[0] / itemsize) : cols;
    } else if (v->len / itemsize < items) {
        PyErr_Format(PyExc_ValueError, "_native: %s holds %zd elements, the loop needs %zd", name,
                     v->len / itemsize, items);
        return NULL;
    }
    return v->buf;
}

static long as_long(PyObject *o, int *err) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) *err = 1;
    return v;
}

static long panels(long M, Py_ssize_t itemsize) {
    long nr = 2 * isa->vector_bytes / (long)itemsize;
    return (M + nr - 1) / nr * nr;
}

/* scan(backward, kind, train, reverse, r0, r1, H, P, Hin, accumulate, batch_sizes, offsets,
        x, out, h, c, wih, whh, bias, bhn, whr, gates, hprev, cprev, tc, m, ghn, gxs,
        dx, dgx, dgh, dproj, scratch, itemsize) */
#define SCAN_ARGS 34
/* Parse and check scan()'s arguments into *sp, the buffers held in *bp (released on
   failure); returns the loop to run, or NULL with an exception set. */
static scan_fn parse_scan(PyObject *const *args, Py_ssize_t nargs, struct scan *sp, struct bufs *bp) {
    bp->n = 0;
    if (nargs != SCAN_ARGS) {
        PyErr_SetString(PyExc_TypeError, "_native.scan takes 34 arguments");
        return NULL;
    }
    int err = 0;
    struct scan s;
    memset(&s, 0, sizeof s);
    int back = (int)as_long(args[0], &err);
    s.kind = (int)as_long(args[1], &err);
    s.train = (int)as_long(args[2], &err);
    s.reverse = (int)as_long(args[3], &err);
    s.r0 = as_long(args[4], &err);
    s.r1 = as_long(args[5], &err);
    s.H = as_long(args[6], &err);
    s.P = as_long(args[7], &err);
    s.Hin = as_long(args[8], &err);
    s.accumulate = (int)as_long(args[9], &err);
    Py_ssize_t isz = (Py_ssize_t)as_long(args[33], &err);
    if (err) return NULL;
    if (s.kind < 0 || s.kind > 3 || (isz != 4 && isz != 8) || s.H < 1 || s.P < 1 || s.Hin < 1 || s.r0 < 0 ||
        s.r1 <= s.r0) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: bad kind, size or row range");
        return NULL;
    }
    s.G = s.kind == KIND_LSTM ? 4 : s.kind == KIND_GRU ? 3 : 1;
    s.train = back ? 1 : s.train;
    const long GH = s.G * s.H, H = s.H, P = s.P, Hin = s.Hin;
    struct bufs b;
    b.n = 0;
    scan_fn fn = NULL;
    s.batch_sizes = get(&b, args[10], "batch_sizes", 0, 8, 1, 0, 0, NULL);
    if (!s.batch_sizes) goto fail;
    s.steps = (long)(b.v[0].len / 8);
    s.offsets = get(&b, args[11], "offsets", 0, 8, s.steps, 0, 0, NULL);
    if (!s.offsets) goto fail;
    long rows = 0, N = (long)s.batch_sizes[0];
    for (long t = 0; t < s.steps; t++) {
        if (s.batch_sizes[t] < 1 || s.batch_sizes[t] > N || (t && s.batch_sizes[t] > s.batch_sizes[t - 1]) ||
            s.offsets[t] != rows) {
            PyErr_SetString(PyExc_ValueError, "_native.scan: batch_sizes must be positive and non-increasing, "
                                              "offsets their running sum");
            goto fail;
        }
        rows += (long)s.batch_sizes[t];
    }
    if (s.r1 > N) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: row range past the batch");
        goto fail;
    }
    int lstm = s.kind == KIND_LSTM, gru = s.kind == KIND_GRU;
    long tape_rows = s.train ? rows : N;  /* per packed row when training, else per batch row */
    s.out = get(&b, args[13], back ? "dout" : "out", !back, isz, rows * P, 0, P, &s.ldout);
    s.h = get(&b, args[14], "h", 1, isz, N * P, 0, 0, NULL);
    if (!s.out || !s.h) goto fail;
    s.c = get(&b, args[15], "c", 1, isz, N * H, !lstm, 0, NULL);
    s.gates = get(&b, args[21], "gates", !back, isz, tape_rows * GH, 0, 0, NULL);
    if ((lstm && !s.c) || !s.gates) goto fail;
    s.bhn = get(&b, args[19], "bhn", 0, isz, H, 1, 0, NULL);
    if (PyErr_Occurred()) goto fail;
    if (!back) {
        s.x = get(&b, args[12], "x", 0, isz, rows * Hin, 0, 0, NULL);
        s.wih = get(&b, args[16], "wih", 0, isz, Hin * panels(GH, isz), 0, 0, NULL);
        s.whh = get(&b, args[17], "whh", 0, isz, P * panels(GH, isz), 0, 0, NULL);
        if (!s.x || !s.wih || !s.whh) goto fail;
        s.bias = get(&b, args[18], "bias", 0, isz, GH, 1, 0, NULL);
        s.whr = get(&b, args[20], "whr", 0, isz, H * panels(P, isz), 1, 0, NULL);
        s.gxs = get(&b, args[27], "gxs", 1, isz, N * GH, !gru, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    } else {
        s.wih = get(&b, args[16], "wih", 0, isz, GH * panels(Hin, isz), 0, 0, NULL);
        s.whh = get(&b, args[17], "whh", 0, isz, GH * panels(P, isz), 0, 0, NULL);
        if (!s.wih || !s.whh) goto fail;
        s.whr = get(&b, args[20], "whr", 0, isz, P * panels(H, isz), 1, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    }
    int proj = s.whr != NULL;
    if (proj && !lstm) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: a projection is for LSTM only");
        goto fail;
    }
    if (!proj && P != H) {
        PyErr_SetString(PyExc_ValueError, "_native.scan: H_out must equal H without a projection");
        goto fail;
    }
    s.hprev = get(&b, args[22], "hprev", !back, isz, rows * P, !(s.train && (!back || gru)), 0, NULL);
    s.cprev = get(&b, args[23], "cprev", !back, isz, rows * H, !(s.train && lstm), 0, NULL);
    s.tc = get(&b, args[24], "tc", !back, isz, tape_rows * H, !lstm, 0, NULL);
    s.m = get(&b, args[25], "m", !back, isz, tape_rows * H, !(lstm && proj && !back), 0, NULL);
    s.ghn = get(&b, args[26], "ghn", !back, isz, tape_rows * H, !gru, 0, NULL);
    if (PyErr_Occurred()) goto fail;
    if (back) {
        s.dx = get(&b, args[28], "dx", 1, isz, rows * Hin, 0, 0, NULL);
        s.dgx = get(&b, args[29], "dgx", 1, isz, rows * GH, 0, 0, NULL);
        if (!s.dx || !s.dgx) goto fail;
        s.dgh = get(&b, args[30], "dgh", 1, isz, rows * GH, !gru, 0, NULL);
        s.dproj = get(&b, args[31], "dproj", 1, isz, rows * P, !proj, 0, NULL);
        s.scratch = get(&b, args[32], "scratch", 1, isz, N * H, !proj, 0, NULL);
        if (PyErr_Occurred()) goto fail;
    }
    fn = back ? isa->backward[isz == 8] : isa->forward[isz == 8];
    *sp = s;
    *bp = b;
    return fn;
fail:
    release(&b);
    return NULL;
}

static PyObject *py_scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    struct scan s;
    struct bufs b;
    scan_fn fn = parse_scan(args, nargs, &s, &b);
    if (!fn) return NULL;
    Py_BEGIN_ALLOW_THREADS
    fn(&s);
    Py_END_ALLOW_THREADS
    release(&b);
    Py_RETURN_NONE;
}

/* Call(*scan_args): scan()'s arguments parsed and checked once, the arrays held; call() runs
   the loop again on them (a stream's step: the same arrays every time, new contents). */
typedef struct {
    PyObject_HEAD
    struct scan s;
    struct bufs b;
    scan_fn fn;
} CallObject;

static void call_dealloc(CallObject *self) {
    release(&self->b);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *call_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (kwds && PyDict_Size(kwds)) {
        PyErr_SetString(PyExc_TypeError, "_native.Call takes no keyword arguments");
        return NULL;
    }
    CallObject *self = (CallObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->fn = parse_scan(&PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), &self->s, &self->b);
    if (!self->fn) {
        self->b.n = 0;
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *call_call(CallObject *self, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_Size(kwds))) {
        PyErr_SetString(PyExc_TypeError, "a _native.Call takes no arguments");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    self->fn(&self->s);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nprnn.functional._native.Call",
    .tp_basicsize = sizeof(CallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "scan()'s arguments, checked once; calling it runs the loop on them again.",
    .tp_new = call_new,
    .tp_dealloc = (destructor)call_dealloc,
    .tp_call = (ternaryfunc)call_call,
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
    long K = as_long(args[2], &err), M = as_long(args[3], &err), sk = as_long(args[4], &err),
         sm = as_long(args[5], &err);
    long col0 = nargs == 8 ? as_long(args[6], &err) : 0, Mtot = nargs == 8 ? as_long(args[7], &err) : M;
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

/* gemm_at(A, Bp, C, r0, r1, accumulate): C[r0:r1] (+)= A[:, r0:r1].T @ B for A (K, M1) and
   C (M1, M) C-contiguous, B (K, M) packed by pack().  The GIL is released. */
static PyObject *py_gemm_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_native.gemm_at takes 6 arguments");
        return NULL;
    }
    int err = 0;
    long r0 = as_long(args[3], &err), r1 = as_long(args[4], &err);
    int accumulate = (int)as_long(args[5], &err);
    if (err) return NULL;
    struct bufs b;
    b.n = 0;
    Py_buffer *a = &b.v[0], *c = &b.v[1];
    if (PyObject_GetBuffer(args[0], a, PyBUF_C_CONTIGUOUS | PyBUF_ND | PyBUF_FORMAT) < 0) return NULL;
    b.n = 1;
    if (PyObject_GetBuffer(args[2], c, PyBUF_C_CONTIGUOUS | PyBUF_ND | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto fail;
    b.n = 2;
    Py_ssize_t isz = a->itemsize;
    if ((isz != 4 && isz != 8) || c->itemsize != isz || a->ndim != 2 || c->ndim != 2 ||
        c->shape[0] != a->shape[1] || a->shape[0] < 1 || r0 < 0 || r1 > c->shape[0] || r0 > r1) {
        PyErr_SetString(PyExc_ValueError, "_native.gemm_at: A (K, M1), C (M1, M) and 0 <= r0 <= r1 <= M1 expected");
        goto fail;
    }
    long K = (long)a->shape[0], M1 = (long)a->shape[1], M = (long)c->shape[1];
    const void *bp = get(&b, args[1], "Bp", 0, isz, K * panels(M, isz), 0, 0, NULL);
    if (!bp) goto fail;
    Py_BEGIN_ALLOW_THREADS
    if (isz == 4)
        isa->at_f(r0, r1, K, M, (const float *)a->buf, M1, (const float *)bp, (float *)c->buf, M, accumulate);
    else
        isa->at_d(r0, r1, K, M, (const double *)a->buf, M1, (const double *)bp, (double *)c->buf, M, accumulate);
    Py_END_ALLOW_THREADS
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
    const struct isa *best = best_isa();
    const struct isa *want = NULL;
    if (!strcmp(name, "baseline")) want = &ISA_BASE;
#ifdef HAVE_X86_VARIANTS
    if (!strcmp(name, "avx2") && best != &ISA_BASE) want = &ISA_AVX2;
    if (!strcmp(name, "avx512") && best == &ISA_AVX512) want = &ISA_AVX512;
#endif
    if (!strcmp(name, "best")) want = best;
    if (!want) {
        PyErr_Format(PyExc_ValueError, "_native.set_isa: %s is not available on this CPU", name);
        return NULL;
    }
    isa = want;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))py_scan, METH_FASTCALL, "Run one layer-direction's time loop."},
    {"pack", (PyCFunction)(void (*)(void))py_pack, METH_FASTCALL, "Pack a weight matrix into panels."},
    {"gemm_at", (PyCFunction)(void (*)(void))py_gemm_at, METH_FASTCALL, "A weight gradient: C (+)= A.T @ B."},
    {"isa", py_isa, METH_NOARGS, "The instruction set the kernels run on."},
    {"panel_width", py_panel, METH_O, "Columns per packed panel for an item size."},
    {"set_isa", py_set_isa, METH_O, "Choose the instruction set (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    isa = best_isa();
    if (PyType_Ready(&CallType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&CallType);
    if (PyModule_AddObject(m, "Call", (PyObject *)&CallType) < 0) {
        Py_DECREF(&CallType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
