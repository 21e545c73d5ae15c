/*
 * Prefill attention over an int8 cache on AVX-512 VNNI int16 dot products (vpdpwssd), for
 * CPUs without AMX (AMD Zen 4, Intel Ice Lake / Cascade Lake): prefill_attention.c's task
 * (16 query rows of one chunk in the lanes of a vector, one kv head, all its query heads)
 * with both products on integers instead of float32 FMAs.
 *
 * - Scores: the queries (times the scale / ln 2: scores in log2 units) are rounded to int16
 *   with a scale per row and head (max |q| / 32767: within 2^-16 of the row's largest, as
 *   close as the AMX kernel's bf16 high + remainder parts); the cache's int8 keys are exact
 *   in int16. One vpdpwssd multiplies two dims of 16 rows by a key's broadcast pair: 32 a
 *   key and head at head_dim 64, where float32 takes 64 FMAs; the exact int32 sum times
 *   the row's and the key's scales is the score.
 * - Values: each run's softmax weights times their value row's scale are rounded to int16,
 *   each row's largest to 32767 (so a row's roundings depend on the keys it sees alone:
 *   the same in any task), paired by keys, and multiply the int8 values of key pairs: 32
 *   vpdpwssd a key and head, not 64 FMAs; a run's int32 sums enter the float32 output
 *   (times the row's largest / 32767) when the online softmax rescales it. The softmax's
 *   sums use the float32 weights.
 *
 * The integer sums are exact (|sum| < 2^31: 32 keys x 32767 x 127, head_dim 128 x 32767 x
 * 127); the error is the two roundings to int16: a weighted value row's is at most 2^-16 of
 * its row's largest in the run, a query's 2^-16 of its row's largest |q|.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_common.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define I16_BUILT 1
#define ROWS TASK_ROWS /* query rows per task: one lane each */
#define RUN 32       /* keys per softmax update (two halves of 16 for the scores) */
#define MAX_DIM 128
#define I16_MAX_GROUP 8 /* as prefill_attention.c's MAX_GROUP_PREFILL */

static int i16_attention_on = 0;

/* A run's keys and values, packed for vpdpwssd. */
typedef struct {
    int16_t keys[RUN][MAX_DIM];       /* int8 keys as int16 (a pair of dims: one int32) */
    int32_t values[RUN / 2][MAX_DIM]; /* values of keys 2p, 2p + 1 as an int16 pair per dim */
    float key_scales[RUN], value_scales[RUN];
} Run;

/* Slot of position pos through the chunk's block table. */
static inline int64_t slot_of(const PagedAttention *p, const int32_t *table, int pos) {
    return (int64_t)table[pos / p->block_size] * p->block_size + pos % p->block_size;
}

/* Keys and values of positions [key0, key0 + n) of kv head kvh into run (keys past n are
 * zero, values past n zero). */
ALWAYS_INLINE void pack_run(const int C, const PagedAttention *p, const int32_t *table,
                            int key0, int n, int kvh, Run *run) {
    const int D = C * 16;
    const int8_t *k8 = p->k_cache, *v8 = p->v_cache;
    /* int16 positions of (a[i], b[i]) pairs: a's 16 values of a half, interleaved with b's */
    static const int16_t low[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i lo = _mm512_loadu_si512(low), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int j = 0; j < RUN; j += 2) {
        __m512i a[MAX_DIM / 32], b[MAX_DIM / 32];
        for (int half = 0; half < 2; half++) {
            int key = j + half;
            __m512i *dst = half ? b : a;
            if (key >= n) {
                for (int c = 0; c < D / 32; c++) dst[c] = _mm512_setzero_si512();
                memset(run->keys[key], 0, sizeof(int16_t) * (size_t)D);
                run->key_scales[key] = 0.0f, run->value_scales[key] = 0.0f;
                continue;
            }
            int64_t offset = slot_of(p, table, key0 + key) * p->slot_stride + (int64_t)kvh * p->head_stride;
            for (int c = 0; c < D / 32; c++) {
                __m256i k = _mm256_loadu_si256((const __m256i *)(k8 + offset + 32 * c));
                _mm512_storeu_si512(run->keys[key] + 32 * c, _mm512_cvtepi8_epi16(k));
                dst[c] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(v8 + offset + 32 * c)));
            }
            run->key_scales[key] = cache_row_scale(k8, offset, D);
            run->value_scales[key] = cache_row_scale(v8, offset, D);
        }
        for (int c = 0; c < D / 32; c++) {
            _mm512_storeu_si512(run->values[j / 2] + 32 * c, _mm512_permutex2var_epi16(a[c], lo, b[c]));
            _mm512_storeu_si512(run->values[j / 2] + 32 * c + 16, _mm512_permutex2var_epi16(a[c], hi, b[c]));
        }
    }
}

/* Scores (log2 units) of keys [j0, j0 + 16) of the run for one head's 16 rows into s. */
ALWAYS_INLINE void score_half(const int C, const int32_t *qt, __m512 q_scale, const Run *run,
                              int j0, __m512 *s) {
    const int P = C * 8; /* dim pairs */
    __m512i acc[16];
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_si512();
    for (int i = 0; i < P; i++) {
        __m512i q = _mm512_loadu_si512(qt + 16 * i);
        for (int j = 0; j < 16; j++) {
            int32_t pair;
            memcpy(&pair, run->keys[j0 + j] + 2 * i, sizeof pair);
            acc[j] = _mm512_dpwssd_epi32(acc[j], q, _mm512_set1_epi32(pair));
        }
    }
    for (int j = 0; j < 16; j++)
        s[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[j]),
                             _mm512_mul_ps(q_scale, _mm512_set1_ps(run->key_scales[j0 + j])));
}

/* One head of a task over a run of n keys at key0: scores, online softmax, values. qt the
 * head's int16 query pairs [pairs][16], q_scale its rows' scales; max, sum [16] and out_t
 * [head_dim][16] the running state. */
ALWAYS_INLINE void head_run(const int C, const int32_t *qt, __m512 q_scale, const Run *run,
                            int n, int key0, __m512i row_pos, float *max, float *sum,
                            float *out_t) {
    const int D = C * 16;
    __m512 s[RUN];
    score_half(C, qt, q_scale, run, 0, s);
    if (n > 16)
        score_half(C, qt, q_scale, run, 16, s + 16);
    else
        for (int j = 16; j < RUN; j++) s[j] = _mm512_setzero_ps();
    __m512 old = _mm512_loadu_ps(max), top = old;
    __mmask16 visible[RUN];
    for (int j = 0; j < RUN; j++) {
        /* lane i sees key key0 + j when its position is at least that */
        visible[j] = j < n ? _mm512_cmpge_epi32_mask(row_pos, _mm512_set1_epi32(key0 + j)) : 0;
        top = _mm512_mask_max_ps(top, visible[j], top, s[j]);
    }
    __m512 alpha = exp2_16(_mm512_sub_ps(old, top)); /* old = -inf: ~0, out_t is 0 */
    __m512 total = _mm512_mul_ps(_mm512_loadu_ps(sum), alpha);
    /* weights times their value row's scale (s reused), each row's largest to 32767: a
     * row's rounding depends on the keys it sees alone */
    __m512 largest = _mm512_set1_ps(1e-30f);
    for (int j = 0; j < RUN; j++) {
        __m512 e = _mm512_maskz_mov_ps(visible[j], exp2_16(_mm512_sub_ps(s[j], top)));
        total = _mm512_add_ps(total, e);
        s[j] = _mm512_mul_ps(e, _mm512_set1_ps(run->value_scales[j]));
        largest = _mm512_max_ps(largest, s[j]);
    }
    __m512 factor = _mm512_div_ps(_mm512_set1_ps(32767.0f), largest);
    __m512 unit = _mm512_div_ps(largest, _mm512_set1_ps(32767.0f));
    __m512i w[RUN / 2];
    for (int j = 0; j < RUN; j += 2) {
        __m512i w0 = _mm512_cvtps_epi32(_mm512_mul_ps(s[j], factor));
        __m512i w1 = _mm512_cvtps_epi32(_mm512_mul_ps(s[j + 1], factor));
        w[j / 2] = _mm512_mask_blend_epi16(0xAAAAAAAAu, w0, _mm512_slli_epi32(w1, 16));
    }
    _mm512_storeu_ps(max, top);
    _mm512_storeu_ps(sum, total);
    const int pairs = n > 16 ? RUN / 2 : 8; /* the pairs past n hold zero weights */
    for (int d = 0; d < D; d += 4) { /* 4 dims at once: independent accumulator chains */
        __m512i o[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
        for (int jp = 0; jp < pairs; jp++)
            for (int t = 0; t < 4; t++)
                o[t] = _mm512_dpwssd_epi32(o[t], w[jp], _mm512_set1_epi32(run->values[jp][d + t]));
        for (int t = 0; t < 4; t++) {
            __m512 prev = _mm512_mul_ps(_mm512_loadu_ps(out_t + (d + t) * 16), alpha);
            _mm512_storeu_ps(out_t + (d + t) * 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(o[t]), unit, prev));
        }
    }
}

/* A head's 16 query rows (times scale / ln 2) rounded to int16 pairs qt [pairs][16] (pair
 * p of row i in lane i: one 16 x 16 transpose a 16 pairs), their scales (max |q| / 32767 a
 * row) into q_scale. */
ALWAYS_INLINE void quantize_queries(const int C, const PagedAttention *p, int64_t first_row,
                                    int rows, int h, int32_t *qt, float *q_scale) {
    const int D = C * 16;
    float scale = p->scale * 1.44269504088896341f;
    int16_t q16[ROWS][MAX_DIM] __attribute__((aligned(64)));
    for (int i = 0; i < ROWS; i++) {
        const float *src = p->q + (first_row + (i < rows ? i : rows - 1)) * p->heads * D + h * D;
        __m512 top = _mm512_setzero_ps();
        for (int c = 0; c < C; c++) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(src + 16 * c)));
        float largest = larger(_mm512_reduce_max_ps(top) * scale, 1e-30f);
        q_scale[i] = largest / 32767.0f;
        __m512 factor = _mm512_set1_ps(scale * (32767.0f / largest));
        for (int c = 0; c < C; c++)
            _mm256_store_si256((__m256i *)(q16[i] + 16 * c),
                               _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + 16 * c), factor))));
    }
    for (int b = 0; b < D / 32; b++) { /* pairs 16 b .. 16 b + 15 */
        __m512i r[16];
        for (int i = 0; i < ROWS; i++) r[i] = _mm512_load_si512(q16[i] + 32 * b);
        transpose16(r);
        for (int j = 0; j < 16; j++) _mm512_storeu_si512(qt + 16 * (16 * b + j), r[j]);
    }
}

ALWAYS_INLINE void i16_task(const int C, const PagedAttention *p, const int64_t *chunk,
                            const int32_t *table, int r0, int kvh, void *out, int out_bf16) {
    const int D = C * 16, group = p->group;
    TaskRows t = task_rows(chunk, r0);
    int64_t first_row = t.first_row;
    int rows = t.rows, last_pos = t.last_pos;
    __m512i row_pos = _mm512_loadu_si512(t.pos);
    int32_t qt[I16_MAX_GROUP][MAX_DIM / 2 * ROWS] __attribute__((aligned(64)));
    float out_t[I16_MAX_GROUP][MAX_DIM * ROWS] __attribute__((aligned(64)));
    float q_scale[I16_MAX_GROUP][ROWS], max[I16_MAX_GROUP][ROWS], sum[I16_MAX_GROUP][ROWS];
    Run run __attribute__((aligned(64)));
    for (int g = 0; g < group; g++) {
        quantize_queries(C, p, first_row, rows, kvh * group + g, qt[g], q_scale[g]);
        for (int i = 0; i < ROWS; i++) max[g][i] = -INFINITY, sum[g][i] = 0.0f;
        memset(out_t[g], 0, sizeof(float) * (size_t)(D * ROWS));
    }
    for (int key0 = 0; key0 <= last_pos; key0 += RUN) {
        int n = last_pos + 1 - key0 < RUN ? last_pos + 1 - key0 : RUN;
        pack_run(C, p, table, key0, n, kvh, &run);
        for (int g = 0; g < group; g++) {
            __m512 qs = _mm512_loadu_ps(q_scale[g]);
            if (n == RUN) /* a constant count: the loops over keys unroll */
                head_run(C, qt[g], qs, &run, RUN, key0, row_pos, max[g], sum[g], out_t[g]);
            else
                head_run(C, qt[g], qs, &run, n, key0, row_pos, max[g], sum[g], out_t[g]);
        }
    }
    float row[MAX_DIM];
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < rows; i++) {
            float inv = 1.0f / sum[g][i];
            for (int d = 0; d < D; d++) row[d] = out_t[g][d * ROWS + i] * inv;
            store_span(out, (first_row + i) * p->heads * D + (int64_t)h * D, row, D, out_bf16);
        }
    }
}

/* Rows [r0, r0 + 16) of a chunk, kv head kvh, all its query heads (prefill_attention.c's
 * task; only where prefill_i16_handles). */
void prefill_task_i16(const PagedAttention *p, const int64_t *chunk, const int32_t *table, int r0,
                      int kvh, void *out, int out_bf16) {
    if (p->head_dim == 64)
        i16_task(4, p, chunk, table, r0, kvh, out, out_bf16);
    else
        i16_task(8, p, chunk, table, r0, kvh, out, out_bf16);
}
#else
#define I16_BUILT 0
static int i16_attention_on = 0;
void prefill_task_i16(const PagedAttention *p, const int64_t *chunk, const int32_t *table, int r0,
                      int kvh, void *out, int out_bf16) {
    (void)p, (void)chunk, (void)table, (void)r0, (void)kvh, (void)out, (void)out_bf16;
}
#endif

/* Switch the int16 kernel on or off; returns the setting in force (0 where not built). */
int prefill_attention_i16(int on) {
    i16_attention_on = on && I16_BUILT;
    return i16_attention_on;
}

/* 1 where prefill_task_i16 runs this cache and head layout. */
int prefill_i16_handles(int cache_kind, int head_dim, int group) {
    return i16_attention_on && cache_kind == CACHE_I8 && (head_dim == 64 || head_dim == 128) &&
           group <= 8;
}
