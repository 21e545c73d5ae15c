/*
 * Decode attention over an int8 K/V cache on AMX int8 tiles (TDPBSSD, Intel since Sapphire
 * Rapids): the span task of `attention.c` (up to 64 positions of one sequence, all heads)
 * with its two products on tiles instead of float32 FMAs over widened int8 values.
 *
 * Per kv head of the span:
 * - S = Q K^T: the kv head's group of queries is one A tile (16 rows x 64 dims), each
 *   head's row quantized to int8 with its own scale as a high part and a remainder (q ~
 *   s (hi + lo / 256), ~15 significant bits) in rows g and group + g; each 16 keys' int8
 *   rows, as stored, are packed straight from the cache into a B tile (dims by fours x
 *   16 keys).
 * - Scores (times each key row's scale and the query's), the span's softmax per head in
 *   float32 on AVX-512, as `attention.c`.
 * - O = P V: each head's weights times each value row's scale, quantized the same way
 *   (high part row g, remainder row group + g of an A tile, 64 keys deep); the values
 *   interleaved by key quads into B tiles (16 quads x 16 dims), straight from the cache.
 *
 * Accuracy: the keys and values enter exactly; the queries and weights carry ~2^-15 of
 * their row's largest value (outputs within 5e-4 of float64 over the dequantized cache
 * with sharp softmaxes, 2.3e-4 measured: tests/models/test_decode_attention_int8.py).
 * Needs head_dim 64 or 128 and at most 8 query heads per kv head (16 rows).
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512BW__)
#include "amx_tiles.h"

#define SPAN 64       /* keys per task: an int8 tile's depth */
#define MAX_DIM 128
#define MAX_HEADS 8   /* a head's high part and remainder: 16 columns */

static int decode_amx_on = 0;


/* 16 values x (already divided by their scale) as int8: the rounded high part to hi,
 * the remainder times 256, rounded (saturated), to lo. */
ALWAYS_INLINE void split16(__m512 x, int8_t *hi, int8_t *lo) {
    __m512i h = _mm512_cvtps_epi32(x); /* nearest, ties to even */
    __m512 rest = _mm512_mul_ps(_mm512_sub_ps(x, _mm512_cvtepi32_ps(h)), _mm512_set1_ps(256.0f));
    _mm_storeu_si128((__m128i *)hi, _mm512_cvtsepi32_epi8(h));
    _mm_storeu_si128((__m128i *)lo, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(rest)));
}

/* The largest |x| of n (a multiple of 16) floats. */
ALWAYS_INLINE float largest_abs(const float *x, int n) {
    __m512 top = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    return _mm512_reduce_max_ps(top);
}

/* The queries of heads [h0, h0 + group) as A tiles qa (row g the high part of head h0 + g,
 * row group + g its remainder; dims 64 c .. 64 c + 63 at column 64 c); their scales (times
 * the softmax scale) to q_scale[g]. Rows past 2 group are left as they are: the sums they
 * give are not read. */
ALWAYS_INLINE void pack_queries(const int chunks, const float *q, int h0, int group,
                                float softmax_scale, int8_t qa[16][MAX_DIM], float *q_scale) {
    const int head_dim = 64 * chunks;
    for (int g = 0; g < group; g++) {
        const float *row = q + (int64_t)(h0 + g) * head_dim;
        float top = largest_abs(row, head_dim), scale = top > 0.0f ? top / 127.0f : 1.0f;
        __m512 inverse = _mm512_set1_ps(1.0f / scale);
        for (int d = 0; d < head_dim; d += 16)
            split16(_mm512_mul_ps(_mm512_loadu_ps(row + d), inverse), qa[g] + d, qa[group + g] + d);
        q_scale[g] = scale * softmax_scale;
    }
}

/* Keys 16 t .. 16 t + 15 (rows[j]; NULL: zero) of dims [64 c, 64 c + 64) as a B tile:
 * row r holds dims 4 r .. 4 r + 3 of each key (key j at bytes 4 j .. 4 j + 3). */
ALWAYS_INLINE void pack_key_tile(const int8_t *const rows[16], int c, uint32_t kb[16][16]) {
    __m512i r[16];
    for (int j = 0; j < 16; j++) r[j] = rows[j] ? _mm512_loadu_si512(rows[j] + 64 * c) : _mm512_setzero_si512();
    transpose16(r);
    for (int k = 0; k < 16; k++) _mm512_store_si512(kb[k], r[k]);
}

/* Keys 4 r .. 4 r + 3's values (rows; NULL: zero) of dims [64 c, 64 c + 64) interleaved
 * into row r of the four B tiles vb[4 c .. 4 c + 3] (16 dims each: dim j's four values at
 * bytes 4 j .. 4 j + 3). */
ALWAYS_INLINE void pack_value_quad(const int8_t *const rows[4], int c, int r, int8_t vb[][16][64]) {
    __m512i v[4];
    for (int i = 0; i < 4; i++) v[i] = rows[i] ? _mm512_loadu_si512(rows[i] + 64 * c) : _mm512_setzero_si512();
    __m512i a = _mm512_unpacklo_epi8(v[0], v[1]), b = _mm512_unpackhi_epi8(v[0], v[1]);
    __m512i e = _mm512_unpacklo_epi8(v[2], v[3]), f = _mm512_unpackhi_epi8(v[2], v[3]);
    /* 128-bit lane L of x0 .. x3: dims 16 L + 0-3, 4-7, 8-11, 12-15, four keys each */
    __m512i x0 = _mm512_unpacklo_epi16(a, e), x1 = _mm512_unpackhi_epi16(a, e);
    __m512i x2 = _mm512_unpacklo_epi16(b, f), x3 = _mm512_unpackhi_epi16(b, f);
    __m512i f0 = _mm512_shuffle_i32x4(x0, x1, 0x44), f1 = _mm512_shuffle_i32x4(x0, x1, 0xee);
    __m512i f2 = _mm512_shuffle_i32x4(x2, x3, 0x44), f3 = _mm512_shuffle_i32x4(x2, x3, 0xee);
    _mm512_store_si512(vb[4 * c][r], _mm512_shuffle_i32x4(f0, f2, 0x88));
    _mm512_store_si512(vb[4 * c + 1][r], _mm512_shuffle_i32x4(f0, f2, 0xdd));
    _mm512_store_si512(vb[4 * c + 2][r], _mm512_shuffle_i32x4(f1, f3, 0x88));
    _mm512_store_si512(vb[4 * c + 3][r], _mm512_shuffle_i32x4(f1, f3, 0xdd));
}

/* Span scores of the kv head's group, [group][SPAN] floats (keys past n: -inf): S = Q K^T
 * with the queries qa as A tiles and each 16 keys' rows (key_rows, n of them) packed into
 * B tiles; times each key row's scale and the query's. */
ALWAYS_INLINE void span_scores(const int chunks, int8_t qa[16][MAX_DIM], const int8_t *const *key_rows,
                               const float *key_scales, const float *q_scale, int group, int n,
                               float scores[][SPAN]) {
    const int tiles = (n + 15) / 16;
    const int8_t *rows[SPAN];
    for (int j = 0; j < SPAN; j++) rows[j] = j < n ? key_rows[j] : NULL;
    uint32_t kb[4][16][16] __attribute__((aligned(64)));
    int32_t raw[4][16][16] __attribute__((aligned(64)));
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int c = 0; c < chunks; c++) {
        tile_loadd(4, qa[0] + 64 * c, MAX_DIM);
#define KEYS(T, B)                                                                      \
    if (T < tiles) {                                                                    \
        pack_key_tile(rows + 16 * T, c, kb[T]);                                         \
        tile_loadd(B, kb[T], 64);                                                       \
        _tile_dpbssd(T, 4, B);                                                          \
    }
        KEYS(0, 5) KEYS(1, 6) KEYS(2, 7) KEYS(3, 5)
#undef KEYS
    }
    _tile_stored(0, raw[0], 64);
    _tile_stored(1, raw[1], 64);
    _tile_stored(2, raw[2], 64);
    _tile_stored(3, raw[3], 64);
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY), remainder = _mm512_set1_ps(1.0f / 256.0f);
    for (int t = 0; t < 4; t++) {
        if (t >= tiles) {
            for (int g = 0; g < group; g++) _mm512_storeu_ps(scores[g] + 16 * t, minus_inf);
            continue;
        }
        int valid = n - 16 * t < 16 ? n - 16 * t : 16;
        __mmask16 mask = (__mmask16)((1u << valid) - 1);
        __m512 ks = _mm512_loadu_ps(key_scales + 16 * t);
        for (int g = 0; g < group; g++) { /* row g: head g's high-part sums of 16 keys */
            __m512 s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(raw[t][group + g])), remainder,
                                       _mm512_cvtepi32_ps(_mm512_load_si512(raw[t][g])));
            s = _mm512_mul_ps(_mm512_mul_ps(s, ks), _mm512_set1_ps(q_scale[g]));
            _mm512_storeu_ps(scores[g] + 16 * t, _mm512_mask_mov_ps(minus_inf, mask, s));
        }
    }
}

/* O = P V for the group: weights (times each value row's scale) quantized into an A tile,
 * products over the interleaved values vb; out[g] (head_dim floats) set. */
ALWAYS_INLINE void span_values(const int chunks, float weights[][SPAN], const float *value_scales,
                               int8_t vb[][16][64], int group, float *out) {
    const int head_dim = 64 * chunks;
    int8_t pa[16][SPAN] __attribute__((aligned(64)));
    int32_t part[16][64] __attribute__((aligned(64)));
    float w_scale[MAX_HEADS]; /* rows past 2 group are left as they are: their sums are not read */
    for (int g = 0; g < group; g++) {
        for (int i = 0; i < SPAN; i += 16)
            _mm512_storeu_ps(weights[g] + i, _mm512_mul_ps(_mm512_loadu_ps(weights[g] + i), _mm512_loadu_ps(value_scales + i)));
        float top = largest_abs(weights[g], SPAN), scale = top > 0.0f ? top / 127.0f : 1.0f;
        __m512 inverse = _mm512_set1_ps(1.0f / scale);
        for (int i = 0; i < SPAN; i += 16)
            split16(_mm512_mul_ps(_mm512_loadu_ps(weights[g] + i), inverse), pa[g] + i, pa[group + g] + i);
        w_scale[g] = scale;
    }
    tile_loadd(4, pa, 64);
    const __m512 remainder = _mm512_set1_ps(1.0f / 256.0f);
    for (int c = 0; c < chunks; c++) {
#define DIMS(T, B)                               \
    _tile_zero(T);                               \
    tile_loadd(B, vb[4 * c + T], 64);            \
    _tile_dpbssd(T, 4, B)
        DIMS(0, 5);
        DIMS(1, 6);
        DIMS(2, 7);
        DIMS(3, 5);
        _tile_stored(0, part[0], 256);
        _tile_stored(1, part[0] + 16, 256);
        _tile_stored(2, part[0] + 32, 256);
        _tile_stored(3, part[0] + 48, 256);
#undef DIMS
        for (int g = 0; g < group; g++)
            for (int d = 0; d < 64; d += 16) {
                __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(part[group + g] + d)), remainder,
                                           _mm512_cvtepi32_ps(_mm512_load_si512(part[g] + d)));
                _mm512_storeu_ps(out + (int64_t)g * head_dim + 64 * c + d, _mm512_mul_ps(v, _mm512_set1_ps(w_scale[g])));
            }
    }
}

/* One kv head of the span: scores, softmax, values. */
ALWAYS_INLINE void span_kv_head(const int chunks, const PagedAttention *p, const float *qs,
                                const int64_t *slots, int n, int kvh, float *max, float *sum,
                                float *acc) {
    const int head_dim = 64 * chunks, group = p->group, h0 = kvh * group;
    int8_t qa[16][MAX_DIM] __attribute__((aligned(64)));
    int8_t vb[MAX_DIM / 16][16][64] __attribute__((aligned(64)));
    float key_scales[SPAN], value_scales[SPAN], q_scale[MAX_HEADS];
    float scores[MAX_HEADS][SPAN] __attribute__((aligned(64)));
    const int8_t *k_rows[SPAN];
    const int8_t *k_cache = p->k_cache, *v_cache = p->v_cache;
    for (int j = 0; j < SPAN; j++) {
        k_rows[j] = j < n ? k_cache + slots[j] * p->slot_stride + (int64_t)kvh * p->head_stride : NULL;
        key_scales[j] = k_rows[j] ? cache_row_scale(k_rows[j], 0, head_dim) : 0.0f;
    }
    pack_queries(chunks, qs, h0, group, p->scale, qa, q_scale);
    span_scores(chunks, qa, k_rows, key_scales, q_scale, group, n, scores);
    for (int g = 0; g < group; g++) max[g] = softmax_in_place(scores[g], SPAN / 16, &sum[g]);
    for (int r = 0; r < SPAN / 4; r++) {
        const int8_t *rows[4];
        for (int i = 0; i < 4; i++) {
            int j = 4 * r + i;
            rows[i] = j < n ? v_cache + slots[j] * p->slot_stride + (int64_t)kvh * p->head_stride : NULL;
            value_scales[j] = rows[i] ? cache_row_scale(rows[i], 0, head_dim) : 0.0f;
        }
        for (int c = 0; c < chunks; c++) pack_value_quad(rows, c, r, vb);
    }
    span_values(chunks, scores, value_scales, vb, group, acc);
}

int decode_amx_handles(int cache_kind, int head_dim, int group) {
    return decode_amx_on && cache_kind == CACHE_I8 && (head_dim == 64 || head_dim == 128) &&
           group <= MAX_HEADS;
}

/* Positions [begin, end) (at most 64) of sequence s, every head: max[h], sum[h] and the
 * unnormalized output acc[h * head_dim ..] of the span's softmax (as attention.c's spans).
 * The calling thread has configured its tiles (decode_amx_thread). */
void decode_span_amx(const PagedAttention *p, int64_t s, int begin, int end, float *max,
                     float *sum, float *acc) {
    const int32_t *table = p->block_tables + s * p->max_blocks;
    const float *qs = p->q + p->token_rows[s] * p->heads * p->head_dim;
    int64_t slots[SPAN];
    int n = end - begin;
    span_slots(p, table, begin, n, slots);
    for (int kvh = 0; kvh < p->kv_heads; kvh++) {
        int h0 = kvh * p->group;
        if (p->head_dim == 64)
            span_kv_head(1, p, qs, slots, n, kvh, max + h0, sum + h0, acc + (int64_t)h0 * 64);
        else
            span_kv_head(2, p, qs, slots, n, kvh, max + h0, sum + h0, acc + (int64_t)h0 * 128);
    }
}

void decode_amx_thread(int begin) {
    if (begin) configure_full_tiles();
    else _tile_release();
}

int decode_attention_amx(int on) {
    if (on && !amx_tiles_permitted()) on = 0;
    decode_amx_on = on ? 1 : 0;
    return decode_amx_on;
}
#else
int decode_amx_handles(int cache_kind, int head_dim, int group) {
    (void)cache_kind, (void)head_dim, (void)group;
    return 0;
}

void decode_span_amx(const PagedAttention *p, int64_t s, int begin, int end, float *max,
                     float *sum, float *acc) {
    (void)p, (void)s, (void)begin, (void)end, (void)max, (void)sum, (void)acc;
}

void decode_amx_thread(int begin) { (void)begin; }

int decode_attention_amx(int on) {
    (void)on;
    return 0;
}
#endif
