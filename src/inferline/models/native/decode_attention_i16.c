/*
 * Decode attention over an int8 K/V cache on AVX-512 VNNI byte dot products, for CPUs
 * without AMX (AMD Zen 4, Intel Ice Lake / Cascade Lake): the span task of `attention.c`
 * (up to 64 positions of one sequence, all heads) with both products on integers instead
 * of float32 FMAs over widened int8 values. (The file keeps the name of its first version,
 * which multiplied int16s.)
 *
 * Per kv head of the span:
 * - Scores: each head's query (times the softmax scale) rounded to int8 with its own
 *   scale (max |q| / 127), plus 128, as bytes; 16 keys' int8 rows transposed (transpose16)
 *   so that a lane holds one key and an int32 four of its dims; vpdpbusd sums (q + 128) x k
 *   and 1 x k for 16 keys at once, four dims an instruction, and the first less 128 x the
 *   second is the exact int8 x int8 dot product (no sums across lanes: the keys are the
 *   lanes), times the key row's and the query's scales. llama.cpp rounds its queries to
 *   q8_0 against a q8_0 cache the same way.
 * - The span's softmax per head in float32, as `attention.c` (the same max and sum).
 * - Values: each head's weights times each value row's scale rounded to bytes (255 = the
 *   head's largest; all >= 0); four value rows interleaved by bytes (vpunpck*bw,
 *   vpunpck*wd), so one vpdpbusd adds four keys' weighted values to 16 dims, times the
 *   head's weight scale.
 *
 * Integer sums are exact (head_dim 128 x 255 x 127 and 64 keys x 255 x 127 < 2^31); the
 * error is the two roundings to bytes, half a step of the row's largest |q| / 127 and of
 * the head's largest weighted value row / 255: outputs within 0.047 of float64 on sharp
 * softmaxes (the int8 rows' own rounding: 0.04-0.11; tests/models/
 * test_decode_attention_int8.py). Against the int16 version (queries and weights rounded
 * to int16 as two bytes each: twice the vpdpbusd): 64 x 320 positions over 30 layers'
 * caches 0.91x, 32 x 320 0.89x, one layer's cache 0.86x (one process alternating); the
 * decoded positions of benchmarks/accuracy_agreement.py (SmolLM2, W8A8 throughout): KL to
 * fp32 0.00449 -> 0.00447 (float32 attention 0.00432), top-1 0.952 -> 0.956 (0.956).
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

/* n floats (a multiple of 16) times factor, rounded to integers (|x * factor| <= 127 for
 * signed x, <= 255 for x >= 0), plus bias (128 for signed x, 0 for x >= 0) as bytes. */
ALWAYS_INLINE void round_bytes(const float *x, int n, float factor, int bias, uint8_t *out) {
    const __m512 f = _mm512_set1_ps(factor);
    const __m512i b = _mm512_set1_epi32(bias);
    for (int i = 0; i < n; i += 16) {
        __m512i w = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), f)), b);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(w));
    }
}

/* The largest |x| of n (a multiple of 16) floats. */
ALWAYS_INLINE float largest_abs16(const float *x, int n) {
    __m512 top = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    return _mm512_reduce_max_ps(top);
}

/* Four bytes (an int32) in every lane. */
ALWAYS_INLINE __m512i broadcast4(const uint8_t *bytes) {
    int32_t x;
    memcpy(&x, bytes, sizeof x);
    return _mm512_set1_epi32(x);
}

/* Scores of the group's heads for the span's keys (key_rows, n of them; rows past n point
 * at readable memory), [group][SPAN] floats, keys past n -inf. A query is its int8
 * rounding plus 128 as bytes (q_bytes); 16 keys' int8 rows transposed so that a lane holds
 * one key (four dims an int32); vpdpbusd sums (q + 128) x k (A) and 1 x k (K) for 16 keys
 * at once, and A - 128 K is the exact int8 x int8 product. */
ALWAYS_INLINE void span_scores(const int D, const uint8_t (*q_bytes)[MAX_DIM],
                               const float *q_scale, const int8_t *const *key_rows,
                               const float *key_scales, int group, int n,
                               float (*scores)[SPAN]) {
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    const __m512i ones = _mm512_set1_epi8(1);
    for (int t = 0; t < SPAN; t += 16) {
        if (t >= n) {
            for (int g = 0; g < group; g++) _mm512_storeu_ps(scores[g] + t, minus_inf);
            continue;
        }
        int valid = n - t < 16 ? n - t : 16;
        __mmask16 mask = (__mmask16)((1u << valid) - 1);
        __m512 ks = _mm512_loadu_ps(key_scales + t);
        __m512i dots[MAX_HEADS], sums = _mm512_setzero_si512();
        for (int c0 = 0; c0 < D; c0 += 64) {
            __m512i k[16];
            for (int j = 0; j < 16; j++) k[j] = _mm512_loadu_si512(key_rows[t + j] + c0);
            transpose16(k); /* k[c] lane j: key j's dims c0 + 4c .. + 3 */
            __m512i part[4]; /* four independent chains of vpdpbusd (its latency) */
            for (int i = 0; i < 4; i++) part[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, k[i]);
            for (int c = 4; c < 16; c++) part[c % 4] = _mm512_dpbusd_epi32(part[c % 4], ones, k[c]);
            __m512i key_sums = _mm512_add_epi32(_mm512_add_epi32(part[0], part[1]), _mm512_add_epi32(part[2], part[3]));
            sums = c0 ? _mm512_add_epi32(sums, key_sums) : key_sums;
            for (int g = 0; g < group; g++) {
                __m512i a[4];
                for (int i = 0; i < 4; i++)
                    a[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), broadcast4(q_bytes[g] + c0 + 4 * i), k[i]);
                for (int c = 4; c < 16; c++)
                    a[c % 4] = _mm512_dpbusd_epi32(a[c % 4], broadcast4(q_bytes[g] + c0 + 4 * c), k[c]);
                __m512i as = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
                dots[g] = c0 ? _mm512_add_epi32(dots[g], as) : as;
            }
        }
        __m512i bias = _mm512_slli_epi32(sums, 7);
        for (int g = 0; g < group; g++) {
            __m512i exact = _mm512_sub_epi32(dots[g], bias);
            __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(ks, _mm512_set1_ps(q_scale[g])));
            _mm512_storeu_ps(scores[g] + t, _mm512_mask_mov_ps(minus_inf, mask, s));
        }
    }
}

/* Heads g0 .. g0 + count - 1 (count <= 3), dims c0 .. c0 + 63: sums[g][i] = the keys'
 * w[g][j] v_j (int32, exact), the weights' bytes broadcast four keys at a time against four
 * value rows interleaved by bytes (lane 4 L + e of part i: dim c0 + 16 L + 4 i + e); 12
 * accumulators at most, in registers. */
ALWAYS_INLINE void value_block(const uint8_t (*w)[SPAN], const int8_t *const *value_rows,
                               int g0, const int count, int c0, int quads, __m512i (*sums)[4]) {
    __m512i acc[3][4];
    for (int g = 0; g < count; g++)
        for (int i = 0; i < 4; i++) acc[g][i] = _mm512_setzero_si512();
    for (int m = 0; m < quads; m++) {
        const int8_t *const *rows = value_rows + 4 * m;
        __m512i a = _mm512_loadu_si512(rows[0] + c0), b = _mm512_loadu_si512(rows[1] + c0);
        __m512i c = _mm512_loadu_si512(rows[2] + c0), d = _mm512_loadu_si512(rows[3] + c0);
        __m512i ab_lo = _mm512_unpacklo_epi8(a, b), cd_lo = _mm512_unpacklo_epi8(c, d);
        __m512i ab_hi = _mm512_unpackhi_epi8(a, b), cd_hi = _mm512_unpackhi_epi8(c, d);
        __m512i v[4] = {_mm512_unpacklo_epi16(ab_lo, cd_lo), _mm512_unpackhi_epi16(ab_lo, cd_lo),
                        _mm512_unpacklo_epi16(ab_hi, cd_hi), _mm512_unpackhi_epi16(ab_hi, cd_hi)};
        for (int g = 0; g < count; g++) {
            __m512i wb = broadcast4(w[g0 + g] + 4 * m);
            for (int i = 0; i < 4; i++) acc[g][i] = _mm512_dpbusd_epi32(acc[g][i], wb, v[i]);
        }
    }
    for (int g = 0; g < count; g++)
        for (int i = 0; i < 4; i++) sums[g][i] = acc[g][i];
}

/* out[g] (head_dim floats) = sum over the span's keys of weights[g][j] v_j, the values
 * (value_rows, n of them, times value_scales; rows past n readable, their weights 0). The
 * weights times the value scales rounded to bytes (255 = the head's largest: all >= 0) for
 * vpdpbusd (value_block); the int32 sums times the head's unit. */
ALWAYS_INLINE void span_values(const int D, float (*weights)[SPAN], const int8_t *const *value_rows,
                               const float *value_scales, int group, int n, float *out) {
    uint8_t w[MAX_HEADS][SPAN];
    float unit[MAX_HEADS];
    for (int g = 0; g < group; g++) {
        for (int i = 0; i < SPAN; i += 16)
            _mm512_storeu_ps(weights[g] + i, _mm512_mul_ps(_mm512_loadu_ps(weights[g] + i), _mm512_loadu_ps(value_scales + i)));
        float top = larger(largest_abs16(weights[g], SPAN), 1e-30f);
        round_bytes(weights[g], SPAN, 255.0f / top, 0, w[g]);
        unit[g] = top / 255.0f;
    }
    int quads = (n + 3) / 4;
    for (int c0 = 0; c0 < D; c0 += 64)
        for (int g0 = 0; g0 < group; g0 += 3) {
            int count = group - g0 < 3 ? group - g0 : 3;
            __m512i sums[3][4];
            if (count == 3)
                value_block(w, value_rows, g0, 3, c0, quads, sums);
            else if (count == 2)
                value_block(w, value_rows, g0, 2, c0, quads, sums);
            else
                value_block(w, value_rows, g0, 1, c0, quads, sums);
            for (int g = 0; g < count; g++) { /* lanes back to dim order: a 4 x 4 of 128-bit lanes */
                __m512 scale = _mm512_set1_ps(unit[g0 + g]), x[4];
                for (int i = 0; i < 4; i++) x[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(sums[g][i]), scale);
                __m512 t0 = _mm512_shuffle_f32x4(x[0], x[1], 0x44), t1 = _mm512_shuffle_f32x4(x[2], x[3], 0x44);
                __m512 t2 = _mm512_shuffle_f32x4(x[0], x[1], 0xee), t3 = _mm512_shuffle_f32x4(x[2], x[3], 0xee);
                float *o = out + (int64_t)(g0 + g) * D + c0;
                _mm512_storeu_ps(o, _mm512_shuffle_f32x4(t0, t1, 0x88));
                _mm512_storeu_ps(o + 16, _mm512_shuffle_f32x4(t0, t1, 0xdd));
                _mm512_storeu_ps(o + 32, _mm512_shuffle_f32x4(t2, t3, 0x88));
                _mm512_storeu_ps(o + 48, _mm512_shuffle_f32x4(t2, t3, 0xdd));
            }
        }
}

/* One kv head of the span: queries, scores, softmax, values. */
ALWAYS_INLINE void span_kv_head(const int D, const PagedAttention *p, const float *qs,
                                const int64_t *slots, int n, int kvh, float *max, float *sum,
                                float *acc) {
    const int group = p->group, h0 = kvh * group;
    uint8_t q_bytes[MAX_HEADS][MAX_DIM];
    float q_scale[MAX_HEADS], key_scales[SPAN], value_scales[SPAN];
    float scores[MAX_HEADS][SPAN] __attribute__((aligned(64)));
    const int8_t *k_rows[SPAN], *v_rows[SPAN];
    for (int g = 0; g < group; g++) {
        const float *row = qs + (int64_t)(h0 + g) * D;
        float top = larger(largest_abs16(row, D), 1e-30f);
        round_bytes(row, D, 127.0f / top, 128, q_bytes[g]);
        q_scale[g] = top / 127.0f * p->scale;
    }
    for (int j = 0; j < SPAN; j++) {
        int64_t offset = j < n ? slots[j] * p->slot_stride + (int64_t)kvh * p->head_stride : 0;
        k_rows[j] = (const int8_t *)p->k_cache + offset;
        v_rows[j] = (const int8_t *)p->v_cache + offset;
        key_scales[j] = j < n ? cache_row_scale(k_rows[j], 0, D) : 0.0f;
        value_scales[j] = j < n ? cache_row_scale(v_rows[j], 0, D) : 0.0f;
    }
    span_scores(D, q_bytes, q_scale, k_rows, key_scales, group, n, scores);
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

/* Switch the VNNI kernel on or off; returns the setting in force (0 where not built). */
int decode_attention_i16(int on) {
    decode_i16_on = on && I16_BUILT;
    return decode_i16_on;
}
