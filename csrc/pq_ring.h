/*
 * pq_ring.h - bounded multi-producer multi-consumer ring (Vyukov's array queue).
 *
 * Contract
 *  - Capacity is a power of two >= 2, fixed at init.
 *  - Each cell is one 64-byte cache line holding a sequence number and one
 *    pq_item (a 32-byte task descriptor the ring never interprets).
 *  - try_push / try_pop never block and never allocate; they return PQ_FULL /
 *    PQ_EMPTY when no cell is ready.  The *_many variants claim up to k
 *    consecutive ready cells with a single CAS and return how many they took.
 *  - Items pushed by one producer are popped in the order that producer pushed
 *    them; there is no global order between producers.
 *  - Safe for any number of concurrent producers and consumers.  init and
 *    destroy are not thread safe.
 *
 * Memory orders (see csrc/README.md for the full argument)
 *  - enqueue_pos / dequeue_pos: loads and CAS are relaxed.  They only select a
 *    position; no data is published through them.
 *  - cell.seq: load is acquire, store is release.  A producer's release store
 *    of seq = pos + 1 publishes the item it wrote to the consumer whose acquire
 *    load observes pos + 1; a consumer's release store of seq = pos + capacity
 *    hands the now-empty cell to the producer of the next lap.
 */
#ifndef PQ_RING_H
#define PQ_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "pq_common.h"

/* A task descriptor.  The ring copies it by value and never looks inside. */
typedef struct pq_item {
    void *ctx;        /* batch (native lane) or owned object (Python lane) */
    int64_t begin;    /* first index of a range descriptor */
    int64_t end;      /* one past the last index */
    uintptr_t tag;    /* free for the lane's owner */
} pq_item;

typedef struct pq_cell {
    _Atomic uint64_t seq;
    pq_item item;
    char pad[PQ_CACHE_LINE - sizeof(uint64_t) - sizeof(pq_item)];
} pq_cell;

_Static_assert(sizeof(pq_cell) == PQ_CACHE_LINE, "a cell is one cache line");

typedef struct pq_ring {
    /* Producers' counter, alone in its 128-byte region. */
    _Alignas(PQ_FALSE_SHARING_RANGE) _Atomic uint64_t enqueue_pos;
    /* Consumers' counter, alone in its 128-byte region. */
    _Alignas(PQ_FALSE_SHARING_RANGE) _Atomic uint64_t dequeue_pos;
    /* Read-only after init. */
    _Alignas(PQ_FALSE_SHARING_RANGE) pq_cell *cells;
    uint64_t mask;
} pq_ring;

/* capacity must be a power of two >= 2: PQ_OK, PQ_EINVAL or PQ_ENOMEM. */
int pq_ring_init(pq_ring *ring, size_t capacity);
void pq_ring_destroy(pq_ring *ring);

int pq_ring_try_push(pq_ring *ring, const pq_item *item);
int pq_ring_try_pop(pq_ring *ring, pq_item *out);

/* Claim up to n consecutive cells with one CAS; returns the number taken. */
size_t pq_ring_try_push_many(pq_ring *ring, const pq_item *items, size_t n);
size_t pq_ring_try_pop_many(pq_ring *ring, pq_item *out, size_t n);

size_t pq_ring_capacity(const pq_ring *ring);
/* A snapshot that may be stale by the time it returns; never negative. */
size_t pq_ring_size_approx(pq_ring *ring);

#endif /* PQ_RING_H */
