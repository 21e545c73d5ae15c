/*
 * Prefill attention on AMX bf16 tiles (Intel since Sapphire Rapids), for a bf16 K/V cache:
 * the task of `prefill_attention.c` (16 query rows of one chunk, one kv head, all its
 * query heads) with its two products on TDPBF16PS.
 *
 * Accuracy: the cache's keys and values are bf16 already, so they enter the tiles exactly.
 * The queries (times the softmax scale) and the softmax weights are float32; each is split
 * into a bf16 high part and a bf16 remainder (x = hi + lo to ~16 significant bits) and
 * both parts are multiplied, accumulating in float32. The scores and outputs then match
 * the float32 kernel to ~1e-6 (stop 31's plain bf16 queries moved logprobs by up to 0.9).
 *
 * Per run of 32 keys (a bf16 tile's depth): the keys are transposed into B tiles (16 keys
 * x pairs of dims) and the values interleaved by key pairs (32 keys x 16 dims), once for
 * all query heads; per head, S = Q K^T is two 16 x 16 float32 tiles, the online softmax
 * runs on S's rows in AVX-512, and P V adds into 4 fresh tiles (64 dims) that are scaled
 * into the running output. Everything float32 stays float32 outside the tiles.
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <stdint.h>
#include <string.h>

#include "kernels_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AMX_ROWS 16       /* query rows per task: a tile's rows */
#define AMX_KEYS 32       /* keys per run: a bf16 tile's depth */
#define AMX_MAX_DIM 128
#define AMX_MAX_GROUP 8   /* as MAX_GROUP_PREFILL */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

static int amx_attention_on = 0;

/* Every tile 16 rows x 64 bytes: queries (16 rows x 32 bf16), transposed keys and
 * interleaved values (16 pairs x 16 columns), scores and outputs (16 x 16 float32). */
static void configure_tiles(void) {
    TileConfig c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
    _tile_loadconfig(&c);
}

/* r[i] (16 x 16 uint32) becomes its transpose. */
ALWAYS_INLINE void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* u[4a + e], 128-bit lane L: rows 4a..4a+3 of column 4L + e */
    for (int e = 0; e < 4; e++) {
        __m512i v = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), w = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
        __m512i x = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88), y = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
        r[e] = _mm512_shuffle_i32x4(v, x, 0x88);
        r[8 + e] = _mm512_shuffle_i32x4(v, x, 0xdd);
        r[4 + e] = _mm512_shuffle_i32x4(w, y, 0x88);
        r[12 + e] = _mm512_shuffle_i32x4(w, y, 0xdd);
    }
}

/* The cache row (head_dim bf16) of position pos of kv head kvh, or NULL. */
ALWAYS_INLINE const uint16_t *cache_row(const PagedAttention *p, const void *cache,
                                        const int32_t *table, int pos, int kvh) {
    int64_t slot = (int64_t)table[pos / p->block_size] * p->block_size + pos % p->block_size;
    return (const uint16_t *)cache + slot * p->slot_stride + (int64_t)kvh * p->head_stride;
}

/*
 * Keys key0 .. key0 + n - 1 (n <= 32) as B tiles kb[c][h]: dim pair kp of chunk c (32 dims)
 * for key 16 h + j at uint32 [kp][j]; values as B tiles vb[dc]: key pair kp's two values of
 * dim 16 dc + j at bf16 [kp][2 j], [kp][2 j + 1]. Keys past n are zero.
 */
ALWAYS_INLINE void pack_run(const int chunks, const PagedAttention *p, const int32_t *table,
                            int key0, int n, int kvh, uint32_t kb[][2][16][16],
                            uint16_t vb[][16][32]) {
    const uint16_t *v_rows[AMX_KEYS];
    for (int h = 0; h < 2; h++) {
        const uint16_t *k_rows[16];
        for (int j = 0; j < 16; j++)
            k_rows[j] = 16 * h + j < n ? cache_row(p, p->k_cache, table, key0 + 16 * h + j, kvh) : NULL;
        for (int c = 0; c < chunks; c++) {
            __m512i r[16];
            for (int j = 0; j < 16; j++)
                r[j] = k_rows[j] ? _mm512_loadu_si512(k_rows[j] + 32 * c) : _mm512_setzero_si512();
            transpose16(r);
            for (int kp = 0; kp < 16; kp++) _mm512_storeu_si512(kb[c][h][kp], r[kp]);
        }
    }
    for (int j = 0; j < AMX_KEYS; j++)
        v_rows[j] = j < n ? cache_row(p, p->v_cache, table, key0 + j, kvh) : NULL;
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
            _mm512_storeu_si512(vb[2 * c][kp], _mm512_permutex2var_epi16(x, pick[0], y));
            _mm512_storeu_si512(vb[2 * c + 1][kp], _mm512_permutex2var_epi16(x, pick[1], y));
        }
    }
}

/* 16 float32 as bf16 (round to nearest even) and the remainder as a second bf16 each. */
ALWAYS_INLINE void split16(__m512 x, __m256bh *hi, __m256bh *lo) {
    *hi = _mm512_cvtneps_pbh(x);
    __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)*hi), 16));
    *lo = _mm512_cvtneps_pbh(_mm512_sub_ps(x, back));
}

/*
 * The online softmax over one run's scores s[16][32] (row i at position row_pos[i]; key j
 * at key0 + j, visible when j < n and key0 + j <= row_pos[i]): updates max and sum, writes
 * the weights split into pa[0] (high) and pa[1] (remainder) [16][32] bf16, and the factor
 * the running output is scaled by into alpha.
 */
ALWAYS_INLINE void softmax_run(const float s[16][32], const int *row_pos, int key0, int n,
                               float *max, float *sum, uint16_t pa[2][16][32], float *alpha) {
    __mmask32 visible[AMX_ROWS];
    float top[AMX_ROWS];
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < AMX_ROWS; i++) {
        int last = row_pos[i] - key0 < n - 1 ? row_pos[i] - key0 : n - 1;
        visible[i] = last < 0 ? 0 : (last >= 31 ? 0xffffffffu : (__mmask32)((1u << (last + 1)) - 1));
        __m512 a = _mm512_mask_mov_ps(minus_inf, (__mmask16)visible[i], _mm512_loadu_ps(s[i]));
        __m512 b = _mm512_mask_mov_ps(minus_inf, (__mmask16)(visible[i] >> 16), _mm512_loadu_ps(s[i] + 16));
        float run_top = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
        top[i] = run_top > max[i] ? run_top : max[i];
    }
    __m512 new_top = _mm512_loadu_ps(top);
    /* the first run always sees key 0, so no row's maximum stays -inf */
    _mm512_storeu_ps(alpha, exp16(_mm512_sub_ps(_mm512_loadu_ps(max), new_top)));
    _mm512_storeu_ps(max, new_top);
    for (int i = 0; i < AMX_ROWS; i++) {
        __m512 m = _mm512_set1_ps(top[i]);
        __m512 a = _mm512_maskz_mov_ps((__mmask16)visible[i], exp16(_mm512_sub_ps(_mm512_loadu_ps(s[i]), m)));
        __m512 b = _mm512_maskz_mov_ps((__mmask16)(visible[i] >> 16), exp16(_mm512_sub_ps(_mm512_loadu_ps(s[i] + 16), m)));
        sum[i] = sum[i] * alpha[i] + _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        __m256bh a_hi, a_lo, b_hi, b_lo;
        split16(a, &a_hi, &a_lo);
        split16(b, &b_hi, &b_lo);
        _mm256_storeu_si256((__m256i *)pa[0][i], (__m256i)a_hi);
        _mm256_storeu_si256((__m256i *)(pa[0][i] + 16), (__m256i)b_hi);
        _mm256_storeu_si256((__m256i *)pa[1][i], (__m256i)a_lo);
        _mm256_storeu_si256((__m256i *)(pa[1][i] + 16), (__m256i)b_lo);
    }
}

/* S = Q K^T for one head over one run: qa [chunks][2][16][32] the split queries. */
ALWAYS_INLINE void scores(const int chunks, uint16_t qa[][2][16][32],
                          uint32_t kb[][2][16][16], float s[16][32]) {
    _tile_zero(0);
    _tile_zero(1);
    for (int c = 0; c < chunks; c++) {
        _tile_loadd(3, kb[c][0], 64);
        _tile_loadd(4, kb[c][1], 64);
        _tile_loadd(2, qa[c][0], 64);
        _tile_dpbf16ps(0, 2, 3);
        _tile_dpbf16ps(1, 2, 4);
        _tile_loadd(2, qa[c][1], 64);
        _tile_dpbf16ps(0, 2, 3);
        _tile_dpbf16ps(1, 2, 4);
    }
    _tile_stored(0, s[0], 128);
    _tile_stored(1, s[0] + 16, 128);
}

/* out (16 rows x head_dim float32) = out * alpha + P V, 64 dims (4 tiles) at a time. */
ALWAYS_INLINE void add_values(const int chunks, uint16_t pa[2][16][32], uint16_t vb[][16][32],
                              const float *alpha, float *out) {
    float part[16][64] __attribute__((aligned(64)));
    const int head_dim = 32 * chunks;
    _tile_loadd(4, pa[0], 64);
    _tile_loadd(5, pa[1], 64);
    for (int g = 0; g < chunks / 2; g++) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
#define DIMS(T)                            \
    _tile_loadd(6, vb[4 * g + T], 64);     \
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
                _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_loadu_ps(o + d), a, _mm512_loadu_ps(part[i] + d)));
        }
    }
}

/* Task: rows [r0, r0 + 16) of a chunk, kv head kvh, all its query heads (see
 * prefill_attention.c); chunks = head_dim / 32. */
ALWAYS_INLINE void amx_task(const int chunks, const PagedAttention *p, const int64_t *chunk,
                            const int32_t *table, int r0, int kvh, void *out, int out_bf16) {
    const int head_dim = 32 * chunks, group = p->group;
    int64_t first_row = chunk[0] + r0;
    int rows = (int)(chunk[2] - r0) < AMX_ROWS ? (int)(chunk[2] - r0) : AMX_ROWS;
    int first_pos = (int)chunk[1] + r0, last_pos = first_pos + rows - 1;
    int row_pos[AMX_ROWS];
    for (int i = 0; i < AMX_ROWS; i++) row_pos[i] = first_pos + (i < rows ? i : rows - 1);
    uint16_t qa[AMX_MAX_GROUP][AMX_MAX_DIM / 32][2][16][32] __attribute__((aligned(64)));
    float acc[AMX_MAX_GROUP][AMX_ROWS * AMX_MAX_DIM] __attribute__((aligned(64)));
    float max[AMX_MAX_GROUP][AMX_ROWS], sum[AMX_MAX_GROUP][AMX_ROWS];
    uint32_t kb[AMX_MAX_DIM / 32][2][16][16] __attribute__((aligned(64)));
    uint16_t vb[AMX_MAX_DIM / 16][16][32] __attribute__((aligned(64)));
    float s[16][32] __attribute__((aligned(64))), alpha[AMX_ROWS];
    uint16_t pa[2][16][32] __attribute__((aligned(64)));
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < AMX_ROWS; i++) {
            const float *q = p->q + (first_row + (i < rows ? i : rows - 1)) * p->heads * head_dim + h * head_dim;
            for (int c = 0; c < 2 * chunks; c++) {
                __m256bh hi, lo;
                split16(_mm512_mul_ps(_mm512_loadu_ps(q + 16 * c), _mm512_set1_ps(p->scale)), &hi, &lo);
                _mm256_storeu_si256((__m256i *)(qa[g][c / 2][0][i] + 16 * (c % 2)), (__m256i)hi);
                _mm256_storeu_si256((__m256i *)(qa[g][c / 2][1][i] + 16 * (c % 2)), (__m256i)lo);
            }
            max[g][i] = -INFINITY, sum[g][i] = 0.0f;
        }
        memset(acc[g], 0, sizeof(float) * AMX_ROWS * (size_t)head_dim);
    }
    configure_tiles();
    for (int key0 = 0; key0 <= last_pos; key0 += AMX_KEYS) {
        int n = last_pos + 1 - key0 < AMX_KEYS ? last_pos + 1 - key0 : AMX_KEYS;
        pack_run(chunks, p, table, key0, n, kvh, kb, vb);
        for (int g = 0; g < group; g++) {
            scores(chunks, qa[g], kb, s);
            softmax_run(s, row_pos, key0, n, max[g], sum[g], pa, alpha);
            add_values(chunks, pa, vb, alpha, acc[g]);
        }
    }
    _tile_release();
    float row[AMX_MAX_DIM];
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i = 0; i < rows; i++) {
            float inv = 1.0f / sum[g][i];
            for (int d = 0; d < head_dim; d++) row[d] = acc[g][i * head_dim + d] * inv;
            store_span(out, (first_row + i) * p->heads * head_dim + (int64_t)h * head_dim, row,
                       head_dim, out_bf16);
        }
    }
}

/* 1 where `prefill_task_amx` takes a task of this cache kind and head size. */
int prefill_amx_handles(int cache_kind, int head_dim, int group) {
    return amx_attention_on && cache_kind == CACHE_BF16 && (head_dim == 64 || head_dim == 128) &&
           group <= AMX_MAX_GROUP;
}

void prefill_task_amx(const PagedAttention *p, const int64_t *chunk, const int32_t *table,
                      int r0, int kvh, void *out, int out_bf16) {
    if (p->head_dim == 64)
        amx_task(2, p, chunk, table, r0, kvh, out, out_bf16);
    else
        amx_task(4, p, chunk, table, r0, kvh, out, out_bf16);
}

int prefill_attention_amx(int on) {
    if (on && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) on = 0;
    amx_attention_on = on ? 1 : 0;
    return amx_attention_on;
}
#else
int prefill_amx_handles(int cache_kind, int head_dim, int group) {
    (void)cache_kind, (void)head_dim, (void)group;
    return 0;
}

void prefill_task_amx(const PagedAttention *p, const int64_t *chunk, const int32_t *table,
                      int r0, int kvh, void *out, int out_bf16) {
    (void)p, (void)chunk, (void)table, (void)r0, (void)kvh, (void)out, (void)out_bf16;
}

int prefill_attention_amx(int on) {
    (void)on;
    return 0;
}
#endif
