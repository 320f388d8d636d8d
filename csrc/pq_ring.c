/* pq_ring.c - see pq_ring.h for the contract and memory orders. */
#include "pq_ring.h"

#include <stdlib.h>
#include <string.h>

int pq_ring_init(pq_ring *ring, size_t capacity) {
    if (capacity < 2 || (capacity & (capacity - 1)) != 0) return PQ_EINVAL;
    if (capacity > ((size_t)1 << 40)) return PQ_EINVAL;
    pq_cell *cells = aligned_alloc(PQ_CACHE_LINE, capacity * sizeof(pq_cell));
    if (cells == NULL) return PQ_ENOMEM;
    memset(cells, 0, capacity * sizeof(pq_cell));
    for (size_t i = 0; i < capacity; i++) {
        /* relaxed: init runs before any other thread can see the ring. */
        atomic_store_explicit(&cells[i].seq, (uint64_t)i, memory_order_relaxed);
    }
    ring->cells = cells;
    ring->mask = (uint64_t)capacity - 1;
    atomic_store_explicit(&ring->enqueue_pos, 0, memory_order_relaxed);
    atomic_store_explicit(&ring->dequeue_pos, 0, memory_order_relaxed);
    return PQ_OK;
}

void pq_ring_destroy(pq_ring *ring) {
    free(ring->cells);
    ring->cells = NULL;
}

size_t pq_ring_capacity(const pq_ring *ring) { return (size_t)ring->mask + 1; }

size_t pq_ring_size_approx(pq_ring *ring) {
    /* relaxed: a statistic only. Dequeue first so that size never goes negative
     * when both counters move between the two loads. */
    uint64_t deq = atomic_load_explicit(&ring->dequeue_pos, memory_order_relaxed);
    uint64_t enq = atomic_load_explicit(&ring->enqueue_pos, memory_order_relaxed);
    return enq > deq ? (size_t)(enq - deq) : 0;
}

/* Count how many cells from pos on are in the wanted state, up to n.
 * `offset` is 0 for producers (free cell: seq == position) and 1 for consumers
 * (full cell: seq == position + 1).  *first_dif receives the difference seen at
 * the first cell, which tells full/empty (< 0) from a stale pos (> 0). */
static inline size_t _pq_ring_count_ready(pq_ring *ring, uint64_t pos, size_t n,
                                          uint64_t offset, int64_t *first_dif) {
    size_t ready = 0;
    while (ready < n) {
        pq_cell *cell = &ring->cells[(pos + ready) & ring->mask];
        /* acquire: pairs with the release store of seq by the thread that last
         * owned the cell, so its item (or its emptiness) is visible to us. */
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + ready + offset));
        if (ready == 0) *first_dif = dif;
        if (dif != 0) break;
        ready++;
    }
    return ready;
}

size_t pq_ring_try_push_many(pq_ring *ring, const pq_item *items, size_t n) {
    if (n == 0) return 0;
    /* relaxed: the position only picks a cell; the cell's seq carries the data. */
    uint64_t pos = atomic_load_explicit(&ring->enqueue_pos, memory_order_relaxed);
    size_t got;
    for (;;) {
        int64_t dif = 0;
        got = _pq_ring_count_ready(ring, pos, n, 0, &dif);
        if (got == 0) {
            if (dif < 0) return 0; /* the cell still holds last lap's item: full */
            pos = atomic_load_explicit(&ring->enqueue_pos, memory_order_relaxed);
            continue;
        }
        /* relaxed CAS: claiming positions publishes nothing; on failure pos is
         * reloaded with the current value. A 64-bit counter cannot wrap (ABA). */
        if (atomic_compare_exchange_weak_explicit(&ring->enqueue_pos, &pos, pos + got,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    for (size_t i = 0; i < got; i++) {
        pq_cell *cell = &ring->cells[(pos + i) & ring->mask];
        cell->item = items[i];
        /* release: publishes the item to the consumer that acquires seq. */
        atomic_store_explicit(&cell->seq, pos + i + 1, memory_order_release);
    }
    return got;
}

size_t pq_ring_try_pop_many(pq_ring *ring, pq_item *out, size_t n) {
    if (n == 0) return 0;
    uint64_t pos = atomic_load_explicit(&ring->dequeue_pos, memory_order_relaxed);
    size_t got;
    for (;;) {
        int64_t dif = 0;
        got = _pq_ring_count_ready(ring, pos, n, 1, &dif);
        if (got == 0) {
            if (dif < 0) return 0; /* the producer has not filled it yet: empty */
            pos = atomic_load_explicit(&ring->dequeue_pos, memory_order_relaxed);
            continue;
        }
        /* relaxed CAS: as on the push side. */
        if (atomic_compare_exchange_weak_explicit(&ring->dequeue_pos, &pos, pos + got,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    for (size_t i = 0; i < got; i++) {
        pq_cell *cell = &ring->cells[(pos + i) & ring->mask];
        out[i] = cell->item;
        /* release: our read of the item happens before the next lap's producer
         * (which acquires seq) overwrites it. */
        atomic_store_explicit(&cell->seq, pos + i + ring->mask + 1, memory_order_release);
    }
    return got;
}

int pq_ring_try_push(pq_ring *ring, const pq_item *item) {
    return pq_ring_try_push_many(ring, item, 1) == 1 ? PQ_OK : PQ_FULL;
}

int pq_ring_try_pop(pq_ring *ring, pq_item *out) {
    return pq_ring_try_pop_many(ring, out, 1) == 1 ? PQ_OK : PQ_EMPTY;
}
