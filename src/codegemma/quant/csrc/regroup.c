#include "cg_internal.h"

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
    cg_pool_run(pool, group_rows_task, &a, rows / CG_GROUP);
    return 0;
}

