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

/* 1 where Linux grants this process the AMX tile state (arch_prctl), else 0. */
static inline int amx_tiles_permitted(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif
#endif
