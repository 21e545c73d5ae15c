/*
 * The int8 rows' one-pass helpers (cpu_kernels.c's row kernels, gate_up_silu.c's epilogue):
 * an activation's 16 values, SiLU times up, 64 values rotated with their largest |value|,
 * a rotated row quantized. Activation kinds as the kernels take them.
 */
#ifndef INFERLINE_INT8_ROWS_H
#define INFERLINE_INT8_ROWS_H
#include <stdint.h>

#include "hadamard.h"
#include "kernels_common.h"

/* KIND_F32_ROTATED: float32 rows already in the rotated basis (attention's outputs left in
 * an int8 cache's basis, kernels_common.h OUT_CACHE_BASIS): quantize_rows does not rotate
 * them. */
enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_I32 = 2, KIND_I8 = 3, KIND_F32_ROTATED = 4 };

#if defined(__AVX512F__)
#include <immintrin.h>

/* 16 values of an activation (load_row's values) from element at; an int32 product's
 * row_scale is its row's scale broadcast, col_scales its column scales from at's column. */
ALWAYS_INLINE __m512 load16_activation(const void *src, int kind, int64_t at, __m512 row_scale,
                                       const float *col_scales) {
    if (kind == KIND_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)src + at))), 16));
    if (kind == KIND_I32)
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512((const int32_t *)src + at)),
                             _mm512_mul_ps(row_scale, _mm512_loadu_ps(col_scales)));
    return _mm512_loadu_ps((const float *)src + at);
}

/* 64 values rotated (hadamard.h), times 8, into dst; returns top with their |values|
 * folded in (`quantize_rotated` takes the 1/8 into the scale). */
ALWAYS_INLINE __m512 rotate_store64(__m512 r[4], float *dst, __m512 top) {
    hadamard64_unscaled(r);
    for (int j = 0; j < 4; j++) {
        _mm512_storeu_ps(dst + 16 * j, r[j]);
        top = _mm512_max_ps(top, _mm512_abs_ps(r[j]));
    }
    return top;
}

/* A rotated row times unit (n values, the largest |value| among top's lanes) as int8 and
 * its scale: store_row's (max / 127, rounded half to even) of the row itself; unit a power
 * of 2 (8 from rotate_store64), so the codes are bit for bit those of the unscaled row. */
ALWAYS_INLINE void quantize_rotated(const float *rotated, int n, __m512 top, float unit,
                                    int8_t *d, float *scale_out) {
    float scale = larger(_mm512_reduce_max_ps(top) / unit, 1e-8f) / 127.0f;
    *scale_out = scale;
    __m512 inverse = _mm512_set1_ps(1.0f / scale / unit);
    for (int i = 0; i < n; i += 16)
        _mm_storeu_si128((__m128i *)(d + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(
                                                 _mm512_mul_ps(_mm512_loadu_ps(rotated + i), inverse))));
}

/* silu(g) * u for 16 lanes: g / (1 + 2^(-g log2 e)), 2^f a degree-5 polynomial on
 * [-0.5, 0.5] (relative error ~2.4e-6) scaled by vscalefps (overflow to inf gives 0, as
 * the limit), 1 / x from vrcp14ps and one Newton step: ~3e-6 of the value, far inside the
 * int8 step (1/127 of the row's largest value) these rows are quantized to. */
ALWAYS_INLINE __m512 silu16_times(__m512 g, __m512 u) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 t = _mm512_mul_ps(g, _mm512_set1_ps(-1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.3333558146428443e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, one);
    __m512 den = _mm512_add_ps(one, _mm512_scalef_ps(p, n));
    __m512 r = _mm512_rcp14_ps(den);
    r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(den, r, one), r);
    return _mm512_mul_ps(_mm512_mul_ps(g, r), u);
}
#endif
#endif
