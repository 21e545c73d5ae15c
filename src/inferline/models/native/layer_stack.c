/*
 * A step's whole layer stack in one call: decodes, prefill chunks, or both.
 *
 * A decode step of a small model is short (SmolLM2: ~9 ms at one row, 30 layers), and
 * calling its ~9 kernels per layer one by one from Python costs ~7 us each in argument
 * conversion, allocation and dispatch: ~2 ms a step (a 512-token prefill: 101-105 ms
 * layer by layer, 85-86 in one call). layer_stack makes the same calls,
 * in the same order and on the same inputs as models/fused_forward.py does for such a step,
 * from C: the results are bit for bit the same.
 *
 * It covers steps whose every row is a single-token query (decodes, and speculative drafts
 * as single queries) or in a prefill chunk of a head layout prefill_attention handles, and
 * whose every projection runs one of our kernels:
 * q4_matmul on float32 rows up to its int4/W8A8 crossover, i8_matmul on int8 rows above
 * it (its int32 products go into the next kernel with their row and column scales, as
 * fused_forward passes an Int32Product).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_common.h" /* cache_rotated, OUT_CACHE_BASIS */

/* the kernels strung together (cpu_kernels.c, attention.c, q4_gemm.c, i8_gemm.c) */
void add_rms_norm(int64_t rows, int hidden, const void *delta, int delta_kind,
                  const float *delta_row_scales, const float *delta_col_scales, float *residual,
                  const float *weight, float eps, void *out, int out_kind, float *out_scales);
void quantize_rows(int64_t rows, int width, const void *src, int src_kind, int8_t *out,
                   float *out_scales);
void rope_store_kv(int64_t rows, int heads, int kv_heads, int head_dim, const void *qkv,
                   int qkv_kind, const float *qkv_row_scales, const float *qkv_col_scales,
                   const float *bias, const int64_t *positions, const float *cos_table,
                   const float *sin_table, const int64_t *slots, void *k_cache, void *v_cache,
                   int cache_kind, float *q_out);
int prefill_attention(int64_t num_chunks, int heads, int kv_heads, int head_dim, const float *q,
                      const void *k_cache, const void *v_cache, int cache_kind,
                      const int32_t *block_tables, int max_blocks, const int64_t *chunks,
                      int block_size, float scale, void *out, int out_bf16);
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
int i8_matmul(int64_t m, int64_t n, int64_t k, const int8_t *x8, const int8_t *packed,
              const int32_t *comp, int32_t *out, const float *row_scales,
              const float *col_scales, void *out_scaled, int out_bf16);
int i8_gate_up_silu(int64_t m, int64_t inter, int64_t k, const int8_t *x8, const int8_t *packed,
                    const float *row_scales, const float *col_scales, float *rotated,
                    float *tops);
void quantize_rotated_rows(int64_t rows, int width, const float *rotated, const float *tops,
                           int8_t *out, float *out_scales);

/* A projection's copies: 4-bit (q4) and/or packed int8 (i8, its column sums and scales);
 * with both, q4 runs steps of up to q4_max_rows rows (the row count kernels are chosen for). */
typedef struct {
    const uint8_t *q4;
    const int8_t *i8;
    const int32_t *i8_comp;
    const float *i8_scale;
    int64_t q4_max_rows;
} StackProjection;

/* One decoder layer's weights: RMSNorm weights, qkv bias or NULL, the projections. */
typedef struct {
    const float *input_norm, *post_attention_norm, *qkv_bias;
    StackProjection qkv, o, gate_up, down;
} StackLayer;

/* The model's shape and weights (built once by models/layer_stack.py). */
typedef struct {
    int32_t num_layers, hidden, heads, kv_heads, head_dim, intermediate;
    int32_t compact; /* the gate/up int8 product dequantized to bf16 (fused_forward.py) */
    float eps, attention_scale;
    const float *final_norm, *cos_table, *sin_table;
    const StackLayer *layers;
} LayerStack;

/* A step's queries: single-token ones (num_seqs, each at token_rows[s], the paged context
 * of block_tables / context_lens) and prefill chunks (num_chunks rows of chunks: first row,
 * first position, token count; chunk_tables [num_chunks, chunk_max_blocks]). */
typedef struct {
    int64_t num_seqs;
    const int64_t *token_rows;
    const int32_t *block_tables, *context_lens;
    int32_t max_blocks;
    int64_t num_chunks;
    const int64_t *chunks;
    const int32_t *chunk_tables;
    int32_t chunk_max_blocks;
} StepQueries;

/*
 * The step: its rows (and the row count its kernels are chosen for), their positions and
 * cache slots, every row's queries. With num_out >= 0 only the final hidden states of
 * out_rows are wanted (a prefill chunk's last row, say: the rows whose logits are
 * sampled): the last layer computes every row's keys and values, then attention and the
 * rest for those rows alone (last_queries: theirs, a chunk row as a chunk of one row; the
 * kernels compute a row from its own inputs, so the values are those of the full step).
 */
typedef struct {
    int64_t rows, choice_rows;
    const int64_t *positions, *slots;
    int32_t block_size, cache_kind;
    char *kv_caches;             /* [num_layers, 2, num_slots, kv_heads, width] */
    int64_t layer_bytes, v_bytes; /* offsets of a layer's cache and of its values */
    StepQueries queries;
    int64_t num_out;
    const int64_t *out_rows;
    StepQueries last_queries;
} StackStep;

enum { F32 = 0, BF16 = 1, I32 = 2, I8 = 3, F32_ROTATED = 4 }; /* as cpu_kernels.c */

/* A kernel's input activation (kind F32, BF16, or I32 with row and column scales). */
typedef struct {
    const void *values;
    int kind;
    const float *row_scales, *col_scales;
} Source;

/* A projection's input, as its kernel of this step takes it: float32 rows, or int8 rows
 * and their scales. */
typedef struct {
    void *values;
    int kind;
    float *scales;
} Sink;

static int runs_q4(const StackProjection *p, int64_t choice_rows) {
    return p->q4 && (!p->i8 || choice_rows <= p->q4_max_rows);
}

static Sink input_of(int q4, float *floats, int8_t *codes, float *scales) {
    return q4 ? (Sink){floats, F32, NULL} : (Sink){codes, I8, scales};
}

/* in [rows, k] -> out [rows, n] (float32, int32, or with compact int8 products bf16: the
 * buffer holds any; as fused_forward.py). */
static Source project(const StackProjection *p, int64_t rows, int64_t n, int64_t k, Sink in,
                      void *out, int compact) {
    if (in.kind == F32) {
        q4_matmul(rows, n, k, in.values, 0, p->q4, out);
        return (Source){out, F32, NULL, NULL};
    }
    if (compact) {
        i8_matmul(rows, n, k, in.values, p->i8, p->i8_comp, NULL, in.scales, p->i8_scale, out, 1);
        return (Source){out, BF16, NULL, NULL};
    }
    i8_matmul(rows, n, k, in.values, p->i8, p->i8_comp, out, NULL, NULL, NULL, 0);
    return (Source){out, I32, in.scales, p->i8_scale};
}

/* Attention of a layer for the queries qs into out (0, or a kernel's refusal). */
static int attend(const LayerStack *m, const StackStep *s, const StepQueries *qs, const float *q,
                  const char *k_cache, const char *v_cache, float *out, int form) {
    int status = 0;
    if (qs->num_seqs > 0)
        status = decode_attention(qs->num_seqs, m->heads, m->kv_heads, m->head_dim, q, k_cache,
                                  v_cache, s->cache_kind, qs->block_tables, qs->max_blocks,
                                  qs->context_lens, qs->token_rows, s->block_size,
                                  m->attention_scale, out, form);
    if (qs->num_chunks > 0 && status == 0)
        status = prefill_attention(qs->num_chunks, m->heads, m->kv_heads, m->head_dim, q,
                                   k_cache, v_cache, s->cache_kind, qs->chunk_tables,
                                   qs->chunk_max_blocks, qs->chunks, s->block_size,
                                   m->attention_scale, out, form);
    return status;
}

/* Rows picked[0..n) of src [*, width] into dst [n, width]. */
static void gather_rows(float *dst, const float *src, const int64_t *picked, int64_t n, int width) {
    for (int64_t i = 0; i < n; i++)
        memcpy(dst + i * width, src + picked[i] * width, sizeof(float) * (size_t)width);
}

/*
 * residual [rows, hidden] (the embeddings; updated in place) -> hidden_out [rows, hidden]
 * (or [num_out, hidden]: out_rows' in their order), the final-normed hidden states. 0 when
 * done; -1 when decode attention refuses the head layout, -2 when prefill attention does
 * (nothing after that layer computed), or out of memory.
 */
int layer_stack(const LayerStack *m, const StackStep *s, float *residual,
                 float *hidden_out) {
    int64_t rows = s->rows, c = s->choice_rows, n = rows; /* n: the rows computed from here */
    int hidden = m->hidden, q_width = m->heads * m->head_dim;
    int qkv_width = q_width + 2 * m->kv_heads * m->head_dim, inter = m->intermediate;
    int64_t out = s->num_out; /* < 0: every row */
    /* float32 buffers (a projection's output buffer holds float32 or int32 sums), int8
     * rows for i8 inputs, three sets of row scales (a product's row scales are read while
     * the next int8 rows are written), and the out rows' residual and attention rows; room
     * for the larger of the step's rows and the out rows (which may repeat rows) */
    int64_t picked = out > 0 ? out : 0, cap = picked > rows ? picked : rows;
    int64_t floats = cap * ((int64_t)hidden * 2 + qkv_width + 2 * q_width + 3 * inter + 3) +
                     picked * ((int64_t)hidden + q_width);
    int64_t codes = cap * ((int64_t)hidden + q_width + inter);
    float *buffer = malloc(sizeof(float) * (size_t)floats + (size_t)codes);
    if (!buffer) return -2;
    float *x = buffer, *delta = x + cap * hidden, *qkv = delta + cap * hidden;
    float *q = qkv + cap * qkv_width, *attention = q + cap * q_width;
    float *gate_up = attention + cap * q_width, *h = gate_up + cap * 2 * inter;
    float *x_scales = h + cap * inter, *att_scales = x_scales + cap, *h_scales = att_scales + cap;
    float *picked_residual = h_scales + cap, *picked_attention = picked_residual + picked * hidden;
    int8_t *x8 = (int8_t *)(picked_attention + picked * q_width);
    int8_t *att8 = x8 + cap * hidden, *h8 = att8 + cap * q_width;
    Source delta_in = {NULL, F32, NULL, NULL};
    int status = 0;
    for (int l = 0; l < m->num_layers && status == 0; l++) {
        const StackLayer *w = &m->layers[l];
        char *k_cache = s->kv_caches + l * s->layer_bytes, *v_cache = k_cache + s->v_bytes;
        int last = l + 1 == m->num_layers && out >= 0;
        Sink x_in = input_of(runs_q4(&w->qkv, c), x, x8, x_scales);
        add_rms_norm(rows, hidden, delta_in.values, delta_in.kind, delta_in.row_scales,
                     delta_in.col_scales, residual, w->input_norm, m->eps, x_in.values,
                     x_in.kind, x_in.scales);
        Source qkv_out = project(&w->qkv, rows, qkv_width, hidden, x_in, qkv, 0);
        rope_store_kv(rows, m->heads, m->kv_heads, m->head_dim, qkv_out.values, qkv_out.kind,
                      qkv_out.row_scales, qkv_out.col_scales, w->qkv_bias, s->positions,
                      m->cos_table, m->sin_table, s->slots, k_cache, v_cache, s->cache_kind, q);
        Sink o_in = input_of(runs_q4(&w->o, c), attention, att8, att_scales);
        /* W8A8 o over a rotated cache: attention's outputs stay in its basis (kernels_common.h) */
        int basis = o_in.kind == I8 && cache_rotated(s->cache_kind, m->head_dim) ? OUT_CACHE_BASIS : 0;
        status = attend(m, s, last ? &s->last_queries : &s->queries, q, k_cache, v_cache,
                        attention, basis);
        float *attended = attention;
        if (last) { /* the out rows alone from here on */
            gather_rows(picked_residual, residual, s->out_rows, out, hidden);
            gather_rows(picked_attention, attention, s->out_rows, out, q_width);
            residual = picked_residual, attended = picked_attention, n = out;
            if (n == 0) break; /* a chunk mid-prompt, nothing sampled: keys and values only */
        }
        if (o_in.kind == I8) quantize_rows(n, q_width, attended, basis ? F32_ROTATED : F32, att8, att_scales);
        else o_in.values = attended;
        Source o_out = project(&w->o, n, hidden, q_width, o_in, delta, 0);
        Sink gate_up_in = input_of(runs_q4(&w->gate_up, c), x, x8, x_scales);
        add_rms_norm(n, hidden, o_out.values, o_out.kind, o_out.row_scales,
                     o_out.col_scales, residual, w->post_attention_norm, m->eps,
                     gate_up_in.values, gate_up_in.kind, gate_up_in.scales);
        Sink h_in = input_of(runs_q4(&w->down, c), h, h8, h_scales);
        /* W8A8 gate/up and down on AMX: SiLU in gate/up's epilogue (gate_up_silu.c) */
        if (gate_up_in.kind == I8 && h_in.kind == I8 && !m->compact &&
            i8_gate_up_silu(n, inter, hidden, gate_up_in.values, w->gate_up.i8,
                            gate_up_in.scales, w->gate_up.i8_scale, gate_up,
                            gate_up + cap * inter) == 0) {
            quantize_rotated_rows(n, inter, gate_up, gate_up + cap * inter, h8, h_scales);
        } else {
            Source gate_up_out = project(&w->gate_up, n, 2 * inter, hidden, gate_up_in, gate_up, m->compact);
            silu_mul(n, inter, gate_up_out.values, gate_up_out.kind, gate_up_out.row_scales,
                     gate_up_out.col_scales, h_in.values, h_in.kind, h_in.scales);
        }
        delta_in = project(&w->down, n, hidden, inter, h_in, delta, 0);
    }
    if (status == 0)
        add_rms_norm(n, hidden, delta_in.values, delta_in.kind, delta_in.row_scales,
                     delta_in.col_scales, residual, m->final_norm, m->eps, hidden_out, F32, NULL);
    free(buffer);
    return status;
}
