/* tensorvcs._native: the byte loops of the hot path in one pass each (optional).
 *
 * Built by setup.py as an optional extension: where no C compiler is found the package
 * installs without it and tensorvcs/accel.py falls back to numpy, with the same results
 * (byte planes: identical bytes; statistics: the same counts, min and max, sums within
 * float rounding). Every function takes buffers (the GIL is released while it runs, so the
 * writer's and reader's pool threads run in parallel) and assumes little-endian elements,
 * which is what the format stores; accel.py loads this module only on little-endian hosts.
 *
 *   split_planes(src, width, out)         out[i*m + k] = src[k*width + i]
 *   merge_planes(planes, out)             the inverse: planes is a sequence of width buffers
 *   delta_split(new, base, width, out)    split_planes of zigzag(new - base), the difference
 *       taken in width-byte unsigned lanes (wrapping), zigzag(d) = (d << 1) ^ (d < 0 ? ~0 : 0);
 *       width 2, 4 or 8: the delta codec's encoding in one pass, no difference array
 *   delta_merge(planes, out)              the inverse, in place: out holds the base and
 *       receives base + unzigzag(merge_planes(planes))
 *   scan(kind, new, old, values)          -> (total, sumsq, lo, hi, delta)
 *       kind 0: float32, kind 1: bfloat16. Rows of ROW elements are summed in float32 in
 *       LANES independent lanes (so the compiler may vectorise them without reordering any
 *       one sum), each row's result added in float64; a row whose float32 sum of squares
 *       is below UNDERFLOW_SQ is summed again in float64 (tiny elements, such as Adam's
 *       second moments, would underflow). ``old`` (or None) gives the change's sum of
 *       squares, the difference taken in float32. With ``values`` false only the change is
 *       measured. A NaN or Inf makes total or sumsq non-finite: the caller then counts them
 *       by its slow path, as with numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MULTI_ISA __attribute__((target_clones("avx2", "default")))
#else
#define MULTI_ISA
#endif

#define ROW 1024
#define LANES 16
#define UNDERFLOW_SQ 1e-28

typedef struct {
    double total, sumsq, lo, hi, delta;
} scan_result;

static inline __attribute__((always_inline)) float load(const uint8_t *restrict p, size_t i,
                                                        int kind) {
    float v;
    if (kind == 0) {
        memcpy(&v, p + 4 * i, 4);
    } else {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t b = (uint32_t)h << 16;
        memcpy(&v, &b, 4);
    }
    return v;
}

static double row_sq64(const uint8_t *p, const uint8_t *o, int kind, size_t start) {
    double acc = 0;
    for (size_t k = start; k < start + ROW; k++) {
        double v = o ? (double)(load(p, k, kind) - load(o, k, kind)) : (double)load(p, k, kind);
        acc += v * v;
    }
    return acc;
}

/* All whole rows. ``kind``, ``values`` and ``change`` are constants where this is inlined
   (the six entry points below), so each becomes one branch-free loop the compiler
   vectorises: LANES independent float32 lanes per sum, min and max. */
static inline __attribute__((always_inline)) void rows(int kind, int values, int change,
                                                       const uint8_t *restrict a,
                                                       const uint8_t *restrict b, size_t n,
                                                       scan_result *r) {
    float l[LANES], h[LANES];
    for (int j = 0; j < LANES; j++) {
        l[j] = INFINITY;
        h[j] = -INFINITY;
    }
    for (size_t i = 0; i + ROW <= n; i += ROW) {
        float s[LANES] = {0}, q[LANES] = {0}, d[LANES] = {0};
        for (size_t k = i; k < i + ROW; k += LANES) {
            for (int j = 0; j < LANES; j++) {
                float v = load(a, k + j, kind);
                if (values) {
                    s[j] += v;
                    q[j] += v * v;
                    l[j] = v < l[j] ? v : l[j];
                    h[j] = v > h[j] ? v : h[j];
                }
                if (change) {
                    float e = v - load(b, k + j, kind);
                    d[j] += e * e;
                }
            }
        }
        float ss = 0, qq = 0, dd = 0;
        for (int j = 0; j < LANES; j++) {
            ss += s[j];
            qq += q[j];
            dd += d[j];
        }
        if (values) {
            r->total += ss;
            r->sumsq += qq < UNDERFLOW_SQ ? row_sq64(a, NULL, kind, i) : qq;
        }
        if (change) r->delta += dd < UNDERFLOW_SQ ? row_sq64(a, b, kind, i) : dd;
    }
    for (int j = 0; j < LANES; j++) {
        if (l[j] < r->lo) r->lo = l[j];
        if (h[j] > r->hi) r->hi = h[j];
    }
}

#define ENTRY(name, kind, values, change)                                                 \
    MULTI_ISA static void name(const uint8_t *a, const uint8_t *b, size_t n,              \
                               scan_result *r) {                                          \
        rows(kind, values, change, a, b, n, r);                                           \
    }
ENTRY(rows_f32_v, 0, 1, 0)
ENTRY(rows_f32_c, 0, 0, 1)
ENTRY(rows_f32_vc, 0, 1, 1)
ENTRY(rows_bf16_v, 1, 1, 0)
ENTRY(rows_bf16_c, 1, 0, 1)
ENTRY(rows_bf16_vc, 1, 1, 1)

static scan_result do_scan(int kind, const uint8_t *a, const uint8_t *b, size_t n,
                           int values) {
    scan_result r = {0.0, 0.0, INFINITY, -INFINITY, 0.0};
    typedef void (*rows_fn)(const uint8_t *, const uint8_t *, size_t, scan_result *);
    static const rows_fn table[2][3] = {{rows_f32_v, rows_f32_c, rows_f32_vc},
                                        {rows_bf16_v, rows_bf16_c, rows_bf16_vc}};
    int which = values ? (b ? 2 : 0) : 1;
    if (values || b) table[kind][which](a, b, n, &r);
    for (size_t k = n - n % ROW; k < n; k++) { /* the tail: float64, as numpy's path */
        double v = load(a, k, kind);
        if (values) {
            r.total += v;
            r.sumsq += v * v;
            if (v < r.lo) r.lo = v;
            if (v > r.hi) r.hi = v;
        }
        if (b) {
            double e = v - (double)load(b, k, kind);
            r.delta += e * e;
        }
    }
    return r;
}

static PyObject *py_scan(PyObject *self, PyObject *args) {
    int kind, values;
    Py_buffer a, b = {0};
    PyObject *old;
    if (!PyArg_ParseTuple(args, "iy*Op", &kind, &a, &old, &values)) return NULL;
    size_t width = kind == 0 ? 4 : 2;
    if ((kind != 0 && kind != 1) || a.len % width) {
        PyBuffer_Release(&a);
        PyErr_SetString(PyExc_ValueError, "scan: unknown kind or a partial element");
        return NULL;
    }
    if (old != Py_None) {
        if (PyObject_GetBuffer(old, &b, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&a);
            return NULL;
        }
        if (b.len != a.len) {
            PyBuffer_Release(&a);
            PyBuffer_Release(&b);
            PyErr_SetString(PyExc_ValueError, "scan: new and old differ in length");
            return NULL;
        }
    }
    scan_result r;
    Py_BEGIN_ALLOW_THREADS
    r = do_scan(kind, (const uint8_t *)a.buf, old != Py_None ? (const uint8_t *)b.buf : NULL,
                (size_t)a.len / width, values);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&a);
    if (old != Py_None) PyBuffer_Release(&b);
    return Py_BuildValue("ddddd", r.total, r.sumsq, r.lo, r.hi, r.delta);
}

MULTI_ISA
static void split_any(const uint8_t *restrict src, size_t m, size_t width,
                      uint8_t *restrict out) {
    if (width == 2) {
        for (size_t k = 0; k < m; k++) {
            uint16_t v;
            memcpy(&v, src + 2 * k, 2);
            out[k] = (uint8_t)v;
            out[m + k] = (uint8_t)(v >> 8);
        }
    } else if (width == 4) {
        for (size_t k = 0; k < m; k++) {
            uint32_t v;
            memcpy(&v, src + 4 * k, 4);
            out[k] = (uint8_t)v;
            out[m + k] = (uint8_t)(v >> 8);
            out[2 * m + k] = (uint8_t)(v >> 16);
            out[3 * m + k] = (uint8_t)(v >> 24);
        }
    } else if (width == 8) {
        for (size_t k = 0; k < m; k++) {
            uint64_t v;
            memcpy(&v, src + 8 * k, 8);
            for (size_t i = 0; i < 8; i++) out[i * m + k] = (uint8_t)(v >> (8 * i));
        }
    } else {
        for (size_t k = 0; k < m; k++)
            for (size_t i = 0; i < width; i++) out[i * m + k] = src[k * width + i];
    }
}

static PyObject *py_split(PyObject *self, PyObject *args) {
    Py_buffer src, out;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "y*nw*", &src, &width, &out)) return NULL;
    if (width < 1 || src.len % width || out.len != src.len) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "split_planes: sizes do not match the width");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    split_any((const uint8_t *)src.buf, (size_t)(src.len / width), (size_t)width,
              (uint8_t *)out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

MULTI_ISA
static void merge_any(const uint8_t *const *p, size_t m, size_t width,
                      uint8_t *restrict out) {
    /* the planes in locals marked restrict: the stores to ``out`` cannot change them, so
       the loops vectorise */
    if (width == 2) {
        const uint8_t *restrict p0 = p[0], *restrict p1 = p[1];
        for (size_t k = 0; k < m; k++) {
            uint16_t v = (uint16_t)(p0[k] | (p1[k] << 8));
            memcpy(out + 2 * k, &v, 2);
        }
    } else if (width == 4) {
        const uint8_t *restrict p0 = p[0], *restrict p1 = p[1], *restrict p2 = p[2],
                                *restrict p3 = p[3];
        for (size_t k = 0; k < m; k++) {
            uint32_t v = (uint32_t)p0[k] | ((uint32_t)p1[k] << 8) | ((uint32_t)p2[k] << 16) |
                         ((uint32_t)p3[k] << 24);
            memcpy(out + 4 * k, &v, 4);
        }
    } else if (width == 8) {
        const uint8_t *restrict q[8];
        for (size_t i = 0; i < 8; i++) q[i] = p[i];
        for (size_t k = 0; k < m; k++) {
            uint64_t v = 0;
            for (size_t i = 0; i < 8; i++) v |= (uint64_t)q[i][k] << (8 * i);
            memcpy(out + 8 * k, &v, 8);
        }
    } else {
        for (size_t k = 0; k < m; k++)
            for (size_t i = 0; i < width; i++) out[k * width + i] = p[i][k];
    }
}

#define MAX_WIDTH 64

/* One lane of the delta codec: T is the unsigned lane type, B its bits. */
#define DELTA_LOOPS(T, B)                                                                   \
    MULTI_ISA static void delta_split_##B(const uint8_t *restrict c, const uint8_t *restrict b,       \
                                size_t m, uint8_t *restrict out) {                         \
        for (size_t k = 0; k < m; k++) {                                                   \
            T x, y;                                                                        \
            memcpy(&x, c + sizeof(T) * k, sizeof(T));                                      \
            memcpy(&y, b + sizeof(T) * k, sizeof(T));                                      \
            T d = (T)(x - y);                                                              \
            T z = (T)((T)(d << 1) ^ (T)(0 - (T)(d >> (B - 1))));                           \
            for (size_t i = 0; i < sizeof(T); i++) out[i * m + k] = (uint8_t)(z >> (8 * i)); \
        }                                                                                  \
    }                                                                                      \
    MULTI_ISA static void delta_merge_##B(const uint8_t *const *p, size_t m, uint8_t *restrict out) { \
        const uint8_t *restrict q[sizeof(T)];                                              \
        for (size_t i = 0; i < sizeof(T); i++) q[i] = p[i];                                \
        for (size_t k = 0; k < m; k++) {                                                   \
            T z = 0, y;                                                                    \
            for (size_t i = 0; i < sizeof(T); i++) z |= (T)((T)q[i][k] << (8 * i));        \
            T d = (T)((T)(z >> 1) ^ (T)(0 - (T)(z & 1)));                                  \
            memcpy(&y, out + sizeof(T) * k, sizeof(T));                                    \
            y = (T)(y + d);                                                                \
            memcpy(out + sizeof(T) * k, &y, sizeof(T));                                    \
        }                                                                                  \
    }

DELTA_LOOPS(uint16_t, 16)
DELTA_LOOPS(uint32_t, 32)
DELTA_LOOPS(uint64_t, 64)

/* merge_planes and delta_merge: the planes' buffers taken and checked once, then either
   interleaved into ``out`` or (delta) interleaved, un-zigzagged and added to it. */
static PyObject *merge_call(PyObject *args, int delta) {
    const char *name = delta ? "delta_merge" : "merge_planes";
    PyObject *seq;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "Ow*", &seq, &out)) return NULL;
    PyObject *fast = PySequence_Fast(seq, "planes must be a sequence");
    if (!fast) {
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t width = PySequence_Fast_GET_SIZE(fast);
    Py_buffer bufs[MAX_WIDTH];
    const uint8_t *ptrs[MAX_WIDTH];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    int ok = delta ? (width == 2 || width == 4 || width == 8) : (width >= 1 && width <= MAX_WIDTH);
    if (!ok || out.len % width) {
        PyErr_Format(PyExc_ValueError, "%s: unsupported width or size", name);
        goto done;
    }
    for (; got < width; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &bufs[got],
                               PyBUF_SIMPLE) < 0)
            goto done;
        if (bufs[got].len != out.len / width) {
            got++;
            PyErr_Format(PyExc_ValueError, "%s: a plane has the wrong size", name);
            goto done;
        }
        ptrs[got] = (const uint8_t *)bufs[got].buf;
    }
    {
        size_t m = (size_t)(out.len / width);
        uint8_t *op = (uint8_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        if (!delta) merge_any(ptrs, m, (size_t)width, op);
        else if (width == 2) delta_merge_16(ptrs, m, op);
        else if (width == 4) delta_merge_32(ptrs, m, op);
        else delta_merge_64(ptrs, m, op);
        Py_END_ALLOW_THREADS
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
    Py_DECREF(fast);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_merge(PyObject *self, PyObject *args) { return merge_call(args, 0); }

static PyObject *py_delta_merge(PyObject *self, PyObject *args) { return merge_call(args, 1); }

static PyObject *py_delta_split(PyObject *self, PyObject *args) {
    Py_buffer c, b, out;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "y*y*nw*", &c, &b, &width, &out)) return NULL;
    PyObject *result = NULL;
    if (width != 2 && width != 4 && width != 8) {
        PyErr_SetString(PyExc_ValueError, "delta_split: width must be 2, 4 or 8");
    } else if (c.len % width || b.len != c.len || out.len != c.len) {
        PyErr_SetString(PyExc_ValueError, "delta_split: sizes do not match");
    } else {
        size_t m = (size_t)(c.len / width);
        const uint8_t *cp = (const uint8_t *)c.buf, *bp = (const uint8_t *)b.buf;
        uint8_t *op = (uint8_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        if (width == 2) delta_split_16(cp, bp, m, op);
        else if (width == 4) delta_split_32(cp, bp, m, op);
        else delta_split_64(cp, bp, m, op);
        Py_END_ALLOW_THREADS
        Py_INCREF(Py_None);
        result = Py_None;
    }
    PyBuffer_Release(&c);
    PyBuffer_Release(&b);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS, "scan(kind, new, old, values) -> (total, sumsq, lo, hi, delta)"},
    {"split_planes", py_split, METH_VARARGS, "split_planes(src, width, out)"},
    {"merge_planes", py_merge, METH_VARARGS, "merge_planes(planes, out)"},
    {"delta_split", py_delta_split, METH_VARARGS, "delta_split(new, base, width, out)"},
    {"delta_merge", py_delta_merge, METH_VARARGS, "delta_merge(planes, base_then_out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
