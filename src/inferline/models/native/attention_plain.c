/*
 * Decode attention, the plain path (any head_dim, any build): one task per (sequence, kv
 * head), a key at a time. attention.c takes it where its AVX-512 path does not apply
 * (head_dim other than 64 / 128, or no AVX-512); same arguments as decode_attention.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "kernels_common.h"

/*
 * Softmax attention of `group` query heads (qs, consecutive) over one kv head's `ctx`
 * keys. Keys are visited block by block (no division per key); head_dim is a compile-time
 * constant at the call sites that matter, so the dot products unroll into vector FMAs.
 */
ALWAYS_INLINE void cache_row(float *restrict dst, const void *base, int64_t offset, int n,
                             const int kind) {
    if (kind == CACHE_I8) {
        const int8_t *src = (const int8_t *)base + offset;
        float scale = cache_row_scale(base, offset, n);
#pragma omp simd
        for (int i = 0; i < n; i++) dst[i] = (float)src[i] * scale;
    } else if (kind == CACHE_BF16) {
        const uint16_t *src = (const uint16_t *)base + offset;
#pragma omp simd
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        memcpy(dst, (const float *)base + offset, (size_t)n * sizeof(float));
    }
}

ALWAYS_INLINE void attend_kv_head(int group, const int head_dim, const int kind, const float *qs,
                                  const void *k_cache, const void *v_cache, int64_t head_offset,
                                  int64_t slot_stride, const int32_t *table, int ctx,
                                  int block_size, float scale, float *scores, float *acc) {
    float kv_row[head_dim];
    float *restrict kv = kv_row;
    for (int j = 0, b = 0; j < ctx; b++) {
        int64_t first = (int64_t)table[b] * block_size;
        int n = ctx - j < block_size ? ctx - j : block_size;
        for (int i = 0; i < n; i++, j++) {
            cache_row(kv, k_cache, (first + i) * slot_stride + head_offset, head_dim, kind);
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
            cache_row(kv, v_cache, (first + i) * slot_stride + head_offset, head_dim, kind);
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

/* The plain path: one task per (sequence, kv head), a key at a time (any head_dim). */
int decode_attention_plain(int64_t num_seqs, int heads, int kv_heads, int head_dim, const float *q,
                     const void *k_cache, const void *v_cache, int cache_kind,
                     const int32_t *block_tables,
                     int max_blocks, const int32_t *context_lens, const int64_t *token_rows,
                     int block_size, float scale, void *out, int out_bf16) {
    int group = heads / kv_heads, head_stride = cache_head_stride(head_dim, cache_kind);
    if (group > MAX_GROUP) return -1;
    int64_t tasks = num_seqs * kv_heads, slot_stride = (int64_t)kv_heads * head_stride;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t s = task / kv_heads;
        int kvh = (int)(task % kv_heads), ctx = context_lens[s];
        const int32_t *table = block_tables + s * max_blocks;
        const float *qs = q + token_rows[s] * heads * head_dim + kvh * group * head_dim;
        int64_t head_offset = (int64_t)kvh * head_stride;
        float *scores = malloc(sizeof(float) * (size_t)group * (size_t)ctx);
        float acc[group * head_dim];
#define ATTEND(HEAD_DIM, KIND)                                                                 \
    attend_kv_head(group, HEAD_DIM, KIND, qs, k_cache, v_cache, head_offset, slot_stride, table, \
                   ctx, block_size, scale, scores, acc)
#define ATTEND_KINDS(HEAD_DIM)                                                                 \
    if (cache_kind == CACHE_I8) ATTEND(HEAD_DIM, CACHE_I8);                                    \
    else if (cache_kind == CACHE_BF16) ATTEND(HEAD_DIM, CACHE_BF16);                           \
    else ATTEND(HEAD_DIM, CACHE_F32)
        if (head_dim == 64) {
            ATTEND_KINDS(64);
        } else if (head_dim == 128) {
            ATTEND_KINDS(128);
        } else {
            ATTEND_KINDS(head_dim);
        }
#undef ATTEND_KINDS
#undef ATTEND
        int64_t offset = token_rows[s] * heads * head_dim + (int64_t)kvh * group * head_dim;
        store_span(out, offset, acc, group * head_dim, out_bf16);
        free(scores);
    }
    return 0;
}
