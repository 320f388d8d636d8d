# Declarations only: mirrors csrc/pq_common.h, pq_ring.h, pq_park.h, pq_lane.h,
# pq_pool.h and pq_kernels.h for the adapter.  Every function is nogil and noexcept (the C
# core never raises and never touches Python objects).
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t


cdef extern from "pq_common.h" nogil:
    enum:
        PQ_OK
        PQ_EMPTY
        PQ_FULL
        PQ_CLOSED
        PQ_TIMEOUT
        PQ_EINVAL
        PQ_ENOMEM
        PQ_ETHREAD
        PQ_INTERRUPTED
    const char *pq_status_str(int status) noexcept
    int64_t pq_now_ns() noexcept


cdef extern from "pq_ring.h" nogil:
    ctypedef struct pq_item:
        void *ctx
        int64_t begin
        int64_t end
        uintptr_t tag


cdef extern from "pq_park.h" nogil:
    ctypedef struct pq_park:
        pass
    ctypedef struct pq_event:
        pass
    void pq_park_init(pq_park *park) noexcept
    uint32_t pq_park_prepare(pq_park *park) noexcept
    void pq_park_cancel(pq_park *park) noexcept
    int pq_park_wait(pq_park *park, uint32_t epoch, int64_t timeout_ns) noexcept
    void pq_park_notify(pq_park *park, int n) noexcept
    void pq_event_init(pq_event *ev) noexcept
    void pq_event_set(pq_event *ev) noexcept
    int pq_event_is_set(pq_event *ev) noexcept
    int pq_event_wait(pq_event *ev, int64_t timeout_ns) noexcept


cdef extern from "pq_lane.h" nogil:
    ctypedef struct pq_lane:
        pass
    int pq_lane_init(pq_lane *lane, size_t capacity, int64_t spin_ns, int max_spinners) noexcept
    void pq_lane_destroy(pq_lane *lane) noexcept
    int pq_lane_new(pq_lane **out, size_t capacity, int64_t spin_ns, int max_spinners) noexcept
    void pq_lane_free(pq_lane *lane) noexcept
    int pq_lane_push(pq_lane *lane, const pq_item *item, int64_t timeout_ns) noexcept
    int pq_lane_push_many(pq_lane *lane, const pq_item *items, size_t n,
                          int64_t timeout_ns, size_t *pushed) noexcept
    int pq_lane_pop(pq_lane *lane, pq_item *out, int64_t timeout_ns) noexcept
    int pq_lane_pop_many(pq_lane *lane, pq_item *out, size_t n, int64_t timeout_ns,
                         size_t *popped) noexcept
    void pq_lane_close(pq_lane *lane) noexcept
    void pq_lane_quiesce(pq_lane *lane) noexcept
    int pq_lane_is_closed(pq_lane *lane) noexcept
    size_t pq_lane_size_approx(pq_lane *lane) noexcept


cdef extern from "pq_pool.h" nogil:
    enum:
        PQ_ITEM_NOT_RUN
        PQ_ABI_ITEM
        PQ_ABI_RANGE
    ctypedef int (*pq_item_fn)(const void *arg, void *out) noexcept nogil
    ctypedef int (*pq_range_fn)(const void *args, int64_t begin, int64_t end,
                                void *out) noexcept nogil
    ctypedef struct pq_batch_hook:
        void (*fn)(void *ctx) noexcept nogil
        void *ctx
    ctypedef struct pq_batch:
        pq_event done       # the only member the adapter touches: waits on it
    ctypedef struct pq_pool:
        pass
    void pq_batch_init(pq_batch *batch, void *fn, int abi, const void *args,
                       int64_t arg_stride, void *out, int64_t out_stride,
                       int32_t *status) noexcept
    int pq_batch_wait(pq_batch *batch, int64_t timeout_ns) noexcept
    void pq_batch_cancel(pq_batch *batch) noexcept
    int pq_batch_is_done(pq_batch *batch) noexcept
    int pq_batch_set_hook(pq_batch *batch, pq_batch_hook *hook) noexcept
    int64_t pq_batch_failed(pq_batch *batch) noexcept
    int64_t pq_batch_run_range(pq_batch *batch, int64_t begin, int64_t end) noexcept
    int pq_pool_create(pq_pool **out, int workers, size_t capacity) noexcept
    int pq_pool_submit(pq_pool *pool, pq_batch *batch, int64_t n_items, int64_t chunk,
                       int64_t timeout_ns) noexcept
    void pq_pool_close(pq_pool *pool, int cancel_pending) noexcept
    void pq_pool_shutdown(pq_pool *pool, int cancel_pending) noexcept
    void pq_pool_destroy(pq_pool *pool) noexcept
    int pq_pool_workers(const pq_pool *pool) noexcept
    uint64_t pq_pool_chunks_run(pq_pool *pool) noexcept
    size_t pq_pool_queued(pq_pool *pool) noexcept
    int pq_cpu_count() noexcept


cdef extern from "pq_kernels.h" nogil:
    int pq_kernel_add_one_f64(const void *arg, void *out) noexcept
    int pq_kernel_spin_f64(const void *arg, void *out) noexcept
    int pq_kernel_sqrt_or_fail_f64(const void *arg, void *out) noexcept
    int pq_kernel_scale2_f64_range(const void *args, int64_t begin, int64_t end,
                                   void *out) noexcept
