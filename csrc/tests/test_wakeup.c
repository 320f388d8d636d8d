/* Lost-wake-up stress: producers push at random intervals while consumers
 * park (spinning disabled, so every idle consumer sleeps on the futex).  A
 * lost wake-up shows up as an item that waits until the next push or forever;
 * every item must be picked up within a second of its push. Also checks the
 * one-shot event and bounded waits. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "../pq_lane.h"
#include "pq_test.h"

enum { PRODUCERS = 2, CONSUMERS = 3, PER_PRODUCER = 3000 };
static const int64_t MAX_LATENCY_NS = 1000000000LL;

static pq_lane lane;
static uint64_t base_seed;
static _Atomic int64_t received, worst_latency;

static void sleep_ns(int64_t ns) {
    struct timespec ts = {0, (long)ns};
    nanosleep(&ts, NULL);
}

static void *producer(void *arg) {
    uint64_t rng = base_seed + (uint64_t)(intptr_t)arg * 7919;
    for (int i = 0; i < PER_PRODUCER; i++) {
        uint64_t r = pq_test_rand(&rng);
        /* Mostly back-to-back, sometimes long enough for everyone to park. */
        if (r % 4 == 0) sleep_ns((int64_t)(r >> 8) % 200000);
        pq_item it;
        memset(&it, 0, sizeof(it));
        it.begin = pq_now_ns();
        CHECK_EQ(pq_lane_push(&lane, &it, -1), PQ_OK);
    }
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    pq_item it;
    while (pq_lane_pop(&lane, &it, -1) == PQ_OK) {
        int64_t lat = pq_now_ns() - it.begin;
        int64_t prev = atomic_load_explicit(&worst_latency, memory_order_relaxed);
        while (lat > prev && !atomic_compare_exchange_weak_explicit(
                                 &worst_latency, &prev, lat, memory_order_relaxed,
                                 memory_order_relaxed)) {
        }
        atomic_fetch_add_explicit(&received, 1, memory_order_relaxed);
    }
    return NULL;
}

static _Atomic int event_seen;
static pq_event event;
static void *event_waiter(void *arg) {
    (void)arg;
    CHECK_EQ(pq_event_wait(&event, -1), PQ_OK);
    atomic_fetch_add(&event_seen, 1);
    return NULL;
}

static void test_event(void) {
    pq_event_init(&event);
    CHECK_EQ(pq_event_wait(&event, 1000000), PQ_TIMEOUT); /* 1 ms */
    pthread_t t[4];
    for (int i = 0; i < 4; i++) CHECK_EQ(pthread_create(&t[i], NULL, event_waiter, NULL), 0);
    sleep_ns(2000000);
    pq_event_set(&event);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&event_seen), 4);
    CHECK_EQ(pq_event_wait(&event, 0), PQ_OK);
}

/* A waiter may free the event as soon as it sees it set: the setter must not
 * touch it afterwards (ASan reports a use-after-free if it does). */
static void *set_later(void *arg) {
    pq_event_set((pq_event *)arg);
    return NULL;
}

static void test_event_freed_by_waiter(void) {
    for (int i = 0; i < 2000; i++) {
        pq_event *ev = malloc(sizeof(*ev));
        CHECK(ev != NULL);
        pq_event_init(ev);
        pthread_t t;
        CHECK_EQ(pthread_create(&t, NULL, set_later, ev), 0);
        CHECK_EQ(pq_event_wait(ev, -1), PQ_OK);
        free(ev);
        pthread_join(t, NULL);
    }
}

static void test_bounded_waits(void) {
    pq_lane small;
    pq_item it;
    memset(&it, 0, sizeof(it));
    CHECK_EQ(pq_lane_init(&small, 2, 0, 0), PQ_OK);
    CHECK_EQ(pq_lane_pop(&small, &it, 0), PQ_EMPTY);
    int64_t t0 = pq_now_ns();
    CHECK_EQ(pq_lane_pop(&small, &it, 2000000), PQ_TIMEOUT);
    CHECK(pq_now_ns() - t0 >= 2000000);
    CHECK_EQ(pq_lane_push(&small, &it, 0), PQ_OK);
    CHECK_EQ(pq_lane_push(&small, &it, 0), PQ_OK);
    CHECK_EQ(pq_lane_push(&small, &it, 0), PQ_FULL);
    CHECK_EQ(pq_lane_push(&small, &it, 2000000), PQ_TIMEOUT);
    pq_lane_close(&small);
    CHECK_EQ(pq_lane_push(&small, &it, -1), PQ_CLOSED);
    CHECK_EQ(pq_lane_pop(&small, &it, -1), PQ_OK); /* close still drains */
    CHECK_EQ(pq_lane_pop(&small, &it, -1), PQ_OK);
    CHECK_EQ(pq_lane_pop(&small, &it, -1), PQ_CLOSED);
    pq_lane_destroy(&small);

    pq_lane *heap = NULL;
    CHECK_EQ(pq_lane_new(&heap, 3, 0, 0), PQ_EINVAL);
    CHECK_EQ(pq_lane_new(&heap, 4, 0, 0), PQ_OK);
    CHECK_EQ((uintptr_t)heap % PQ_FALSE_SHARING_RANGE, 0);
    CHECK_EQ(pq_lane_push(heap, &it, 0), PQ_OK);
    CHECK_EQ(pq_lane_pop(heap, &it, 0), PQ_OK);
    pq_lane_free(heap);
}

int main(void) {
    base_seed = pq_test_seed("test_wakeup");
    test_event();
    test_event_freed_by_waiter();
    test_bounded_waits();
    CHECK_EQ(pq_lane_init(&lane, 8, 0, 0), PQ_OK);
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++) CHECK_EQ(pthread_create(&cons[i], NULL, consumer, NULL), 0);
    for (int i = 0; i < PRODUCERS; i++)
        CHECK_EQ(pthread_create(&prod[i], NULL, producer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < PRODUCERS; i++) pthread_join(prod[i], NULL);
    pq_lane_close(&lane);
    for (int i = 0; i < CONSUMERS; i++) pthread_join(cons[i], NULL);
    CHECK_EQ(atomic_load(&received), PRODUCERS * PER_PRODUCER);
    printf("test_wakeup: worst pickup latency %.3f ms\n", atomic_load(&worst_latency) / 1e6);
    CHECK(atomic_load(&worst_latency) < MAX_LATENCY_NS);
    pq_lane_destroy(&lane);
    printf("test_wakeup: 4 passed, 0 failed\n");
    return 0;
}
