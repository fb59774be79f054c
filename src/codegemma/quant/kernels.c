/* Matrix-vector kernels for small batches (decode): y[m, o] = sum_k W[o, k] * x[m, k].
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
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CG_AVX2 1
#endif

/* AVX2 without AVX-512: bfloat16 weights are widened by unpacking them against zeros (one
 * instruction per 8 values), which interleaves the two 128-bit halves; x is permuted the same
 * way once per call, so each product still pairs a weight with its own activation. */
#if defined(CG_AVX2) && !defined(__AVX512F__)
#define CG_BF16_UNPACK 1
#endif

/* CPUs with AVX512-BF16: bfloat16 weights meet activations rounded to bfloat16 in one
 * pairwise dot-product instruction (`vdpbf16ps`, float32 sums), for every batch size alike. */
#if defined(CG_AVX2) && defined(__AVX512BF16__) && defined(__AVX512F__)
#define CG_BF16_DOT 1
#endif

#define CG_MAX_M 8
#define CG_BLOCK 32

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

/* ----------------------------------------------------------------------- row kernels */
/* Each computes out[m] = dot(row, x[m]) for m in [0, M). They are always inlined into a
 * switch over constant M, so the M accumulators live in registers. */

#define CG_INLINE static inline __attribute__((always_inline))

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
#elif defined(CG_BF16_UNPACK)
    /* x comes permuted in steps of 16 (see permute_for_unpack): one unpack of the weights
     * against zeros widens 8 bfloat16 values to float32, in the order x was given. The two
     * halves of a step go to two accumulators (two FMA chains per row, not one of twice the
     * length), summed at the end. */
    __m256 acc[4][CG_MAX_M], acc2[4][CG_MAX_M];
    const __m256i zero = _mm256_setzero_si256();
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) acc[r][m] = acc2[r][m] = _mm256_setzero_ps();
    for (; i + 16 <= k; i += 16) {
        __m256 lo[4], hi[4];
        for (int r = 0; r < R; r++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(w + r * row_stride + i));
            lo[r] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, raw));
            hi[r] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, raw));
        }
        for (int m = 0; m < M; m++) {
            __m256 x0 = _mm256_loadu_ps(x + m * k + i), x1 = _mm256_loadu_ps(x + m * k + i + 8);
            for (int r = 0; r < R; r++) {
                acc[r][m] = _mm256_fmadd_ps(lo[r], x0, acc[r][m]);
                acc2[r][m] = _mm256_fmadd_ps(hi[r], x1, acc2[r][m]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) out[r * CG_MAX_M + m] = hsum(_mm256_add_ps(acc[r][m], acc2[r][m]));
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

/* x (M, K) with each whole step of 16 values reordered as `_mm256_unpack{lo,hi}_epi16` lays
 * out 16 bfloat16 weights: lanes 0-3, 8-11, then 4-7, 12-15. The last K % 16 stay in place. */
static void permute_for_unpack(const float *x, int64_t M, int64_t k, float *out) {
    static const int order[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * k;
        float *o = out + m * k;
        int64_t i = 0;
        for (; i + 16 <= k; i += 16)
            for (int j = 0; j < 16; j++) o[i + j] = row[i + order[j]];
        for (; i < k; i++) o[i] = row[i];
    }
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
static void quantize_x(const float *x, int64_t M, int64_t k, int8_t *q, float *d, int32_t *sums,
                       int32_t offset) {
    int64_t nb = k / CG_BLOCK;
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < nb; b++) {
            int64_t at = m * k + b * CG_BLOCK;
            int32_t sum = quantize_block(x + at, q + at, d + m * nb + b);
            if (sums) sums[m * nb + b] = sum * offset;
        }
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

/* ------------------------------------------------------------------------- the pool */

typedef struct cg_pool cg_pool;
typedef void (*task_fn)(void *args, int64_t begin, int64_t end);

/* Decode calls the pool ~130 times per token, microseconds apart: a worker put to sleep on a
 * condition variable between calls would cost a wake-up each time, so waiting threads first
 * spin (some 0.1 ms) on the atomics below, then sleep. `generation` and `pending` are only
 * written with the lock held or atomically; the lock and conditions serve the sleepers. */
#define CG_SPINS 4000

static inline void cg_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

struct cg_pool {
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t start, done;
    uint64_t generation; /* bumped for every task (atomic) */
    int pending;         /* workers still running the current task (atomic) */
    int stopping;
    task_fn fn;
    void *args;
    int64_t rows;
    int64_t chunk;       /* rows handed out at a time */
    int64_t next;        /* first row not yet handed out (atomic) */
    int openmp;          /* prompt work on PyTorch's OpenMP threads (see prompt_run) */
};

/* Threads take chunks of rows until none are left: a thread slowed down (by another process,
 * or a busier core) simply takes fewer chunks. Each row's result never depends on who
 * computes it. */
static void take_chunks(cg_pool *pool, task_fn fn, void *args) {
    for (;;) {
        int64_t begin = __atomic_fetch_add(&pool->next, pool->chunk, __ATOMIC_RELAXED);
        if (begin >= pool->rows) return;
        int64_t end = begin + pool->chunk < pool->rows ? begin + pool->chunk : pool->rows;
        fn(args, begin, end);
    }
}

static void *worker_main(void *p) {
    cg_pool *pool = (cg_pool *)p; /* workers are alike: they take chunks until none are left */
    uint64_t seen = 0;
    for (;;) {
        for (int i = 0; i < CG_SPINS; i++) {
            if (__atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) != seen) break;
            cg_pause();
        }
        pthread_mutex_lock(&pool->lock);
        while (__atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) == seen && !pool->stopping)
            pthread_cond_wait(&pool->start, &pool->lock);
        if (pool->stopping) {
            pthread_mutex_unlock(&pool->lock);
            break;
        }
        seen = pool->generation;
        task_fn fn = pool->fn;
        void *args = pool->args;
        pthread_mutex_unlock(&pool->lock);
        take_chunks(pool, fn, args);
        if (__atomic_sub_fetch(&pool->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    return NULL;
}

cg_pool *cg_pool_create(int nthreads) {
    cg_pool *pool = (cg_pool *)calloc(1, sizeof(cg_pool));
    if (!pool) return NULL;
    pool->nthreads = nthreads < 1 ? 1 : nthreads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->start, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->threads = (pthread_t *)calloc((size_t)pool->nthreads, sizeof(pthread_t));
    for (int i = 1; i < pool->nthreads; i++)
        pthread_create(&pool->threads[i], NULL, worker_main, pool);
    return pool;
}

void cg_pool_destroy(cg_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->nthreads; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->start);
    pthread_cond_destroy(&pool->done);
    free(pool->threads);
    free(pool);
}

int cg_pool_threads(cg_pool *pool) { return pool->nthreads; }

/* Run fn over [0, rows) in chunks of `chunk` rows, shared by the caller and the workers. */
static void pool_dispatch(cg_pool *pool, task_fn fn, void *args, int64_t rows, int64_t chunk) {
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->args = args;
    pool->rows = rows;
    pool->chunk = chunk;
    __atomic_store_n(&pool->next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->pending, pool->nthreads - 1, __ATOMIC_RELEASE);
    __atomic_store_n(&pool->generation, pool->generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->lock);
    take_chunks(pool, fn, args);
    for (int i = 0; i < CG_SPINS && __atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0; i++)
        cg_pause();
    pthread_mutex_lock(&pool->lock);
    while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}

/* Run fn over [0, rows): about 8 chunks per thread, at least 16 rows each (small tasks run
 * on the caller alone). */
static void pool_run(cg_pool *pool, task_fn fn, void *args, int64_t rows) {
    if (pool->nthreads == 1 || rows < 64) {
        fn(args, 0, rows);
        return;
    }
    int64_t chunk = rows / (8 * (int64_t)pool->nthreads);
    pool_dispatch(pool, fn, args, rows, chunk < 16 ? 16 : chunk);
}

/* Run fn over [0, count) in one contiguous share per thread: for a few large items (the
 * attention heads of a decode step), where neighbours share data (a key/value head). */
void cg_pool_split(cg_pool *pool, task_fn fn, void *args, int64_t count) {
    if (pool->nthreads == 1 || count < 2) {
        fn(args, 0, count);
        return;
    }
    pool_dispatch(pool, fn, args, count, (count + pool->nthreads - 1) / pool->nthreads);
}

/* Widening weights for a prompt alternates with PyTorch's GEMMs, which run on PyTorch's
 * OpenMP threads; those keep spinning for a while after each GEMM, and would share the cores
 * with this pool's workers (measured: widening 1.5-3x slower, a 128-token int8 prompt ~8%).
 * Where the library was built with OpenMP and shares PyTorch's runtime (the engine checks),
 * such work runs on that same team instead. The split into chunks is the pool's; every row's
 * numbers are the same either way. */
static void prompt_run(cg_pool *pool, task_fn fn, void *args, int64_t rows) {
#ifdef _OPENMP
    if (pool->openmp && pool->nthreads > 1 && rows >= 64) {
        int64_t chunk = rows / (8 * (int64_t)pool->nthreads);
        if (chunk < 16) chunk = 16;
        int64_t chunks = (rows + chunk - 1) / chunk;
#pragma omp parallel for num_threads(pool->nthreads) schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++)
            fn(args, c * chunk, (c + 1) * chunk < rows ? (c + 1) * chunk : rows);
        return;
    }
#endif
    pool_run(pool, fn, args, rows);
}

void cg_pool_share_openmp(cg_pool *pool, int on) { pool->openmp = on; }

int cg_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
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
    const uint16_t *xb; /* x rounded to bfloat16 (CG_BF16_DOT only) */
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
        /* one weight row at a time streams fastest for one input row here too (rows 4 KB
         * apart read ~25% slower on AVX2, measured) */
        const int R = M == 2 ? 2 : 1;
#endif
        const int64_t stride = a->value_row / 2;
        float outs[4 * CG_MAX_M];
        for (int64_t o = begin; o < end; o += R) {
            const uint16_t *w = (const uint16_t *)(a->values + o * a->value_row);
            int rows = end - o < R ? (int)(end - o) : R;
            switch (rows) {
#ifdef CG_BF16_DOT
#define CG_ROWS(n) rows_bf16_dot(w, stride, n, a->xb, a->K, M, outs)
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
 * 0, or -1 on bad arguments. Block weights use x quantized to int8 blocks, bfloat16 weights on
 * CG_BF16_DOT CPUs x rounded to bfloat16, on CG_BF16_UNPACK CPUs x permuted: the caller gives
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
        quantize_x(x, M, K, q, d, NULL, 0);
        a.xq.q = q;
        a.xq.d = d;
    } else {
#ifdef CG_BF16_DOT
        uint16_t *xb = (uint16_t *)scratch;
        for (int64_t i = 0; i < M * K; i++) xb[i] = f32_to_bf16(x[i]);
        a.xb = xb;
#elif defined(CG_BF16_UNPACK)
        float *permuted = (float *)scratch;
        permute_for_unpack(x, M, K, permuted);
        a.x = permuted;
#endif
    }
    pool_run(pool, M > CG_MAX_M ? matvec_tiles_task : matvec_task, &a, N);
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
    prompt_run(pool, dequant_bf16_task, &a, N);
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
    prompt_run(pool, dequant_task, &a, N);
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
    prompt_run(pool, widen_task, &a, N);
    return 0;
}

/* -------------------------------------------------------------- interleaved row groups */
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

#define CG_GROUP 16

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
    int halves; /* a prompt's GEMM (AVX2: half-groups over all blocks), else a decode step */
} groups_args;

#if defined(CG_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define CG_ROW_GROUPS 1
#define CG_GROUPS_512 1 /* 16 rows in one register, vpdpbusd */

CG_INLINE __m512 group_scales(const groups_args *a, int64_t g, int64_t b, int64_t nb) {
    if (a->scale_f32) return _mm512_loadu_ps((const float *)a->scales + (g * nb + b) * CG_GROUP);
    return _mm512_cvtph_ps(
        _mm256_loadu_si256((const __m256i *)((const uint16_t *)a->scales +
                                             (g * nb + b) * CG_GROUP)));
}

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
#define CG_ROW_GROUPS 1

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

/* The same for int4: nibbles q + 8 times x, less the offset (xs: 8 x the block sum of x). */
CG_INLINE void half_block_i4(const uint8_t *w, const int8_t *x, int64_t k, const int32_t *xs,
                             int64_t nb, const int T, __m256i *d) {
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256i pairs[4];
    for (int m = 0; m < T; m++) pairs[m] = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + c * 64));
        __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        for (int m = 0; m < T; m++) {
            const int8_t *xm = x + m * k;
            pairs[m] = _mm256_add_epi16(
                pairs[m], _mm256_add_epi16(_mm256_maddubs_epi16(lo, broadcast4(xm + 4 * c)),
                                           _mm256_maddubs_epi16(hi, broadcast4(xm + 16 + 4 * c))));
        }
    }
    for (int m = 0; m < T; m++)
        d[m] = _mm256_sub_epi32(_mm256_madd_epi16(pairs[m], ones), _mm256_set1_epi32(xs[m * nb]));
}

/* acc[m] += the half's block b for rows m0 .. m0 + T - 1 of x. */
CG_INLINE void half_block(const groups_args *a, const uint8_t *w, int64_t g, int64_t b, int h,
                          int64_t m0, const int T, const int bits, __m256 *acc) {
    const int64_t k = a->K, nb = k / CG_BLOCK;
    const int8_t *x = a->xq + m0 * k + b * CG_BLOCK;
    __m256i d[4];
    if (bits == 8) half_block_i8(w + 32 * h, x, k, T, d);
    else half_block_i4(w + 32 * h, x, k, a->xs + m0 * nb + b, nb, T, d);
    __m256 scale = half_scales(a, g, b, nb, h);
    for (int m = 0; m < T; m++) {
        __m256 s = _mm256_mul_ps(scale, _mm256_set1_ps(a->xd[(m0 + m) * nb + b]));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[m]), s, acc[m]);
    }
}

/* y[m, 16g + 8h .. 16g + 8h + 7] for rows m0 .. m0 + T - 1 of x: one half of a group over
 * every block, the accumulators in registers throughout (the half's bytes stay in the cache
 * for the next pass: the other half, the next rows of x). */
CG_INLINE void half_rows(const groups_args *a, int64_t g, int h, int64_t m0, const int T,
                         const int bits) {
    const int64_t nb = a->K / CG_BLOCK, block_bytes = group_runs(bits) * 64;
    const uint8_t *w = a->values + g * nb * block_bytes;
    __m256 acc[4];
    for (int m = 0; m < T; m++) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += block_bytes) half_block(a, w, g, b, h, m0, T, bits, acc);
    for (int m = 0; m < T; m++)
        _mm256_storeu_ps(a->y + (m0 + m) * a->N + g * CG_GROUP + 8 * h, acc[m]);
}

/* y[m, 16g .. 16g+15] for groups [begin, end); M constant after inlining. Prompts (`halves`)
 * take one half-group at a time over every block (accumulators in registers: +45-50% on a
 * GEMM); decode steps take blocks outermost, both halves and every row of x per block (the
 * weights stream from memory once, in order: 25-40% faster for one to four rows). The
 * arithmetic of every row is the same either way. */
CG_INLINE void groups_rows(const groups_args *a, int64_t begin, int64_t end, const int M,
                           const int bits) {
    if (a->halves) {
        for (int64_t g = begin; g < end; g++)
            for (int h = 0; h < 2; h++) {
                if (M <= 4) {
                    half_rows(a, g, h, 0, M, bits);
                } else { /* rows of x 4 at a time: accumulators and weights fit the registers */
                    half_rows(a, g, h, 0, 4, bits);
                    half_rows(a, g, h, 4, M - 4, bits);
                }
            }
        return;
    }
    const int64_t nb = a->K / CG_BLOCK, block_bytes = group_runs(bits) * 64;
    for (int64_t g = begin; g < end; g++) {
        const uint8_t *w = a->values + g * nb * block_bytes;
        __m256 acc[2][CG_MAX_M];
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < M; m++) acc[h][m] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++, w += block_bytes)
            for (int h = 0; h < 2; h++) {
                if (M <= 4) {
                    half_block(a, w, g, b, h, 0, M, bits, acc[h]);
                } else {
                    half_block(a, w, g, b, h, 0, 4, bits, acc[h]);
                    half_block(a, w, g, b, h, 4, M - 4, bits, acc[h] + 4);
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
    quantize_x(x, M, K, q, d, sums, bits == 8 ? 128 : 8);
    groups_args a = {bits, (const uint8_t *)values, (const uint8_t *)scales, scale_f32, q, d,
                     sums, y, M, N, K, NULL, 0};
    if (M > CG_MAX_M) pool_run(pool, gemm_groups_task, &a, N / CG_GROUP);
    else pool_run(pool, portable ? groups_task_scalar : groups_task, &a, N / CG_GROUP);
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
    quantize_x(a->x + begin * a->K, end - begin, a->K, a->q + begin * a->K, a->d + begin * nb,
               a->sums + begin * nb, a->offset);
}

/* x (M, K) float32 -> q (M, K) int8, d (M, K/32) block scales, sums (M, K/32) block sums
 * times `offset` (128 for int8 weights, 8 for int4): what cg_matvec_groups computes first. */
int cg_quantize_rows(cg_pool *pool, const float *x, int64_t M, int64_t K, int32_t offset,
                     int8_t *q, float *d, int32_t *sums) {
    if (M < 1 || K % CG_BLOCK || (offset != 128 && offset != 8)) return -1;
    quantize_args a = {x, K, offset, q, d, sums};
    prompt_run(pool, quantize_task, &a, M);
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
    prompt_run(pool, gemm_groups_task, &a, N / CG_GROUP);
    return 0;
}

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
    prompt_run(pool, groups_dequant_task, &a, N / CG_GROUP);
    return 0;
}

/* ------------------------------------------------------------------- regrouping at load */
/* The byte permutation behind row groups is a transpose of words: word w of row 16g + r goes
 * to dst[g][w][r]. Values move as 4-byte words (int8: 8 per block, int4: 4 per block), scales
 * as one 2- or 4-byte word per block. Source rows are `row_stride` bytes apart and hold
 * `blocks` blocks `block_stride` bytes apart, each with `block_words` words (a GGUF block's
 * scale and values interleave, so blocks need not be adjacent). Every word is xor `flip`
 * (int8: q -> q + 128 in each byte). */
typedef struct {
    const uint8_t *src;
    int64_t row_stride, block_stride, block_words, blocks;
    int word;
    uint32_t flip;
    uint8_t *dst;
} group_rows_args;

static void group_rows_task(void *p, int64_t begin, int64_t end) {
    const group_rows_args *a = (const group_rows_args *)p;
    const int64_t width = a->blocks * a->block_words;
    for (int64_t g = begin; g < end; g++) {
        const uint8_t *rows = a->src + g * CG_GROUP * a->row_stride;
        uint8_t *out = a->dst + g * width * CG_GROUP * a->word;
        for (int64_t b = 0; b < a->blocks; b++)
            for (int64_t c = 0; c < a->block_words; c++) {
                const uint8_t *in = rows + b * a->block_stride + c * a->word;
                uint8_t *o = out + (b * a->block_words + c) * CG_GROUP * a->word;
                if (a->word == 4) {
                    for (int r = 0; r < CG_GROUP; r++) {
                        uint32_t v;
                        memcpy(&v, in + r * a->row_stride, 4);
                        v ^= a->flip;
                        memcpy(o + 4 * r, &v, 4);
                    }
                } else {
                    for (int r = 0; r < CG_GROUP; r++) {
                        uint16_t v;
                        memcpy(&v, in + r * a->row_stride, 2);
                        v ^= (uint16_t)a->flip;
                        memcpy(o + 2 * r, &v, 2);
                    }
                }
            }
    }
}

/* dst (rows / 16, blocks * block_words, 16) words = the source rows regrouped (see above). */
int cg_group_rows(cg_pool *pool, const void *src, int64_t row_stride, int64_t block_stride,
                  int64_t block_words, int64_t blocks, int word, uint32_t flip, void *dst,
                  int64_t rows) {
    if (rows % CG_GROUP || (word != 2 && word != 4)) return -1;
    group_rows_args a = {(const uint8_t *)src, row_stride, block_stride, block_words,
                         blocks, word, flip, (uint8_t *)dst};
    pool_run(pool, group_rows_task, &a, rows / CG_GROUP);
    return 0;
}

int cg_row_groups(void) {
#ifdef CG_ROW_GROUPS
    return 1;
#else
    return 0;
#endif
}

int cg_bf16_dot(void) {
#ifdef CG_BF16_DOT
    return 1;
#else
    return 0;
#endif
}

/* The instruction sets the library was built to use, for reports. */
const char *cg_isa(void) {
#if defined(CG_GROUPS_512) && defined(CG_BF16_DOT)
    return "AVX-512: VNNI byte dot products, BF16 dot products";
#elif defined(CG_GROUPS_512)
    return "AVX-512: VNNI byte dot products";
#elif defined(CG_AVX2)
    return "AVX2/FMA/F16C: vpmaddubsw byte products";
#else
    return "portable C";
#endif
}

int cg_has_avx2(void) {
#ifdef CG_AVX2
    return 1;
#else
    return 0;
#endif
}
