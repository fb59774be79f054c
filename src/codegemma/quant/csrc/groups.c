/* Quantized weights in row groups (layout: cg_groups.h): matrix-vector products for decode
 * steps and the byte GEMM for prompts, on AVX-512 VNNI, AVX2 or portable C, every one giving
 * each row the numbers it gets alone. */
#include "cg_groups.h"

#ifdef CG_GROUPS_512
/* y[m, 16g .. 16g+15] for groups [begin, end); M constant after inlining. */
CG_INLINE void groups_rows(const groups_args *a, int64_t begin, int64_t end, const int M,
                           const int bits) {
    const int64_t k = a->K, nb = k / CG_BLOCK, runs = group_runs(bits);
    const int64_t block_bytes = runs * 64;
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t g = begin; g < end; g++) {
        const uint8_t *w = a->values + g * nb * block_bytes;
        __m512 acc[CG_MAX_M];
        for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++, w += block_bytes) {
            __m512 scale = group_scales(a, g, b, nb);
            /* two independent integer chains per row of x (four when alone) */
            __m512i d0[CG_MAX_M], d1[CG_MAX_M];
            for (int m = 0; m < M; m++) d0[m] = d1[m] = _mm512_setzero_si512();
            if (bits == 8) {
                for (int c = 0; c < 8; c += 2) {
                    __m512i v0 = _mm512_loadu_si512((const void *)(w + c * 64));
                    __m512i v1 = _mm512_loadu_si512((const void *)(w + c * 64 + 64));
                    for (int m = 0; m < M; m++) {
                        const int32_t *xm = (const int32_t *)(a->xq + m * k + b * CG_BLOCK);
                        d0[m] = _mm512_dpbusd_epi32(d0[m], v0, _mm512_set1_epi32(xm[c]));
                        d1[m] = _mm512_dpbusd_epi32(d1[m], v1, _mm512_set1_epi32(xm[c + 1]));
                    }
                }
            } else {
                for (int c = 0; c < 4; c++) {
                    __m512i v = _mm512_loadu_si512((const void *)(w + c * 64));
                    __m512i lo = _mm512_and_si512(v, low);
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    for (int m = 0; m < M; m++) {
                        const int32_t *xm = (const int32_t *)(a->xq + m * k + b * CG_BLOCK);
                        d0[m] = _mm512_dpbusd_epi32(d0[m], lo, _mm512_set1_epi32(xm[c]));
                        d1[m] = _mm512_dpbusd_epi32(d1[m], hi, _mm512_set1_epi32(xm[c + 4]));
                    }
                }
            }
            for (int m = 0; m < M; m++) {
                __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(d0[m], d1[m]),
                                               _mm512_set1_epi32(a->xs[m * nb + b]));
                __m512 s = _mm512_mul_ps(scale, _mm512_set1_ps(a->xd[m * nb + b]));
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, acc[m]);
            }
        }
        for (int m = 0; m < M; m++) _mm512_storeu_ps(a->y + m * a->N + g * CG_GROUP, acc[m]);
    }
}
#elif defined(CG_AVX2)
/* AVX2 without VNNI: the same layout and the same numbers. A group's 16 rows are two halves of
 * 8 rows (32 bytes of each 64-byte run). Byte products go through `vpmaddubsw` (unsigned x
 * signed bytes, pairs summed in 16 bits) and `vpmaddwd` (pairs of those in 32 bits), which
 * saturates where two products of 255 x 127 meet: int8 weights are therefore taken back to
 * signed bytes and multiplied by magnitude (|q|, at most 128) against x with q's sign, as
 * llama.cpp does; int4 nibbles (0..15) meet x directly, and eight such products per 16-bit
 * lane stay below 2^15. Either way each (row, block) integer sum equals the VNNI code's after
 * its offset correction, and the float work per row (sum x scale x scale of x, one FMA per
 * block, blocks in order) is the VNNI code's lane by lane: the same bits on both CPU classes. */

/* The 8 scales of half h of (group g, block b). */
CG_INLINE __m256 half_scales(const groups_args *a, int64_t g, int64_t b, int64_t nb, int h) {
    const int64_t at = (g * nb + b) * CG_GROUP + 8 * h;
    if (a->scale_f32) return _mm256_loadu_ps((const float *)a->scales + at);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)a->scales + at)));
}

CG_INLINE __m256i broadcast4(const int8_t *x) { /* 4 bytes of x in every 32-bit lane */
    int32_t word;
    memcpy(&word, x, 4);
    return _mm256_set1_epi32(word);
}

/* d[m] = the 8 rows' exact integer dot products with row m of x (k bytes apart) over one block,
 * for T rows of x; w: the half's first run (runs 64 bytes apart). */
CG_INLINE void half_block_i8(const uint8_t *w, const int8_t *x, int64_t k, const int T,
                             __m256i *d) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int m = 0; m < T; m++) d[m] = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        __m256i q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + c * 64)), flip);
        __m256i magnitude = _mm256_sign_epi8(q, q); /* |q|; -128 reads as 128 unsigned */
        for (int m = 0; m < T; m++) {
            __m256i signed_x = _mm256_sign_epi8(broadcast4(x + m * k + 4 * c), q);
            __m256i pairs = _mm256_maddubs_epi16(magnitude, signed_x);
            d[m] = _mm256_add_epi32(d[m], _mm256_madd_epi16(pairs, ones));
        }
    }
}

/* acc[m] += the half's block b for rows m0 .. m0 + T - 1 of x (int8 weights). */
CG_INLINE void half_block(const groups_args *a, const uint8_t *w, int64_t g, int64_t b, int h,
                          int64_t m0, const int T, __m256 *acc) {
    const int64_t k = a->K, nb = k / CG_BLOCK;
    const int8_t *x = a->xq + m0 * k + b * CG_BLOCK;
    __m256i d[4];
    half_block_i8(w + 32 * h, x, k, T, d);
    __m256 scale = half_scales(a, g, b, nb, h);
    for (int m = 0; m < T; m++) {
        __m256 s = _mm256_mul_ps(scale, _mm256_set1_ps(a->xd[(m0 + m) * nb + b]));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[m]), s, acc[m]);
    }
}

/* y[m, 16g + 8h .. 16g + 8h + 7] for rows m0 .. m0 + T - 1 of x: one half of a group over
 * every block, the accumulators in registers throughout (the half's bytes stay in the cache
 * for the next pass: the other half, the next rows of x). */
CG_INLINE void half_rows(const groups_args *a, int64_t g, int h, int64_t m0, const int T) {
    const int64_t nb = a->K / CG_BLOCK, block_bytes = group_runs(8) * 64;
    const uint8_t *w = a->values + g * nb * block_bytes;
    __m256 acc[4];
    for (int m = 0; m < T; m++) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += block_bytes) half_block(a, w, g, b, h, m0, T, acc);
    for (int m = 0; m < T; m++)
        _mm256_storeu_ps(a->y + (m0 + m) * a->N + g * CG_GROUP + 8 * h, acc[m]);
}

/* int4: y[m0 .. m0 + T - 1, 16g .. 16g + 15] (T <= 4), both halves of the group per block:
 * nibbles q + 8 times x, less the offset (xs: 8 x the block sum of x). Each 4 bytes of x are
 * broadcast once for all 16 weight rows, and each 16-bit sum is added to in program order: the
 * empty asm keeps GCC from regrouping the additions into a tree whose temporaries spill to the
 * stack (integer sums are exact in any order; only speed differs). Against the half-group
 * loops this replaces (CodeGemma-2B shapes, AVX2 build, 2 threads): a 512-row GEMM 1.4-1.8x,
 * a decode matvec 1.2x (one row) to 1.5x (four rows). */
CG_INLINE void group_rows_i4(const groups_args *a, int64_t g, int64_t m0, const int T) {
    const int64_t k = a->K, nb = k / CG_BLOCK, block_bytes = group_runs(4) * 64;
    const uint8_t *w = a->values + g * nb * block_bytes;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[2][4];
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < T; m++) acc[h][m] = _mm256_setzero_ps();
    const int8_t *x = a->xq + m0 * k;
    for (int64_t b = 0; b < nb; b++, w += block_bytes, x += CG_BLOCK) {
        __m256i p[2][4]; /* [half][row of x]: 16-bit sums, 8 products each at most */
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < T; m++) p[h][m] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + c * 64));
            __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + c * 64 + 32));
            __m256i lo0 = _mm256_and_si256(v0, low);
            __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
            __m256i lo1 = _mm256_and_si256(v1, low);
            __m256i hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
            for (int m = 0; m < T; m++) {
                __m256i xl = broadcast4(x + m * k + 4 * c), xh = broadcast4(x + m * k + 16 + 4 * c);
                p[0][m] = _mm256_add_epi16(p[0][m], _mm256_maddubs_epi16(lo0, xl));
                p[1][m] = _mm256_add_epi16(p[1][m], _mm256_maddubs_epi16(lo1, xl));
                p[0][m] = _mm256_add_epi16(p[0][m], _mm256_maddubs_epi16(hi0, xh));
                p[1][m] = _mm256_add_epi16(p[1][m], _mm256_maddubs_epi16(hi1, xh));
                __asm__("" : "+x"(p[0][m]), "+x"(p[1][m]));
            }
        }
        for (int h = 0; h < 2; h++) {
            __m256 scale = half_scales(a, g, b, nb, h);
            for (int m = 0; m < T; m++) {
                __m256i d = _mm256_sub_epi32(_mm256_madd_epi16(p[h][m], ones),
                                             _mm256_set1_epi32(a->xs[(m0 + m) * nb + b]));
                __m256 s = _mm256_mul_ps(scale, _mm256_set1_ps(a->xd[(m0 + m) * nb + b]));
                acc[h][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[h][m]);
            }
        }
    }
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < T; m++)
            _mm256_storeu_ps(a->y + (m0 + m) * a->N + g * CG_GROUP + 8 * h, acc[h][m]);
}

/* y[m, 16g .. 16g+15] for groups [begin, end); M constant after inlining. int4 takes whole
 * groups, four rows of x at a time. int8: prompts (`halves`) take one half-group at a time
 * over every block (accumulators in registers: +45-50% on a GEMM); decode steps take blocks
 * outermost, both halves and every row of x per block (the weights stream from memory once,
 * in order: 25-40% faster for one to four rows). The arithmetic of every row is the same
 * either way. */
CG_INLINE void groups_rows(const groups_args *a, int64_t begin, int64_t end, const int M,
                           const int bits) {
    if (bits == 4) {
        for (int64_t g = begin; g < end; g++) {
            if (M <= 4) {
                group_rows_i4(a, g, 0, M);
            } else {
                group_rows_i4(a, g, 0, 4);
                group_rows_i4(a, g, 4, M - 4);
            }
        }
        return;
    }
    if (a->halves) {
        for (int64_t g = begin; g < end; g++)
            for (int h = 0; h < 2; h++) {
                if (M <= 4) {
                    half_rows(a, g, h, 0, M);
                } else { /* rows of x 4 at a time: accumulators and weights fit the registers */
                    half_rows(a, g, h, 0, 4);
                    half_rows(a, g, h, 4, M - 4);
                }
            }
        return;
    }
    const int64_t nb = a->K / CG_BLOCK, block_bytes = group_runs(8) * 64;
    for (int64_t g = begin; g < end; g++) {
        const uint8_t *w = a->values + g * nb * block_bytes;
        __m256 acc[2][CG_MAX_M];
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < M; m++) acc[h][m] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++, w += block_bytes)
            for (int h = 0; h < 2; h++) {
                if (M <= 4) {
                    half_block(a, w, g, b, h, 0, M, acc[h]);
                } else {
                    half_block(a, w, g, b, h, 0, 4, acc[h]);
                    half_block(a, w, g, b, h, 4, M - 4, acc[h] + 4);
                }
            }
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < M; m++)
                _mm256_storeu_ps(a->y + m * a->N + g * CG_GROUP + 8 * h, acc[h][m]);
    }
}
#endif

/* Portable form of the same arithmetic (CPUs without VNNI; tests compare the two). */
static void groups_rows_scalar(const groups_args *a, int64_t begin, int64_t end) {
    const int64_t k = a->K, nb = k / CG_BLOCK, runs = group_runs(a->bits);
    for (int64_t g = begin; g < end; g++)
        for (int64_t m = 0; m < a->M; m++)
            for (int r = 0; r < CG_GROUP; r++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *w = a->values + (g * nb + b) * runs * 64 + r * 4;
                    const int8_t *x = a->xq + m * k + b * CG_BLOCK;
                    int32_t s = 0;
                    for (int c = 0; c < runs; c++)
                        for (int j = 0; j < 4; j++) {
                            uint8_t v = w[c * 64 + j];
                            if (a->bits == 8) s += (int32_t)v * x[4 * c + j];
                            else s += (v & 0x0F) * x[4 * c + j] + (v >> 4) * x[16 + 4 * c + j];
                        }
                    s -= a->xs[m * nb + b];
                    const uint8_t *sp =
                        a->scales + ((g * nb + b) * CG_GROUP + r) * (a->scale_f32 ? 4 : 2);
                    acc += (float)s * load_scale(sp, a->scale_f32) * a->xd[m * nb + b];
                }
                a->y[m * a->N + g * CG_GROUP + r] = acc;
            }
}

static void groups_task(void *p, int64_t begin, int64_t end) {
    groups_args *a = (groups_args *)p;
#ifdef CG_ROW_GROUPS
#define CG_GROUPS_CASE(mm)                                                 \
    case mm:                                                               \
        if (a->bits == 8) groups_rows(a, begin, end, mm, 8);               \
        else groups_rows(a, begin, end, mm, 4);                            \
        break;
    switch (a->M) {
        CG_GROUPS_CASE(1) CG_GROUPS_CASE(2) CG_GROUPS_CASE(3) CG_GROUPS_CASE(4)
        CG_GROUPS_CASE(5) CG_GROUPS_CASE(6) CG_GROUPS_CASE(7) default:
            if (a->bits == 8) groups_rows(a, begin, end, 8, 8);
            else groups_rows(a, begin, end, 8, 4);
    }
#undef CG_GROUPS_CASE
#else
    groups_rows_scalar(a, begin, end);
#endif
}

static void groups_task_scalar(void *p, int64_t begin, int64_t end) {
    groups_rows_scalar((groups_args *)p, begin, end);
}

static void gemm_groups_task(void *p, int64_t begin, int64_t end);

/* y (M, N) = x (M, K) @ W^T for W in row groups; more than 8 rows of x go 8 at a time past
 * each group of weight rows (cg_gemm_groups' loop: the same numbers per row, the weights read
 * once). `portable` (M <= 8 only) forces the scalar code. Scratch: M * (K + K/32 * 8) bytes.
 * Returns 0, or -1 on bad arguments. */
int cg_matvec_groups(cg_pool *pool, int bits, const void *values, const void *scales,
                     int scale_f32, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                     void *scratch, int portable) {
    if (M < 1 || (portable && M > CG_MAX_M) || K % CG_BLOCK || N % CG_GROUP ||
        (bits != 8 && bits != 4))
        return -1;
    int64_t nb = K / CG_BLOCK;
    int8_t *q = (int8_t *)scratch;
    float *d = (float *)(q + M * K);
    int32_t *sums = (int32_t *)(d + M * nb);
    cg_quantize_x(x, M, K, q, d, sums, bits == 8 ? 128 : 8);
    groups_args a = {bits, (const uint8_t *)values, (const uint8_t *)scales, scale_f32, q, d,
                     sums, y, M, N, K, NULL, 0};
    if (M > CG_MAX_M) cg_pool_run(pool, gemm_groups_task, &a, N / CG_GROUP);
    else cg_pool_run(pool, portable ? groups_task_scalar : groups_task, &a, N / CG_GROUP);
    return 0;
}

/* ------------------------------------------------------ prompts: row groups as a GEMM */
/* Many rows of x (a prompt's tokens) against a weight in row groups, with no widened copy of
 * the weight: x is quantized to int8 blocks once, then each group of 16 weight rows is read
 * from memory once and meets every row of x, 8 at a time, while it stays in the cache. The
 * byte dot products do twice the multiply-adds per instruction of bfloat16 ones. Every row of
 * y gets exactly the numbers cg_matvec_groups gives that row on its own. */

typedef struct {
    const float *x;
    int64_t K;
    int32_t offset;
    int8_t *q;
    float *d;
    int32_t *sums;
} quantize_args;

static void quantize_task(void *p, int64_t begin, int64_t end) {
    const quantize_args *a = (const quantize_args *)p;
    const int64_t nb = a->K / CG_BLOCK;
    cg_quantize_x(a->x + begin * a->K, end - begin, a->K, a->q + begin * a->K, a->d + begin * nb,
               a->sums + begin * nb, a->offset);
}

/* x (M, K) float32 -> q (M, K) int8, d (M, K/32) block scales, sums (M, K/32) block sums
 * times `offset` (128 for int8 weights, 8 for int4): what cg_matvec_groups computes first. */
int cg_quantize_rows(cg_pool *pool, const float *x, int64_t M, int64_t K, int32_t offset,
                     int8_t *q, float *d, int32_t *sums) {
    if (M < 1 || K % CG_BLOCK || (offset != 128 && offset != 8)) return -1;
    quantize_args a = {x, K, offset, q, d, sums};
    cg_prompt_run(pool, quantize_task, &a, M);
    return 0;
}

static void gemm_groups_task(void *p, int64_t begin, int64_t end) {
    const groups_args *a = (const groups_args *)p;
    const int64_t nb = a->K / CG_BLOCK;
    for (int64_t g = begin; g < end; g++)
        for (int64_t m0 = 0; m0 < a->M; m0 += CG_MAX_M) {
            groups_args tile = *a;
            tile.M = a->M - m0 < CG_MAX_M ? a->M - m0 : CG_MAX_M;
            tile.xq = a->xq + m0 * a->K;
            tile.xd = a->xd + m0 * nb;
            tile.xs = a->xs + m0 * nb;
            tile.y = a->y + m0 * a->N; /* N: y's row stride */
            groups_task(&tile, g, g + 1);
        }
}

/* y (M, N) = x @ W^T for x quantized by cg_quantize_rows (with this weight's offset) and W in
 * row groups (N rows); y's rows lie `y_stride` floats apart. Returns 0, or -1 on bad
 * arguments. */
int cg_gemm_groups(cg_pool *pool, int bits, const void *values, const void *scales,
                   int scale_f32, const int8_t *q, const float *d, const int32_t *sums,
                   float *y, int64_t y_stride, int64_t M, int64_t N, int64_t K) {
    if (M < 1 || K % CG_BLOCK || N % CG_GROUP || y_stride < N || (bits != 8 && bits != 4))
        return -1;
    groups_args a = {bits, (const uint8_t *)values, (const uint8_t *)scales, scale_f32, q, d,
                     sums, y, M, y_stride, K, NULL, 0, 1};
    cg_prompt_run(pool, gemm_groups_task, &a, N / CG_GROUP);
    return 0;
}

