/* One decode step of the whole decoder stack in C: for M sequences with one new token each,
 * every layer's norms, projections, rotary positions, KV-cache write, attention, GeGLU and
 * residual adds, in one call from Python (the per-op overhead of ~50 small PyTorch calls per
 * layer is most of a quantized step's time outside the matrix-vector kernels).
 *
 * Projections go through the same entry points as a plain `matvec` (rows.c, groups.c), so they
 * give the same numbers; the rest follows the PyTorch reference's order of operations in float32.
 * Every sequence is computed on its own (attention reads only its own cache row), so its
 * numbers never depend on the batch it came in. The projections and attention use the pool;
 * element-wise work runs on the calling thread.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cg_internal.h"

/* y (M, rows) = x (M, cols) @ W^T, any M: the weight is read once for all rows. */
static int project(cg_pool *pool, const cg_weight *w, const float *x, float *y, int64_t M,
                   void *scratch) {
    if (w->kind > CG_KIND_GROUPS)
        return cg_matvec_groups(pool, (int)(w->kind - CG_KIND_GROUPS), w->values, w->scales,
                                (int)w->scale_f32, x, y, M, w->rows, w->cols, scratch, 0);
    return cg_matvec(pool, (int)w->kind, w->values, w->value_row, w->value_block, w->scales,
                     w->scale_row, w->scale_block, (int)w->scale_f32, x, y, M, w->rows, w->cols,
                     scratch);
}

/* Sum of a[i] * b[i] in 16 lanes, then the lanes pairwise (the compiler vectorizes it). */
static float dot(const float *a, const float *b, int64_t n) {
    float lanes[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lanes[j] += a[i + j] * b[i + j];
    for (int width = 8; width >= 1; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    float sum = lanes[0];
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* out = x / sqrt(mean(x^2) + eps) * scale, as the reference: float32, scale = 1 + weight. */
static void rms_norm(const float *x, const float *scale, float *out, int64_t n, float eps) {
    float mean = dot(x, x, n) / (float)n;
    float r = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * r) * scale[i];
}

/* e^x for every element, Cephes-style: 2^n times a degree-6 polynomial on [-ln2/2, ln2/2]
 * (relative error ~1e-7); inputs clamped to the finite range. Loops vectorize. */
static void exp_in_place(float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = v[i] < -87.0f ? -87.0f : v[i] > 88.0f ? 88.0f : v[i];
        float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x/ln2) */
        float r = x - k * 0.693359375f;
        r = r - k * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        union {
            int32_t i;
            float f;
        } two_k = {.i = ((int32_t)k + 127) << 23};
        v[i] = p * two_k.f;
    }
}

/* gate = gelu_tanh(gate) * up, with tanh(u) = 1 - 2 / (e^(2u) + 1). `tmp` holds n floats. */
static void gelu_times(float *gate, const float *up, float *tmp, int64_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int64_t i = 0; i < n; i++) {
        float x = gate[i];
        tmp[i] = 2.0f * (c * (x + 0.044715f * x * x * x));
    }
    exp_in_place(tmp, n);
    for (int64_t i = 0; i < n; i++) {
        float t = 1.0f - 2.0f / (tmp[i] + 1.0f);
        gate[i] = (0.5f * gate[i] * (1.0f + t)) * up[i];
    }
}

/* Rotate one head vector by the half-split convention: x * cos + rotate_half(x) * sin. */
static void rope(float *v, const float *cos, const float *sin, int64_t hd) {
    int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] + -b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* Attention of the new tokens, one item per (row, query head): softmax(q k^T * scale) v over
 * the row's cache slots [0, slot]. Consecutive heads that share a key/value head are done
 * together, so each cached key and value is read once for all of them (8 query heads per
 * key/value head in CodeGemma-2B), and the items are split between the pool's threads; every
 * head's arithmetic, and its order, is the same whoever computes it. */
typedef struct {
    const cg_dims *d;
    const float *q;      /* (M, heads * head_dim) */
    const cg_row *rows;  /* (M,) */
    int64_t layer;
    int64_t span;        /* score slots per (row, head): the largest slot + 1 */
    float *scores;       /* (M * heads, span) */
    float *out;          /* (M, heads * head_dim) */
} attend_args;

static void attend_heads(const attend_args *a, int64_t m, int64_t h0, int64_t h1) {
    const cg_dims *d = a->d;
    const cg_row *row = &a->rows[m];
    int64_t hd = d->head_dim, group = d->heads / d->kv_heads, span = a->span, n = row->slot + 1;
    int64_t at = (a->layer * d->kv_heads + h0 / group) * row->capacity * hd;
    const float *k = row->keys + at, *v = row->values + at;
    const float *q = a->q + m * d->heads * hd;
    float *scores = a->scores + (m * d->heads) * span, *out = a->out + m * d->heads * hd;
    for (int64_t s = 0; s < n; s++) /* each key read once for the heads h0..h1-1 */
        for (int64_t h = h0; h < h1; h++)
            scores[h * span + s] = dot(q + h * hd, k + s * hd, hd) * d->scale;
    for (int64_t h = h0; h < h1; h++) { /* scores become probabilities */
        float *p = scores + h * span, top = -INFINITY;
        for (int64_t s = 0; s < n; s++) top = p[s] > top ? p[s] : top;
        for (int64_t s = 0; s < n; s++) p[s] -= top;
        exp_in_place(p, n);
        float total = 0.0f;
        for (int64_t s = 0; s < n; s++) total += p[s];
        for (int64_t s = 0; s < n; s++) p[s] /= total;
        memset(out + h * hd, 0, (size_t)hd * sizeof(float));
    }
    for (int64_t s = 0; s < n; s++) /* each value read once for the heads h0..h1-1 */
        for (int64_t h = h0; h < h1; h++) {
            float p = scores[h * span + s], *o = out + h * hd;
            const float *vs = v + s * hd;
            for (int64_t j = 0; j < hd; j++) o[j] += p * vs[j];
        }
}

static void attend_task(void *p, int64_t begin, int64_t end) {
    const attend_args *a = (const attend_args *)p;
    int64_t heads = a->d->heads, group = heads / a->d->kv_heads;
    for (int64_t item = begin; item < end;) {
        int64_t m = item / heads, h0 = item % heads;
        int64_t h1 = (h0 / group + 1) * group; /* the end of h0's key/value head */
        if (h1 - h0 > end - item) h1 = h0 + (end - item);
        attend_heads(a, m, h0, h1);
        item += h1 - h0;
    }
}

/* Floats of `work` that cg_decode_layers needs for M rows whose largest slot is `max_slot`. */
int64_t cg_decode_work_floats(const cg_dims *d, int64_t M, int64_t max_slot) {
    int64_t qw = d->heads * d->head_dim, kvw = d->kv_heads * d->head_dim;
    return M * (2 * d->hidden + 2 * qw + 2 * kvw + 3 * d->intermediate) +
           M * d->heads * (max_slot + 1) + 64;
}

/* x (M, hidden) float32 goes through every layer in place; row m's new token has position
 * tables cos/sin (M, head_dim) and goes to rows[m] (its cache and slot). `work` holds
 * cg_decode_work_floats floats; `scratch` the bytes a matvec on `intermediate` inputs needs.
 * Returns 0, -1 on a slot outside its cache, or the first failing projection's status. */
int cg_decode_layers(cg_pool *pool, const cg_layer *layers, int64_t nlayers, const cg_dims *d,
                     float *x, int64_t M, const float *cos, const float *sin, const cg_row *rows,
                     float *work, void *scratch) {
    int64_t D = d->hidden, hd = d->head_dim, I = d->intermediate;
    int64_t qw = d->heads * hd, kvw = d->kv_heads * hd, span = 0;
    for (int64_t m = 0; m < M; m++) {
        if (rows[m].slot < 0 || rows[m].slot >= rows[m].capacity) return -1;
        span = rows[m].slot + 1 > span ? rows[m].slot + 1 : span;
    }
    float *h = work, *q = h + M * D, *k = q + M * qw, *v = k + M * kvw, *att = v + M * kvw;
    float *proj = att + M * qw, *gate = proj + M * D, *up = gate + M * I, *tmp = up + M * I;
    float *scores = tmp + M * I;
    for (int64_t l = 0; l < nlayers; l++) {
        const cg_layer *L = &layers[l];
        for (int64_t m = 0; m < M; m++) rms_norm(x + m * D, L->attn_norm, h + m * D, D, d->eps);
        int status = project(pool, &L->q, h, q, M, scratch);
        if (!status) status = project(pool, &L->k, h, k, M, scratch);
        if (!status) status = project(pool, &L->v, h, v, M, scratch);
        if (status) return status;
        for (int64_t m = 0; m < M; m++) {
            const float *c = cos + m * hd, *s = sin + m * hd;
            const cg_row *row = &rows[m];
            for (int64_t head = 0; head < d->heads; head++) rope(q + m * qw + head * hd, c, s, hd);
            for (int64_t g = 0; g < d->kv_heads; g++) {
                float *kg = k + m * kvw + g * hd;
                rope(kg, c, s, hd);
                int64_t at = ((l * d->kv_heads + g) * row->capacity + row->slot) * hd;
                memcpy(row->keys + at, kg, (size_t)hd * sizeof(float));
                memcpy(row->values + at, v + m * kvw + g * hd, (size_t)hd * sizeof(float));
            }
        }
        attend_args attention = {d, q, rows, l, span, scores, att};
        cg_pool_split(pool, attend_task, &attention, M * d->heads);
        if ((status = project(pool, &L->o, att, proj, M, scratch))) return status;
        for (int64_t i = 0; i < M * D; i++) x[i] = x[i] + proj[i];
        for (int64_t m = 0; m < M; m++) rms_norm(x + m * D, L->mlp_norm, h + m * D, D, d->eps);
        if ((status = project(pool, &L->gate, h, gate, M, scratch))) return status;
        if ((status = project(pool, &L->up, h, up, M, scratch))) return status;
        gelu_times(gate, up, tmp, M * I);
        if ((status = project(pool, &L->down, gate, proj, M, scratch))) return status;
        for (int64_t i = 0; i < M * D; i++) x[i] = x[i] + proj[i];
    }
    return 0;
}
