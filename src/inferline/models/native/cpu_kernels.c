/*
 * Fused CPU kernels for the decoder layer, called through ctypes (see native/__init__.py).
 *
 * Eager PyTorch spends more time dispatching a decode step's ~45 small ops per layer than
 * computing them. These kernels do each run of row-wise work in one call:
 *
 *   add_rms_norm     residual += delta; out = rms_norm(residual) * weight
 *   rope_store_kv    (+ bias) rotate q and k, write k and v into the paged cache, q out
 *   silu_mul         out = silu(gate) * up
 *   quantize_rows    float rows -> int8 + per-row scales
 *
 * (decode attention is in attention.c, the 4-bit matmul in q4_gemm.c)
 *
 * Tensors are row-major and contiguous. Activations come in and go out in the form the
 * neighbouring matmul uses: float32, bf16 (torch's int4 kernel: bf16 in, bf16 out), int8
 * with per-row scales (W8A8 input) and int32 with row and column scales (W8A8 output), so
 * no conversion or (de)quantization op runs between kernels. Every row is computed from
 * its own inputs only: results do not depend on what else is in the batch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "hadamard.h"
#include "int8_rows.h"
#include "kernels_common.h"

/* Rows from which the row-wise kernels (norms, RoPE and the cache's stores, SiLU,
 * quantization) split over the threads: at 8 rather than 64, over scenario d's first 32
 * prompts (127 decode steps of 32 rows; timers, two alternated runs each, AMD EPYC, 2
 * threads, 2026-12-06) RoPE + stores took 252 / 283 -> 203 / 222 ms and SiLU 236 / 305 ->
 * 197 / 230: ~0.4-0.5 ms less a 32-row step for each. */
#define ROW_THREADS_FROM 8


/*
 * Row t (n values) of an activation: float32, bf16, or the int32 result of a W8A8 matmul,
 * dequantized as value * (row_scales[t] * col_scales[i]), the same expression as torch's.
 */
static inline void load_row(float *dst, const void *src, int kind, int64_t t, int n,
                            const float *row_scales, const float *col_scales) {
    int64_t offset = t * n;
    if (kind == KIND_BF16) {
        const uint16_t *s = (const uint16_t *)src + offset;
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else if (kind == KIND_I32) {
        const int32_t *s = (const int32_t *)src + offset;
        float row_scale = row_scales[t];
        for (int i = 0; i < n; i++) dst[i] = (float)s[i] * (row_scale * col_scales[i]);
    } else {
        memcpy(dst, (const float *)src + offset, (size_t)n * sizeof(float));
    }
}

/* Row t of int8 dst from n float32 values (no rotation): scale = max|x| / 127 into
 * out_scales[t], values rounded half to even, as torch.round does. */
static inline void quantize_row_int8(void *dst, int64_t t, const float *src, int n,
                                     float *out_scales) {
    float top = 0.0f;
#pragma omp simd reduction(max : top)
    for (int i = 0; i < n; i++) top = larger(top, fabsf(src[i]));
    float scale = larger(top, 1e-8f) / 127.0f;
    out_scales[t] = scale;
    int8_t *d = (int8_t *)dst + t * n;
    /* adding and removing 1.5 * 2^23 rounds |v| <= 2^22 half to even, and vectorizes
     * (nearbyintf is a libm call per element); times 1 / scale, not / scale: a division
     * a value took 14 % of add_rms_norm (quant.Int8Weight.linear does the same) */
    float inverse = 1.0f / scale;
#pragma omp simd
    for (int i = 0; i < n; i++) d[i] = (int8_t)((src[i] * inverse + 12582912.0f) - 12582912.0f);
}

/*
 * Writes row t: float32, bf16, or int8 quantized symmetrically per row for W8A8 (rotated
 * in place first, as the weights were at load: hadamard.h; scale = max|x| / 127 into
 * out_scales[t], values rounded half to even, as torch.round does).
 */
static inline void store_row(void *dst, int kind, int64_t t, float *src, int n,
                             float *out_scales) {
    int64_t offset = t * n;
    if (kind == KIND_BF16) {
        uint16_t *d = (uint16_t *)dst + offset;
        for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else if (kind == KIND_I8) {
        rotate_row(src, n);
        quantize_row_int8(dst, t, src, n, out_scales);
    } else {
        memcpy((float *)dst + offset, src, (size_t)n * sizeof(float));
    }
}

#if defined(__AVX512F__)
/*
 * AVX-512 paths for rows that end as int8 (a W8A8 input) of a width that is a multiple of
 * 64: each row is computed, rotated and its largest |value| taken in one pass over it, 64
 * values at a time in registers, then scaled to int8 in a second. The generic path made
 * five passes (load into a buffer, compute, rotate, max in one dependent chain, quantize):
 * silu_mul of 512 x 1536 bf16 285 -> 200 us on the AMX Xeon (hot). Values as load_row and
 * store_row compute them; only add_rms_norm's sum of squares is added in another order.
 */
#define WIDE_INT8_ROWS(kind, width) ((kind) == KIND_I8 && (width) % ROTATION_BLOCK == 0)

/* add_rms_norm's row t into int8 (hidden a multiple of 64). */
static void add_rms_norm_int8_row(int64_t t, int hidden, const void *delta, int delta_kind,
                                  const float *delta_row_scales, const float *delta_col_scales,
                                  float *residual, const float *weight, float eps, int8_t *out,
                                  float *out_scales, float *rotated) {
    float *r = residual + t * hidden;
    __m512 row_scale = _mm512_set1_ps(delta_kind == KIND_I32 ? delta_row_scales[t] : 0.0f);
    __m512 squares[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int i = 0; i < hidden; i += 16) {
        __m512 v = _mm512_loadu_ps(r + i);
        if (delta) {
            v = _mm512_add_ps(v, load16_activation(delta, delta_kind, t * hidden + i, row_scale,
                                                   delta_kind == KIND_I32 ? delta_col_scales + i : NULL));
            _mm512_storeu_ps(r + i, v);
        }
        squares[(i / 16) & 3] = _mm512_fmadd_ps(v, v, squares[(i / 16) & 3]);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(squares[0], squares[1]),
                                                   _mm512_add_ps(squares[2], squares[3])));
    __m512 inv = _mm512_set1_ps(1.0f / sqrtf(sum / (float)hidden + eps));
    __m512 top = _mm512_setzero_ps();
    for (int b = 0; b < hidden; b += ROTATION_BLOCK) {
        __m512 x[4];
        for (int j = 0; j < 4; j++)
            x[j] = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(r + b + 16 * j), inv),
                                 _mm512_loadu_ps(weight + b + 16 * j));
        top = rotate_store64(x, rotated + b, top);
    }
    quantize_rotated(rotated, hidden, top, 8.0f, out + t * hidden, out_scales + t);
}

/* silu_mul's row t into int8 (inter a multiple of 64). */
static void silu_mul_int8_row(int64_t t, int inter, const void *gate_up, int in_kind,
                              const float *in_row_scales, const float *in_col_scales, int8_t *out,
                              float *out_scales, float *rotated) {
    int64_t base = t * 2 * (int64_t)inter;
    __m512 row_scale = _mm512_set1_ps(in_kind == KIND_I32 ? in_row_scales[t] : 0.0f);
    __m512 top = _mm512_setzero_ps();
    for (int b = 0; b < inter; b += ROTATION_BLOCK) {
        __m512 x[4];
        for (int j = 0; j < 4; j++) {
            int c = b + 16 * j;
            __m512 g = load16_activation(gate_up, in_kind, base + c, row_scale,
                                         in_kind == KIND_I32 ? in_col_scales + c : NULL);
            __m512 u = load16_activation(gate_up, in_kind, base + inter + c, row_scale,
                                         in_kind == KIND_I32 ? in_col_scales + inter + c : NULL);
            x[j] = silu16_times(g, u);
        }
        top = rotate_store64(x, rotated + b, top);
    }
    quantize_rotated(rotated, inter, top, 8.0f, out + t * inter, out_scales + t);
}

/* quantize_rows' row t (float32 or bf16 in, width a multiple of 64). */
static void quantize_int8_row(int64_t t, int width, const void *src, int src_kind, int8_t *out,
                              float *out_scales, float *rotated) {
    __m512 top = _mm512_setzero_ps(), none = _mm512_setzero_ps();
    if (src_kind == KIND_F32_ROTATED) { /* width a multiple of 16 */
        const float *row = (const float *)src + t * width;
        for (int i = 0; i < width; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
        quantize_rotated(row, width, top, 1.0f, out + t * width, out_scales + t);
        return;
    }
    for (int b = 0; b < width; b += ROTATION_BLOCK) {
        __m512 x[4];
        for (int j = 0; j < 4; j++) x[j] = load16_activation(src, src_kind, t * width + b + 16 * j, none, NULL);
        top = rotate_store64(x, rotated + b, top);
    }
    quantize_rotated(rotated, width, top, 8.0f, out + t * width, out_scales + t);
}
#else
#define WIDE_INT8_ROWS(kind, width) 0
#endif

/* residual[t] += delta[t] (when delta is not NULL); out[t] = rms_norm(residual[t]) * weight. */
void add_rms_norm(int64_t rows, int hidden, const void *delta, int delta_kind,
                  const float *delta_row_scales, const float *delta_col_scales, float *residual,
                  const float *weight, float eps, void *out, int out_kind, float *out_scales) {
#if defined(__AVX512F__)
    if (WIDE_INT8_ROWS(out_kind, hidden)) {
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
        for (int64_t t = 0; t < rows; t++) {
            float rotated[hidden];
            add_rms_norm_int8_row(t, hidden, delta, delta_kind, delta_row_scales, delta_col_scales,
                                  residual, weight, eps, out, out_scales, rotated);
        }
        return;
    }
#endif
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row_buffer[hidden], delta_buffer[hidden];
        float *restrict row = row_buffer, *restrict d = delta_buffer; /* VLA loops don't vectorize */
        float *restrict r = residual + t * hidden;
        if (delta) {
            load_row(d, delta, delta_kind, t, hidden, delta_row_scales, delta_col_scales);
#pragma omp simd
            for (int i = 0; i < hidden; i++) r[i] += d[i];
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < hidden; i++) sum += r[i] * r[i];
        float inv = 1.0f / sqrtf(sum / (float)hidden + eps);
#pragma omp simd
        for (int i = 0; i < hidden; i++) row[i] = r[i] * inv * weight[i];
        store_row(out, out_kind, t, row, hidden, out_scales);
    }
}

/* Re-encodes rows (float32 or bf16) as int8 with per-row scales, for a W8A8 matmul. */
void quantize_rows(int64_t rows, int width, const void *src, int src_kind, int8_t *out,
                   float *out_scales) {
#if defined(__AVX512F__)
    if (src_kind == KIND_F32_ROTATED ? width % 16 == 0
                                     : src_kind != KIND_I32 && WIDE_INT8_ROWS(KIND_I8, width)) {
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
        for (int64_t t = 0; t < rows; t++) {
            float rotated[width];
            quantize_int8_row(t, width, src, src_kind, out, out_scales, rotated);
        }
        return;
    }
#endif
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[width];
        load_row(row, src, src_kind, t, width, NULL, NULL);
        if (src_kind == KIND_F32_ROTATED)
            quantize_row_int8(out, t, row, width, out_scales);
        else
            store_row(out, KIND_I8, t, row, width, out_scales);
    }
}

static inline void rotate(float *x, const float *cos, const float *sin, int head_dim) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/*
 * qkv [rows, (heads + 2 * kv_heads) * head_dim] (+ bias) -> q_out [rows, heads, head_dim],
 * rotated; rotated k and plain v written to cache slot slots[t] of k_cache / v_cache
 * [num_slots, kv_heads, head_stride] (cache_kind: float32, bf16, or int8 rows with their
 * scale; kernels_common.h). cos/sin tables are [max_positions, head_dim].
 */
void rope_store_kv(int64_t rows, int heads, int kv_heads, int head_dim, const void *qkv,
                   int qkv_kind, const float *qkv_row_scales, const float *qkv_col_scales,
                   const float *bias, const int64_t *positions,
                   const float *cos_table, const float *sin_table, const int64_t *slots,
                   void *k_cache, void *v_cache, int cache_kind, float *q_out) {
    int width = (heads + 2 * kv_heads) * head_dim;
    int q_size = heads * head_dim, kv_size = kv_heads * head_dim;
    int head_stride = cache_head_stride(head_dim, cache_kind);
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[width];
        load_row(row, qkv, qkv_kind, t, width, qkv_row_scales, qkv_col_scales);
        if (bias)
            for (int i = 0; i < width; i++) row[i] += bias[i];
        const float *cos = cos_table + positions[t] * head_dim;
        const float *sin = sin_table + positions[t] * head_dim;
        for (int h = 0; h < heads + kv_heads; h++) rotate(row + h * head_dim, cos, sin, head_dim);
        memcpy(q_out + t * q_size, row, (size_t)q_size * sizeof(float));
        for (int h = 0; h < kv_heads; h++) {
            int64_t offset = slots[t] * kv_heads * head_stride + (int64_t)h * head_stride;
            store_cache_row(k_cache, offset, row + q_size + h * head_dim, head_dim, cache_kind);
            store_cache_row(v_cache, offset, row + q_size + kv_size + h * head_dim, head_dim,
                            cache_kind);
        }
    }
}


/* silu(g) * u over n values in place into g: 1 / (1 + e^-g) from vrcp14ps and one Newton
 * step (within ~1 ulp of the division, which took a quarter of the kernel's time). */
static inline void silu_times(float *restrict g, const float *restrict u, int n) {
    int i = 0;
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(g + i);
        __m512 den = _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
        __m512 r = _mm512_rcp14_ps(den);
        r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(den, r, one), r);
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_mul_ps(x, r), _mm512_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) g[i] = g[i] / (1.0f + fast_exp(-g[i])) * u[i];
}

/* gate_up [rows, 2 * inter] -> out [rows, inter] = silu(gate) * up. */
void silu_mul(int64_t rows, int inter, const void *gate_up, int in_kind,
              const float *in_row_scales, const float *in_col_scales, void *out, int out_kind,
              float *out_scales) {
#if defined(__AVX512F__)
    if (WIDE_INT8_ROWS(out_kind, inter)) {
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
        for (int64_t t = 0; t < rows; t++) {
            float rotated[inter];
            silu_mul_int8_row(t, inter, gate_up, in_kind, in_row_scales, in_col_scales, out,
                              out_scales, rotated);
        }
        return;
    }
#endif
#pragma omp parallel for if (rows >= ROW_THREADS_FROM) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float buffer[2 * inter];
        float *restrict row = buffer; /* a plain pointer: loops over VLAs do not vectorize */
        load_row(row, gate_up, in_kind, t, 2 * inter, in_row_scales, in_col_scales);
        silu_times(row, row + inter, inter);
        store_row(out, out_kind, t, row, inter, out_scales);
    }
}
