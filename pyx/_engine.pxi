# Included by _native.pyx: the Python lane (Lane, its thread loop) and Engine, the
# native half of a TaskQueue: submitting, lane control, entry points of map
# and native batches.

@cython.final
cdef class Lane:
    """The Python lane's ring, shared by a queue and its lane threads.

    The threads hold the lane, never the queue (they hold that only weakly,
    as concurrent.futures workers do): a queue that is dropped without
    ``shutdown()`` closes the lane as it is freed, the threads drain what is
    queued and exit, and the last of them frees the ring.
    """
    cdef pq_lane *c_lane          # heap: it needs 128-byte alignment
    cdef int64_t c_budget_ns
    cdef bint c_forked            # made before os.fork(): leak, never free

    def __cinit__(self):
        self.c_lane = NULL

    def __dealloc__(self):
        cdef pq_item item
        cdef Task t
        if self.c_lane == NULL or self.c_forked:
            return
        # Nobody can run what is left (no queue, no thread): cancel it, so that
        # a waiter elsewhere does not wait forever.
        while pq_lane_pop(self.c_lane, &item, 0) == PQ_OK:
            t = <Task>item.ctx
            Py_DECREF(t)
            PQ_DBG(DBG_RING_REFS, -1)
            try:
                t.cancel()
            except BaseException:
                pass
        pq_lane_free(self.c_lane)
        self.c_lane = NULL

    def run(self):
        """Body of a Python-lane thread: park with the GIL released, then run
        tasks with the GIL held for up to one budget before parking again.
        Returns once the lane is closed and empty."""
        cdef pq_item item
        cdef int rc
        cdef int64_t deadline
        cdef unsigned n
        while True:
            with nogil:
                rc = pq_lane_pop(self.c_lane, &item, -1)
            if rc != PQ_OK:
                return
            deadline = pq_now_ns() + self.c_budget_ns
            n = 0
            while True:
                _run_popped(&item)
                n += 1
                if (n & 15) == 0 and pq_now_ns() >= deadline:
                    break
                if pq_lane_pop(self.c_lane, &item, 0) != PQ_OK:
                    break


cdef void _run_popped(pq_item *item) noexcept:
    cdef Task t = <Task>item.ctx
    Py_DECREF(t)   # the ring's reference; `t` holds its own
    PQ_DBG(DBG_RING_REFS, -1)
    try:
        _run_task(t, False)
    except BaseException:
        _log.exception("pyqueue lane thread: unexpected error")


# no_gc_clear: __dealloc__ closes the lane, so the cyclic GC must not drop the
# reference to it first (a queue in a cycle is freed by the collector).
@cython.no_gc_clear
cdef class Engine:
    """The native half of a TaskQueue: the Python lane and the native pool.

    Not for direct use: ``pyqueue.TaskQueue`` subclasses it and adds policy.
    """
    cdef pq_lane *c_lane          # borrowed from `lane`, which owns it
    cdef readonly Lane lane
    cdef readonly _Home _home    # the tasks' counters, and results() with no argument
    cdef pq_pool *c_pool
    cdef int c_native_workers
    cdef bint c_closed
    cdef bint c_forked
    cdef object c_broken         # exception raised at submit once broken
    cdef int64_t c_put_timeout_ns
    cdef readonly size_t capacity
    cdef _MapTunables c_map
    cdef _NativeTunables c_native

    def __cinit__(self, *args, **kwargs):
        self.c_pool = NULL
        self.c_lane = NULL
        self.c_closed = True
        self._home = _Home.__new__(_Home)

    def _engine_start(self, size_t capacity, int native_workers, double budget_s,
                      object put_timeout, object tunables):
        """Allocate the Python lane; the native pool starts on first use.
        ``tunables`` is a pyqueue._tunables.Tunables."""
        cdef size_t cap = 2
        if capacity < 1:
            raise ValueError("maxsize must be >= 1")
        _read_tunables(tunables, &self.c_map, &self.c_native)
        while cap < capacity:
            cap <<= 1
        cdef Lane lane = Lane.__new__(Lane)
        # Python-lane consumers never spin: they need the GIL anyway.
        _raise_status(pq_lane_new(&lane.c_lane, cap, 0, 0), "TaskQueue")
        lane.c_budget_ns = <int64_t>(budget_s * 1e9)
        self.lane = lane
        self.c_lane = lane.c_lane
        self.capacity = cap
        self.c_native_workers = native_workers
        self.c_put_timeout_ns = _timeout_ns(put_timeout)
        self.c_closed = False

    def __dealloc__(self):
        # A queue dropped without shutdown(): its lane threads drain what is
        # queued and exit (they hold the lane, not us); the native pool runs
        # what it holds and is joined here.
        if self.c_pool != NULL and not self.c_forked:
            with nogil:
                pq_pool_destroy(self.c_pool)
        self.c_pool = NULL
        if self.c_lane != NULL and not self.c_forked:
            pq_lane_close(self.c_lane)
        self.c_lane = NULL
        # The unread tasks refer to the home that holds them: let them go.
        if self._home is not None:
            self._home.release()

    @property
    def closed(self):
        """True once the queue stopped accepting work."""
        return self.c_closed

    def qsize(self):
        """Python tasks queued and not yet taken by a worker (a snapshot)."""
        return pq_lane_size_approx(self.c_lane) if self.c_lane != NULL else 0

    # -- submitting ----------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self.c_broken is not None:
            # A fresh instance each time: re-raising one stored instance would
            # chain every caller's frames onto its traceback and keep them alive.
            err = type(self.c_broken)(*self.c_broken.args)
            err.__cause__ = self.c_broken.__cause__
            raise err
        if self.c_closed:
            if self.c_forked:
                raise QueueClosed("this TaskQueue was created before os.fork(); "
                                  "create a new one in the child process")
            raise QueueClosed("cannot submit to a TaskQueue that is shut down")
        return 0

    cdef Task _new_task(self, object fn, tuple args, dict kwargs):
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        cdef Task t = Task.__new__(Task)
        PQ_DBG(DBG_UNFINISHED_TASKS, 1)
        _untrack(t)
        t.fn = fn
        t.args = args
        t.kwargs = kwargs if kwargs else None
        return t

    cdef int _push(self, Task t, int64_t timeout_ns) except -1:
        cdef pq_item item
        cdef int rc
        cdef int64_t deadline, slice_ns
        item.ctx = <void *>t
        item.begin = 0
        item.end = 0
        item.tag = 0
        Py_INCREF(t)   # the ring's reference, dropped by whoever pops the item
        PQ_DBG(DBG_RING_REFS, 1)
        rc = pq_lane_push(self.c_lane, &item, 0)
        if rc == PQ_FULL and timeout_ns != 0:
            deadline = pq_now_ns() + timeout_ns if timeout_ns > 0 else -1
            try:
                while rc == PQ_FULL or rc == PQ_TIMEOUT:
                    slice_ns = WAIT_SLICE_NS
                    if deadline > 0:
                        slice_ns = deadline - pq_now_ns()
                        if slice_ns <= 0:
                            rc = PQ_FULL
                            break
                        if slice_ns > WAIT_SLICE_NS:
                            slice_ns = WAIT_SLICE_NS
                    with nogil:
                        rc = pq_lane_push(self.c_lane, &item, slice_ns)
                    if rc == PQ_TIMEOUT:
                        PyErr_CheckSignals()
            except BaseException:
                PQ_DBG(DBG_RING_REFS, -1)
                PQ_DBG(DBG_UNFINISHED_TASKS, -1)   # the task is discarded
                Py_DECREF(t)
                raise
        if rc != PQ_OK:
            PQ_DBG(DBG_RING_REFS, -1)
            PQ_DBG(DBG_UNFINISHED_TASKS, -1)
            Py_DECREF(t)
            _raise_status(rc, "submit")
        # Counted only once it is in the ring (a refused task never existed),
        # so that `submitted` never goes down.
        _count_submitted(t, self._home)
        return 0

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on a worker; return its :class:`Task`.

        Waits (with the GIL released) while the queue is full, up to the
        queue's ``put_timeout``; then raises :class:`pyqueue.QueueFull`.
        """
        self._check_open()
        cdef Task t = self._new_task(fn, args, kwargs)
        self._push(t, self.c_put_timeout_ns)
        self._home.add(t)
        return t

    def submit_nowait(self, fn, /, *args, **kwargs):
        """Like ``submit`` but raise :class:`pyqueue.QueueFull` at once if full."""
        self._check_open()
        cdef Task t = self._new_task(fn, args, kwargs)
        self._push(t, 0)
        self._home.add(t)
        return t

    def _submit_detached(self, fn):
        """``submit(fn)`` for an owner that never reads the task (the
        Executor settles its own futures): not held for ``results()``."""
        self._check_open()
        cdef Task t = self._new_task(fn, (), None)
        self._push(t, self.c_put_timeout_ns)
        return t

    def submit_many(self, fn, iterable, *, bint star=False, timeout=None):
        """Submit ``fn(item)`` (or ``fn(*item)`` with ``star=True``) for every
        item; return the list of tasks.

        ``timeout`` bounds each wait for room in a full queue (default: the
        queue's ``put_timeout``).  If it runs out, :class:`pyqueue.QueueFull`
        is raised and the tasks already submitted keep running.
        """
        self._check_open()
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        cdef int64_t timeout_ns = self.c_put_timeout_ns if timeout is None else _timeout_ns(timeout)
        cdef list tasks = []
        cdef Task t
        for item in iterable:
            t = Task.__new__(Task)
            PQ_DBG(DBG_UNFINISHED_TASKS, 1)
            _untrack(t)
            t.fn = fn
            t.args = tuple(item) if star else (item,)
            self._push(t, timeout_ns)
            self._home.add(t)
            tasks.append(t)
        return tasks

    # -- the Python lane ---------------------------------------------------------

    def _quiesce_lane(self):
        """After close: wait until no submit is mid-push, so that what is left
        in the lane stays there (see pq_lane_quiesce)."""
        if self.c_lane != NULL and not self.c_forked:
            with nogil:
                pq_lane_quiesce(self.c_lane)

    def _close_lane(self):
        """Stop accepting work; lane threads drain what is queued, then exit."""
        self.c_closed = True
        if self.c_lane != NULL and not self.c_forked:
            pq_lane_close(self.c_lane)

    def _set_broken(self, exc):
        """Refuse all further work with ``exc`` (a worker initializer failed)."""
        self.c_broken = exc
        self._close_lane()

    def _cancel_queued(self, exc=None):
        """Take every queued task off the lane: cancel it, or fail it with
        ``exc``.  Returns the callables of the tasks it dropped, so that an
        owner (the Executor) can settle what they stood for."""
        cdef pq_item item
        cdef Task t
        cdef list dropped = []
        if self.c_lane == NULL or self.c_forked:
            return dropped
        while pq_lane_pop(self.c_lane, &item, 0) == PQ_OK:
            t = <Task>item.ctx
            Py_DECREF(t)
            PQ_DBG(DBG_RING_REFS, -1)
            if t.state != PENDING:
                continue
            dropped.append(t.fn)
            if exc is None:
                t.cancel()
            else:
                t.state = FINISHED
                t.failed = True
                if t.home is not None:
                    t.home.taken += 1
                    t.home.failed += 1
                t.value = exc
                t.fn = t.args = t.kwargs = None
                _complete(t)
        return dropped

    def _shutdown_native(self, bint cancel_pending, bint wait=True):
        """Close the native pool; with ``wait``, also join its threads (the
        join happens at the latest when the queue is freed)."""
        if self.c_pool != NULL and not self.c_forked:
            with nogil:
                if wait:
                    pq_pool_shutdown(self.c_pool, cancel_pending)
                else:
                    pq_pool_close(self.c_pool, cancel_pending)

    def _after_fork_in_child(self):
        """The threads are gone in the child: leak the C state, refuse work."""
        self.c_forked = True
        self.c_closed = True
        self.c_pool = NULL
        if self.lane is not None:
            self.lane.c_forked = True

    # -- map -----------------------------------------------------------------

    def _map_iter(self, fn, iterator, bint star, chunksize, int ahead, timeout,
                  bint adaptive_ahead=False):
        """Lazy ordered map over ``iterator``; see TaskQueue.map."""
        self._check_open()
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        return _MapIterator(self, fn, iterator, star, chunksize, ahead, timeout, adaptive_ahead)

    # -- native tasks ------------------------------------------------------------

    cdef pq_pool *_native_pool(self) except NULL:
        self._check_open()
        if self.c_pool == NULL:
            _raise_status(pq_pool_create(&self.c_pool, self.c_native_workers,
                                         self.c_native.ring_capacity),
                          "native pool")
        return self.c_pool

    def submit_native(self, fn, args, out, *, abi=None, chunksize=None, status=None):
        """Start a native batch: ``fn`` over every row of ``args`` into ``out``.

        Returns a :class:`NativeTask` at once; its ``result()`` waits and
        returns the int32 status array or raises :class:`pyqueue.NativeTaskError`.
        See ``TaskQueue.map_native`` for the arguments.
        """
        cdef Kernel k = as_kernel(fn, abi)
        cdef pq_pool *pool = self._native_pool()
        cdef NativeTask task = NativeTask._prepare(k, args, out, status)
        cdef int64_t chunk = _chunk_for(task.n, self.c_native_workers, chunksize, &self.c_native)
        cdef int rc
        task.submitted = True
        PQ_DBG(DBG_LIVE_BATCHES, 1)
        with nogil:
            rc = pq_pool_submit(pool, &task.c_batch, task.n, chunk, -1)
        _raise_status(rc, "submit_native")
        self._home.native_batches += 1
        return task

    # -- statistics --------------------------------------------------------------

    def stats(self):
        """A snapshot of the engine's counters: a :class:`pyqueue.EngineStats`.

        Cheap enough to call often (no lock, nothing on the hot path but a few
        integer increments per task).  See EngineStats for what is counted.
        """
        cdef _Home c = self._home
        cdef size_t native_queued = 0
        cdef uint64_t native_chunks = 0
        # The pool stays allocated after shutdown (it is freed with the
        # engine), so it can be read then too; in a forked child it is gone.
        if self.c_pool != NULL:
            native_queued = pq_pool_queued(self.c_pool)
            native_chunks = pq_pool_chunks_run(self.c_pool)
        # Only events are counted (a task adds to `submitted`, then to
        # `taken` and `completed` or `failed`, or to `cancelled`); the gauges
        # follow, so the snapshot balances by construction.
        cdef long long py_queued = <long long>(c.submitted - c.taken - c.cancelled)
        cdef long long running = <long long>(c.taken - c.completed - c.failed)
        return _EngineStats(
            submitted=c.submitted,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            in_flight=running,
            queued=py_queued + <long long>native_queued,
            queued_by_lane=(py_queued, native_queued),
            native_batches=c.native_batches,
            native_chunks_run=native_chunks,
        )
