/*
 * Shared by i8_gemm.c and gate_up_silu.c: the packed layout's panel width and, where AMX
 * int8 is built, the tile primitives over it.
 */
#ifndef INFERLINE_I8_GEMM_H
#define INFERLINE_I8_GEMM_H
#include <stdint.h>
#include <string.h>

#include "kernels_common.h"

#define I8_PANEL 64 /* columns a packed panel holds (i8_gemm.c's format) */

/* The fewest rows AMX int8 runs for (0: off; i8_amx_rows sets it). */
int i8_amx_min_rows(void);

#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
/*
 * AMX (Intel since Sapphire Rapids): TDPBSSD multiplies a tile of 16 rows x 64 int8
 * inputs by 16 runs of the packed panel (64 inputs x 16 columns: exactly i8_gemm.c's VNNI
 * runs, 256 bytes apart) into 16 x 16 int32 sums, signed by signed: no x + 128 and no
 * compensation, the same exact integers. A block is up to 32 rows x 32 columns (half a
 * panel) in 4 accumulator tiles, 2 row tiles and 2 weight tiles. Rows fewer than 32 (the
 * last block) are tiles configured with fewer rows. Only for k a multiple of 64; switching
 * it on asks Linux for the tile state (arch_prctl), and it stays off if refused.
 */
#include "amx_tiles.h"
#define AMX_BLOCK_ROWS 32

/* Tiles 0-3 sums (rows x 16 int32), 4-5 input rows (rows x 64 int8), 6-7 weights (16
 * runs x 64 bytes); tiles 0, 1, 4 hold the block's first 16 rows, 2, 3, 5 the rest. */
static inline void amx_configure(int rows) {
    TileConfig c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    int low = rows < 16 ? rows : 16, high = rows - low;
    for (int t = 0; t < 8; t++) c.colsb[t] = 64;
    c.rows[0] = c.rows[1] = c.rows[4] = (uint8_t)low;
    c.rows[2] = c.rows[3] = c.rows[5] = (uint8_t)high;
    c.rows[6] = c.rows[7] = 16;
    if (!high) c.colsb[2] = c.colsb[3] = c.colsb[5] = 0; /* unused tiles stay off */
    load_tile_config(&c);
}

/* rows (1..32) x 32 columns of int32 sums into sums, rows stride apart: 16 columns whose
 * packed weights start at w0, then 16 at w1 (a half panel: w1 = w0 + 64). After each
 * k-step's tile products are issued, step(context) runs (when set): AVX-512 work while the
 * tiles compute. With prefetch, each k-step asks for the next one's weight lines first. */
ALWAYS_INLINE void amx_columns(int rows, int64_t k, const int8_t *x, const int8_t *w0,
                               const int8_t *w1, int32_t *sums, int64_t stride,
                               void (*step)(void *), void *context, const int prefetch) {
    _tile_zero(0);
    _tile_zero(1);
    if (rows > 16) {
        _tile_zero(2);
        _tile_zero(3);
    }
    const int64_t next = 16 * 4 * I8_PANEL; /* the next k-step's runs */
    for (int64_t i = 0; i < k; i += 64, w0 += next, w1 += next) {
        /* the next k-step's weight lines asked for ahead of its tile loads (after the last
         * step: the next panel's first; a prefetch never faults). 512 rows by SmolLM2's
         * weights, 30 layers' in turn: qkv 161 -> 122 us, o 101 -> 76, gate/up 520 -> 410,
         * down 271 -> 225 (32 rows: gate/up 83-90 -> 65-73; 64 rows: 112-117 -> 99-102);
         * in a 512-token prefill (per-kernel timers, 30 layers) 31.0 -> 28.4 ms over the
         * four. Two k-steps ahead: no better. i8_gate_up_silu asks for it from 4 row
         * blocks only: at 64 rows it made it slower (87 -> 109-135 us a layer, 30 layers
         * in turn; 512 rows 540 -> 498, 128 level, 32 level). */
        for (int line = 0; line < (prefetch ? 16 : 0); line++) {
            _mm_prefetch((const char *)(w0 + next + line * 4 * I8_PANEL), _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + next + line * 4 * I8_PANEL), _MM_HINT_T0);
        }
        tile_loadd(6, w0, 4 * I8_PANEL);
        tile_loadd(7, w1, 4 * I8_PANEL);
        tile_loadd(4, x + i, k);
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        if (rows > 16) {
            tile_loadd(5, x + 16 * k + i, k);
            _tile_dpbssd(2, 5, 6);
            _tile_dpbssd(3, 5, 7);
        }
        if (step) step(context);
    }
    _tile_stored(0, sums, stride * sizeof(int32_t));
    _tile_stored(1, sums + 16, stride * sizeof(int32_t));
    if (rows > 16) {
        _tile_stored(2, sums + 16 * stride, stride * sizeof(int32_t));
        _tile_stored(3, sums + 16 * stride + 16, stride * sizeof(int32_t));
    }
}

/* Where columns c .. c + 15 (c a multiple of 16) start in i8_pack's layout. */
static inline const int8_t *packed_columns(const int8_t *packed, int64_t k, int64_t c) {
    int64_t panel = c / I8_PANEL * I8_PANEL;
    return packed + panel * k + 64 * ((c - panel) / 16);
}

/* A thread's share of a weight up to this many bytes is read row block by row block
 * (amx_matmul, i8_gate_up_silu). */
#ifndef AMX_ROW_MAJOR_BYTES
#define AMX_ROW_MAJOR_BYTES (1 << 20)
#endif
#endif /* AMX int8 */
#endif
