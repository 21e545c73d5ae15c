/*
 * gate/up followed by SiLU on AMX int8 tiles, the products kept in L1 (i8_gate_up_silu,
 * below), and the pass that turns its rotated rows into the down projection's int8 rows.
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "i8_gemm.h"
#include "int8_rows.h"
#include "kernels_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__)
/* The epilogue of a row: 64 columns of silu(gate) * up from int32 sums [4][32] (quarter j:
 * 16 gate, then 16 up columns), rotated as silu_mul's int8 rows into rotated; their largest
 * |value| to top. Bit for bit silu_mul_int8_row's values. */
static void silu_rotate_row(const int32_t *sums, float row_scale, const float *gate_scales,
                            const float *up_scales, float *rotated, float *top) {
    __m512 scale = _mm512_set1_ps(row_scale), x[4];
    for (int j = 0; j < 4; j++) {
        __m512 g = load16_activation(sums + 32 * j, KIND_I32, 0, scale, gate_scales + 16 * j);
        __m512 u = load16_activation(sums + 32 * j, KIND_I32, 16, scale, up_scales + 16 * j);
        x[j] = silu16_times(g, u);
    }
    *top = _mm512_reduce_max_ps(rotate_store64(x, rotated, _mm512_setzero_ps()));
}

/* A finished block's rows still to go through silu_rotate_row (one per call). */
typedef struct {
    int32_t (*sums)[4][32];
    int next, rows;
    const float *row_scales, *gate_scales, *up_scales;
    float *rotated, *tops;
    int64_t stride, tops_stride;
} Epilogue;

static void epilogue_row(void *context) {
    Epilogue *e = context;
    if (e->next >= e->rows) return;
    int r = e->next++;
    silu_rotate_row(&e->sums[r][0][0], e->row_scales[r], e->gate_scales, e->up_scales,
                    e->rotated + r * e->stride, e->tops + r * e->tops_stride);
}

/*
 * gate/up [k, 2 inter] with silu_mul after it, on AMX: a block of 32 rows x 64 columns of
 * silu(gate) * up at a time (its 4 x 16 gate and matching up columns into int32 sums in
 * L1), rotated into rotated [m, inter] with each row's largest |value| of the 64 in tops
 * [m, inter / 64] (silu_rotate_row; quantize_rotated_rows then writes the int8 rows): the
 * 2 x inter int32 products never reach memory (6.3 MB a layer at 512 SmolLM2 rows), and a
 * block's epilogue runs on AVX-512 one row per k-step of the next block's tile products,
 * while the tiles compute. Each thread takes its own column groups, in amx_matmul's
 * orders. Values bit for bit i8_matmul's int32 then silu_mul's int8 rows.
 * 512-token prefill, one process alternating it with those two: SmolLM2 63.8 / 66.1 ->
 * 58.4 / 59.5 ms, Qwen2.5-Coder 151.0 -> 137.6 ms; 32- and 64-row decode steps level.
 * Returns -1 (nothing done) without AMX, below its rows, or where inter or k is not a
 * multiple of 64.
 */
int i8_gate_up_silu(int64_t m, int64_t inter, int64_t k, const int8_t *x8, const int8_t *packed,
                    const float *row_scales, const float *col_scales, float *rotated,
                    float *tops) {
    int min_rows = i8_amx_min_rows();
    if (!min_rows || m < min_rows || k % 64 || inter % 64) return -1;
    int64_t groups = inter / 64, blocks = (m + AMX_BLOCK_ROWS - 1) / AMX_BLOCK_ROWS;
    /* row block by row block where a thread's columns' weights stay in its L2, else each
     * column group through every row block (its weights read once; as amx_matmul) */
    const int by_rows = 2 * inter * k <= (int64_t)AMX_ROW_MAJOR_BYTES * omp_get_max_threads();
#pragma omp parallel
    {
        int configured = 0, t = omp_get_thread_num(), count = omp_get_num_threads(), buffer = 0;
        int32_t sums[2][AMX_BLOCK_ROWS][4][32] __attribute__((aligned(64)));
        Epilogue e = {0};
        int64_t first = groups * t / count, mine = groups * (t + 1) / count - first;
        for (int64_t item = 0; item < blocks * mine; item++) {
            int64_t b = by_rows ? item / mine : item % blocks;
            int64_t g = first + (by_rows ? item % mine : item / blocks);
            int64_t r0 = b * AMX_BLOCK_ROWS;
            int rows = (int)(m - r0 < AMX_BLOCK_ROWS ? m - r0 : AMX_BLOCK_ROWS);
            if (rows != configured) amx_configure(rows), configured = rows;
            for (int j = 0; j < 4; j++) { /* the previous block's epilogue runs meanwhile */
                int64_t c = 64 * g + 16 * j;
                amx_columns(rows, k, x8 + r0 * k, packed_columns(packed, k, c),
                            packed_columns(packed, k, inter + c), &sums[buffer][0][j][0],
                            4 * 32, epilogue_row, &e, blocks >= 4);
            }
            while (e.next < e.rows) epilogue_row(&e); /* its rows left, if any */
            e = (Epilogue){sums[buffer], 0, rows, row_scales + r0, col_scales + 64 * g,
                           col_scales + inter + 64 * g, rotated + r0 * inter + 64 * g,
                           tops + r0 * groups + g, inter, groups};
            buffer ^= 1;
        }
        while (e.next < e.rows) epilogue_row(&e);
        if (configured) _tile_release();
    }
    return 0;
}

/* Rows of i8_gate_up_silu's rotated values (width a multiple of 64) to int8 and scales,
 * each row's largest |value| the largest of its width / 64 tops. */
void quantize_rotated_rows(int64_t rows, int width, const float *rotated, const float *tops,
                           int8_t *out, float *out_scales) {
    int blocks = width / ROTATION_BLOCK;
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float top = 0.0f;
        for (int b = 0; b < blocks; b++) top = larger(top, tops[t * blocks + b]);
        quantize_rotated(rotated + t * width, width, _mm512_set1_ps(top), 8.0f, out + t * width,
                         out_scales + t);
    }
}
#else
int i8_gate_up_silu(int64_t m, int64_t inter, int64_t k, const int8_t *x8, const int8_t *packed,
                    const float *row_scales, const float *col_scales, float *rotated,
                    float *tops) {
    (void)m, (void)inter, (void)k, (void)x8, (void)packed, (void)row_scales, (void)col_scales;
    (void)rotated, (void)tops;
    return -1;
}

/* (only called after i8_gate_up_silu ran) */
void quantize_rotated_rows(int64_t rows, int width, const float *rotated, const float *tops,
                           int8_t *out, float *out_scales) {
    (void)rows, (void)width, (void)rotated, (void)tops, (void)out, (void)out_scales;
}
#endif
