# Included by _native.pyx: fork generations, status codes -> exceptions, timeouts, and
# the signal-checking wait every blocking call uses.

# Debug counters (a PYQUEUE_DEBUG=1 build): what the engine holds, which the
# test suite asserts is back to zero at each test's teardown.  In a release
# build every PQ_DBG is an empty macro.
cdef extern from *:
    """
    #ifdef PYQUEUE_DEBUG_COUNTERS
    #define PQ_DEBUG_BUILD 1
    static long long pq_dbg_counters[3];
    #define PQ_DBG(i, n) ((void)__atomic_fetch_add(&pq_dbg_counters[i], (n), __ATOMIC_RELAXED))
    #define PQ_DBG_GET(i) __atomic_load_n(&pq_dbg_counters[i], __ATOMIC_RELAXED)
    #else
    #define PQ_DEBUG_BUILD 0
    #define PQ_DBG(i, n) ((void)0)
    #define PQ_DBG_GET(i) 0LL
    #endif
    """
    const int PQ_DEBUG_BUILD
    void PQ_DBG(int counter, long long n) noexcept nogil
    long long PQ_DBG_GET(int counter) noexcept nogil

cdef enum:
    DBG_UNFINISHED_TASKS = 0   # created, not yet completed, cancelled or discarded
    DBG_RING_REFS = 1          # references held by Python-lane ring cells
    DBG_LIVE_BATCHES = 2       # submitted NativeTasks not yet freed


def _debug_counters():
    """The debug counters of a PYQUEUE_DEBUG=1 build (a dict), else None."""
    if not PQ_DEBUG_BUILD:
        return None
    return {
        "unfinished_tasks": PQ_DBG_GET(DBG_UNFINISHED_TASKS),
        "ring_refs": PQ_DBG_GET(DBG_RING_REFS),
        "live_batches": PQ_DBG_GET(DBG_LIVE_BATCHES),
    }


# Bumped in a forked child: a task of an older generation can never complete
# there, because the threads that would run it stayed in the parent.
cdef int _fork_generation = 0

# Blocking waits are cut into slices so that Ctrl-C is seen promptly.
cdef int64_t WAIT_SLICE_NS = 50_000_000
NOT_RUN = PQ_ITEM_NOT_RUN


cdef int _raise_status(int rc, str what) except -1:
    """The one place where C status codes become exceptions."""
    if rc == PQ_OK:
        return 0
    if rc == PQ_CLOSED:
        raise QueueClosed(f"{what}: the queue is shut down")
    if rc == PQ_FULL or rc == PQ_TIMEOUT:
        raise QueueFull(f"{what}: the queue is full")
    if rc == PQ_EINVAL:
        raise ValueError(f"{what}: invalid argument")
    if rc == PQ_ENOMEM:
        raise MemoryError(what)
    if rc == PQ_ETHREAD:
        raise RuntimeError(f"{what}: cannot start a worker thread")
    raise RuntimeError(f"{what}: {pq_status_str(rc).decode()}")


cdef int64_t _timeout_ns(object timeout) except? -2:
    """None -> -1 (no limit); seconds -> ns, negative treated as 0."""
    if timeout is None:
        return -1
    cdef double t = timeout
    if t != t:
        raise ValueError("timeout must be a number, not NaN")
    if t <= 0:
        return 0
    if t > 1e9:
        return -1
    return <int64_t>(t * 1e9)


cdef int _wait_event(pq_event *ev, int64_t timeout_ns) except -1:
    """Wait with the GIL released, in slices that check for signals.
    Returns 1 if the event is set, 0 on timeout."""
    cdef int64_t deadline = pq_now_ns() + timeout_ns if timeout_ns > 0 else timeout_ns
    cdef int64_t slice_ns
    while not pq_event_is_set(ev):
        if deadline == 0:
            return 0
        slice_ns = WAIT_SLICE_NS
        if deadline > 0:
            slice_ns = deadline - pq_now_ns()
            if slice_ns <= 0:
                return 0
            if slice_ns > WAIT_SLICE_NS:
                slice_ns = WAIT_SLICE_NS
        with nogil:
            pq_event_wait(ev, slice_ns)
        PyErr_CheckSignals()
    return 1


def _bump_fork_generation():
    """Called once in a forked child: every task and native batch created
    before the fork belongs to threads that stayed in the parent."""
    global _fork_generation
    _fork_generation += 1
