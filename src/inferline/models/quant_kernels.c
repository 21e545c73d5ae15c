/* Load-time kernels: GGUF block decoding and int4 / int8 weight quantization in one pass.
 *
 * Every function computes bit for bit what its reference computes: the gguf package's numpy
 * dequantizers (gguf.quants) and inferline.models.quant's torch quantizers. That holds
 * because each value goes through the same IEEE float32 operations in the same order; it
 * needs -ffp-contract=off (no fused multiply-add) and no -ffast-math, which quant_native.py
 * passes. Rounding is round-half-even (nearbyintf in the default rounding mode), as
 * torch.round. Parallel over rows or blocks with OpenMP; threads as the caller says.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "hadamard.h" /* native/: the rotation of W8A8 weights and activations */

/* IEEE half -> float, exact (subnormals included). */
static inline float half_to_float(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    float value;
    uint32_t bits;
    if (exp == 0) {
        value = (float)mant * 5.9604644775390625e-8f; /* mant * 2^-24, exact */
        memcpy(&bits, &value, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    memcpy(&value, &bits, 4);
    return value;
}

static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/*
 * Each format as one function that splits a block into its fields: an integer code per
 * value, and per group a float scale and (for Q4_1/Q5_1/Q4_K/Q5_K) an offset, with the gguf
 * package's own float32 products. Its value is code * scale (+ offset): the same float
 * operations as gguf.quants (a product commutes exactly, and x - y is x + (-y)).
 */

/* Q4_0: d f16, 16 bytes of nibbles (elements 0-15 low, 16-31 high); w = d * (q - 8). */
static inline void fields_q4_0(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    (void)offset;
    scale[0] = half_to_float(x);
    for (int j = 0; j < 16; j++) {
        codes[j] = (int8_t)((x[2 + j] & 15) - 8);
        codes[j + 16] = (int8_t)((x[2 + j] >> 4) - 8);
    }
}

/* Q4_1: d, m f16, 16 bytes of nibbles; w = d * q + m. */
static inline void fields_q4_1(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    scale[0] = half_to_float(x);
    offset[0] = half_to_float(x + 2);
    for (int j = 0; j < 16; j++) {
        codes[j] = (int8_t)(x[4 + j] & 15);
        codes[j + 16] = (int8_t)(x[4 + j] >> 4);
    }
}

/* Q5_0 / Q5_1 codes: 32 high bits (u32) at qh, 16 bytes of nibbles at qs, minus bias. */
static inline void five_bit_codes(const uint8_t *qh_at, const uint8_t *qs, int bias,
                                  int8_t *codes) {
    uint32_t qh = le32(qh_at);
    for (int j = 0; j < 16; j++) {
        codes[j] = (int8_t)(((qs[j] & 15) | (((qh >> j) & 1) << 4)) - bias);
        codes[j + 16] = (int8_t)(((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - bias);
    }
}

/* Q5_0: d f16, 32 high bits, 16 bytes of nibbles; w = d * (q - 16). */
static inline void fields_q5_0(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    (void)offset;
    scale[0] = half_to_float(x);
    five_bit_codes(x + 2, x + 6, 16, codes);
}

/* Q5_1: d, m f16, 32 high bits, 16 bytes of nibbles; w = d * q + m. */
static inline void fields_q5_1(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    scale[0] = half_to_float(x);
    offset[0] = half_to_float(x + 2);
    five_bit_codes(x + 4, x + 8, 0, codes);
}

/* Q8_0: d f16, 32 int8; w = q * d. */
static inline void fields_q8_0(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    (void)offset;
    scale[0] = half_to_float(x);
    memcpy(codes, x + 2, 32);
}

/* The 6-bit scale and min of sub-block s of a Q4_K/Q5_K super-block (12 packed bytes). */
static inline void k_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K / Q5_K: 256 values = 8 sub-blocks of 32; w = (d * sc) * q - (dmin * m); Q5_K adds
 * a fifth bit per value (bit s of byte j of qh: sub-block s, value j). */
static inline void k_fields(const uint8_t *x, const uint8_t *qh, const uint8_t *qs,
                            int8_t *codes, float *scale, float *offset) {
    float d = half_to_float(x), dmin = half_to_float(x + 2);
    for (int s = 0; s < 8; s++) {
        int sc, mn;
        k_scale_min(x + 4, s, &sc, &mn);
        scale[s] = d * (float)sc;
        offset[s] = -(dmin * (float)mn);
        const uint8_t *q = qs + (s / 2) * 32;
        int shift = (s % 2) * 4;
        for (int j = 0; j < 32; j++) {
            int high = qh != NULL ? ((qh[j] >> s) & 1) << 4 : 0;
            codes[s * 32 + j] = (int8_t)(((q[j] >> shift) & 15) | high);
        }
    }
}

static inline void fields_q4_k(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    k_fields(x, NULL, x + 16, codes, scale, offset);
}

static inline void fields_q5_k(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    k_fields(x, x + 16, x + 48, codes, scale, offset);
}

/* Q6_K: 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d f16;
 * w = (d * scale[e / 16]) * (q - 32). */
static inline void fields_q6_k(const uint8_t *x, int8_t *codes, float *scale, float *offset) {
    (void)offset;
    const uint8_t *ql = x, *qh = x + 128;
    const int8_t *scales = (const int8_t *)(x + 192);
    float d = half_to_float(x + 208);
    for (int g = 0; g < 16; g++) scale[g] = d * (float)scales[g];
    for (int e = 0; e < 256; e++) {
        int half = e / 128, nib = (e % 128) / 64, k = e % 64, crumb = (e % 128) / 32;
        int lo = (ql[half * 64 + k] >> (4 * nib)) & 15;
        int hi = (qh[half * 32 + e % 32] >> (2 * crumb)) & 3;
        codes[e] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/*
 * Per format: dq_<format> decodes n_blocks blocks to float32 (code * scale (+ offset)),
 * fields_<format>_rows writes their fields (codes [n_blocks * values], scale and offset
 * [n_blocks * groups]; offset untouched for symmetric formats) for block_rows.BlockRows.
 */
#define DEFINE_FORMAT(name, bytes, values, group, has_offset)                                  \
    void dq_##name(const uint8_t *src, int64_t n_blocks, float *out, int threads) {            \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                      \
        for (int64_t b = 0; b < n_blocks; b++) {                                               \
            int8_t codes[values];                                                              \
            float scale[values / group], offset[values / group];                               \
            fields_##name(src + b * bytes, codes, scale, offset);                              \
            float *y = out + b * values;                                                       \
            for (int i = 0; i < values; i++)                                                   \
                y[i] = has_offset ? (float)codes[i] * scale[i / group] + offset[i / group]     \
                                  : (float)codes[i] * scale[i / group];                        \
        }                                                                                      \
    }                                                                                          \
    void fields_##name##_rows(const uint8_t *src, int64_t n_blocks, int8_t *codes,             \
                              float *scale, float *offset, int threads) {                      \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                      \
        for (int64_t b = 0; b < n_blocks; b++) {                                               \
            float unused[values / group];                                                      \
            fields_##name(src + b * bytes, codes + b * values, scale + b * (values / group),   \
                          has_offset ? offset + b * (values / group) : unused);                \
        }                                                                                      \
    }

DEFINE_FORMAT(q4_0, 18, 32, 32, 0)
DEFINE_FORMAT(q4_1, 20, 32, 32, 1)
DEFINE_FORMAT(q5_0, 22, 32, 32, 0)
DEFINE_FORMAT(q5_1, 24, 32, 32, 1)
DEFINE_FORMAT(q8_0, 34, 32, 32, 0)
DEFINE_FORMAT(q4_k, 144, 256, 32, 1)
DEFINE_FORMAT(q5_k, 176, 256, 32, 1)
DEFINE_FORMAT(q6_k, 210, 256, 16, 0)

/* quant.quantize_int4 before packing: per group of 32, low/high = min/max,
 * scale = max((high - low) / 15, 1e-8), q = clamp(round((w - low) / scale), 0, 15),
 * zero = low + 8 * scale. scale/zero are [rows, cols / 32]. (min/max ignore NaN order:
 * weights have none.) */
void quantize_int4_rows(const float *w, int64_t rows, int64_t cols, int32_t *q, float *scale,
                        float *zero, int threads) {
    int64_t groups = cols / 32;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *x = w + r * cols + g * 32;
            int32_t *out = q + r * cols + g * 32;
            float lo = x[0], hi = x[0];
#pragma omp simd reduction(min : lo) reduction(max : hi)
            for (int j = 0; j < 32; j++) {
                lo = x[j] < lo ? x[j] : lo;
                hi = x[j] > hi ? x[j] : hi;
            }
            float s = (hi - lo) / 15.0f;
            if (s < 1e-8f) s = 1e-8f;
#pragma omp simd
            for (int j = 0; j < 32; j++) {
                float v = nearbyintf((x[j] - lo) / s);
                v = v < 0.0f ? 0.0f : (v > 15.0f ? 15.0f : v);
                out[j] = (int32_t)v;
            }
            scale[r * groups + g] = s;
            zero[r * groups + g] = lo + 8.0f * s;
        }
    }
}

#define INT8_TILE_ROWS 64

/* One row of quant.quantize_int8: scale = max(max|w|, 1e-8) / 127,
 * q = clamp(round(w / scale), -127, 127). */
static float quantize_int8_row(const float *x, int64_t cols, int8_t *q) {
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int64_t c = 0; c < cols; c++) {
        float a = fabsf(x[c]);
        amax = a > amax ? a : amax;
    }
    if (amax < 1e-8f) amax = 1e-8f;
    float s = amax / 127.0f;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) {
        float v = nearbyintf(x[c] / s);
        v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
        q[c] = (int8_t)v;
    }
    return s;
}

/* quant.quantize_int8 of every row (rotated first: hadamard.h), written transposed: w8_t
 * is [cols, rows]. Rows are quantized 64 at a time into a tile, whose columns are then
 * whole 64-byte runs of w8_t. tile is threads * 64 * cols bytes of scratch. */
void quantize_int8_rows(const float *w, int64_t rows, int64_t cols, int8_t *w8_t, float *scale,
                        int8_t *tile, int threads) {
    int64_t tiles = (rows + INT8_TILE_ROWS - 1) / INT8_TILE_ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        int8_t *buf = tile + (int64_t)omp_get_thread_num() * INT8_TILE_ROWS * cols;
        int64_t r0 = t * INT8_TILE_ROWS;
        int64_t n = rows - r0 < INT8_TILE_ROWS ? rows - r0 : INT8_TILE_ROWS;
        float row[cols];
        for (int64_t i = 0; i < n; i++) {
            memcpy(row, w + (r0 + i) * cols, (size_t)cols * sizeof(float));
            rotate_row(row, cols);
            scale[r0 + i] = quantize_int8_row(row, cols, buf + i * cols);
        }
        for (int64_t c = 0; c < cols; c++) {
            int8_t *dst = w8_t + c * rows + r0;
            for (int64_t i = 0; i < n; i++) dst[i] = buf[i * cols + c];
        }
    }
}
