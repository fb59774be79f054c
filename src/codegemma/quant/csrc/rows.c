/* Kernels over weights stored in rows: matrix-vector products for small batches (decode): y[m, o] = sum_k W[o, k] * x[m, k].
 *
 * Weights stay in their storage format (bfloat16, int8 blocks or 4-bit blocks of 32) and are
 * widened to float32 in registers, so each weight byte is read from memory exactly once per
 * call whatever the batch size; decode is bound by memory bandwidth, not arithmetic.
 * Block layouts are described by byte strides, so the same code reads planar tensors and
 * GGUF's interleaved blocks (2-byte fp16 scale followed by the values) in place.
 *
 * Work is split over output rows (in chunks taken by whichever thread is free) between a
 * small persistent pool of threads owned by a `cg_pool` object (no global state; the Python
 * engine owns one pool). Every row's sum is computed in the same order whatever the batch
 * size, the chunking or the number of rows handled together, so a sequence gets the same
 * numbers alone or batched.
 */
#include <stdlib.h>

#include "cg_internal.h"

/* ----------------------------------------------------------------------- row kernels */
/* Each computes out[m] = dot(row, x[m]) for m in [0, M). They are always inlined into a
 * switch over constant M, so the M accumulators live in registers. */


#ifdef CG_BF16_DOT
/* R consecutive rows at once: each activation load serves R rows, which divides the loads
 * per dot product (batched decode is bound by them, not by memory). One accumulator per
 * (row, input row) over steps of 32, whatever R and M are: a row's sum never depends on the
 * batch it came in. */
CG_INLINE void rows_bf16_dot(const uint16_t *w, int64_t row_stride, const int R,
                             const uint16_t *xb, int64_t k, const int M, float *out) {
    int64_t i = 0;
    __m512 acc[4][CG_MAX_M];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) acc[r][m] = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
        __m512bh wr[4];
        for (int r = 0; r < R; r++)
            wr[r] = (__m512bh)_mm512_loadu_si512((const void *)(w + r * row_stride + i));
        for (int m = 0; m < M; m++) {
            __m512bh xm = (__m512bh)_mm512_loadu_si512((const void *)(xb + m * k + i));
            for (int r = 0; r < R; r++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wr[r], xm);
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) out[r * CG_MAX_M + m] = _mm512_reduce_add_ps(acc[r][m]);
    for (; i < k; i++)
        for (int r = 0; r < R; r++)
            for (int m = 0; m < M; m++)
                out[r * CG_MAX_M + m] +=
                    bf16_to_f32(w[r * row_stride + i]) * bf16_to_f32(xb[m * k + i]);
}
#endif

#ifdef CG_BF16_UNPACK
/* R consecutive bfloat16 rows (row_stride values apart) times x rounded to bfloat16, both
 * widened by one unpack against zeros per 8 values (AVX2). Every (row, input row) sums on four
 * FMA chains, 8 values each per step of 32 (two chains would leave one-row decode waiting on
 * FMA latency). x read as bfloat16 halves its bytes against float32 (measured on CodeGemma-2B
 * shapes: one input row of 16K inputs 1.1x faster, two to four input rows 1.2-1.4x). Several
 * input rows go two at a time over the weight row, which stays in the cache meanwhile. The
 * same arithmetic for every R and M. */
CG_INLINE __m256 widen_lo(__m256i v) {
    return _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), v));
}
CG_INLINE __m256 widen_hi(__m256i v) {
    return _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), v));
}

CG_INLINE void rows_bf16_unpack(const uint16_t *w, int64_t row_stride, const int R,
                                const uint16_t *xb, int64_t k, const int M, float *out) {
    if (R > 1 && M > 1) __builtin_unreachable(); /* callers: R > 1 only for one input row */
    for (int m0 = 0; m0 < M; m0 += 2) {
        const int T = M - m0 < 2 ? M - m0 : 2; /* input rows this pass */
        __m256 acc[8][4]; /* R * T <= 4 when it runs; the bound covers every instance */
        for (int p = 0; p < R * T; p++)
            for (int c = 0; c < 4; c++) acc[p][c] = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 32 <= k; j += 32)
            for (int r = 0; r < R; r++) {
                const uint16_t *wr = w + r * row_stride + j;
                __m256i a = _mm256_loadu_si256((const __m256i *)wr);
                __m256i b = _mm256_loadu_si256((const __m256i *)(wr + 16));
                __m256 part[4] = {widen_lo(a), widen_hi(a), widen_lo(b), widen_hi(b)};
                for (int t = 0; t < T; t++) {
                    const uint16_t *xt = xb + (m0 + t) * k + j;
                    __m256i xa = _mm256_loadu_si256((const __m256i *)xt);
                    __m256i xc = _mm256_loadu_si256((const __m256i *)(xt + 16));
                    __m256 *sums = acc[r * T + t];
                    sums[0] = _mm256_fmadd_ps(part[0], widen_lo(xa), sums[0]);
                    sums[1] = _mm256_fmadd_ps(part[1], widen_hi(xa), sums[1]);
                    sums[2] = _mm256_fmadd_ps(part[2], widen_lo(xc), sums[2]);
                    sums[3] = _mm256_fmadd_ps(part[3], widen_hi(xc), sums[3]);
                }
            }
        if (j + 16 <= k)
            for (int r = 0; r < R; r++) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(w + r * row_stride + j));
                for (int t = 0; t < T; t++) {
                    __m256i xa = _mm256_loadu_si256((const __m256i *)(xb + (m0 + t) * k + j));
                    __m256 *sums = acc[r * T + t];
                    sums[0] = _mm256_fmadd_ps(widen_lo(a), widen_lo(xa), sums[0]);
                    sums[1] = _mm256_fmadd_ps(widen_hi(a), widen_hi(xa), sums[1]);
                }
            }
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) {
                __m256 *sums = acc[r * T + t];
                out[r * CG_MAX_M + m0 + t] = hsum(
                    _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3])));
            }
    }
    for (int64_t i = k - k % 16; i < k; i++)
        for (int r = 0; r < R; r++) {
            float wv = bf16_to_f32(w[r * row_stride + i]);
            for (int m = 0; m < M; m++) out[r * CG_MAX_M + m] += wv * bf16_to_f32(xb[m * k + i]);
        }
}
#endif

/* R consecutive bfloat16 rows (row_stride values apart) times float32 x, widened in registers.
 * One accumulator per (row, input row), so a row's sum never depends on R or on the batch;
 * several rows at once keep independent FMA chains in flight even for one input row. */
CG_INLINE void rows_bf16(const uint16_t *w, int64_t row_stride, const int R, const float *x,
                         int64_t k, const int M, float *out) {
    int64_t i = 0;
#if defined(CG_AVX2) && defined(__AVX512F__)
    __m512 acc[4][CG_MAX_M];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) acc[r][m] = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
        __m512 lo[4], hi[4];
        for (int r = 0; r < R; r++) {
            const uint16_t *wr = w + r * row_stride + i;
            lo[r] = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)wr)), 16));
            hi[r] = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(wr + 16))), 16));
        }
        for (int m = 0; m < M; m++) {
            __m512 x0 = _mm512_loadu_ps(x + m * k + i), x1 = _mm512_loadu_ps(x + m * k + i + 16);
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(hi[r], x1, _mm512_fmadd_ps(lo[r], x0, acc[r][m]));
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) out[r * CG_MAX_M + m] = _mm512_reduce_add_ps(acc[r][m]);
#else
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) out[r * CG_MAX_M + m] = 0.0f;
#endif
    for (; i < k; i++)
        for (int r = 0; r < R; r++) {
            float wv = bf16_to_f32(w[r * row_stride + i]);
            for (int m = 0; m < M; m++) out[r * CG_MAX_M + m] += wv * x[m * k + i];
        }
}

typedef struct {
    const uint8_t *values; /* first value byte of block 0 of this row */
    const uint8_t *scales; /* first scale byte of block 0 of this row */
    int64_t value_stride;  /* bytes from one block's values to the next */
    int64_t scale_stride;  /* bytes from one block's scale to the next */
    int scale_f32;         /* 1: float32 scales, 0: float16 scales */
} block_row;

/* The activations, quantized like llama.cpp's Q8_0: int8 values with a scale per block of 32,
 * so a weight block's dot product is an integer multiply-add. */
typedef struct {
    const int8_t *q; /* (M, K) */
    const float *d;  /* (M, K / 32) */
} qx;

/* Signed 8-bit weights w (32 lanes) times quantized x block, as 8 int32 partial sums. */
#ifdef CG_AVX2
CG_INLINE __m256 dot_i8(__m256i w, __m256i xq) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    /* one instruction for the unsigned x signed byte products and their sums by four */
    __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w),
                                       _mm256_sign_epi8(xq, w));
    return _mm256_cvtepi32_ps(sums);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i prod = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
#endif
}
/* Block b of a weight row as 32 signed bytes, and its scale. */
CG_INLINE __m256i block_weights(const int kind, block_row r, int64_t b, __m256i low_mask,
                                __m256i eight, float *dw) {
    const uint8_t *q = r.values + b * r.value_stride;
    *dw = load_scale(r.scales + b * r.scale_stride, r.scale_f32);
    if (kind == 8) return _mm256_loadu_si256((const __m256i *)q);
    __m128i packed = _mm_loadu_si128((const __m128i *)q);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_sub_epi8(_mm256_and_si256(both, low_mask), eight); /* 0..15 then 16..31 */
}
#endif

CG_INLINE void row_blocks(const int kind, block_row r, qx x, int64_t k, const int M, float *out) {
    int64_t nb = k / CG_BLOCK;
#ifdef CG_AVX2
    __m256 acc[CG_MAX_M], acc2[CG_MAX_M];
    const __m256i low_mask = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    for (int m = 0; m < M; m++) acc[m] = acc2[m] = _mm256_setzero_ps();
    int64_t b = 0;
    { /* two blocks a step into two accumulator sets: shorter FMA chains (for every M alike,
       * so a row's sum never depends on the batch it came in) */
        for (; b + 2 <= nb; b += 2) {
            float dw0, dw1;
            __m256i w0 = block_weights(kind, r, b, low_mask, eight, &dw0);
            __m256i w1 = block_weights(kind, r, b + 1, low_mask, eight, &dw1);
            for (int m = 0; m < M; m++) {
                const int8_t *xm = x.q + m * k + b * CG_BLOCK;
                __m256 s0 = _mm256_set1_ps(dw0 * x.d[m * nb + b]);
                __m256 s1 = _mm256_set1_ps(dw1 * x.d[m * nb + b + 1]);
                acc[m] = _mm256_fmadd_ps(dot_i8(w0, _mm256_loadu_si256((const __m256i *)xm)), s0,
                                         acc[m]);
                acc2[m] = _mm256_fmadd_ps(
                    dot_i8(w1, _mm256_loadu_si256((const __m256i *)(xm + CG_BLOCK))), s1, acc2[m]);
            }
        }
    }
    for (; b < nb; b++) {
        float dw;
        __m256i w = block_weights(kind, r, b, low_mask, eight, &dw);
        for (int m = 0; m < M; m++) {
            __m256i xq = _mm256_loadu_si256((const __m256i *)(x.q + m * k + b * CG_BLOCK));
            __m256 scale = _mm256_set1_ps(dw * x.d[m * nb + b]);
            acc[m] = _mm256_fmadd_ps(dot_i8(w, xq), scale, acc[m]);
        }
    }
    for (int m = 0; m < M; m++) acc[m] = _mm256_add_ps(acc[m], acc2[m]);
    for (int m = 0; m < M; m++) out[m] = hsum(acc[m]);
#else
    for (int m = 0; m < M; m++) out[m] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q = r.values + b * r.value_stride;
        float dw = load_scale(r.scales + b * r.scale_stride, r.scale_f32);
        int8_t w[CG_BLOCK];
        for (int j = 0; j < CG_BLOCK; j++) {
            if (kind == 8) w[j] = ((const int8_t *)q)[j];
            else w[j] = (int8_t)((j < 16 ? (q[j] & 0x0F) : (q[j - 16] >> 4)) - 8);
        }
        for (int m = 0; m < M; m++) {
            const int8_t *xq = x.q + m * k + b * CG_BLOCK;
            int32_t s = 0;
            for (int j = 0; j < CG_BLOCK; j++) s += (int32_t)w[j] * xq[j];
            out[m] += (float)s * dw * x.d[m * nb + b];
        }
    }
#endif
}

/* Dequantize one row of blocks to float32 (used before a float32 GEMM for long inputs). */
static void dequant_row(int kind, block_row r, int64_t k, float *out) {
    int64_t nb = k / CG_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q = r.values + b * r.value_stride;
        float d = load_scale(r.scales + b * r.scale_stride, r.scale_f32);
        float *o = out + b * CG_BLOCK;
        if (kind == 8) {
            for (int j = 0; j < CG_BLOCK; j++) o[j] = (float)((const int8_t *)q)[j] * d;
        } else {
            for (int j = 0; j < 16; j++) {
                o[j] = (float)((q[j] & 0x0F) - 8) * d;
                o[j + 16] = (float)((q[j] >> 4) - 8) * d;
            }
        }
    }
}

/* ------------------------------------------------------------------ public entry points */

typedef struct {
    int kind; /* 16: bfloat16, 8: int8 blocks, 4: 4-bit blocks */
    const uint8_t *values, *scales;
    int64_t value_row, value_block, scale_row, scale_block;
    int scale_f32;
    const float *x;
    qx xq;
    float *y;
    int64_t M, N, K;
    const uint16_t *xb; /* x rounded to bfloat16 (CG_BF16_DOT and CG_BF16_UNPACK) */
} matvec_args;

CG_INLINE void matvec_rows(matvec_args *a, int64_t begin, int64_t end, const int M) {
    float out[CG_MAX_M];
    if (a->kind == 16) {
        /* as many rows at once as the accumulators and weights fit in registers */
#ifdef CG_BF16_DOT
        /* one input row: one weight row at a time streams fastest (4 rows 4 KB apart read
         * ~8% slower, measured); the arithmetic per row is the same for every R */
        const int R = M == 1 ? 1 : M <= 2 ? 4 : M <= 4 ? 3 : 2;
#elif defined(__AVX512F__)
        const int R = M <= 2 ? 4 : M <= 4 ? 2 : 1;
#else
        /* one input row: one weight row at a time streams fastest (two rows 4 KB apart read
         * ~30% slower on AVX2, measured), except past 8K inputs, where x fills the L1 cache
         * and four rows at a time read it a quarter as often (at 16K inputs 1.12x faster
         * than two rows, measured); the arithmetic per row is the same for every R */
        const int R = M == 1 && a->K > 8192 ? 4 : 1;
#endif
        const int64_t stride = a->value_row / 2;
        float outs[4 * CG_MAX_M];
        for (int64_t o = begin; o < end; o += R) {
            const uint16_t *w = (const uint16_t *)(a->values + o * a->value_row);
            int rows = end - o < R ? (int)(end - o) : R;
            switch (rows) {
#ifdef CG_BF16_DOT
#define CG_ROWS(n) rows_bf16_dot(w, stride, n, a->xb, a->K, M, outs)
#elif defined(CG_BF16_UNPACK)
#define CG_ROWS(n) rows_bf16_unpack(w, stride, n, a->xb, a->K, M, outs)
#else
#define CG_ROWS(n) rows_bf16(w, stride, n, a->x, a->K, M, outs)
#endif
                case 4: CG_ROWS(4); break;
                case 3: CG_ROWS(3); break;
                case 2: CG_ROWS(2); break;
                default: CG_ROWS(1); break;
#undef CG_ROWS
            }
            for (int r = 0; r < rows; r++)
                for (int m = 0; m < M; m++) a->y[m * a->N + o + r] = outs[r * CG_MAX_M + m];
        }
        return;
    }
    for (int64_t o = begin; o < end; o++) {
        block_row r = {a->values + o * a->value_row, a->scales + o * a->scale_row,
                       a->value_block, a->scale_block, a->scale_f32};
        if (a->kind == 8) row_blocks(8, r, a->xq, a->K, M, out);
        else row_blocks(4, r, a->xq, a->K, M, out);
        for (int m = 0; m < M; m++) a->y[m * a->N + o] = out[m];
    }
}

static void matvec_task(void *p, int64_t begin, int64_t end) {
    matvec_args *a = (matvec_args *)p;
    switch (a->M) { /* constant M lets the compiler keep accumulators in registers */
        case 1: matvec_rows(a, begin, end, 1); break;
        case 2: matvec_rows(a, begin, end, 2); break;
        case 3: matvec_rows(a, begin, end, 3); break;
        case 4: matvec_rows(a, begin, end, 4); break;
        case 5: matvec_rows(a, begin, end, 5); break;
        case 6: matvec_rows(a, begin, end, 6); break;
        case 7: matvec_rows(a, begin, end, 7); break;
        default: matvec_rows(a, begin, end, 8); break;
    }
}

/* More than 8 rows of x: a few weight rows at a time meet every 8 rows of x while they are in
 * the cache, so the weights are read once however many rows x has. Each tile is the same call
 * (same M) that 8 rows at a time would make: the same numbers per row. */
#define CG_TILE_WEIGHT_ROWS 16

static void matvec_tiles_task(void *p, int64_t begin, int64_t end) {
    const matvec_args *a = (const matvec_args *)p;
    const int64_t nb = a->K / CG_BLOCK;
    for (int64_t o = begin; o < end; o += CG_TILE_WEIGHT_ROWS) {
        int64_t stop = o + CG_TILE_WEIGHT_ROWS < end ? o + CG_TILE_WEIGHT_ROWS : end;
        for (int64_t m0 = 0; m0 < a->M; m0 += CG_MAX_M) {
            matvec_args tile = *a;
            tile.M = a->M - m0 < CG_MAX_M ? a->M - m0 : CG_MAX_M;
            tile.x = a->x + m0 * a->K;
            tile.y = a->y + m0 * a->N;
            if (a->xq.q) tile.xq.q = a->xq.q + m0 * a->K;
            if (a->xq.d) tile.xq.d = a->xq.d + m0 * nb;
            if (a->xb) tile.xb = a->xb + m0 * a->K;
            matvec_task(&tile, o, stop);
        }
    }
}

/* y (M, N) = x (M, K) @ W^T (any M; see matvec_tiles_task past 8). Strides in bytes; returns
 * 0, or -1 on bad arguments. Block weights use x quantized to int8 blocks, bfloat16 weights
 * on CG_BF16_DOT and CG_BF16_UNPACK CPUs x rounded to bfloat16: the caller gives
 * M * (4K + K/32*4) bytes of scratch. */
int cg_matvec(cg_pool *pool, int kind, const void *values, int64_t value_row,
              int64_t value_block, const void *scales, int64_t scale_row, int64_t scale_block,
              int scale_f32, const float *x, float *y, int64_t M, int64_t N, int64_t K,
              void *scratch) {
    if (M < 1 || (kind != 16 && K % CG_BLOCK)) return -1;
    matvec_args a = {kind, (const uint8_t *)values, (const uint8_t *)scales, value_row,
                     value_block, scale_row, scale_block, scale_f32, x, {NULL, NULL}, y, M, N, K,
                     NULL};
    if (kind != 16) {
        int8_t *q = (int8_t *)scratch;
        float *d = (float *)(q + M * K);
        cg_quantize_x(x, M, K, q, d, NULL, 0);
        a.xq.q = q;
        a.xq.d = d;
    } else {
#if defined(CG_BF16_DOT) || defined(CG_BF16_UNPACK)
        uint16_t *xb = (uint16_t *)scratch;
        cg_round_to_bf16(x, M * K, xb);
        a.xb = xb;
#endif
    }
    cg_pool_run(pool, M > CG_MAX_M ? matvec_tiles_task : matvec_task, &a, N);
    return 0;
}

static void dequant_task(void *p, int64_t begin, int64_t end) {
    matvec_args *a = (matvec_args *)p;
    for (int64_t o = begin; o < end; o++) {
        block_row r = {a->values + o * a->value_row, a->scales + o * a->scale_row,
                       a->value_block, a->scale_block, a->scale_f32};
        dequant_row(a->kind, r, a->K, a->y + o * a->K);
    }
}

#ifdef CG_AVX2
/* 8 floats to bfloat16, rounded to nearest even exactly as f32_to_bf16 does. */
CG_INLINE __m128i f32x8_to_bf16(__m256 f) {
    __m256i u = _mm256_castps_si256(f);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
    u = _mm256_srli_epi32(u, 16); /* each value now fits 16 bits: the pack cannot saturate */
    return _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}

CG_INLINE void store_bf16x8(uint16_t *out, __m128i bytes8, __m256 scale) {
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8)), scale);
    _mm_storeu_si128((__m128i *)out, f32x8_to_bf16(f));
}

/* One row of blocks to bfloat16, 32 values a step. */
static void dequant_row_bf16(int kind, block_row r, int64_t k, uint16_t *out) {
    const __m256i low_mask = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    for (int64_t b = 0; b < k / CG_BLOCK; b++) {
        float d;
        __m256i w = kind == 8 ? block_weights(8, r, b, low_mask, eight, &d)
                              : block_weights(4, r, b, low_mask, eight, &d);
        __m256 scale = _mm256_set1_ps(d);
        __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
        uint16_t *o = out + b * CG_BLOCK;
        store_bf16x8(o, lo, scale);
        store_bf16x8(o + 8, _mm_srli_si128(lo, 8), scale);
        store_bf16x8(o + 16, hi, scale);
        store_bf16x8(o + 24, _mm_srli_si128(hi, 8), scale);
    }
}
#endif

static void dequant_bf16_task(void *p, int64_t begin, int64_t end) {
    matvec_args *a = (matvec_args *)p;
    uint16_t *out = (uint16_t *)a->y;
#ifdef CG_AVX2
    for (int64_t o = begin; o < end; o++) {
        block_row r = {a->values + o * a->value_row, a->scales + o * a->scale_row,
                       a->value_block, a->scale_block, a->scale_f32};
        dequant_row_bf16(a->kind, r, a->K, out + o * a->K);
    }
#else
    float block[CG_BLOCK * 64];
    for (int64_t o = begin; o < end; o++) {
        for (int64_t start = 0; start < a->K; start += CG_BLOCK * 64) {
            int64_t width = a->K - start < CG_BLOCK * 64 ? a->K - start : CG_BLOCK * 64;
            int64_t first = start / CG_BLOCK;
            block_row r = {a->values + o * a->value_row + first * a->value_block,
                           a->scales + o * a->scale_row + first * a->scale_block,
                           a->value_block, a->scale_block, a->scale_f32};
            dequant_row(a->kind, r, width, block);
            uint16_t *row = out + o * a->K + start;
            for (int64_t j = 0; j < width; j++) row[j] = f32_to_bf16(block[j]);
        }
    }
#endif
}

/* out (N, K) bfloat16 = the dequantized weight (for bf16 GEMMs on CPUs with bf16 units). */
int cg_dequantize_bf16(cg_pool *pool, int kind, const void *values, int64_t value_row,
                       int64_t value_block, const void *scales, int64_t scale_row,
                       int64_t scale_block, int scale_f32, void *out, int64_t N, int64_t K) {
    if ((kind != 8 && kind != 4) || K % CG_BLOCK) return -1;
    matvec_args a = {kind, (const uint8_t *)values, (const uint8_t *)scales, value_row,
                     value_block, scale_row, scale_block, scale_f32, NULL, {NULL, NULL},
                     (float *)out, 0, N, K};
    cg_prompt_run(pool, dequant_bf16_task, &a, N);
    return 0;
}

/* out (N, K) float32 = the dequantized weight, rows split between threads. */
int cg_dequantize(cg_pool *pool, int kind, const void *values, int64_t value_row,
                  int64_t value_block, const void *scales, int64_t scale_row,
                  int64_t scale_block, int scale_f32, float *out, int64_t N, int64_t K) {
    if ((kind != 8 && kind != 4) || K % CG_BLOCK) return -1;
    matvec_args a = {kind, (const uint8_t *)values, (const uint8_t *)scales, value_row,
                     value_block, scale_row, scale_block, scale_f32, NULL, {NULL, NULL}, out,
                     0, N, K};
    cg_prompt_run(pool, dequant_task, &a, N);
    return 0;
}

static void widen_task(void *p, int64_t begin, int64_t end) {
    matvec_args *a = (matvec_args *)p;
    for (int64_t o = begin; o < end; o++) {
        const uint16_t *w = (const uint16_t *)(a->values + o * a->value_row);
        float *out = a->y + o * a->K;
        for (int64_t i = 0; i < a->K; i++) out[i] = bf16_to_f32(w[i]);
    }
}

/* out (N, K) float32 = a bfloat16 weight with rows `value_row` bytes apart. */
int cg_widen_bf16(cg_pool *pool, const void *values, int64_t value_row, float *out, int64_t N,
                  int64_t K) {
    matvec_args a = {16, (const uint8_t *)values, NULL, value_row, 0, 0, 0, 0, NULL,
                     {NULL, NULL}, out, 0, N, K};
    cg_prompt_run(pool, widen_task, &a, N);
    return 0;
}
