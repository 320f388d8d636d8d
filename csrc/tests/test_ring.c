/* Single-thread semantics of the ring: empty, full, wrap-around, FIFO order,
 * and every batch size against a reference model. */
#include <string.h>

#include "../pq_ring.h"
#include "pq_test.h"

static pq_item item_of(int64_t v) {
    pq_item it;
    memset(&it, 0, sizeof(it));
    it.begin = v;
    it.end = v + 1;
    it.tag = (uintptr_t)v * 3;
    return it;
}

static void test_init_rejects_bad_capacity(void) {
    pq_ring r;
    CHECK_EQ(pq_ring_init(&r, 0), PQ_EINVAL);
    CHECK_EQ(pq_ring_init(&r, 1), PQ_EINVAL);
    CHECK_EQ(pq_ring_init(&r, 3), PQ_EINVAL);
    CHECK_EQ(pq_ring_init(&r, 1000), PQ_EINVAL);
    CHECK_EQ(pq_ring_init(&r, 2), PQ_OK);
    CHECK_EQ(pq_ring_capacity(&r), 2);
    pq_ring_destroy(&r);
}

static void test_empty_and_full(void) {
    pq_ring r;
    pq_item it;
    CHECK_EQ(pq_ring_init(&r, 8), PQ_OK);
    CHECK_EQ(pq_ring_try_pop(&r, &it), PQ_EMPTY);
    for (int i = 0; i < 8; i++) {
        pq_item x = item_of(i);
        CHECK_EQ(pq_ring_try_push(&r, &x), PQ_OK);
    }
    pq_item x = item_of(99);
    CHECK_EQ(pq_ring_try_push(&r, &x), PQ_FULL);
    CHECK_EQ(pq_ring_size_approx(&r), 8);
    for (int i = 0; i < 8; i++) {
        CHECK_EQ(pq_ring_try_pop(&r, &it), PQ_OK);
        CHECK_EQ(it.begin, i);
        CHECK_EQ(it.tag, (uintptr_t)i * 3);
    }
    CHECK_EQ(pq_ring_try_pop(&r, &it), PQ_EMPTY);
    CHECK_EQ(pq_ring_size_approx(&r), 0);
    pq_ring_destroy(&r);
}

static void test_wrap_around_many_laps(void) {
    pq_ring r;
    pq_item it;
    CHECK_EQ(pq_ring_init(&r, 4), PQ_OK);
    int64_t next_push = 0, next_pop = 0;
    for (int lap = 0; lap < 1000; lap++) {
        int k = 1 + lap % 4;
        for (int i = 0; i < k; i++) {
            pq_item x = item_of(next_push++);
            CHECK_EQ(pq_ring_try_push(&r, &x), PQ_OK);
        }
        for (int i = 0; i < k; i++) {
            CHECK_EQ(pq_ring_try_pop(&r, &it), PQ_OK);
            CHECK_EQ(it.begin, next_pop++);
        }
    }
    CHECK_EQ(pq_ring_try_pop(&r, &it), PQ_EMPTY);
    pq_ring_destroy(&r);
}

/* Every push batch size and pop batch size against a FIFO model, from every
 * starting offset in the ring so the claims straddle the wrap point. */
static void test_every_batch_size(void) {
    enum { CAP = 16 };
    pq_item in[CAP + 4], out[CAP + 4];
    for (size_t kpush = 1; kpush <= CAP + 2; kpush++) {
        for (size_t kpop = 1; kpop <= CAP + 2; kpop++) {
            for (int offset = 0; offset < CAP; offset++) {
                pq_ring r;
                CHECK_EQ(pq_ring_init(&r, CAP), PQ_OK);
                int64_t model_head = 0, model_tail = 0; /* FIFO of consecutive ints */
                for (int i = 0; i < offset; i++) { /* move the start position */
                    pq_item x = item_of(model_tail++);
                    CHECK_EQ(pq_ring_try_push(&r, &x), PQ_OK);
                    CHECK_EQ(pq_ring_try_pop(&r, out), PQ_OK);
                    CHECK_EQ(out[0].begin, model_head++);
                }
                for (int round = 0; round < 6; round++) {
                    for (size_t i = 0; i < kpush; i++) in[i] = item_of(model_tail + (int64_t)i);
                    size_t free_cells = CAP - (size_t)(model_tail - model_head);
                    size_t want = kpush < free_cells ? kpush : free_cells;
                    CHECK_EQ(pq_ring_try_push_many(&r, in, kpush), want);
                    model_tail += (int64_t)want;
                    size_t held = (size_t)(model_tail - model_head);
                    size_t expect = kpop < held ? kpop : held;
                    size_t got = pq_ring_try_pop_many(&r, out, kpop);
                    CHECK_EQ(got, expect);
                    for (size_t i = 0; i < got; i++) CHECK_EQ(out[i].begin, model_head++);
                }
                while (model_head < model_tail) {
                    CHECK_EQ(pq_ring_try_pop(&r, out), PQ_OK);
                    CHECK_EQ(out[0].begin, model_head++);
                }
                CHECK_EQ(pq_ring_try_pop_many(&r, out, kpop), 0);
                CHECK_EQ(pq_ring_try_push_many(&r, in, 0), 0);
                pq_ring_destroy(&r);
            }
        }
    }
}

int main(void) {
    test_init_rejects_bad_capacity();
    test_empty_and_full();
    test_wrap_around_many_laps();
    test_every_batch_size();
    printf("test_ring: 4 passed, 0 failed\n");
    return 0;
}
