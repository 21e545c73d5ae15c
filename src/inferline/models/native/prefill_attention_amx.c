/*
 * Prefill attention on AMX bf16 tiles (Intel since Sapphire Rapids), for a bf16 K/V cache:
 * the task of `prefill_attention.c` (16 query rows of one chunk, one kv head, all its
 * query heads) with its two products on TDPBF16PS.
 *
 * Accuracy: the cache's keys and values are bf16 already, so they enter the tiles exactly.
 * The queries (times the softmax scale / ln 2: scores in log2 units for exp2) and the
 * softmax weights are float32; each is split into a bf16 high part and a bf16 remainder
 * (x = hi + lo to ~16 significant bits) and both parts are multiplied, accumulating in
 * float32. Outputs are within 4.4e-5 of float64 where the float32 kernel's are within
 * 1e-5 (tested; stop 31's plain bf16 queries and weights moved logprobs by up to 0.9).
 *
 * Each chunk's context is packed first, once per kv head, into runs of 32 keys (a bf16
 * tile's depth): keys transposed into B tiles (16 keys x pairs of dims), values
 * interleaved by key pairs (32 keys x 16 dims). Then per task and head, over the runs:
 * S = Q K^T is two 16 x 16 float32 tiles, the online softmax runs on S's rows in
 * AVX-512, and P V adds into 4 fresh tiles (64 dims) that are scaled into the running
 * output, kept in float32 outside the tiles (head_dim 128; for head_dim 64 the output
 * stays in tiles: prefill_attention_amx64.c). This file: the packing, that task, and the
 * dispatch over chunks and tasks.
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include "amx_tiles.h"
#include "prefill_attention_amx.h"

static int amx_attention_on = 0;


/* The cache row of position pos of kv head kvh (block_size a power of 2): head_dim bf16,
 * or head_dim int8 and their scale (kind). */
ALWAYS_INLINE const uint8_t *cache_row(const PagedAttention *p, const void *cache,
                                       const int32_t *table, int shift, int pos, int kvh,
                                       const int kind) {
    int64_t slot = ((int64_t)table[pos >> shift] << shift) + (pos & (p->block_size - 1));
    int64_t element = slot * p->slot_stride + (int64_t)kvh * p->head_stride;
    return (const uint8_t *)cache + element * (kind == CACHE_I8 ? 1 : 2);
}

/* An int8 row's head_dim integers as bf16 (exactly: |x| <= 128 needs 8 significant bits). */
ALWAYS_INLINE void int8_as_bf16(const int8_t *row, int head_dim, uint16_t *out) {
    for (int d = 0; d < head_dim; d += 32) {
        __m512 a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + d))));
        __m512 b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + d + 16))));
        _mm512_storeu_si512(out + d, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
}

/*
 * Keys key0 .. key0 + n - 1 (n <= 32) of kv head kvh packed into run: key tile [c][h] holds
 * dim pair kp of chunk c (32 dims) of key 16 h + j at uint32 [kp][j]; value tile [dc]
 * holds key pair kp's two values of dim 16 dc + j at bf16 [kp][2 j], [kp][2 j + 1].
 * Keys past n are zero. An int8 cache's integers go in as they are (exact in bf16) and
 * their row scales beside them (`scale_scores`, `softmax_run` apply them in float32); its
 * rows are rotated (hadamard.h), so `amx_task` rotates the queries in and the outputs back.
 */
ALWAYS_INLINE void pack_run(const int chunks, const int kind, const PagedAttention *p,
                            const int32_t *table, int key0, int n, int kvh, uint8_t *run) {
    uint32_t(*kb)[2][16][16] = (uint32_t(*)[2][16][16])run;
    uint16_t(*vb)[16][32] = (uint16_t(*)[16][32])(run + (size_t)chunks * 2048);
    float(*scales)[AMX_KEYS] = (float(*)[AMX_KEYS])(run + (size_t)chunks * 4096);
    const int shift = __builtin_ctz((unsigned)p->block_size), head_dim = 32 * chunks;
    const uint16_t *k_rows[AMX_KEYS], *v_rows[AMX_KEYS];
    uint16_t widened[kind == CACHE_I8 ? 2 * AMX_KEYS * head_dim : 1] __attribute__((aligned(64)));
    for (int j = 0; j < AMX_KEYS; j++) {
        const uint8_t *k = j < n ? cache_row(p, p->k_cache, table, shift, key0 + j, kvh, kind) : NULL;
        const uint8_t *v = j < n ? cache_row(p, p->v_cache, table, shift, key0 + j, kvh, kind) : NULL;
        if (kind == CACHE_I8) {
            uint16_t *wk = widened + 2 * j * head_dim, *wv = wk + head_dim;
            if (k) int8_as_bf16((const int8_t *)k, head_dim, wk), int8_as_bf16((const int8_t *)v, head_dim, wv);
            scales[0][j] = k ? cache_row_scale(k, 0, head_dim) : 0.0f;
            scales[1][j] = v ? cache_row_scale(v, 0, head_dim) : 0.0f;
            k = k ? (const uint8_t *)wk : NULL, v = v ? (const uint8_t *)wv : NULL;
        }
        k_rows[j] = (const uint16_t *)k, v_rows[j] = (const uint16_t *)v;
    }
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < chunks; c++) {
            __m512i r[16];
            for (int j = 0; j < 16; j++)
                r[j] = k_rows[16 * h + j] ? _mm512_loadu_si512(k_rows[16 * h + j] + 32 * c) : _mm512_setzero_si512();
            transpose16(r);
            for (int kp = 0; kp < 16; kp++) _mm512_store_si512(kb[c][h][kp], r[kp]);
        }
    /* even lanes from the first key, odd from the second; dims 0-15 or 16-31 of a zmm */
    __m512i pick[2];
    for (int half = 0; half < 2; half++) {
        uint16_t idx[32];
        for (int j = 0; j < 16; j++) idx[2 * j] = (uint16_t)(16 * half + j), idx[2 * j + 1] = (uint16_t)(32 + 16 * half + j);
        pick[half] = _mm512_loadu_si512(idx);
    }
    for (int kp = 0; kp < 16; kp++) {
        const uint16_t *a = v_rows[2 * kp], *b = v_rows[2 * kp + 1];
        for (int c = 0; c < chunks; c++) {
            __m512i x = a ? _mm512_loadu_si512(a + 32 * c) : _mm512_setzero_si512();
            __m512i y = b ? _mm512_loadu_si512(b + 32 * c) : _mm512_setzero_si512();
            _mm512_store_si512(vb[2 * c][kp], _mm512_permutex2var_epi16(x, pick[0], y));
            _mm512_store_si512(vb[2 * c + 1][kp], _mm512_permutex2var_epi16(x, pick[1], y));
        }
    }
}

/*
 * The online softmax over one run's scores s[16][32] in log2 units (row i at position
 * row_pos[i]; key j at key0 + j, visible when j < n and key0 + j <= row_pos[i]): updates
 * max and the per-lane partial sums sums[16][16], writes the weights (times value_scales
 * [32] where not NULL) split into pa[0] (high) and pa[1] (remainder) [16][32] bf16, and
 * the factor the running output is scaled by into alpha.
 */
ALWAYS_INLINE void softmax_run(const float s[16][32], const int *row_pos, int key0, int n,
                               float *max, float sums[16][16], uint16_t pa[2][16][32],
                               float *alpha, const float *value_scales) {
    __mmask32 visible[AMX_ROWS];
    float top[AMX_ROWS];
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < AMX_ROWS; i++) {
        int last = row_pos[i] - key0 < n - 1 ? row_pos[i] - key0 : n - 1;
        visible[i] = last < 0 ? 0 : (last >= 31 ? 0xffffffffu : (__mmask32)((1u << (last + 1)) - 1));
        __m512 a = _mm512_mask_mov_ps(minus_inf, (__mmask16)visible[i], _mm512_load_ps(s[i]));
        __m512 b = _mm512_mask_mov_ps(minus_inf, (__mmask16)(visible[i] >> 16), _mm512_load_ps(s[i] + 16));
        float run_top = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
        top[i] = run_top > max[i] ? run_top : max[i];
    }
    __m512 new_top = _mm512_loadu_ps(top);
    /* the first run always sees key 0, so no row's maximum stays -inf */
    _mm512_storeu_ps(alpha, exp2_16(_mm512_sub_ps(_mm512_loadu_ps(max), new_top)));
    _mm512_storeu_ps(max, new_top);
    for (int i = 0; i < AMX_ROWS; i++) {
        __m512 m = _mm512_set1_ps(top[i]);
        __m512 a = _mm512_maskz_mov_ps((__mmask16)visible[i], exp2_16(_mm512_sub_ps(_mm512_load_ps(s[i]), m)));
        __m512 b = _mm512_maskz_mov_ps((__mmask16)(visible[i] >> 16), exp2_16(_mm512_sub_ps(_mm512_load_ps(s[i] + 16), m)));
        _mm512_store_ps(sums[i], _mm512_fmadd_ps(_mm512_load_ps(sums[i]), _mm512_set1_ps(alpha[i]), _mm512_add_ps(a, b)));
        if (value_scales) /* an int8 cache: each weight times its value row's scale */
            a = _mm512_mul_ps(a, _mm512_loadu_ps(value_scales)),
            b = _mm512_mul_ps(b, _mm512_loadu_ps(value_scales + 16));
        split32(a, b, pa[0][i], pa[1][i]);
    }
}

/* S = Q K^T for one head over one packed run: qa [chunks][2][16][32] the split queries. */
ALWAYS_INLINE void scores(const int chunks, uint16_t qa[][2][16][32], const uint8_t *run,
                          float s[16][32]) {
    const uint32_t(*kb)[2][16][16] = (const uint32_t(*)[2][16][16])run;
    _tile_zero(0);
    _tile_zero(1);
    for (int c = 0; c < chunks; c++) {
        tile_loadd(3, kb[c][0], 64);
        tile_loadd(4, kb[c][1], 64);
        tile_loadd(2, qa[c][0], 64);
        _tile_dpbf16ps(0, 2, 3);
        _tile_dpbf16ps(1, 2, 4);
        tile_loadd(2, qa[c][1], 64);
        _tile_dpbf16ps(0, 2, 3);
        _tile_dpbf16ps(1, 2, 4);
    }
    _tile_stored(0, s[0], 128);
    _tile_stored(1, s[0] + 16, 128);
}

/* Each score times its key row's scale (an int8 cache). */
ALWAYS_INLINE void scale_scores(float s[16][32], const float key_scales[AMX_KEYS]) {
    __m512 a = _mm512_loadu_ps(key_scales), b = _mm512_loadu_ps(key_scales + 16);
    for (int i = 0; i < 16; i++) {
        _mm512_store_ps(s[i], _mm512_mul_ps(_mm512_load_ps(s[i]), a));
        _mm512_store_ps(s[i] + 16, _mm512_mul_ps(_mm512_load_ps(s[i] + 16), b));
    }
}

/* out (16 rows x head_dim float32) = out * alpha + P V, 64 dims (4 tiles) at a time. */
ALWAYS_INLINE void add_values(const int chunks, uint16_t pa[2][16][32], const uint8_t *run,
                              const float *alpha, float *out) {
    const uint16_t(*vb)[16][32] = (const uint16_t(*)[16][32])(run + (size_t)chunks * 2048);
    float part[16][64] __attribute__((aligned(64)));
    const int head_dim = 32 * chunks;
    tile_loadd(4, pa[0], 64);
    tile_loadd(5, pa[1], 64);
    for (int g = 0; g < chunks / 2; g++) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
#define DIMS(T)                            \
    tile_loadd(6, vb[4 * g + T], 64);      \
    _tile_dpbf16ps(T, 4, 6);               \
    _tile_dpbf16ps(T, 5, 6);               \
    _tile_stored(T, part[0] + 16 * T, 256)
        DIMS(0);
        DIMS(1);
        DIMS(2);
        DIMS(3);
#undef DIMS
        for (int i = 0; i < AMX_ROWS; i++) {
            __m512 a = _mm512_set1_ps(alpha[i]);
            float *o = out + i * head_dim + 64 * g;
            for (int d = 0; d < 64; d += 16)
                _mm512_store_ps(o + d, _mm512_fmadd_ps(_mm512_load_ps(o + d), a, _mm512_load_ps(part[i] + d)));
        }
    }
}

/* Task: rows [r0, r0 + 16) of a chunk, kv head kvh, all its query heads, over the chunk's
 * packed runs of this kv head (see prefill_attention.c); chunks = head_dim / 32. */
ALWAYS_INLINE void amx_task(const int chunks, const int kind, const PagedAttention *p,
                            const int64_t *chunk, const uint8_t *runs, int r0, int kvh, void *out,
                            int out_bf16) {
    const int head_dim = 32 * chunks, group = p->group;
    /* queries times scale / ln 2: the scores come out in log2 units for exp2 */
    const __m512 scale = _mm512_set1_ps(p->scale * 1.4426950408889634f);
    TaskRows t = task_rows(chunk, r0);
    const int64_t first_row = t.first_row;
    const int rows = t.rows, last_pos = t.last_pos;
    const int *row_pos = t.pos;
    uint16_t qa[AMX_MAX_GROUP][AMX_MAX_DIM / 32][2][16][32] __attribute__((aligned(64)));
    float acc[AMX_MAX_GROUP][AMX_ROWS * AMX_MAX_DIM] __attribute__((aligned(64)));
    float sums[AMX_MAX_GROUP][AMX_ROWS][16] __attribute__((aligned(64)));
    float max[AMX_MAX_GROUP][AMX_ROWS];
    float s[16][32] __attribute__((aligned(64))), alpha[AMX_ROWS];
    uint16_t pa[2][16][32] __attribute__((aligned(64)));
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < AMX_ROWS; i++) {
            const float *q = p->q + (first_row + (i < rows ? i : rows - 1)) * p->heads * head_dim + h * head_dim;
            float turned[AMX_MAX_DIM];
            if (kind == CACHE_I8) { /* in the basis of the cache's rotated rows */
                memcpy(turned, q, sizeof(float) * (size_t)head_dim);
                rotate_row(turned, head_dim);
                q = turned;
            }
            for (int c = 0; c < chunks; c++)
                split32(_mm512_mul_ps(_mm512_loadu_ps(q + 32 * c), scale),
                        _mm512_mul_ps(_mm512_loadu_ps(q + 32 * c + 16), scale), qa[g][c][0][i],
                        qa[g][c][1][i]);
            max[g][i] = -INFINITY;
        }
        memset(sums[g], 0, sizeof sums[g]);
        memset(acc[g], 0, sizeof(float) * AMX_ROWS * (size_t)head_dim);
    }
    configure_full_tiles();
    for (int key0 = 0; key0 <= last_pos; key0 += AMX_KEYS) {
        int n = last_pos + 1 - key0 < AMX_KEYS ? last_pos + 1 - key0 : AMX_KEYS;
        const uint8_t *run = runs + (size_t)(key0 / AMX_KEYS) * RUN_BYTES(chunks);
        const float(*scales)[AMX_KEYS] = (const float(*)[AMX_KEYS])(run + (size_t)chunks * 4096);
        for (int g = 0; g < group; g++) {
            scores(chunks, qa[g], run, s);
            if (kind == CACHE_I8) scale_scores(s, scales[0]);
            softmax_run(s, row_pos, key0, n, max[g], sums[g], pa, alpha, kind == CACHE_I8 ? scales[1] : NULL);
            add_values(chunks, pa, run, alpha, acc[g]);
        }
    }
    _tile_release();
    float row[AMX_MAX_DIM];
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < rows; i++) {
            float inv = 1.0f / _mm512_reduce_add_ps(_mm512_load_ps(sums[g][i]));
            for (int d = 0; d < head_dim; d++) row[d] = acc[g][i * head_dim + d] * inv;
            if (kind == CACHE_I8 && !(out_bf16 & OUT_CACHE_BASIS))
                rotate_row(row, head_dim); /* back from the rotated basis */
            store_span(out, (first_row + i) * p->heads * head_dim + (int64_t)h * head_dim, row,
                       head_dim, out_bf16 & OUT_BF16);
        }
    }
}

/* This thread's space for packed runs, kept between calls and grown as needed: fresh pages
 * each call cost more than the packing (a fault per 4 KB). NULL without memory. */
static uint8_t *packing_space(size_t bytes) {
    static _Thread_local uint8_t *space = NULL;
    static _Thread_local size_t size = 0;
    if (bytes > size) {
        free(space);
        size = (bytes + (1 << 20)) & ~(size_t)63; /* a MiB to spare, whole cache lines */
        space = aligned_alloc(64, size);
        if (!space) size = 0;
    }
    return space;
}

/* Runs of 32 keys of a chunk's context (start + count positions). */
static int64_t context_runs(const int64_t *chunk) { return (chunk[1] + chunk[2] + AMX_KEYS - 1) / AMX_KEYS; }

/*
 * All chunks' attention (as prefill_attention): first every chunk's context is packed
 * once per kv head (runs in parallel), then the tasks (16 rows, one kv head; the last
 * row blocks first) read their runs from there. Returns 0, or -1 without memory.
 */
ALWAYS_INLINE int amx_attention(const int chunks, const int kind, const PagedAttention *p,
                                int64_t num_chunks, const int64_t *chunk_rows,
                                const int32_t *block_tables, void *out, int out_bf16) {
    const int kv_heads = p->kv_heads;
    int64_t *run0 = malloc(sizeof(int64_t) * (size_t)(2 * num_chunks + 2)), *task0 = run0 + num_chunks + 1;
    if (!run0) return -1;
    run0[0] = task0[0] = 0;
    for (int64_t c = 0; c < num_chunks; c++) {
        run0[c + 1] = run0[c] + context_runs(chunk_rows + 3 * c) * kv_heads;
        task0[c + 1] = task0[c] + (chunk_rows[3 * c + 2] + AMX_ROWS - 1) / AMX_ROWS * kv_heads;
    }
    uint8_t *packed = packing_space((size_t)run0[num_chunks] * RUN_BYTES(chunks));
    if (!packed) {
        free(run0);
        return -1;
    }
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < run0[num_chunks]; r++) {
            int64_t c = 0;
            while (run0[c + 1] <= r) c++;
            const int64_t *chunk = chunk_rows + 3 * c, runs = context_runs(chunk);
            int64_t local = r - run0[c], key0 = local % runs * AMX_KEYS;
            int64_t n = chunk[1] + chunk[2] - key0 < AMX_KEYS ? chunk[1] + chunk[2] - key0 : AMX_KEYS;
            pack_run(chunks, kind, p, block_tables + c * p->max_blocks, (int)key0, (int)n,
                     (int)(local / runs), packed + (size_t)r * RUN_BYTES(chunks));
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < task0[num_chunks]; t++) {
            int64_t c = 0;
            while (task0[c + 1] <= t) c++;
            const int64_t *chunk = chunk_rows + 3 * c, local = t - task0[c];
            int blocks = (int)((chunk[2] + AMX_ROWS - 1) / AMX_ROWS);
            int block = blocks - 1 - (int)(local / kv_heads), kvh = (int)(local % kv_heads);
            const uint8_t *runs = packed + (size_t)(run0[c] + kvh * context_runs(chunk)) * RUN_BYTES(chunks);
            if (chunks == 2 && kind == CACHE_I8)
                amx_task64_int8(p, chunk, runs, block * AMX_ROWS, kvh, out, out_bf16);
            else if (chunks == 2)
                amx_task64_bf16(p, chunk, runs, block * AMX_ROWS, kvh, out, out_bf16);
            else
                amx_task(chunks, kind, p, chunk, runs, block * AMX_ROWS, kvh, out, out_bf16);
        }
    }
    free(run0);
    return 0;
}

/* 1 where `prefill_attention_on_amx` computes this cache kind and head layout. */
int prefill_amx_handles(int cache_kind, int head_dim, int group) {
    return amx_attention_on && (cache_kind == CACHE_BF16 || cache_kind == CACHE_I8) &&
           (head_dim == 64 || head_dim == 128) && group <= AMX_MAX_GROUP;
}

int prefill_attention_on_amx(const PagedAttention *p, int64_t num_chunks, const int64_t *chunks,
                             int cache_kind, void *out, int out_bf16) {
#define ATTEND(C, KIND) amx_attention(C, KIND, p, num_chunks, chunks, p->block_tables, out, out_bf16)
    if (cache_kind == CACHE_I8) return p->head_dim == 64 ? ATTEND(2, CACHE_I8) : ATTEND(4, CACHE_I8);
    return p->head_dim == 64 ? ATTEND(2, CACHE_BF16) : ATTEND(4, CACHE_BF16);
#undef ATTEND
}

int prefill_attention_amx(int on) {
    if (on && !amx_tiles_permitted()) on = 0;
    amx_attention_on = on ? 1 : 0;
    return amx_attention_on;
}
#else
int prefill_amx_handles(int cache_kind, int head_dim, int group) {
    (void)cache_kind, (void)head_dim, (void)group;
    return 0;
}

int prefill_attention_on_amx(const PagedAttention *p, int64_t num_chunks, const int64_t *chunks,
                             int cache_kind, void *out, int out_bf16) {
    (void)p, (void)num_chunks, (void)chunks, (void)cache_kind, (void)out, (void)out_bf16;
    return -2;
}

int prefill_attention_amx(int on) {
    (void)on;
    return 0;
}
#endif
