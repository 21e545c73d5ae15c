/*
 * A step's whole layer stack in one call, for steps the 4-bit kernels run end to end.
 *
 * A decode step of a small model is short (SmolLM2: ~9 ms at one row, 30 layers), and
 * calling its ~9 kernels per layer one by one from Python costs ~7 us each in argument
 * conversion, allocation and dispatch: ~2 ms a step. decode_stack makes the same calls,
 * in the same order and on the same inputs as models/fused_forward.py does for such a step,
 * from C: the results are bit for bit the same.
 *
 * It covers steps where every projection runs q4_matmul (no more rows than the smallest
 * int4/W8A8 crossover) and every row is a single-token query (decodes, and speculative
 * drafts as single queries): no prefill chunk. Everything between kernels is float32.
 */
#include <stdint.h>
#include <stdlib.h>

/* the kernels strung together (cpu_kernels.c, attention.c, q4_gemm.c) */
void add_rms_norm(int64_t rows, int hidden, const void *delta, int delta_kind,
                  const float *delta_row_scales, const float *delta_col_scales, float *residual,
                  const float *weight, float eps, void *out, int out_kind, float *out_scales);
void rope_store_kv(int64_t rows, int heads, int kv_heads, int head_dim, const void *qkv,
                   int qkv_kind, const float *qkv_row_scales, const float *qkv_col_scales,
                   const float *bias, const int64_t *positions, const float *cos_table,
                   const float *sin_table, const int64_t *slots, void *k_cache, void *v_cache,
                   int cache_kind, float *q_out);
int decode_attention(int64_t num_seqs, int heads, int kv_heads, int head_dim, const float *q,
                     const void *k_cache, const void *v_cache, int cache_kind,
                     const int32_t *block_tables, int max_blocks, const int32_t *context_lens,
                     const int64_t *token_rows, int block_size, float scale, void *out,
                     int out_bf16);
void silu_mul(int64_t rows, int inter, const void *gate_up, int in_kind,
              const float *in_row_scales, const float *in_col_scales, void *out, int out_kind,
              float *out_scales);
void q4_matmul(int64_t rows, int64_t n, int64_t k, const void *x, int x_bf16,
               const uint8_t *w, float *out);

/* One decoder layer's weights: RMSNorm weights, q4-packed projections, qkv bias or NULL. */
typedef struct {
    const float *input_norm, *post_attention_norm, *qkv_bias;
    const uint8_t *qkv, *o, *gate_up, *down;
} StackLayer;

/* The model's shape and weights (built once by models/decode_stack.py). */
typedef struct {
    int32_t num_layers, hidden, heads, kv_heads, head_dim, intermediate;
    float eps, attention_scale;
    const float *final_norm, *cos_table, *sin_table;
    const StackLayer *layers;
} DecodeStack;

/* The step: its queries, their cache slots and the paged context each sequence sees. */
typedef struct {
    int64_t rows, num_seqs;
    const int64_t *positions, *slots, *token_rows;
    const int32_t *block_tables, *context_lens;
    int32_t max_blocks, block_size, cache_kind;
    char *kv_caches;             /* [num_layers, 2, num_slots, kv_heads, width] */
    int64_t layer_bytes, v_bytes; /* offsets of a layer's cache and of its values */
} DecodeStep;

enum { F32 = 0 };

/*
 * residual [rows, hidden] (the embeddings; updated in place) -> hidden_out [rows, hidden],
 * the final-normed hidden states. 0 when done; -1 (nothing computed) when decode attention
 * refuses the head layout, -2 when out of memory.
 */
int decode_stack(const DecodeStack *m, const DecodeStep *s, float *residual,
                 float *hidden_out) {
    int64_t rows = s->rows;
    int hidden = m->hidden, q_width = m->heads * m->head_dim;
    int qkv_width = q_width + 2 * m->kv_heads * m->head_dim, inter = m->intermediate;
    int64_t floats = rows * ((int64_t)hidden * 2 + qkv_width + 2 * q_width + 3 * inter);
    float *buffer = malloc(sizeof(float) * (size_t)floats);
    if (!buffer) return -2;
    float *x = buffer, *delta = x + rows * hidden, *qkv = delta + rows * hidden;
    float *q = qkv + rows * qkv_width, *attention = q + rows * q_width;
    float *gate_up = attention + rows * q_width, *h = gate_up + rows * 2 * inter;
    int status = 0;
    for (int l = 0; l < m->num_layers && status == 0; l++) {
        const StackLayer *w = &m->layers[l];
        char *k_cache = s->kv_caches + l * s->layer_bytes, *v_cache = k_cache + s->v_bytes;
        add_rms_norm(rows, hidden, l ? delta : NULL, F32, NULL, NULL, residual, w->input_norm,
                     m->eps, x, F32, NULL);
        q4_matmul(rows, qkv_width, hidden, x, 0, w->qkv, qkv);
        rope_store_kv(rows, m->heads, m->kv_heads, m->head_dim, qkv, F32, NULL, NULL,
                      w->qkv_bias, s->positions, m->cos_table, m->sin_table, s->slots, k_cache,
                      v_cache, s->cache_kind, q);
        status = decode_attention(s->num_seqs, m->heads, m->kv_heads, m->head_dim, q, k_cache,
                                  v_cache, s->cache_kind, s->block_tables, s->max_blocks,
                                  s->context_lens, s->token_rows, s->block_size,
                                  m->attention_scale, attention, 0);
        q4_matmul(rows, hidden, q_width, attention, 0, w->o, delta);
        add_rms_norm(rows, hidden, delta, F32, NULL, NULL, residual, w->post_attention_norm,
                     m->eps, x, F32, NULL);
        q4_matmul(rows, 2 * inter, hidden, x, 0, w->gate_up, gate_up);
        silu_mul(rows, inter, gate_up, F32, NULL, NULL, h, F32, NULL);
        q4_matmul(rows, hidden, inter, h, 0, w->down, delta);
    }
    if (status == 0)
        add_rms_norm(rows, hidden, delta, F32, NULL, NULL, residual, m->final_norm, m->eps,
                     hidden_out, F32, NULL);
    free(buffer);
    return status;
}
