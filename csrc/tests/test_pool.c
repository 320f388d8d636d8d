/* The native pool: both ABIs, per-item status codes, chunking edge cases,
 * shutdown with pending work (drain and cancel), shutdown while idle, and a
 * submit after shutdown.  Every item ends with exactly one status. */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>
#include <time.h>

#include "../pq_kernels.h"
#include "../pq_pool.h"
#include "pq_test.h"

/* The package's own kernel (pyqueue.kernels.add_one_f64). */
#define add_one pq_kernel_add_one_f64

/* Fails on multiples of 7 with the value as the error code. */
static int fail_on_seven(const void *arg, void *out) {
    int64_t v = *(const int64_t *)arg;
    if (v % 7 == 0) return (int)(v % 1000) + 1;
    *(int64_t *)out = v * 2;
    return 0;
}

static int square_range(const void *args, int64_t begin, int64_t end, void *out) {
    const int64_t *a = args;
    int64_t *o = out;
    for (int64_t i = begin; i < end; i++) o[i] = a[i] * a[i];
    return 0;
}

static int fail_range(const void *args, int64_t begin, int64_t end, void *out) {
    (void)args; (void)out; (void)end;
    return begin >= 100 ? 42 : 0;
}

static int slow_item(const void *arg, void *out) {
    (void)arg;
    struct timespec ts = {0, 200000}; /* 0.2 ms */
    nanosleep(&ts, NULL);
    *(int32_t *)out = 1;
    return 0;
}

/* Each item of a slow_item batch ended exactly one way: it ran (status 0,
 * out written) or it did not (PQ_ITEM_NOT_RUN, out untouched). Returns how
 * many did not run. */
static int64_t count_not_run(const int32_t *o, const int32_t *st, int n) {
    int64_t not_run = 0;
    for (int i = 0; i < n; i++) {
        if (st[i] == 0) {
            CHECK_EQ(o[i], 1);
        } else {
            CHECK_EQ(st[i], PQ_ITEM_NOT_RUN);
            CHECK_EQ(o[i], 0);
            not_run++;
        }
    }
    return not_run;
}

static void test_item_abi_all_chunk_sizes(void) {
    enum { N = 1000 };
    static double a[N], o[N];
    static int32_t st[N];
    for (int i = 0; i < N; i++) a[i] = i;
    for (int workers = 1; workers <= 3; workers++) {
        pq_pool *pool;
        CHECK_EQ(pq_pool_create(&pool, workers, 16), PQ_OK);
        int64_t chunks[] = {1, 3, 64, 999, 1000, 5000};
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
            memset(o, 0, sizeof(o));
            pq_batch b;
            pq_batch_init(&b, (void *)add_one, PQ_ABI_ITEM, a, sizeof(double), o, sizeof(double), st);
            CHECK_EQ(pq_pool_submit(pool, &b, N, chunks[c], -1), PQ_OK);
            CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
            CHECK_EQ(pq_batch_failed(&b), 0);
            for (int i = 0; i < N; i++) {
                CHECK(o[i] == a[i] + 1.0);
                CHECK_EQ(st[i], 0);
            }
        }
        pq_batch empty;
        pq_batch_init(&empty, (void *)add_one, PQ_ABI_ITEM, a, 8, o, 8, st);
        CHECK_EQ(pq_pool_submit(pool, &empty, 0, 10, -1), PQ_OK);
        CHECK_EQ(pq_batch_wait(&empty, 0), PQ_OK);
        CHECK_EQ(pq_pool_submit(pool, &empty, 5, 0, -1), PQ_EINVAL);
        pq_pool_destroy(pool);
    }
}

static void test_status_codes_and_range_abi(void) {
    enum { N = 500 };
    static int64_t a[N], o[N];
    static int32_t st[N];
    for (int i = 0; i < N; i++) a[i] = i;
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 2, 8), PQ_OK);
    pq_batch b;
    pq_batch_init(&b, (void *)fail_on_seven, PQ_ABI_ITEM, a, 8, o, 8, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 37, -1), PQ_OK);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    int64_t expect_failed = 0;
    for (int i = 0; i < N; i++) {
        if (i % 7 == 0) {
            CHECK_EQ(st[i], i % 1000 + 1);
            expect_failed++;
        } else {
            CHECK_EQ(st[i], 0);
            CHECK_EQ(o[i], 2 * i);
        }
    }
    CHECK_EQ(pq_batch_failed(&b), expect_failed);

    pq_batch_init(&b, (void *)square_range, PQ_ABI_RANGE, a, 0, o, 0, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 64, -1), PQ_OK);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    for (int i = 0; i < N; i++) CHECK_EQ(o[i], (int64_t)i * i);

    pq_batch_init(&b, (void *)fail_range, PQ_ABI_RANGE, a, 0, o, 0, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 50, -1), PQ_OK);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    for (int i = 0; i < N; i++) CHECK_EQ(st[i], i >= 100 ? 42 : 0);
    CHECK_EQ(pq_batch_failed(&b), N - 100);
    pq_pool_destroy(pool);
}

/* Shutdown with queued work: drained (all run) or cancelled (the rest is
 * marked not run); either way each item has exactly one outcome. */
static void test_shutdown_with_pending(int cancel) {
    enum { N = 400 };
    static int32_t o[N], st[N];
    memset(o, 0, sizeof(o));
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 2, 512), PQ_OK);
    pq_batch b;
    pq_batch_init(&b, (void *)slow_item, PQ_ABI_ITEM, o, 4, o, 4, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 1, -1), PQ_OK);
    /* The depth snapshot: 400 x 0.2 ms on 2 workers leaves most chunks queued. */
    size_t queued = pq_pool_queued(pool);
    CHECK(queued > 0 && queued <= N);
    pq_pool_shutdown(pool, cancel);
    CHECK_EQ(pq_batch_wait(&b, 0), PQ_OK); /* complete once shutdown returns */
    CHECK_EQ(pq_pool_queued(pool), 0); /* drained or marked not run */
    int64_t not_run = count_not_run(o, st, N);
    int64_t ran = N - not_run;
    CHECK_EQ(pq_batch_failed(&b), not_run);
    if (!cancel) CHECK_EQ(ran, N);
    else CHECK(not_run > 0); /* 400 x 0.2 ms cannot finish before shutdown */

    /* Submitting after shutdown fails cleanly and still completes the batch. */
    pq_batch late;
    pq_batch_init(&late, (void *)slow_item, PQ_ABI_ITEM, o, 4, o, 4, st);
    CHECK_EQ(pq_pool_submit(pool, &late, 10, 3, -1), PQ_CLOSED);
    CHECK_EQ(pq_batch_wait(&late, 0), PQ_OK);
    for (int i = 0; i < 10; i++) CHECK_EQ(st[i], PQ_ITEM_NOT_RUN);
    pq_pool_shutdown(pool, 1); /* idempotent */
    pq_pool_destroy(pool);
}

static void test_shutdown_idle_and_bad_args(void) {
    pq_pool *pool = NULL;
    CHECK_EQ(pq_pool_create(&pool, 0, 16), PQ_EINVAL);
    CHECK_EQ(pq_pool_create(&pool, 2, 15), PQ_EINVAL);
    CHECK_EQ(pq_pool_create(&pool, 4, 16), PQ_OK);
    CHECK_EQ(pq_pool_workers(pool), 4);
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL); /* let every worker park */
    pq_pool_shutdown(pool, 0);
    pq_pool_destroy(pool);
    CHECK(pq_cpu_count() >= 1);
}

/* A full ring with a timeout: the chunks that did not fit are accounted as
 * not run and the batch still completes. */
static void test_submit_timeout_on_full_ring(void) {
    enum { N = 64 };
    static int32_t o[N], st[N];
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 1, 2), PQ_OK);
    pq_batch b;
    pq_batch_init(&b, (void *)slow_item, PQ_ABI_ITEM, o, 4, o, 4, st);
    int rc = pq_pool_submit(pool, &b, N, 1, 0);
    CHECK(rc == PQ_OK || rc == PQ_FULL);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    int64_t not_run = 0;
    for (int i = 0; i < N; i++) not_run += st[i] == PQ_ITEM_NOT_RUN;
    CHECK_EQ(rc, PQ_FULL);  /* 64 slow items cannot all fit a 2-cell ring at once */
    CHECK(not_run > 0);
    CHECK_EQ(pq_batch_failed(&b), not_run);
    pq_pool_destroy(pool);
}

/* Cancelling a running batch: chunks not yet started are marked not run, the
 * batch completes, and every item has exactly one outcome. */
static void test_batch_cancel(void) {
    enum { N = 300 };
    static int32_t o[N], st[N];
    memset(o, 0, sizeof(o));
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 1, 512), PQ_OK);
    pq_batch b;
    pq_batch_init(&b, (void *)slow_item, PQ_ABI_ITEM, o, 4, o, 4, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 1, -1), PQ_OK);
    pq_batch_cancel(&b);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    int64_t not_run = count_not_run(o, st, N);
    CHECK(not_run > 0);
    CHECK_EQ(pq_batch_failed(&b), not_run);
    pq_pool_destroy(pool);
}

/* close does not wait: it returns while a worker is still inside a chunk,
 * and the later shutdown joins. */
static void test_close_does_not_wait(void) {
    enum { N = 50 };
    static int32_t o[N], st[N];
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 1, 64), PQ_OK);
    pq_batch b;
    pq_batch_init(&b, (void *)slow_item, PQ_ABI_ITEM, o, 4, o, 4, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 1, -1), PQ_OK);
    pq_pool_close(pool, 0);
    CHECK(!pq_batch_is_done(&b)); /* 50 x 0.2 ms cannot be done yet */
    pq_pool_close(pool, 0);        /* idempotent */
    pq_pool_shutdown(pool, 0);
    CHECK(pq_batch_is_done(&b));
    for (int i = 0; i < N; i++) CHECK_EQ(st[i], 0);
    pq_pool_destroy(pool);
}

/* A submit racing with shutdown: every batch must still complete (a push
 * that slipped past the closed check used to strand its chunks in a ring
 * nobody read). Repeated, so that the race window is hit many times. */
static pq_pool *race_pool;
static void *race_submitter(void *arg) {
    (void)arg;
    static int32_t o[64], st[64];
    for (int k = 0; k < 50; k++) {
        pq_batch b;
        pq_batch_init(&b, (void *)add_one, PQ_ABI_ITEM, o, 8, o, 8, st);
        int rc = pq_pool_submit(race_pool, &b, 8, 1, -1);
        CHECK(rc == PQ_OK || rc == PQ_CLOSED);
        CHECK_EQ(pq_batch_wait(&b, 5000000000LL), PQ_OK);
        if (rc == PQ_CLOSED) break;
    }
    return NULL;
}

static void test_submit_racing_shutdown(void) {
    for (int round = 0; round < 200; round++) {
        CHECK_EQ(pq_pool_create(&race_pool, 1, 4), PQ_OK);
        pthread_t t;
        CHECK_EQ(pthread_create(&t, NULL, race_submitter, NULL), 0);
        if (round % 2) sched_yield();
        pq_pool_shutdown(race_pool, round % 3 == 0);
        pthread_join(t, NULL);
        pq_pool_destroy(race_pool);
    }
}

/* The completion hook: runs once, after done is set; registering after
 * completion says so (PQ_CLOSED) and never runs it; one hook per batch. */
static _Atomic int hook_calls;
static _Atomic int hook_saw_done;
static void count_hook(void *ctx) {
    atomic_fetch_add(&hook_calls, 1);
    if (pq_batch_is_done((pq_batch *)ctx)) atomic_fetch_add(&hook_saw_done, 1);
}

static void test_batch_hook(void) {
    enum { N = 40 };
    static int32_t o[N], st[N];
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 2, 64), PQ_OK);
    pq_batch b;
    pq_batch_hook hook = {count_hook, &b}, other = {count_hook, &b};
    pq_batch_init(&b, (void *)slow_item, PQ_ABI_ITEM, o, 4, o, 4, st);
    CHECK_EQ(pq_batch_set_hook(&b, &hook), PQ_OK);
    CHECK_EQ(pq_batch_set_hook(&b, &other), PQ_EINVAL);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 1, -1), PQ_OK);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    pq_pool_shutdown(pool, 0); /* joins: the hook has returned */
    CHECK_EQ(atomic_load(&hook_calls), 1);
    CHECK_EQ(atomic_load(&hook_saw_done), 1);
    CHECK_EQ(pq_batch_set_hook(&b, &other), PQ_CLOSED);
    CHECK_EQ(atomic_load(&hook_calls), 1);
    pq_pool_destroy(pool);
}

/* Registration racing completion, with the batch freed by its waiter as soon
 * as done is set and the hook's owner freed by the hook: exactly one of "the
 * hook ran" and PQ_CLOSED happens, and (under ASan) the completer touches
 * nothing of the batch after setting done. */
typedef struct hook_owner {
    pq_batch_hook hook;
    _Atomic int *ran;
} hook_owner;
static void owner_hook(void *ctx) {
    hook_owner *h = ctx;
    atomic_fetch_add(h->ran, 1);
    free(h);
}

static void test_batch_hook_races_completion(void) {
    static int64_t a[4], o[4];
    static int32_t st[4];
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 2, 64), PQ_OK);
    static _Atomic int ran;
    int closed = 0;
    for (int round = 0; round < 2000; round++) {
        pq_batch *b = malloc(sizeof(*b));
        hook_owner *h = malloc(sizeof(*h));
        CHECK(b != NULL && h != NULL);
        h->hook.fn = owner_hook;
        h->hook.ctx = h;
        h->ran = &ran;
        pq_batch_init(b, (void *)square_range, PQ_ABI_RANGE, a, 8, o, 8, st);
        CHECK_EQ(pq_pool_submit(pool, b, 4, 1, -1), PQ_OK);
        if (round % 2) sched_yield();
        int rc = pq_batch_set_hook(b, &h->hook);
        CHECK(rc == PQ_OK || rc == PQ_CLOSED);
        if (rc == PQ_CLOSED) {
            CHECK(pq_batch_is_done(b));
            free(h);
            closed++;
        }
        CHECK_EQ(pq_batch_wait(b, -1), PQ_OK);
        free(b); /* at once: the hook may still be running, from its own memory */
    }
    pq_pool_shutdown(pool, 0);
    CHECK_EQ(atomic_load(&ran) + closed, 2000);
    pq_pool_destroy(pool);
}

int main(void) {
    test_item_abi_all_chunk_sizes();
    test_status_codes_and_range_abi();
    test_shutdown_with_pending(0);
    test_shutdown_with_pending(1);
    test_shutdown_idle_and_bad_args();
    test_submit_timeout_on_full_ring();
    test_batch_cancel();
    test_close_does_not_wait();
    test_submit_racing_shutdown();
    test_batch_hook();
    test_batch_hook_races_completion();
    printf("test_pool: 11 passed, 0 failed\n");
    return 0;
}
