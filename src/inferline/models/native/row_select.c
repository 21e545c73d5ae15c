/*
 * Per-row selections over logits: the indices of each row's k largest values (the LM
 * head's exact candidates) and each row's argmax (the greedy choice).
 *
 *   row_topk(m, n, k, x, out)   x [m, n] float32 -> out [m, k] int64, in no set order
 *   row_argmax(m, n, x, out)    x [m, n] float32 -> out [m] int64, as torch.argmax
 *   rescore_candidates(m, k, n, cols, weight, codes, scale, offset, group, x, ids, logits)
 *       logits [m, n] float32: entries
 *       ids [m, k] of each row set to the float32 dot product of the table's row ids[r, c]
 *       (float32 rows, or GGUF blocks decoded as `block_rows.py`) with x[r] ([m, cols]):
 *       the exact logits of the head's candidates, without gathering the rows
 *
 * torch.topk: 1.3 ms for 32 rows of SmolLM2's 49,152 logits (2 threads); here 0.4, the time
 * torch takes to read them for a max. A row is compared 16 values at a time against a
 * threshold, the k-th largest value of those kept so far; only the few above it are kept
 * (about k ln(n / k) of n for values in random order). NaN ranks lowest (torch ranks it
 * first); among equal values at the k-th place any may be chosen. A thread a row.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* The head's exact table: float32 rows [n, cols] (weight), or int8 codes [n, cols] with a
 * float32 scale (and offset, or NULL) per `group` values (`BlockRows`). */
typedef struct {
    const float *weight;
    const int8_t *codes;
    const float *scale, *offset;
    int64_t cols;
    int group;
} RescoreTable;

/* Rearranges (values, ids) [n] so that the k largest come first (quickselect). */
static void keep_largest(float *values, int64_t *ids, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float a = values[lo], b = values[(lo + hi) / 2], c = values[hi];
        float pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int i = lo, j = hi;
        while (i <= j) {
            while (values[i] > pivot) i++;
            while (values[j] < pivot) j--;
            if (i <= j) {
                float v = values[i];
                int64_t id = ids[i];
                values[i] = values[j], ids[i] = ids[j];
                values[j] = v, ids[j] = id;
                i++, j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
}

/* The smallest of values [k]. */
static float smallest(const float *values, int k) {
    float least = values[0];
    for (int i = 1; i < k; i++) least = values[i] < least ? values[i] : least;
    return least;
}

/* Values above the threshold go to a buffer of 4k; a full buffer keeps its k largest
 * (the threshold rises to the least of them): O(n) whatever the order of the values. */
static void topk_row(int64_t n, int k, const float *x, int64_t *out, float *values,
                     int64_t *ids) {
    int room = 4 * k, count = 0;
    float threshold = -INFINITY;
#define TAKE(J)                                                                            \
    do {                                                                                   \
        if (count == room) {                                                               \
            keep_largest(values, ids, count, k);                                           \
            count = k, threshold = smallest(values, k);                                    \
        }                                                                                  \
        if (x[J] > threshold) values[count] = x[J], ids[count++] = (J);                    \
    } while (0)
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + 16 <= n; j += 16) {
        __mmask16 above = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + j), _mm512_set1_ps(threshold),
                                             _CMP_GT_OQ);
        while (above) {
            int64_t at = j + __builtin_ctz(above);
            above &= (__mmask16)(above - 1);
            TAKE(at);
        }
    }
#endif
    for (; j < n; j++)
        if (x[j] > threshold) TAKE(j);
#undef TAKE
    if (count > k) keep_largest(values, ids, count, k);
    for (j = 0; count < k; j++) /* fewer than k values above -inf: -inf and NaN fill in */
        if (!(x[j] > -INFINITY)) ids[count++] = j;
    for (int i = 0; i < k; i++) out[i] = ids[i];
}

/* Returns -1 (nothing written) unless 0 < k <= n, -2 without memory. The kept values sit
 * on the heap: 12 bytes x 4k a thread, whatever k is. */
int row_topk(int64_t m, int64_t n, int k, const float *x, int64_t *out) {
    if (k <= 0 || k > n) return -1;
    int failed = 0;
#pragma omp parallel if (m > 1) reduction(| : failed)
    {
        float *values = malloc(sizeof(float) * 4 * (size_t)k);
        int64_t *ids = malloc(sizeof(int64_t) * 4 * (size_t)k);
        failed = !values || !ids;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r++)
            if (!failed) topk_row(n, k, x + r * n, out + r * k, values, ids);
        free(values);
        free(ids);
    }
    return failed ? -2 : 0;
}

/* The first index of the row's largest value (of its first NaN where it has one, as
 * torch.argmax). */
static int64_t argmax_row(int64_t n, const float *x) {
    int64_t j = 0;
    float best = -INFINITY;
#if defined(__AVX512F__)
    __m512 top = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 v = _mm512_loadu_ps(x + j);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        top = _mm512_max_ps(v, top);
    }
    if (nan) j = 0, best = NAN; /* the scalar loop finds the first NaN */
    else best = _mm512_reduce_max_ps(top);
#endif
    for (; j < n; j++) /* the tail, or everything without AVX-512 or with a NaN */
        if (x[j] != x[j] || (best == best && x[j] > best)) {
            best = x[j];
            if (best != best) return j;
        }
    for (j = 0; j < n; j++)
        if (x[j] == best) return j;
    return 0; /* all -inf: torch returns 0 too */
}

void row_argmax(int64_t m, int64_t n, const float *x, int64_t *out) {
#pragma omp parallel for schedule(static) if (m > 1)
    for (int64_t r = 0; r < m; r++) out[r] = argmax_row(n, x + r * n);
}

/* The float32 dot product of row id of the table with x (h floats): the table's float32
 * rows (weight) or its blocks' decoded values, code * scale (+ offset) per group of
 * `group` values as `block_rows.py` decodes them (a product, then a sum: the same floats),
 * summed in 16 lanes and then across them. */
static float table_dot(const RescoreTable *t, int64_t id, const float *x) {
    const int64_t h = t->cols;
    int64_t i = 0;
    float total = 0.0f;
    const float *w = t->weight ? t->weight + id * h : NULL;
    const int8_t *codes = t->codes ? t->codes + id * h : NULL;
    const float *scale = t->scale ? t->scale + id * (h / t->group) : NULL;
    const float *offset = t->offset ? t->offset + id * (h / t->group) : NULL;
#if defined(__AVX512F__)
    if (w || t->group % 16 == 0) {
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (; i + 16 <= h; i += 16) {
            __m512 v;
            if (w) {
                v = _mm512_loadu_ps(w + i);
            } else {
                __m128i c = _mm_loadu_si128((const __m128i *)(codes + i));
                v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), _mm512_set1_ps(scale[i / t->group]));
                if (offset) v = _mm512_add_ps(v, _mm512_set1_ps(offset[i / t->group]));
            }
            acc[(i / 16) & 1] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + i), acc[(i / 16) & 1]);
        }
        total = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
#endif
    for (; i < h; i++) {
        float v = w ? w[i] : (float)codes[i] * scale[i / t->group];
        if (!w && offset) v += offset[i / t->group];
        total += v * x[i];
    }
    return total;
}

void rescore_candidates(int64_t m, int k, int64_t n, int64_t cols, const float *weight,
                        const int8_t *codes, const float *scale, const float *offset, int group,
                        const float *x, const int64_t *ids, float *logits) {
    const RescoreTable table = {weight, codes, scale, offset, cols, group > 0 ? group : 1};
#pragma omp parallel for schedule(static) if (m > 1)
    for (int64_t r = 0; r < m; r++)
        for (int c = 0; c < k; c++) {
            int64_t id = ids[r * k + c];
            logits[r * n + id] = table_dot(&table, id, x + r * cols);
        }
}
