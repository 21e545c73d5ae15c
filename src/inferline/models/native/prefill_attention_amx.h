/*
 * Shared by the AMX prefill attention kernels (prefill_attention_amx.c: packing, the
 * dispatch and the head_dim 128 task; prefill_attention_amx64.c: the head_dim 64 task that
 * keeps its output in tiles): the packed runs' layout, splitting float32 into two bf16
 * parts, exp2, a task's rows. Included only where AMX bf16 is built.
 */
#ifndef INFERLINE_PREFILL_ATTENTION_AMX_H
#define INFERLINE_PREFILL_ATTENTION_AMX_H
#include <stdint.h>

#include "kernels_common.h"

#define AMX_ROWS 16       /* query rows per task: a tile's rows */
#define AMX_KEYS 32       /* keys per run: a bf16 tile's depth */
#define AMX_MAX_DIM 128
#define AMX_MAX_GROUP 8   /* as MAX_GROUP_PREFILL */

/* Bytes of one packed run: keys as B tiles [chunks][2][16][16] uint32, values as B tiles
 * [2 chunks][16][32] bf16, then (an int8 cache) the keys' and the values' row scales
 * [2][32] float32. */
#define RUN_BYTES(chunks) ((size_t)(chunks) * 4096 + 256)

/* x rounded to the nearest bf16 (ties away from zero), as float32: hi + (x - hi) == x. */
ALWAYS_INLINE __m512 bf16_high(__m512 x) {
    __m512i bits = _mm512_add_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x8000));
    return _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32((int)0xffff0000u)));
}

/* 32 float32 (a: the first 16) as bf16 high parts to hi and bf16 remainders to lo. */
ALWAYS_INLINE void split32(__m512 a, __m512 b, uint16_t *hi, uint16_t *lo) {
    __m512 a_hi = bf16_high(a), b_hi = bf16_high(b);
    _mm512_storeu_si512(hi, (__m512i)_mm512_cvtne2ps_pbh(b_hi, a_hi));
    _mm512_storeu_si512(lo, (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, b_hi), _mm512_sub_ps(a, a_hi)));
}

/* The head_dim 64 task (prefill_attention_amx64.c) over an int8 / a bf16 cache's runs. */
void amx_task64_int8(const PagedAttention *p, const int64_t *chunk, const uint8_t *runs, int r0,
                     int kvh, void *out, int out_bf16);
void amx_task64_bf16(const PagedAttention *p, const int64_t *chunk, const uint8_t *runs, int r0,
                     int kvh, void *out, int out_bf16);
#endif
