/* Row groups back in rows: float32, or bfloat16 rounded to nearest even (prompts that widen
 * weights instead of reading their bytes); AVX-512 transposes 16 rows in registers. */
#include "cg_groups.h"

#ifdef CG_GROUPS_512

/* Rows r of one (group, block) back in Q8_0 / Q4_0 byte order: the runs hold a
 * (runs x 16 rows) matrix of 4-byte words, transposed here in registers. */
CG_INLINE __m512i interleave32(__m512i a, __m512i b, int high_rows) {
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    return _mm512_permutex2var_epi32(a, high_rows ? high : low, b);
}

CG_INLINE __m512i interleave64(__m512i a, __m512i b, int high_half) {
    const __m512i low = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i high = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    return _mm512_permutex2var_epi64(a, high_half ? high : low, b);
}

CG_INLINE __m512i interleave128(__m512i a, __m512i b, int high_half) {
    const __m512i low = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i high = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    return _mm512_permutex2var_epi64(a, high_half ? high : low, b);
}

/* 16 signed bytes times a scale, rounded to bfloat16 (nearest even, as f32_to_bf16). */
CG_INLINE void store_bf16x16(uint16_t *out, __m128i bytes16, float scale) {
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes16)),
                             _mm512_set1_ps(scale));
#ifdef CG_BF16_DOT
    /* the same rounding in one instruction (the values are finite): widening 24% faster */
    _mm256_storeu_si256((__m256i *)out, (__m256i)_mm512_cvtneps_pbh(f));
#else
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    _mm256_storeu_si256((__m256i *)out, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
#endif
}

/* One row's 32 signed values (Q8_0 element order) to bfloat16. */
CG_INLINE void store_row_bf16(uint16_t *out, __m256i values, float scale) {
    store_bf16x16(out, _mm256_castsi256_si128(values), scale);
    store_bf16x16(out + 16, _mm256_extracti128_si256(values, 1), scale);
}

/* Q4_0 bytes of one row (16) to its 32 signed values in element order. */
CG_INLINE __m256i unpack_q4(__m128i packed) {
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

/* The 16 rows of one (group, block) to bfloat16 rows `row_stride` values apart. */
CG_INLINE void group_block_bf16(int bits, const uint8_t *block, const float *scales,
                                uint16_t *out, int64_t row_stride) {
    if (bits == 8) {
        __m512i r[8], a[8], c[8];
        for (int i = 0; i < 8; i++) r[i] = _mm512_loadu_si512((const void *)(block + 64 * i));
        for (int p = 0; p < 4; p++) { /* a[p]: rows 0-7, a[4 + p]: rows 8-15; runs 2p, 2p+1 */
            a[p] = interleave32(r[2 * p], r[2 * p + 1], 0);
            a[4 + p] = interleave32(r[2 * p], r[2 * p + 1], 1);
        }
        for (int h = 0; h < 2; h++) /* c: 4 rows x runs 0-3 (c[4h + 0, 1]) / 4-7 (c[4h + 2, 3]) */
            for (int q = 0; q < 2; q++) {
                c[4 * h + q] = interleave64(a[4 * h], a[4 * h + 1], q);
                c[4 * h + 2 + q] = interleave64(a[4 * h + 2], a[4 * h + 3], q);
            }
        const __m512i sign = _mm512_set1_epi8((char)0x80);
        for (int h = 0; h < 2; h++)
            for (int q = 0; q < 2; q++)
                for (int half = 0; half < 2; half++) {
                    /* rows 8h + 4q + 2 half, +1: runs 0-3 then 4-7 of each */
                    __m512i two = _mm512_xor_si512(
                        interleave128(c[4 * h + q], c[4 * h + 2 + q], half), sign);
                    int row = 8 * h + 4 * q + 2 * half;
                    store_row_bf16(out + row * row_stride, _mm512_castsi512_si256(two),
                                   scales[row]);
                    store_row_bf16(out + (row + 1) * row_stride, _mm512_extracti64x4_epi64(two, 1),
                                   scales[row + 1]);
                }
        return;
    }
    __m512i r[4], a[4];
    for (int i = 0; i < 4; i++) r[i] = _mm512_loadu_si512((const void *)(block + 64 * i));
    for (int h = 0; h < 2; h++) { /* a[2h]: runs 0, 1 and a[2h + 1]: runs 2, 3 of rows 8h.. */
        a[2 * h] = interleave32(r[0], r[1], h);
        a[2 * h + 1] = interleave32(r[2], r[3], h);
    }
    for (int h = 0; h < 2; h++)
        for (int q = 0; q < 2; q++) {
            __m512i four = interleave64(a[2 * h], a[2 * h + 1], q); /* rows 8h + 4q .. +3 */
            for (int lane = 0; lane < 4; lane++) {
                int row = 8 * h + 4 * q + lane;
                __m128i bytes;
                switch (lane) { /* the extract needs a constant lane */
                    case 0: bytes = _mm512_extracti32x4_epi32(four, 0); break;
                    case 1: bytes = _mm512_extracti32x4_epi32(four, 1); break;
                    case 2: bytes = _mm512_extracti32x4_epi32(four, 2); break;
                    default: bytes = _mm512_extracti32x4_epi32(four, 3); break;
                }
                store_row_bf16(out + row * row_stride, unpack_q4(bytes), scales[row]);
            }
        }
}
#endif

static void groups_dequant_task(void *p, int64_t begin, int64_t end) {
    groups_args *a = (groups_args *)p;
    const int64_t k = a->K, nb = k / CG_BLOCK, runs = group_runs(a->bits);
    for (int64_t g = begin; g < end; g++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *block = a->values + (g * nb + b) * runs * 64;
            float scales[CG_GROUP];
#ifdef CG_GROUPS_512
            _mm512_storeu_ps(scales, group_scales(a, g, b, nb)); /* 16 at once */
#else
            for (int r = 0; r < CG_GROUP; r++)
                scales[r] = load_scale(
                    a->scales + ((g * nb + b) * CG_GROUP + r) * (a->scale_f32 ? 4 : 2),
                    a->scale_f32);
#endif
            int64_t first = g * CG_GROUP * k + b * CG_BLOCK; /* row 16g, column 32b */
#ifdef CG_GROUPS_512
            if (a->out_bf16) {
                group_block_bf16(a->bits, block, scales, (uint16_t *)a->out + first, k);
                continue;
            }
#endif
            for (int r = 0; r < CG_GROUP; r++) {
                float values[CG_BLOCK];
                for (int c = 0; c < runs; c++)
                    for (int j = 0; j < 4; j++) {
                        uint8_t v = block[c * 64 + r * 4 + j];
                        if (a->bits == 8) {
                            values[4 * c + j] = (float)((int)v - 128) * scales[r];
                        } else {
                            values[4 * c + j] = (float)((v & 0x0F) - 8) * scales[r];
                            values[16 + 4 * c + j] = (float)((v >> 4) - 8) * scales[r];
                        }
                    }
                if (a->out_bf16) {
                    uint16_t *o = (uint16_t *)a->out + first + r * k;
                    for (int j = 0; j < CG_BLOCK; j++) o[j] = f32_to_bf16(values[j]);
                } else {
                    memcpy((float *)a->out + first + r * k, values, sizeof(values));
                }
            }
        }
}

/* out (N, K) = the weight of row groups, as float32 or (out_bf16) bfloat16. */
int cg_dequantize_groups(cg_pool *pool, int bits, const void *values, const void *scales,
                         int scale_f32, void *out, int out_bf16, int64_t N, int64_t K) {
    if (K % CG_BLOCK || N % CG_GROUP || (bits != 8 && bits != 4)) return -1;
    groups_args a = {bits, (const uint8_t *)values, (const uint8_t *)scales, scale_f32, NULL,
                     NULL, NULL, NULL, 0, N, K, out, out_bf16};
    cg_prompt_run(pool, groups_dequant_task, &a, N / CG_GROUP);
    return 0;
}

