/*
 * AMX tiles, shared by i8_gemm.c and prefill_attention_amx.c: the tile configuration's
 * layout (palette 1) and asking Linux for the tile state. A source including this defines
 * _GNU_SOURCE before its first include (syscall()).
 */
#ifndef INFERLINE_AMX_TILES_H
#define INFERLINE_AMX_TILES_H
#if defined(__AMX_TILE__)
#include <stdint.h>
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

/* 1 where Linux grants this process the AMX tile state (arch_prctl), else 0. */
static inline int amx_tiles_permitted(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif
#endif
