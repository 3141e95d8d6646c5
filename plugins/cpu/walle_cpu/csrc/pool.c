/* A persistent pthread pool. One parallel region runs at a time; a caller that finds the pool
 * busy (another Python thread's run) or that is already inside a region runs its loop inline,
 * so concurrent runs never deadlock and nested loops stay serial. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "wl.h"

#define MAX_WORKERS 256

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;  /* held by the region's caller */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;    /* protects the job fields */
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_WORKERS];
static int n_workers = 0;
static int shutting_down = 0;

static uint64_t generation = 0;
static wl_task job_fn;
static void *job_ctx;
static int64_t job_n;
static int64_t job_next; /* atomic */
static int job_helpers;  /* workers taking part */
static int job_finished; /* workers that finished */

static __thread int in_region = 0;
static uint64_t start_gen[MAX_WORKERS]; /* generation a worker was born in */

static void drain(wl_task fn, void *ctx, int64_t n) {
    for (;;) {
        int64_t i = __atomic_fetch_add(&job_next, 1, __ATOMIC_RELAXED);
        if (i >= n) break;
        fn(ctx, i);
    }
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t seen = 0;
    in_region = 1;
    pthread_mutex_lock(&mu);
    seen = start_gen[id]; /* a job posted right after our creation is still ours */
    for (;;) {
        while (generation == seen && !shutting_down) pthread_cond_wait(&wake, &mu);
        if (shutting_down) break;
        seen = generation;
        if (id >= job_helpers) continue;
        wl_task fn = job_fn;
        void *ctx = job_ctx;
        int64_t n = job_n;
        pthread_mutex_unlock(&mu);
        drain(fn, ctx, n);
        pthread_mutex_lock(&mu);
        if (++job_finished == job_helpers) pthread_cond_signal(&done);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

void wl_parallel_for(int64_t n, wl_task fn, void *ctx, int nthreads) {
    if (nthreads > MAX_WORKERS + 1) nthreads = MAX_WORKERS + 1;
    if (nthreads > n) nthreads = (int)n;
    if (nthreads <= 1 || in_region || pthread_mutex_trylock(&busy) != 0) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    int helpers = nthreads - 1;
    pthread_mutex_lock(&mu);
    while (n_workers < helpers) {
        start_gen[n_workers] = generation;
        if (pthread_create(&workers[n_workers], NULL, worker_main, (void *)(intptr_t)n_workers) != 0)
            break;
        n_workers++;
    }
    if (helpers > n_workers) helpers = n_workers;
    job_fn = fn;
    job_ctx = ctx;
    job_n = n;
    __atomic_store_n(&job_next, 0, __ATOMIC_RELAXED);
    job_helpers = helpers;
    job_finished = 0;
    generation++;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&mu);

    in_region = 1;
    drain(fn, ctx, n);
    in_region = 0;

    pthread_mutex_lock(&mu);
    while (job_finished < job_helpers) pthread_cond_wait(&done, &mu);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&busy);
}

void wl_pool_shutdown(void) {
    pthread_mutex_lock(&busy);
    pthread_mutex_lock(&mu);
    shutting_down = 1;
    pthread_cond_broadcast(&wake);
    int n = n_workers;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++) pthread_join(workers[i], NULL);
    pthread_mutex_lock(&mu);
    n_workers = 0;
    shutting_down = 0;
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&busy);
}

/* Per-thread scratch buffers, grown on demand and kept for the next run. */
static __thread void *scratch_buf[4];
static __thread size_t scratch_cap[4];

void *wl_scratch(int which, size_t bytes) {
    if (bytes > scratch_cap[which]) {
        free(scratch_buf[which]);
        size_t cap = bytes + bytes / 4 + 4096;
        void *p = NULL;
        if (posix_memalign(&p, 64, cap) != 0) {
            scratch_buf[which] = NULL;
            scratch_cap[which] = 0;
            return NULL;
        }
        scratch_buf[which] = p;
        scratch_cap[which] = cap;
    }
    return scratch_buf[which];
}
