/* pq_bench - microbenchmark of the C core, no Python.
 *   ring, 1 producer + 1 consumer, per item and with batch claims;
 *   trivial native tasks from one batch on 1 and 2 workers.
 * Prints the median, min and max over repeated runs (PQ_BENCH_REPS, default 5). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../pq_kernels.h"
#include "../pq_pool.h"

enum { RING_ITEMS = 20000000, RING_CAP = 4096 };

static pq_ring ring;
static size_t claim;

static void *ring_producer(void *arg) {
    (void)arg;
    pq_item items[64];
    memset(items, 0, sizeof(items));
    for (int64_t sent = 0; sent < RING_ITEMS;) {
        size_t want = claim;
        if ((int64_t)want > RING_ITEMS - sent) want = (size_t)(RING_ITEMS - sent);
        for (size_t i = 0; i < want; i++) items[i].begin = sent + (int64_t)i;
        size_t got = pq_ring_try_push_many(&ring, items, want);
        if (got == 0) PQ_CPU_RELAX();
        sent += (int64_t)got;
    }
    return NULL;
}

static double bench_ring(size_t k) {
    claim = k;
    if (pq_ring_init(&ring, RING_CAP) != PQ_OK) abort();
    pthread_t t;
    int64_t t0 = pq_now_ns();
    pthread_create(&t, NULL, ring_producer, NULL);
    pq_item out[64];
    int64_t sum = 0;
    for (int64_t got = 0; got < RING_ITEMS;) {
        size_t n = pq_ring_try_pop_many(&ring, out, k);
        if (n == 0) PQ_CPU_RELAX();
        for (size_t i = 0; i < n; i++) sum += out[i].begin;
        got += (int64_t)n;
    }
    pthread_join(t, NULL);
    int64_t dt = pq_now_ns() - t0;
    pq_ring_destroy(&ring);
    if (sum != (int64_t)RING_ITEMS * (RING_ITEMS - 1) / 2) {
        fprintf(stderr, "ring lost items\n");
        abort();
    }
    return RING_ITEMS / (dt / 1e9);
}

/* One thread, no sharing: push k then pop k.  The instruction cost of the
 * ring itself, against which the cross-core figures above can be read. */
static double bench_ring_local(size_t k) {
    if (pq_ring_init(&ring, RING_CAP) != PQ_OK) abort();
    pq_item items[64], out[64];
    memset(items, 0, sizeof(items));
    int64_t sum = 0;
    int64_t t0 = pq_now_ns();
    for (int64_t done = 0; done < RING_ITEMS; done += (int64_t)k) {
        for (size_t i = 0; i < k; i++) {
            items[i].begin = done + (int64_t)i;
            if (k == 1) {
                if (pq_ring_try_push(&ring, &items[i]) != PQ_OK) abort();
            }
        }
        if (k > 1 && pq_ring_try_push_many(&ring, items, k) != k) abort();
        size_t got = k == 1 ? (pq_ring_try_pop(&ring, out) == PQ_OK) : pq_ring_try_pop_many(&ring, out, k);
        if (got != k) abort();
        for (size_t i = 0; i < k; i++) sum += out[i].begin;
    }
    int64_t dt = pq_now_ns() - t0;
    pq_ring_destroy(&ring);
    if (sum != (int64_t)RING_ITEMS * (RING_ITEMS - 1) / 2) abort();
    return RING_ITEMS / (dt / 1e9);
}


enum { TASKS = 20000000, CHUNK = 4096 };
static double *args, *outs;
static int32_t *status;

static double bench_pool(int workers) {
    pq_pool *pool;
    if (pq_pool_create(&pool, workers, 1024) != PQ_OK) abort();
    pq_batch b;
    pq_batch_init(&b, (void *)pq_kernel_add_one_f64, PQ_ABI_ITEM, args, 8, outs, 8, status);
    int64_t t0 = pq_now_ns();
    if (pq_pool_submit(pool, &b, TASKS, CHUNK, -1) != PQ_OK) abort();
    pq_batch_wait(&b, -1);
    int64_t dt = pq_now_ns() - t0;
    if (pq_batch_failed(&b) != 0 || outs[TASKS - 1] != args[TASKS - 1] + 1) abort();
    pq_pool_destroy(pool);
    return TASKS / (dt / 1e9);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *name, double (*fn)(size_t), size_t arg, int reps) {
    double s[64];
    for (int r = 0; r < reps; r++) s[r] = fn(arg);
    qsort(s, (size_t)reps, sizeof(double), cmp_double);
    printf("%-44s median %8.2f M/s   min %8.2f   max %8.2f   (%d runs)\n", name,
           s[reps / 2] / 1e6, s[0] / 1e6, s[reps - 1] / 1e6, reps);
    fflush(stdout);
}

static double ring_fn(size_t k) { return bench_ring(k); }
static double ring_local_fn(size_t k) { return bench_ring_local(k); }
static double pool_fn(size_t w) { return bench_pool((int)w); }

int main(void) {
    const char *env = getenv("PQ_BENCH_REPS");
    int reps = env ? atoi(env) : 5;
    if (reps < 1) reps = 1;
    if (reps > 64) reps = 64;
    args = malloc(sizeof(double) * TASKS);
    outs = malloc(sizeof(double) * TASKS);
    status = malloc(sizeof(int32_t) * TASKS);
    if (!args || !outs || !status) return 1;
    for (int64_t i = 0; i < TASKS; i++) args[i] = (double)i;
    printf("pq_bench: %d cores usable\n", pq_cpu_count());
    report("ring 1P/1C, per item (items/s)", ring_fn, 1, reps);
    report("ring 1P/1C, batch claims of 32 (items/s)", ring_fn, 32, reps);
    report("ring one thread, push+pop per item (items/s)", ring_local_fn, 1, reps);
    report("ring one thread, push+pop 32 at a time (items/s)", ring_local_fn, 32, reps);
    report("native tasks, one batch, 1 worker (tasks/s)", pool_fn, 1, reps);
    report("native tasks, one batch, 2 workers (tasks/s)", pool_fn, 2, reps);
    free(args);
    free(outs);
    free(status);
    return 0;
}
