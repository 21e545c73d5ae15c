/*
 * Decode attention: one query token per sequence against its paged K/V cache, no gather.
 *
 *   decode_attention(...)  q [*, heads, head_dim] rows token_rows[s]; sequence s attends to
 *                          its context_lens[s] cached positions, found through block_tables
 *                          [num_seqs, max_blocks] (slot = block * block_size + position %
 *                          block_size); output rows token_rows[s] of out [*, heads * head_dim]
 *                          (float32 or bf16). The cache is [num_slots, kv_heads,
 *                          head_stride], float32, bf16 or int8 with a scale per row
 *                          (cache_kind: CACHE_*, kernels_common.h). Returns -1 (computing
 *                          nothing) if heads / kv_heads > MAX_GROUP.
 *
 * With AVX-512 and head_dim 64 or 128, a task is a span of up to SPAN_KEYS positions of
 * one sequence for all its heads: it reads each cache slot's rows of every kv head together
 * (contiguous memory), scores RUN keys per head with vector FMAs and one transposing sum,
 * and keeps an online softmax (running max, sum and weighted values); a sequence longer
 * than a span is split into spans merged at the end, so one long context still uses every
 * thread. The split depends on the sequence's own length only: a sequence's result does
 * not depend on the rest of the batch. Other builds and head sizes take the plain path
 * (attention_plain.c): a task per (sequence, kv head), a key at a time.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <omp.h>

#include "kernels_common.h"

/* attention_plain.c */
int decode_attention_plain(int64_t num_seqs, int heads, int kv_heads, int head_dim,
                           const float *q, const void *k_cache, const void *v_cache,
                           int cache_kind, const int32_t *block_tables, int max_blocks,
                           const int32_t *context_lens, const int64_t *token_rows,
                           int block_size, float scale, void *out, int out_bf16);

/* decode_attention_amx.c: spans over an int8 cache on AMX int8 tiles */
int decode_amx_handles(int cache_kind, int head_dim, int group);
void decode_span_amx(const PagedAttention *p, int64_t s, int begin, int end, float *max,
                     float *sum, float *acc);
void decode_amx_thread(int begin);

/* decode_attention_i16.c: spans over an int8 cache on VNNI int16 products (no AMX) */
int decode_i16_handles(int cache_kind, int head_dim, int group);
void decode_span_i16(const PagedAttention *p, int64_t s, int begin, int end, float *max,
                     float *sum, float *acc);

#if defined(__AVX512F__)
#define RUN 16        /* keys scored together: one lane each */
#define SPAN_KEYS 64  /* positions per task */


/* Running softmax state of one span for all heads: max, sum, weighted values. */
typedef struct {
    float *max, *sum, *acc; /* [heads], [heads], [heads * head_dim] */
} SpanState;

/* Lane i of the result = the sum of v[i]'s 16 lanes (a transposing tree: 45 operations). */
ALWAYS_INLINE __m512 sum_lanes16(const __m512 *v) {
    __m512 t[8], u[4], w[2];
    for (int k = 0; k < 8; k++)
        t[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                             _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++) {
        __m512d a = _mm512_castps_pd(t[2 * k]), b = _mm512_castps_pd(t[2 * k + 1]);
        u[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    for (int k = 0; k < 2; k++)
        w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/*
 * Scores of n <= RUN keys (consecutive slots from `slot`) for heads [h0, h0 + SG) of kv
 * head kvh, scaled, into scores[h][0..RUN) (lanes past n: -inf). C = head_dim / 16.
 */
ALWAYS_INLINE void score_run(const int C, const int SG, const int kind, const PagedAttention *p,
                             const float *qs, int kvh, int h0, int64_t slot, int n,
                             float *scores) {
    __m512 qv[4][8], dots[4][RUN]; /* SG <= 4, C <= 8: fixed sizes, kept in registers */
    float key_scales[RUN] = {0};
    for (int g = 0; g < SG; g++)
        for (int c = 0; c < C; c++) qv[g][c] = _mm512_loadu_ps(qs + (h0 + g) * C * 16 + 16 * c);
    for (int i = 0; i < RUN; i++) {
        if (i >= n) {
            for (int g = 0; g < SG; g++) dots[g][i] = _mm512_setzero_ps();
            continue;
        }
        __m512 k[8];
        int64_t offset = (slot + i) * p->slot_stride + (int64_t)kvh * p->head_stride;
        for (int c = 0; c < C; c++) k[c] = load16(p->k_cache, offset + 16 * c, kind);
        if (kind == CACHE_I8) key_scales[i] = cache_row_scale(p->k_cache, offset, C * 16);
        for (int g = 0; g < SG; g++) {
            __m512 d = _mm512_mul_ps(qv[g][0], k[0]);
            for (int c = 1; c < C; c++) d = _mm512_fmadd_ps(qv[g][c], k[c], d);
            dots[g][i] = d;
        }
    }
    __mmask16 valid = (__mmask16)((1u << n) - 1);
    __m512 scale = _mm512_set1_ps(p->scale);
    if (kind == CACHE_I8) scale = _mm512_mul_ps(scale, _mm512_loadu_ps(key_scales));
    for (int g = 0; g < SG; g++) {
        __m512 s = _mm512_mul_ps(sum_lanes16(dots[g]), scale);
        _mm512_storeu_ps(scores + (h0 + g) * RUN, _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, s));
    }
}

/* acc[h] += sum_i weights[h][i] * v[slot + i] for heads [h0, h0 + SG) of kv head kvh. */
ALWAYS_INLINE void add_values(const int C, const int SG, const int kind, const PagedAttention *p,
                              int kvh, int h0, int64_t slot, int n, const float *weights,
                              float *acc) {
    __m512 a[4][8];
    for (int g = 0; g < SG; g++)
        for (int c = 0; c < C; c++) a[g][c] = _mm512_loadu_ps(acc + (h0 + g) * C * 16 + 16 * c);
    for (int i = 0; i < n; i++) {
        __m512 v[8];
        int64_t offset = (slot + i) * p->slot_stride + (int64_t)kvh * p->head_stride;
        for (int c = 0; c < C; c++) v[c] = load16(p->v_cache, offset + 16 * c, kind);
        float value_scale = kind == CACHE_I8 ? cache_row_scale(p->v_cache, offset, C * 16) : 1.0f;
        for (int g = 0; g < SG; g++) {
            __m512 w = _mm512_set1_ps(weights[(h0 + g) * RUN + i] * value_scale);
            for (int c = 0; c < C; c++) a[g][c] = _mm512_fmadd_ps(w, v[c], a[g][c]);
        }
    }
    for (int g = 0; g < SG; g++)
        for (int c = 0; c < C; c++) _mm512_storeu_ps(acc + (h0 + g) * C * 16 + 16 * c, a[g][c]);
}


/* The slot of each run of a span (runs end at block boundaries) and its key count. */
static int span_runs(const PagedAttention *p, const int32_t *table, int begin, int end,
                     int64_t *slots, int *counts) {
    int runs = 0;
    for (int j = begin; j < end; runs++) {
        int offset = j % p->block_size, n = p->block_size - offset;
        n = n < RUN ? n : RUN;
        n = n < end - j ? n : end - j;
        slots[runs] = (int64_t)table[j / p->block_size] * p->block_size + offset;
        counts[runs] = n;
        j += n;
    }
    return runs;
}

/* Asks for a run's K (or V) rows of every kv head ahead of use (they are contiguous). */
static void prefetch_run(const void *cache, int64_t slot, int n, int64_t slot_stride,
                         int kind) {
    size_t width = kind == CACHE_I8 ? 1 : (kind == CACHE_BF16 ? 2 : 4);
    const char *first = (const char *)cache + (size_t)(slot * slot_stride) * width;
    size_t bytes = (size_t)(n * slot_stride) * width;
    for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(first + b, _MM_HINT_T1);
}

#define MAX_RUNS (SPAN_KEYS / RUN + SPAN_KEYS) /* runs are cut short at block ends */

/* Positions [begin, end) of sequence s, all heads: scores, one softmax per head over the
 * span, then the weighted values. SG: heads per pass over a kv head's keys. */
ALWAYS_INLINE void attend_span(const int C, const int SG, const int kind, const PagedAttention *p,
                               int64_t s, int begin, int end, SpanState *state) {
    int heads = p->heads, group = p->group, head_dim = C * 16;
    const float *qs = p->q + p->token_rows[s] * heads * head_dim;
    const int32_t *table = p->block_tables + s * p->max_blocks;
    int64_t slots[MAX_RUNS];
    int counts[MAX_RUNS];
    int runs = span_runs(p, table, begin, end, slots, counts);
    float scores[heads * runs * RUN], weights[heads * RUN];
    for (int r = 0; r < runs; r++) prefetch_run(p->k_cache, slots[r], counts[r], p->slot_stride, kind);
    for (int r = 0; r < runs; r++) prefetch_run(p->v_cache, slots[r], counts[r], p->slot_stride, kind);
    for (int r = 0; r < runs; r++) {
        for (int kvh = 0; kvh < p->kv_heads; kvh++) {
            for (int g = 0; g < group; g += SG) {
                int h0 = kvh * group + g;
#define SCORE(N) score_run(C, N, kind, p, qs, kvh, h0, slots[r], counts[r], weights)
                switch (group - g < SG ? group - g : SG) {
                case 4: SCORE(4); break;
                case 3: SCORE(3); break;
                case 2: SCORE(2); break;
                default: SCORE(1); break;
                }
#undef SCORE
            }
        }
        for (int h = 0; h < heads; h++)
            memcpy(scores + (h * runs + r) * RUN, weights + h * RUN, sizeof(float) * RUN);
    }
    for (int h = 0; h < heads; h++)
        state->max[h] = softmax_in_place(scores + h * runs * RUN, runs, &state->sum[h]);
    memset(state->acc, 0, sizeof(float) * (size_t)(heads * head_dim));
    for (int r = 0; r < runs; r++) {
        for (int h = 0; h < heads; h++)
            memcpy(weights + h * RUN, scores + (h * runs + r) * RUN, sizeof(float) * RUN);
        for (int kvh = 0; kvh < p->kv_heads; kvh++) {
            for (int g = 0; g < group; g += SG) {
                int h0 = kvh * group + g;
#define ADD(N) add_values(C, N, kind, p, kvh, h0, slots[r], counts[r], weights, state->acc)
                switch (group - g < SG ? group - g : SG) {
                case 4: ADD(4); break;
                case 3: ADD(3); break;
                case 2: ADD(2); break;
                default: ADD(1); break;
                }
#undef ADD
            }
        }
    }
}

static void attend_span_any(const PagedAttention *p, int kind, int64_t s, int begin, int end,
                            SpanState *state) {
#define SPAN(C, SG)                                                                            \
    if (kind == CACHE_I8) attend_span(C, SG, CACHE_I8, p, s, begin, end, state);               \
    else if (kind == CACHE_BF16) attend_span(C, SG, CACHE_BF16, p, s, begin, end, state);      \
    else attend_span(C, SG, CACHE_F32, p, s, begin, end, state)
    if (p->head_dim == 64) {
        SPAN(4, 4);
    } else {
        SPAN(8, 2);
    }
#undef SPAN
}

/* Merges sequence s's spans (their states consecutive from `first`) into its output row. */
static void merge_spans(const PagedAttention *p, SpanState *states, int64_t first, int spans,
                        int64_t s, void *out, int out_bf16) {
    int heads = p->heads, head_dim = p->head_dim;
    float row[head_dim];
    for (int h = 0; h < heads; h++) {
        float top = -INFINITY, total = 0.0f;
        for (int k = 0; k < spans; k++) top = fmaxf(top, states[first + k].max[h]);
        memset(row, 0, sizeof row);
        for (int k = 0; k < spans; k++) {
            SpanState *st = &states[first + k];
            float w = fast_exp(st->max[h] - top);
            total += st->sum[h] * w;
            const float *a = st->acc + (int64_t)h * head_dim;
            for (int d = 0; d < head_dim; d++) row[d] += w * a[d];
        }
        float inv = 1.0f / total;
        for (int d = 0; d < head_dim; d++) row[d] *= inv;
        store_span(out, p->token_rows[s] * heads * head_dim + (int64_t)h * head_dim, row,
                   head_dim, out_bf16);
    }
}

static int decode_attention_spans(const PagedAttention *p, int64_t num_seqs,
                                  const int32_t *context_lens, int cache_kind, void *out,
                                  int out_bf16) {
    int64_t *first = malloc(sizeof(int64_t) * (size_t)(num_seqs + 1));
    first[0] = 0;
    for (int64_t s = 0; s < num_seqs; s++) {
        int ctx = context_lens[s] > 0 ? context_lens[s] : 1;
        first[s + 1] = first[s] + (ctx + SPAN_KEYS - 1) / SPAN_KEYS;
    }
    int64_t tasks = first[num_seqs], per_state = 2 * p->heads + p->heads * p->head_dim;
    float *memory = malloc(sizeof(float) * (size_t)(tasks * per_state));
    SpanState *states = malloc(sizeof(SpanState) * (size_t)tasks);
    int64_t *task_seq = malloc(sizeof(int64_t) * (size_t)tasks);
    for (int64_t s = 0; s < num_seqs; s++)
        for (int64_t t = first[s]; t < first[s + 1]; t++) task_seq[t] = s;
    for (int64_t t = 0; t < tasks; t++) {
        float *m = memory + t * per_state;
        states[t] = (SpanState){m, m + p->heads, m + 2 * p->heads};
    }
    int amx = decode_amx_handles(cache_kind, p->head_dim, p->group);
    int i16 = !amx && decode_i16_handles(cache_kind, p->head_dim, p->group);
#pragma omp parallel
    {
        if (amx) decode_amx_thread(1); /* tiles configured once per thread and call */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t s = task_seq[t];
            int begin = (int)(t - first[s]) * SPAN_KEYS, end = begin + SPAN_KEYS;
            end = end < context_lens[s] ? end : context_lens[s];
            if (i16 && t + 2 < tasks) { /* the task this thread likely takes next */
                int64_t u = t + 2, su = task_seq[u];
                int at = (int)(u - first[su]) * SPAN_KEYS, upto = at + SPAN_KEYS;
                upto = upto < context_lens[su] ? upto : context_lens[su];
                prefetch_positions(p, p->block_tables + su * p->max_blocks, at, upto - at);
            }
            if (amx)
                decode_span_amx(p, s, begin, end, states[t].max, states[t].sum, states[t].acc);
            else if (i16)
                decode_span_i16(p, s, begin, end, states[t].max, states[t].sum, states[t].acc);
            else
                attend_span_any(p, cache_kind, s, begin, end, &states[t]);
        }
        if (amx) decode_amx_thread(0);
    }
#pragma omp parallel for schedule(static) if (num_seqs >= 4)
    for (int64_t s = 0; s < num_seqs; s++)
        merge_spans(p, states, first[s], (int)(first[s + 1] - first[s]), s, out, out_bf16);
    free(task_seq);
    free(states);
    free(memory);
    free(first);
    return 0;
}
#endif

/* decode_attention in the basis the cache's rows are in. */
static int decode_attention_in_basis(int64_t num_seqs, int heads, int kv_heads, int head_dim,
                                     const float *q, const void *k_cache, const void *v_cache,
                                     int cache_kind, const int32_t *block_tables, int max_blocks,
                                     const int32_t *context_lens, const int64_t *token_rows,
                                     int block_size, float scale, void *out, int out_bf16) {
#if defined(__AVX512F__)
    if (head_dim == 64 || head_dim == 128) {
        int head_stride = cache_head_stride(head_dim, cache_kind);
        PagedAttention p = {heads, kv_heads, heads / kv_heads, head_dim, block_size, max_blocks,
                            (int64_t)kv_heads * head_stride, head_stride, q, k_cache, v_cache,
                            block_tables, token_rows, scale};
        return decode_attention_spans(&p, num_seqs, context_lens, cache_kind, out, out_bf16);
    }
#endif
    return decode_attention_plain(num_seqs, heads, kv_heads, head_dim, q, k_cache, v_cache,
                                  cache_kind, block_tables, max_blocks, context_lens,
                                  token_rows, block_size, scale, out, out_bf16);
}

int decode_attention(int64_t num_seqs, int heads, int kv_heads, int head_dim, const float *q,
                     const void *k_cache, const void *v_cache, int cache_kind,
                     const int32_t *block_tables, int max_blocks, const int32_t *context_lens,
                     const int64_t *token_rows, int block_size, float scale, void *out,
                     int out_bf16) {
    if (heads / kv_heads > MAX_GROUP) return -1;
    if (!cache_rotated(cache_kind, head_dim))
        return decode_attention_in_basis(num_seqs, heads, kv_heads, head_dim, q, k_cache,
                                         v_cache, cache_kind, block_tables, max_blocks,
                                         context_lens, token_rows, block_size, scale, out,
                                         out_bf16 & OUT_BF16);
    /* an int8 cache holds rotated rows: queries rotated in, outputs rotated back out
     * (unless OUT_CACHE_BASIS) */
    int width = heads * head_dim;
    float *queries = rotated_rows(q, token_rows, num_seqs, width);
    float *outputs = malloc(sizeof(float) * (size_t)(num_seqs * width));
    int64_t *packed_rows = malloc(sizeof(int64_t) * (size_t)num_seqs);
    for (int64_t s = 0; s < num_seqs; s++) packed_rows[s] = s;
    int status = decode_attention_in_basis(num_seqs, heads, kv_heads, head_dim, queries, k_cache,
                                           v_cache, cache_kind, block_tables, max_blocks,
                                           context_lens, packed_rows, block_size, scale, outputs, 0);
    if (status == 0) store_rotated_rows(out, token_rows, outputs, num_seqs, width, out_bf16);
    free(packed_rows);
    free(outputs);
    free(queries);
    return status;
}
