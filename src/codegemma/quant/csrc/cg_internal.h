/* What the kernel sources share and Python never sees: the instruction sets a build uses,
 * scalar conversions, and the pool's and the activations' internal entry points. */
#ifndef CG_INTERNAL_H
#define CG_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "cg_kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CG_AVX2 1
#endif

/* AVX2 without AVX-512: bfloat16 weights and activations rounded to bfloat16 are both widened
 * by unpacking them against zeros (one instruction per 8 values); unpacking interleaves the
 * two 128-bit halves alike for both, so each product pairs a weight with its own activation. */
#if defined(CG_AVX2) && !defined(__AVX512F__)
#define CG_BF16_UNPACK 1
#endif

/* CPUs with AVX512-BF16: bfloat16 weights meet activations rounded to bfloat16 in one
 * pairwise dot-product instruction (`vdpbf16ps`, float32 sums), for every batch size alike. */
#if defined(CG_AVX2) && defined(__AVX512BF16__) && defined(__AVX512F__)
#define CG_BF16_DOT 1
#endif


/* Row groups: 16 rows in one AVX-512 register and VNNI byte dot products, or two halves of 8
 * rows in AVX2 registers (groups.c); other CPUs run the portable loops. */
#if defined(CG_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define CG_GROUPS_512 1
#endif
#ifdef CG_AVX2
#define CG_ROW_GROUPS 1
#endif

#define CG_MAX_M 8  /* rows of x one pass of a rows kernel takes (more go in tiles) */
#define CG_BLOCK 32 /* values per quantization block */
#define CG_GROUP 16 /* rows per row group */
#define CG_INLINE static inline __attribute__((always_inline))
#define CG_HIDDEN __attribute__((visibility("hidden")))

/* ----------------------------------------------------------------------------- scalars */

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; inputs are finite */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

static inline float f16_to_f32(uint16_t h) {
#ifdef CG_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline float load_scale(const uint8_t *p, int scale_f32) {
    if (scale_f32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_to_f32(h);
}

#ifdef CG_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 bf16x8_to_f32(__m128i v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
#endif

/* The pool (pool.c): fn over [0, rows) in chunks shared by the threads; prompt work on
 * PyTorch's OpenMP team where the library shares it. */
CG_HIDDEN void cg_pool_run(cg_pool *pool, cg_task fn, void *args, int64_t rows);
CG_HIDDEN void cg_prompt_run(cg_pool *pool, cg_task fn, void *args, int64_t rows);

/* Activations (activations.c): int8 blocks of 32 with scales (and block sums times `offset`
 * when `sums` is given), and x rounded to bfloat16 for bfloat16 weights. */
CG_HIDDEN void cg_quantize_x(const float *x, int64_t M, int64_t k, int8_t *q, float *d,
                             int32_t *sums, int32_t offset);
CG_HIDDEN void cg_round_to_bf16(const float *x, int64_t n, uint16_t *out);

#endif
