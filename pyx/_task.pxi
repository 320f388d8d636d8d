# Included by _native.pyx: Task (one Python task), the unyielded-task list behind
# results(), completion and callbacks, and running a task.

# Task states.  Every transition happens with the GIL held.
cdef enum:
    PENDING = 0
    RUNNING = 1
    FINISHED = 2
    CANCELLED = 3

_STATE_NAMES = ("pending", "running", "finished", "cancelled")

@cython.final
@cython.freelist(512)
cdef class Task:
    """The handle of one submitted Python task.

    Created by ``TaskQueue.submit`` and friends, never directly.  It follows the
    :class:`concurrent.futures.Future` contract for ``result``, ``exception``,
    ``done``, ``cancel`` and ``add_done_callback``.

    Thread safety: every method may be called from any thread.  Waiting
    releases the GIL.  ``result()`` without a timeout runs a task that has not
    started yet in the calling thread (caller-runs), which saves two thread
    hand-offs; a task that is already running is waited for.
    """
    # Kept to 80 bytes (96 with the GC header): the task is most of W1's
    # per-task memory, and the 120 bytes it had grown to (144 with the
    # header) cost 12-20% of W1's throughput on the 2-core VM, as did 40
    # bytes of padding added to the 80-byte task of 1e7210f.  Hence one-byte
    # flags, no cdef methods (a vtable pointer), and one reference to the
    # queue's _Home for both its counters and its unyielded list.
    cdef object fn
    cdef tuple args
    cdef dict kwargs
    cdef object value          # the result, or the exception if failed
    cdef list callbacks
    cdef _Home home            # set once the task is queued (counted); None before
    cdef unsigned char state
    cdef unsigned char failed  # a bint
    cdef int generation        # _fork_generation when the task was created
    cdef pq_event c_done
    cdef uint32_t cell         # 1 + its index in home's unyielded cells; 0 if not held

    def __cinit__(self):
        pq_event_init(&self.c_done)
        self.generation = _fork_generation

    def __repr__(self):
        extra = ""
        if self.state == FINISHED:
            extra = f" raised {type(self.value).__name__}" if self.failed else " returned"
        return f"<pyqueue.Task {_STATE_NAMES[self.state]}{extra}>"

    def done(self):
        """True once the task finished, failed or was cancelled."""
        return self.state >= FINISHED

    def running(self):
        """True while a worker (or a waiting caller) runs the task."""
        return self.state == RUNNING

    def cancelled(self):
        """True if ``cancel()`` stopped the task before it started."""
        return self.state == CANCELLED

    def cancel(self):
        """Cancel the task if it has not started; returns whether it is cancelled."""
        if self.state == PENDING:
            self.state = CANCELLED
            if self.home is not None:
                self.home.cancelled += 1
            self.fn = self.args = self.kwargs = None
            _complete(self)
            return True
        return self.state == CANCELLED

    def _run_if_pending(self):
        """Run the task in the calling thread if no worker has started it
        (caller-runs for fan-in); returns whether it ran here."""
        if self.generation != _fork_generation:
            if self.state < FINISHED:
                raise QueueClosed("this task belongs to a TaskQueue created before "
                                  "os.fork(); it cannot complete in the child process")
            return False
        if self.state != PENDING:
            return False
        _run_task(self, True)
        return True

    def result(self, timeout=None):
        """Return the task's value, or re-raise its exception with its traceback.

        Raises
        ------
        TimeoutError
            If ``timeout`` seconds pass first (the task keeps running).
        concurrent.futures.CancelledError
            If the task was cancelled.
        """
        if self.state < FINISHED:
            _wait_task(self, timeout)
        if self.cell != 0:
            self.home.remove(self)
        if self.state == CANCELLED:
            raise CancelledError()
        if self.failed:
            raise self.value
        return self.value

    def exception(self, timeout=None):
        """Return the exception the task raised, or None if it succeeded."""
        if self.state < FINISHED:
            _wait_task(self, timeout)
        if self.cell != 0:
            self.home.remove(self)
        if self.state == CANCELLED:
            raise CancelledError()
        return self.value if self.failed else None

    def _mark_yielded(self):
        """``results()`` yielded this task: its queue stops holding it."""
        if self.cell != 0:
            self.home.remove(self)

    def __await__(self):
        """``await task`` on any running event loop: the task's value, or its
        exception raised.  No thread waits: completion wakes the loop once
        (``call_soon_threadsafe``).  Cancelling the awaiting coroutine does
        not cancel the task (``asyncio.shield`` semantics); a cancelled task
        raises :class:`pyqueue.errors.AsyncCancelledError`, an
        ``asyncio.CancelledError``.  Never runs the task on the loop's thread.
        """
        if self.generation != _fork_generation and self.state < FINISHED:
            raise QueueClosed("this task belongs to a TaskQueue created before "
                              "os.fork(); it cannot complete in the child process")
        return _await_handle(self)

    __class_getitem__ = classmethod(types.GenericAlias)

    def add_done_callback(self, fn):
        """Call ``fn(task)`` once the task is done (at once if it already is).

        Callbacks run in the thread that completes the task; an exception they
        raise is logged to the ``pyqueue`` logger and otherwise ignored.
        """
        # Allocate before looking at the state: an allocation can run the
        # garbage collector, whose finalizers can let another thread take the
        # GIL and complete the task between our check and our store.
        cdef list fresh = [fn] if self.callbacks is None else None
        if self.state >= FINISHED:
            _call_callback(fn, self)
            return
        if self.callbacks is None:
            self.callbacks = fresh if fresh is not None else [fn]
        else:
            self.callbacks.append(fn)


# The most cells a _Home can have: a task keeps 1 + its index in a uint32_t.
cdef size_t _MAX_CELLS = 0xFFFFFFFE


@cython.final
cdef class _Home:
    """What the tasks of one queue share: the counters behind
    ``TaskQueue.stats()``, and the tasks that ``TaskQueue.results()`` with no
    argument yields.  A task refers to its home from the moment it is queued
    (so a task that completes after its queue is gone still has somewhere to
    count); the Engine owns it.

    Counters: plain C integers, not atomics: every task state change happens
    with the GIL held, and so does every read, so they are exact relative to
    each other at any moment the GIL is held.  Only events are counted, one
    or two a task; the gauges are derived from them (see Engine.stats).

    Unyielded tasks: those submitted through the queue that ``results()`` has
    not yet yielded and whose ``result()``/``exception()`` nobody has read.
    ``cells[:hi]`` holds one reference to each, in submission order, NULL
    where a task has left; a task knows its cell (``Task.cell``), so adding
    and removing cost a store each, no hashing (a dict keyed by tasks cost
    about 250 ns a submit) and no write to any other task.  When the array is
    full it is compacted if at least half of it is holes, else doubled, so
    both are amortised O(1).  The references are invisible to the cyclic GC,
    so a task whose value refers back to its queue is only freed once read or
    yielded, or when the Engine releases them all (``release``): a task also
    refers to its home, and without that the two would keep each other.
    """
    cdef unsigned long long submitted   # accepted into the ring
    cdef unsigned long long taken       # left PENDING other than by cancel()
    cdef unsigned long long completed, failed, cancelled, native_batches
    cdef PyObject **cells
    cdef size_t hi, cap
    cdef readonly Py_ssize_t count

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        """Drop every task held (the Engine is going away)."""
        cdef PyObject **cells = self.cells
        cdef size_t hi = self.hi, i
        cdef Task t
        self.cells = NULL
        self.hi = self.cap = 0
        self.count = 0
        # Detach them all before the first DECREF, which may run any code.
        for i in range(hi):
            if cells[i] != NULL:
                (<Task>cells[i]).cell = 0
        for i in range(hi):
            if cells[i] != NULL:
                t = <Task>cells[i]
                Py_DECREF(t)   # the cell's reference; `t` holds its own
        t = None
        PyMem_Free(cells)

    cdef int _make_room(self) except -1:
        """Called when every cell is used: compact or grow."""
        cdef size_t i, j = 0, new_cap
        cdef PyObject *p
        cdef void *mem
        if self.cap != 0 and <size_t>self.count <= self.cap // 2:
            for i in range(self.hi):
                p = self.cells[i]
                if p != NULL:
                    self.cells[j] = p
                    (<Task>p).cell = <uint32_t>(j + 1)
                    j += 1
            self.hi = j
            return 0
        if self.cap >= _MAX_CELLS:
            raise MemoryError("too many unread tasks")
        new_cap = self.cap * 2 if self.cap != 0 else 64
        if new_cap > _MAX_CELLS:
            new_cap = _MAX_CELLS
        mem = PyMem_Realloc(self.cells, new_cap * sizeof(PyObject *))
        if mem == NULL:
            raise MemoryError()
        self.cells = <PyObject **>mem
        self.cap = new_cap
        return 0

    cdef inline int add(self, Task t) except -1:
        if self.hi == self.cap:
            self._make_room()
        self.cells[self.hi] = <PyObject *>t
        Py_INCREF(t)
        self.hi += 1
        t.cell = <uint32_t>self.hi
        self.count += 1
        return 0

    cdef inline void remove(self, Task t) noexcept:
        """Drop ``t`` (which is held: ``t.cell != 0``)."""
        self.cells[t.cell - 1] = NULL
        t.cell = 0
        self.count -= 1
        if self.count == 0:
            self.hi = 0   # start again at the front: no compaction needed
        Py_DECREF(t)   # the caller holds its own reference

    def take(self):
        """Every task held, in submission order; holds none afterwards."""
        cdef PyObject **cells = self.cells
        cdef size_t hi = self.hi, i
        cdef list out = []
        self.cells = NULL
        self.hi = self.cap = 0
        self.count = 0
        # Detach them all first: appending can run the GC, and so any code,
        # which must not find a task pointing into this array.
        for i in range(hi):
            if cells[i] != NULL:
                (<Task>cells[i]).cell = 0
        try:
            for i in range(hi):
                if cells[i] != NULL:
                    out.append(<object>cells[i])
        finally:
            for i in range(hi):
                if cells[i] != NULL:
                    Py_DECREF(<object>cells[i])   # the list holds it now
            PyMem_Free(cells)
        return out

    def __len__(self):
        return self.count


cdef void _call_callback(object fn, object t) noexcept:
    try:
        fn(t)
    except Exception:
        _log.exception("exception calling callback for %r", t)


cdef extern from "Python.h":
    void PyObject_GC_Track(void *op)
    void PyObject_GC_UnTrack(void *op)
    int PyObject_GC_IsTracked(object op)


# A pending task is kept out of the cyclic garbage collector: with hundreds of
# thousands of tasks in flight, every full collection would traverse them all
# (profiling showed half of the submit path in gc_collect_main).  While
# pending, a task refers only to its callable, arguments and callbacks, and
# whatever cycle runs through those is broken when the task runs or is
# cancelled (they are dropped).  Once done, the task is tracked again if its
# value can take part in a cycle (an exception's traceback often refers back
# to the frame that holds the task).
cdef inline void _untrack(Task t) noexcept:
    PyObject_GC_UnTrack(<void *>t)


cdef inline void _retrack_if_needed(Task t) noexcept:
    if t.value is not None and PyObject_GC_IsTracked(t.value) and not PyObject_GC_IsTracked(t):
        PyObject_GC_Track(<void *>t)


cdef inline void _count_submitted(Task t, _Home home) noexcept:
    """Count a task that is now in the ring.  Usually PENDING; a push that
    waited for room ran with the GIL released, so a worker may have taken
    the task (uncounted: it had no home yet) and run it before we got the GIL
    back: it is counted where it is, and _run_task, which reads t.home again
    at the end, finishes the count."""
    t.home = home
    home.submitted += 1
    if t.state == PENDING:
        return
    if t.state == CANCELLED:
        home.cancelled += 1
        return
    home.taken += 1
    if t.state == FINISHED:
        if t.failed:
            home.failed += 1
        else:
            home.completed += 1


cdef int _complete(Task t) except -1:
    PQ_DBG(DBG_UNFINISHED_TASKS, -1)
    _retrack_if_needed(t)
    pq_event_set(&t.c_done)
    cdef list callbacks = t.callbacks
    if callbacks is not None:
        t.callbacks = None
        for fn in callbacks:
            _call_callback(fn, t)
    return 0


cdef int _wait_task(Task t, object timeout) except -1:
    """Task.result()/exception() of a task not done: caller-runs, or wait.
    A function, not a cdef method: a method would add a vtable pointer to
    every task."""
    if t.generation != _fork_generation:
        if t.state < FINISHED:
            raise QueueClosed("this task belongs to a TaskQueue created before "
                              "os.fork(); it cannot complete in the child process")
        return 0
    if t.state == PENDING and timeout is None:
        _run_task(t, True)   # caller-runs
    if t.state >= FINISHED:
        return 0
    if not _wait_event(&t.c_done, _timeout_ns(timeout)):
        raise TimeoutError(f"task not done after {timeout} s")
    return 0


cdef int _run_task(Task t, bint inline) except -1:
    """Run a PENDING task (GIL held); skip one that was cancelled or already
    taken.  A KeyboardInterrupt or SystemExit raised by a task run inline is
    stored and also propagated, so Ctrl-C reaches the waiting caller."""
    if t.state != PENDING:
        return 0
    t.state = RUNNING
    if t.home is not None:
        t.home.taken += 1
    fn, args, kwargs = t.fn, t.args, t.kwargs
    t.fn = t.args = t.kwargs = None
    escaping = None
    try:
        if kwargs is None:
            t.value = fn(*args)
        else:
            t.value = fn(*args, **kwargs)
    except BaseException as exc:
        t.value = exc
        t.failed = True
        if inline and not isinstance(exc, Exception):
            escaping = exc
    t.state = FINISHED
    if t.home is not None:   # read again: set meanwhile if submit raced (_count_submitted)
        if t.failed:
            t.home.failed += 1
        else:
            t.home.completed += 1
    _complete(t)
    if escaping is not None:
        raise escaping
    return 0
