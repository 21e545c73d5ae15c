/*
 * Helpers shared by the native kernels (cpu_kernels.c, attention.c): bf16 conversion,
 * a vectorizable exp, and writing a span of floats as float32 or bf16.
 */
#ifndef INFERLINE_KERNELS_COMMON_H
#define INFERLINE_KERNELS_COMMON_H
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hadamard.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The larger / smaller of two floats (b ignored when NaN, as fmaxf / fminf) in a form that
 * vectorizes: without -ffinite-math-only, GCC calls libm's fmaxf for every element. */
static inline float larger(float a, float b) { return b > a ? b : a; }
static inline float smaller(float a, float b) { return b < a ? b : a; }

/* Round to nearest even, as torch does (NaN kept a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* n float32 values to dst + offset as float32 or bf16 (a part of a row). */
static inline void store_span(void *dst, int64_t offset, const float *src, int n, int is_bf16) {
    if (is_bf16) {
        uint16_t *d = (uint16_t *)dst + offset;
        for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {
        memcpy((float *)dst + offset, src, (size_t)n * sizeof(float));
    }
}

/*
 * exp for x <= 88 (Cephes' expf: range reduction by ln 2, degree-6 polynomial; relative
 * error ~1e-7) written so that loops over it vectorize; libm's expf does not.
 */
ALWAYS_INLINE float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* n = round(x / ln 2), by the 1.5 * 2^23 trick: floorf would block vectorization */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/*
 * The paged K/V cache's element kinds. A cache is [num_slots, kv_heads, head_stride]: float32
 * or bf16 rows of head_dim values (head_stride = head_dim), or int8 rows of head_dim values
 * followed by their float32 scale (4 bytes: head_stride = head_dim + 4), a value being
 * int8 * scale, the scale max|x| / 127 of that slot's row for that kv head.
 */
enum { CACHE_F32 = 0, CACHE_BF16 = 1, CACHE_I8 = 2 };
#define CACHE_I8_SCALE_BYTES 4

/* Elements (bytes for int8) of one kv head's row of one slot. */
static inline int cache_head_stride(int head_dim, int kind) {
    return kind == CACHE_I8 ? head_dim + CACHE_I8_SCALE_BYTES : head_dim;
}

/* The scale of the int8 row that starts at element `offset` (head_dim values). */
static inline float cache_row_scale(const void *cache, int64_t offset, int head_dim) {
    float scale;
    memcpy(&scale, (const int8_t *)cache + offset + head_dim, sizeof scale);
    return scale;
}

/* One kv head's row of head_dim float32 values into the cache at element `offset`, as
 * float32, bf16, or int8 with its scale (rounded half to even, as torch.round). An int8
 * row is rotated first (hadamard.h: head_dim a multiple of 64), so that one outlier
 * channel does not set its scale; attention over such a cache rotates its queries the
 * same way and its outputs back (`rotated_rows`, `store_rotated_rows`). */
static inline void store_cache_row(void *cache, int64_t offset, const float *row, int head_dim,
                                   int kind) {
    if (kind != CACHE_I8) {
        store_span(cache, offset, row, head_dim, kind == CACHE_BF16);
        return;
    }
    float turned[head_dim];
    float *src = turned;
    memcpy(src, row, sizeof(float) * (size_t)head_dim);
    rotate_row(src, head_dim);
    int8_t *d = (int8_t *)cache + offset;
#if defined(__AVX512F__)
    if (head_dim % 16 == 0) { /* the same values as the loops below, 16 at a time */
        __m512 top16 = _mm512_setzero_ps();
        for (int i = 0; i < head_dim; i += 16) top16 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(src + i)), top16);
        float scale = larger(_mm512_reduce_max_ps(top16), 1e-30f) / 127.0f;
        __m512 divisor = _mm512_set1_ps(scale);
        for (int i = 0; i < head_dim; i += 16) {
            __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(src + i), divisor),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128((__m128i *)(d + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q)));
        }
        memcpy(d + head_dim, &scale, sizeof scale);
        return;
    }
#endif
    float top = 0.0f;
    for (int i = 0; i < head_dim; i++) top = larger(top, fabsf(src[i]));
    float scale = larger(top, 1e-30f) / 127.0f;
    for (int i = 0; i < head_dim; i++) d[i] = (int8_t)((src[i] / scale + 12582912.0f) - 12582912.0f);
    memcpy(d + head_dim, &scale, sizeof scale);
}

/* Whether attention over this cache runs in the rotated basis of its int8 rows. */
static inline int cache_rotated(int kind, int head_dim) {
    return kind == CACHE_I8 && head_dim % ROTATION_BLOCK == 0;
}

/* Rows rows[0..n) of x [*, width], each rotated (hadamard.h), packed into a new [n, width]
 * buffer (free it): queries in the basis of a rotated cache's keys (q.k = qH.kH). */
static inline float *rotated_rows(const float *x, const int64_t *rows, int64_t n, int width) {
    float *packed = malloc(sizeof(float) * (size_t)(n * width));
#pragma omp parallel for schedule(static) if (n >= 32) /* a prefill chunk: 1.5 % of it serial */
    for (int64_t i = 0; i < n; i++) {
        memcpy(packed + i * width, x + rows[i] * width, sizeof(float) * (size_t)width);
        rotate_row(packed + i * width, width);
    }
    return packed;
}

/*
 * Attention's output form (the kernels' out_bf16 argument): bit 0 bf16 (else float32);
 * OUT_CACHE_BASIS: over a rotated cache, the outputs stay in the rotated basis, for a
 * caller that quantizes them for a W8A8 projection at once: its rotation of each 64
 * values (quantize_rows, kind KIND_F32_ROTATED) would undo the rotation back, so both
 * are skipped (two Hadamard transforms a head and row). No effect on other caches.
 */
#define OUT_BF16 1
#define OUT_CACHE_BASIS 2

/* Row i of packed [n, width] rotated back (H is its own inverse; not with OUT_CACHE_BASIS)
 * into row rows[i] of out, float32 or bf16: attention outputs over rotated values (sum p vH
 * = (sum p v) H). */
static inline void store_rotated_rows(void *out, const int64_t *rows, float *packed, int64_t n,
                                      int width, int out_form) {
#pragma omp parallel for schedule(static) if (n >= 32)
    for (int64_t i = 0; i < n; i++) {
        if (!(out_form & OUT_CACHE_BASIS)) rotate_row(packed + i * width, width);
        store_span(out, rows[i] * width, packed + i * width, width, out_form & OUT_BF16);
    }
}

#define MAX_GROUP 32 /* query heads per kv head that decode attention handles */

/* Queries against a paged K/V cache [num_slots, kv_heads, head_stride] (decode and prefill
 * attention): slot = block_tables[seq][position / block_size] * block_size + position %
 * block_size. */
typedef struct {
    int heads, kv_heads, group, head_dim, block_size, max_blocks;
    int64_t slot_stride; /* kv_heads * head_stride: elements from one slot to the next */
    int head_stride;     /* cache_head_stride: elements from one kv head's row to the next */
    const float *q;
    const void *k_cache, *v_cache;
    const int32_t *block_tables;
    const int64_t *token_rows; /* decode: each sequence's query row (prefill: NULL) */
    float scale;
} PagedAttention;

#if defined(__AVX512F__)
#include <immintrin.h>

#define TASK_ROWS 16 /* query rows of a prefill task: one lane each */

/* A task's rows of its chunk: the first's index in the step, how many (<= 16), the first's
 * and last's positions, each row's position (padding rows repeat the last's). */
typedef struct {
    int64_t first_row;
    int rows, first_pos, last_pos;
    int pos[TASK_ROWS];
} TaskRows;

ALWAYS_INLINE TaskRows task_rows(const int64_t *chunk, int r0) {
    TaskRows t;
    t.first_row = chunk[0] + r0;
    t.rows = (int)(chunk[2] - r0) < TASK_ROWS ? (int)(chunk[2] - r0) : TASK_ROWS;
    t.first_pos = (int)chunk[1] + r0, t.last_pos = t.first_pos + t.rows - 1;
    for (int i = 0; i < TASK_ROWS; i++) t.pos[i] = t.first_pos + (i < t.rows ? i : t.rows - 1);
    return t;
}

/* The slot of position pos through a sequence's block table (block_size a power of 2). */
ALWAYS_INLINE int64_t position_slot(const PagedAttention *p, const int32_t *table, int pos) {
    int shift = __builtin_ctz((unsigned)p->block_size);
    return ((int64_t)table[pos >> shift] << shift) + (pos & (p->block_size - 1));
}

/* Every kv head's row of a slot of an int8 cache (contiguous: slot_stride bytes) asked for
 * ahead of use. Always inlined, as its callers: GCC deletes a call to a function whose only
 * effects are prefetches (it counts it as pure), and did. */
ALWAYS_INLINE void prefetch_slot(const PagedAttention *p, const void *cache, int64_t slot) {
    const char *row = (const char *)cache + slot * p->slot_stride;
    for (int64_t b = 0; b < p->slot_stride; b += 64) _mm_prefetch(row + b, _MM_HINT_T1);
}

/* The K and V rows of positions [begin, begin + n) asked for ahead of use, slot by slot:
 * decode attention's span two tasks on. */
ALWAYS_INLINE void prefetch_positions(const PagedAttention *p, const int32_t *table, int begin,
                                      int n) {
    for (int j = 0; j < n; j++) {
        int64_t slot = position_slot(p, table, begin + j);
        prefetch_slot(p, p->k_cache, slot);
        prefetch_slot(p, p->v_cache, slot);
    }
}

/* The slots of positions [begin, begin + n), their K rows and then their V rows asked for
 * ahead of use (the keys are read first): decode attention's span, at its start. */
ALWAYS_INLINE void span_slots(const PagedAttention *p, const int32_t *table, int begin, int n,
                              int64_t *slots) {
    for (int j = 0; j < n; j++) slots[j] = position_slot(p, table, begin + j);
    for (int j = 0; j < n; j++) prefetch_slot(p, p->k_cache, slots[j]);
    for (int j = 0; j < n; j++) prefetch_slot(p, p->v_cache, slots[j]);
}

/* 16 float32, bf16 or int8 (kind: CACHE_*, unscaled) values from base + offset, as
 * float32. */
ALWAYS_INLINE __m512 load16(const void *base, int64_t offset, const int kind) {
    if (kind == CACHE_I8) {
        __m128i b = _mm_loadu_si128((const __m128i *)((const int8_t *)base + offset));
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    }
    if (kind == CACHE_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + offset));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)base + offset);
}

/* 16 float32 as bf16, rounded to nearest even (as f32_to_bf16; NaN handling aside). */
ALWAYS_INLINE __m256i bf16_of(__m512 x) {
#if defined(__AVX512BF16__)
    return (__m256i)_mm512_cvtneps_pbh(x);
#else
    __m512i u = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
#endif
}

/* exp of 16 lanes (the polynomial of fast_exp, in AVX-512). */
ALWAYS_INLINE __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

/* 2^x as a polynomial of x's fraction (count coefficients c, the highest degree's first),
 * scaled by 2^round(x) with vscalefps; x below -126 gives ~0. */
ALWAYS_INLINE __m512 exp2_fraction(__m512 x, const float *c, const int count) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n); /* [-0.5, 0.5] */
    __m512 y = _mm512_set1_ps(c[0]);
    for (int i = 1; i < count; i++) y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(y, n);
}

/* 2^x (relative error ~1e-7): degree 6, ln2^6 / 6! ... ln2 / 1!, 1. */
ALWAYS_INLINE __m512 exp2_16(__m512 x) {
    static const float c[7] = {1.5403530393381606e-4f, 1.3333558146428443e-3f,
                               9.6181291076284772e-3f, 5.5504108664821580e-2f,
                               2.4022650695910071e-1f, 6.9314718055994531e-1f, 1.0f};
    return exp2_fraction(x, c, 7);
}

/* 2^x for softmax weights that are then rounded (to bf16, to bytes): degree 3 (relative
 * error < 8e-5, least squares on [-0.5, 0.5]). */
ALWAYS_INLINE __m512 exp2_weight(__m512 x) {
    /* exp2_fraction without its clamp: x = score - reference is finite, and scalef of a
     * very negative power gives 0 as the clamp would (~2^-126 then) */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n); /* [-0.5, 0.5] */
    __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(0.055088683807507886f), f, _mm512_set1_ps(0.24260405145949143f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(0.6932762416819638f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(0.9999289403695102f));
    return _mm512_scalef_ps(y, n);
}

/* r[i] (16 x 16 uint32) becomes its transpose (packing AMX tiles' operands, int16 query
 * pairs). */
ALWAYS_INLINE void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* u[4a + e], 128-bit lane L: rows 4a..4a+3 of column 4L + e */
    for (int e = 0; e < 4; e++) {
        __m512i v = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), w = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
        __m512i x = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88), y = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
        r[e] = _mm512_shuffle_i32x4(v, x, 0x88);
        r[8 + e] = _mm512_shuffle_i32x4(v, x, 0xdd);
        r[4 + e] = _mm512_shuffle_i32x4(w, y, 0x88);
        r[12 + e] = _mm512_shuffle_i32x4(w, y, 0xdd);
    }
}

/* Softmax numerators of 16 * vectors scores in place (exp(s - max); -inf scores give 0):
 * returns their max and stores their sum (decode attention's spans, both kernels). */
static inline float softmax_in_place(float *scores, int vectors, float *sum) {
    __m512 top = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();
    for (int r = 0; r < vectors; r++) top = _mm512_max_ps(top, _mm512_loadu_ps(scores + 16 * r));
    float max = _mm512_reduce_max_ps(top);
    __m512 m = _mm512_set1_ps(max);
    for (int r = 0; r < vectors; r++) {
        __m512 s = _mm512_loadu_ps(scores + 16 * r);
        __mmask16 valid = _mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        __m512 w = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(s, m)));
        _mm512_storeu_ps(scores + 16 * r, w);
        total = _mm512_add_ps(total, w);
    }
    *sum = _mm512_reduce_add_ps(total);
    return max;
}
#endif
#endif
