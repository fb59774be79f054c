/* What a build of the library uses, for the engine's choices and for reports. */
#include "cg_internal.h"

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

/* 1 when bfloat16 weights' matrix-vector products round x to bfloat16 first (rows.c). */
int cg_bf16_activations(void) {
#if defined(CG_BF16_DOT) || defined(CG_BF16_UNPACK)
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
/* Sizes of the structures in cg_kernels.h, so a test can check the Python declarations. */
int64_t cg_struct_size(int which) {
    switch (which) {
        case 0: return (int64_t)sizeof(cg_weight);
        case 1: return (int64_t)sizeof(cg_layer);
        case 2: return (int64_t)sizeof(cg_dims);
        case 3: return (int64_t)sizeof(cg_row);
        default: return -1;
    }
}
