/*
 * pq_pool.h - the native lane: pthreads that run C function pointers over
 * arrays with no interpreter involved.
 *
 * Kernel ABIs (both return 0 for success, anything else is an error code that
 * lands in the item's status slot):
 *   item  : int fn(const void *arg, void *out)      arg = args + i*arg_stride,
 *                                                   out = out + i*out_stride
 *   range : int fn(const void *args, int64_t begin, int64_t end, void *out)
 *           called once per chunk with the base pointers; the kernel indexes.
 *
 * A batch is split into chunks of `chunk` items; each chunk is one ring cell
 * (a range descriptor).  The batch's `remaining` counter drops once per chunk,
 * not per item, and the last chunk sets `done`.
 *
 * Contract
 *  - status[i] is written exactly once per item, by the thread that ran its
 *    chunk: the kernel's return code, or PQ_ITEM_NOT_RUN for an item whose
 *    chunk was cancelled or never queued.  Range kernels report one code for
 *    their whole chunk.
 *  - Once pq_batch_wait returns PQ_OK, every status and out slot is visible to
 *    the waiter.
 *  - A batch must stay alive until done is set.
 */
#ifndef PQ_POOL_H
#define PQ_POOL_H

#include <pthread.h>

#include "pq_lane.h"

#define PQ_ITEM_NOT_RUN INT32_MIN

typedef int (*pq_item_fn)(const void *arg, void *out);
typedef int (*pq_range_fn)(const void *args, int64_t begin, int64_t end, void *out);

typedef enum pq_abi { PQ_ABI_ITEM = 0, PQ_ABI_RANGE = 1 } pq_abi;

/* A one-shot completion hook (how an event loop learns that a batch is done
 * without a thread waiting for it).  fn(ctx) runs once, in the thread that
 * completes the batch, after `done` is set.  The hook's owner keeps the hook
 * (and ctx) alive until fn runs; the batch itself may be gone by then. */
typedef struct pq_batch_hook {
    void (*fn)(void *ctx);
    void *ctx;
} pq_batch_hook;

typedef struct pq_batch {
    void *fn;                   /* pq_item_fn or pq_range_fn, per abi */
    int abi;
    const char *args;
    int64_t arg_stride;
    char *out;
    int64_t out_stride;
    int32_t *status;            /* one slot per item */
    _Atomic int64_t remaining;  /* chunks not yet completed, + 1 while submitting */
    _Atomic int64_t failed;     /* items whose status is not 0 */
    _Atomic int cancelled;      /* set once: chunks not yet started are not run */
    _Atomic(pq_batch_hook *) hook; /* NULL, a hook, or a "fired" marker once complete */
    pq_event done;
} pq_batch;

/* Fills the descriptor; n_items is used by pq_pool_submit. */
void pq_batch_init(pq_batch *batch, void *fn, int abi, const void *args, int64_t arg_stride,
                   void *out, int64_t out_stride, int32_t *status);
int pq_batch_wait(pq_batch *batch, int64_t timeout_ns);
/* Chunks that have not started when they are popped are marked
 * PQ_ITEM_NOT_RUN; chunks already running finish.  The batch still completes. */
void pq_batch_cancel(pq_batch *batch);
int pq_batch_is_done(pq_batch *batch);
/* Registers the batch's one hook.  PQ_OK: hook->fn will be called once.
 * PQ_CLOSED: the batch has completed (done is set when this returns) and the
 * hook will never be called.  PQ_EINVAL: a hook is already registered. */
int pq_batch_set_hook(pq_batch *batch, pq_batch_hook *hook);
int64_t pq_batch_failed(pq_batch *batch);

/* Runs items [begin, end) of a batch in the calling thread (no completion
 * accounting); returns the number that failed.  Also the "plain C loop". */
int64_t pq_batch_run_range(pq_batch *batch, int64_t begin, int64_t end);

typedef struct pq_pool pq_pool;

/* workers >= 1; capacity: ring cells, a power of two. */
int pq_pool_create(pq_pool **out, int workers, size_t capacity);
/* Queues n_items as chunks of `chunk` items; waits for ring space up to
 * timeout_ns.  On failure the chunks that did not go in are marked
 * PQ_ITEM_NOT_RUN and accounted, so the batch still completes. */
int pq_pool_submit(pq_pool *pool, pq_batch *batch, int64_t n_items, int64_t chunk,
                   int64_t timeout_ns);
/* Stops accepting work and wakes every worker, without waiting: with
 * cancel_pending, queued chunks are marked not run; otherwise they run first.
 * The workers exit once the ring is empty. */
void pq_pool_close(pq_pool *pool, int cancel_pending);
/* pq_pool_close, then joins every thread.  Idempotent. */
void pq_pool_shutdown(pq_pool *pool, int cancel_pending);
void pq_pool_destroy(pq_pool *pool);
int pq_pool_workers(const pq_pool *pool);
uint64_t pq_pool_chunks_run(pq_pool *pool);
/* Chunks queued and not yet taken by a worker: a snapshot of the ring's two
 * positions (no counter of its own, so the hot path pays nothing for it). */
size_t pq_pool_queued(pq_pool *pool);
/* Cores this process may run on (sched_getaffinity), at least 1. */
int pq_cpu_count(void);

#endif /* PQ_POOL_H */
