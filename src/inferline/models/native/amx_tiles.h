/*
 * AMX tiles, shared by i8_gemm.c and the AMX attention kernels: the tile configuration's
 * layout (palette 1) and asking Linux for the tile state. A source including this defines
 * _GNU_SOURCE before its first include (syscall()).
 */
#ifndef INFERLINE_AMX_TILES_H
#define INFERLINE_AMX_TILES_H
#if defined(__AMX_TILE__)
#include <stdint.h>
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* What _tile_loadconfig reads: per tile its bytes per row and its rows. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* Loads a tile configuration. Through asm with the struct as a memory operand: GCC 12's
 * _tile_loadconfig does not tell the compiler it reads memory, and the stores that fill
 * the struct were dropped where it inlined (ldtilecfg of a half-written struct: SIGSEGV). */
static inline void load_tile_config(const TileConfig *c) {
    __asm__ volatile("ldtilecfg %0" : : "m"(*c));
}

/* _tile_loadd after a compiler barrier: GCC 12's _tile_loadd does not tell the compiler it
 * reads memory either, so stores filling a tile's source (AVX-512 writes to a local
 * array) could be moved past it or dropped as dead. */
#define tile_loadd(dst, base, stride)           \
    do {                                        \
        __asm__ volatile("" ::: "memory");      \
        _tile_loadd(dst, base, stride);         \
    } while (0)

/* Every tile 16 rows x 64 bytes. */
static inline void configure_full_tiles(void) {
    TileConfig c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
    load_tile_config(&c);
}

/* r[i] (16 x 16 uint32) becomes its transpose (AVX-512: packing tiles' operands). */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16]) {
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

/* 1 where Linux grants this process the AMX tile state (arch_prctl), else 0. */
static inline int amx_tiles_permitted(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif
#endif
