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
 * How: several query rows at a time sweep the catalog descriptors (stored as four planes of
 * 64-bit words), a vector of catalog descriptors per step.  Every distance d of query row i to
 * catalog descriptor k becomes two keys, (d << 16) | k for the row and (d << 16) | i for the
 * column; the smallest key is then the smallest distance with the FIRST index on ties, which
 * is OpenCV's rule, so row and column minima are plain unsigned vector minimums kept in
 * registers (rows) or in one array per image (columns).  Images with more than 65535
 * descriptors on either side use 64-bit keys in the scalar code.
 *
 * 2. SSIM of one 256x256 query against many 256x256 images, equal to scikit-image's
 * structural_similarity defaults (7x7 uniform window, sample covariance, K1=0.01, K2=0.03,
 * data_range=255, mean over the image less a 3-pixel border). Window sums and the numerators
 * n*Sxy - Sx*Sy and n*Sxx - Sx^2 are exact int32; only the final ratio is float32, computed
 * with the same IEEE operations at every level (no multiply feeds an add, so FMA contraction
 * cannot change a result), and summed in double in a fixed order.
 *
 * Runtime dispatch: one build holds every level for its architecture; the fastest level the
 * CPU supports is chosen at import, or the one named by the environment variable
 * HARMONY_KERNEL (unset, "" or "auto": automatic).  Levels, fastest first:
 *   x86_64:  avx512 (AVX-512 F/BW/VL + VPOPCNTDQ + VNNI), avx2 (AVX2 + POPCNT, vpshufb nibble table),
 *            popcnt (POPCNT, scalar), portable (baseline x86-64, SWAR popcount)
 *   aarch64: neon (baseline Advanced SIMD, vcnt), portable
 *   other:   portable
 * HARMONY_KERNEL naming an unknown level or one this CPU lacks raises RuntimeError at import
 * (not ImportError, so callers that fall back to numpy on ImportError do not silently hide
 * it).  The module exposes `kernel` (the level in use), `levels` (the levels this CPU
 * supports, fastest first) and `use(level)` (switch in-process: the tests run every level).
 * Every level returns bit-identical results.
 *
 * Each level is a set of functions compiled with __attribute__((target(...))) from shared
 * always_inline bodies, so every level gets its own vectorised copy; a table of function
 * pointers is chosen once.  No ifuncs or target_clones (they need glibc ifunc support and
 * cannot be forced per test).
 *
 * Build with -std=c11 (or any flags); -fno-wrapv lets GCC vectorise the int32 SSIM loops.
 * The GIL is released, so threads scale across cores.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define HK_X86 1
#include <immintrin.h>
#define T_POPCNT __attribute__((target("popcnt")))
#define T_AVX2 __attribute__((target("popcnt,avx2")))
#define T_AVX512 __attribute__((target("popcnt,avx2,avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512vnni")))
#elif defined(__GNUC__) && defined(__aarch64__)
#define HK_ARM 1
#include <arm_neon.h>
#endif

#if defined(__GNUC__)
#define HK_INLINE static inline __attribute__((always_inline))
#else
#define HK_INLINE static inline
#endif

/* query rows per sweep of the catalog, per level (measured: docs/BENCHMARKS.md, tools/kernels) */
enum { R_SCALAR = 4, R_AVX2 = 1, R_AVX512 = 4, R_NEON = 2 };

#define MIN_(a, b) ((a) < (b) ? (a) : (b))
#define MAX_(a, b) ((a) < (b) ? (b) : (a))

/* ---------------------------------------------------------------- Hamming: shared parts */

/* what a pass computes besides each query row's nearest key (index and distance): */
enum {
    PASS_TWO = 1,                      /* each row's second smallest distance (Lowe's ratio test) */
    PASS_CROSS = 2,                    /* each column's nearest row, and the cross-check count */
    PASS_CROSS_TWO = PASS_CROSS | PASS_TWO,
};
#define KEY_LIMIT 65535 /* 32-bit keys hold indexes < 65536 */
#define PAD 16          /* widest vector: 16 catalog descriptors */

typedef struct {
    uint64_t *cat;      /* one image's planes re-laid for the level: 8 * ncp words */
    void *colkey;       /* ncp column keys (uint32 or uint64) */
    int32_t *arg;       /* per query row: first nearest catalog index */
    uint16_t *d1, *d2;  /* per query row: smallest and second smallest distance */
} work_t;

static void work_free(work_t *w)
{
    free(w->cat);
    free(w->colkey);
    free(w->arg);
    free(w->d1);
    free(w->d2);
}

/* with the GIL: 0 and a MemoryError when any part cannot be had (nothing left to free) */
static int work_alloc(work_t *w, int64_t nq, int64_t maxc)
{
    int64_t ncp = (maxc + PAD - 1) / PAD * PAD + PAD;
    w->cat = NULL;
    w->colkey = NULL;
    w->arg = NULL;
    w->d1 = w->d2 = NULL;
    if (posix_memalign((void **)&w->cat, 64, (size_t)(8 * ncp) * sizeof(uint64_t)) != 0)
        w->cat = NULL;
    if (posix_memalign(&w->colkey, 64, (size_t)ncp * sizeof(uint64_t)) != 0)
        w->colkey = NULL;
    w->arg = malloc(sizeof(int32_t) * (size_t)(nq + PAD));
    w->d1 = malloc(sizeof(uint16_t) * (size_t)(nq + PAD));
    w->d2 = malloc(sizeof(uint16_t) * (size_t)(nq + PAD));
    if (w->cat && w->colkey && w->arg && w->d1 && w->d2)
        return 1;
    work_free(w);
    PyErr_NoMemory();
    return 0;
}

/* copy one image's 4 planes (stride nc) to w->cat (stride ncp), zero padded */
static void copy_planes(const uint64_t *p, int64_t nc, int64_t ncp, uint64_t *dst)
{
    for (int w = 0; w < 4; w++) {
        memcpy(dst + w * ncp, p + w * nc, (size_t)nc * sizeof(uint64_t));
        memset(dst + w * ncp + nc, 0, (size_t)(ncp - nc) * sizeof(uint64_t));
    }
}

/* results of one query row from its smallest and second smallest 32-bit keys */
HK_INLINE void finish_row32(work_t *w, int64_t i, uint32_t best, uint32_t second)
{
    w->arg[i] = (int32_t)(best & 0xFFFF);
    w->d1[i] = (uint16_t)(best >> 16);
    w->d2[i] = (uint16_t)(second >> 16);
}

/* smallest and second smallest of the lanes of a per-lane (min, second-min) pair of key vectors */
HK_INLINE void reduce_two(const uint32_t *mins, const uint32_t *secs, int n, uint32_t *best, uint32_t *second)
{
    uint32_t b = 0xFFFFFFFFu, s = 0xFFFFFFFFu;
    int at = 0;
    for (int l = 0; l < n; l++)
        if (mins[l] < b) {
            b = mins[l];
            at = l;
        }
    for (int l = 0; l < n; l++) {
        s = MIN_(s, secs[l]);
        if (l != at)
            s = MIN_(s, mins[l]);
    }
    *best = b;
    *second = s;
}

/* ---------------------------------------------------------------- scalar levels (64-bit keys) */

#define M1 0x5555555555555555ULL
#define M2 0x3333333333333333ULL
#define M4 0x0F0F0F0F0F0F0F0FULL
#define M8 0x00FF00FF00FF00FFULL

HK_INLINE uint64_t swar_nibbles(uint64_t x) /* bit counts per nibble, each <= 4 */
{
    x = x - ((x >> 1) & M1);
    return (x & M2) + ((x >> 2) & M2);
}

/* popcount(a) + popcount(b) + popcount(c) + popcount(d) without a popcount instruction */
HK_INLINE uint32_t dist4_swar(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    uint64_t ab = swar_nibbles(a) + swar_nibbles(b); /* nibbles <= 8 */
    uint64_t cd = swar_nibbles(c) + swar_nibbles(d);
    ab = (ab & M4) + ((ab >> 4) & M4); /* bytes <= 16 */
    cd = (cd & M4) + ((cd >> 4) & M4);
    uint64_t s = ab + cd;              /* bytes <= 32 */
    s = (s & M8) + ((s >> 8) & M8);    /* 16-bit lanes <= 64 */
    return (uint32_t)((s * 0x0001000100010001ULL) >> 48);
}

HK_INLINE uint32_t dist4(uint64_t a, uint64_t b, uint64_t c, uint64_t d, const int hw)
{
    if (hw)
        return (uint32_t)(__builtin_popcountll(a) + __builtin_popcountll(b) + __builtin_popcountll(c) +
                          __builtin_popcountll(d));
    return dist4_swar(a, b, c, d);
}

HK_INLINE void finish_row64(work_t *w, int64_t i, uint64_t best, uint64_t second)
{
    w->arg[i] = (int32_t)(uint32_t)best;
    w->d1[i] = (uint16_t)(best >> 32);
    w->d2[i] = second == UINT64_MAX ? 0xFFFF : (uint16_t)(second >> 32);
}

/* keys: (distance << 32) | index; any nq, nc */
HK_INLINE int32_t scalar_body(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w,
                              const int mode, const int hw)
{
    enum { R = R_SCALAR };
    const uint64_t *p0 = p, *p1 = p + nc, *p2 = p + 2 * nc, *p3 = p + 3 * nc;
    uint64_t *colkey = (uint64_t *)w->colkey;
    if (mode & PASS_CROSS)
        for (int64_t k = 0; k < nc; k++)
            colkey[k] = UINT64_MAX;
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        uint64_t qw[R][4], ci[R], rmin[R], rsec[R];
        for (int r = 0; r < R; r++) {
            int64_t ii = i0 + r < nq ? i0 + r : nq - 1; /* a repeated last row changes no minimum */
            for (int k = 0; k < 4; k++)
                qw[r][k] = q[4 * ii + k];
            ci[r] = (uint64_t)ii;
            rmin[r] = rsec[r] = UINT64_MAX;
        }
        for (int64_t k = 0; k < nc; k++) {
            const uint64_t c0 = p0[k], c1 = p1[k], c2 = p2[k], c3 = p3[k];
            uint64_t cacc = UINT64_MAX;
            for (int r = 0; r < R; r++) {
                uint64_t ds = (uint64_t)dist4(c0 ^ qw[r][0], c1 ^ qw[r][1], c2 ^ qw[r][2], c3 ^ qw[r][3], hw) << 32;
                uint64_t key = ds | (uint64_t)k;
                if (mode & PASS_TWO)
                    rsec[r] = MIN_(rsec[r], MAX_(rmin[r], key));
                rmin[r] = MIN_(rmin[r], key);
                if (mode & PASS_CROSS)
                    cacc = MIN_(cacc, ds | ci[r]);
            }
            if (mode & PASS_CROSS)
                colkey[k] = MIN_(colkey[k], cacc);
        }
        for (int r = 0; r < R && i0 + r < nq; r++)
            finish_row64(w, i0 + r, rmin[r], rsec[r]);
    }
    int32_t count = 0;
    if (mode & PASS_CROSS)
        for (int64_t i = 0; i < nq; i++)
            count += (int64_t)(uint32_t)colkey[w->arg[i]] == i;
    return count;
}

/* one entry point per level: mode is a run-time value, each case a specialised copy */
#define SCALAR_PASS(NAME, TARGET, HW)                                                                    \
    TARGET static int32_t NAME(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, \
                               int mode)                                                                \
    {                                                                                                   \
        switch (mode) {                                                                                 \
        case PASS_TWO: return scalar_body(q, nq, p, nc, w, PASS_TWO, HW);                               \
        case PASS_CROSS: return scalar_body(q, nq, p, nc, w, PASS_CROSS, HW);                           \
        default: return scalar_body(q, nq, p, nc, w, PASS_CROSS_TWO, HW);                               \
        }                                                                                               \
    }

SCALAR_PASS(pass_portable, , 0)
#if defined(HK_X86)
SCALAR_PASS(pass_popcnt, T_POPCNT, 1)
#define pass_wide pass_popcnt /* every AVX2/AVX-512 CPU has POPCNT */
#elif defined(HK_ARM)
SCALAR_PASS(pass_scalar_cnt, , 1) /* __builtin_popcountll is NEON cnt on AArch64 */
#define pass_wide pass_scalar_cnt
#endif

/* ---------------------------------------------------------------- votes: rows with a close column */

/* How many query rows have a catalog column within `threshold` bits (threshold >= 0).  A pair's
 * first three words bound its distance from below, so the fourth word is counted only for pairs
 * they leave within the threshold.  Unrelated ORB descriptors differ in ~95 of their first 192
 * bits (sd ~12), so at the vote threshold (50) about 1 pair in 1,500 needs it (measured on real
 * photos, docs/BENCHMARKS.md).  Exact: the same count as the row minima of the full distances. */
HK_INLINE int32_t close_scalar_body(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, uint32_t threshold,
                                    const int hw)
{
    const uint64_t *p0 = p, *p1 = p + nc, *p2 = p + 2 * nc, *p3 = p + 3 * nc;
    int32_t count = 0;
    for (int64_t i = 0; i < nq; i++) {
        const uint64_t q0 = q[4 * i], q1 = q[4 * i + 1], q2 = q[4 * i + 2], q3 = q[4 * i + 3];
        for (int64_t k = 0; k < nc; k++) {
            const uint32_t d = dist4(p0[k] ^ q0, p1[k] ^ q1, p2[k] ^ q2, 0, hw);
            if (d <= threshold && d + dist4(p3[k] ^ q3, 0, 0, 0, hw) <= threshold) {
                count++;
                break;
            }
        }
    }
    return count;
}

#define SCALAR_CLOSE(NAME, TARGET, HW)                                                                  \
    TARGET static int32_t NAME(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, \
                               uint32_t threshold)                                                      \
    {                                                                                                   \
        (void)w;                                                                                        \
        return close_scalar_body(q, nq, p, nc, threshold, HW);                                          \
    }

SCALAR_CLOSE(close_portable, , 0)
#if defined(HK_X86)
SCALAR_CLOSE(close_popcnt, T_POPCNT, 1)
#endif

/* ---------------------------------------------------------------- x86: AVX2 */
#if defined(HK_X86)

#define T_AVX2_INLINE static inline __attribute__((always_inline, target("popcnt,avx2")))

#define LD256(ptr) _mm256_load_si256((const __m256i *)(ptr))

/* per-byte sums (<= 32) of the bit counts of catalog columns c..c+3 xor one query row, by a
 * 16-entry table (vpshufb) per nibble.  The catalog's nibbles are split once per image (w->cat
 * holds 4 low-nibble planes, then 4 high-nibble planes) and so are the query row's (qa: low,
 * qb: high), so the loop is xor + shuffle + add only.  Measured against splitting the nibbles
 * in the loop (3-10% slower) and a Harley-Seal carry-save adder over the 4 words (10-30%
 * slower: with only 4 words it saves 2 of 8 shuffles but adds 9 logic operations). */
T_AVX2_INLINE __m256i bytes4_avx2(const uint64_t *cat, int64_t ncp, int64_t c, const __m256i *qa, const __m256i *qb,
                                  __m256i lut)
{
    const uint64_t *lo = cat + c, *hi = cat + 4 * ncp + c;
    __m256i s0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(lo), qa[0])),
                                 _mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(hi), qb[0])));
    __m256i s1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(lo + ncp), qa[1])),
                                 _mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(hi + ncp), qb[1])));
    __m256i s2 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(lo + 2 * ncp), qa[2])),
                                 _mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(hi + 2 * ncp), qb[2])));
    __m256i s3 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(lo + 3 * ncp), qa[3])),
                                 _mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(hi + 3 * ncp), qb[3])));
    return _mm256_add_epi8(_mm256_add_epi8(s0, s1), _mm256_add_epi8(s2, s3));
}

/* chunks of 8 catalog columns as two groups of 4 (one 64-bit lane each); the 32-bit key lanes
 * hold columns 0,4,1,5,2,6,3,7 of the chunk */
#define AVX2_POS(k) (((k) & ~(int64_t)7) | (((k) & 3) << 1) | (((k) >> 2) & 1))

T_AVX2_INLINE int32_t avx2_body(const uint64_t *q, int64_t nq, int64_t nc, int64_t ncp, work_t *w, const int mode)
{
    enum { R = R_AVX2 };
    const uint64_t *cat = w->cat;
    uint32_t *colkey = (uint32_t *)w->colkey;
    const __m256i ones = _mm256_set1_epi32(-1), zero = _mm256_setzero_si256();
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                         3, 2, 3, 3, 4);
    const __m256i idx0 = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), eight = _mm256_set1_epi32(8);
    const __m256i last = _mm256_set1_epi32((int)(nc - 1));
    if (mode & PASS_CROSS)
        for (int64_t k = 0; k < ncp; k += 8)
            _mm256_store_si256((__m256i *)(colkey + k), ones);
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        __m256i qa[R][4], qb[R][4], ci[R], rmin[R], rsec[R];
        for (int r = 0; r < R; r++) {
            int64_t ii = i0 + r < nq ? i0 + r : nq - 1; /* a repeated last row changes no minimum */
            for (int k = 0; k < 4; k++) {
                uint64_t x = q[4 * ii + k];
                qa[r][k] = _mm256_set1_epi64x((long long)(x & M4));
                qb[r][k] = _mm256_set1_epi64x((long long)((x >> 4) & M4));
            }
            ci[r] = _mm256_set1_epi32((int)ii);
            rmin[r] = rsec[r] = ones;
        }
        __m256i kidx = idx0;
        for (int64_t c = 0; c < ncp; c += 8) {
            const __m256i kv = _mm256_or_si256(kidx, _mm256_cmpgt_epi32(kidx, last)); /* padding: key ~0 */
            __m256i cacc = ones;
            for (int r = 0; r < R; r++) {
                __m256i sa = _mm256_sad_epu8(bytes4_avx2(cat, ncp, c, qa[r], qb[r], lut), zero);
                __m256i sb = _mm256_sad_epu8(bytes4_avx2(cat, ncp, c + 4, qa[r], qb[r], lut), zero);
                __m256i ds = _mm256_or_si256(_mm256_slli_epi64(sa, 16), _mm256_slli_epi64(sb, 48));
                __m256i key = _mm256_or_si256(ds, kv);
                if (mode & PASS_TWO)
                    rsec[r] = _mm256_min_epu32(rsec[r], _mm256_max_epu32(rmin[r], key));
                rmin[r] = _mm256_min_epu32(rmin[r], key);
                if (mode & PASS_CROSS)
                    cacc = _mm256_min_epu32(cacc, _mm256_or_si256(ds, ci[r]));
            }
            if (mode & PASS_CROSS)
                _mm256_store_si256((__m256i *)(colkey + c), _mm256_min_epu32(LD256(colkey + c), cacc));
            kidx = _mm256_add_epi32(kidx, eight);
        }
        for (int r = 0; r < R && i0 + r < nq; r++) {
            uint32_t mins[8], secs[8], b, s;
            _mm256_storeu_si256((__m256i *)mins, rmin[r]);
            _mm256_storeu_si256((__m256i *)secs, rsec[r]);
            reduce_two(mins, secs, 8, &b, &s);
            finish_row32(w, i0 + r, b, s);
        }
    }
    int32_t count = 0;
    if (mode & PASS_CROSS)
        for (int64_t i = 0; i < nq; i++)
            count += (int64_t)(colkey[AVX2_POS((int64_t)w->arg[i])] & 0xFFFF) == i;
    return count;
}

/* one image's planes as 4 low-nibble planes, then 4 high-nibble planes (stride ncp, zero padded) */
static void split_nibbles(const uint64_t *p, int64_t nc, int64_t ncp, uint64_t *cat)
{
    for (int k = 0; k < 4; k++) {
        const uint64_t *src = p + k * nc;
        uint64_t *lo = cat + k * ncp, *hi = cat + (4 + k) * ncp;
        for (int64_t c = 0; c < nc; c++) {
            lo[c] = src[c] & M4;
            hi[c] = (src[c] >> 4) & M4;
        }
        for (int64_t c = nc; c < ncp; c++)
            lo[c] = hi[c] = 0;
    }
}

T_AVX2 static int32_t pass_avx2(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, int mode)
{
    if (nq > KEY_LIMIT || nc > KEY_LIMIT)
        return pass_wide(q, nq, p, nc, w, mode);
    const int64_t ncp = (nc + 7) & ~(int64_t)7;
    split_nibbles(p, nc, ncp, w->cat);
    switch (mode) {
    case PASS_TWO: return avx2_body(q, nq, nc, ncp, w, PASS_TWO);
    case PASS_CROSS: return avx2_body(q, nq, nc, ncp, w, PASS_CROSS);
    default: return avx2_body(q, nq, nc, ncp, w, PASS_CROSS_TWO);
    }
}

/* per-column distances over words [from, to) of columns c..c+3 (one per 64-bit lane), nibble planes
 * as bytes4_avx2 */
T_AVX2_INLINE __m256i words_avx2(const uint64_t *cat, int64_t ncp, int64_t c, const __m256i *qa, const __m256i *qb,
                                 __m256i lut, const int from, const int to)
{
    __m256i s = _mm256_setzero_si256();
    for (int k = from; k < to; k++)
        s = _mm256_add_epi8(s, _mm256_add_epi8(
                                   _mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(cat + k * ncp + c), qa[k])),
                                   _mm256_shuffle_epi8(lut, _mm256_xor_si256(LD256(cat + (4 + k) * ncp + c), qb[k]))));
    return _mm256_sad_epu8(s, _mm256_setzero_si256());
}

/* close_scalar_body's count, 4 columns a vector and four query rows a sweep (they share the loads) */
T_AVX2 static int32_t close_avx2(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w,
                                 uint32_t threshold)
{
    enum { R = 4 }; /* rows a sweep: of 1, 2, 4, 6, 8 measured, 4 the fastest */
    const int64_t ncp = (nc + 7) & ~(int64_t)7;
    split_nibbles(p, nc, ncp, w->cat);
    const uint64_t *cat = w->cat;
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                         3, 2, 3, 3, 4);
    const __m256i limit = _mm256_set1_epi64x((long long)threshold);
    int32_t count = 0;
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        __m256i qa[R][4], qb[R][4];
        int found[R];
        for (int r = 0; r < R; r++) {
            const int64_t ii = i0 + r < nq ? i0 + r : nq - 1; /* a repeated last row, not counted */
            for (int k = 0; k < 4; k++) {
                const uint64_t x = q[4 * ii + k];
                qa[r][k] = _mm256_set1_epi64x((long long)(x & M4));
                qb[r][k] = _mm256_set1_epi64x((long long)((x >> 4) & M4));
            }
            found[r] = 0;
        }
        for (int64_t c = 0; c < nc; c += 4) {
            const int valid = nc - c >= 4 ? 0xF : (1 << (nc - c)) - 1;
            for (int r = 0; r < R; r++) {
                __m256i d = words_avx2(cat, ncp, c, qa[r], qb[r], lut, 0, 3);
                int close = ~_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(d, limit))) & valid;
                if (close) {
                    d = _mm256_add_epi64(d, words_avx2(cat, ncp, c, qa[r], qb[r], lut, 3, 4));
                    found[r] |= close & ~_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(d, limit)));
                }
            }
        }
        for (int r = 0; r < R && i0 + r < nq; r++)
            count += found[r] != 0;
    }
    return count;
}

/* ---------------------------------------------------------------- x86: AVX-512 VPOPCNTDQ */

#define T_AVX512_INLINE \
    static inline __attribute__((always_inline, target("popcnt,avx2,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

#define LD512(ptr) _mm512_load_si512((const void *)(ptr))

/* distances of catalog columns c..c+7 to a query row, one per 64-bit lane */
T_AVX512_INLINE __m512i dist8_avx512(const uint64_t *cat, int64_t ncp, int64_t c, const __m512i *qv)
{
    __m512i d0 = _mm512_popcnt_epi64(_mm512_xor_si512(LD512(cat + c), qv[0]));
    __m512i d1 = _mm512_popcnt_epi64(_mm512_xor_si512(LD512(cat + ncp + c), qv[1]));
    __m512i d2 = _mm512_popcnt_epi64(_mm512_xor_si512(LD512(cat + 2 * ncp + c), qv[2]));
    __m512i d3 = _mm512_popcnt_epi64(_mm512_xor_si512(LD512(cat + 3 * ncp + c), qv[3]));
    return _mm512_add_epi64(_mm512_add_epi64(d0, d1), _mm512_add_epi64(d2, d3));
}

/* chunks of 16 columns as two groups of 8; key lanes hold columns 0,8,1,9,...,7,15 */
#define AVX512_POS(k) (((k) & ~(int64_t)15) | (((k) & 7) << 1) | (((k) >> 3) & 1))

T_AVX512_INLINE int32_t avx512_body(const uint64_t *q, int64_t nq, int64_t nc, int64_t ncp, work_t *w, const int mode)
{
    enum { R = R_AVX512 };
    const uint64_t *cat = w->cat;
    uint32_t *colkey = (uint32_t *)w->colkey;
    const __m512i ones = _mm512_set1_epi32(-1);
    const __m512i idx0 = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    const __m512i sixteen = _mm512_set1_epi32(16), last = _mm512_set1_epi32((int)(nc - 1));
    if (mode & PASS_CROSS)
        for (int64_t k = 0; k < ncp; k += 16)
            _mm512_store_si512((void *)(colkey + k), ones);
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        __m512i qv[R][4], ci[R], rmin[R], rsec[R];
        for (int r = 0; r < R; r++) {
            int64_t ii = i0 + r < nq ? i0 + r : nq - 1;
            for (int k = 0; k < 4; k++)
                qv[r][k] = _mm512_set1_epi64((long long)q[4 * ii + k]);
            ci[r] = _mm512_set1_epi32((int)ii);
            rmin[r] = rsec[r] = ones;
        }
        __m512i kidx = idx0;
        for (int64_t c = 0; c < ncp; c += 16) {
            const __m512i kv = _mm512_mask_mov_epi32(kidx, _mm512_cmpgt_epi32_mask(kidx, last), ones);
            __m512i cacc = ones;
            for (int r = 0; r < R; r++) {
                __m512i sa = _mm512_slli_epi64(dist8_avx512(cat, ncp, c, qv[r]), 16);
                __m512i sb = _mm512_slli_epi64(dist8_avx512(cat, ncp, c + 8, qv[r]), 48);
                __m512i key = _mm512_ternarylogic_epi32(sa, sb, kv, 0xFE); /* sa | sb | kv */
                if (mode & PASS_TWO)
                    rsec[r] = _mm512_min_epu32(rsec[r], _mm512_max_epu32(rmin[r], key));
                rmin[r] = _mm512_min_epu32(rmin[r], key);
                if (mode & PASS_CROSS)
                    cacc = _mm512_min_epu32(cacc, _mm512_ternarylogic_epi32(sa, sb, ci[r], 0xFE));
            }
            if (mode & PASS_CROSS)
                _mm512_store_si512((void *)(colkey + c), _mm512_min_epu32(LD512(colkey + c), cacc));
            kidx = _mm512_add_epi32(kidx, sixteen);
        }
        for (int r = 0; r < R && i0 + r < nq; r++) {
            if (mode & PASS_TWO) {
                uint32_t mins[16], secs[16], b, s;
                _mm512_storeu_si512((void *)mins, rmin[r]);
                _mm512_storeu_si512((void *)secs, rsec[r]);
                reduce_two(mins, secs, 16, &b, &s);
                finish_row32(w, i0 + r, b, s);
            } else {
                finish_row32(w, i0 + r, _mm512_reduce_min_epu32(rmin[r]), 0xFFFFFFFFu);
            }
        }
    }
    int32_t count = 0;
    if (mode & PASS_CROSS)
        for (int64_t i = 0; i < nq; i++)
            count += (int64_t)(colkey[AVX512_POS((int64_t)w->arg[i])] & 0xFFFF) == i;
    return count;
}

T_AVX512 static int32_t pass_avx512(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, int mode)
{
    if (nq > KEY_LIMIT || nc > KEY_LIMIT)
        return pass_wide(q, nq, p, nc, w, mode);
    const int64_t ncp = (nc + 15) & ~(int64_t)15;
    copy_planes(p, nc, ncp, w->cat);
    switch (mode) {
    case PASS_TWO: return avx512_body(q, nq, nc, ncp, w, PASS_TWO);
    case PASS_CROSS: return avx512_body(q, nq, nc, ncp, w, PASS_CROSS);
    default: return avx512_body(q, nq, nc, ncp, w, PASS_CROSS_TWO);
    }
}
/* close_scalar_body's count, 8 columns a vector (read in place, the tail by masked loads) and four
 * query rows a sweep */
T_AVX512 static int32_t close_avx512(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w,
                                     uint32_t threshold)
{
    enum { R = R_AVX512 };
    (void)w;
    const __m512i limit = _mm512_set1_epi64((long long)threshold);
    int32_t count = 0;
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        __m512i qv[R][4];
        __mmask8 found[R];
        for (int r = 0; r < R; r++) {
            const int64_t ii = i0 + r < nq ? i0 + r : nq - 1; /* a repeated last row, not counted */
            for (int k = 0; k < 4; k++)
                qv[r][k] = _mm512_set1_epi64((long long)q[4 * ii + k]);
            found[r] = 0;
        }
        for (int64_t c = 0; c < nc; c += 8) {
            const __mmask8 valid = nc - c >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (nc - c)) - 1u);
            const __m512i c0 = _mm512_maskz_loadu_epi64(valid, p + c);
            const __m512i c1 = _mm512_maskz_loadu_epi64(valid, p + nc + c);
            const __m512i c2 = _mm512_maskz_loadu_epi64(valid, p + 2 * nc + c);
            for (int r = 0; r < R; r++) {
                __m512i d = _mm512_add_epi64(_mm512_add_epi64(_mm512_popcnt_epi64(_mm512_xor_si512(c0, qv[r][0])),
                                                              _mm512_popcnt_epi64(_mm512_xor_si512(c1, qv[r][1]))),
                                             _mm512_popcnt_epi64(_mm512_xor_si512(c2, qv[r][2])));
                const __mmask8 close = _mm512_mask_cmple_epu64_mask(valid, d, limit);
                if (close) {
                    const __m512i c3 = _mm512_maskz_loadu_epi64(valid, p + 3 * nc + c);
                    d = _mm512_add_epi64(d, _mm512_popcnt_epi64(_mm512_xor_si512(c3, qv[r][3])));
                    found[r] |= _mm512_mask_cmple_epu64_mask(close, d, limit);
                }
            }
        }
        for (int r = 0; r < R && i0 + r < nq; r++)
            count += found[r] != 0;
    }
    return count;
}
#endif /* HK_X86 */

/* ---------------------------------------------------------------- AArch64: NEON */
#if defined(HK_ARM)

/* per-byte bit counts (<= 32) of 2 catalog columns (c, c+1) xor the query row's 4 words */
HK_INLINE uint8x16_t bytes2_neon(const uint64_t *cat, int64_t ncp, int64_t c, const uint64x2_t *qv)
{
    uint8x16_t b0 = vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + c), qv[0])));
    uint8x16_t b1 = vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + ncp + c), qv[1])));
    uint8x16_t b2 = vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + 2 * ncp + c), qv[2])));
    uint8x16_t b3 = vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + 3 * ncp + c), qv[3])));
    return vaddq_u8(vaddq_u8(b0, b1), vaddq_u8(b2, b3));
}

/* chunks of 8 columns; key lanes in natural order (lo: columns 0-3, hi: 4-7) */
HK_INLINE int32_t neon_body(const uint64_t *q, int64_t nq, int64_t nc, int64_t ncp, work_t *w, const int mode)
{
    enum { R = R_NEON };
    const uint64_t *cat = w->cat;
    uint32_t *colkey = (uint32_t *)w->colkey;
    const uint32x4_t ones = vdupq_n_u32(0xFFFFFFFFu), eight = vdupq_n_u32(8), last = vdupq_n_u32((uint32_t)(nc - 1));
    static const uint32_t idx_init[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    if (mode & PASS_CROSS)
        for (int64_t k = 0; k < ncp; k += 4)
            vst1q_u32(colkey + k, ones);
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        uint64x2_t qv[R][4];
        uint32x4_t ci[R], rmin_lo[R], rmin_hi[R], rsec_lo[R], rsec_hi[R];
        for (int r = 0; r < R; r++) {
            int64_t ii = i0 + r < nq ? i0 + r : nq - 1;
            for (int k = 0; k < 4; k++)
                qv[r][k] = vdupq_n_u64(q[4 * ii + k]);
            ci[r] = vdupq_n_u32((uint32_t)ii);
            rmin_lo[r] = rmin_hi[r] = rsec_lo[r] = rsec_hi[r] = ones;
        }
        uint32x4_t klo = vld1q_u32(idx_init), khi = vld1q_u32(idx_init + 4);
        for (int64_t c = 0; c < ncp; c += 8) {
            const uint32x4_t kvlo = vorrq_u32(klo, vcgtq_u32(klo, last)), kvhi = vorrq_u32(khi, vcgtq_u32(khi, last));
            uint32x4_t cacc_lo = ones, cacc_hi = ones;
            for (int r = 0; r < R; r++) {
                uint8x16_t t0 = vpaddq_u8(bytes2_neon(cat, ncp, c, qv[r]), bytes2_neon(cat, ncp, c + 2, qv[r]));
                uint8x16_t t1 = vpaddq_u8(bytes2_neon(cat, ncp, c + 4, qv[r]), bytes2_neon(cat, ncp, c + 6, qv[r]));
                uint16x8_t d = vpaddlq_u8(vpaddq_u8(t0, t1)); /* 8 distances, columns in order */
                uint32x4_t dlo = vshll_n_u16(vget_low_u16(d), 16), dhi = vshll_high_n_u16(d, 16);
                uint32x4_t klo_r = vorrq_u32(dlo, kvlo), khi_r = vorrq_u32(dhi, kvhi);
                if (mode & PASS_TWO) {
                    rsec_lo[r] = vminq_u32(rsec_lo[r], vmaxq_u32(rmin_lo[r], klo_r));
                    rsec_hi[r] = vminq_u32(rsec_hi[r], vmaxq_u32(rmin_hi[r], khi_r));
                }
                rmin_lo[r] = vminq_u32(rmin_lo[r], klo_r);
                rmin_hi[r] = vminq_u32(rmin_hi[r], khi_r);
                if (mode & PASS_CROSS) {
                    cacc_lo = vminq_u32(cacc_lo, vorrq_u32(dlo, ci[r]));
                    cacc_hi = vminq_u32(cacc_hi, vorrq_u32(dhi, ci[r]));
                }
            }
            if (mode & PASS_CROSS) {
                vst1q_u32(colkey + c, vminq_u32(vld1q_u32(colkey + c), cacc_lo));
                vst1q_u32(colkey + c + 4, vminq_u32(vld1q_u32(colkey + c + 4), cacc_hi));
            }
            klo = vaddq_u32(klo, eight);
            khi = vaddq_u32(khi, eight);
        }
        for (int r = 0; r < R && i0 + r < nq; r++) {
            if (mode & PASS_TWO) {
                uint32_t mins[8], secs[8], b, s;
                vst1q_u32(mins, rmin_lo[r]);
                vst1q_u32(mins + 4, rmin_hi[r]);
                vst1q_u32(secs, rsec_lo[r]);
                vst1q_u32(secs + 4, rsec_hi[r]);
                reduce_two(mins, secs, 8, &b, &s);
                finish_row32(w, i0 + r, b, s);
            } else {
                finish_row32(w, i0 + r, vminvq_u32(vminq_u32(rmin_lo[r], rmin_hi[r])), 0xFFFFFFFFu);
            }
        }
    }
    int32_t count = 0;
    if (mode & PASS_CROSS)
        for (int64_t i = 0; i < nq; i++)
            count += (int64_t)(colkey[w->arg[i]] & 0xFFFF) == i;
    return count;
}

static int32_t pass_neon(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, int mode)
{
    if (nq > KEY_LIMIT || nc > KEY_LIMIT)
        return pass_wide(q, nq, p, nc, w, mode);
    const int64_t ncp = (nc + 7) & ~(int64_t)7;
    copy_planes(p, nc, ncp, w->cat);
    switch (mode) {
    case PASS_TWO: return neon_body(q, nq, nc, ncp, w, PASS_TWO);
    case PASS_CROSS: return neon_body(q, nq, nc, ncp, w, PASS_CROSS);
    default: return neon_body(q, nq, nc, ncp, w, PASS_CROSS_TWO);
    }
}
/* close_scalar_body's count, 2 columns a vector and R_NEON query rows a sweep */
static int32_t close_neon(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, uint32_t threshold)
{
    enum { R = R_NEON };
    const int64_t ncp = (nc + 7) & ~(int64_t)7;
    copy_planes(p, nc, ncp, w->cat);
    const uint64_t *cat = w->cat;
    const uint64x2_t limit = vdupq_n_u64(threshold), all = vdupq_n_u64(~0ULL);
    const uint64x2_t first = vcombine_u64(vdup_n_u64(~0ULL), vdup_n_u64(0));
    int32_t count = 0;
    for (int64_t i0 = 0; i0 < nq; i0 += R) {
        uint64x2_t qv[R][4], found[R];
        for (int r = 0; r < R; r++) {
            const int64_t ii = i0 + r < nq ? i0 + r : nq - 1; /* a repeated last row, not counted */
            for (int k = 0; k < 4; k++)
                qv[r][k] = vdupq_n_u64(q[4 * ii + k]);
            found[r] = vdupq_n_u64(0);
        }
        for (int64_t c = 0; c < nc; c += 2) {
            const uint64x2_t valid = c + 1 < nc ? all : first;
            for (int r = 0; r < R; r++) {
                uint8x16_t b = vaddq_u8(vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + c), qv[r][0]))),
                                        vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + ncp + c), qv[r][1]))));
                b = vaddq_u8(b, vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + 2 * ncp + c), qv[r][2]))));
                uint64x2_t d = vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(b)));
                const uint64x2_t close = vandq_u64(vcleq_u64(d, limit), valid);
                if (vgetq_lane_u64(close, 0) | vgetq_lane_u64(close, 1)) {
                    const uint8x16_t last =
                        vcntq_u8(vreinterpretq_u8_u64(veorq_u64(vld1q_u64(cat + 3 * ncp + c), qv[r][3])));
                    d = vaddq_u64(d, vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(last))));
                    found[r] = vorrq_u64(found[r], vandq_u64(close, vcleq_u64(d, limit)));
                }
            }
        }
        for (int r = 0; r < R && i0 + r < nq; r++)
            count += (vgetq_lane_u64(found[r], 0) | vgetq_lane_u64(found[r], 1)) != 0;
    }
    return count;
}
#endif /* HK_ARM */

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

/* The helpers below are always inlined into one function per level, so each level's copy is
 * vectorised for that level's instruction set. */

/* Column sums over WIN rows starting at row r of x, x*x and, for each of the nq queries, x*y.
 * With two queries (default scoring: the query and its mirror image) the catalog image's own
 * sums are shared. */
HK_INLINE void column_sums(const uint8_t *x, const query_stats *const *qs, const int nq, int r, int16_t *cx,
                           int32_t *cxx, int32_t (*cxy)[SIDE])
{
    for (int c = 0; c < SIDE; c++) {
        cx[c] = 0;
        cxx[c] = 0;
    }
    for (int i = 0; i < nq; i++)
        for (int c = 0; c < SIDE; c++)
            cxy[i][c] = 0;
    for (int k = 0; k < WIN; k++) {
        const uint8_t *xr = x + (r + k) * SIDE;
        for (int c = 0; c < SIDE; c++) {
            int32_t v = xr[c];
            cx[c] = (int16_t)(cx[c] + xr[c]);
            cxx[c] += v * v;
        }
        for (int i = 0; i < nq; i++) {
            const uint8_t *yr = qs[i]->pixels + (r + k) * SIDE;
            for (int c = 0; c < SIDE; c++)
                cxy[i][c] += (int32_t)xr[c] * (int32_t)yr[c];
        }
    }
}

/* slide the column sums down one row: add row r+WIN, drop row r */
HK_INLINE void slide_columns(const uint8_t *x, const query_stats *const *qs, const int nq, int r, int16_t *cx,
                             int32_t *cxx, int32_t (*cxy)[SIDE])
{
    const uint8_t *xo = x + r * SIDE, *xn = x + (r + WIN) * SIDE;
    for (int c = 0; c < SIDE; c++) {
        int32_t a = xn[c], b = xo[c];
        cx[c] = (int16_t)(cx[c] + (int16_t)(xn[c] - xo[c]));
        cxx[c] += a * a - b * b;
    }
    for (int i = 0; i < nq; i++) {
        const uint8_t *yo = qs[i]->pixels + r * SIDE, *yn = qs[i]->pixels + (r + WIN) * SIDE;
        for (int c = 0; c < SIDE; c++)
            cxy[i][c] += (int32_t)xn[c] * (int32_t)yn[c] - (int32_t)xo[c] * (int32_t)yo[c];
    }
}

HK_INLINE void row_window_sums(const int32_t *col, int32_t *out)
{
    for (int c = 0; c < VALID; c++)
        out[c] = col[c] + col[c + 1] + col[c + 2] + col[c + 3] + col[c + 4] + col[c + 5] + col[c + 6];
}

/* the pixel sums in int16 (a window's is at most 49 * 255 = 12,495): twice the lanes a vector */
HK_INLINE void row_window_sums16(const int16_t *col, int16_t *out)
{
    for (int c = 0; c < VALID; c++)
        out[c] = (int16_t)(col[c] + col[c + 1] + col[c + 2] + col[c + 3] + col[c + 4] + col[c + 5] + col[c + 6]);
}

/* Products are formed in int32 (exact: all < 2^31) and converted once, so no float multiply
 * feeds an add and FMA contraction cannot change a value: (float)(2*ss) == 2.0f*(float)ss and
 * (float)(sx*sx) == (float)sx*(float)sx exactly. */
HK_INLINE void ssim_row(const int16_t *sx, const int32_t *sxx, const int32_t *sxy, const int32_t *sy,
                        const float *ly, const float *vy, float *out)
{
    for (int c = 0; c < VALID; c++) {
        int32_t ss = sx[c] * sy[c];
        int32_t cov = NWIN * sxy[c] - ss;
        int32_t var = NWIN * sxx[c] - sx[c] * sx[c];
        float num = ((float)(2 * ss) + LUM_C) * ((float)(2 * cov) + CON_C);
        float den = ((float)(sx[c] * sx[c]) + ly[c]) * ((float)var + vy[c]);
        out[c] = num / den;
    }
}

/* summed in double, in a fixed order, so a score never depends on the CPU's vector width
 * (summing several rows side by side to overlap the dependent additions was measured: 2-8% slower) */
HK_INLINE double sum_row(const float *v)
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

HK_INLINE void prepare_query_body(const uint8_t *y, query_stats *q)
{
    int16_t cx[SIDE], sx[VALID];
    int32_t cxx[SIDE], sxx[VALID];
    q->pixels = y;
    for (int r = 0; r < VALID; r++) {
        if (r == 0)
            column_sums(y, NULL, 0, 0, cx, cxx, NULL);
        else
            slide_columns(y, NULL, 0, r - 1, cx, cxx, NULL);
        row_window_sums16(cx, sx);
        row_window_sums(cxx, sxx);
        for (int c = 0; c < VALID; c++) {
            int i = r * VALID + c;
            q->sum[i] = sx[c];
            q->lum[i] = (float)(sx[c] * sx[c]) + LUM_C;
            q->var[i] = (float)(NWIN * sxx[c] - sx[c] * sx[c]) + CON_C;
        }
    }
}

/* SSIM of catalog image x with each of nq (1 or 2) prepared queries, into score[i] */
HK_INLINE void ssim_body(const query_stats *const *qs, const int nq, const uint8_t *x, double *score)
{
    int16_t cx[SIDE], sx[VALID];
    int32_t cxx[SIDE], cxy[2][SIDE], sxx[VALID], sxy[VALID];
    float ratio[VALID];
    double total[2] = {0.0, 0.0};
    for (int r = 0; r < VALID; r++) {
        if (r == 0)
            column_sums(x, qs, nq, 0, cx, cxx, cxy);
        else
            slide_columns(x, qs, nq, r - 1, cx, cxx, cxy);
        row_window_sums16(cx, sx);
        row_window_sums(cxx, sxx);
        for (int i = 0; i < nq; i++) {
            const query_stats *q = qs[i];
            row_window_sums(cxy[i], sxy);
            ssim_row(sx, sxx, sxy, q->sum + r * VALID, q->lum + r * VALID, q->var + r * VALID, ratio);
            total[i] += sum_row(ratio);
        }
    }
    for (int i = 0; i < nq; i++)
        score[i] = total[i] / ((double)VALID * VALID);
}

#define SSIM_LEVEL(SUFFIX, TARGET)                                                                            \
    TARGET static void prepare_##SUFFIX(const uint8_t *y, query_stats *q) { prepare_query_body(y, q); }      \
    TARGET static void ssim_##SUFFIX(const query_stats *const *qs, int nq, const uint8_t *x, Py_ssize_t n,    \
                                     double *const *scores)                                                   \
    {                                                                                                         \
        double t[2];                                                                                          \
        for (Py_ssize_t j = 0; j < n; j++) {                                                                  \
            if (nq == 1)                                                                                      \
                ssim_body(qs, 1, x + j * (Py_ssize_t)(SIDE * SIDE), t);                                       \
            else                                                                                              \
                ssim_body(qs, 2, x + j * (Py_ssize_t)(SIDE * SIDE), t);                                       \
            for (int i = 0; i < nq; i++)                                                                      \
                scores[i][j] = t[i];                                                                          \
        }                                                                                                     \
    }

/* ---------------------------------------------------------------- thumbnail correlation */

/* out[i] = max(a . row_i, b . row_i) for the n rows of `rows` (d bfloat16 each, d a multiple of 8):
 * each row entry widened to float32 exactly (its 16 bits become the top half of a float's), eight
 * running sums over columns c = j mod 8 (lane j of a vector of eight), then
 * ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), every product and sum a separate IEEE float
 * operation (-std=c11: no FMA contraction), so the numbers are the same at every level and on
 * every CPU -- unlike a BLAS product, whose order depends on the library's kernel for the CPU (and
 * whose threads spin-wait when a core is taken).  Both queries' sums of a row, and two rows, run at
 * once: four independent chains of adds, where one would wait on each add's latency. */
typedef float dot_f8 __attribute__((vector_size(32)));
typedef uint32_t dot_u8 __attribute__((vector_size(32)));
typedef uint16_t dot_h8 __attribute__((vector_size(16)));

/* bfloat16 bits x[0..7] -> *v, each exactly (its 16 bits the top half of a float's) */
HK_INLINE void widen_bf16(const uint16_t *x, dot_f8 *v)
{
    dot_h8 h;
    memcpy(&h, x, sizeof h);
    dot_u8 w = __builtin_convertvector(h, dot_u8) << 16;
    memcpy(v, &w, sizeof *v);
}

HK_INLINE float dot8_tree(const dot_f8 *v)
{
    const float *s = (const float *)v;
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

HK_INLINE float larger(float x, float y) { return x < y ? y : x; }

/* rows x0 and x1 (x1 may be x0) against both queries: out0, out1 */
HK_INLINE void dot8_rows(const uint16_t *x0, const uint16_t *x1, const float *a, const float *b, int64_t d,
                         float *out0, float *out1)
{
    dot_f8 s0 = {0}, t0 = {0}, s1 = {0}, t1 = {0};
    for (int64_t c = 0; c < d; c += 8) {
        dot_f8 va, vb, v0, v1;
        memcpy(&va, a + c, sizeof va);
        memcpy(&vb, b + c, sizeof vb);
        widen_bf16(x0 + c, &v0);
        widen_bf16(x1 + c, &v1);
        dot_f8 p0 = v0 * va, q0 = v0 * vb, p1 = v1 * va, q1 = v1 * vb;
        s0 += p0;
        t0 += q0;
        s1 += p1;
        t1 += q1;
    }
    *out0 = larger(dot8_tree(&s0), dot8_tree(&t0));
    *out1 = larger(dot8_tree(&s1), dot8_tree(&t1));
}

/* ---------------------------------------------------------------- region looks */

/* out[i] = max over windows j of (float)(row_i . window_j) * scale[j], which[i] = the first such j:
 * rows are int8 and windows int16 (int8 values, widened once per query) vectors of d entries, their
 * dot products exact int32, so the result is
 * the same at every level and on every CPU (and equals the numpy fallback's float32 product of
 * the same integers, exact below 2**24).  Four windows per sweep share each row's loads. */
HK_INLINE void region_body(const int8_t *row8, const int16_t *windows, int64_t m, int64_t d, const float *scale,
                           int16_t *row, float *out, int32_t *which)
{
    for (int64_t k = 0; k < d; k++)
        row[k] = row8[k];
    float best = 0.0f;
    int32_t at = -1;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const int16_t *w0 = windows + j * d, *w1 = w0 + d, *w2 = w1 + d, *w3 = w2 + d;
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int64_t k = 0; k < d; k++) {
            s0 += row[k] * w0[k];
            s1 += row[k] * w1[k];
            s2 += row[k] * w2[k];
            s3 += row[k] * w3[k];
        }
        float v[4] = {(float)s0 * scale[j], (float)s1 * scale[j + 1], (float)s2 * scale[j + 2], (float)s3 * scale[j + 3]};
        for (int t = 0; t < 4; t++)
            if (at < 0 || v[t] > best) {
                best = v[t];
                at = (int32_t)(j + t);
            }
    }
    for (; j < m; j++) {
        const int16_t *w = windows + j * d;
        int32_t sum = 0;
        for (int64_t k = 0; k < d; k++)
            sum += row[k] * w[k];
        float v = (float)sum * scale[j];
        if (at < 0 || v > best) {
            best = v;
            at = (int32_t)j;
        }
    }
    *out = best;
    *which = at < 0 ? 0 : at;
}

/* ---------------------------------------------------------------- crop looks */

/* The query's templates slid over every position of catalog thumbnails (side x side int8), the
 * best normalised correlation per thumbnail.  Several thumbnails are scored together, one per
 * vector lane: they share the templates and positions, so the loops are the same for every lane.
 * Template taps are int8 values and templates at most CROP_SIZE_MAX a side: a position's sum of
 * products is an exact integer below 2**24, accumulated in float32 exactly in any order; the
 * window's sum and sum of squares (integral images), the numerator and the variance are exact int32;
 * only the ratio is rounded, with the same IEEE float32 operations at every level and in the numpy
 * fallback (-fno-math-errno lets sqrtf vectorise; it changes no result). */
#define CROP_LANES_MAX 16
#define CROP_SIDE_MAX 32
#define CROP_SIZE_MAX 12
#define CROP_TAPS_MAX 4096
#define CROP_BLOCK 4

typedef struct {
    float values[(CROP_SIDE_MAX * CROP_SIDE_MAX + CROP_BLOCK) * CROP_LANES_MAX] __attribute__((aligned(64)));
    int32_t sums[(CROP_SIDE_MAX + 1) * (CROP_SIDE_MAX + 1) * CROP_LANES_MAX];
    int32_t squares[(CROP_SIDE_MAX + 1) * (CROP_SIDE_MAX + 1) * CROP_LANES_MAX];
    float taps[CROP_TAPS_MAX]; /* the templates' int8 values as float */
} crop_work;

/* crop_group_4, _8 and _16: LANES thumbnails a sweep, one per lane of float vectors of
 * LANES x 4 bytes (GCC vector extensions: the same arithmetic at every width) */
#define CROP_GROUP(LANES) \
HK_INLINE void crop_group_##LANES(const int8_t *rows, int64_t g, int64_t side, const float *taps, const int32_t *sizes, \
                          const int32_t *template_sums, const float *scale, int64_t m, crop_work *w, float *out,        \
                          int32_t *which)                                                                               \
{                                                                                                                       \
    typedef float vf __attribute__((vector_size(LANES * 4)));                                                           \
    typedef int32_t vi __attribute__((vector_size(LANES * 4)));                                                         \
    vf *restrict values = (vf *)w->values;                                                                                    \
    vi *restrict sums = (vi *)w->sums, *restrict squares = (vi *)w->squares;                                                            \
    const int64_t d = side * side, stride = side + 1;                                                                   \
    const vi zero = {0};                                                                                                \
    for (int64_t p = 0; p < d; p++)                                                                                     \
        for (int l = 0; l < LANES; l++)                                                                                 \
            values[p][l] = l < g ? (float)rows[l * d + p] : 0.0f;                                                       \
    for (int64_t k = 0; k < stride * stride; k++)                                                                       \
        sums[k] = squares[k] = zero;                                                                                    \
    for (int64_t y = 0; y < side; y++)                                                                                  \
        for (int64_t x = 0; x < side; x++) {                                                                            \
            const int64_t k = (y + 1) * stride + x + 1;                                                                 \
            vi c = __builtin_convertvector(values[y * side + x], vi);                                                   \
            sums[k] = c + sums[k - 1] + sums[k - stride] - sums[k - stride - 1];                                        \
            squares[k] = c * c + squares[k - 1] + squares[k - stride] - squares[k - stride - 1];                        \
        }                                                                                                               \
    vf best;                                                                                                            \
    vi at = zero;                                                                                                       \
    for (int l = 0; l < LANES; l++)                                                                                     \
        best[l] = -INFINITY;                                                                                            \
    const float *t = taps;                                                                                              \
    for (int64_t j = 0; j < m; j++) {                                                                                   \
        const int32_t s = sizes[j], s2 = s * s;                                                                         \
        for (int64_t y = 0; y + s <= side; y++)                                                                         \
            for (int64_t x0 = 0; x0 + s <= side; x0 += CROP_BLOCK) {                                                    \
                /* CROP_BLOCK positions share each template tap; those past the edge are computed                       \
                 * from the next row (or the zeroed tail of the buffer) and skipped */                                  \
                vf acc[CROP_BLOCK] = {{0}};                                                                             \
                for (int64_t ty = 0; ty < s; ty++) {                                                                    \
                    const vf *c = values + (y + ty) * side + x0;                                                        \
                    const float *tr = t + ty * s;                                                                       \
                    for (int64_t tx = 0; tx < s; tx++) {                                                                \
                        const float tap = tr[tx];                                                                       \
                        for (int q = 0; q < CROP_BLOCK; q++)                                                            \
                            acc[q] += tap * c[tx + q];                                                                  \
                    }                                                                                                   \
                }                                                                                                       \
                for (int q = 0; q < CROP_BLOCK && x0 + q + s <= side; q++) {                                            \
                    const int64_t x = x0 + q;                                                                           \
                    const int64_t a = y * stride + x, b = a + s, c0 = a + s * stride, c1 = c0 + s;                      \
                    vi sum = sums[c1] - sums[b] - sums[c0] + sums[a];                                                   \
                    vi sq = squares[c1] - squares[b] - squares[c0] + squares[a];                                        \
                    vi variance = s2 * sq - sum * sum; /* s^4 x the window's variance */                                \
                    vi num = s2 * __builtin_convertvector(acc[q], vi) - template_sums[j] * sum;                         \
                    vf spread = __builtin_convertvector(variance, vf), root;                                            \
                    for (int l = 0; l < LANES; l++)                                                                     \
                        root[l] = sqrtf(spread[l]);                                                                     \
                    vf v = __builtin_convertvector(num, vf) * scale[j] / root;                                          \
                    vi counted = variance >= s2 * s2; /* flatter windows score 0 */                                     \
                    v = (vf)((vi)v & counted);                                                                          \
                    vi better = v > best;                                                                               \
                    best = (vf)(((vi)v & better) | ((vi)best & ~better));                                               \
                    vi here = zero + (int32_t)(j * d + y * side + x);                                                   \
                    at = (here & better) | (at & ~better);                                                              \
                }                                                                                                       \
            }                                                                                                           \
        t += s2;                                                                                                        \
    }                                                                                                                   \
    for (int64_t l = 0; l < g; l++) {                                                                                   \
        out[l] = best[l];                                                                                               \
        which[l] = at[l];                                                                                               \
    }                                                                                                                   \
}
CROP_GROUP(4)
CROP_GROUP(8)
CROP_GROUP(16)

#define LEVEL_FUNCTIONS(SUFFIX, TARGET, LANES)                                                                    \
    SSIM_LEVEL(SUFFIX, TARGET)                                                                               \
    TARGET static void regions_##SUFFIX(const int8_t *rows, int64_t n, const int16_t *windows, int64_t m,    \
                                        int64_t d, const float *scale, int16_t *row, float *out,             \
                                        int32_t *which)                                                      \
    {                                                                                                        \
        for (int64_t i = 0; i < n; i++)                                                                      \
            region_body(rows + i * d, windows, m, d, scale, row, out + i, which + i);                        \
    }                                                                                                        \
    TARGET static void crops_##SUFFIX(const int8_t *rows, int64_t n, int64_t side, const float *taps,          \
                                      const int32_t *sizes, const int32_t *template_sums, const float *scale,  \
                                      int64_t m, crop_work *w, float *out, int32_t *which)                     \
    {                                                                                                        \
        for (int64_t i = 0; i < n; i += LANES)                                                               \
            crop_group_##LANES(rows + i * side * side, MIN_(LANES, n - i), side, taps, sizes, template_sums,  \
                       scale, m, w, out + i, which + i);                                                      \
    }                                                                                                        \
    TARGET static void dots_##SUFFIX(const uint16_t *rows, int64_t n, int64_t d, const float *a, const float *b, \
                                     float *out)                                                             \
    {                                                                                                        \
        for (int64_t i = 0; i < n; i += 2) {                                                                 \
            const uint16_t *x0 = rows + i * d, *x1 = i + 1 < n ? x0 + d : x0;                                \
            float spare;                                                                                     \
            dot8_rows(x0, x1, a, b, d, out + i, i + 1 < n ? out + i + 1 : &spare);                           \
        }                                                                                                    \
    }

LEVEL_FUNCTIONS(portable, , 4)
#if defined(HK_X86)
LEVEL_FUNCTIONS(popcnt, T_POPCNT, 4)
LEVEL_FUNCTIONS(avx2, T_AVX2, 8)
LEVEL_FUNCTIONS(avx512, T_AVX512, 16)

/* Region looks with AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes and adds each four
 * products into a 32-bit lane, exactly.  Sixteen windows a vector, one per lane: their bytes made
 * unsigned (+128) and interleaved by fours, so one instruction adds four products of a row to each of
 * sixteen windows' sums; row . w = sum((w + 128) r) - 128 sum(r), the same integers as region_body,
 * so the same floats.  Eight rows share each window load (eight sums in flight hide the latency). */
#define VNNI_ROWS 8
/* The sums (plus 128 times each row's sum) of VNNI_ROWS rows with the sixteen windows of one packed block,
 * `quads` groups of four bytes each: regions_vnni's and group_max_vnni's inner loop. */
/* Rows i.. i + VNNI_ROWS - 1 (past the end: the last row again, not stored) and 128 times each one's sum,
 * which vnni_block_sums' sums hold besides the products. */
HK_INLINE void vnni_rows(const int8_t *rows, int64_t n, int64_t d, int64_t i, const int8_t **r, int32_t *correction)
{
    for (int t = 0; t < VNNI_ROWS; t++) {
        r[t] = rows + MIN_(i + t, n - 1) * d;
        int32_t sum = 0;
        for (int64_t k = 0; k < d; k++)
            sum += r[t][k];
        correction[t] = 128 * sum;
    }
}

static inline __attribute__((always_inline)) T_AVX512 void vnni_block_sums(const uint8_t *w, int64_t quads, const int8_t *const *r, __m512i *acc)
{
    for (int t = 0; t < VNNI_ROWS; t++)
        acc[t] = _mm512_setzero_si512();
    for (int64_t q = 0; q < quads; q++) {
        const __m512i unsigned_windows = _mm512_load_si512((const void *)(w + q * 64));
        for (int t = 0; t < VNNI_ROWS; t++) {
            int32_t four;
            memcpy(&four, r[t] + q * 4, sizeof four);
            acc[t] = _mm512_dpbusd_epi32(acc[t], unsigned_windows, _mm512_set1_epi32(four));
        }
    }
}
T_AVX512 static void regions_vnni(const int8_t *rows, int64_t n, const int16_t *windows, int64_t m, int64_t d,
                                  const float *scale, int16_t *row, float *out, int32_t *which)
{
    const int64_t blocks = (m + 15) / 16, quads = d / 4;
    uint8_t *packed = d % 4 == 0 ? aligned_alloc(64, (size_t)(blocks * quads * 64)) : NULL;
    float *scales = d % 4 == 0 ? aligned_alloc(64, (size_t)(blocks * 16) * sizeof(float)) : NULL;
    if (!packed || !scales) { /* another size, or no memory: the generic loop */
        free(packed);
        free(scales);
        regions_avx512(rows, n, windows, m, d, scale, row, out, which);
        return;
    }
    memset(packed, 0, (size_t)(blocks * quads * 64));
    for (int64_t j = 0; j < blocks * 16; j++)
        scales[j] = j < m ? scale[j] : 0.0f;
    for (int64_t j = 0; j < m; j++)
        for (int64_t k = 0; k < d; k++)
            packed[((j / 16) * quads + k / 4) * 64 + (j % 16) * 4 + k % 4] = (uint8_t)(windows[j * d + k] + 128);
    const __mmask16 last = (__mmask16)(m % 16 ? (1u << (m % 16)) - 1u : 0xFFFFu);
    const __m512 none = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += VNNI_ROWS) {
        const int8_t *r[VNNI_ROWS];
        int32_t correction[VNNI_ROWS], at[VNNI_ROWS];
        float best[VNNI_ROWS];
        vnni_rows(rows, n, d, i, r, correction);
        for (int t = 0; t < VNNI_ROWS; t++) {
            best[t] = -INFINITY;
            at[t] = 0;
        }
        for (int64_t b = 0; b < blocks; b++) {
            __m512i acc[VNNI_ROWS];
            vnni_block_sums(packed + b * quads * 64, quads, r, acc);
            const __m512 sc = _mm512_load_ps(scales + b * 16);
            const __mmask16 valid = b == blocks - 1 ? last : (__mmask16)0xFFFF;
            for (int t = 0; t < VNNI_ROWS; t++) {
                __m512i dots = _mm512_sub_epi32(acc[t], _mm512_set1_epi32(correction[t]));
                __m512 v = _mm512_mask_mov_ps(none, valid, _mm512_mul_ps(_mm512_cvtepi32_ps(dots), sc));
                float top = _mm512_reduce_max_ps(v);
                if (top > best[t]) { /* the first window of the block's best, as region_body's scan */
                    best[t] = top;
                    at[t] = (int32_t)(b * 16) + __builtin_ctz(_mm512_cmp_ps_mask(v, _mm512_set1_ps(top), _CMP_EQ_OQ));
                }
            }
        }
        for (int t = 0; t < VNNI_ROWS && i + t < n; t++) {
            out[i + t] = best[t];
            which[i + t] = at[t];
        }
    }
    free(packed);
    free(scales);
}
/* Crop looks with AVX-512 VNNI: sixteen thumbnails a sweep, one per 32-bit lane, each lane holding
 * four neighbouring pixels of its thumbnail made unsigned (+128); a template row's taps, four at a
 * time (zero past its end), are broadcast, so vpdpbusd adds four products to each of sixteen
 * thumbnails' sums.  sum((v + 128) t) - 128 sum(t) = sum(v t): the same integers as crop_group's
 * (exact in float there, exact in int32 here), then the same float arithmetic, in the same order of
 * templates and positions, so the same numbers. */
#define VNNI_CROP_PAD 64
T_AVX512 static void crops_vnni(const int8_t *rows, int64_t n, int64_t side, const float *taps, const int32_t *sizes,
                                const int32_t *template_sums, const float *scale, int64_t m, crop_work *w, float *out,
                                int32_t *which)
{
    typedef float vf __attribute__((vector_size(64)));
    typedef int32_t vi __attribute__((vector_size(64)));
    const int64_t d = side * side, stride = side + 1;
    int64_t words = 0; /* four-tap words of every template row */
    for (int64_t j = 0; j < m; j++)
        words += sizes[j] * ((sizes[j] + 3) / 4);
    __m512i *quads = aligned_alloc(64, (size_t)(d + VNNI_CROP_PAD) * sizeof(__m512i));
    int32_t *tap_words = malloc((size_t)(words + 1) * sizeof(int32_t));
    uint8_t *lanes = malloc((size_t)(d + VNNI_CROP_PAD + 4) * 16);
    if (!quads || !tap_words || !lanes) { /* no memory: the float sweep */
        free(quads);
        free(tap_words);
        free(lanes);
        crops_avx512(rows, n, side, taps, sizes, template_sums, scale, m, w, out, which);
        return;
    }
    {
        const float *t = taps;
        int32_t *tw = tap_words;
        for (int64_t j = 0; j < m; j++) {
            const int64_t s = sizes[j];
            for (int64_t ty = 0; ty < s; ty++)
                for (int64_t q = 0; q < (s + 3) / 4; q++) {
                    uint32_t word = 0;
                    for (int64_t k = 0; k < 4; k++)
                        if (4 * q + k < s)
                            word |= (uint32_t)(uint8_t)(int8_t)t[ty * s + 4 * q + k] << (8 * k);
                    *tw++ = (int32_t)word;
                }
            t += s * s;
        }
    }
    vi *restrict sums = (vi *)w->sums, *restrict squares = (vi *)w->squares;
    const vi zero = {0};
    memset(lanes, 128, (size_t)(d + VNNI_CROP_PAD + 4) * 16); /* past the end: value 0 */
    for (int64_t i = 0; i < n; i += 16) {
        const int64_t g = MIN_(16, n - i);
        const int8_t *group = rows + i * d;
        for (int64_t p = 0; p < d; p++)
            for (int64_t l = 0; l < 16; l++)
                lanes[p * 16 + l] = (uint8_t)((l < g ? group[l * d + p] : 0) + 128);
        for (int64_t p = 0; p < d + VNNI_CROP_PAD; p++) { /* lane l: pixels p..p+3 of thumbnail l */
            const __m128i a = _mm_loadu_si128((const __m128i *)(lanes + p * 16)),
                          b = _mm_loadu_si128((const __m128i *)(lanes + (p + 1) * 16)),
                          c = _mm_loadu_si128((const __m128i *)(lanes + (p + 2) * 16)),
                          e = _mm_loadu_si128((const __m128i *)(lanes + (p + 3) * 16));
            const __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
            const __m128i ce_lo = _mm_unpacklo_epi8(c, e), ce_hi = _mm_unpackhi_epi8(c, e);
            __m512i v = _mm512_castsi128_si512(_mm_unpacklo_epi16(ab_lo, ce_lo));
            v = _mm512_inserti32x4(v, _mm_unpackhi_epi16(ab_lo, ce_lo), 1);
            v = _mm512_inserti32x4(v, _mm_unpacklo_epi16(ab_hi, ce_hi), 2);
            quads[p] = _mm512_inserti32x4(v, _mm_unpackhi_epi16(ab_hi, ce_hi), 3);
        }
        for (int64_t k = 0; k < stride * stride; k++)
            sums[k] = squares[k] = zero;
        for (int64_t y = 0; y < side; y++)
            for (int64_t x = 0; x < side; x++) {
                const int64_t k = (y + 1) * stride + x + 1;
                vi c;
                for (int64_t l = 0; l < 16; l++)
                    c[l] = (int32_t)lanes[(y * side + x) * 16 + l] - 128;
                sums[k] = c + sums[k - 1] + sums[k - stride] - sums[k - stride - 1];
                squares[k] = c * c + squares[k - 1] + squares[k - stride] - squares[k - stride - 1];
            }
        vf best;
        vi at = zero;
        for (int l = 0; l < 16; l++)
            best[l] = -INFINITY;
        const int32_t *tw = tap_words;
        for (int64_t j = 0; j < m; j++) {
            const int32_t s = sizes[j], s2 = s * s, per_row = (s + 3) / 4;
            const vi correction = zero + 128 * template_sums[j];
            for (int64_t y = 0; y + s <= side; y++)
                for (int64_t x0 = 0; x0 + s <= side; x0 += CROP_BLOCK) {
                    __m512i acc[CROP_BLOCK];
                    for (int q = 0; q < CROP_BLOCK; q++)
                        acc[q] = _mm512_setzero_si512();
                    for (int64_t ty = 0; ty < s; ty++) {
                        const __m512i *c = quads + (y + ty) * side + x0;
                        for (int64_t wq = 0; wq < per_row; wq++) {
                            const __m512i tap = _mm512_set1_epi32(tw[ty * per_row + wq]);
                            for (int q = 0; q < CROP_BLOCK; q++)
                                acc[q] = _mm512_dpbusd_epi32(acc[q], c[4 * wq + q], tap);
                        }
                    }
                    for (int q = 0; q < CROP_BLOCK && x0 + q + s <= side; q++) {
                        const int64_t x = x0 + q;
                        const int64_t a = y * stride + x, b = a + s, c0 = a + s * stride, c1 = c0 + s;
                        vi sum = sums[c1] - sums[b] - sums[c0] + sums[a];
                        vi sq = squares[c1] - squares[b] - squares[c0] + squares[a];
                        vi variance = s2 * sq - sum * sum; /* s^4 x the window's variance */
                        vi num = s2 * ((vi)acc[q] - correction) - template_sums[j] * sum;
                        vf spread = __builtin_convertvector(variance, vf), root;
                        for (int l = 0; l < 16; l++)
                            root[l] = sqrtf(spread[l]);
                        vf v = __builtin_convertvector(num, vf) * scale[j] / root;
                        vi counted = variance >= s2 * s2; /* flatter windows score 0 */
                        v = (vf)((vi)v & counted);
                        vi better = v > best;
                        best = (vf)(((vi)v & better) | ((vi)best & ~better));
                        vi here = zero + (int32_t)(j * d + y * side + x);
                        at = (here & better) | (at & ~better);
                    }
                }
            tw += s * per_row;
        }
        for (int64_t l = 0; l < g; l++) {
            out[i + l] = best[l];
            which[i + l] = at[l];
        }
    }
    free(quads);
    free(tap_words);
    free(lanes);
}

/* Group maxima with AVX-512 VNNI (region_group_max): as regions_vnni, but each group's blocks of sixteen
 * windows keep a running maximum per lane, reduced once at the group's end, and no window index is kept.
 * Returns 0 when it cannot run (d not a multiple of 4, or no memory): the caller runs the generic loop. */
T_AVX512 static int group_max_vnni(const int8_t *rows, int64_t n, const int16_t *windows, int64_t d,
                                   const float *scale, const int64_t *ends, int64_t groups, float *out)
{
    if (d % 4)
        return 0;
    const int64_t quads = d / 4;
    int64_t blocks = 0;
    for (int64_t g = 0, lo = 0; g < groups; lo = ends[g++])
        blocks += (ends[g] - lo + 15) / 16;
    uint8_t *packed = aligned_alloc(64, (size_t)(blocks * quads * 64));
    float *scales = aligned_alloc(64, (size_t)(blocks * 16) * sizeof(float));
    __mmask16 *valid = malloc((size_t)blocks * sizeof(__mmask16));
    int64_t *first = malloc((size_t)(groups + 1) * sizeof(int64_t)); /* group g's blocks: first[g] to first[g + 1] */
    if (!packed || !scales || !valid || !first) {
        free(packed);
        free(scales);
        free(valid);
        free(first);
        return 0;
    }
    memset(packed, 0, (size_t)(blocks * quads * 64));
    int64_t b = 0;
    for (int64_t g = 0, lo = 0; g < groups; lo = ends[g++]) {
        first[g] = b;
        for (int64_t base = lo; base < ends[g]; base += 16, b++) {
            const int64_t lanes = MIN_(16, ends[g] - base);
            valid[b] = (__mmask16)(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u);
            for (int64_t l = 0; l < 16; l++)
                scales[b * 16 + l] = l < lanes ? scale[base + l] : 0.0f;
            for (int64_t l = 0; l < lanes; l++)
                for (int64_t k = 0; k < d; k++)
                    packed[(b * quads + k / 4) * 64 + l * 4 + k % 4] = (uint8_t)(windows[(base + l) * d + k] + 128);
        }
    }
    first[groups] = b;
    const __m512 none = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += VNNI_ROWS) {
        const int8_t *r[VNNI_ROWS];
        int32_t correction[VNNI_ROWS];
        vnni_rows(rows, n, d, i, r, correction);
        for (int64_t g = 0; g < groups; g++) {
            __m512 top[VNNI_ROWS];
            for (int t = 0; t < VNNI_ROWS; t++)
                top[t] = none;
            for (int64_t c = first[g]; c < first[g + 1]; c++) {
                __m512i acc[VNNI_ROWS];
                vnni_block_sums(packed + c * quads * 64, quads, r, acc);
                const __m512 sc = _mm512_load_ps(scales + c * 16);
                for (int t = 0; t < VNNI_ROWS; t++) {
                    __m512i dots = _mm512_sub_epi32(acc[t], _mm512_set1_epi32(correction[t]));
                    top[t] = _mm512_mask_max_ps(top[t], valid[c], top[t], _mm512_mul_ps(_mm512_cvtepi32_ps(dots), sc));
                }
            }
            for (int t = 0; t < VNNI_ROWS && i + t < n; t++)
                out[g * n + i + t] = _mm512_reduce_max_ps(top[t]);
        }
    }
    free(packed);
    free(scales);
    free(valid);
    free(first);
    return 1;
}
/* Region looks with AVX2: vpmaddwd multiplies pairs of int16 and adds each pair into a 32-bit lane,
 * exactly.  Eight windows a vector, one per lane, their taps interleaved by pairs; a row's pair of
 * values is broadcast to every lane, so one instruction adds two products of a row to each of eight
 * windows' sums.  Six rows share each window load and each row's broadcast serves two vectors of
 * windows: twelve sums in flight (of 2-6 rows and 2-4 vectors measured, the fastest).  The same integers as region_body, so the same floats; the blocks
 * are scanned in order and a block's first best lane taken, so ties go to the first window. */
#define AVX2_REGION_ROWS 6
#define AVX2_REGION_BLOCKS 2
T_AVX2_INLINE float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

T_AVX2 static void regions_madd(const int8_t *rows, int64_t n, const int16_t *windows, int64_t m, int64_t d,
                                const float *scale, int16_t *row, float *out, int32_t *which)
{
    enum { R = AVX2_REGION_ROWS, B = AVX2_REGION_BLOCKS };
    const int64_t blocks = (m + 8 * B - 1) / (8 * B) * B, pairs = d / 2;
    int16_t *packed = d % 2 == 0 ? aligned_alloc(32, (size_t)(blocks * pairs * 32)) : NULL;
    float *scales = d % 2 == 0 ? aligned_alloc(32, (size_t)(blocks * 8) * sizeof(float)) : NULL;
    int32_t *row_pairs = d % 2 == 0 ? malloc((size_t)(R * pairs) * sizeof(int32_t)) : NULL;
    if (!packed || !scales || !row_pairs) { /* an odd size, or no memory: the generic loop */
        free(packed);
        free(scales);
        free(row_pairs);
        regions_avx2(rows, n, windows, m, d, scale, row, out, which);
        return;
    }
    memset(packed, 0, (size_t)(blocks * pairs * 32));
    for (int64_t j = 0; j < blocks * 8; j++)
        scales[j] = j < m ? scale[j] : 0.0f;
    for (int64_t j = 0; j < m; j++)
        for (int64_t k = 0; k < d; k++)
            packed[((j / 8) * pairs + k / 2) * 16 + (j % 8) * 2 + k % 2] = windows[j * d + k];
    const __m256 none = _mm256_set1_ps(-INFINITY);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t i = 0; i < n; i += R) {
        float best[R];
        int32_t at[R];
        for (int t = 0; t < R; t++) {
            const int8_t *r = rows + MIN_(i + t, n - 1) * d; /* past the end: the last row again, not stored */
            for (int64_t k = 0; k < pairs; k++)
                row_pairs[t * pairs + k] = (int32_t)(uint16_t)(int16_t)r[2 * k] | ((int32_t)r[2 * k + 1] * 65536);
            best[t] = -INFINITY;
            at[t] = 0;
        }
        for (int64_t b = 0; b < blocks; b += B) {
            __m256i acc[R][B];
            for (int t = 0; t < R; t++)
                for (int u = 0; u < B; u++)
                    acc[t][u] = _mm256_setzero_si256();
            for (int64_t k = 0; k < pairs; k++) {
                __m256i w[B];
                for (int u = 0; u < B; u++)
                    w[u] = _mm256_load_si256((const __m256i *)(packed + ((b + u) * pairs + k) * 16));
                for (int t = 0; t < R; t++) {
                    const __m256i x = _mm256_set1_epi32(row_pairs[t * pairs + k]);
                    for (int u = 0; u < B; u++)
                        acc[t][u] = _mm256_add_epi32(acc[t][u], _mm256_madd_epi16(w[u], x));
                }
            }
            for (int u = 0; u < B; u++) {
                const __m256 sc = _mm256_load_ps(scales + (b + u) * 8);
                const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)(m - (b + u) * 8)), lanes);
                for (int t = 0; t < R; t++) {
                    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][u]), sc);
                    v = _mm256_blendv_ps(none, v, _mm256_castsi256_ps(valid));
                    const float top = hmax8(v);
                    if (top > best[t]) { /* the first window of the block's best, as region_body's scan */
                        best[t] = top;
                        at[t] = (int32_t)((b + u) * 8) +
                                __builtin_ctz((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(top), _CMP_EQ_OQ)));
                    }
                }
            }
        }
        for (int t = 0; t < R && i + t < n; t++) {
            out[i + t] = best[t];
            which[i + t] = at[t];
        }
    }
    free(packed);
    free(scales);
    free(row_pairs);
}
#endif
/* AArch64: Advanced SIMD is baseline, so the portable copies are already the NEON ones */

/* ---------------------------------------------------------------- hashed votes */

/* Keypoint votes through bit-sampling keys (kernels.hashed_close): a query row votes for an
 * image when one of the image's descriptors shares one of its keys and lies within the
 * threshold.  The query's keys go in per-table bitmaps and chains (head/next), so each catalog
 * descriptor costs a few bit tests; the distance is computed only for the few that share a key. */
enum { HASH_MAX_TABLES = 8, HASH_MAX_BITS = 16, HASH_MAX_GROUPS = 16 };

typedef struct {
    uint64_t *bitmap; /* tables * (1 << bits) / 64 */
    int16_t *head;    /* tables * (1 << bits): first query row with the key (read only where bitmap is set) */
    int16_t *next;    /* tables * nq */
    int64_t *stamp;   /* nq: the last image the row voted for */
} hash_work;

static void hash_work_free(hash_work *w)
{
    free(w->bitmap);
    free(w->head);
    free(w->next);
    free(w->stamp);
}

/* with the GIL, as work_alloc: 0 and a MemoryError when any part cannot be had */
static int hash_work_alloc(hash_work *w, int64_t tables, int64_t bits, int64_t nq)
{
    size_t slots = (size_t)tables << bits;
    w->bitmap = calloc(slots / 64 + 1, sizeof(uint64_t));
    w->head = malloc(slots * sizeof(int16_t));
    w->next = malloc((size_t)(tables * nq + 1) * sizeof(int16_t));
    w->stamp = malloc((size_t)(nq + 1) * sizeof(int64_t));
    if (w->bitmap && w->head && w->next && w->stamp)
        return 1;
    hash_work_free(w);
    PyErr_NoMemory();
    return 0;
}

/* Keys by lookup: for each of the descriptor's 32 bytes that holds a sampled bit, a table of what
 * each byte value adds to the keys (key t in bits 16t..16t+15 of a 64-bit word; up to 4 tables
 * a word, so up to 2 words). */
typedef struct {
    int nbytes;           /* bytes that hold a sampled bit */
    int byte_at[32];      /* which byte of the descriptor (0-31: byte b of word b / 8) */
    uint64_t add[32][2][256];
} key_lookup;

static void key_lookup_init(key_lookup *lk, const int32_t *bits, int64_t tables, int64_t nbits)
{
    int used[32] = {0};
    for (int64_t i = 0; i < tables * nbits; i++)
        used[bits[i] >> 3] = 1;
    lk->nbytes = 0;
    int slot_of[32];
    for (int b = 0; b < 32; b++)
        if (used[b]) {
            slot_of[b] = lk->nbytes;
            lk->byte_at[lk->nbytes++] = b;
        }
    memset(lk->add, 0, sizeof(lk->add[0]) * (size_t)lk->nbytes);
    for (int64_t t = 0; t < tables; t++)
        for (int64_t j = 0; j < nbits; j++) {
            int32_t b = bits[t * nbits + j];
            uint64_t *add = lk->add[slot_of[b >> 3]][t >> 2];
            for (int v = 0; v < 256; v++)
                if ((v >> (b & 7)) & 1)
                    add[v] |= 1ull << (16 * (t & 3) + j);
        }
}

HK_INLINE void keys_by_lookup(const key_lookup *lk, const uint64_t *words, int64_t tables, uint16_t *out)
{
    uint64_t acc[2] = {0, 0};
    for (int i = 0; i < lk->nbytes; i++) {
        int b = lk->byte_at[i];
        unsigned v = (unsigned)(words[b >> 3] >> (8 * (b & 7))) & 0xFF;
        acc[0] |= lk->add[i][0][v];
        acc[1] |= lk->add[i][1][v];
    }
    for (int64_t t = 0; t < tables; t++)
        out[t] = (uint16_t)(acc[t >> 2] >> (16 * (t & 3)));
}

/* Returns nonzero when a catalog key has more than nbits bits (the keys are not the pack's for these
 * bits); such a key is read masked, never out of bounds, and the caller refuses the result. */
HK_INLINE int hashed_body(const uint64_t *q, int64_t nq, const uint16_t *qkeys, const uint8_t *group, int64_t groups,
                          const uint64_t *p, const int64_t *off, int64_t n, const uint16_t *keys, int64_t tables,
                          int64_t nbits, uint32_t threshold, hash_work *w, int32_t *counts, const int hw)
{
    const int64_t slots = (int64_t)1 << nbits;
    uint64_t *restrict bitmap = w->bitmap;
    int16_t *restrict head = w->head, *restrict next = w->next;
    int64_t *restrict stamp = w->stamp;
    for (int64_t i = nq - 1; i >= 0; i--) {
        for (int64_t t = 0; t < tables; t++) {
            int64_t slot = t * slots + qkeys[i * tables + t];
            const int taken = (int)((bitmap[slot >> 6] >> (slot & 63)) & 1u);
            bitmap[slot >> 6] |= 1ull << (slot & 63);
            next[t * nq + i] = taken ? head[slot] : -1; /* head is unset until its bit is */
            head[slot] = (int16_t)i;
        }
        stamp[i] = -1;
    }
    const uint32_t mask = (uint32_t)slots - 1;
    uint32_t seen = 0; /* every catalog key's bits, or-ed */
    for (int64_t j = 0; j < n; j++) {
        const int64_t lo = off[j], nc = off[j + 1] - off[j];
        const uint64_t *pj = p + 4 * lo;
        int32_t count[HASH_MAX_GROUPS] = {0};
        for (int64_t k = 0; k < nc; k++) {
            const uint16_t *key = keys + (lo + k) * tables;
            uint32_t shared = 0; /* bit t: the query has a row with key t of this descriptor */
            for (int64_t t = 0; t < tables; t++) {
                seen |= key[t];
                int64_t slot = t * slots + (key[t] & mask);
                shared |= (uint32_t)((bitmap[slot >> 6] >> (slot & 63)) & 1u) << t;
            }
            while (shared) {
                int64_t t = __builtin_ctz(shared);
                shared &= shared - 1;
                for (int64_t i = head[t * slots + (key[t] & mask)]; i >= 0; i = next[t * nq + i]) {
                    if (stamp[i] == j)
                        continue;
                    const uint64_t *qi = q + 4 * i;
                    uint32_t d = dist4(pj[k] ^ qi[0], pj[nc + k] ^ qi[1], pj[2 * nc + k] ^ qi[2],
                                       pj[3 * nc + k] ^ qi[3], hw);
                    if (d <= threshold) {
                        stamp[i] = j;
                        count[group[i]]++;
                    }
                }
            }
        }
        for (int64_t g = 0; g < groups; g++)
            counts[j * groups + g] = count[g];
    }
    return (seen & ~mask) != 0;
}

#define HASHED(NAME, TARGET, HW)                                                                                   \
    TARGET static int NAME(const uint64_t *q, int64_t nq, const uint16_t *qkeys, const uint8_t *group,             \
                            int64_t groups, const uint64_t *p, const int64_t *off, int64_t n, const uint16_t *keys,  \
                            int64_t tables, int64_t nbits, uint32_t threshold, hash_work *w, int32_t *counts)        \
    {                                                                                                              \
        return hashed_body(q, nq, qkeys, group, groups, p, off, n, keys, tables, nbits, threshold, w, counts, HW); \
    }

HASHED(hashed_portable, , 0)
#if defined(HK_X86)
HASHED(hashed_popcnt, T_POPCNT, 1)
#elif defined(HK_ARM)
HASHED(hashed_neon, , 1)
#endif

/* ---------------------------------------------------------------- levels */

typedef struct {
    const char *name;
    int (*supported)(void);
    int32_t (*pass)(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, int mode);
    /* query rows with a column within a threshold (votes) */
    int32_t (*close)(const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w, uint32_t threshold);
    void (*prepare)(const uint8_t *y, query_stats *q);
    void (*ssim)(const query_stats *const *qs, int nq, const uint8_t *x, Py_ssize_t n, double *const *scores);
    void (*dots)(const uint16_t *rows, int64_t n, int64_t d, const float *a, const float *b, float *out);
    void (*regions)(const int8_t *rows, int64_t n, const int16_t *windows, int64_t m, int64_t d, const float *scale,
                    int16_t *row, float *out, int32_t *which);
    void (*crops)(const int8_t *rows, int64_t n, int64_t side, const float *taps, const int32_t *sizes,
                  const int32_t *template_sums, const float *scale, int64_t m, crop_work *w, float *out,
                  int32_t *which);
    /* votes by hashed keys (scalar: a few distances per catalog descriptor) */
    int (*hashed)(const uint64_t *q, int64_t nq, const uint16_t *qkeys, const uint8_t *group, int64_t groups,
                  const uint64_t *p, const int64_t *off, int64_t n, const uint16_t *keys, int64_t tables, int64_t nbits,
                  uint32_t threshold, hash_work *w, int32_t *counts);
} level_t;

static int always(void) { return 1; }

#if defined(HK_X86)
static int has_popcnt(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt") != 0; /* the builtin returns a feature bit, not 0/1 */
}
static int has_avx2(void) { return has_popcnt() && __builtin_cpu_supports("avx2"); }
static int has_avx512(void)
{
    /* __builtin_cpu_supports also checks that the OS saves the AVX-512 state (XCR0) */
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
           __builtin_cpu_supports("avx512vnni");
}
#define ARCH_NAME "x86_64"
#elif defined(HK_ARM)
#define ARCH_NAME "aarch64"
#else
#define ARCH_NAME "this architecture"
#endif

/* fastest first */
static const level_t LEVELS[] = {
#if defined(HK_X86)
    {"avx512", has_avx512, pass_avx512, close_avx512, prepare_avx512, ssim_avx512, dots_avx512, regions_vnni, crops_vnni, hashed_popcnt},
    {"avx2", has_avx2, pass_avx2, close_avx2, prepare_avx2, ssim_avx2, dots_avx2, regions_madd, crops_avx2, hashed_popcnt},
    {"popcnt", has_popcnt, pass_popcnt, close_popcnt, prepare_popcnt, ssim_popcnt, dots_popcnt, regions_popcnt, crops_popcnt, hashed_popcnt},
#elif defined(HK_ARM)
    {"neon", always, pass_neon, close_neon, prepare_portable, ssim_portable, dots_portable, regions_portable, crops_portable,
     hashed_neon},
#endif
    {"portable", always, pass_portable, close_portable, prepare_portable, ssim_portable, dots_portable, regions_portable, crops_portable,
     hashed_portable},
};
#define NLEVELS ((int)(sizeof(LEVELS) / sizeof(LEVELS[0])))

static const level_t *LEVEL = NULL;

/* ---------------------------------------------------------------- Python functions */

/* Every wrapper releases all its buffers on the way out (PyArg_ParseTuple fills all or none). */
static void release_buffers(Py_buffer *const *bufs)
{
    for (; *bufs; bufs++)
        PyBuffer_Release(*bufs);
}
#define RELEASE(...) release_buffers((Py_buffer *const[]){__VA_ARGS__, NULL})

/* n + 1 int64 offsets into planes of `total` descriptors, rising and in range: 1 and the most
 * descriptors an image has, or 0 with a ValueError naming `name` */
static int check_offsets(const int64_t *off, int64_t n, int64_t total, const char *name, int64_t *most)
{
    *most = 0;
    for (int64_t j = 0; j < n; j++) {
        if (off[j] < 0 || off[j + 1] < off[j] || off[j + 1] > total) {
            PyErr_Format(PyExc_ValueError, "%s: offsets out of range", name);
            return 0;
        }
        *most = MAX_(*most, off[j + 1] - off[j]);
    }
    return 1;
}

/* One image's pass (`mode`) over its pairs with every query row, without the GIL: the
 * cross-check count (0 when either side has no descriptor) and, where idx is given, each query
 * row's nearest index (first on ties) and two smallest distances (-1 and 0xFFFF: none). */
static int32_t image_pass(const level_t *L, const uint64_t *q, int64_t nq, const uint64_t *p, int64_t nc, work_t *w,
                          int mode, int32_t *idx, uint16_t *d1, uint16_t *d2)
{
    if (nq > 0 && nc > 0) {
        int32_t count = L->pass(q, nq, p, nc, w, mode);
        if (idx) {
            memcpy(idx, w->arg, (size_t)nq * sizeof(int32_t));
            memcpy(d1, w->d1, (size_t)nq * sizeof(uint16_t));
            memcpy(d2, w->d2, (size_t)nq * sizeof(uint16_t));
        }
        return count;
    }
    for (int64_t i = 0; idx && i < nq; i++) {
        idx[i] = -1;
        d1[i] = d2[i] = 0xFFFF;
    }
    return 0;
}

/* cross_check_counts (two == NULL) and match_two (two: the idx, d1, d2 outputs of n x nq): every
 * image's pass, images by offsets into the planes */
static PyObject *image_passes(Py_buffer *query, Py_buffer *planes, Py_buffer *offsets, Py_buffer *out, Py_buffer *two,
                              const char *name)
{
    int64_t nq = query->len / 32, n = offsets->len / (Py_ssize_t)sizeof(int64_t) - 1, total = planes->len / 32, most;
    const int64_t *off = (const int64_t *)offsets->buf;
    if (query->len % 32 != 0 || planes->len % 32 != 0 || n < 0 || out->len < n * (Py_ssize_t)sizeof(int32_t) ||
        (two && (two[0].len < n * nq * (Py_ssize_t)sizeof(int32_t) || two[1].len < n * nq * (Py_ssize_t)sizeof(uint16_t) ||
                 two[2].len < n * nq * (Py_ssize_t)sizeof(uint16_t)))) {
        PyErr_Format(PyExc_ValueError, "%s: buffer sizes do not match", name);
        return NULL;
    }
    work_t w;
    if (!check_offsets(off, n, total, name, &most) || !work_alloc(&w, nq, most))
        return NULL;
    const uint64_t *q = (const uint64_t *)query->buf, *p = (const uint64_t *)planes->buf;
    int32_t *counts = (int32_t *)out->buf, *idx = two ? (int32_t *)two[0].buf : NULL;
    uint16_t *d1 = two ? (uint16_t *)two[1].buf : NULL, *d2 = two ? (uint16_t *)two[2].buf : NULL;
    const int mode = two ? PASS_CROSS_TWO : PASS_CROSS;
    const level_t *L = LEVEL;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < n; j++)
        counts[j] = image_pass(L, q, nq, p + 4 * off[j], off[j + 1] - off[j], &w, mode, two ? idx + j * nq : NULL,
                               two ? d1 + j * nq : NULL, two ? d2 + j * nq : NULL);
    Py_END_ALLOW_THREADS
    work_free(&w);
    Py_RETURN_NONE;
}

static PyObject *cross_check_counts(PyObject *self, PyObject *args)
{
    Py_buffer query, planes, offsets, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &query, &planes, &offsets, &out))
        return NULL;
    PyObject *result = image_passes(&query, &planes, &offsets, &out, NULL, "cross_check_counts");
    RELEASE(&query, &planes, &offsets, &out);
    return result;
}

/* For each image j: the cross-check count (as cross_check_counts) and, per query row, the
 * nearest descriptor of image j (index within the image, first on ties) and the two smallest
 * distances (as nearest_two) -- one pass over the pairs instead of two. */
static PyObject *match_two(PyObject *self, PyObject *args)
{
    Py_buffer query, planes, offsets, out, two[3];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*w*", &query, &planes, &offsets, &out, &two[0], &two[1], &two[2]))
        return NULL;
    PyObject *result = image_passes(&query, &planes, &offsets, &out, two, "match_two");
    RELEASE(&query, &planes, &offsets, &out, &two[0], &two[1], &two[2]);
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
    work_t w;
    if (query.len % 32 != 0 || planes.len % 32 != 0 || out_idx.len < nq * 4 || out_d1.len < nq * 2 || out_d2.len < nq * 2)
        PyErr_SetString(PyExc_ValueError, "nearest_two: buffer sizes do not match");
    else if (work_alloc(&w, nq, nc)) {
        const level_t *L = LEVEL;
        Py_BEGIN_ALLOW_THREADS
        image_pass(L, (const uint64_t *)query.buf, nq, (const uint64_t *)planes.buf, nc, &w, PASS_TWO,
                   (int32_t *)out_idx.buf, (uint16_t *)out_d1.buf, (uint16_t *)out_d2.buf);
        Py_END_ALLOW_THREADS
        work_free(&w);
        result = Py_NewRef(Py_None);
    }
    RELEASE(&query, &planes, &out_idx, &out_d1, &out_d2);
    return result;
}

/* SSIM of nq (1 or 2) queries against every image: one pass per image, its own sums shared */
static PyObject *ssim_run(Py_buffer *query, Py_buffer *images, Py_buffer *out, int nq, const char *name)
{
    const Py_ssize_t plane = SIDE * SIDE;
    Py_ssize_t n = images->len / plane;
    for (int i = 0; i < nq; i++)
        if (query[i].len != plane || images->len % plane != 0 || out[i].len < n * (Py_ssize_t)sizeof(double)) {
            PyErr_Format(PyExc_ValueError, "%s: expects 256x256 uint8 images and a float64 output of n", name);
            return NULL;
        }
    query_stats *q = malloc(sizeof(query_stats) * (size_t)nq);
    if (!q)
        return PyErr_NoMemory();
    const query_stats *qs[2] = {q, q + (nq > 1)};
    double *scores[2] = {(double *)out[0].buf, (double *)out[nq - 1].buf};
    const level_t *L = LEVEL;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < nq; i++)
        L->prepare((const uint8_t *)query[i].buf, q + i);
    L->ssim(qs, nq, (const uint8_t *)images->buf, n, scores);
    Py_END_ALLOW_THREADS
    free(q);
    Py_RETURN_NONE;
}

static PyObject *ssim_scores(PyObject *self, PyObject *args)
{
    Py_buffer query, images, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &query, &images, &out))
        return NULL;
    PyObject *result = ssim_run(&query, &images, &out, 1, "ssim_scores");
    RELEASE(&query, &images, &out);
    return result;
}

static PyObject *ssim_pair(PyObject *self, PyObject *args)
{
    Py_buffer query[2], images, out[2];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &query[0], &query[1], &images, &out[0], &out[1]))
        return NULL;
    PyObject *result = ssim_run(query, &images, out, 2, "ssim_pair");
    RELEASE(&query[0], &query[1], &images, &out[0], &out[1]);
    return result;
}

/* For each image j: how many query descriptors have a catalog descriptor within `threshold`. */
static PyObject *count_close(PyObject *self, PyObject *args)
{
    Py_buffer query, planes, offsets, out;
    int threshold;
    if (!PyArg_ParseTuple(args, "y*y*y*iw*", &query, &planes, &offsets, &threshold, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t nq = query.len / 32, n = offsets.len / (Py_ssize_t)sizeof(int64_t) - 1, total = planes.len / 32, most;
    const int64_t *off = (const int64_t *)offsets.buf;
    work_t w;
    if (query.len % 32 != 0 || planes.len % 32 != 0 || n < 0 || out.len < n * (Py_ssize_t)sizeof(int32_t))
        PyErr_SetString(PyExc_ValueError, "count_close: buffer sizes do not match");
    else if (check_offsets(off, n, total, "count_close", &most) && work_alloc(&w, nq, most)) {
        const uint64_t *q = (const uint64_t *)query.buf, *p = (const uint64_t *)planes.buf;
        int32_t *counts = (int32_t *)out.buf;
        const level_t *L = LEVEL;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t j = 0; j < n; j++) {
            const int64_t nc = off[j + 1] - off[j];
            counts[j] = nc > 0 && nq > 0 && threshold >= 0 ? L->close(q, nq, p + 4 * off[j], nc, &w, (uint32_t)threshold) : 0;
        }
        Py_END_ALLOW_THREADS
        work_free(&w);
        result = Py_NewRef(Py_None);
    }
    RELEASE(&query, &planes, &offsets, &out);
    return result;
}

/* out[i] = max(query_a . row_i, query_b . row_i) over bfloat16 rows of d (a multiple of 8) and float32 queries */
static PyObject *dot_max(PyObject *self, PyObject *args)
{
    Py_buffer rows, qa, qb, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &rows, &qa, &qb, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t d = qa.len / (Py_ssize_t)sizeof(float), n = d ? rows.len / (Py_ssize_t)sizeof(uint16_t) / d : 0;
    if (d % 8 != 0 || qb.len != qa.len || (d && rows.len % (d * (Py_ssize_t)sizeof(uint16_t)) != 0) ||
        out.len < n * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "dot_max: expects bfloat16 (uint16) rows of d (a multiple of 8), float32 queries of d, out of n");
        goto done;
    }
    const level_t *L = LEVEL;
    Py_BEGIN_ALLOW_THREADS
    L->dots((const uint16_t *)rows.buf, n, d, (const float *)qa.buf, (const float *)qb.buf, (float *)out.buf);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE(&rows, &qa, &qb, &out);
    return result;
}

/* out[i], which[i] = the best window of row i (region_body) */
static PyObject *region_max(PyObject *self, PyObject *args)
{
    Py_buffer rows, windows, scale, out, which;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &rows, &windows, &scale, &out, &which))
        return NULL;
    PyObject *result = NULL;
    int64_t m = scale.len / (Py_ssize_t)sizeof(float);
    int64_t d = m ? windows.len / (m * (Py_ssize_t)sizeof(int16_t)) : 0;
    int64_t n = d ? rows.len / d : 0;
    int16_t *row = NULL;
    if (m == 0 || d == 0 || windows.len != m * d * (Py_ssize_t)sizeof(int16_t) || rows.len != n * d ||
        out.len < n * (Py_ssize_t)sizeof(float) || which.len < n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "region_max: expects int8 rows of d, m int16 windows of d, m float32 scales, "
                                          "float32 out and int32 which of n");
        goto done;
    }
    row = malloc((size_t)d * sizeof(int16_t));
    if (!row) {
        PyErr_NoMemory();
        goto done;
    }
    const level_t *L = LEVEL;
    Py_BEGIN_ALLOW_THREADS
    L->regions((const int8_t *)rows.buf, n, (const int16_t *)windows.buf, m, d, (const float *)scale.buf, row,
               (float *)out.buf, (int32_t *)which.buf);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(row);
    RELEASE(&rows, &windows, &scale, &out, &which);
    return result;
}

/* out[g * n + i] = max over the windows of group g (those from ends[g - 1] to ends[g]) of
 * (row_i . window_j) * scale[j]: region_body's numbers, without the window's index */
static PyObject *region_group_max(PyObject *self, PyObject *args)
{
    Py_buffer rows, windows, scale, ends, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*", &rows, &windows, &scale, &ends, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t m = scale.len / (Py_ssize_t)sizeof(float), groups = ends.len / (Py_ssize_t)sizeof(int64_t);
    int64_t d = m ? windows.len / (m * (Py_ssize_t)sizeof(int16_t)) : 0;
    int64_t n = d ? rows.len / d : 0;
    const int64_t *end = (const int64_t *)ends.buf;
    int ordered = groups > 0 && end[groups - 1] == m;
    for (int64_t g = 0; g < groups && ordered; g++)
        ordered = end[g] > (g ? end[g - 1] : 0);
    int16_t *row = NULL;
    int32_t *which = NULL;
    if (m == 0 || d == 0 || windows.len != m * d * (Py_ssize_t)sizeof(int16_t) || rows.len != n * d || !ordered ||
        out.len < groups * n * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "region_group_max: expects int8 rows of d, m int16 windows of d, m float32 "
                                          "scales, int64 group ends rising to m, float32 out of groups x n");
        goto done;
    }
    row = malloc((size_t)d * sizeof(int16_t));
    which = malloc((size_t)(n + 1) * sizeof(int32_t));
    if (!row || !which) {
        PyErr_NoMemory();
        goto done;
    }
    const level_t *L = LEVEL;
    float *o = (float *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    int done_fast = 0;
#if defined(HK_X86)
    if (L->regions == regions_vnni)
        done_fast = group_max_vnni((const int8_t *)rows.buf, n, (const int16_t *)windows.buf, d, (const float *)scale.buf,
                                   end, groups, o);
#endif
    for (int64_t g = 0; g < groups && !done_fast; g++) {
        const int64_t lo = g ? end[g - 1] : 0;
        L->regions((const int8_t *)rows.buf, n, (const int16_t *)windows.buf + lo * d, end[g] - lo, d,
                   (const float *)scale.buf + lo, row, o + g * n, which);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(row);
    free(which);
    RELEASE(&rows, &windows, &scale, &ends, &out);
    return result;
}

/* out[i], which[i] = the best template position of thumbnail i (crop_group) */
static PyObject *crop_max(PyObject *self, PyObject *args)
{
    Py_buffer rows, taps, sizes, sums, scale, out, which;
    Py_ssize_t side;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*y*w*w*", &rows, &side, &taps, &sizes, &sums, &scale, &out, &which))
        return NULL;
    PyObject *result = NULL;
    crop_work *w = NULL;
    int64_t m = scale.len / (Py_ssize_t)sizeof(float), d = (int64_t)side * side, n = d ? rows.len / d : 0;
    int64_t total = 0, ok = side > 0 && side <= CROP_SIDE_MAX && rows.len == n * d &&
                            sizes.len == m * (Py_ssize_t)sizeof(int32_t) && sums.len == sizes.len &&
                            out.len >= n * (Py_ssize_t)sizeof(float) && which.len >= n * (Py_ssize_t)sizeof(int32_t);
    for (int64_t j = 0; ok && j < m; j++) {
        int64_t s = ((const int32_t *)sizes.buf)[j];
        ok = s > 0 && s <= side && s <= CROP_SIZE_MAX;
        total += s * s;
    }
    if (!ok || total > CROP_TAPS_MAX || taps.len != total * (Py_ssize_t)sizeof(int16_t)) {
        PyErr_SetString(PyExc_ValueError, "crop_max: expects int8 rows of side*side (side <= 32), int16 taps of the "
                                          "m templates (4096 in all), int32 sizes (1..min(side, 12)) and sums of m, float32 scale of m, "
                                          "float32 out and int32 which of n");
        goto done;
    }
    w = aligned_alloc(64, sizeof(crop_work)); /* a multiple of 64 bytes */
    if (w)
        memset(w, 0, sizeof(crop_work)); /* what a block reads past the last row */
    if (!w) {
        PyErr_NoMemory();
        goto done;
    }
    for (int64_t k = 0; k < total; k++)
        w->taps[k] = (float)((const int16_t *)taps.buf)[k];
    const level_t *L = LEVEL;
    Py_BEGIN_ALLOW_THREADS
    L->crops((const int8_t *)rows.buf, n, side, w->taps, (const int32_t *)sizes.buf,
             (const int32_t *)sums.buf, (const float *)scale.buf, m, w, (float *)out.buf, (int32_t *)which.buf);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(w);
    RELEASE(&rows, &taps, &sizes, &sums, &scale, &out, &which);
    return result;
}

static PyObject *use(PyObject *module, PyObject *arg);

static int hash_shape(Py_buffer *bits, int64_t tables, int64_t *nbits, const char *name)
{
    if (tables < 1 || tables > HASH_MAX_TABLES || bits->len % (Py_ssize_t)(tables * sizeof(int32_t)) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: expects 1 to %d tables of int32 bit positions", name, HASH_MAX_TABLES);
        return 0;
    }
    *nbits = bits->len / (Py_ssize_t)(tables * sizeof(int32_t));
    const int32_t *b = (const int32_t *)bits->buf;
    if (*nbits < 1 || *nbits > HASH_MAX_BITS) {
        PyErr_Format(PyExc_ValueError, "%s: keys of 1 to %d bits", name, HASH_MAX_BITS);
        return 0;
    }
    for (int64_t i = 0; i < tables * *nbits; i++)
        if (b[i] < 0 || b[i] > 255) {
            PyErr_Format(PyExc_ValueError, "%s: bit positions are 0 to 255", name);
            return 0;
        }
    return 1;
}

/* pack_keys(planes, offsets, bits, tables, out): the keys of every packed descriptor, in order */
static PyObject *pack_keys(PyObject *self, PyObject *args)
{
    Py_buffer planes, offsets, bits, out;
    int64_t tables, nbits;
    if (!PyArg_ParseTuple(args, "y*y*y*Lw*", &planes, &offsets, &bits, &tables, &out))
        return NULL;
    PyObject *result = NULL;
    if (!hash_shape(&bits, tables, &nbits, "pack_keys"))
        goto done;
    int64_t n = offsets.len / (Py_ssize_t)sizeof(int64_t) - 1, total = planes.len / 32;
    const int64_t *off = (const int64_t *)offsets.buf;
    if (planes.len % 32 != 0 || n < 0 || out.len < total * tables * (Py_ssize_t)sizeof(uint16_t)) {
        PyErr_SetString(PyExc_ValueError, "pack_keys: buffer sizes do not match");
        goto done;
    }
    int64_t most;
    if (!check_offsets(off, n, total, "pack_keys", &most))
        goto done;
    const uint64_t *p = (const uint64_t *)planes.buf;
    uint16_t *o = (uint16_t *)out.buf;
    key_lookup *lk = malloc(sizeof(key_lookup));
    if (!lk) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    key_lookup_init(lk, (const int32_t *)bits.buf, tables, nbits);
    for (int64_t j = 0; j < n; j++) {
        const int64_t lo = off[j], nc = off[j + 1] - off[j];
        for (int64_t k = 0; k < nc; k++) {
            const uint64_t *pj = p + 4 * lo;
            uint64_t words[4] = {pj[k], pj[nc + k], pj[2 * nc + k], pj[3 * nc + k]};
            keys_by_lookup(lk, words, tables, o + (lo + k) * tables);
        }
    }
    Py_END_ALLOW_THREADS
    free(lk);
    result = Py_NewRef(Py_None);
done:
    RELEASE(&planes, &offsets, &bits, &out);
    return result;
}

/* hashed_close(query, query_keys, planes, offsets, keys, tables, nbits, threshold, out) */
static PyObject *hashed_close(PyObject *self, PyObject *args)
{
    Py_buffer query, qkeys, groups_of, planes, offsets, keys, out;
    int64_t groups, tables, nbits;
    int threshold;
    if (!PyArg_ParseTuple(args, "y*y*y*Ly*y*y*LLiw*", &query, &qkeys, &groups_of, &groups, &planes, &offsets, &keys,
                          &tables, &nbits, &threshold, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t nq = query.len / 32, n = offsets.len / (Py_ssize_t)sizeof(int64_t) - 1, total = planes.len / 32;
    const int64_t *off = (const int64_t *)offsets.buf;
    if (tables < 1 || tables > HASH_MAX_TABLES || nbits < 1 || nbits > HASH_MAX_BITS || nq > 32767 ||
        threshold < 0 || groups < 1 || groups > HASH_MAX_GROUPS) {
        PyErr_SetString(PyExc_ValueError, "hashed_close: 1-8 tables of 1-16 bits, at most 32767 query rows in 1-16 "
                                          "groups, a threshold >= 0");
        goto done;
    }
    if (query.len % 32 != 0 || planes.len % 32 != 0 || n < 0 || qkeys.len < nq * tables * (Py_ssize_t)sizeof(uint16_t) ||
        groups_of.len < nq || keys.len < total * tables * (Py_ssize_t)sizeof(uint16_t) ||
        out.len < n * groups * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "hashed_close: buffer sizes do not match");
        goto done;
    }
    const uint16_t *qk = (const uint16_t *)qkeys.buf, *ck = (const uint16_t *)keys.buf;
    const uint8_t *group = (const uint8_t *)groups_of.buf;
    for (int64_t i = 0; i < nq * tables; i++)
        if (qk[i] >> nbits) {
            PyErr_SetString(PyExc_ValueError, "hashed_close: a query key has more bits than the keys");
            goto done;
        }
    for (int64_t i = 0; i < nq; i++)
        if (group[i] >= groups) {
            PyErr_SetString(PyExc_ValueError, "hashed_close: a query row's group is past the groups");
            goto done;
        }
    int64_t most;
    if (!check_offsets(off, n, total, "hashed_close", &most))
        goto done;
    hash_work w;
    if (!hash_work_alloc(&w, tables, nbits, nq))
        goto done;
    const level_t *L = LEVEL;
    int wide_key; /* checked in the one pass over the keys, not in a pass of its own */
    Py_BEGIN_ALLOW_THREADS
    wide_key = L->hashed((const uint64_t *)query.buf, nq, qk, group, groups, (const uint64_t *)planes.buf, off, n, ck,
                         tables, nbits, (uint32_t)threshold, &w, (int32_t *)out.buf);
    Py_END_ALLOW_THREADS
    hash_work_free(&w);
    if (wide_key) {
        PyErr_SetString(PyExc_ValueError, "hashed_close: a catalog key has more bits than the keys");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    RELEASE(&query, &qkeys, &groups_of, &planes, &offsets, &keys, &out);
    return result;
}

static PyMethodDef methods[] = {
    {"pack_keys", pack_keys, METH_VARARGS,
     "pack_keys(planes, offsets, bits, tables, out) -> None\n\n"
     "planes and offsets as cross_check_counts; bits: int32[tables * nbits] bit positions (0-255); out:\n"
     "writable uint16[total * tables]: bit j of key t of descriptor i is bit bits[t * nbits + j] of it\n"
     "(bit b of its 64-bit word b / 64)."},
    {"hashed_close", hashed_close, METH_VARARGS,
     "hashed_close(query, query_keys, group, groups, planes, offsets, keys, tables, nbits, threshold, out) -> None\n\n"
     "out[j * groups + g] = how many query rows of group g (group: uint8[nq], each row's) share a key (in\n"
     "one of the tables) with a descriptor of image j within threshold bits; keys and query_keys from pack_keys."},
    {"cross_check_counts", cross_check_counts, METH_VARARGS,
     "cross_check_counts(query, planes, offsets, out) -> None\n\n"
     "query: nq x 32 bytes; planes: per image j, rows offsets[j]..offsets[j+1] stored as four\n"
     "planes of 64-bit words; offsets: int64[n+1]; out: writable int32[n] of match counts."},
    {"ssim_scores", ssim_scores, METH_VARARGS,
     "ssim_scores(query, images, out) -> None\n\n"
     "query: 256x256 uint8; images: n x 256 x 256 uint8; out: writable float64[n]."},
    {"ssim_pair", ssim_pair, METH_VARARGS,
     "ssim_pair(query_a, query_b, images, out_a, out_b) -> None\n\n"
     "ssim_scores of two queries in one pass over the images (each image's own sums shared)."},
    {"count_close", count_close, METH_VARARGS,
     "count_close(query, planes, offsets, threshold, out) -> None\n\n"
     "out[j] = number of query descriptors with a descriptor of image j within threshold bits."},
    {"nearest_two", nearest_two, METH_VARARGS,
     "nearest_two(query, planes, out_idx, out_d1, out_d2) -> None\n\n"
     "For one image's planes: nearest index (int32) and two smallest distances (uint16) per query row."},
    {"match_two", match_two, METH_VARARGS,
     "match_two(query, planes, offsets, out, out_idx, out_d1, out_d2) -> None\n\n"
     "cross_check_counts and nearest_two in one pass: out[j] = cross-check count with image j;\n"
     "out_idx/out_d1/out_d2[j * nq + i] = nearest_two of query row i in image j."},
    {"region_max", region_max, METH_VARARGS,
     "region_max(rows, windows, scale, out, which) -> None\n\n"
     "rows: n x d int8; windows: m x d int16 (int8 values); scale: float32[m]; out: writable float32[n] of\n"
     "max_j (row . window_j) * scale[j]; which: writable int32[n], the first such j."},
    {"region_group_max", region_group_max, METH_VARARGS,
     "region_group_max(rows, windows, scale, ends, out) -> None\n\n"
     "rows: n x d int8; windows: m x d int16 (int8 values) in groups, group g ending at ends[g] (int64, rising\n"
     "to m); scale: float32[m]; out: writable float32[groups * n], out[g * n + i] = max over group g's\n"
     "windows of (row_i . window_j) * scale[j]."},
    {"crop_max", crop_max, METH_VARARGS,
     "crop_max(rows, side, taps, sizes, sums, scale, out, which) -> None\n\n"
     "rows: n x side x side int8 thumbnails; taps: the m templates' int8 values (int16), template j\n"
     "sizes[j] x sizes[j] with sums[j] = its sum; scale: float32[m]; out: writable float32[n] of the\n"
     "best normalised correlation of a template with a window of the thumbnail, num * scale[j] /\n"
     "sqrt(variance); which: writable int32[n], j * side^2 + y * side + x of the first best."},
    {"dot_max", dot_max, METH_VARARGS,
     "dot_max(rows, query_a, query_b, out) -> None\n\n"
     "rows: n x d bfloat16 (uint16 bits); query_a, query_b: float32[d]; out: writable float32[n] of\n"
     "max(query_a . rows[i], query_b . rows[i]), the same order at every level."},
    {"use", use, METH_O,
     "use(level) -> str\n\n"
     "Switch to another level of `levels` ('auto': the fastest); returns the previous one.\n"
     "ValueError if the level is unknown or this CPU lacks it."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Seed scoring kernels with run-time CPU dispatch.\n\n"
    "kernel: the level in use; levels: the levels this CPU supports, fastest first.\n"
    "HARMONY_KERNEL=<level> at import forces a level (RuntimeError if unknown or unsupported);\n"
    "use(level) switches later calls to another.",
    -1, methods, NULL, NULL, NULL, NULL};

/* "a, b, c": every level of this architecture, or only those this CPU supports */
static void join_levels(char *buf, size_t size, int supported_only)
{
    buf[0] = '\0';
    for (int i = 0; i < NLEVELS; i++) {
        if (supported_only && !LEVELS[i].supported())
            continue;
        if (buf[0])
            strncat(buf, ", ", size - strlen(buf) - 1);
        strncat(buf, LEVELS[i].name, size - strlen(buf) - 1);
    }
}

/* The level named `want` (NULL, "" or "auto": the fastest this CPU supports); NULL with `exc`
 * set when the name is unknown or the CPU lacks that level.  `what` names the source in the
 * message ("HARMONY_KERNEL" or "use()"). */
static const level_t *find_level(const char *want, PyObject *exc, const char *what)
{
    char known[128], supported[128];
    if (want == NULL || want[0] == '\0' || strcmp(want, "auto") == 0) {
        for (int i = 0; i < NLEVELS; i++)
            if (LEVELS[i].supported())
                return &LEVELS[i];
        return &LEVELS[NLEVELS - 1]; /* portable: always supported */
    }
    join_levels(known, sizeof known, 0);
    join_levels(supported, sizeof supported, 1);
    for (int i = 0; i < NLEVELS; i++) {
        if (strcmp(want, LEVELS[i].name) != 0)
            continue;
        if (LEVELS[i].supported())
            return &LEVELS[i];
        PyErr_Format(exc, "%s=%.40s: this CPU does not support that kernel level; supported here: %s (or 'auto')",
                     what, want, supported);
        return NULL;
    }
    PyErr_Format(exc, "%s=%.40s is not a kernel level; levels on " ARCH_NAME ": %s; supported here: %s (or 'auto')",
                 what, want, known, supported);
    return NULL;
}

/* use(level) -> str: switch every later call to `level` ("auto": the fastest); returns the
 * level in use before.  Calls already running keep the level they started with. */
static PyObject *use(PyObject *module, PyObject *arg)
{
    const char *want = PyUnicode_AsUTF8(arg);
    if (want == NULL)
        return NULL;
    const level_t *chosen = find_level(want, PyExc_ValueError, "use(level)");
    if (chosen == NULL)
        return NULL;
    PyObject *before = PyUnicode_FromString(LEVEL->name);
    if (before == NULL)
        return NULL;
    if (PyModule_AddStringConstant(module, "kernel", chosen->name) < 0) {
        Py_DECREF(before);
        return NULL;
    }
    LEVEL = chosen;
    return before;
}

PyMODINIT_FUNC PyInit__kernels(void)
{
    /* RuntimeError, not ImportError: kernels.py falls back to numpy on ImportError, which would
     * hide a mistyped HARMONY_KERNEL behind a 5-10x slowdown */
    const level_t *chosen = find_level(getenv("HARMONY_KERNEL"), PyExc_RuntimeError, "HARMONY_KERNEL");
    if (chosen == NULL)
        return NULL;
    LEVEL = chosen;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    int count = 0;
    for (int i = 0; i < NLEVELS; i++)
        count += LEVELS[i].supported() != 0;
    PyObject *levels = PyTuple_New(count);
    if (levels == NULL)
        goto fail;
    for (int i = 0, at = 0; i < NLEVELS; i++) {
        if (!LEVELS[i].supported())
            continue;
        PyObject *name = PyUnicode_FromString(LEVELS[i].name);
        if (name == NULL) {
            Py_DECREF(levels);
            goto fail;
        }
        PyTuple_SET_ITEM(levels, at++, name);
    }
    if (PyModule_AddObject(m, "levels", levels) < 0) {
        Py_DECREF(levels);
        goto fail;
    }
    if (PyModule_AddStringConstant(m, "kernel", chosen->name) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
