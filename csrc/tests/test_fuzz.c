/* Multi-producer multi-consumer fuzz with a conservation invariant: every value
 * pushed is popped exactly once (count, sum and a seen-bitmap agree), and each
 * consumer sees each producer's values in increasing order.  Random batch
 * sizes on both sides; seeded; bounded in time. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "../pq_lane.h"
#include "pq_test.h"

enum { PRODUCERS = 3, CONSUMERS = 3, PER_PRODUCER = 200000, MAX_BATCH = 9 };

static pq_lane lane;
static uint64_t base_seed;
static _Atomic uint8_t *seen;
static _Atomic int64_t popped_count, popped_sum;

static void *producer(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t rng = base_seed * 31 + (uint64_t)id + 1;
    pq_item batch[MAX_BATCH];
    int64_t next = 0;
    while (next < PER_PRODUCER) {
        size_t k = 1 + pq_test_rand(&rng) % MAX_BATCH;
        if ((int64_t)k > PER_PRODUCER - next) k = (size_t)(PER_PRODUCER - next);
        for (size_t i = 0; i < k; i++) {
            memset(&batch[i], 0, sizeof(pq_item));
            batch[i].begin = (int64_t)id * PER_PRODUCER + next + (int64_t)i;
            batch[i].tag = (uintptr_t)id;
        }
        size_t pushed = 0;
        /* Alternate the raw ring and the blocking lane. */
        if (pq_test_rand(&rng) & 1) {
            CHECK_EQ(pq_lane_push_many(&lane, batch, k, -1, &pushed), PQ_OK);
            CHECK_EQ(pushed, k);
        } else {
            pushed = pq_ring_try_push_many(&lane.ring, batch, k);
            if (pushed) pq_park_notify(&lane.not_empty, 0);
        }
        next += (int64_t)pushed;
    }
    return NULL;
}

static void *consumer(void *arg) {
    uint64_t rng = base_seed * 17 + (uint64_t)(intptr_t)arg;
    int64_t last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) last[p] = -1;
    pq_item out[MAX_BATCH];
    for (;;) {
        size_t n = 1 + pq_test_rand(&rng) % MAX_BATCH, got = 0;
        int rc = pq_lane_pop_many(&lane, out, n, -1, &got);
        if (rc == PQ_CLOSED) break;
        CHECK_EQ(rc, PQ_OK);
        CHECK(got >= 1 && got <= n);
        for (size_t i = 0; i < got; i++) {
            int64_t v = out[i].begin;
            int p = (int)out[i].tag;
            CHECK(p >= 0 && p < PRODUCERS);
            CHECK(v > last[p]);  /* per-producer FIFO as seen by one consumer */
            last[p] = v;
            /* relaxed: the bitmap and sums are read after join. */
            CHECK_EQ(atomic_fetch_add_explicit(&seen[v], 1, memory_order_relaxed), 0);
            atomic_fetch_add_explicit(&popped_count, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&popped_sum, v, memory_order_relaxed);
        }
    }
    return NULL;
}

int main(void) {
    base_seed = pq_test_seed("test_fuzz");
    int64_t total = (int64_t)PRODUCERS * PER_PRODUCER;
    seen = calloc((size_t)total, 1);
    CHECK(seen != NULL);
    /* A small ring makes full and empty states frequent; spin on for coverage. */
    CHECK_EQ(pq_lane_init(&lane, 64, 2000, 2), PQ_OK);
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++)
        CHECK_EQ(pthread_create(&cons[i], NULL, consumer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < PRODUCERS; i++)
        CHECK_EQ(pthread_create(&prod[i], NULL, producer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < PRODUCERS; i++) pthread_join(prod[i], NULL);
    pq_lane_close(&lane);
    for (int i = 0; i < CONSUMERS; i++) pthread_join(cons[i], NULL);

    CHECK_EQ(atomic_load(&popped_count), total);
    CHECK_EQ(atomic_load(&popped_sum), total * (total - 1) / 2);
    for (int64_t v = 0; v < total; v++) CHECK_EQ(atomic_load(&seen[v]), 1);
    pq_item it;
    CHECK_EQ(pq_lane_pop(&lane, &it, 0), PQ_CLOSED);
    CHECK_EQ(pq_lane_push(&lane, &it, 0), PQ_CLOSED);
    pq_lane_destroy(&lane);
    free((void *)seen);
    printf("test_fuzz: 1 passed, 0 failed\n");
    return 0;
}
