/* Row groups, shared by groups.c and groups_dequant.c (internal). */
#ifndef CG_GROUPS_H
#define CG_GROUPS_H

#include "cg_internal.h"

/* Quantized weights regrouped at load (codegemma/quant/row_groups.py) so one pass serves 16
 * output rows at once: for group g (rows 16g..16g+15) and block b, `runs` runs of 64 bytes,
 * run c holding 4 consecutive bytes of each of the 16 rows (row r at bytes 4r..4r+3):
 *   int8: 8 runs; run c holds elements 4c..4c+3 as unsigned bytes q + 128;
 *   int4: 4 runs; run c holds elements 4c..4c+3 in the low nibbles and 16+4c..16+4c+3 in the
 *         high nibbles, as unsigned q + 8 (the bytes of Q4_0's block, regrouped).
 * Scales: (groups, blocks, 16) float16 or float32. One unsigned-by-signed byte dot product
 * (`vpdpbusd`) then covers 16 rows x 4 elements; the offset (128 or 8) is taken back once per
 * block from the sum of the activations' block. 16 row sums come out in one register, and one
 * vector of 16 scales multiplies them: no per-row reductions, no per-block scalar work. */


static inline int group_runs(int bits) { return bits == 8 ? 8 : 4; }

typedef struct {
    int bits;
    const uint8_t *values;
    const uint8_t *scales;
    int scale_f32;
    const int8_t *xq;
    const float *xd;
    const int32_t *xs; /* offset * block sum of x, (M, nb) */
    float *y;
    int64_t M, N, K;
    void *out; /* dequantization target (N, K) */
    int out_bf16;
    int halves; /* a prompt's GEMM (AVX2, int8: half-groups over all blocks), else a decode step */
} groups_args;

#ifdef CG_GROUPS_512
CG_INLINE __m512 group_scales(const groups_args *a, int64_t g, int64_t b, int64_t nb) {
    if (a->scale_f32) return _mm512_loadu_ps((const float *)a->scales + (g * nb + b) * CG_GROUP);
    return _mm512_cvtph_ps(
        _mm256_loadu_si256((const __m256i *)((const uint16_t *)a->scales +
                                             (g * nb + b) * CG_GROUP)));
}

#endif

#endif
