/* pq_lane.c - see pq_lane.h. */
#include "pq_lane.h"

#include <stdlib.h>
#include <time.h>

int pq_lane_init(pq_lane *lane, size_t capacity, int64_t spin_ns, int max_spinners) {
    int rc = pq_ring_init(&lane->ring, capacity);
    if (rc != PQ_OK) return rc;
    pq_park_init(&lane->not_empty);
    pq_park_init(&lane->not_full);
    atomic_store_explicit(&lane->closed, 0, memory_order_relaxed);
    atomic_store_explicit(&lane->pushers, 0, memory_order_relaxed);
    atomic_store_explicit(&lane->spinners, 0, memory_order_relaxed);
    lane->spin_ns = spin_ns > 0 ? spin_ns : 0;
    lane->max_spinners = max_spinners > 0 ? max_spinners : 0;
    return PQ_OK;
}

void pq_lane_destroy(pq_lane *lane) { pq_ring_destroy(&lane->ring); }

int pq_lane_new(pq_lane **out, size_t capacity, int64_t spin_ns, int max_spinners) {
    /* aligned_alloc wants a size that is a multiple of the alignment. */
    size_t size = (sizeof(pq_lane) + PQ_FALSE_SHARING_RANGE - 1) & ~(size_t)(PQ_FALSE_SHARING_RANGE - 1);
    pq_lane *lane = aligned_alloc(PQ_FALSE_SHARING_RANGE, size);
    if (lane == NULL) return PQ_ENOMEM;
    int rc = pq_lane_init(lane, capacity, spin_ns, max_spinners);
    if (rc != PQ_OK) { free(lane); return rc; }
    *out = lane;
    return PQ_OK;
}

void pq_lane_free(pq_lane *lane) {
    if (lane == NULL) return;
    pq_lane_destroy(lane);
    free(lane);
}

int pq_lane_is_closed(pq_lane *lane) {
    /* seq_cst: with the seq_cst pushers increment in push_many this is a
     * Dekker pair: a pusher either sees closed, or close's owner sees the
     * pusher in pq_lane_quiesce (and, through the order, every earlier push). */
    return atomic_load_explicit(&lane->closed, memory_order_seq_cst);
}

void pq_lane_close(pq_lane *lane) {
    /* seq_cst: see pq_lane_is_closed. */
    atomic_store_explicit(&lane->closed, 1, memory_order_seq_cst);
    pq_park_notify(&lane->not_empty, 0);
    pq_park_notify(&lane->not_full, 0);
}

void pq_lane_quiesce(pq_lane *lane) {
    /* acquire: pairs with the release decrement, so the caller's drain sees
     * the items the last pusher put in. Pushers blocked on a full ring were
     * woken by close and leave at once; others are mid-claim: a short wait. */
    while (atomic_load_explicit(&lane->pushers, memory_order_acquire) != 0) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}

size_t pq_lane_size_approx(pq_lane *lane) { return pq_ring_size_approx(&lane->ring); }

static int64_t _pq_deadline(int64_t timeout_ns) {
    return timeout_ns > 0 ? pq_now_ns() + timeout_ns : timeout_ns;
}

/* Time left before deadline: -1 = unlimited, 0 = expired. */
static int64_t _pq_left(int64_t deadline) {
    if (deadline < 0) return -1;
    if (deadline == 0) return 0;
    int64_t left = deadline - pq_now_ns();
    return left > 0 ? left : 0;
}

int pq_lane_push_many(pq_lane *lane, const pq_item *items, size_t n, int64_t timeout_ns,
                      size_t *pushed) {
    size_t done = 0;
    int rc = PQ_OK;
    int64_t deadline = _pq_deadline(timeout_ns);
    /* seq_cst: announced before the closed check below (see pq_lane_is_closed). */
    atomic_fetch_add_explicit(&lane->pushers, 1, memory_order_seq_cst);
    while (done < n) {
        if (pq_lane_is_closed(lane)) { rc = PQ_CLOSED; break; }
        size_t got = pq_ring_try_push_many(&lane->ring, items + done, n - done);
        if (got > 0) {
            done += got;
            /* One notify per claim: wakes as many consumers as items went in. */
            pq_park_notify(&lane->not_empty, got > 1 ? 0 : 1);
            continue;
        }
        int64_t left = _pq_left(deadline);
        if (left == 0) { rc = timeout_ns == 0 ? PQ_FULL : PQ_TIMEOUT; break; }
        /* Announce, then try once more: a consumer that freed a cell after our
         * failed attempt either sees us parked or we see its cell here. */
        uint32_t epoch = pq_park_prepare(&lane->not_full);
        got = pq_ring_try_push_many(&lane->ring, items + done, n - done);
        if (got > 0 || pq_lane_is_closed(lane)) {
            pq_park_cancel(&lane->not_full);
            if (got > 0) {
                done += got;
                pq_park_notify(&lane->not_empty, got > 1 ? 0 : 1);
            }
            continue;
        }
        pq_park_wait(&lane->not_full, epoch, left);
    }
    /* release: see pq_lane_quiesce. */
    atomic_fetch_sub_explicit(&lane->pushers, 1, memory_order_release);
    if (pushed) *pushed = done;
    return rc;
}

int pq_lane_push(pq_lane *lane, const pq_item *item, int64_t timeout_ns) {
    return pq_lane_push_many(lane, item, 1, timeout_ns, NULL);
}

/* Spin before parking, if this lane allows it and the spinner cap has room. */
static size_t _pq_lane_spin_pop(pq_lane *lane, pq_item *out, size_t n) {
    if (lane->spin_ns == 0) return 0;
    /* relaxed: the cap is a heuristic; exceeding it briefly is harmless. */
    if (atomic_fetch_add_explicit(&lane->spinners, 1, memory_order_relaxed) >=
        lane->max_spinners) {
        atomic_fetch_sub_explicit(&lane->spinners, 1, memory_order_relaxed);
        return 0;
    }
    size_t got = 0;
    int64_t until = pq_now_ns() + lane->spin_ns;
    unsigned pauses = 1;
    while (!pq_lane_is_closed(lane)) {
        got = pq_ring_try_pop_many(&lane->ring, out, n);
        if (got > 0 || pq_now_ns() >= until) break;
        for (unsigned i = 0; i < pauses; i++) PQ_CPU_RELAX();
        if (pauses < 64) pauses <<= 1;
    }
    atomic_fetch_sub_explicit(&lane->spinners, 1, memory_order_relaxed);
    return got;
}

int pq_lane_pop_many(pq_lane *lane, pq_item *out, size_t n, int64_t timeout_ns,
                     size_t *popped) {
    size_t got = 0;
    int rc = PQ_OK;
    int64_t deadline = _pq_deadline(timeout_ns);
    int spun = 0;
    for (;;) {
        got = pq_ring_try_pop_many(&lane->ring, out, n);
        if (got > 0) break;
        if (pq_lane_is_closed(lane)) {
            /* Items pushed before close are visible (acquire above); a last
             * look drains any that raced with our first attempt. */
            got = pq_ring_try_pop_many(&lane->ring, out, n);
            if (got == 0) rc = PQ_CLOSED;
            break;
        }
        int64_t left = _pq_left(deadline);
        if (left == 0) { rc = timeout_ns == 0 ? PQ_EMPTY : PQ_TIMEOUT; break; }
        if (!spun) {
            spun = 1;
            got = _pq_lane_spin_pop(lane, out, n);
            if (got > 0) break;
        }
        uint32_t epoch = pq_park_prepare(&lane->not_empty);
        got = pq_ring_try_pop_many(&lane->ring, out, n);
        if (got > 0 || pq_lane_is_closed(lane)) {
            pq_park_cancel(&lane->not_empty);
            if (got > 0) break;
            continue;
        }
        pq_park_wait(&lane->not_empty, epoch, left);
    }
    if (got > 0) pq_park_notify(&lane->not_full, 0);
    if (popped) *popped = got;
    return rc;
}

int pq_lane_pop(pq_lane *lane, pq_item *out, int64_t timeout_ns) {
    return pq_lane_pop_many(lane, out, 1, timeout_ns, NULL);
}
