/*
 * W8A8 matmul for the CPU on weights packed once at load: int8 rows x int8 weights -> the
 * exact int32 products, the same integers as torch._int_mm (integer sums are exact).
 *
 * torch._int_mm goes through oneDNN with the weight as a plain [k, n] matrix, reordered on
 * every call: at 32 rows (a decode step of 32 streams) it reached 220-350 GMAC/s with hot
 * caches on the 2-core EPYC, and 7-9x slower than here at 1-4 rows. Here the weight is in
 * the VNNI layout already and a 6-row x 64-column block of int32 sums stays in 24 zmm
 * registers for the whole k loop: ~400 GMAC/s from 32 rows up on the same host.
 *
 * Packed format (i8x64), for w8_t [k, n] (k a multiple of 4): the columns in panels of 64
 * (the last one padded with zero columns), each panel k / 4 runs of 4 x 64 bytes: run i,
 * tile t (16 columns) holds, at byte 4 * j + r, the weight of column 16 t + j, input
 * 4 i + r: one 64-byte load is the s8 operand of a VNNI dot product over 4 inputs.
 * VNNI multiplies u8 by s8, so the activations go in as x + 128 (their sign bit flipped)
 * and each column's sum starts at -128 * sum_k w[k, col] (comp, from `i8_pack`).
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>

#include "i8_gemm.h"
#include "kernels_common.h"

#define I8_ROWS 6

/* Columns rounded up to whole panels (comp holds one int32 per padded column). */
int64_t i8_padded_columns(int64_t n) { return (n + I8_PANEL - 1) / I8_PANEL * I8_PANEL; }

/* Bytes of the packed form of a [k, n] weight (k % 4 == 0). */
int64_t i8_packed_bytes(int64_t n, int64_t k) { return i8_padded_columns(n) * k; }

/* w8_t [k, n] int8 -> out (i8_packed_bytes) and comp [i8_padded_columns(n)] int32. A
 * panel at a time, reading each input's 64 columns as one contiguous run (a column at a
 * time read the weight with a stride of n bytes: slower at load for wide weights). */
void i8_pack(int64_t n, int64_t k, const int8_t *w8_t, int8_t *out, int32_t *comp) {
    int64_t panels = i8_padded_columns(n) / I8_PANEL;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; p++) {
        int8_t *panel = out + p * I8_PANEL * k;
        int64_t first = p * I8_PANEL, width = n - first < I8_PANEL ? n - first : I8_PANEL;
        int32_t sums[I8_PANEL] = {0};
        if (width < I8_PANEL) memset(panel, 0, (size_t)(I8_PANEL * k)); /* padding columns */
        for (int64_t i = 0; i < k; i++) {
            const int8_t *row = w8_t + i * n + first;
            int8_t *run = panel + (i / 4) * 4 * I8_PANEL + i % 4;
            for (int64_t lane = 0; lane < width; lane++) {
                run[4 * lane] = row[lane];
                sums[lane] += row[lane];
            }
        }
        for (int lane = 0; lane < I8_PANEL; lane++) comp[first + lane] = -128 * sums[lane];
    }
}

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#define I8_PATH "avx512-vnni"

static inline int32_t load_u8x4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v ^ (int32_t)0x80808080u; /* x + 128 for each of the 4 bytes */
}

/* One row's 4 accumulators (64 columns); unused rows compile away (R is a constant). */
#define ROW_ACC(r) __m512i c##r##0, c##r##1, c##r##2, c##r##3;
#define ROW_INIT(r)                                                                      \
    if (R > r) { c##r##0 = c0; c##r##1 = c1; c##r##2 = c2; c##r##3 = c3; }
#define ROW_STEP(r)                                                                      \
    if (R > r) {                                                                         \
        __m512i a = _mm512_set1_epi32(load_u8x4(x + r * k + i));                         \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, a, b0);                                   \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, a, b1);                                   \
        c##r##2 = _mm512_dpbusd_epi32(c##r##2, a, b2);                                   \
        c##r##3 = _mm512_dpbusd_epi32(c##r##3, a, b3);                                   \
    }
#define ROW_STORE(r)                                                                     \
    if (R > r) {                                                                         \
        store16(out, r * n, c##r##0, keep[0], y, r, col_scales);                         \
        store16(out, r * n + 16, c##r##1, keep[1], y, r, col_scales + 16);               \
        store16(out, r * n + 32, c##r##2, keep[2], y, r, col_scales + 32);               \
        store16(out, r * n + 48, c##r##3, keep[3], y, r, col_scales + 48);               \
    }

/* 16 sums to out (int32), or with y.out set, sum * (row scale * column scale) to y.out
 * (float32: torch's values.float() * (x_scale * scale), the same roundings; or that
 * rounded to bf16, half the bytes for the next kernel to read). */
typedef struct {
    void *out; /* float32 or bf16, at the block's first element */
    const float *row_scales;
    int bf16;
} Scaled;

/* y for a block whose first element is out[offset] (out NULL: int32 sums). */
static inline Scaled scaled_at(void *out, int bf16, int64_t offset, const float *row_scales) {
    if (!out) return (Scaled){NULL, NULL, 0};
    void *at = bf16 ? (void *)((uint16_t *)out + offset) : (void *)((float *)out + offset);
    return (Scaled){at, row_scales, bf16};
}

/* Whole vectors are stored unmasked: a masked store of all 16 lanes measured ~25 % slower
 * on the AMX Xeon (int32 outputs of a 512-row matmul, 0.40 -> 0.30 ms for 512 x 960). */
ALWAYS_INLINE void store16(int32_t *out, int64_t at, __m512i v, __mmask16 keep, Scaled y,
                           int r, const float *col_scales) {
    if (!keep) return;
    const int whole = keep == 0xFFFF;
    if (y.out) {
        __m512 scale = _mm512_mul_ps(_mm512_set1_ps(y.row_scales[r]),
                                     _mm512_maskz_loadu_ps(keep, col_scales));
        __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
        if (y.bf16 && whole)
            _mm256_storeu_si256((__m256i *)((uint16_t *)y.out + at), bf16_of(f));
        else if (y.bf16)
            _mm256_mask_storeu_epi16((uint16_t *)y.out + at, keep, bf16_of(f));
        else if (whole)
            _mm512_storeu_ps((float *)y.out + at, f);
        else
            _mm512_mask_storeu_ps((float *)y.out + at, keep, f);
    } else if (whole) {
        _mm512_storeu_si512(out + at, v);
    } else {
        _mm512_mask_storeu_epi32(out + at, keep, v);
    }
}

/* R (1..6) rows x one panel: out[r, 0..63] (columns past n not stored). Explicit
 * variables, not arrays: GCC kept arrays of accumulators in memory (3x slower). */
ALWAYS_INLINE void panel_rows(const int R, int64_t k, const int8_t *restrict x,
                              const int8_t *restrict panel, const int32_t *restrict comp,
                              int32_t *restrict out, int64_t n, const __mmask16 keep[4],
                              Scaled y, const float *col_scales) {
    const __m512i c0 = _mm512_loadu_si512(comp), c1 = _mm512_loadu_si512(comp + 16),
                  c2 = _mm512_loadu_si512(comp + 32), c3 = _mm512_loadu_si512(comp + 48);
    ROW_ACC(0) ROW_ACC(1) ROW_ACC(2) ROW_ACC(3) ROW_ACC(4) ROW_ACC(5)
    ROW_INIT(0) ROW_INIT(1) ROW_INIT(2) ROW_INIT(3) ROW_INIT(4) ROW_INIT(5)
    for (int64_t i = 0; i < k; i += 4, panel += 4 * I8_PANEL) {
        const __m512i b0 = _mm512_loadu_si512(panel), b1 = _mm512_loadu_si512(panel + 64),
                      b2 = _mm512_loadu_si512(panel + 128), b3 = _mm512_loadu_si512(panel + 192);
        ROW_STEP(0) ROW_STEP(1) ROW_STEP(2) ROW_STEP(3) ROW_STEP(4) ROW_STEP(5)
    }
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)
}

static void panel_block(int rows, int64_t k, const int8_t *x, const int8_t *panel,
                        const int32_t *comp, int32_t *out, int64_t n, const __mmask16 keep[4],
                        Scaled y, const float *col_scales) {
#define PANEL(R) panel_rows(R, k, x, panel, comp, out, n, keep, y, col_scales)
    switch (rows) {
    case 6: PANEL(6); break;
    case 5: PANEL(5); break;
    case 4: PANEL(4); break;
    case 3: PANEL(3); break;
    case 2: PANEL(2); break;
    default: PANEL(1); break;
    }
#undef PANEL
}

/* Which columns of a panel starting at column first are inside n, per 16-column tile. */
static void panel_keep(int64_t first, int64_t n, __mmask16 keep[4]) {
    for (int t = 0; t < 4; t++) {
        int64_t left = n - first - 16 * t;
        keep[t] = left >= 16 ? 0xFFFF : (left > 0 ? (__mmask16)((1u << left) - 1) : 0);
    }
}

#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
static int amx_min_rows = 0; /* 0: AMX off; else the fewest rows a call runs it for */

/* Ask for the AMX tile state and use AMX from min_rows rows (0: never). Returns the
 * setting in force: min_rows, or 0 where the kernel refused (or min_rows was 0). */
int i8_amx_rows(int min_rows) {
    if (min_rows > 0 && !amx_tiles_permitted()) min_rows = 0;
    amx_min_rows = min_rows > 0 ? min_rows : 0;
    return amx_min_rows;
}

/* The fewest rows AMX runs for (0: off; gate_up_silu.c asks). */
int i8_amx_min_rows(void) { return amx_min_rows; }

/* rows (1..32) x 32 columns (half a panel) of int32 sums into sums, rows stride apart. */
static void amx_block(int rows, int64_t k, const int8_t *x, const int8_t *half,
                      int32_t *sums, int64_t stride) {
    amx_columns(rows, k, x, half, half + 64, sums, stride, NULL, NULL, 1);
}

/* A weight up to this many bytes is read whole by every thread, each over its own rows. */
#ifndef AMX_SHARED_WEIGHT_BYTES
#define AMX_SHARED_WEIGHT_BYTES (1 << 20)
#endif

/* One block: rows [r0, r0 + 32) x half panel h, multiplied and written out. */
static void amx_item(int64_t h, int64_t r0, int64_t m, int64_t n, int64_t k, const int8_t *x8,
                     const int8_t *packed, int32_t *out, const float *row_scales,
                     const float *col_scales, void *out_scaled, int out_bf16, int *configured,
                     int32_t sums[AMX_BLOCK_ROWS][32]) {
    int64_t c0 = h * 32;
    int rows = (int)(m - r0 < AMX_BLOCK_ROWS ? m - r0 : AMX_BLOCK_ROWS);
    if (rows != *configured) amx_configure(rows), *configured = rows;
    int side = (int)(h % 2); /* which half of its panel */
    const int8_t *half = packed + (c0 - 32 * side) * k + 128 * side;
    if (out && c0 + 32 <= n) { /* int32 sums of a half panel inside n: straight from the tiles */
        amx_block(rows, k, x8 + r0 * k, half, out + r0 * n + c0, n);
        return;
    }
    amx_block(rows, k, x8 + r0 * k, half, &sums[0][0], 32);
    __mmask16 keep[4];
    panel_keep(c0 - 32 * side, n, keep);
    Scaled y = scaled_at(out_scaled, out_bf16, r0 * n + c0, row_scales ? row_scales + r0 : NULL);
    int32_t *o = out ? out + r0 * n + c0 : NULL;
    const float *cs = col_scales ? col_scales + c0 : NULL;
    for (int r = 0; r < rows; r++) {
        __m512i lo = _mm512_load_si512(&sums[r][0]), hi = _mm512_load_si512(&sums[r][16]);
        store16(o, r * n, lo, keep[2 * side], y, r, cs);
        store16(o, r * n + 16, hi, keep[2 * side + 1], y, r, cs ? cs + 16 : NULL);
    }
}

/*
 * Rows [0, m) with AMX: work items are (half panel, block of 32 rows) pairs.
 * - By default a half panel's blocks run next to each other (its weights read from memory
 *   once, each row block from L2), the items split evenly over the threads.
 * - Prefill-sized steps (several row blocks) on a weight of at most AMX_SHARED_WEIGHT_BYTES:
 *   each thread multiplies its own rows (whole row blocks, split as the row-wise kernels'
 *   static schedule splits rows) by the whole weight, which stays in its L2, so the next
 *   kernel reads the rows from the core that wrote them, not half of them from the other
 *   core's cache: 512-token SmolLM2 prefill 4.2-4.7 % faster (qkv, o, down; three paired
 *   runs), Qwen2.5-Coder (o) 3 %.
 * - Else where each thread's share of the columns is at most AMX_ROW_MAJOR_BYTES of weights
 *   and there are several row blocks (prefill), each thread takes its own columns and goes
 *   row block by row block over them: a block's 32 input rows stay in L1 while the thread's
 *   half panels stream from L2 (a half panel's rows are 4 KB apart a k-step, so they share
 *   L1 sets and do not stay there between row blocks). 512-token SmolLM2 prefill p50 100-117
 *   -> 98-105 ms (interleaved, a slow hour). Row block by row block over all the columns
 *   made every thread read every weight: decode steps of 64 rows (d: 906 -> 840 tok/s)
 *   and Qwen2.5's 8.7 MB gate/up (prefill 181-216 -> 219-240 ms) got slower.
 */
static void amx_matmul(int64_t m, int64_t n, int64_t k, const int8_t *x8, const int8_t *packed,
                       int32_t *out, const float *row_scales, const float *col_scales,
                       void *out_scaled, int out_bf16) {
    int64_t halves = i8_padded_columns(n) / 32, blocks = (m + AMX_BLOCK_ROWS - 1) / AMX_BLOCK_ROWS;
    int threads = omp_get_max_threads();
    const int by_rows = blocks >= 4 && halves >= 4 * threads &&
                        n * k <= (int64_t)AMX_ROW_MAJOR_BYTES * threads;
#pragma omp parallel
    {
        int configured = 0;
        int32_t sums[AMX_BLOCK_ROWS][32] __attribute__((aligned(64)));
        if (by_rows && n * k <= AMX_SHARED_WEIGHT_BYTES) {
            int t = omp_get_thread_num(), count = omp_get_num_threads();
            for (int64_t b = blocks * t / count; b < blocks * (t + 1) / count; b++)
                for (int64_t h = 0; h < halves; h++)
                    amx_item(h, b * AMX_BLOCK_ROWS, m, n, k, x8, packed, out, row_scales,
                             col_scales, out_scaled, out_bf16, &configured, sums);
        } else if (by_rows) {
            int t = omp_get_thread_num(), count = omp_get_num_threads();
            int64_t first = halves * t / count, last = halves * (t + 1) / count;
            for (int64_t b = 0; b < blocks; b++)
                for (int64_t h = first; h < last; h++)
                    amx_item(h, b * AMX_BLOCK_ROWS, m, n, k, x8, packed, out, row_scales,
                             col_scales, out_scaled, out_bf16, &configured, sums);
        } else {
#pragma omp for schedule(static)
            for (int64_t item = 0; item < halves * blocks; item++)
                amx_item(item / blocks, item % blocks * AMX_BLOCK_ROWS, m, n, k, x8, packed, out,
                         row_scales, col_scales, out_scaled, out_bf16, &configured, sums);
        }
        if (configured) _tile_release();
    }
}
#define AMX_BUILT 1
#else
#define AMX_BUILT 0
int i8_amx_rows(int min_rows) { (void)min_rows; return 0; }
int i8_amx_min_rows(void) { return 0; }
#endif

/*
 * x8 [m, k] int8, packed/comp from i8_pack -> out [m, n] int32 = x8 @ w8_t; or, with
 * out_scaled set, out_scaled [m, n] = that * (row_scales[r] * col_scales[c]) (the
 * dequantized product, with col_scales [n]) as float32, or bf16 with out_bf16. With AMX on (`i8_amx_rows`), at least its
 * rows and k a multiple of 64, AMX runs it; else VNNI: work items are (panel, run of row
 * blocks) pairs, enough of them to keep every thread busy at 32 rows on narrow weights;
 * each row's sums depend on its own input row alone.
 */
int i8_matmul(int64_t m, int64_t n, int64_t k, const int8_t *x8, const int8_t *packed,
              const int32_t *comp, int32_t *out, const float *row_scales,
              const float *col_scales, void *out_scaled, int out_bf16) {
    if (m <= 0) return 0;
#if AMX_BUILT
    if (amx_min_rows && m >= amx_min_rows && k % 64 == 0) {
        amx_matmul(m, n, k, x8, packed, out, row_scales, col_scales, out_scaled, out_bf16);
        return 0;
    }
#endif
    int64_t panels = i8_padded_columns(n) / I8_PANEL;
    int64_t blocks = (m + I8_ROWS - 1) / I8_ROWS;
    int64_t runs = (8 * (int64_t)omp_get_max_threads() + panels - 1) / panels;
    if (runs > blocks) runs = blocks;
    int64_t per_run = (blocks + runs - 1) / runs;
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < panels * runs; item++) {
        int64_t p = item / runs, first_block = item % runs * per_run, c0 = p * I8_PANEL;
        __mmask16 keep[4];
        panel_keep(c0, n, keep);
        for (int64_t b = first_block; b < first_block + per_run && b < blocks; b++) {
            int64_t r0 = b * I8_ROWS;
            int rows = (int)(m - r0 < I8_ROWS ? m - r0 : I8_ROWS);
            Scaled y = scaled_at(out_scaled, out_bf16, r0 * n + c0, row_scales ? row_scales + r0 : NULL);
            panel_block(rows, k, x8 + r0 * k, packed + c0 * k, comp + c0,
                        out ? out + r0 * n + c0 : NULL, n, keep, y,
                        col_scales ? col_scales + c0 : NULL);
        }
    }
    return 0;
}
#else
#define I8_PATH ""
/* No AVX-512 VNNI in this build: the caller keeps torch._int_mm (i8_path() is empty). */
int i8_matmul(int64_t m, int64_t n, int64_t k, const int8_t *x8, const int8_t *packed,
              const int32_t *comp, int32_t *out, const float *row_scales,
              const float *col_scales, void *out_scaled, int out_bf16) {
    (void)m, (void)n, (void)k, (void)x8, (void)packed, (void)comp, (void)out;
    (void)row_scales, (void)col_scales, (void)out_scaled, (void)out_bf16;
    return -1;
}
int i8_amx_rows(int min_rows) { (void)min_rows; return 0; }
int i8_amx_min_rows(void) { return 0; }
#endif

/* "avx512-vnni", or "" where this build has no packed int8 kernel. */
const char *i8_path(void) { return I8_PATH; }
