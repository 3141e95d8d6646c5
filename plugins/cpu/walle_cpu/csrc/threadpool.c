/* The thread pool every parallel kernel runs on, and per-thread scratch memory.
 *
 * A persistent pthread pool. One parallel region runs at a time; a caller that finds the pool
 * busy (another Python thread's run) or that is already inside a region runs its loop inline,
 * so concurrent runs never deadlock and nested loops stay serial. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define MAX_WORKERS 256

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;  /* held by the region's caller */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;    /* protects sleeping and creation */
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_WORKERS];
static int n_workers = 0;
static int shutting_down = 0; /* atomic */
static int sleepers = 0;      /* workers blocked on `wake` (under mu) */

/* A posted job: fields written by the caller before it bumps `generation` (release); workers
 * read them after seeing the new generation (acquire). Workers spin on `generation` for a short
 * while after each job (a plan posts many small regions back to back; a condition-variable wake
 * costs tens of microseconds), then sleep on `wake`. */
static uint64_t generation = 0; /* atomic: job counter << 16 | helpers taking part */
static wl_task job_fn;
static void *job_ctx;
static int64_t job_n;
static int64_t job_next;  /* atomic */
static int job_finished;  /* atomic: joined helpers done with the job */
/* atomic: helpers that joined the job, | GATE_CLOSED once the caller ran out of work; a worker
 * arriving after that stays out, so the caller never waits for a thread still asleep */
static int job_gate;
#define GATE_CLOSED 0x40000000

#define SPIN_NS 200000 /* how long an idle worker keeps spinning before it sleeps */

static __thread int in_region = 0;
static uint64_t start_gen[MAX_WORKERS]; /* generation a worker was born in */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Flush-to-zero and denormals-are-zero while kernels run: a denormal operand (a masked
 * softmax's exp underflows to them) takes a microcoded slow path, 10x per instruction. Workers
 * keep the mode for life; the calling thread sets it per wl_run and restores its own after. */
unsigned long wl_fp_flush_enter(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned saved = __builtin_ia32_stmxcsr();
    __builtin_ia32_ldmxcsr(saved | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return saved;
#elif defined(__aarch64__)
    unsigned long saved;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved | (1ul << 24))); /* FZ */
    return saved;
#else
    return 0;
#endif
}

void wl_fp_restore(unsigned long saved) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_ldmxcsr((unsigned)saved);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved));
#else
    (void)saved;
#endif
}

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Items are claimed `job_batch` at a time: a job of one row (or plane) per item would send
 * every thread to the shared counter once per tiny item, and two threads contending for its
 * cache line took longer than the rows (a 576-row pad: 40.7 -> 16.3 us by hand-chunking it).
 * With at most CLAIMS_PER_THREAD claims per thread, the last claim leaves at most that share of
 * the job unbalanced; callers that already chunk (n <= that many per thread) claim one each. */
#ifndef CLAIMS_PER_THREAD
#define CLAIMS_PER_THREAD 8
#endif
static int64_t job_batch;

static void drain(wl_task fn, void *ctx, int64_t n, int64_t batch) {
    for (;;) {
        int64_t i = __atomic_fetch_add(&job_next, batch, __ATOMIC_RELAXED);
        if (i >= n) break;
        int64_t end = i + batch < n ? i + batch : n;
        for (; i < end; i++) fn(ctx, i);
    }
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    in_region = 1;
    (void)wl_fp_flush_enter();
    pthread_mutex_lock(&mu);
    uint64_t seen = start_gen[id]; /* a job posted right after our creation is still ours */
    pthread_mutex_unlock(&mu);
    for (;;) {
        uint64_t g;
        int64_t t0 = mono_ns();
        unsigned spins = 0;
        while ((g = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen &&
               !__atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE)) {
            /* pause-spin first, then yield the core (a shared or oversubscribed machine must
             * not lose a time slice of the thread we wait for to our spinning) */
            if (++spins < 2048) cpu_relax();
            else sched_yield();
            if ((spins & 63) == 0 && mono_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&mu);
                sleepers++;
                while (__atomic_load_n(&generation, __ATOMIC_ACQUIRE) == seen &&
                       !__atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE))
                    pthread_cond_wait(&wake, &mu);
                sleepers--;
                pthread_mutex_unlock(&mu);
                t0 = mono_ns();
                spins = 0;
            }
        }
        if (__atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE)) break;
        seen = g;
        /* the helper count travels in the generation word: a worker not taking part reads no
         * other job field, so the caller may post the next job without waiting for it */
        if (id >= (int)(g & 0xffff)) continue;
        if (__atomic_fetch_add(&job_gate, 1, __ATOMIC_ACQ_REL) & GATE_CLOSED) continue;
        drain(job_fn, job_ctx, job_n, job_batch);
        __atomic_fetch_add(&job_finished, 1, __ATOMIC_ACQ_REL);
    }
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
    int64_t batch = n / ((int64_t)(helpers + 1) * CLAIMS_PER_THREAD);
    job_batch = batch > 1 ? batch : 1;
    __atomic_store_n(&job_next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&job_finished, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&job_gate, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&generation, ((generation >> 16) + 1) << 16 | (uint64_t)helpers, __ATOMIC_RELEASE);
    if (sleepers) pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&mu);

    in_region = 1;
    drain(fn, ctx, n, job_batch);
    in_region = 0;

    int joined = __atomic_fetch_or(&job_gate, GATE_CLOSED, __ATOMIC_ACQ_REL) & ~GATE_CLOSED;
    for (unsigned spins = 0; __atomic_load_n(&job_finished, __ATOMIC_ACQUIRE) < joined; spins++) {
        if (spins < 2048) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&busy);
}

void wl_pool_shutdown(void) {
    pthread_mutex_lock(&busy);
    pthread_mutex_lock(&mu);
    __atomic_store_n(&shutting_down, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&wake);
    int n = n_workers;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++) pthread_join(workers[i], NULL);
    pthread_mutex_lock(&mu);
    n_workers = 0;
    __atomic_store_n(&shutting_down, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&busy);
}

/* Per-thread scratch buffers, grown on demand and kept for the next run. */
static __thread void *scratch_buf[6];
static __thread size_t scratch_cap[6];

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

int64_t wl_chunks(int64_t n, int64_t grain, int nthreads, int64_t *chunk) {
    int64_t tasks = nthreads <= 1 || n < grain ? 1 : (n + grain - 1) / grain;
    if (tasks > 4 * nthreads) tasks = 4 * nthreads;
    if (tasks < 1) tasks = 1;
    *chunk = (n + tasks - 1) / tasks;
    if (*chunk < 1) *chunk = 1;
    return (n + *chunk - 1) / *chunk;
}
