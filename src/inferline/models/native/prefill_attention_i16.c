/*
 * Prefill attention over an int8 cache on AVX-512 VNNI byte dot products (vpdpbusd), for
 * CPUs without AMX (AMD Zen 4, Intel Ice Lake / Cascade Lake): prefill_attention.c's task
 * (16 query rows of one chunk in the lanes of a vector, one kv head, all its query heads)
 * with both products on integers instead of float32 FMAs. (The file keeps the name of its
 * first version, which multiplied int16s; `i16_attention_on` switches it.)
 *
 * - Scores: the queries (times the scale / ln 2: scores in log2 units) are rounded to int8
 *   with a scale per row and head (max |q| / 127), as llama.cpp's q8_0 queries against a
 *   q8_0 cache; the cache's keys + 128 are bytes. One vpdpbusd multiplies four dims of 16
 *   rows by a key's broadcast quad: 16 a key and head at head_dim 64; the exact int32 sum
 *   less 128 x the row's sum of q, times the row's and the key's scales, is the score.
 * - Values: each run's softmax weights (a degree-3 exp2) times their value row's scale are
 *   rounded to bytes, each row's largest to 255 (so a row's roundings depend on the keys
 *   it sees alone: the same in any task), four keys to an int32, and multiply the int8
 *   values of four keys interleaved by bytes: 16 vpdpbusd a key and head; a run's int32
 *   sums enter the float32 output (times the row's largest / 255) when the online softmax
 *   rescales it. The softmax's sums use the float32 weights.
 *
 * Against the int16 version (both products on vpdpwssd, queries and weights rounded to
 * int16): SmolLM2's heads, one process alternating the two, 512 rows 0.79-0.82x, 1,088
 * rows 0.62-0.63x, 64 rows after 1,024 0.63x; a 512-token prefill offline 206-207 ->
 * 171-184 ms (p50, two alternations). Outputs move by up to 2.5 % of the largest value on
 * sharp softmaxes (the int16 version: 1.3e-4; the int8 cache itself: 1-3 %); perplexity
 * against fp32 on SmolLM2 1.0059 / 1.0051 -> 1.0042 / 1.0049, mean KL 0.0049 / 0.0050 ->
 * 0.0051 / 0.0051 (benchmarks/accuracy_agreement.py, gate/up int32 / bf16).
 *
 * The integer sums are exact (|sum| < 2^31: a run's 32 keys x 255 x 127; head_dim 128 x
 * 255 x 127).
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

/* A run's keys and values, packed for vpdpbusd. */
typedef struct {
    uint8_t keys[RUN][MAX_DIM];       /* int8 keys + 128 (four dims: one int32) */
    int32_t values[RUN / 4][MAX_DIM]; /* values of keys 4p .. 4p + 3 as int8 quads, dims in
                                         * `quad_dim` order */
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
    for (int j = 0; j < RUN; j += 4) {
        __m512i v[4][MAX_DIM / 64];
        for (int u = 0; u < 4; u++) {
            int key = j + u;
            if (key >= n) {
                for (int c = 0; c < D / 64; c++) v[u][c] = _mm512_setzero_si512();
                memset(run->keys[key], 0x80, (size_t)D); /* key 0 */
                run->key_scales[key] = 0.0f, run->value_scales[key] = 0.0f;
                continue;
            }
            int64_t offset = slot_of(p, table, key0 + key) * p->slot_stride + (int64_t)kvh * p->head_stride;
            for (int c = 0; c < D / 32; c++) {
                __m256i k = _mm256_loadu_si256((const __m256i *)(k8 + offset + 32 * c));
                _mm256_storeu_si256((__m256i *)(run->keys[key] + 32 * c), _mm256_xor_si256(k, _mm256_set1_epi8((char)0x80)));
            }
            for (int c = 0; c < D / 64; c++) v[u][c] = _mm512_loadu_si512(v8 + offset + 64 * c);
            run->key_scales[key] = cache_row_scale(k8, offset, D);
            run->value_scales[key] = cache_row_scale(v8, offset, D);
        }
        for (int c = 0; c < D / 64; c++) { /* the four rows' bytes interleaved: quad_dim order */
            __m512i ab_lo = _mm512_unpacklo_epi8(v[0][c], v[1][c]), ab_hi = _mm512_unpackhi_epi8(v[0][c], v[1][c]);
            __m512i cd_lo = _mm512_unpacklo_epi8(v[2][c], v[3][c]), cd_hi = _mm512_unpackhi_epi8(v[2][c], v[3][c]);
            int32_t *dst = run->values[j / 4] + 64 * c;
            _mm512_storeu_si512(dst, _mm512_unpacklo_epi16(ab_lo, cd_lo));
            _mm512_storeu_si512(dst + 16, _mm512_unpackhi_epi16(ab_lo, cd_lo));
            _mm512_storeu_si512(dst + 32, _mm512_unpacklo_epi16(ab_hi, cd_hi));
            _mm512_storeu_si512(dst + 48, _mm512_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
}

/* The dim at index i of a Run's value quads: unpacking within 128-bit lanes puts dim
 * 16 L + 4 m + e of a 64-dim block at 16 m + 4 L + e. */
static inline int quad_dim(int i) {
    int block = i & ~63, m = (i >> 4) & 3, lane = (i >> 2) & 3, e = i & 3;
    return block + 16 * lane + 4 * m + e;
}

/* Scores (log2 units) of keys [j0, j0 + 16) of the run for one head's 16 rows into s:
 * sum (k + 128) q - 128 sum q, exact. */
ALWAYS_INLINE void score_half(const int C, const int32_t *qt, __m512 q_scale, __m512i q_sum,
                              const Run *run, int j0, __m512 *s) {
    const int Q = C * 4; /* dim quads */
    __m512i acc[16];
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_si512();
    for (int i = 0; i < Q; i++) {
        __m512i q = _mm512_loadu_si512(qt + 16 * i);
        for (int j = 0; j < 16; j++) {
            int32_t quad;
            memcpy(&quad, run->keys[j0 + j] + 4 * i, sizeof quad);
            acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_set1_epi32(quad), q);
        }
    }
    for (int j = 0; j < 16; j++)
        s[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j], q_sum)),
                             _mm512_mul_ps(q_scale, _mm512_set1_ps(run->key_scales[j0 + j])));
}

/* One head of a task over a run of n keys at key0: scores, online softmax, values. qt the
 * head's int8 query quads [quads][16], q_scale its rows' scales, q_sum 128 x their sums;
 * max, sum [16] and out_t [head_dim][16] the running state. `masked` 0 where every row
 * sees every key of the run. */
ALWAYS_INLINE void head_run(const int C, const int masked, const int32_t *qt, __m512 q_scale,
                            __m512i q_sum, const Run *run, int n, int key0, __m512i row_pos,
                            float *max, float *sum, float *out_t) {
    const int D = C * 16;
    __m512 s[RUN];
    score_half(C, qt, q_scale, q_sum, run, 0, s);
    if (n > 16)
        score_half(C, qt, q_scale, q_sum, run, 16, s + 16);
    else
        for (int j = 16; j < RUN; j++) s[j] = _mm512_setzero_ps();
    __m512 old = _mm512_loadu_ps(max), top = old;
    __mmask16 visible[RUN];
    for (int j = 0; j < RUN; j++) {
        /* lane i sees key key0 + j when its position is at least that */
        visible[j] = !masked ? 0xFFFF : j < n ? _mm512_cmpge_epi32_mask(row_pos, _mm512_set1_epi32(key0 + j)) : 0;
        top = _mm512_mask_max_ps(top, visible[j], top, s[j]);
    }
    __m512 alpha = exp2_16(_mm512_sub_ps(old, top)); /* old = -inf: ~0, out_t is 0 */
    __m512 total = _mm512_mul_ps(_mm512_loadu_ps(sum), alpha);
    /* weights times their value row's scale (s reused), each row's largest to 255: a
     * row's rounding depends on the keys it sees alone */
    __m512 largest = _mm512_set1_ps(1e-30f);
    for (int j = 0; j < RUN; j++) {
        __m512 e = exp2_weight(_mm512_sub_ps(s[j], top));
        if (masked) e = _mm512_maskz_mov_ps(visible[j], e);
        total = _mm512_add_ps(total, e);
        s[j] = _mm512_mul_ps(e, _mm512_set1_ps(run->value_scales[j]));
        largest = _mm512_max_ps(largest, s[j]);
    }
    __m512 factor = _mm512_div_ps(_mm512_set1_ps(255.0f), largest);
    __m512 unit = _mm512_div_ps(largest, _mm512_set1_ps(255.0f));
    __m512i w[RUN / 4];
    for (int j = 0; j < RUN; j += 4) {
        __m512i w0 = _mm512_cvtps_epi32(_mm512_mul_ps(s[j], factor));
        __m512i w1 = _mm512_cvtps_epi32(_mm512_mul_ps(s[j + 1], factor));
        __m512i w2 = _mm512_cvtps_epi32(_mm512_mul_ps(s[j + 2], factor));
        __m512i w3 = _mm512_cvtps_epi32(_mm512_mul_ps(s[j + 3], factor));
        w[j / 4] = _mm512_or_si512(_mm512_or_si512(w0, _mm512_slli_epi32(w1, 8)),
                                   _mm512_or_si512(_mm512_slli_epi32(w2, 16), _mm512_slli_epi32(w3, 24)));
    }
    _mm512_storeu_ps(max, top);
    _mm512_storeu_ps(sum, total);
    const int quads = n > 16 ? RUN / 4 : 4; /* the quads past n hold zero weights */
    for (int d = 0; d < D; d += 4) { /* 4 dims at once: independent accumulator chains */
        __m512i o[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
        for (int jq = 0; jq < quads; jq++)
            for (int t = 0; t < 4; t++)
                o[t] = _mm512_dpbusd_epi32(o[t], w[jq], _mm512_set1_epi32(run->values[jq][d + t]));
        for (int t = 0; t < 4; t++) {
            float *dst = out_t + quad_dim(d + t) * 16;
            __m512 prev = _mm512_mul_ps(_mm512_loadu_ps(dst), alpha);
            _mm512_storeu_ps(dst, _mm512_fmadd_ps(_mm512_cvtepi32_ps(o[t]), unit, prev));
        }
    }
}

/* A head's 16 query rows (times scale / ln 2) rounded to int8 quads qt [quads][16] (quad
 * p of row i in lane i: one 16 x 16 transpose a 16 quads), their scales (max |q| / 127 a
 * row) into q_scale and 128 x their sums into q_sum. */
ALWAYS_INLINE void quantize_queries(const int C, const PagedAttention *p, int64_t first_row,
                                    int rows, int h, int32_t *qt, float *q_scale, int32_t *q_sum) {
    const int D = C * 16;
    float scale = p->scale * 1.44269504088896341f;
    int8_t q8[ROWS][MAX_DIM] __attribute__((aligned(64)));
    for (int i = 0; i < ROWS; i++) {
        const float *src = p->q + (first_row + (i < rows ? i : rows - 1)) * p->heads * D + h * D;
        __m512 top = _mm512_setzero_ps();
        for (int c = 0; c < C; c++) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(src + 16 * c)));
        float largest = larger(_mm512_reduce_max_ps(top) * scale, 1e-30f);
        q_scale[i] = largest / 127.0f;
        __m512 factor = _mm512_set1_ps(scale * (127.0f / largest));
        __m512i total = _mm512_setzero_si512();
        for (int c = 0; c < C; c++) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + 16 * c), factor));
            total = _mm512_add_epi32(total, v);
            _mm_store_si128((__m128i *)(q8[i] + 16 * c), _mm512_cvtsepi32_epi8(v));
        }
        q_sum[i] = 128 * _mm512_reduce_add_epi32(total);
    }
    for (int b = 0; b < D / 64; b++) { /* quads 16 b .. 16 b + 15 */
        __m512i r[16];
        for (int i = 0; i < ROWS; i++) r[i] = _mm512_load_si512(q8[i] + 64 * b);
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
    int32_t qt[I16_MAX_GROUP][MAX_DIM / 4 * ROWS] __attribute__((aligned(64)));
    int32_t q_sum[I16_MAX_GROUP][ROWS];
    float out_t[I16_MAX_GROUP][MAX_DIM * ROWS] __attribute__((aligned(64)));
    float q_scale[I16_MAX_GROUP][ROWS], max[I16_MAX_GROUP][ROWS], sum[I16_MAX_GROUP][ROWS];
    Run run __attribute__((aligned(64)));
    for (int g = 0; g < group; g++) {
        quantize_queries(C, p, first_row, rows, kvh * group + g, qt[g], q_scale[g], q_sum[g]);
        for (int i = 0; i < ROWS; i++) max[g][i] = -INFINITY, sum[g][i] = 0.0f;
        memset(out_t[g], 0, sizeof(float) * (size_t)(D * ROWS));
    }
    for (int key0 = 0; key0 <= last_pos; key0 += RUN) {
        int n = last_pos + 1 - key0 < RUN ? last_pos + 1 - key0 : RUN;
        pack_run(C, p, table, key0, n, kvh, &run);
        for (int g = 0; g < group; g++) {
            __m512 qs = _mm512_loadu_ps(q_scale[g]);
            __m512i qsum = _mm512_loadu_si512(q_sum[g]);
            if (key0 + RUN - 1 <= t.first_pos) /* every row sees every key: no masks */
                head_run(C, 0, qt[g], qs, qsum, &run, RUN, key0, row_pos, max[g], sum[g], out_t[g]);
            else if (n == RUN) /* a constant count: the loops over keys unroll */
                head_run(C, 1, qt[g], qs, qsum, &run, RUN, key0, row_pos, max[g], sum[g], out_t[g]);
            else
                head_run(C, 1, qt[g], qs, qsum, &run, n, key0, row_pos, max[g], sum[g], out_t[g]);
        }
    }
    float rows_out[ROWS][MAX_DIM] __attribute__((aligned(64)));
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int c = 0; c < C; c++) { /* dims 16 c ..: [dim][row] turned to [row][dim] */
            __m512i r[16];
            for (int k = 0; k < 16; k++) r[k] = _mm512_load_si512(out_t[g] + (16 * c + k) * ROWS);
            transpose16(r);
            for (int i = 0; i < ROWS; i++)
                _mm512_store_ps(rows_out[i] + 16 * c, _mm512_div_ps(_mm512_castsi512_ps(r[i]), _mm512_set1_ps(sum[g][i])));
        }
        for (int i = 0; i < rows; i++)
            store_span(out, (first_row + i) * p->heads * D + (int64_t)h * D, rows_out[i], D, out_bf16);
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

/* Switch the VNNI kernel on or off; returns the setting in force (0 where not built). */
int prefill_attention_i16(int on) {
    i16_attention_on = on && I16_BUILT;
    return i16_attention_on;
}

/* 1 where prefill_task_i16 runs this cache and head layout. */
int prefill_i16_handles(int cache_kind, int head_dim, int group) {
    return i16_attention_on && cache_kind == CACHE_I8 && (head_dim == 64 || head_dim == 128) &&
           group <= 8;
}
