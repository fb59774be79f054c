/* Matrix-vector kernels for small batches (decode): y[m, o] = sum_k W[o, k] * x[m, k].
 *
 * Weights stay in their storage format (bfloat16, int8 blocks or 4-bit blocks of 32) and are
 * widened to float32 in registers, so each weight byte is read from memory exactly once per
 * call whatever the batch size; decode is bound by memory bandwidth, not arithmetic.
 * Block layouts are described by byte strides, so the same code reads planar tensors and
 * GGUF's interleaved blocks (2-byte fp16 scale followed by the values) in place.
 *
 * Work is split over output rows between a small persistent pool of threads owned by a
 * `cg_pool` object (no global state; the Python engine owns one pool).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CG_AVX2 1
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
/* out[m] = dot(w, xb[m]) with xb the activations already rounded to bfloat16. */
CG_INLINE void row_bf16_dot(const uint16_t *w, const uint16_t *xb, int64_t k, const int M,
                            float *out) {
    int64_t i = 0;
    const int sets = M <= 4 ? 2 : 1;
    __m512 acc[2][CG_MAX_M];
    for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
    for (; i + 64 <= k; i += 64) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512((const void *)(w + i));
        __m512bh w1 = (__m512bh)_mm512_loadu_si512((const void *)(w + i + 32));
        for (int m = 0; m < M; m++) {
            const uint16_t *xm = xb + m * k + i;
            acc[0][m] = _mm512_dpbf16_ps(acc[0][m], w0, (__m512bh)_mm512_loadu_si512(xm));
            acc[sets - 1][m] =
                _mm512_dpbf16_ps(acc[sets - 1][m], w1, (__m512bh)_mm512_loadu_si512(xm + 32));
        }
    }
    for (int m = 0; m < M; m++)
        out[m] = _mm512_reduce_add_ps(sets == 2 ? _mm512_add_ps(acc[0][m], acc[1][m]) : acc[0][m]);
    for (; i < k; i++)
        for (int m = 0; m < M; m++) out[m] += bf16_to_f32(w[i]) * bf16_to_f32(xb[m * k + i]);
}
#endif

CG_INLINE void row_bf16(const uint16_t *w, const float *x, int64_t k, const int M, float *out) {
    int64_t i = 0;
#if defined(CG_AVX2) && defined(__AVX512F__)
    /* 16 weights per instruction; two accumulator sets (even and odd 16-lane steps) when
     * they fit, so consecutive FMAs do not wait on each other's latency. */
    const int sets = M <= 4 ? 2 : 1;
    __m512 acc[2][CG_MAX_M];
    for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
        __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i))), 16));
        __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i + 16))), 16));
        for (int m = 0; m < M; m++) {
            const float *xm = x + m * k + i;
            acc[0][m] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xm), acc[0][m]);
            acc[sets - 1][m] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xm + 16), acc[sets - 1][m]);
        }
    }
    for (int m = 0; m < M; m++)
        out[m] = _mm512_reduce_add_ps(sets == 2 ? _mm512_add_ps(acc[0][m], acc[1][m]) : acc[0][m]);
#elif defined(CG_AVX2)
    /* Two accumulator sets (even and odd 8-lane halves) when they fit in the 16 registers:
     * one set would chain every FMA on the previous one's 4-cycle latency. */
    const int sets = M <= 4 ? 2 : 1;
    __m256 acc[2][CG_MAX_M];
    for (int m = 0; m < M; m++) acc[0][m] = acc[1][m] = _mm256_setzero_ps();
    for (; i + 16 <= k; i += 16) {
        __m256i raw = _mm256_loadu_si256((const __m256i *)(w + i));
        __m256 lo = bf16x8_to_f32(_mm256_castsi256_si128(raw));
        __m256 hi = bf16x8_to_f32(_mm256_extracti128_si256(raw, 1));
        for (int m = 0; m < M; m++) {
            const float *xm = x + m * k + i;
            acc[0][m] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xm), acc[0][m]);
            acc[sets - 1][m] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xm + 8), acc[sets - 1][m]);
        }
    }
    for (int m = 0; m < M; m++)
        out[m] = hsum(sets == 2 ? _mm256_add_ps(acc[0][m], acc[1][m]) : acc[0][m]);
#else
    for (int m = 0; m < M; m++) out[m] = 0.0f;
#endif
    for (; i < k; i++) {
        float wv = bf16_to_f32(w[i]);
        for (int m = 0; m < M; m++) out[m] += wv * x[m * k + i];
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
    if (M <= 4) { /* two blocks a step into two accumulator sets: shorter FMA chains */
        for (; b + 2 <= nb; b += 2) {
            float dw0, dw1;
            __m256i w0 = block_weights(kind, r, b, low_mask, eight, &dw0);
            __m256i w1 = block_weights(kind, r, b + 1, low_mask, eight, &dw1);
            for (int m = 0; m < M; m++) {
                const int8_t *xm = x.q + m * k + b * CG_BLOCK;
                __m256 s0 = _mm256_set1_ps(dw0 * x.d[m * nb + b]);
                __m256 s1 = _mm256_set1_ps(dw1 * x.d[m * nb + b + 1]);
                acc[m] = _mm256_fmadd_ps(dot_i8(w0, _mm256_loadu_si256((const __m256i *)xm)), s0, acc[m]);
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

/* Quantize x (M, K) to int8 blocks of 32: d = max|x| / 127, q = round(x / d). */
static void quantize_x(const float *x, int64_t M, int64_t k, int8_t *q, float *d) {
    int64_t nb = k / CG_BLOCK;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + m * k + b * CG_BLOCK;
            float amax = 0.0f;
            for (int j = 0; j < CG_BLOCK; j++) {
                float a = xb[j] < 0 ? -xb[j] : xb[j];
                amax = a > amax ? a : amax;
            }
            float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
            d[m * nb + b] = scale;
            for (int j = 0; j < CG_BLOCK; j++) {
                float v = xb[j] * inv;
                q[m * k + b * CG_BLOCK + j] = (int8_t)(v < 0 ? (int)(v - 0.5f) : (int)(v + 0.5f));
            }
        }
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
};

typedef struct {
    cg_pool *pool;
    int index;
} worker_arg;

static void split(int64_t rows, int parts, int index, int64_t *begin, int64_t *end) {
    int64_t chunk = (rows + parts - 1) / parts;
    *begin = chunk * index < rows ? chunk * index : rows;
    *end = *begin + chunk < rows ? *begin + chunk : rows;
}

static void *worker_main(void *p) {
    worker_arg *wa = (worker_arg *)p;
    cg_pool *pool = wa->pool;
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
        int64_t rows = pool->rows;
        pthread_mutex_unlock(&pool->lock);
        int64_t begin, end;
        split(rows, pool->nthreads, wa->index, &begin, &end);
        if (begin < end) fn(args, begin, end);
        if (__atomic_sub_fetch(&pool->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    free(wa);
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
    for (int i = 1; i < pool->nthreads; i++) {
        worker_arg *wa = (worker_arg *)malloc(sizeof(worker_arg));
        wa->pool = pool;
        wa->index = i;
        pthread_create(&pool->threads[i], NULL, worker_main, wa);
    }
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

/* Run fn over [0, rows) split between the caller (part 0) and the workers. */
static void pool_run(cg_pool *pool, task_fn fn, void *args, int64_t rows) {
    if (pool->nthreads == 1 || rows < 64) {
        fn(args, 0, rows);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->args = args;
    pool->rows = rows;
    __atomic_store_n(&pool->pending, pool->nthreads - 1, __ATOMIC_RELEASE);
    __atomic_store_n(&pool->generation, pool->generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->lock);
    int64_t begin, end;
    split(rows, pool->nthreads, 0, &begin, &end);
    if (begin < end) fn(args, begin, end);
    for (int i = 0; i < CG_SPINS && __atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0; i++)
        cg_pause();
    pthread_mutex_lock(&pool->lock);
    while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
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
    for (int64_t o = begin; o < end; o++) {
        if (a->kind == 16) {
#ifdef CG_BF16_DOT
            row_bf16_dot((const uint16_t *)(a->values + o * a->value_row), a->xb, a->K, M, out);
#else
            row_bf16((const uint16_t *)(a->values + o * a->value_row), a->x, a->K, M, out);
#endif
        } else {
            block_row r = {a->values + o * a->value_row, a->scales + o * a->scale_row,
                           a->value_block, a->scale_block, a->scale_f32};
            if (a->kind == 8) row_blocks(8, r, a->xq, a->K, M, out);
            else row_blocks(4, r, a->xq, a->K, M, out);
        }
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

/* y (M, N) = x (M, K) @ W^T for M <= 8. Strides in bytes; returns 0, or -1 on bad arguments.
 * Block weights use x quantized to int8 blocks, bfloat16 weights on CG_BF16_DOT CPUs x rounded
 * to bfloat16: the caller gives M * (2K + K/32*4) bytes of scratch. */
int cg_matvec(cg_pool *pool, int kind, const void *values, int64_t value_row,
              int64_t value_block, const void *scales, int64_t scale_row, int64_t scale_block,
              int scale_f32, const float *x, float *y, int64_t M, int64_t N, int64_t K,
              void *scratch) {
    if (M < 1 || M > CG_MAX_M || (kind != 16 && K % CG_BLOCK)) return -1;
    matvec_args a = {kind, (const uint8_t *)values, (const uint8_t *)scales, value_row,
                     value_block, scale_row, scale_block, scale_f32, x, {NULL, NULL}, y, M, N, K};
    if (kind != 16) {
        int8_t *q = (int8_t *)scratch;
        float *d = (float *)(q + M * K);
        quantize_x(x, M, K, q, d);
        a.xq.q = q;
        a.xq.d = d;
    } else {
#ifdef CG_BF16_DOT
        uint16_t *xb = (uint16_t *)scratch;
        for (int64_t i = 0; i < M * K; i++) xb[i] = f32_to_bf16(x[i]);
        a.xb = xb;
#endif
    }
    pool_run(pool, matvec_task, &a, N);
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
    pool_run(pool, dequant_bf16_task, &a, N);
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
    pool_run(pool, dequant_task, &a, N);
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
    pool_run(pool, widen_task, &a, N);
    return 0;
}

int cg_bf16_dot(void) {
#ifdef CG_BF16_DOT
    return 1;
#else
    return 0;
#endif
}

int cg_has_avx2(void) {
#ifdef CG_AVX2
    return 1;
#else
    return 0;
#endif
}
