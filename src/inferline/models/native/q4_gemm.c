/*
 * 4-bit weight matmul for the CPU: one pass over the weights for all rows.
 *
 * torch's int4 kernel (_weight_int4pack_mm_for_cpu) reads its weights again for every row,
 * so a 5-row step (a decode with 4 speculative drafts, or 5 streams) cost twice a 1-row
 * one. Here the rows of a step share each load of the weights: a tile of 16 output
 * columns is decoded once per group of 32 inputs and multiplied into every row.
 *
 * Weight format (q4x16), for W [n, k] (k a multiple of 32): the columns in tiles of 16 (the
 * last one padded with zeros), each tile a run of k / 32 blocks of Q4_BLOCK_BYTES:
 *   bytes   0..255  codes q (0..15) of the tile's 16 columns x 32 inputs: in 64-byte chunk
 *                   c, byte 4 * j + r holds column j's input 8c + r in its low nibble and
 *                   input 8c + 4 + r in its high one (so a chunk's low nibbles are the u8
 *                   operand of one VNNI dot product over inputs 8c..8c+3, its high nibbles of
 *                   the next);
 *   bytes 256..287  16 fp16 scales d, one per column;
 *   bytes 288..319  16 fp16 minimums m; the weight is d * q + m (as GGUF's Q4_1).
 * Activations are quantized per row and per group of 32 to int8 with scale s = max|x|/127;
 * a group contributes d * s * sum(q * x_q) + m * sum(x) (the exact float sum of x).
 *
 * Every output row depends on its own input row only, and the operations for a row do
 * not depend on how many rows share the call: results are batch invariant.
 * Paths: AVX-512 VNNI, AVX2 (+ AVX-VNNI where present), and plain C; the build's
 * -march=native picks one.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "kernels_common.h"

#define Q4_GROUP 32
#define Q4_TILE 16
#define Q4_CODE_BYTES 256
#define Q4_BLOCK_BYTES 320
#define ROW_BLOCK 8

static inline uint16_t to_half(float f) {
    _Float16 h = (_Float16)f;
    uint16_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
}

static inline float from_half(uint16_t bits) {
    _Float16 h;
    memcpy(&h, &bits, sizeof h);
    return (float)h;
}

static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

/* Bytes of the packed form of an [n, k] weight. */
int64_t q4_packed_bytes(int64_t n, int64_t k) {
    return (n + Q4_TILE - 1) / Q4_TILE * (k / Q4_GROUP) * Q4_BLOCK_BYTES;
}

/*
 * One column's group of 32 weights: its fp16 scale and minimum into the block's scale
 * slots, its codes into the block's code bytes (the layout above). Per column and group:
 * m = min, d = (max - min) / 15, both rounded to fp16 first; codes round((w - m) / d)
 * clamped to 0..15. The loops over the 32 values vectorize; the 16 code bytes are written
 * whole, so the block needs no clearing first.
 */
static void pack_group(const float *src, int j, uint8_t *block) {
    float low = src[0], high = src[0];
#pragma omp simd reduction(min : low) reduction(max : high)
    for (int i = 1; i < Q4_GROUP; i++) {
        low = smaller(low, src[i]);
        high = larger(high, src[i]);
    }
    uint16_t d16 = to_half((high - low) / 15.0f), m16 = to_half(low);
    float d = from_half(d16), m = from_half(m16), inv = d > 0.0f ? 1.0f / d : 0.0f;
    uint16_t *scales = (uint16_t *)(block + Q4_CODE_BYTES);
    scales[j] = d16;
    scales[Q4_TILE + j] = m16;
    uint8_t codes[Q4_GROUP];
    for (int i = 0; i < Q4_GROUP; i++) {
        float q = round_even((src[i] - m) * inv);
        codes[i] = (uint8_t)(q < 0.0f ? 0.0f : (q > 15.0f ? 15.0f : q));
    }
    for (int c = 0; c < Q4_GROUP / 8; c++)
        for (int r = 0; r < 4; r++)
            block[64 * c + 4 * j + r] = (uint8_t)(codes[8 * c + r] | (codes[8 * c + 4 + r] << 4));
}

/* Packs w [n, k] float32 (k % 32 == 0), column by column and group by group (pack_group). */
void q4_pack(int64_t n, int64_t k, const float *w, uint8_t *out) {
    int64_t tiles = (n + Q4_TILE - 1) / Q4_TILE, groups = k / Q4_GROUP;
    if (n % Q4_TILE) /* the last tile's padding columns stay zero */
        memset(out + (tiles - 1) * groups * Q4_BLOCK_BYTES, 0, (size_t)(groups * Q4_BLOCK_BYTES));
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; t++)
        for (int j = 0; j < Q4_TILE && t * Q4_TILE + j < n; j++)
            for (int64_t g = 0; g < groups; g++)
                pack_group(w + (t * Q4_TILE + j) * k + g * Q4_GROUP, j,
                           out + (t * groups + g) * Q4_BLOCK_BYTES);
}

/* Code of column j, input i of a block (the layout above); for the plain C path. */
static inline int code_at(const uint8_t *block, int j, int i) {
    uint8_t byte = block[64 * (i / 8) + 4 * j + i % 4];
    return (i % 8) >= 4 ? byte >> 4 : byte & 0x0F;
}

/*
 * x [rows, k] float32 (or bf16) -> per row and group: int8 codes xq [rows, k], scales
 * xs and exact sums xsum [rows, k / 32].
 */
static void quantize_activations(int64_t rows, int64_t k, const void *x, int x_bf16,
                                 int8_t *xq, float *xs, float *xsum) {
    int64_t groups = k / Q4_GROUP;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t g = 0; g < groups; g++) {
            float v[Q4_GROUP], top = 0.0f, sum = 0.0f;
            int64_t offset = r * k + g * Q4_GROUP;
            if (x_bf16) {
                const uint16_t *src = (const uint16_t *)x + offset;
                for (int i = 0; i < Q4_GROUP; i++) {
                    uint32_t u = (uint32_t)src[i] << 16;
                    memcpy(&v[i], &u, sizeof u);
                }
            } else {
                memcpy(v, (const float *)x + offset, sizeof v);
            }
            for (int i = 0; i < Q4_GROUP; i++) {
                top = larger(top, fabsf(v[i]));
                sum += v[i];
            }
            float inv = top > 0.0f ? 127.0f / top : 0.0f;
            for (int i = 0; i < Q4_GROUP; i++) xq[offset + i] = (int8_t)round_even(v[i] * inv);
            xs[r * groups + g] = top / 127.0f;
            xsum[r * groups + g] = sum;
        }
    }
}

static inline int32_t load4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* One tile of 16 columns for R rows (R a constant after inlining: the accumulators stay
 * in registers). out points at column 0 of the tile in row 0. */
ALWAYS_INLINE void tile_rows(const int R, const uint8_t *restrict block, int64_t groups,
                             int64_t k, const int8_t *restrict xq, const float *restrict xs,
                             const float *restrict xsum, float *restrict out, int64_t n_out,
                             int columns) {
    __m512 total[ROW_BLOCK];
    const __m512i mask = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) total[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++, block += Q4_BLOCK_BYTES) {
        __m512i dot[ROW_BLOCK];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) dot[r] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i chunk = _mm512_loadu_si512(block + 64 * c);
            __m512i low = _mm512_and_si512(chunk, mask);
            __m512i high = _mm512_and_si512(_mm512_srli_epi16(chunk, 4), mask);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const int8_t *a = xq + r * k + g * Q4_GROUP + 8 * c;
                dot[r] = _mm512_dpbusd_epi32(dot[r], low, _mm512_set1_epi32(load4(a)));
                dot[r] = _mm512_dpbusd_epi32(dot[r], high, _mm512_set1_epi32(load4(a + 4)));
            }
        }
        __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 256)));
        __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 288)));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 scale = _mm512_mul_ps(d, _mm512_set1_ps(xs[r * groups + g]));
            total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), scale, total[r]);
            total[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(xsum[r * groups + g]), total[r]);
        }
    }
    __mmask16 keep = columns == Q4_TILE ? 0xFFFF : (__mmask16)((1u << columns) - 1);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(out + r * n_out, keep, total[r]);
}
#define Q4_PATH "avx512-vnni"

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* Half a tile (8 columns) per pass: 16 ymm registers hold 4 rows' sums. */
ALWAYS_INLINE __m256i dot_u8s8(__m256i acc, __m256i u8, __m256i s8) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u8, s8);
#else
    /* u8 <= 15 and |s8| <= 127: a pair's sum <= 3810 never saturates int16 */
    __m256i pairs = _mm256_maddubs_epi16(u8, s8);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

ALWAYS_INLINE void half_tile_rows(const int R, const uint8_t *restrict block, int half,
                                  int64_t groups, int64_t k, const int8_t *restrict xq,
                                  const float *restrict xs, const float *restrict xsum,
                                  float *restrict out, int64_t n_out, int columns) {
    __m256 total[4];
    const __m256i mask = _mm256_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) total[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++, block += Q4_BLOCK_BYTES) {
        __m256i dot[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) dot[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256i chunk = _mm256_loadu_si256((const __m256i *)(block + 64 * c + 32 * half));
            __m256i low = _mm256_and_si256(chunk, mask);
            __m256i high = _mm256_and_si256(_mm256_srli_epi16(chunk, 4), mask);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const int8_t *a = xq + r * k + g * Q4_GROUP + 8 * c;
                dot[r] = dot_u8s8(dot[r], low, _mm256_set1_epi32(load4(a)));
                dot[r] = dot_u8s8(dot[r], high, _mm256_set1_epi32(load4(a + 4)));
            }
        }
        const __m128i *halves = (const __m128i *)(block + 256 + 16 * half);
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(halves));
        __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(halves + 2));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256 scale = _mm256_mul_ps(d, _mm256_set1_ps(xs[r * groups + g]));
            total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), scale, total[r]);
            total[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(xsum[r * groups + g]), total[r]);
        }
    }
    int first = 8 * half, count = columns - first > 8 ? 8 : columns - first;
    for (int r = 0; r < R; r++) {
        float lanes[8];
        _mm256_storeu_ps(lanes, total[r]);
        if (count > 0) memcpy(out + r * n_out + first, lanes, sizeof(float) * (size_t)count);
    }
}

ALWAYS_INLINE void tile_rows(const int R, const uint8_t *restrict block, int64_t groups,
                             int64_t k, const int8_t *restrict xq, const float *restrict xs,
                             const float *restrict xsum, float *restrict out, int64_t n_out,
                             int columns) {
    for (int r0 = 0; r0 < R; r0 += 4) {
        int rows = R - r0 < 4 ? R - r0 : 4;
        for (int half = 0; half < 2; half++) {
#define HALF(N)                                                                           \
    half_tile_rows(N, block, half, groups, k, xq + r0 * k, xs + r0 * groups,             \
                   xsum + r0 * groups, out + r0 * n_out, n_out, columns)
            if (rows == 4) HALF(4);
            else if (rows == 3) HALF(3);
            else if (rows == 2) HALF(2);
            else HALF(1);
#undef HALF
        }
    }
}
#define Q4_PATH "avx2"

#else
ALWAYS_INLINE void tile_rows(const int R, const uint8_t *restrict block, int64_t groups,
                             int64_t k, const int8_t *restrict xq, const float *restrict xs,
                             const float *restrict xsum, float *restrict out, int64_t n_out,
                             int columns) {
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < columns; j++) {
            float total = 0.0f;
            for (int64_t g = 0; g < groups; g++) {
                const uint8_t *b = block + g * Q4_BLOCK_BYTES;
                const uint16_t *scales = (const uint16_t *)(b + Q4_CODE_BYTES);
                int32_t dot = 0;
                for (int i = 0; i < Q4_GROUP; i++)
                    dot += code_at(b, j, i) * xq[r * k + g * Q4_GROUP + i];
                total += (float)dot * (from_half(scales[j]) * xs[r * groups + g]);
                total += from_half(scales[Q4_TILE + j]) * xsum[r * groups + g];
            }
            out[r * n_out + j] = total;
        }
    }
}
#define Q4_PATH "plain-c"
#endif

/* Which code path this build runs ("avx512-vnni", "avx2" or "plain-c"). */
const char *q4_path(void) { return Q4_PATH; }

/*
 * out [rows, n] float32 = x [rows, k] (float32, or bf16 if x_bf16) @ W^T, W packed by
 * q4_pack. Threads split the column tiles; each tile's blocks are read once per ROW_BLOCK
 * rows (from memory for the first block of rows, from cache for the others).
 */
void q4_matmul(int64_t rows, int64_t n, int64_t k, const void *x, int x_bf16,
               const uint8_t *w, float *out) {
    int64_t groups = k / Q4_GROUP, tiles = (n + Q4_TILE - 1) / Q4_TILE;
    int8_t *xq = malloc((size_t)(rows * k));
    float *xs = malloc(sizeof(float) * (size_t)(rows * groups * 2));
    float *xsum = xs + rows * groups;
    quantize_activations(rows, k, x, x_bf16, xq, xs, xsum);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        const uint8_t *block = w + t * groups * Q4_BLOCK_BYTES;
        int columns = n - t * Q4_TILE < Q4_TILE ? (int)(n - t * Q4_TILE) : Q4_TILE;
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            int64_t count = rows - r0 < ROW_BLOCK ? rows - r0 : ROW_BLOCK;
            const int8_t *q = xq + r0 * k;
            const float *s = xs + r0 * groups, *sum = xsum + r0 * groups;
            float *o = out + r0 * n + t * Q4_TILE;
#define TILE(R) tile_rows(R, block, groups, k, q, s, sum, o, n, columns)
            switch (count) {
            case 8: TILE(8); break;
            case 7: TILE(7); break;
            case 6: TILE(6); break;
            case 5: TILE(5); break;
            case 4: TILE(4); break;
            case 3: TILE(3); break;
            case 2: TILE(2); break;
            default: TILE(1); break;
            }
#undef TILE
        }
    }
    free(xq);
    free(xs);
}

/*
 * Writes back and drops the cache lines of [p, p + bytes) from every cache level, as a
 * decode step finds a layer's weights (streamed from memory after the other layers'):
 * the load-time probe times its kernels so, at the cost of the weights' own lines rather
 * than of reading a buffer larger than the last-level cache. 1 when done, 0 where the
 * build has no flush instruction (the caller then evicts by reading).
 */
int flush_cache_lines(const void *p, int64_t bytes) {
#if defined(__x86_64__) || defined(__i386__)
    const char *c = (const char *)p;
    for (int64_t i = 0; i < bytes; i += 64) {
#ifdef __CLFLUSHOPT__
        _mm_clflushopt((void *)(c + i));
#else
        _mm_clflush(c + i);
#endif
    }
    _mm_mfence();
    return 1;
#else
    (void)p;
    (void)bytes;
    return 0;
#endif
}
