/* The interface of the native kernels: the one place where C and Python agree.
 *
 * Everything Python calls is declared here, with the structures it fills and the codes both
 * sides use. `codegemma/quant/bindings.py` reads this file to build its ctypes declarations
 * (functions, structures, codes), and a test checks them against the compiled library, so a
 * change made here reaches both sides at once. Keep declarations to one line each, in this
 * plain form (the reader is small): `ret name(type name, ...);` and `typedef struct {...} x;`.
 */
#ifndef CG_KERNELS_H
#define CG_KERNELS_H

#include <stdint.h>

/* Weight kinds: bfloat16 rows, int8 / 4-bit blocks of 32 in rows, and row groups (kind
 * CG_KIND_GROUPS + bits: 108 / 104, 16 rows interleaved, see groups.c). */
#define CG_KIND_BF16 16
#define CG_KIND_INT8 8
#define CG_KIND_INT4 4
#define CG_KIND_GROUPS 100

typedef struct cg_pool cg_pool;
typedef void (*cg_task)(void *args, int64_t begin, int64_t end);

/* A weight as a projection of the decode step reads it: (rows, cols) of `kind`, strides in
 * bytes (rows layouts), scales float16 or float32. */
typedef struct {
    int64_t kind;
    const void *values;
    const void *scales;
    int64_t value_row;
    int64_t value_block;
    int64_t scale_row;
    int64_t scale_block;
    int64_t scale_f32;
    int64_t rows;
    int64_t cols;
} cg_weight;

/* One decoder layer: 1 + the norms' weights (float32, hidden) and the seven projections. */
typedef struct {
    const float *attn_norm;
    const float *mlp_norm;
    cg_weight q;
    cg_weight k;
    cg_weight v;
    cg_weight o;
    cg_weight gate;
    cg_weight up;
    cg_weight down;
} cg_layer;

typedef struct {
    int64_t hidden;
    int64_t heads;
    int64_t kv_heads;
    int64_t head_dim;
    int64_t intermediate;
    float eps;   /* RMSNorm epsilon */
    float scale; /* attention scale */
} cg_dims;

/* Where one row's new token goes: each row has a cache of its own (one sequence's), float32
 * (layers, kv_heads, capacity, head_dim). Several rows may share a cache at consecutive slots
 * (tokens of one sequence checked together): every row's keys and values are written before
 * any row attends, and a row reads only up to its own slot. */
typedef struct {
    float *keys;      /* layer 0 of the cache */
    float *values;
    int64_t capacity; /* slots per (layer, kv head) */
    int64_t slot;     /* this token's slot; it attends to slots [0, slot] */
} cg_row;

/* The thread pool (pool.c). */
cg_pool *cg_pool_create(int nthreads);
void cg_pool_destroy(cg_pool *pool);
int cg_pool_threads(cg_pool *pool);
void cg_pool_split(cg_pool *pool, cg_task fn, void *args, int64_t count);
void cg_pool_share_openmp(cg_pool *pool, int on);
int cg_has_openmp(void);

/* Rows layouts (rows.c): y (M, N) = x (M, K) @ W^T; dequantization and widening. */
int cg_matvec(cg_pool *pool, int kind, const void *values, int64_t value_row, int64_t value_block, const void *scales, int64_t scale_row, int64_t scale_block, int scale_f32, const float *x, float *y, int64_t M, int64_t N, int64_t K, void *scratch);
int cg_dequantize_bf16(cg_pool *pool, int kind, const void *values, int64_t value_row, int64_t value_block, const void *scales, int64_t scale_row, int64_t scale_block, int scale_f32, void *out, int64_t N, int64_t K);
int cg_dequantize(cg_pool *pool, int kind, const void *values, int64_t value_row, int64_t value_block, const void *scales, int64_t scale_row, int64_t scale_block, int scale_f32, float *out, int64_t N, int64_t K);
int cg_widen_bf16(cg_pool *pool, const void *values, int64_t value_row, float *out, int64_t N, int64_t K);

/* Row groups (groups.c, groups_dequant.c, regroup.c). */
int cg_matvec_groups(cg_pool *pool, int bits, const void *values, const void *scales, int scale_f32, const float *x, float *y, int64_t M, int64_t N, int64_t K, void *scratch, int portable);
int cg_quantize_rows(cg_pool *pool, const float *x, int64_t M, int64_t K, int32_t offset, int8_t *q, float *d, int32_t *sums);
int cg_gemm_groups(cg_pool *pool, int bits, const void *values, const void *scales, int scale_f32, const int8_t *q, const float *d, const int32_t *sums, float *y, int64_t y_stride, int64_t M, int64_t N, int64_t K);
int cg_dequantize_groups(cg_pool *pool, int bits, const void *values, const void *scales, int scale_f32, void *out, int out_bf16, int64_t N, int64_t K);
int cg_group_rows(cg_pool *pool, const void *src, int64_t row_stride, int64_t block_stride, int64_t block_words, int64_t blocks, int word, uint32_t flip, void *dst, int64_t rows);

/* The whole decoder stack for one token per row (decode_step.c). */
int64_t cg_decode_work_floats(const cg_dims *d, int64_t M, int64_t max_slot);
int cg_decode_layers(cg_pool *pool, const cg_layer *layers, int64_t nlayers, const cg_dims *d, float *x, int64_t M, const float *cos, const float *sin, const cg_row *rows, float *work, void *scratch);

/* What the build uses (features.c). */
int cg_row_groups(void);
int cg_bf16_dot(void);
int cg_bf16_activations(void);
int cg_has_avx2(void);
const char *cg_isa(void);
int64_t cg_struct_size(int which);

#endif
