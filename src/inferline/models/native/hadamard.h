/*
 * The rotation of W8A8 inputs: an orthonormal Walsh-Hadamard transform of each block of 64
 * values (H64 / 8, Sylvester order), applied to a weight's rows along its inputs at load
 * (quant_kernels.c) and to every activation row before it is quantized for that weight
 * (cpu_kernels.c): (x H)(W H)^T = x W^T, and a row's outlier channels are spread over their
 * block before its one per-row scale is taken. SmolLM2-135M's W8A8 outputs: KL to fp32
 * 0.0395 -> 0.0048 per position (ARCHITECTURE.md). The int8 KV cache's rows are rotated
 * too (kernels_common.h: store_cache_row, rotated_rows). Rows whose width is not a
 * multiple of 64 are not rotated (on both sides: the rule depends on the width alone).
 *
 * Butterflies of distance 1, 2, 4, ..., 32 in that order, a + b and a - b, then x 0.125
 * (exact): `rotation.rotated` computes the same values in torch, bit for bit.
 */
#ifndef INFERLINE_HADAMARD_H
#define INFERLINE_HADAMARD_H
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define ROTATION_BLOCK 64

#if defined(__AVX512F__)
/* One butterfly stage of distance h < 16 inside a register: t holds each lane's partner,
 * sign is +1 in the lower lane of each pair and -1 in the upper: a + b and a - b, each
 * rounded once as an add or a sub would be (one FMA, not an add and a masked sub). */
static inline __m512 hadamard_lanes(__m512 r, __m512 t, __m512 sign) {
    return _mm512_fmadd_ps(r, sign, t);
}

static inline __m512 lane_signs(__mmask16 upper) {
    return _mm512_mask_mov_ps(_mm512_set1_ps(1.0f), upper, _mm512_set1_ps(-1.0f));
}

/* The 64 values of r[0..3] rotated in registers, times 8 (the orthonormal transform's
 * 1/8 left to the caller: an int8 row's codes do not depend on it). */
static inline __attribute__((always_inline)) void hadamard64_unscaled(__m512 r[4]) {
    const __m512 s1 = lane_signs(0xAAAA), s2 = lane_signs(0xCCCC), s4 = lane_signs(0xF0F0),
                 s8 = lane_signs(0xFF00);
    for (int i = 0; i < 4; i++) {
        __m512 v = r[i];
        v = hadamard_lanes(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)), s1);
        v = hadamard_lanes(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)), s2);
        v = hadamard_lanes(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)), s4);
        v = hadamard_lanes(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)), s8);
        r[i] = v;
    }
    __m512 a0 = _mm512_add_ps(r[0], r[1]), a1 = _mm512_sub_ps(r[0], r[1]);
    __m512 a2 = _mm512_add_ps(r[2], r[3]), a3 = _mm512_sub_ps(r[2], r[3]);
    r[0] = _mm512_add_ps(a0, a2);
    r[1] = _mm512_add_ps(a1, a3);
    r[2] = _mm512_sub_ps(a0, a2);
    r[3] = _mm512_sub_ps(a1, a3);
}

/* The 64 values of r[0..3] rotated in registers (the arithmetic of hadamard64_block). */
static inline __attribute__((always_inline)) void hadamard64_registers(__m512 r[4]) {
    hadamard64_unscaled(r);
    const __m512 eighth = _mm512_set1_ps(0.125f); /* exact */
    for (int i = 0; i < 4; i++) r[i] = _mm512_mul_ps(r[i], eighth);
}

static inline void hadamard64_block(float *x) {
    __m512 r[4];
    for (int i = 0; i < 4; i++) r[i] = _mm512_loadu_ps(x + 16 * i);
    hadamard64_registers(r);
    for (int i = 0; i < 4; i++) _mm512_storeu_ps(x + 16 * i, r[i]);
}
#else
static inline void hadamard64_block(float *x) {
    for (int h = 1; h < ROTATION_BLOCK; h *= 2)
        for (int i = 0; i < ROTATION_BLOCK; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    for (int i = 0; i < ROTATION_BLOCK; i++) x[i] *= 0.125f;
}
#endif

/* Rotates a row of n values in place (n a multiple of ROTATION_BLOCK; others untouched). */
static inline void rotate_row(float *x, int64_t n) {
    if (n % ROTATION_BLOCK) return;
    for (int64_t b = 0; b < n; b += ROTATION_BLOCK) hadamard64_block(x + b);
}
#endif
