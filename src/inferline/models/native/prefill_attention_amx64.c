/*
 * Prefill attention on AMX bf16 tiles, head_dim 64 (SmolLM2, Qwen2.5-0.5B): the task of
 * prefill_attention_amx.c (16 query rows, one kv head, all its query heads, over the
 * chunk's packed runs) with the output kept in tiles across a head's runs.
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <stdint.h>
#include <string.h>

#include "kernels_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include "amx_tiles.h"
#include "prefill_attention_amx.h"

/*
 * head_dim 64: the running output stays in tiles 2-5 (16 rows x 64 float32) across a
 * head's runs, and a row's weights are exp2(s - ref) against a reference that may trail
 * its running maximum by up to 2^LAZY_LOG2: the output is rescaled only when a score
 * passes ref + LAZY_LOG2 (ref is then raised to that row's maximum), not every run.
 * Weights stay <= 2^8, well inside float32 and bf16's range; the result is the same
 * softmax (it does not depend on the reference). The next run's scores are computed
 * (tiles 0, 1) before this run's softmax runs on the AVX-512 units. Tiles: 0-1 scores,
 * 2-5 output, 6 queries / weights, 7 keys / values.
 *
 * The queries enter the tiles as two bf16 parts (a score's error moves its weight by
 * e^error), the weights as one: each is rounded to bf16 (relative error <= 2^-8), so an
 * output moves by at most 2^-8 of its head's largest value (test_prefill_attention.py's
 * amx_tolerance), a fifth to a tenth of what an int8 cache's own rounding moves it; their
 * exp2 is a degree-3 polynomial (relative error < 8e-5; the sums add the same
 * approximations). Against two bf16 parts and the degree-6 exp2: 1088-row chunk 1.90 ->
 * 1.56 ms, 512 rows 0.50 -> 0.42 (SmolLM2's heads over an int8 cache, one process
 * alternating the two). Queries split and outputs finished in registers (no copy through
 * a row buffer), exp2 without its clamp, unmasked runs without mask moves: 512 rows
 * ~0.43 -> ~0.39 ms (hot, 600 calls, three alternations).
 */
#define LAZY_LOG2 8.0f

/* S = Q K^T of one run into tiles 0, 1 (qa [2 chunks][hi, lo][16][32]); `scores_out`
 * stores them: between the two the tiles compute while the AVX-512 units run the previous
 * run's softmax. */
ALWAYS_INLINE void scores_begin(uint16_t qa[2][2][16][32], const uint8_t *run) {
    const uint32_t(*kb)[2][16][16] = (const uint32_t(*)[2][16][16])run;
    _tile_zero(0);
    _tile_zero(1);
    for (int c = 0; c < 2; c++) {
        tile_loadd(6, qa[c][0], 64);
        tile_loadd(7, kb[c][0], 64);
        _tile_dpbf16ps(0, 6, 7);
        tile_loadd(7, kb[c][1], 64);
        _tile_dpbf16ps(1, 6, 7);
        tile_loadd(6, qa[c][1], 64);
        _tile_dpbf16ps(1, 6, 7);
        tile_loadd(7, kb[c][0], 64);
        _tile_dpbf16ps(0, 6, 7);
    }
}

ALWAYS_INLINE void scores_out(float s[16][32]) {
    _tile_stored(0, s[0], 128);
    _tile_stored(1, s[0] + 16, 128);
}

/* Which of a run's 32 keys row i (at position pos) sees: key0 + j <= pos and j < n. */
ALWAYS_INLINE __mmask32 visible_keys(int pos, int key0, int n) {
    int last = pos - key0 < n - 1 ? pos - key0 : n - 1;
    return last < 0 ? 0 : (last >= 31 ? 0xffffffffu : (__mmask32)((1u << (last + 1)) - 1));
}

/*
 * The weights of one run's scores s (key_scales, value_scales: an int8 cache's row scales,
 * else NULL) against each row's reference ref, rounded to bf16 into pa
 * and added into sums. A row whose visible scores pass ref + LAZY_LOG2 gets its maximum as
 * the new reference and alpha = 2^(old - new) (else alpha 1); returns whether any row did
 * after its first run (its output then needs rescaling).
 */
ALWAYS_INLINE int lazy_softmax(float s[16][32], const int *row_pos, int key0, int n, const int masked,
                               float *ref, float sums[16][16], uint16_t pa[16][32],
                               float *alpha, const float *key_scales,
                               const float *value_scales) {
    int rescale = 0;
    __m512 ks0 = _mm512_set1_ps(1.0f), ks1 = ks0, vs0 = ks0, vs1 = ks0;
    if (key_scales) ks0 = _mm512_loadu_ps(key_scales), ks1 = _mm512_loadu_ps(key_scales + 16);
    if (value_scales) vs0 = _mm512_loadu_ps(value_scales), vs1 = _mm512_loadu_ps(value_scales + 16);
    for (int i = 0; i < AMX_ROWS; i++) {
        __mmask32 visible = masked ? visible_keys(row_pos[i], key0, n) : 0xffffffffu;
        __mmask16 lo = (__mmask16)visible, hi = (__mmask16)(visible >> 16);
        __m512 a = _mm512_load_ps(s[i]), b = _mm512_load_ps(s[i] + 16);
        if (key_scales) a = _mm512_mul_ps(a, ks0), b = _mm512_mul_ps(b, ks1);
        __m512 limit = _mm512_set1_ps(ref[i] + LAZY_LOG2);
        alpha[i] = 1.0f;
        if (_mm512_mask_cmp_ps_mask(lo, a, limit, _CMP_GT_OQ) |
            _mm512_mask_cmp_ps_mask(hi, b, limit, _CMP_GT_OQ)) { /* rare after a row's first run */
            const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
            float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_mask_mov_ps(minus_inf, lo, a),
                                                           _mm512_mask_mov_ps(minus_inf, hi, b)));
            if (ref[i] != -INFINITY) {
                alpha[i] = _mm512_cvtss_f32(exp2_16(_mm512_set1_ps(ref[i] - top)));
                _mm512_store_ps(sums[i], _mm512_mul_ps(_mm512_load_ps(sums[i]), _mm512_set1_ps(alpha[i])));
                rescale = 1;
            }
            ref[i] = top;
        }
        __m512 m = _mm512_set1_ps(ref[i]);
        a = exp2_weight(_mm512_sub_ps(a, m)), b = exp2_weight(_mm512_sub_ps(b, m));
        if (masked) a = _mm512_maskz_mov_ps(lo, a), b = _mm512_maskz_mov_ps(hi, b);
        _mm512_store_ps(sums[i], _mm512_add_ps(_mm512_load_ps(sums[i]), _mm512_add_ps(a, b)));
        if (value_scales) a = _mm512_mul_ps(a, vs0), b = _mm512_mul_ps(b, vs1);
        _mm512_store_si512(pa[i], (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
    return rescale;
}

/* The output tiles 2-5 (16 x 64 float32) to o. */
ALWAYS_INLINE void store_output(float o[16][64]) {
    _tile_stored(2, o[0], 256);
    _tile_stored(3, o[0] + 16, 256);
    _tile_stored(4, o[0] + 32, 256);
    _tile_stored(5, o[0] + 48, 256);
}

/* Output rows times alpha, back in tiles 2-5 (a reference rose). */
static void rescale_output(const float *alpha) {
    float o[16][64] __attribute__((aligned(64)));
    store_output(o);
    for (int i = 0; i < AMX_ROWS; i++)
        for (int d = 0; d < 64; d += 16)
            _mm512_store_ps(o[i] + d, _mm512_mul_ps(_mm512_load_ps(o[i] + d), _mm512_set1_ps(alpha[i])));
    tile_loadd(2, o[0], 256);
    tile_loadd(3, o[0] + 16, 256);
    tile_loadd(4, o[0] + 32, 256);
    tile_loadd(5, o[0] + 48, 256);
}

/* Output tiles += P V over one run: pa the bf16 weights, the run's 4 value tiles. */
ALWAYS_INLINE void add_run_values(uint16_t pa[16][32], const uint8_t *run) {
    const uint16_t(*vb)[16][32] = (const uint16_t(*)[16][32])(run + 2 * 2048);
    tile_loadd(6, pa, 64);
    tile_loadd(7, vb[0], 64);
    _tile_dpbf16ps(2, 6, 7);
    tile_loadd(7, vb[1], 64);
    _tile_dpbf16ps(3, 6, 7);
    tile_loadd(7, vb[2], 64);
    _tile_dpbf16ps(4, 6, 7);
    tile_loadd(7, vb[3], 64);
    _tile_dpbf16ps(5, 6, 7);
}

/* amx_task for head_dim 64, the output kept in tiles (above). */
ALWAYS_INLINE void amx_task64(const int kind, const PagedAttention *p, const int64_t *chunk,
                              const uint8_t *runs, int r0, int kvh, void *out, int out_bf16) {
    const int head_dim = 64;
    const __m512 scale = _mm512_set1_ps(p->scale * 1.4426950408889634f);
    TaskRows t = task_rows(chunk, r0);
    const int64_t first_row = t.first_row;
    const int rows = t.rows, first_pos = t.first_pos, last_pos = t.last_pos;
    const int *row_pos = t.pos;
    int count = (last_pos + AMX_KEYS) / AMX_KEYS, group = p->group; /* runs, heads */
    uint16_t qa[AMX_MAX_GROUP][2][2][16][32] __attribute__((aligned(64)));
    float s[2][16][32] __attribute__((aligned(64)));
    float sums[AMX_ROWS][16] __attribute__((aligned(64)));
    float o[16][64] __attribute__((aligned(64)));
    uint16_t pa[16][32] __attribute__((aligned(64)));
    float ref[AMX_ROWS], alpha[AMX_ROWS], row[64];
    for (int g = 0; g < group; g++) /* every head's queries, split, before the tiles start */
        for (int i = 0; i < AMX_ROWS; i++) {
            const float *q = p->q + (first_row + (i < rows ? i : rows - 1)) * p->heads * head_dim +
                             (kvh * group + g) * head_dim;
            __m512 r[4];
            for (int v = 0; v < 4; v++) r[v] = _mm512_loadu_ps(q + 16 * v);
            if (kind == CACHE_I8) hadamard64_registers(r); /* the cache rows' rotated basis */
            for (int c = 0; c < 2; c++)
                split32(_mm512_mul_ps(r[2 * c], scale), _mm512_mul_ps(r[2 * c + 1], scale),
                        qa[g][c][0][i], qa[g][c][1][i]);
        }
    configure_full_tiles();
    /* runs in order over the heads: step k = g * count + r; its scores wait in s[k & 1], and
     * the next step's (the next head's first run after a head's last) are computed while
     * this one's softmax runs */
    scores_begin(qa[0], runs);
    scores_out(s[0]);
    for (int g = 0, k = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < AMX_ROWS; i++) ref[i] = -INFINITY;
        memset(sums, 0, sizeof sums);
        _tile_zero(2);
        _tile_zero(3);
        _tile_zero(4);
        _tile_zero(5);
        for (int r = 0; r < count; r++, k++) {
            const uint8_t *run = runs + (size_t)r * RUN_BYTES(2);
            int next = r + 1 < count || g + 1 < group;
            if (next) scores_begin(qa[r + 1 < count ? g : g + 1], r + 1 < count ? run + RUN_BYTES(2) : runs);
            int key0 = r * AMX_KEYS, n = last_pos + 1 - key0 < AMX_KEYS ? last_pos + 1 - key0 : AMX_KEYS;
            const float(*scales)[AMX_KEYS] = (const float(*)[AMX_KEYS])(run + 2 * 4096);
            int masked = key0 + AMX_KEYS - 1 > first_pos;
            const float *key_scales = kind == CACHE_I8 ? scales[0] : NULL;
            const float *value_scales = kind == CACHE_I8 ? scales[1] : NULL;
            /* a copy without the mask moves for runs wholly below the diagonal */
            int rescale = masked ? lazy_softmax(s[k & 1], row_pos, key0, n, 1, ref, sums, pa,
                                                alpha, key_scales, value_scales)
                                 : lazy_softmax(s[k & 1], row_pos, key0, n, 0, ref, sums, pa,
                                                alpha, key_scales, value_scales);
            if (next) scores_out(s[(k + 1) & 1]);
            if (rescale) rescale_output(alpha);
            add_run_values(pa, run);
        }
        store_output(o);
        const int rotate = kind == CACHE_I8 && !(out_bf16 & OUT_CACHE_BASIS);
        for (int i = 0; i < rows; i++) {
            __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(sums[i])));
            __m512 r[4];
            for (int v = 0; v < 4; v++) r[v] = _mm512_mul_ps(_mm512_load_ps(o[i] + 16 * v), inv);
            if (rotate) hadamard64_registers(r); /* back from the rotated basis */
            int64_t at = (first_row + i) * p->heads * head_dim + (int64_t)h * head_dim;
            if (out_bf16 & OUT_BF16) {
                for (int v = 0; v < 4; v++) _mm512_storeu_ps(row + 16 * v, r[v]);
                store_span(out, at, row, head_dim, 1);
            } else {
                for (int v = 0; v < 4; v++) _mm512_storeu_ps((float *)out + at + 16 * v, r[v]);
            }
        }
    }
    _tile_release();
}

void amx_task64_int8(const PagedAttention *p, const int64_t *chunk, const uint8_t *runs, int r0,
                     int kvh, void *out, int out_bf16) {
    amx_task64(CACHE_I8, p, chunk, runs, r0, kvh, out, out_bf16);
}

void amx_task64_bf16(const PagedAttention *p, const int64_t *chunk, const uint8_t *runs, int r0,
                     int kvh, void *out, int out_bf16) {
    amx_task64(CACHE_BF16, p, chunk, runs, r0, kvh, out, out_bf16);
}
#endif
