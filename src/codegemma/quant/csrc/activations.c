/* Activations as the integer kernels read them: int8 blocks of 32 with a float scale each,
 * like llama.cpp's Q8_0 (and each block's sum, for weights stored with an offset); and x
 * rounded to bfloat16 for bfloat16 weights (AVX512-BF16 and AVX2 builds). */
#include "cg_internal.h"

/* out[i] = x[i] rounded to bfloat16 (nearest even), as f32_to_bf16 (the loop vectorizes). */
void cg_round_to_bf16(const float *x, int64_t n, uint16_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

/* One block of 32: d = max|x| / 127, q = round(x / d) (half away from zero), and the sum of q.
 * The vector form does each step in the same float32 operations as the scalar one. */
static int32_t quantize_block(const float *xb, int8_t *q, float *d) {
#ifdef CG_AVX2
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
    __m256 v[4], top = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(xb + 8 * i);
        top = _mm256_max_ps(top, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 t = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    t = _mm_max_ps(t, _mm_movehl_ps(t, t));
    t = _mm_max_ss(t, _mm_movehdup_ps(t));
    float amax = _mm_cvtss_f32(t);
    *d = amax / 127.0f;
    __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    __m256i n[4];
    for (int i = 0; i < 4; i++) {
        __m256 scaled = _mm256_mul_ps(v[i], inv);
        __m256 away = _mm256_or_ps(_mm256_and_ps(scaled, sign), half); /* +-0.5 */
        n[i] = _mm256_cvttps_epi32(_mm256_add_ps(scaled, away));
    }
    __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    words = _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, words);
    __m256i total = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    return _mm_cvtsi128_si32(s4);
#else
    float amax = 0.0f;
    for (int j = 0; j < CG_BLOCK; j++) {
        float a = xb[j] < 0 ? -xb[j] : xb[j];
        amax = a > amax ? a : amax;
    }
    float inv = amax > 0 ? 127.0f / amax : 0.0f;
    *d = amax / 127.0f;
    int32_t sum = 0;
    for (int j = 0; j < CG_BLOCK; j++) {
        float v = xb[j] * inv;
        q[j] = (int8_t)(v < 0 ? (int)(v - 0.5f) : (int)(v + 0.5f));
        sum += q[j];
    }
    return sum;
#endif
}

/* Quantize x (M, K) to int8 blocks of 32 (q, block scales d); with `sums`, also each block's
 * sum of q times `offset` (the correction for weights stored with that offset). */
void cg_quantize_x(const float *x, int64_t M, int64_t k, int8_t *q, float *d, int32_t *sums,
                       int32_t offset) {
    int64_t nb = k / CG_BLOCK;
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < nb; b++) {
            int64_t at = m * k + b * CG_BLOCK;
            int32_t sum = quantize_block(x + at, q + at, d + m * nb + b);
            if (sums) sums[m * nb + b] = sum * offset;
        }
}

