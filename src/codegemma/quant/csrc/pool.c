/* The thread pool the kernels run on: a few persistent workers owned by a `cg_pool` object
 * (no global state; the Python engine owns one pool, and closes it). Work is split over
 * output rows, in chunks taken by whichever thread is free; every row's result is computed
 * the same way whoever computes it. */
#include <pthread.h>
#include <stdlib.h>

#include "cg_internal.h"



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
    cg_task fn;
    void *args;
    int64_t rows;
    int64_t chunk;       /* rows handed out at a time */
    int64_t next;        /* first row not yet handed out (atomic) */
    int openmp;          /* prompt work on PyTorch's OpenMP threads (see prompt_run) */
};

/* Threads take chunks of rows until none are left: a thread slowed down (by another process,
 * or a busier core) simply takes fewer chunks. Each row's result never depends on who
 * computes it. */
static void take_chunks(cg_pool *pool, cg_task fn, void *args) {
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
        cg_task fn = pool->fn;
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
static void pool_dispatch(cg_pool *pool, cg_task fn, void *args, int64_t rows, int64_t chunk) {
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
void cg_pool_run(cg_pool *pool, cg_task fn, void *args, int64_t rows) {
    if (pool->nthreads == 1 || rows < 64) {
        fn(args, 0, rows);
        return;
    }
    int64_t chunk = rows / (8 * (int64_t)pool->nthreads);
    pool_dispatch(pool, fn, args, rows, chunk < 16 ? 16 : chunk);
}

/* Run fn over [0, count) in one contiguous share per thread: for a few large items (the
 * attention heads of a decode step), where neighbours share data (a key/value head). */
void cg_pool_split(cg_pool *pool, cg_task fn, void *args, int64_t count) {
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
void cg_prompt_run(cg_pool *pool, cg_task fn, void *args, int64_t rows) {
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
    cg_pool_run(pool, fn, args, rows);
}

void cg_pool_share_openmp(cg_pool *pool, int on) { pool->openmp = on; }

int cg_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
