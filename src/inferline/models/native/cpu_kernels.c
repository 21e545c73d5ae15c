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
 *
 * Tensors are row-major and contiguous. Activations are float32 or bfloat16 (flag
 * arguments), so a layer can feed torch's int4 kernel (bf16 in, bf16 out) without
 * conversion ops. Every row is computed from its own inputs only: results do not depend
 * on what else is in the batch.
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

/* Reads n values of a float32 or bf16 row into dst. */
static inline void load_row(float *dst, const void *src, int64_t offset, int n, int is_bf16) {
    if (is_bf16) {
        const uint16_t *s = (const uint16_t *)src + offset;
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        memcpy(dst, (const float *)src + offset, (size_t)n * sizeof(float));
    }
}

static inline void store_row(void *dst, int64_t offset, const float *src, int n, int is_bf16) {
    if (is_bf16) {
        uint16_t *d = (uint16_t *)dst + offset;
        for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {
        memcpy((float *)dst + offset, src, (size_t)n * sizeof(float));
    }
}

/* residual[t] += delta[t] (when delta is not NULL); out[t] = rms_norm(residual[t]) * weight. */
void add_rms_norm(int64_t rows, int hidden, const void *delta, int delta_bf16, float *residual,
                  const float *weight, float eps, void *out, int out_bf16) {
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[hidden], d[hidden];
        float *r = residual + t * hidden;
        if (delta) {
            load_row(d, delta, t * hidden, hidden, delta_bf16);
            for (int i = 0; i < hidden; i++) r[i] += d[i];
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < hidden; i++) sum += r[i] * r[i];
        float inv = 1.0f / sqrtf(sum / (float)hidden + eps);
        for (int i = 0; i < hidden; i++) row[i] = r[i] * inv * weight[i];
        store_row(out, t * hidden, row, hidden, out_bf16);
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
 * [num_slots, kv_heads, head_dim]. cos/sin tables are [max_positions, head_dim].
 */
void rope_store_kv(int64_t rows, int heads, int kv_heads, int head_dim, const void *qkv,
                   int qkv_bf16, const float *bias, const int64_t *positions,
                   const float *cos_table, const float *sin_table, const int64_t *slots,
                   float *k_cache, float *v_cache, float *q_out) {
    int width = (heads + 2 * kv_heads) * head_dim;
    int q_size = heads * head_dim, kv_size = kv_heads * head_dim;
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[width];
        load_row(row, qkv, t * width, width, qkv_bf16);
        if (bias)
            for (int i = 0; i < width; i++) row[i] += bias[i];
        const float *cos = cos_table + positions[t] * head_dim;
        const float *sin = sin_table + positions[t] * head_dim;
        for (int h = 0; h < heads + kv_heads; h++) rotate(row + h * head_dim, cos, sin, head_dim);
        memcpy(q_out + t * q_size, row, (size_t)q_size * sizeof(float));
        memcpy(k_cache + slots[t] * kv_size, row + q_size, (size_t)kv_size * sizeof(float));
        memcpy(v_cache + slots[t] * kv_size, row + q_size + kv_size,
               (size_t)kv_size * sizeof(float));
    }
}

static inline float dot(const float *a, const float *b, int n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/*
 * One query token per sequence. q [*, heads, head_dim] rows token_rows[s]; sequence s
 * attends to its context_lens[s] cached positions, found through block_tables
 * [num_seqs, max_blocks] (slot = block * block_size + position % block_size). Output rows
 * token_rows[s] of out [*, heads * head_dim]. The kv_heads share of query heads (GQA)
 * reads each key once.
 */
void decode_attention(int64_t num_seqs, int heads, int kv_heads, int head_dim,
                      const float *q, const float *k_cache, const float *v_cache,
                      const int32_t *block_tables, int max_blocks, const int32_t *context_lens,
                      const int64_t *token_rows, int block_size, float scale, void *out,
                      int out_bf16) {
    int group = heads / kv_heads;
    int64_t tasks = num_seqs * kv_heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t s = task / kv_heads;
        int kvh = (int)(task % kv_heads);
        int ctx = context_lens[s];
        const int32_t *table = block_tables + s * max_blocks;
        const float *qs = q + token_rows[s] * heads * head_dim + kvh * group * head_dim;
        float *scores = malloc(sizeof(float) * (size_t)group * (size_t)ctx);
        float acc[group * head_dim];
        float maxes[group], sums[group];
        for (int g = 0; g < group; g++) maxes[g] = -INFINITY;
        for (int j = 0; j < ctx; j++) {
            int64_t slot = (int64_t)table[j / block_size] * block_size + j % block_size;
            const float *k = k_cache + (slot * kv_heads + kvh) * head_dim;
            for (int g = 0; g < group; g++) {
                float sc = dot(qs + g * head_dim, k, head_dim) * scale;
                scores[g * ctx + j] = sc;
                if (sc > maxes[g]) maxes[g] = sc;
            }
        }
        for (int g = 0; g < group; g++) {
            float sum = 0.0f;
            float *sg = scores + g * ctx;
            for (int j = 0; j < ctx; j++) {
                sg[j] = expf(sg[j] - maxes[g]);
                sum += sg[j];
            }
            sums[g] = sum;
        }
        memset(acc, 0, sizeof acc);
        for (int j = 0; j < ctx; j++) {
            int64_t slot = (int64_t)table[j / block_size] * block_size + j % block_size;
            const float *v = v_cache + (slot * kv_heads + kvh) * head_dim;
            for (int g = 0; g < group; g++) {
                float p = scores[g * ctx + j];
                float *a = acc + g * head_dim;
#pragma omp simd
                for (int i = 0; i < head_dim; i++) a[i] += p * v[i];
            }
        }
        for (int g = 0; g < group; g++) {
            float inv = 1.0f / sums[g];
            for (int i = 0; i < head_dim; i++) acc[g * head_dim + i] *= inv;
        }
        int64_t offset = token_rows[s] * heads * head_dim + (int64_t)kvh * group * head_dim;
        store_row(out, offset, acc, group * head_dim, out_bf16);
        free(scores);
    }
}

/* gate_up [rows, 2 * inter] -> out [rows, inter] = silu(gate) * up. */
void silu_mul(int64_t rows, int inter, const void *gate_up, int in_bf16, void *out,
              int out_bf16) {
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float row[2 * inter];
        load_row(row, gate_up, t * 2 * inter, 2 * inter, in_bf16);
        for (int i = 0; i < inter; i++) {
            float g = row[i];
            row[i] = g / (1.0f + expf(-g)) * row[inter + i];
        }
        store_row(out, t * inter, row, inter, out_bf16);
    }
}
