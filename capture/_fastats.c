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
 *   stats_at(specs, out) -> None: the stats of tensors given as (address, count, dtype code),
 *       one row of `out` each (torch tensors offer no buffer interface; the writer holds them)
 *   snapshot(src, dst, prev) -> stats(src) + (sum((src - prev)**2) or None,), copying src
 *       into dst on the way (prev may be None): a parameter's copy, statistics and update
 *       norm in one pass over its memory.
 *   snapshot_many(triples) -> [snapshot(*t) for t in triples], the GIL released once
 *   yield_gil(seconds) -> None: let go of the GIL for `seconds` (at most 1 ms), spinning
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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
/* Integers and bools (labels, class ids, token ids) are measured in float64, as numpy_stats
 * measures them: never NaN or Inf, so the careful loop is their only one. */
CAREFUL(int64_t)
CAREFUL(int32_t)
CAREFUL(int16_t)
CAREFUL(int8_t)
CAREFUL(uint8_t)

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

/* The writer's batch of tensors it holds references to (torch tensors, which offer no buffer
 * interface): each given as (address of its first element, element count, dtype code), see
 * STATS_AT_CODES. The caller keeps every tensor alive and contiguous through the call; the
 * rows go into `out`, a writable float64 buffer of at least 10 * len(specs) numbers, so the
 * writer gets one array back instead of a tuple per tensor. */
enum { AT_F32, AT_F64, AT_I64, AT_I32, AT_I16, AT_I8, AT_U8, AT_NCODES };

typedef struct {
    const void *data;
    Py_ssize_t n;
    int code;
} at_spec_t;

static void stats_at_one(const at_spec_t *a, stats_t *s) {
    stats_init(s, a->n);
    switch (a->code) {
    case AT_F32: stats_f32((const float *)a->data, a->n, s); break;
    case AT_F64: stats_f64((const double *)a->data, a->n, s); break;
    case AT_I64: careful_int64_t((const int64_t *)a->data, a->n, s); break;
    case AT_I32: careful_int32_t((const int32_t *)a->data, a->n, s); break;
    case AT_I16: careful_int16_t((const int16_t *)a->data, a->n, s); break;
    case AT_I8: careful_int8_t((const int8_t *)a->data, a->n, s); break;
    default: careful_uint8_t((const uint8_t *)a->data, a->n, s); break;
    }
    if (s->count == s->nan + s->posinf + s->neginf) { s->min = NAN; s->max = NAN; }  /* nothing finite */
}

static int address_converter(PyObject *obj, void *out) {
    void *p = PyLong_AsVoidPtr(obj);
    if (p == NULL && PyErr_Occurred()) return 0;
    *(void **)out = p;
    return 1;
}

static PyObject *py_stats_at(PyObject *self, PyObject *args) {
    PyObject *specs_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OO", &specs_obj, &out_obj)) return NULL;
    PyObject *seq = PySequence_Fast(specs_obj, "stats_at needs a sequence of (address, count, code)");
    if (!seq) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    Py_buffer out;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    at_spec_t *specs = PyMem_Calloc((size_t)(k ? k : 1), sizeof(at_spec_t));
    PyObject *result = NULL;
    if (!specs) { PyErr_NoMemory(); goto done; }
    if (buffer_kind(&out) != 'd' || out.len < (Py_ssize_t)(10 * sizeof(double)) * k) {
        PyErr_SetString(PyExc_ValueError, "stats_at needs a writable float64 buffer of 10 numbers per tensor");
        goto done;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *spec = PySequence_Fast_GET_ITEM(seq, i);
        void *data;
        Py_ssize_t n;
        int code;
        if (!PyArg_ParseTuple(spec, "O&ni", address_converter, &data, &n, &code)) goto done;
        if (n < 0 || code < 0 || code >= AT_NCODES || (n > 0 && data == NULL)) {
            PyErr_Format(PyExc_ValueError, "stats_at: bad tensor %zd (count %zd, code %d)", i, n, code);
            goto done;
        }
        specs[i].data = data;
        specs[i].n = n;
        specs[i].code = code;
    }
    double *rows = (double *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++) {
        stats_t s;
        stats_at_one(&specs[i], &s);
        double *r = rows + 10 * i;
        r[0] = s.count; r[1] = s.nan; r[2] = s.posinf; r[3] = s.neginf; r[4] = s.zero;
        r[5] = s.min; r[6] = s.max; r[7] = s.sum; r[8] = s.sumsq; r[9] = s.l1;
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_Free(specs);
    PyBuffer_Release(&out);
    Py_DECREF(seq);
    return result;
}

/* One block of a snapshot: copy x into out, take the statistics of x and sum((x - p)**2), in
 * one loop (each element is loaded once, from memory or L1). Without a previous copy p is x
 * itself: its loads hit the same cache line and the difference is 0. Returns 0 when the
 * block's statistics must be redone carefully; *dsq is then left for the caller. */
#define SNAPSHOT_BLOCK(NAME, T, NL, ZT, ABS)                                         \
    VECTOR_CLONES static int NAME(const T *restrict x, T *restrict out, const T *p,  \
                                  Py_ssize_t n, stats_t *s, double *dsq) {            \
        T sm[NL] = {0}, sq[NL] = {0}, ab[NL] = {0}, df[NL] = {0}, mn[NL], mx[NL];    \
        ZT zc[NL] = {0};                                                              \
        for (int j = 0; j < NL; j++) { mn[j] = INFINITY; mx[j] = -INFINITY; }        \
        Py_ssize_t i = 0;                                                             \
        for (; i + NL <= n; i += NL) {                                                \
            for (int j = 0; j < NL; j++) {                                            \
                T v = x[i + j];                                                       \
                out[i + j] = v;                                                       \
                T d = v - p[i + j];                                                   \
                sm[j] += v;                                                           \
                sq[j] += v * v;                                                       \
                ab[j] += ABS(v);                                                      \
                df[j] += d * d;                                                       \
                zc[j] += (v == 0);                                                    \
                mn[j] = v < mn[j] ? v : mn[j];                                        \
                mx[j] = v > mx[j] ? v : mx[j];                                        \
            }                                                                         \
        }                                                                             \
        double dsm = 0, dsq_ = 0, dab = 0, ddf = 0, dmn = INFINITY, dmx = -INFINITY, dz = 0; \
        for (int j = 0; j < NL; j++) {                                                \
            dsm += sm[j]; dsq_ += sq[j]; dab += ab[j]; ddf += df[j]; dz += (double)zc[j]; \
            if (mn[j] < dmn) dmn = mn[j];                                             \
            if (mx[j] > dmx) dmx = mx[j];                                             \
        }                                                                             \
        for (; i < n; i++) {                                                          \
            double v = x[i], d = v - (double)p[i];                                    \
            out[i] = x[i];                                                            \
            dsm += v; dsq_ += v * v; dab += fabs(v); ddf += d * d; dz += (v == 0.0);  \
            if (v < dmn) dmn = v;                                                     \
            if (v > dmx) dmx = v;                                                     \
        }                                                                             \
        if (!isfinite(dsm) || !isfinite(dsq_) || !isfinite(dab)) return 0;           \
        s->sum += dsm; s->sumsq += dsq_; s->l1 += dab; s->zero += dz;                \
        if (dmn < s->min) s->min = dmn;                                               \
        if (dmx > s->max) s->max = dmx;                                               \
        if (!isfinite(ddf)) { /* a float32 square overflowed: redo in float64 */     \
            ddf = 0;                                                                  \
            for (i = 0; i < n; i++) { double d = (double)x[i] - (double)p[i]; ddf += d * d; } \
        }                                                                             \
        *dsq += ddf;                                                                  \
        return 1;                                                                     \
    }
SNAPSHOT_BLOCK(snapshot_block_f32, float, LANES, int, fabsf)
SNAPSHOT_BLOCK(snapshot_block_f64, double, LANES / 2, long, fabs)

/* A block whose statistics were not all finite: statistics and difference in float64. */
#define SNAPSHOT_CAREFUL(NAME, T, CAREFUL_FN)                                         \
    static void NAME(const T *x, const T *p, Py_ssize_t n, stats_t *s, double *dsq) { \
        CAREFUL_FN(x, n, s);                                                          \
        for (Py_ssize_t i = 0; i < n; i++) { double d = (double)x[i] - (double)p[i]; *dsq += d * d; } \
    }
SNAPSHOT_CAREFUL(snapshot_careful_f32, float, careful_float)
SNAPSHOT_CAREFUL(snapshot_careful_f64, double, careful_double)

#define SNAPSHOT_LOOP(NAME, T, BLOCK_FN, CAREFUL_FN)                                  \
    static void NAME(const T *x, T *out, const T *p, Py_ssize_t n, stats_t *s, double *dsq) { \
        for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                   \
            Py_ssize_t m = n - b < BLOCK ? n - b : BLOCK;                             \
            if (!BLOCK_FN(x + b, out + b, p + b, m, s, dsq)) CAREFUL_FN(x + b, p + b, m, s, dsq); \
        }                                                                             \
    }
SNAPSHOT_LOOP(snapshot_f32, float, snapshot_block_f32, snapshot_careful_f32)
SNAPSHOT_LOOP(snapshot_f64, double, snapshot_block_f64, snapshot_careful_f64)

/* One snapshot's buffers, checked: src, a writable dst, and prev (or none) of one format and
 * size. On failure every view taken is released and a Python error is set. */
typedef struct {
    Py_buffer src, dst, prev;
    char kind;
    int has_prev;
    stats_t s;
    double dsq;
} snapshot_t;

static int snapshot_open(PyObject *src_obj, PyObject *dst_obj, PyObject *prev_obj, snapshot_t *job) {
    char kd, kp = 0;
    job->has_prev = prev_obj != Py_None;
    if (get_buffer(src_obj, &job->src, &job->kind) < 0) return -1;
    if (get_buffer(dst_obj, &job->dst, &kd) < 0) { PyBuffer_Release(&job->src); return -1; }
    if (job->has_prev && get_buffer(prev_obj, &job->prev, &kp) < 0) {
        PyBuffer_Release(&job->src); PyBuffer_Release(&job->dst); return -1;
    }
    if (job->dst.readonly || job->kind != kd || job->src.len != job->dst.len ||
        (job->has_prev && (kp != job->kind || job->prev.len != job->src.len))) {
        PyBuffer_Release(&job->src); PyBuffer_Release(&job->dst);
        if (job->has_prev) PyBuffer_Release(&job->prev);
        PyErr_SetString(PyExc_ValueError, "snapshot needs src, a writable dst and prev of one format and size");
        return -1;
    }
    return 0;
}

/* The pass itself; no Python API, so it runs with the GIL released. */
static void snapshot_run(snapshot_t *job) {
    Py_ssize_t n = job->src.len / job->src.itemsize;
    stats_init(&job->s, n);
    job->dsq = 0;
    const void *pv = job->has_prev ? job->prev.buf : job->src.buf;
    if (job->kind == 'f') snapshot_f32((const float *)job->src.buf, (float *)job->dst.buf, (const float *)pv, n, &job->s, &job->dsq);
    else snapshot_f64((const double *)job->src.buf, (double *)job->dst.buf, (const double *)pv, n, &job->s, &job->dsq);
}

static PyObject *snapshot_close(snapshot_t *job) {
    PyBuffer_Release(&job->src);
    PyBuffer_Release(&job->dst);
    if (job->has_prev) PyBuffer_Release(&job->prev);
    stats_t *s = &job->s;
    if (s->count == s->nan + s->posinf + s->neginf) { s->min = NAN; s->max = NAN; }
    PyObject *diff = job->has_prev ? PyFloat_FromDouble(job->dsq) : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(ddddddddddN)", s->count, s->nan, s->posinf, s->neginf, s->zero, s->min, s->max,
                         s->sum, s->sumsq, s->l1, diff);
}

static PyObject *py_snapshot(PyObject *self, PyObject *args) {
    PyObject *src_obj, *dst_obj, *prev_obj;
    if (!PyArg_ParseTuple(args, "OOO", &src_obj, &dst_obj, &prev_obj)) return NULL;
    snapshot_t job;
    if (snapshot_open(src_obj, dst_obj, prev_obj, &job) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    snapshot_run(&job);
    Py_END_ALLOW_THREADS
    return snapshot_close(&job);
}

/* snapshot() of a whole model's parameters with the GIL released once: the thread that makes
 * the copies then takes the GIL twice per step, not twice per parameter (each time it takes
 * it while the training thread runs Python, the training thread waits). */
static PyObject *py_snapshot_many(PyObject *self, PyObject *seq_obj) {
    PyObject *seq = PySequence_Fast(seq_obj, "snapshot_many needs a sequence of (src, dst, prev) triples");
    if (!seq) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq), got = 0;
    snapshot_t *jobs = PyMem_Calloc((size_t)(k ? k : 1), sizeof(snapshot_t));
    PyObject *result = NULL;
    if (!jobs) { PyErr_NoMemory(); goto done; }
    for (; got < k; got++) {
        PyObject *triple = PySequence_Fast_GET_ITEM(seq, got);
        PyObject *src_obj, *dst_obj, *prev_obj;
        if (!PyArg_ParseTuple(triple, "OOO", &src_obj, &dst_obj, &prev_obj)) goto done;
        if (snapshot_open(src_obj, dst_obj, prev_obj, &jobs[got]) < 0) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++) snapshot_run(&jobs[i]);
    Py_END_ALLOW_THREADS
    /* From here every view is released by snapshot_close, whatever else fails. */
    got = 0;
    result = PyList_New(k);
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *t = snapshot_close(&jobs[i]);
        if (!result || !t) { Py_XDECREF(t); continue; }
        PyList_SET_ITEM(result, i, t);
    }
    if (result && PyErr_Occurred()) Py_CLEAR(result);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        PyBuffer_Release(&jobs[i].src);
        PyBuffer_Release(&jobs[i].dst);
        if (jobs[i].has_prev) PyBuffer_Release(&jobs[i].prev);
    }
    PyMem_Free(jobs);
    Py_DECREF(seq);
    return result;
}

/* Hand the GIL to a thread waiting for it. Releasing and retaking it at once does not: the
 * waiter, woken through a futex, is still getting onto its CPU when this thread takes the GIL
 * back. time.sleep() would, but sleeps at least the timer slack (50 us by default) and often
 * far longer; spinning holds the wait to what was asked, on a core that capture has anyway. */
static PyObject *py_yield_gil(PyObject *self, PyObject *arg) {
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    if (!(seconds > 0)) Py_RETURN_NONE;
    if (seconds > 1e-3) seconds = 1e-3;
    Py_BEGIN_ALLOW_THREADS
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec) < seconds);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"stats", py_stats, METH_O,
     "stats(buffer) -> (count, nan, posinf, neginf, zero, min, max, sum, sumsq, l1) of a contiguous "
     "float32/float64 buffer; min/max/sums over the finite values, in one pass without the GIL."},
    {"diff_sumsq", py_diff_sumsq, METH_VARARGS,
     "diff_sumsq(a, b) -> sum((a - b)**2) of two contiguous buffers of the same float format and size."},
    {"stats_many", py_stats_many, METH_O,
     "stats_many(buffers) -> [stats(b) for b in buffers], computed with the GIL released once."},
    {"stats_at", py_stats_at, METH_VARARGS,
     "stats_at(specs, out) -> None: the stats of each (address, count, code) in specs into the rows of "
     "out (float64, 10 per tensor), the GIL released once. Codes: 0 float32, 1 float64, 2 int64, "
     "3 int32, 4 int16, 5 int8, 6 uint8 or bool. The caller keeps the memory alive."},
    {"snapshot", py_snapshot, METH_VARARGS,
     "snapshot(src, dst, prev) -> stats(src) + (sum((src - prev)**2) or None,), copying src into dst "
     "in the same pass; prev may be None."},
    {"snapshot_many", py_snapshot_many, METH_O,
     "snapshot_many(triples) -> [snapshot(src, dst, prev) for src, dst, prev in triples], the GIL "
     "released once for all of them."},
    {"yield_gil", py_yield_gil, METH_O,
     "yield_gil(seconds) -> None: release the GIL for `seconds` (at most 1 ms), so that a thread "
     "waiting for it takes it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastats", "One-pass tensor statistics.", -1, methods};

PyMODINIT_FUNC PyInit__fastats(void) { return PyModule_Create(&module); }
