/*
 * Prefill attention: the queries of prefill chunks against their paged K/V cache, causal,
 * without gathering keys into a padded tile.
 *
 *   prefill_attention(...)  chunks [num_chunks, 3] int64 (first row in q / out, position of
 *                           the chunk's first token, its token count); block_tables
 *                           [num_chunks, max_blocks]; query row r of a chunk (position
 *                           start + r) attends to positions 0..start + r, which the cache
 *                           already holds (this step's K/V are written first). q [*, heads,
 *                           head_dim] float32; out [*, heads * head_dim] float32 or bf16.
 *                           Returns 0, or -2 where this build or head size is not handled
 *                           (the caller then runs torch's SDPA).
 *
 * A task is 16 query rows of one chunk and one kv head (all the query heads sharing it).
 * Everything is vertical: the 16 queries sit in the 16 lanes of a vector, so a key's
 * scores for the 16 rows are one vector (FMAs over head_dim with the key's value
 * broadcast and the queries transposed once per task); the online softmax's max, exp and
 * sums, and the causal mask, run per lane; the output is kept transposed (head_dim
 * vectors of 16 rows) and receives p * v with v's value broadcast. No horizontal sum
 * anywhere; key runs wholly past a task's last row are never visited. Each chunk's
 * result depends on the chunk alone (not on the other chunks of the step).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_common.h"

/* prefill_attention_amx.c: the same task on AMX bf16 tiles, where built and switched on */
int prefill_amx_handles(int cache_kind, int head_dim, int group);
int prefill_attention_on_amx(const PagedAttention *p, int64_t num_chunks, const int64_t *chunks,
                             int cache_kind, void *out, int out_bf16);
/* prefill_attention_i16.c: the task over an int8 cache on VNNI int16 products */
int prefill_i16_handles(int cache_kind, int head_dim, int group);
void prefill_task_i16(const PagedAttention *p, const int64_t *chunk, const int32_t *table, int r0,
                      int kvh, void *out, int out_bf16);

#if defined(__AVX512F__)
#define ROWS TASK_ROWS /* query rows per task: one lane each */
#define KEY_RUN 16   /* keys per softmax update */
#define MAX_DIM 128
#define MAX_GROUP_PREFILL 8 /* query heads per kv head handled here; more: SDPA */


/* Keys [first, first + n) of a chunk (n <= KEY_RUN, inside one block) as float32 rows of
 * kv head kvh: keys[j * head_dim + d] (int8 rows times their scale). */
ALWAYS_INLINE void load_keys(const int C, const int kind, const PagedAttention *p,
                             const void *cache, int64_t slot, int n, int kvh, float *keys) {
    for (int j = 0; j < n; j++) {
        int64_t offset = (slot + j) * p->slot_stride + (int64_t)kvh * p->head_stride;
        __m512 scale = _mm512_set1_ps(kind == CACHE_I8 ? cache_row_scale(cache, offset, C * 16) : 1.0f);
        for (int c = 0; c < C; c++) {
            __m512 k = load16(cache, offset + 16 * c, kind);
            _mm512_storeu_ps(keys + j * C * 16 + 16 * c, kind == CACHE_I8 ? _mm512_mul_ps(k, scale) : k);
        }
    }
}

/*
 * One head of a task over one run of n keys at positions key0.. (scores, softmax update,
 * values). qt [head_dim][16] the scaled queries transposed; row_pos [16] their positions;
 * state: max, sum [16] and out_t [head_dim][16].
 */
ALWAYS_INLINE void head_run(const int C, const float *qt, const float *keys, const float *values,
                            int n, int key0, __m512i row_pos, float *max, float *sum,
                            float *out_t) {
    __m512 s[KEY_RUN];
    for (int j = 0; j < KEY_RUN; j++) s[j] = _mm512_setzero_ps();
    for (int d = 0; d < C * 16; d++) {
        __m512 q = _mm512_loadu_ps(qt + d * 16);
        for (int j = 0; j < KEY_RUN; j++)
            if (j < n) s[j] = _mm512_fmadd_ps(_mm512_set1_ps(keys[j * C * 16 + d]), q, s[j]);
    }
    __m512 top = _mm512_loadu_ps(max);
    __mmask16 visible[KEY_RUN];
    for (int j = 0; j < KEY_RUN; j++) {
        /* lane i sees key key0 + j when its position is at least that */
        visible[j] = j < n ? _mm512_cmpge_epi32_mask(row_pos, _mm512_set1_epi32(key0 + j)) : 0;
        top = _mm512_mask_max_ps(top, visible[j], top, s[j]);
    }
    __m512 old = _mm512_loadu_ps(max);
    __m512 alpha = exp16(_mm512_sub_ps(old, top)); /* old = -inf: exp16 clamps, acc is 0 */
    __m512 total = _mm512_mul_ps(_mm512_loadu_ps(sum), alpha);
    for (int j = 0; j < KEY_RUN; j++) {
        s[j] = _mm512_maskz_mov_ps(visible[j], exp16(_mm512_sub_ps(s[j], top)));
        total = _mm512_add_ps(total, s[j]);
    }
    _mm512_storeu_ps(max, top);
    _mm512_storeu_ps(sum, total);
    for (int d = 0; d < C * 16; d++) {
        __m512 o = _mm512_mul_ps(_mm512_loadu_ps(out_t + d * 16), alpha);
        for (int j = 0; j < KEY_RUN; j++)
            if (j < n) o = _mm512_fmadd_ps(_mm512_set1_ps(values[j * C * 16 + d]), s[j], o);
        _mm512_storeu_ps(out_t + d * 16, o);
    }
}

/* Task: rows [r0, r0 + rows) of a chunk, kv head kvh, all its query heads. */
ALWAYS_INLINE void prefill_task(const int C, const int kind, const PagedAttention *p,
                                const int64_t *chunk, const int32_t *table, int r0, int kvh,
                                void *out, int out_bf16) {
    int head_dim = C * 16, group = p->group;
    TaskRows t = task_rows(chunk, r0);
    int64_t first_row = t.first_row;
    int rows = t.rows, last_pos = t.last_pos;
    __m512i row_pos = _mm512_loadu_si512(t.pos);
    float qt[MAX_DIM * ROWS * MAX_GROUP_PREFILL], out_t[MAX_DIM * ROWS * MAX_GROUP_PREFILL];
    float max[ROWS * MAX_GROUP_PREFILL], sum[ROWS * MAX_GROUP_PREFILL];
    float keys[KEY_RUN * MAX_DIM], values[KEY_RUN * MAX_DIM];
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        float *q = qt + g * head_dim * ROWS;
        for (int i = 0; i < ROWS; i++) {
            const float *src = p->q + (first_row + (i < rows ? i : rows - 1)) * p->heads * head_dim + h * head_dim;
            for (int d = 0; d < head_dim; d++) q[d * ROWS + i] = src[d] * p->scale;
        }
        for (int i = 0; i < ROWS; i++) max[g * ROWS + i] = -INFINITY, sum[g * ROWS + i] = 0.0f;
    }
    memset(out_t, 0, sizeof(float) * (size_t)(group * head_dim * ROWS));
    for (int key0 = 0; key0 <= last_pos;) {
        int offset = key0 % p->block_size, n = p->block_size - offset;
        n = n < KEY_RUN ? n : KEY_RUN;
        n = n < last_pos + 1 - key0 ? n : last_pos + 1 - key0;
        int64_t slot = (int64_t)table[key0 / p->block_size] * p->block_size + offset;
        load_keys(C, kind, p, p->k_cache, slot, n, kvh, keys);
        load_keys(C, kind, p, p->v_cache, slot, n, kvh, values);
        for (int g = 0; g < group; g++) {
            float *qg = qt + g * head_dim * ROWS, *og = out_t + g * head_dim * ROWS;
            if (n == KEY_RUN) /* a constant count: the loops over keys unroll */
                head_run(C, qg, keys, values, KEY_RUN, key0, row_pos, max + g * ROWS, sum + g * ROWS, og);
            else
                head_run(C, qg, keys, values, n, key0, row_pos, max + g * ROWS, sum + g * ROWS, og);
        }
        key0 += n;
    }
    float row[MAX_DIM];
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < rows; i++) {
            float inv = 1.0f / sum[g * ROWS + i];
            for (int d = 0; d < head_dim; d++) row[d] = out_t[(g * head_dim + d) * ROWS + i] * inv;
            store_span(out, (first_row + i) * p->heads * head_dim + (int64_t)h * head_dim, row,
                       head_dim, out_bf16);
        }
    }
}
#endif

/* 1 where `prefill_attention` computes this head layout in this build, else 0. */
int prefill_attention_supported(int heads, int kv_heads, int head_dim) {
#if defined(__AVX512F__)
    return (head_dim == 64 || head_dim == 128) && kv_heads > 0 && heads % kv_heads == 0 &&
           heads / kv_heads <= MAX_GROUP_PREFILL;
#else
    (void)heads, (void)kv_heads, (void)head_dim;
    return 0;
#endif
}

/* prefill_attention in the basis the cache's rows are in. */
static int prefill_attention_in_basis(int64_t num_chunks, int heads, int kv_heads, int head_dim,
                                      const float *q, const void *k_cache, const void *v_cache,
                                      int cache_kind, const int32_t *block_tables, int max_blocks,
                                      const int64_t *chunks, int block_size, float scale, void *out,
                                      int out_bf16) {
#if defined(__AVX512F__)
    int group = heads / kv_heads;
    int head_stride = cache_head_stride(head_dim, cache_kind);
    PagedAttention p = {heads, kv_heads, group, head_dim, block_size, max_blocks,
                        (int64_t)kv_heads * head_stride, head_stride, q, k_cache, v_cache,
                        block_tables, NULL, scale};
    if (prefill_amx_handles(cache_kind, head_dim, group)) {
        int status = prefill_attention_on_amx(&p, num_chunks, chunks, cache_kind, out, out_bf16);
        /* it rotates a rotated cache's queries and outputs itself: no plain fallback then */
        if (status == 0 || cache_rotated(cache_kind, head_dim)) return status;
    }
    int64_t *first = malloc(sizeof(int64_t) * (size_t)(num_chunks + 1));
    first[0] = 0;
    for (int64_t c = 0; c < num_chunks; c++)
        first[c + 1] = first[c] + (chunks[3 * c + 2] + ROWS - 1) / ROWS * kv_heads;
    int64_t tasks = first[num_chunks];
    const int i16 = prefill_i16_handles(cache_kind, head_dim, group);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t c = 0;
        while (first[c + 1] <= t) c++;
        int64_t local = t - first[c];
        /* the last row blocks (most keys) first: the slowest tasks start early */
        int blocks = (int)((chunks[3 * c + 2] + ROWS - 1) / ROWS);
        int block = blocks - 1 - (int)(local / kv_heads), kvh = (int)(local % kv_heads);
        const int32_t *table = block_tables + c * max_blocks;
#define TASK(C)                                                                                \
    if (i16) prefill_task_i16(&p, chunks + 3 * c, table, block * ROWS, kvh, out, out_bf16); \
    else if (cache_kind == CACHE_I8) prefill_task(C, CACHE_I8, &p, chunks + 3 * c, table, block * ROWS, kvh, out, out_bf16); \
    else if (cache_kind == CACHE_BF16) prefill_task(C, CACHE_BF16, &p, chunks + 3 * c, table, block * ROWS, kvh, out, out_bf16); \
    else prefill_task(C, CACHE_F32, &p, chunks + 3 * c, table, block * ROWS, kvh, out, out_bf16)
        if (head_dim == 64) {
            TASK(4);
        } else {
            TASK(8);
        }
#undef TASK
    }
    free(first);
    return 0;
#else
    (void)num_chunks, (void)heads, (void)kv_heads, (void)head_dim, (void)q, (void)k_cache;
    (void)v_cache, (void)cache_kind, (void)block_tables, (void)max_blocks, (void)chunks;
    (void)block_size, (void)scale, (void)out, (void)out_bf16;
    return -2;
#endif
}

int prefill_attention(int64_t num_chunks, int heads, int kv_heads, int head_dim, const float *q,
                      const void *k_cache, const void *v_cache, int cache_kind,
                      const int32_t *block_tables, int max_blocks, const int64_t *chunks,
                      int block_size, float scale, void *out, int out_bf16) {
    if (!prefill_attention_supported(heads, kv_heads, head_dim)) return -2;
    if (!cache_rotated(cache_kind, head_dim)) out_bf16 &= OUT_BF16;
    if (!cache_rotated(cache_kind, head_dim) ||
        prefill_amx_handles(cache_kind, head_dim, heads / kv_heads))
        return prefill_attention_in_basis(num_chunks, heads, kv_heads, head_dim, q, k_cache,
                                          v_cache, cache_kind, block_tables, max_blocks, chunks,
                                          block_size, scale, out, out_bf16);
    /* an int8 cache holds rotated rows (the AMX kernel turns its queries and outputs itself):
     * the chunks' queries rotated into a packed copy (chunks renumbered onto it), their
     * outputs rotated back into place */
    int64_t n = 0;
    for (int64_t c = 0; c < num_chunks; c++) n += chunks[3 * c + 2];
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    int64_t *packed_chunks = malloc(sizeof(int64_t) * (size_t)(3 * num_chunks + 1));
    for (int64_t c = 0, next = 0; c < num_chunks; c++) {
        packed_chunks[3 * c] = next;
        packed_chunks[3 * c + 1] = chunks[3 * c + 1];
        packed_chunks[3 * c + 2] = chunks[3 * c + 2];
        for (int64_t r = 0; r < chunks[3 * c + 2]; r++) rows[next++] = chunks[3 * c] + r;
    }
    int width = heads * head_dim;
    float *queries = rotated_rows(q, rows, n, width);
    float *outputs = malloc(sizeof(float) * (size_t)(n * width + 1));
    int status = prefill_attention_in_basis(num_chunks, heads, kv_heads, head_dim, queries,
                                            k_cache, v_cache, cache_kind, block_tables,
                                            max_blocks, packed_chunks, block_size, scale,
                                            outputs, 0);
    if (status == 0) store_rotated_rows(out, rows, outputs, n, width, out_bf16);
    free(outputs);
    free(queries);
    free(packed_chunks);
    free(rows);
    return status;
}
