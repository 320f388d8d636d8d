/* pq_pool.c - see pq_pool.h. */
#define _GNU_SOURCE
#include "pq_pool.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

struct pq_pool {
    pq_lane lane;
    int workers;
    int started;                /* threads actually running */
    _Atomic int cancel;         /* set before close when pending work is dropped */
    _Atomic int closed;         /* makes close idempotent */
    _Atomic int joined;         /* makes the join idempotent */
    _Atomic uint64_t chunks_run;/* statistic */
    pthread_t *threads;
};

int pq_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    return 1;
}

void pq_batch_init(pq_batch *batch, void *fn, int abi, const void *args, int64_t arg_stride,
                   void *out, int64_t out_stride, int32_t *status) {
    batch->fn = fn;
    batch->abi = abi;
    batch->args = (const char *)args;
    batch->arg_stride = arg_stride;
    batch->out = (char *)out;
    batch->out_stride = out_stride;
    batch->status = status;
    /* relaxed: the batch is not shared yet; pushing it to the ring publishes it. */
    atomic_store_explicit(&batch->remaining, 1, memory_order_relaxed);
    atomic_store_explicit(&batch->failed, 0, memory_order_relaxed);
    atomic_store_explicit(&batch->cancelled, 0, memory_order_relaxed);
    atomic_store_explicit(&batch->hook, NULL, memory_order_relaxed);
    pq_event_init(&batch->done);
}

/* Marks a batch whose completion has claimed the hook slot. */
static pq_batch_hook _pq_hook_fired;

int pq_batch_set_hook(pq_batch *batch, pq_batch_hook *hook) {
    pq_batch_hook *expected = NULL;
    /* release: publishes hook->fn/ctx to the completer, whose acq_rel exchange
     * in _pq_batch_release reads them.  acquire on failure: pairs with that
     * exchange, so we see the marker it stored. */
    if (atomic_compare_exchange_strong_explicit(&batch->hook, &expected, hook,
                                                memory_order_release, memory_order_acquire))
        return PQ_OK;
    if (expected != &_pq_hook_fired) return PQ_EINVAL;
    /* The completer took the slot just before setting done: wait the few
     * instructions (or a preemption) until it has. */
    pq_event_wait(&batch->done, -1);
    return PQ_CLOSED;
}

void pq_batch_cancel(pq_batch *batch) {
    /* relaxed: a worker that sees the flag late runs one more chunk, which is
     * what cancelling a running batch allows. */
    atomic_store_explicit(&batch->cancelled, 1, memory_order_relaxed);
}

int pq_batch_wait(pq_batch *batch, int64_t timeout_ns) {
    return pq_event_wait(&batch->done, timeout_ns);
}

int pq_batch_is_done(pq_batch *batch) { return pq_event_is_set(&batch->done); }

int64_t pq_batch_failed(pq_batch *batch) {
    /* relaxed: read after done was acquired, which orders every add before it. */
    return atomic_load_explicit(&batch->failed, memory_order_relaxed);
}

int64_t pq_batch_run_range(pq_batch *batch, int64_t begin, int64_t end) {
    int64_t failed = 0;
    int32_t *status = batch->status;
    if (batch->abi == PQ_ABI_RANGE) {
        int rc = ((pq_range_fn)batch->fn)(batch->args, begin, end, batch->out);
        for (int64_t i = begin; i < end; i++) status[i] = rc;
        return rc != 0 ? end - begin : 0;
    }
    pq_item_fn fn = (pq_item_fn)batch->fn;
    const char *arg = batch->args + begin * batch->arg_stride;
    char *out = batch->out + begin * batch->out_stride;
    for (int64_t i = begin; i < end; i++) {
        int rc = fn(arg, out);
        status[i] = rc;
        failed += rc != 0;
        arg += batch->arg_stride;
        out += batch->out_stride;
    }
    return failed;
}

/* Drops `chunks` from the batch's count; the thread that takes it to zero
 * completes the batch. */
static void _pq_batch_release(pq_batch *batch, int64_t chunks, int64_t failed) {
    if (failed)
        /* relaxed: ordered before done by the acq_rel decrement below. */
        atomic_fetch_add_explicit(&batch->failed, failed, memory_order_relaxed);
    /* acq_rel: release publishes this chunk's out/status writes; acquire (for
     * the last completer) collects every other chunk's, which pq_event_set then
     * republishes to the waiter. */
    if (atomic_fetch_sub_explicit(&batch->remaining, chunks, memory_order_acq_rel) != chunks)
        return;
    /* The hook slot is claimed before done is set: once done is set the waiter
     * may free the batch, so nothing in it may be touched afterwards.
     * acq_rel: acquire pairs with the release CAS of pq_batch_set_hook (hook
     * fields visible); release pairs with its failure acquire. */
    pq_batch_hook *hook =
        atomic_exchange_explicit(&batch->hook, &_pq_hook_fired, memory_order_acq_rel);
    pq_event_set(&batch->done);
    if (hook != NULL) hook->fn(hook->ctx); /* the hook outlives the batch (see pq_batch_hook) */
}

static void _pq_mark_not_run(pq_batch *batch, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) batch->status[i] = PQ_ITEM_NOT_RUN;
}

static void *_pq_worker_main(void *arg) {
    pq_pool *pool = arg;
    pq_item item;
    while (pq_lane_pop(&pool->lane, &item, -1) == PQ_OK) {
        pq_batch *batch = item.ctx;
        int64_t failed;
        /* relaxed: cancel is set before close; seeing it late only runs a
         * chunk that shutdown would otherwise have marked, which is allowed. */
        if (atomic_load_explicit(&pool->cancel, memory_order_relaxed) ||
            /* relaxed: see pq_batch_cancel. */
            atomic_load_explicit(&batch->cancelled, memory_order_relaxed)) {
            _pq_mark_not_run(batch, item.begin, item.end);
            failed = item.end - item.begin;
        } else {
            failed = pq_batch_run_range(batch, item.begin, item.end);
        }
        /* relaxed: a statistic. */
        atomic_fetch_add_explicit(&pool->chunks_run, 1, memory_order_relaxed);
        _pq_batch_release(batch, 1, failed);
    }
    return NULL;
}

int pq_pool_create(pq_pool **out, int workers, size_t capacity) {
    if (out == NULL || workers < 1 || workers > 4096) return PQ_EINVAL;
    /* The embedded lane needs 128-byte alignment, which calloc does not give. */
    size_t size = (sizeof(pq_pool) + PQ_FALSE_SHARING_RANGE - 1) & ~(size_t)(PQ_FALSE_SHARING_RANGE - 1);
    pq_pool *pool = aligned_alloc(PQ_FALSE_SHARING_RANGE, size);
    if (pool == NULL) return PQ_ENOMEM;
    memset(pool, 0, size);
    /* Spin only when the workers leave a core free for the submitter. */
    int cores = pq_cpu_count();
    int64_t spin_ns = workers < cores - 1 ? 20000 : 0;
    int rc = pq_lane_init(&pool->lane, capacity, spin_ns, cores / 2 > 0 ? cores / 2 : 1);
    if (rc != PQ_OK) { free(pool); return rc; }
    pool->threads = calloc((size_t)workers, sizeof(pthread_t));
    if (pool->threads == NULL) { pq_lane_destroy(&pool->lane); free(pool); return PQ_ENOMEM; }
    pool->workers = workers;
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&pool->threads[i], NULL, _pq_worker_main, pool) != 0) {
            pq_pool_shutdown(pool, 1);
            pq_pool_destroy(pool);
            return PQ_ETHREAD;
        }
        pool->started++;
    }
    *out = pool;
    return PQ_OK;
}

int pq_pool_submit(pq_pool *pool, pq_batch *batch, int64_t n_items, int64_t chunk,
                   int64_t timeout_ns) {
    if (n_items < 0 || chunk < 1) return PQ_EINVAL;
    enum { STAGE = 64 };
    pq_item staged[STAGE];
    int64_t n_chunks = (n_items + chunk - 1) / chunk;
    /* relaxed: nobody else sees the batch before its first chunk is pushed.
     * The extra 1 keeps the batch open until every chunk is queued. */
    atomic_store_explicit(&batch->remaining, n_chunks + 1, memory_order_relaxed);
    int rc = PQ_OK;
    int64_t next = 0; /* first item not yet queued */
    while (next < n_items) {
        size_t k = 0;
        for (int64_t b = next; b < n_items && k < STAGE; b += chunk, k++) {
            staged[k].ctx = batch;
            staged[k].begin = b;
            staged[k].end = b + chunk < n_items ? b + chunk : n_items;
            staged[k].tag = 0;
        }
        size_t pushed = 0;
        rc = pq_lane_push_many(&pool->lane, staged, k, timeout_ns, &pushed);
        next = pushed == k ? staged[k - 1].end : staged[pushed].begin;
        if (rc != PQ_OK) break;
    }
    int64_t unqueued = 0, unqueued_items = n_items - next;
    if (unqueued_items > 0) {
        _pq_mark_not_run(batch, next, n_items);
        unqueued = (unqueued_items + chunk - 1) / chunk;
    }
    _pq_batch_release(batch, unqueued + 1, unqueued_items);
    return rc;
}

void pq_pool_close(pq_pool *pool, int cancel_pending) {
    /* relaxed: workers read it per chunk; see _pq_worker_main. A later close
     * with cancel_pending still cancels what is left. */
    if (cancel_pending) atomic_store_explicit(&pool->cancel, 1, memory_order_relaxed);
    /* acq_rel exchange: exactly one caller closes the lane. */
    if (atomic_exchange_explicit(&pool->closed, 1, memory_order_acq_rel)) return;
    pq_lane_close(&pool->lane);
}

void pq_pool_shutdown(pq_pool *pool, int cancel_pending) {
    pq_pool_close(pool, cancel_pending);
    /* acq_rel exchange: exactly one caller joins the threads. */
    if (atomic_exchange_explicit(&pool->joined, 1, memory_order_acq_rel)) return;
    for (int i = 0; i < pool->started; i++) pthread_join(pool->threads[i], NULL);
    /* Workers drain before exiting; anything left (no worker started, or a
     * submit that raced with close) is accounted here, once no submitter is
     * still pushing, so no batch waits forever. */
    pq_lane_quiesce(&pool->lane);
    pq_item item;
    while (pq_ring_try_pop(&pool->lane.ring, &item) == PQ_OK) {
        pq_batch *batch = item.ctx;
        _pq_mark_not_run(batch, item.begin, item.end);
        _pq_batch_release(batch, 1, item.end - item.begin);
    }
}

void pq_pool_destroy(pq_pool *pool) {
    if (pool == NULL) return;
    pq_pool_shutdown(pool, 1);
    pq_lane_destroy(&pool->lane);
    free(pool->threads);
    free(pool);
}

int pq_pool_workers(const pq_pool *pool) { return pool->workers; }

uint64_t pq_pool_chunks_run(pq_pool *pool) {
    /* relaxed: a statistic. */
    return atomic_load_explicit(&pool->chunks_run, memory_order_relaxed);
}

size_t pq_pool_queued(pq_pool *pool) { return pq_lane_size_approx(&pool->lane); }
