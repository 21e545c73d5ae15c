/*
 * Fused CPU kernels for the decoder layer, called through ctypes (see native/__init__.py).
 *
 * Eager PyTorch spends more time dispatching a decode step's ~45 small ops per layer than
 * computing them. These kernels do each run of row-wise work in one call:
 *
 *   add_rms_norm     residual += delta; out = rms_norm(residual) * weight
 *   rope_store_kv    (+ bias) rotate q and k, write k and v into the paged cache, q out
 *   decode_attention one query token per sequence against its paged context, no gather
 *   silu_mul         out = silu(gate) * up
 *   quantize_rows    float rows -> int8 + per-row scales
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

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as torch does (NaN kept a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_I32 = 2, KIND_I8 = 3 };

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

/*
 * Writes row t: float32, bf16, or int8 quantized symmetrically per row for W8A8 (scale =
 * max|x| / 127 into out_scales[t], values rounded half to even, as torch.round does).
 */
static inline void store_row(void *dst, int kind, int64_t t, const float *src, int n,
                             float *out_scales) {
    int64_t offset = t * n;
    if (kind == KIND_BF16) {
        uint16_t *d = (uint16_t *)dst + offset;
        for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else if (kind == KIND_I8) {
        float top = 0.0f;
#pragma omp simd reduction(max : top)
        for (int i = 0; i < n; i++) top = fmaxf(top, fabsf(src[i]));
        float scale = fmaxf(top, 1e-8f) / 127.0f;
        out_scales[t] = scale;
        int8_t *d = (int8_t *)dst + offset;
        /* adding and removing 1.5 * 2^23 rounds |v| <= 2^22 half to even, and vectorizes
         * (nearbyintf is a libm call per element) */
#pragma omp simd
        for (int i = 0; i < n; i++) d[i] = (int8_t)((src[i] / scale + 12582912.0f) - 12582912.0f);
    } else {
        memcpy((float *)dst + offset, src, (size_t)n * sizeof(float));
    }
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

/* residual[t] += delta[t] (when delta is not NULL); out[t] = rms_norm(residual[t]) * weight. */
void add_rms_norm(int64_t rows, int hidden, const void *delta, int delta_kind,
                  const float *delta_row_scales, const float *delta_col_scales, float *residual,
                  const float *weight, float eps, void *out, int out_kind, float *out_scales) {
#pragma omp parallel for if (rows >= 64) schedule(static)
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
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[width];
        load_row(row, src, src_kind, t, width, NULL, NULL);
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
 * [num_slots, kv_heads, head_dim] (float32, or bf16 if cache_bf16). cos/sin tables are
 * [max_positions, head_dim].
 */
void rope_store_kv(int64_t rows, int heads, int kv_heads, int head_dim, const void *qkv,
                   int qkv_kind, const float *qkv_row_scales, const float *qkv_col_scales,
                   const float *bias, const int64_t *positions,
                   const float *cos_table, const float *sin_table, const int64_t *slots,
                   void *k_cache, void *v_cache, int cache_bf16, float *q_out) {
    int width = (heads + 2 * kv_heads) * head_dim;
    int q_size = heads * head_dim, kv_size = kv_heads * head_dim;
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[width];
        load_row(row, qkv, qkv_kind, t, width, qkv_row_scales, qkv_col_scales);
        if (bias)
            for (int i = 0; i < width; i++) row[i] += bias[i];
        const float *cos = cos_table + positions[t] * head_dim;
        const float *sin = sin_table + positions[t] * head_dim;
        for (int h = 0; h < heads + kv_heads; h++) rotate(row + h * head_dim, cos, sin, head_dim);
        memcpy(q_out + t * q_size, row, (size_t)q_size * sizeof(float));
        store_span(k_cache, slots[t] * kv_size, row + q_size, kv_size, cache_bf16);
        store_span(v_cache, slots[t] * kv_size, row + q_size + kv_size, kv_size, cache_bf16);
    }
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define MAX_GROUP 32

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
 * Softmax attention of `group` query heads (qs, consecutive) over one kv head's `ctx`
 * keys. Keys are visited block by block (no division per key); head_dim is a compile-time
 * constant at the call sites that matter, so the dot products unroll into vector FMAs.
 */
ALWAYS_INLINE void cache_row(float *restrict dst, const void *base, int64_t offset, int n,
                             const int bf16) {
    if (bf16) {
        const uint16_t *src = (const uint16_t *)base + offset;
#pragma omp simd
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        memcpy(dst, (const float *)base + offset, (size_t)n * sizeof(float));
    }
}

ALWAYS_INLINE void attend_kv_head(int group, const int head_dim, const int bf16, const float *qs,
                                  const void *k_cache, const void *v_cache, int64_t head_offset,
                                  int64_t slot_stride, const int32_t *table, int ctx,
                                  int block_size, float scale, float *scores, float *acc) {
    float kv_row[head_dim];
    float *restrict kv = kv_row;
    for (int j = 0, b = 0; j < ctx; b++) {
        int64_t first = (int64_t)table[b] * block_size;
        int n = ctx - j < block_size ? ctx - j : block_size;
        for (int i = 0; i < n; i++, j++) {
            cache_row(kv, k_cache, (first + i) * slot_stride + head_offset, head_dim, bf16);
            for (int g = 0; g < group; g++) {
                const float *qg = qs + g * head_dim;
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int d = 0; d < head_dim; d++) sum += qg[d] * kv[d];
                scores[g * ctx + j] = sum * scale;
            }
        }
    }
    float sums[MAX_GROUP];
    for (int g = 0; g < group; g++) {
        float *sg = scores + g * ctx, top = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : top)
        for (int j = 0; j < ctx; j++) top = sg[j] > top ? sg[j] : top;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < ctx; j++) {
            sg[j] = fast_exp(sg[j] - top);
            sum += sg[j];
        }
        sums[g] = sum;
    }
    memset(acc, 0, sizeof(float) * (size_t)(group * head_dim));
    for (int j = 0, b = 0; j < ctx; b++) {
        int64_t first = (int64_t)table[b] * block_size;
        int n = ctx - j < block_size ? ctx - j : block_size;
        for (int i = 0; i < n; i++, j++) {
            cache_row(kv, v_cache, (first + i) * slot_stride + head_offset, head_dim, bf16);
            for (int g = 0; g < group; g++) {
                float p = scores[g * ctx + j], *a = acc + g * head_dim;
#pragma omp simd
                for (int d = 0; d < head_dim; d++) a[d] += p * kv[d];
            }
        }
    }
    for (int g = 0; g < group; g++) {
        float inv = 1.0f / sums[g];
        for (int d = 0; d < head_dim; d++) acc[g * head_dim + d] *= inv;
    }
}

/*
 * One query token per sequence. q [*, heads, head_dim] rows token_rows[s]; sequence s
 * attends to its context_lens[s] cached positions, found through block_tables
 * [num_seqs, max_blocks] (slot = block * block_size + position % block_size). Output rows
 * token_rows[s] of out [*, heads * head_dim]. The cache holds float32, or bf16 if
 * cache_bf16 (half the memory traffic). The query heads sharing a kv head (GQA)
 * read each key once. Returns -1 (computing nothing) if heads / kv_heads > MAX_GROUP.
 */
int decode_attention(int64_t num_seqs, int heads, int kv_heads, int head_dim, const float *q,
                     const void *k_cache, const void *v_cache, int cache_bf16,
                     const int32_t *block_tables,
                     int max_blocks, const int32_t *context_lens, const int64_t *token_rows,
                     int block_size, float scale, void *out, int out_bf16) {
    int group = heads / kv_heads;
    if (group > MAX_GROUP) return -1;
    int64_t tasks = num_seqs * kv_heads, slot_stride = (int64_t)kv_heads * head_dim;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t s = task / kv_heads;
        int kvh = (int)(task % kv_heads), ctx = context_lens[s];
        const int32_t *table = block_tables + s * max_blocks;
        const float *qs = q + token_rows[s] * heads * head_dim + kvh * group * head_dim;
        int64_t head_offset = (int64_t)kvh * head_dim;
        float *scores = malloc(sizeof(float) * (size_t)group * (size_t)ctx);
        float acc[group * head_dim];
#define ATTEND(HEAD_DIM, BF16)                                                                 \
    attend_kv_head(group, HEAD_DIM, BF16, qs, k_cache, v_cache, head_offset, slot_stride, table, \
                   ctx, block_size, scale, scores, acc)
        if (head_dim == 64 && cache_bf16)
            ATTEND(64, 1);
        else if (head_dim == 64)
            ATTEND(64, 0);
        else if (head_dim == 128 && cache_bf16)
            ATTEND(128, 1);
        else if (cache_bf16)
            ATTEND(head_dim, 1);
        else
            ATTEND(head_dim, 0);
#undef ATTEND
        int64_t offset = token_rows[s] * heads * head_dim + (int64_t)kvh * group * head_dim;
        store_span(out, offset, acc, group * head_dim, out_bf16);
        free(scores);
    }
    return 0;
}

/* gate_up [rows, 2 * inter] -> out [rows, inter] = silu(gate) * up. */
void silu_mul(int64_t rows, int inter, const void *gate_up, int in_kind,
              const float *in_row_scales, const float *in_col_scales, void *out, int out_kind,
              float *out_scales) {
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float buffer[2 * inter];
        float *restrict row = buffer; /* a plain pointer: loops over VLAs do not vectorize */
        load_row(row, gate_up, in_kind, t, 2 * inter, in_row_scales, in_col_scales);
#pragma omp simd
        for (int i = 0; i < inter; i++) {
            float g = row[i];
            row[i] = g / (1.0f + fast_exp(-g)) * row[inter + i];
        }
        store_row(out, out_kind, t, row, inter, out_scales);
    }
}
