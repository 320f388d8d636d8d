/*
 * pq_lane.h - a ring plus the parking that makes it blocking: the hand-off
 * point between submitters and one set of worker threads.
 *
 * The native pool (pq_pool.h) runs its pthreads on a lane; the Python adapter
 * runs its Python-lane threads on another lane of the same type, so both share
 * this code for backpressure, wake-ups and shutdown.
 *
 * Contract
 *  - push blocks while the ring is full, up to timeout_ns (< 0: no limit,
 *    0: do not wait); it returns PQ_OK, PQ_FULL (timeout 0), PQ_TIMEOUT or
 *    PQ_CLOSED.  It never spins holding anything: a full ring parks.
 *  - pop blocks while the ring is empty, the same way.  After close, pop still
 *    returns the items that remain and only then PQ_CLOSED, so close + join
 *    drains; an owner that wants to cancel pops the rest itself.
 *  - A push makes a system call only if a consumer is parked; a pop only if a
 *    producer is parked.
 *  - Idle consumers spin with exponential PAUSE backoff for up to spin_ns
 *    before parking, and at most max_spinners of them at once; spin_ns = 0
 *    disables spinning (the pool does this when it has workers >= cores - 1,
 *    so spinning workers never steal the submitter's core).
 */
#ifndef PQ_LANE_H
#define PQ_LANE_H

#include "pq_park.h"
#include "pq_ring.h"

typedef struct pq_lane {
    pq_ring ring;
    pq_park not_empty;       /* consumers park here */
    pq_park not_full;        /* producers park here */
    _Atomic int closed;      /* 0 -> 1 once; read by everyone */
    _Atomic int pushers;     /* producers inside pq_lane_push_many */
    _Atomic int spinners;    /* consumers spinning right now */
    int64_t spin_ns;
    int max_spinners;
} pq_lane;

/* A lane has 128-byte-aligned members: one that lives on the heap must come
 * from pq_lane_new (malloc and friends guarantee only 16 bytes). */
int pq_lane_init(pq_lane *lane, size_t capacity, int64_t spin_ns, int max_spinners);
void pq_lane_destroy(pq_lane *lane);
int pq_lane_new(pq_lane **out, size_t capacity, int64_t spin_ns, int max_spinners);
void pq_lane_free(pq_lane *lane);

int pq_lane_push(pq_lane *lane, const pq_item *item, int64_t timeout_ns);
/* Pushes all n items (in order, in as few claims as the free space allows)
 * unless the wait fails; *pushed receives how many went in. */
int pq_lane_push_many(pq_lane *lane, const pq_item *items, size_t n, int64_t timeout_ns,
                      size_t *pushed);
int pq_lane_pop(pq_lane *lane, pq_item *out, int64_t timeout_ns);
/* Pops between 1 and n items, waiting like pq_lane_pop for the first one. */
int pq_lane_pop_many(pq_lane *lane, pq_item *out, size_t n, int64_t timeout_ns,
                     size_t *popped);

void pq_lane_close(pq_lane *lane);
/* After close: waits until no producer is inside a push, so that whatever is
 * in the ring afterwards stays there until someone pops it.  An owner whose
 * consumers have exited calls it before draining what is left. */
void pq_lane_quiesce(pq_lane *lane);
int pq_lane_is_closed(pq_lane *lane);
size_t pq_lane_size_approx(pq_lane *lane);

#endif /* PQ_LANE_H */
