/*
 * Decode attention over an int8 K/V cache on AVX-512 VNNI int16 dot products (vpdpwssd),
 * for CPUs without AMX (AMD Zen 4, Intel Ice Lake / Cascade Lake): the span task of
 * `attention.c` (up to 64 positions of one sequence, all heads) with both products on
 * integers instead of float32 FMAs over widened int8 values.
 *
 * Per kv head of the span:
 * - Scores: each head's query (times the softmax scale) rounded to int16 with its own
 *   scale (max |q| / 32767); each key's int8 row widened to int16 once for the group; a
 *   key's 16-lane partial sums (two dims a lane) summed across lanes for 16 keys at once,
 *   times the key row's and the query's scales.
 * - The span's softmax per head in float32, as `attention.c` (the same max and sum).
 * - Values: each head's weights times each value row's scale rounded to int16 (32767 =
 *   the head's largest), adjacent keys paired in one int32; the values of a key pair
 *   interleaved by dims (vpunpck*wd), so one vpdpwssd adds two keys' weighted values to 16
 *   dims; the int32 sums times the head's weight scale are its output.
 *
 * Integer sums are exact (64 keys x 32767 x 127 < 2^31); the error is the two roundings
 * to int16, 2^-16 of the row's largest |q| and of the head's largest weighted value row
 * (as the AMX kernel's two int8 parts: tests/models/test_decode_attention_int8.py).
 * Needs head_dim 64 or 128 and at most 8 query heads per kv head.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_common.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define I16_BUILT 1
#define SPAN 64       /* keys per task, as attention.c's SPAN_KEYS */
#define MAX_DIM 128
#define MAX_HEADS 8

static int decode_i16_on = 0;

/* Lane i of the result = the sum of v[i]'s 16 int32 lanes (attention.c's sum_lanes16 on
 * integers: exact). */
ALWAYS_INLINE __m512i sum_lanes16_epi32(const __m512i *v) {
    __m512i t[8], u[4], w[2];
    for (int k = 0; k < 8; k++)
        t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                                _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++)
        u[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * k], t[2 * k + 1]),
                                _mm512_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
    for (int k = 0; k < 2; k++)
        w[k] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* n floats (a multiple of 16) times factor, rounded to int16 (|x * factor| <= 32767). */
ALWAYS_INLINE void round16(const float *x, int n, float factor, int16_t *out) {
    __m512 f = _mm512_set1_ps(factor);
    for (int i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), f))));
}

/* The largest |x| of n (a multiple of 16) floats. */
ALWAYS_INLINE float largest_abs16(const float *x, int n) {
    __m512 top = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    return _mm512_reduce_max_ps(top);
}

/* Scores of the group's heads for the span's keys (key_rows, n of them), [group][SPAN]
 * floats, keys past n -inf. q16 [group][head_dim] int16 queries, q_scale their scales. */
ALWAYS_INLINE void span_scores(const int D, const int16_t (*q16)[MAX_DIM], const float *q_scale,
                               const int8_t *const *key_rows, const float *key_scales, int group,
                               int n, float (*scores)[SPAN]) {
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (int t = 0; t < SPAN; t += 16) {
        if (t >= n) {
            for (int g = 0; g < group; g++) _mm512_storeu_ps(scores[g] + t, minus_inf);
            continue;
        }
        int16_t keys[16][MAX_DIM] __attribute__((aligned(64)));
        for (int j = 0; j < 16; j++)
            for (int c = 0; c < D; c += 32)
                _mm512_store_si512(keys[j] + c, t + j < n ? _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(key_rows[t + j] + c)))
                                                          : _mm512_setzero_si512());
        int valid = n - t < 16 ? n - t : 16;
        __mmask16 mask = (__mmask16)((1u << valid) - 1);
        __m512 ks = _mm512_loadu_ps(key_scales + t);
        for (int g = 0; g < group; g++) {
            __m512i dots[16];
            for (int j = 0; j < 16; j++) {
                __m512i d = _mm512_setzero_si512();
                for (int c = 0; c < D; c += 32)
                    d = _mm512_dpwssd_epi32(d, _mm512_loadu_si512(q16[g] + c), _mm512_load_si512(keys[j] + c));
                dots[j] = d;
            }
            __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(sum_lanes16_epi32(dots)),
                                     _mm512_mul_ps(ks, _mm512_set1_ps(q_scale[g])));
            _mm512_storeu_ps(scores[g] + t, _mm512_mask_mov_ps(minus_inf, mask, s));
        }
    }
}

/* out[g] (head_dim floats) = sum over the span's keys of weights[g][j] v_j, the values
 * (value_rows, n of them, times value_scales) paired by keys for vpdpwssd. */
ALWAYS_INLINE void span_values(const int D, float (*weights)[SPAN], const int8_t *const *value_rows,
                               const float *value_scales, int group, int n, float *out) {
    int32_t pairs[MAX_HEADS][SPAN / 2]; /* head g's weights of keys 2 m, 2 m + 1: int16 each */
    float unit[MAX_HEADS];
    for (int g = 0; g < group; g++) {
        for (int i = 0; i < SPAN; i += 16)
            _mm512_storeu_ps(weights[g] + i, _mm512_mul_ps(_mm512_loadu_ps(weights[g] + i), _mm512_loadu_ps(value_scales + i)));
        float top = larger(largest_abs16(weights[g], SPAN), 1e-30f);
        round16(weights[g], SPAN, 32767.0f / top, (int16_t *)pairs[g]);
        unit[g] = top / 32767.0f;
    }
    __m512i acc[MAX_HEADS][MAX_DIM / 16];
    for (int g = 0; g < group; g++)
        for (int c = 0; c < D / 16; c++) acc[g][c] = _mm512_setzero_si512();
    for (int m = 0; m < (n + 1) / 2; m++) {
        const int8_t *a = value_rows[2 * m], *b = 2 * m + 1 < n ? value_rows[2 * m + 1] : NULL;
        __m512i v[MAX_DIM / 16];
        for (int c = 0; c < D; c += 32) { /* dims c + 8 L + 0-3 (low), + 4-7 (high) in lane L */
            __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(a + c)));
            __m512i y = b ? _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + c))) : _mm512_setzero_si512();
            v[c / 16] = _mm512_unpacklo_epi16(x, y);
            v[c / 16 + 1] = _mm512_unpackhi_epi16(x, y);
        }
        for (int g = 0; g < group; g++) {
            __m512i w = _mm512_set1_epi32(pairs[g][m]);
            for (int c = 0; c < D / 16; c++) acc[g][c] = _mm512_dpwssd_epi32(acc[g][c], w, v[c]);
        }
    }
    /* back to dim order: 16 dims from the low and high halves' lanes in turn */
    static const int32_t first[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
    const __m512i lo_idx = _mm512_loadu_si512(first), hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
    for (int g = 0; g < group; g++) {
        __m512 scale = _mm512_set1_ps(unit[g]);
        for (int c = 0; c < D / 16; c += 2) {
            __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[g][c]), scale);
            __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[g][c + 1]), scale);
            _mm512_storeu_ps(out + (int64_t)g * D + 16 * c, _mm512_permutex2var_ps(lo, lo_idx, hi));
            _mm512_storeu_ps(out + (int64_t)g * D + 16 * c + 16, _mm512_permutex2var_ps(lo, hi_idx, hi));
        }
    }
}

/* One kv head of the span: queries, scores, softmax, values. */
ALWAYS_INLINE void span_kv_head(const int D, const PagedAttention *p, const float *qs,
                                const int64_t *slots, int n, int kvh, float *max, float *sum,
                                float *acc) {
    const int group = p->group, h0 = kvh * group;
    int16_t q16[MAX_HEADS][MAX_DIM] __attribute__((aligned(64)));
    float q_scale[MAX_HEADS], key_scales[SPAN], value_scales[SPAN];
    float scores[MAX_HEADS][SPAN] __attribute__((aligned(64)));
    const int8_t *k_rows[SPAN], *v_rows[SPAN];
    for (int g = 0; g < group; g++) {
        const float *row = qs + (int64_t)(h0 + g) * D;
        float top = larger(largest_abs16(row, D), 1e-30f);
        round16(row, D, 32767.0f / top, q16[g]);
        q_scale[g] = top / 32767.0f * p->scale;
    }
    for (int j = 0; j < SPAN; j++) {
        int64_t offset = j < n ? slots[j] * p->slot_stride + (int64_t)kvh * p->head_stride : 0;
        k_rows[j] = (const int8_t *)p->k_cache + offset;
        v_rows[j] = (const int8_t *)p->v_cache + offset;
        key_scales[j] = j < n ? cache_row_scale(k_rows[j], 0, D) : 0.0f;
        value_scales[j] = j < n ? cache_row_scale(v_rows[j], 0, D) : 0.0f;
    }
    span_scores(D, q16, q_scale, k_rows, key_scales, group, n, scores);
    for (int g = 0; g < group; g++) max[g] = softmax_in_place(scores[g], SPAN / 16, &sum[g]);
    span_values(D, scores, v_rows, value_scales, group, n, acc);
}

/* Positions [begin, end) (at most 64) of sequence s, every head: max[h], sum[h] and the
 * unnormalized output acc[h * head_dim ..] of the span's softmax (as attention.c's spans). */
void decode_span_i16(const PagedAttention *p, int64_t s, int begin, int end, float *max,
                     float *sum, float *acc) {
    const int32_t *table = p->block_tables + s * p->max_blocks;
    const float *qs = p->q + p->token_rows[s] * p->heads * p->head_dim;
    int64_t slots[SPAN];
    int n = end - begin;
    span_slots(p, table, begin, n, slots);
    for (int kvh = 0; kvh < p->kv_heads; kvh++) {
        int h0 = kvh * p->group;
        if (p->head_dim == 64)
            span_kv_head(64, p, qs, slots, n, kvh, max + h0, sum + h0, acc + (int64_t)h0 * 64);
        else
            span_kv_head(128, p, qs, slots, n, kvh, max + h0, sum + h0, acc + (int64_t)h0 * 128);
    }
}
#else
#define I16_BUILT 0
static int decode_i16_on = 0;
void decode_span_i16(const PagedAttention *p, int64_t s, int begin, int end, float *max,
                     float *sum, float *acc) {
    (void)p, (void)s, (void)begin, (void)end, (void)max, (void)sum, (void)acc;
}
#endif

/* 1 where decode_span_i16 runs this cache and head layout. */
int decode_i16_handles(int cache_kind, int head_dim, int group) {
    return decode_i16_on && cache_kind == CACHE_I8 && (head_dim == 64 || head_dim == 128) &&
           group <= 8;
}

/* Switch the int16 kernel on or off; returns the setting in force (0 where not built). */
int decode_attention_i16(int on) {
    decode_i16_on = on && I16_BUILT;
    return decode_i16_on;
}
