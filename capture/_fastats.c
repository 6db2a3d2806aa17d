/* One-pass tensor statistics for the capture writer: trainaudit.capture._fastats.
 *
 * The writer computes, for every captured tensor at every step, the statistics of
 * _format.STAT_FIELDS. With numpy or torch that is five passes over the data plus ~30 us of
 * Python per tensor, and the writer thread competes with training for the CPU (and the GIL).
 * This does it in one pass with the GIL released.
 *
 * Accuracy: elements are summed in blocks of BLOCK floats, LANES independent float32 lanes per
 * block (so the compiler can vectorise), and each block's lane sums are added in float64. A
 * lane sums BLOCK / LANES = 32 elements, so the float32 rounding is that of a 32-term sum: the
 * result is within ~1e-7 of a float64 sum, relative to the sum of magnitudes. A block holding a NaN, an Inf, or values
 * whose squares overflow float32 is redone element by element in float64, counting the
 * non-finite values and leaving them out of min / max / sums (as _format.numpy_stats does).
 *
 * Python API (contiguous buffers of float32 or float64, any shape; format "f" or "d"):
 *   stats(buffer) -> (count, nan, posinf, neginf, zero, min, max, sum, sumsq, l1)
 *   diff_sumsq(a, b) -> sum((a - b)**2) over a and b of the same format and size
 *   stats_many(buffers) -> list of stats tuples, the GIL released once for all of them
 *   snapshot(src, dst, prev) -> stats(src) + (sum((src - prev)**2) or None,), copying src
 *       into dst on the way (prev may be None): a parameter's copy, statistics and update
 *       norm in one pass over its memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define LANES 16
#define BLOCK 512

/* The block loops are compiled twice on x86-64, for AVX2 and for the baseline, and the loader
 * picks one for the CPU at hand (2-3x faster with AVX2). */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

typedef struct {
    double count, nan, posinf, neginf, zero, min, max, sum, sumsq, l1;
} stats_t;

static PyObject *stats_tuple(stats_t *s);

static void stats_init(stats_t *s, Py_ssize_t n) {
    memset(s, 0, sizeof(*s));
    s->count = (double)n;
    s->min = INFINITY;
    s->max = -INFINITY;
}

/* Element by element in float64: any block with a non-finite value or a float32 overflow. */
#define CAREFUL(T)                                                                   \
    static void careful_##T(const T *x, Py_ssize_t n, stats_t *s) {                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                         \
            double v = (double)x[i];                                                 \
            if (isnan(v)) { s->nan += 1; continue; }                                 \
            if (isinf(v)) { if (v > 0) s->posinf += 1; else s->neginf += 1; continue; } \
            if (v == 0.0) s->zero += 1;                                              \
            if (v < s->min) s->min = v;                                              \
            if (v > s->max) s->max = v;                                              \
            s->sum += v;                                                             \
            s->sumsq += v * v;                                                       \
            s->l1 += fabs(v);                                                        \
        }                                                                            \
    }
CAREFUL(float)
CAREFUL(double)

/* The fast path of one block: NL accumulators of each kind (NL floats fill the vector
 * registers: 16 float32 or 8 float64), in the element type T, the zero counts in ZT. Returns 0
 * when the block must be redone carefully. */
#define BLOCK_STATS(NAME, T, NL, ZT, ABS)                                            \
    VECTOR_CLONES static int NAME(const T *x, Py_ssize_t n, stats_t *s) {           \
        T sm[NL] = {0}, sq[NL] = {0}, ab[NL] = {0}, mn[NL], mx[NL];                  \
        ZT zc[NL] = {0};                                                              \
        for (int j = 0; j < NL; j++) { mn[j] = INFINITY; mx[j] = -INFINITY; }        \
        Py_ssize_t i = 0;                                                             \
        for (; i + NL <= n; i += NL) {                                                \
            for (int j = 0; j < NL; j++) {                                            \
                T v = x[i + j];                                                       \
                sm[j] += v;                                                           \
                sq[j] += v * v;                                                       \
                ab[j] += ABS(v);                                                      \
                zc[j] += (v == 0);                                                    \
                mn[j] = v < mn[j] ? v : mn[j];                                        \
                mx[j] = v > mx[j] ? v : mx[j];                                        \
            }                                                                         \
        }                                                                             \
        double dsm = 0, dsq = 0, dab = 0, dmn = INFINITY, dmx = -INFINITY, dz = 0;   \
        for (int j = 0; j < NL; j++) {                                                \
            dsm += sm[j]; dsq += sq[j]; dab += ab[j]; dz += (double)zc[j];            \
            if (mn[j] < dmn) dmn = mn[j];                                             \
            if (mx[j] > dmx) dmx = mx[j];                                             \
        }                                                                             \
        for (; i < n; i++) {                                                          \
            double v = x[i];                                                          \
            dsm += v; dsq += v * v; dab += fabs(v); dz += (v == 0.0);                 \
            if (v < dmn) dmn = v;                                                     \
            if (v > dmx) dmx = v;                                                     \
        }                                                                             \
        /* A NaN or Inf poisons the sums; a square past the type's max makes sq inf. */ \
        if (!isfinite(dsm) || !isfinite(dsq) || !isfinite(dab)) return 0;           \
        s->sum += dsm; s->sumsq += dsq; s->l1 += dab; s->zero += dz;                 \
        if (dmn < s->min) s->min = dmn;                                               \
        if (dmx > s->max) s->max = dmx;                                               \
        return 1;                                                                     \
    }
BLOCK_STATS(block_f32, float, LANES, int, fabsf)
BLOCK_STATS(block_f64, double, LANES / 2, long, fabs)

#define STATS_LOOP(NAME, T, BLOCK_FN, CAREFUL_FN)                                    \
    static void NAME(const T *x, Py_ssize_t n, stats_t *s) {                         \
        for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                   \
            Py_ssize_t m = n - b < BLOCK ? n - b : BLOCK;                             \
            if (!BLOCK_FN(x + b, m, s)) CAREFUL_FN(x + b, m, s);                      \
        }                                                                             \
    }
STATS_LOOP(stats_f32, float, block_f32, careful_float)
STATS_LOOP(stats_f64, double, block_f64, careful_double)

VECTOR_CLONES static double diff_sumsq_f32(const float *x, const float *y, Py_ssize_t n) {
    double total = 0;
    for (Py_ssize_t blk = 0; blk < n; blk += BLOCK) {
        Py_ssize_t m = n - blk < BLOCK ? n - blk : BLOCK;
        float acc[LANES] = {0};
        Py_ssize_t i = 0;
        for (; i + LANES <= m; i += LANES)
            for (int j = 0; j < LANES; j++) {
                float d = x[blk + i + j] - y[blk + i + j];
                acc[j] += d * d;
            }
        double part = 0;
        for (int j = 0; j < LANES; j++) part += acc[j];
        for (; i < m; i++) { double d = (double)x[blk + i] - (double)y[blk + i]; part += d * d; }
        if (!isfinite(part)) {  /* overflow in float32 (or a NaN): redo the block in float64 */
            part = 0;
            for (i = 0; i < m; i++) { double d = (double)x[blk + i] - (double)y[blk + i]; part += d * d; }
        }
        total += part;
    }
    return total;
}

static double diff_sumsq_f64(const double *x, const double *y, Py_ssize_t n) {
    double total = 0;
    for (Py_ssize_t i = 0; i < n; i++) { double d = x[i] - y[i]; total += d * d; }
    return total;
}

/* Which of "f" / "d" a buffer holds (native byte order), or 0. */
static char buffer_kind(const Py_buffer *view) {
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if ((f[0] == 'f' && view->itemsize == 4) || (f[0] == 'd' && view->itemsize == 8)) {
        if (f[1] == '\0') return f[0];
    }
    return 0;
}

static int get_buffer(PyObject *obj, Py_buffer *view, char *kind) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    *kind = buffer_kind(view);
    if (!*kind) {
        PyErr_Format(PyExc_TypeError, "expected a contiguous float32 or float64 buffer, got format %s",
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_stats(PyObject *self, PyObject *obj) {
    Py_buffer view;
    char kind;
    if (get_buffer(obj, &view, &kind) < 0) return NULL;
    Py_ssize_t n = view.len / view.itemsize;
    stats_t s;
    stats_init(&s, n);
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f') stats_f32((const float *)view.buf, n, &s);
    else stats_f64((const double *)view.buf, n, &s);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return stats_tuple(&s);
}

static PyObject *py_diff_sumsq(PyObject *self, PyObject *args) {
    PyObject *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "OO", &a_obj, &b_obj)) return NULL;
    Py_buffer a, b;
    char ka, kb;
    if (get_buffer(a_obj, &a, &ka) < 0) return NULL;
    if (get_buffer(b_obj, &b, &kb) < 0) { PyBuffer_Release(&a); return NULL; }
    if (ka != kb || a.len != b.len) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "diff_sumsq needs two buffers of the same format and size");
        return NULL;
    }
    Py_ssize_t n = a.len / a.itemsize;
    double total = 0;
    Py_BEGIN_ALLOW_THREADS
    total = ka == 'f' ? diff_sumsq_f32((const float *)a.buf, (const float *)b.buf, n)
                      : diff_sumsq_f64((const double *)a.buf, (const double *)b.buf, n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyFloat_FromDouble(total);
}

static PyObject *stats_tuple(stats_t *s) {
    if (s->count == s->nan + s->posinf + s->neginf) { s->min = NAN; s->max = NAN; }  /* nothing finite */
    return Py_BuildValue("(dddddddddd)", s->count, s->nan, s->posinf, s->neginf, s->zero, s->min, s->max,
                         s->sum, s->sumsq, s->l1);
}

/* The writer's batch: every tensor of a step in one call, so the GIL changes hands once per
 * step instead of once per tensor (each hand-over can make the training thread wait). */
static PyObject *py_stats_many(PyObject *self, PyObject *seq_obj) {
    PyObject *seq = PySequence_Fast(seq_obj, "stats_many needs a sequence of buffers");
    if (!seq) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc((size_t)(k ? k : 1), sizeof(Py_buffer));
    char *kinds = PyMem_Calloc((size_t)(k ? k : 1), 1);
    stats_t *out = PyMem_Calloc((size_t)(k ? k : 1), sizeof(stats_t));
    PyObject *result = NULL;
    Py_ssize_t got = 0;
    if (!views || !kinds || !out) { PyErr_NoMemory(); goto done; }
    for (; got < k; got++)
        if (get_buffer(PySequence_Fast_GET_ITEM(seq, got), &views[got], &kinds[got]) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_ssize_t n = views[i].len / views[i].itemsize;
        stats_init(&out[i], n);
        if (kinds[i] == 'f') stats_f32((const float *)views[i].buf, n, &out[i]);
        else stats_f64((const double *)views[i].buf, n, &out[i]);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(k);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *t = stats_tuple(&out[i]);
        if (!t) { Py_CLEAR(result); goto done; }
        PyList_SET_ITEM(result, i, t);
    }
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(kinds);
    PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

static void stats_block(char kind, const char *x, Py_ssize_t m, stats_t *s) {
    if (kind == 'f') {
        if (!block_f32((const float *)x, m, s)) careful_float((const float *)x, m, s);
    } else {
        if (!block_f64((const double *)x, m, s)) careful_double((const double *)x, m, s);
    }
}

static PyObject *py_snapshot(PyObject *self, PyObject *args) {
    PyObject *src_obj, *dst_obj, *prev_obj;
    if (!PyArg_ParseTuple(args, "OOO", &src_obj, &dst_obj, &prev_obj)) return NULL;
    Py_buffer src, dst, prev;
    char ks, kd, kp = 0;
    int has_prev = prev_obj != Py_None;
    if (get_buffer(src_obj, &src, &ks) < 0) return NULL;
    if (get_buffer(dst_obj, &dst, &kd) < 0) { PyBuffer_Release(&src); return NULL; }
    if (has_prev && get_buffer(prev_obj, &prev, &kp) < 0) {
        PyBuffer_Release(&src); PyBuffer_Release(&dst); return NULL;
    }
    if (dst.readonly || ks != kd || src.len != dst.len || (has_prev && (kp != ks || prev.len != src.len))) {
        PyBuffer_Release(&src); PyBuffer_Release(&dst);
        if (has_prev) PyBuffer_Release(&prev);
        PyErr_SetString(PyExc_ValueError, "snapshot needs src, a writable dst and prev of one format and size");
        return NULL;
    }
    Py_ssize_t item = src.itemsize, n = src.len / item;
    stats_t s;
    stats_init(&s, n);
    double dsq = 0;
    Py_BEGIN_ALLOW_THREADS
    /* Block by block: the copy's block is in L1 when its statistics and its difference to the
     * previous copy are taken, so src and prev are each read from memory once. */
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {
        Py_ssize_t m = n - b < BLOCK ? n - b : BLOCK;
        char *d = (char *)dst.buf + b * item;
        memcpy(d, (const char *)src.buf + b * item, (size_t)(m * item));
        stats_block(ks, d, m, &s);
        if (has_prev) {
            const char *pv = (const char *)prev.buf + b * item;
            dsq += ks == 'f' ? diff_sumsq_f32((const float *)d, (const float *)pv, m)
                             : diff_sumsq_f64((const double *)d, (const double *)pv, m);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (has_prev) PyBuffer_Release(&prev);
    if (s.count == s.nan + s.posinf + s.neginf) { s.min = NAN; s.max = NAN; }
    PyObject *diff = has_prev ? PyFloat_FromDouble(dsq) : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(ddddddddddN)", s.count, s.nan, s.posinf, s.neginf, s.zero, s.min, s.max,
                         s.sum, s.sumsq, s.l1, diff);
}

static PyMethodDef methods[] = {
    {"stats", py_stats, METH_O,
     "stats(buffer) -> (count, nan, posinf, neginf, zero, min, max, sum, sumsq, l1) of a contiguous "
     "float32/float64 buffer; min/max/sums over the finite values, in one pass without the GIL."},
    {"diff_sumsq", py_diff_sumsq, METH_VARARGS,
     "diff_sumsq(a, b) -> sum((a - b)**2) of two contiguous buffers of the same float format and size."},
    {"stats_many", py_stats_many, METH_O,
     "stats_many(buffers) -> [stats(b) for b in buffers], computed with the GIL released once."},
    {"snapshot", py_snapshot, METH_VARARGS,
     "snapshot(src, dst, prev) -> stats(src) + (sum((src - prev)**2) or None,), copying src into dst "
     "in the same pass; prev may be None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastats", "One-pass tensor statistics.", -1, methods};

PyMODINIT_FUNC PyInit__fastats(void) { return PyModule_Create(&module); }
