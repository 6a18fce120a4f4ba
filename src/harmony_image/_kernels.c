/*
 * Hot loops of seed scoring, in C because they run once per catalog image per query.
 *
 * 1. Cross-checked Hamming matching of one query's ORB descriptors against many catalog images.
 *
 * For each catalog image j this counts what OpenCV's
 *   cv::BFMatcher(NORM_HAMMING, crossCheck=true).match(query, catalog_j)
 * returns: pairs (i, c) where c is the first nearest catalog descriptor of query descriptor i
 * and i is the first nearest query descriptor of c (cv::batchDistance's crosscheck rule).
 *
 * Why C: the seed scores every catalog image, ~150-250 thousand 256-bit distances per image.
 * OpenCV's matcher spends ~7 ns per distance and numpy ~5 ns; this loop, vectorised by the
 * compiler over catalog descriptors stored as four planes of 64-bit words, is well under 1 ns.
 *
 * 2. SSIM of one 256x256 query against many 256x256 images, equal to scikit-image's
 * structural_similarity defaults (7x7 uniform window, sample covariance, K1=0.01, K2=0.03,
 * data_range=255, mean over the image less a 3-pixel border). Window sums and the numerators
 * n*Sxy - Sx*Sy and n*Sxx - Sx^2 are exact int32; only the final ratio is float32.
 *
 * The GIL is released, so threads scale across cores.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

/* distances from one query descriptor q[0..3] to nc catalog descriptors stored as planes */
static void row_distances_scalar(const uint64_t *q, const uint64_t *planes, int64_t nc, uint16_t *out)
{
    const uint64_t *p0 = planes, *p1 = planes + nc, *p2 = planes + 2 * nc, *p3 = planes + 3 * nc;
    const uint64_t q0 = q[0], q1 = q[1], q2 = q[2], q3 = q[3];
    for (int64_t k = 0; k < nc; k++) {
        out[k] = (uint16_t)(__builtin_popcountll(p0[k] ^ q0) + __builtin_popcountll(p1[k] ^ q1) +
                            __builtin_popcountll(p2[k] ^ q2) + __builtin_popcountll(p3[k] ^ q3));
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX512_PATH 1
__attribute__((target("popcnt,avx512f,avx512vpopcntdq")))
static void row_distances_avx512(const uint64_t *q, const uint64_t *planes, int64_t nc, uint16_t *out)
{
    const uint64_t *p0 = planes, *p1 = planes + nc, *p2 = planes + 2 * nc, *p3 = planes + 3 * nc;
    const __m512i q0 = _mm512_set1_epi64((long long)q[0]), q1 = _mm512_set1_epi64((long long)q[1]);
    const __m512i q2 = _mm512_set1_epi64((long long)q[2]), q3 = _mm512_set1_epi64((long long)q[3]);
    int64_t k = 0;
    for (; k + 8 <= nc; k += 8) {
        __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p0 + k), q0));
        d = _mm512_add_epi64(d, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p1 + k), q1)));
        d = _mm512_add_epi64(d, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p2 + k), q2)));
        d = _mm512_add_epi64(d, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p3 + k), q3)));
        _mm_storeu_si128((__m128i *)(out + k), _mm512_cvtepi64_epi16(d));
    }
    for (; k < nc; k++) {
        out[k] = (uint16_t)(__builtin_popcountll(p0[k] ^ q[0]) + __builtin_popcountll(p1[k] ^ q[1]) +
                            __builtin_popcountll(p2[k] ^ q[2]) + __builtin_popcountll(p3[k] ^ q[3]));
    }
}
#endif

static void (*row_distances)(const uint64_t *, const uint64_t *, int64_t, uint16_t *) = row_distances_scalar;

MULTIVERSION
static void update_columns(const uint16_t *dist, int64_t nc, int32_t i, uint16_t *colmin, int32_t *colarg)
{
    for (int64_t k = 0; k < nc; k++) {
        int better = dist[k] < colmin[k];
        colmin[k] = better ? dist[k] : colmin[k];
        colarg[k] = better ? i : colarg[k];
    }
}

MULTIVERSION
static uint16_t row_min(const uint16_t *dist, int64_t nc)
{
    uint16_t best = 0xFFFF;
    for (int64_t k = 0; k < nc; k++)
        best = dist[k] < best ? dist[k] : best;
    return best;
}

static int32_t count_one(const uint64_t *query, int64_t nq, const uint64_t *planes, int64_t nc,
                         uint16_t *dist, uint16_t *colmin, int32_t *colarg, int32_t *rowarg)
{
    if (nq == 0 || nc == 0)
        return 0;
    for (int64_t k = 0; k < nc; k++) {
        colmin[k] = 0xFFFF;
        colarg[k] = -1;
    }
    for (int64_t i = 0; i < nq; i++) {
        row_distances(query + 4 * i, planes, nc, dist);
        update_columns(dist, nc, (int32_t)i, colmin, colarg);
        uint16_t best = row_min(dist, nc);
        int64_t k = 0;
        while (dist[k] != best)
            k++;
        rowarg[i] = (int32_t)k;
    }
    int32_t count = 0;
    for (int64_t i = 0; i < nq; i++)
        count += colarg[rowarg[i]] == i;
    return count;
}

static PyObject *cross_check_counts(PyObject *self, PyObject *args)
{
    Py_buffer query, planes, offsets, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &query, &planes, &offsets, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t nq = query.len / 32;
    int64_t n = offsets.len / (Py_ssize_t)sizeof(int64_t) - 1;
    const int64_t *off = (const int64_t *)offsets.buf;
    if (query.len % 32 != 0 || planes.len % 32 != 0 || n < 0 || out.len < n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "cross_check_counts: buffer sizes do not match");
        goto done;
    }
    int64_t maxc = 0, total = planes.len / 32;
    for (int64_t j = 0; j < n; j++) {
        int64_t nc = off[j + 1] - off[j];
        if (nc < 0 || off[j] < 0 || off[j + 1] > total) {
            PyErr_SetString(PyExc_ValueError, "cross_check_counts: offsets out of range");
            goto done;
        }
        if (nc > maxc)
            maxc = nc;
    }
    uint16_t *dist = malloc(sizeof(uint16_t) * (maxc + 1));
    uint16_t *colmin = malloc(sizeof(uint16_t) * (maxc + 1));
    int32_t *colarg = malloc(sizeof(int32_t) * (maxc + 1));
    int32_t *rowarg = malloc(sizeof(int32_t) * (nq + 1));
    if (!dist || !colmin || !colarg || !rowarg) {
        free(dist); free(colmin); free(colarg); free(rowarg);
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *q = (const uint64_t *)query.buf;
    const uint64_t *p = (const uint64_t *)planes.buf;
    int32_t *counts = (int32_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < n; j++) {
        int64_t nc = off[j + 1] - off[j];
        counts[j] = count_one(q, nq, p + 4 * off[j], nc, dist, colmin, colarg, rowarg);
    }
    Py_END_ALLOW_THREADS
    free(dist); free(colmin); free(colarg); free(rowarg);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&query);
    PyBuffer_Release(&planes);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&out);
    return result;
}


/* ---------------------------------------------------------------- SSIM */
#define SIDE 256
#define WIN 7
#define NWIN (WIN * WIN)
#define VALID (SIDE - WIN + 1)
#define DATA_RANGE 255.0
/* constant scale factors cancel in both SSIM ratios (see ssim.py): */
#define LUM_C ((float)(NWIN * NWIN * (0.01 * DATA_RANGE) * (0.01 * DATA_RANGE)))
#define CON_C ((float)(NWIN * (NWIN - 1) * (0.03 * DATA_RANGE) * (0.03 * DATA_RANGE)))

typedef struct {
    int32_t sum[VALID * VALID];  /* Sy */
    float lum[VALID * VALID];    /* Sy^2 + n^2 C1 */
    float var[VALID * VALID];    /* n Syy - Sy^2 + n(n-1) C2 */
    const uint8_t *pixels;
} query_stats;

/* column sums over WIN rows starting at row r, for x, x*x and x*y */
MULTIVERSION
static void column_sums(const uint8_t *x, const uint8_t *y, int r, int32_t *cx, int32_t *cxx, int32_t *cxy)
{
    for (int c = 0; c < SIDE; c++) {
        cx[c] = 0;
        cxx[c] = 0;
        cxy[c] = 0;
    }
    for (int k = 0; k < WIN; k++) {
        const uint8_t *xr = x + (r + k) * SIDE, *yr = y + (r + k) * SIDE;
        for (int c = 0; c < SIDE; c++) {
            int32_t v = xr[c];
            cx[c] += v;
            cxx[c] += v * v;
            cxy[c] += v * (int32_t)yr[c];
        }
    }
}

/* slide the column sums down one row: add row r+WIN, drop row r */
MULTIVERSION
static void slide_columns(const uint8_t *x, const uint8_t *y, int r, int32_t *cx, int32_t *cxx, int32_t *cxy)
{
    const uint8_t *xo = x + r * SIDE, *yo = y + r * SIDE;
    const uint8_t *xn = x + (r + WIN) * SIDE, *yn = y + (r + WIN) * SIDE;
    for (int c = 0; c < SIDE; c++) {
        int32_t a = xn[c], b = xo[c];
        cx[c] += a - b;
        cxx[c] += a * a - b * b;
        cxy[c] += a * (int32_t)yn[c] - b * (int32_t)yo[c];
    }
}

MULTIVERSION
static void row_window_sums(const int32_t *col, int32_t *out)
{
    for (int c = 0; c < VALID; c++)
        out[c] = col[c] + col[c + 1] + col[c + 2] + col[c + 3] + col[c + 4] + col[c + 5] + col[c + 6];
}

MULTIVERSION
static void ssim_row(const int32_t *sx, const int32_t *sxx, const int32_t *sxy, const int32_t *sy,
                     const float *ly, const float *vy, float *out)
{
    for (int c = 0; c < VALID; c++) {
        int32_t ss = sx[c] * sy[c];
        int32_t cov = NWIN * sxy[c] - ss;
        int32_t var = NWIN * sxx[c] - sx[c] * sx[c];
        float fx = (float)sx[c];
        float num = (2.0f * (float)ss + LUM_C) * (2.0f * (float)cov + CON_C);
        float den = (fx * fx + ly[c]) * ((float)var + vy[c]);
        out[c] = num / den;
    }
}

/* summed in double, in a fixed order, so a score never depends on the CPU's vector width */
static double sum_row(const float *v)
{
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    int c = 0;
    for (; c + 4 <= VALID; c += 4) {
        a0 += v[c];
        a1 += v[c + 1];
        a2 += v[c + 2];
        a3 += v[c + 3];
    }
    for (; c < VALID; c++)
        a0 += v[c];
    return (a0 + a1) + (a2 + a3);
}

static void prepare_query(const uint8_t *y, query_stats *q)
{
    int32_t cx[SIDE], cxx[SIDE], cxy[SIDE], sx[VALID], sxx[VALID];
    q->pixels = y;
    for (int r = 0; r < VALID; r++) {
        if (r == 0)
            column_sums(y, y, 0, cx, cxx, cxy);
        else
            slide_columns(y, y, r - 1, cx, cxx, cxy);
        row_window_sums(cx, sx);
        row_window_sums(cxx, sxx);
        for (int c = 0; c < VALID; c++) {
            int i = r * VALID + c;
            q->sum[i] = sx[c];
            q->lum[i] = (float)sx[c] * (float)sx[c] + LUM_C;
            q->var[i] = (float)(NWIN * sxx[c] - sx[c] * sx[c]) + CON_C;
        }
    }
}

static double ssim_one(const query_stats *q, const uint8_t *x)
{
    int32_t cx[SIDE], cxx[SIDE], cxy[SIDE], sx[VALID], sxx[VALID], sxy[VALID];
    float ratio[VALID];
    double total = 0.0;
    for (int r = 0; r < VALID; r++) {
        if (r == 0)
            column_sums(x, q->pixels, 0, cx, cxx, cxy);
        else
            slide_columns(x, q->pixels, r - 1, cx, cxx, cxy);
        row_window_sums(cx, sx);
        row_window_sums(cxx, sxx);
        row_window_sums(cxy, sxy);
        ssim_row(sx, sxx, sxy, q->sum + r * VALID, q->lum + r * VALID, q->var + r * VALID, ratio);
        total += sum_row(ratio);
    }
    return total / ((double)VALID * VALID);
}

static PyObject *ssim_scores(PyObject *self, PyObject *args)
{
    Py_buffer query, images, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &query, &images, &out))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t plane = SIDE * SIDE;
    Py_ssize_t n = images.len / plane;
    if (query.len != plane || images.len % plane != 0 || out.len < n * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "ssim_scores: expects 256x256 uint8 images and a float64 output of n");
        goto done;
    }
    query_stats *q = malloc(sizeof(query_stats));
    if (!q) {
        PyErr_NoMemory();
        goto done;
    }
    double *scores = (double *)out.buf;
    const uint8_t *x = (const uint8_t *)images.buf;
    Py_BEGIN_ALLOW_THREADS
    prepare_query((const uint8_t *)query.buf, q);
    for (Py_ssize_t j = 0; j < n; j++)
        scores[j] = ssim_one(q, x + j * plane);
    Py_END_ALLOW_THREADS
    free(q);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&query);
    PyBuffer_Release(&images);
    PyBuffer_Release(&out);
    return result;
}

/* ---------------------------------------------------------------- default scoring helpers */

/* For each image j: how many query descriptors have a catalog descriptor within `threshold`. */
static PyObject *count_close(PyObject *self, PyObject *args)
{
    Py_buffer query, planes, offsets, out;
    int threshold;
    if (!PyArg_ParseTuple(args, "y*y*y*iw*", &query, &planes, &offsets, &threshold, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t nq = query.len / 32, n = offsets.len / (Py_ssize_t)sizeof(int64_t) - 1, total = planes.len / 32;
    const int64_t *off = (const int64_t *)offsets.buf;
    if (query.len % 32 != 0 || n < 0 || out.len < n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "count_close: buffer sizes do not match");
        goto done;
    }
    int64_t maxc = 0;
    for (int64_t j = 0; j < n; j++) {
        if (off[j] < 0 || off[j + 1] < off[j] || off[j + 1] > total) {
            PyErr_SetString(PyExc_ValueError, "count_close: offsets out of range");
            goto done;
        }
        if (off[j + 1] - off[j] > maxc)
            maxc = off[j + 1] - off[j];
    }
    uint16_t *dist = malloc(sizeof(uint16_t) * (maxc + 1));
    if (!dist) {
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *q = (const uint64_t *)query.buf, *p = (const uint64_t *)planes.buf;
    int32_t *counts = (int32_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < n; j++) {
        int64_t nc = off[j + 1] - off[j];
        int32_t count = 0;
        if (nc > 0) {
            for (int64_t i = 0; i < nq; i++) {
                row_distances(q + 4 * i, p + 4 * off[j], nc, dist);
                count += row_min(dist, nc) <= threshold;
            }
        }
        counts[j] = count;
    }
    Py_END_ALLOW_THREADS
    free(dist);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&query);
    PyBuffer_Release(&planes);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&out);
    return result;
}

/* For one image: each query descriptor's nearest catalog descriptor (first index) and the two
 * smallest distances, for Lowe's ratio test. */
static PyObject *nearest_two(PyObject *self, PyObject *args)
{
    Py_buffer query, planes, out_idx, out_d1, out_d2;
    if (!PyArg_ParseTuple(args, "y*y*w*w*w*", &query, &planes, &out_idx, &out_d1, &out_d2))
        return NULL;
    PyObject *result = NULL;
    int64_t nq = query.len / 32, nc = planes.len / 32;
    if (query.len % 32 != 0 || planes.len % 32 != 0 || out_idx.len < nq * 4 || out_d1.len < nq * 2 || out_d2.len < nq * 2) {
        PyErr_SetString(PyExc_ValueError, "nearest_two: buffer sizes do not match");
        goto done;
    }
    uint16_t *dist = malloc(sizeof(uint16_t) * (nc + 1));
    if (!dist) {
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *q = (const uint64_t *)query.buf, *p = (const uint64_t *)planes.buf;
    int32_t *idx = (int32_t *)out_idx.buf;
    uint16_t *d1 = (uint16_t *)out_d1.buf, *d2 = (uint16_t *)out_d2.buf;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < nq; i++) {
        uint16_t best = 0xFFFF, second = 0xFFFF;
        int32_t arg = -1;
        if (nc > 0) {
            row_distances(q + 4 * i, p, nc, dist);
            for (int64_t k = 0; k < nc; k++) {
                uint16_t d = dist[k];
                if (d < best) {
                    second = best;
                    best = d;
                    arg = (int32_t)k;
                } else if (d < second) {
                    second = d;
                }
            }
        }
        idx[i] = arg;
        d1[i] = best;
        d2[i] = second;
    }
    Py_END_ALLOW_THREADS
    free(dist);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&query);
    PyBuffer_Release(&planes);
    PyBuffer_Release(&out_idx);
    PyBuffer_Release(&out_d1);
    PyBuffer_Release(&out_d2);
    return result;
}

static PyMethodDef methods[] = {
    {"cross_check_counts", cross_check_counts, METH_VARARGS,
     "cross_check_counts(query, planes, offsets, out) -> None\n\n"
     "query: nq x 32 bytes; planes: per image j, rows offsets[j]..offsets[j+1] stored as four\n"
     "planes of 64-bit words; offsets: int64[n+1]; out: writable int32[n] of match counts."},
    {"ssim_scores", ssim_scores, METH_VARARGS,
     "ssim_scores(query, images, out) -> None\n\n"
     "query: 256x256 uint8; images: n x 256 x 256 uint8; out: writable float64[n]."},
    {"count_close", count_close, METH_VARARGS,
     "count_close(query, planes, offsets, threshold, out) -> None\n\n"
     "out[j] = number of query descriptors with a descriptor of image j within threshold bits."},
    {"nearest_two", nearest_two, METH_VARARGS,
     "nearest_two(query, planes, out_idx, out_d1, out_d2) -> None\n\n"
     "For one image's planes: nearest index (int32) and two smallest distances (uint16) per query row."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void)
{
#ifdef HAVE_AVX512_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq"))
        row_distances = row_distances_avx512;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "kernel", row_distances == row_distances_scalar ? "scalar" : "avx512") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
