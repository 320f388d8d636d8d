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
cdef class _TaskCounters:
    """The Python lane's task counters, shared by an Engine and the tasks it
    queued (a task refers to them, so a task that completes after its queue
    is gone still counts).  Plain C integers, not atomics: every task state
    change happens with the GIL held, and so does every read, so the counters
    are exact relative to each other at any moment the GIL is held."""
    cdef unsigned long long submitted, completed, failed, cancelled, native_batches
    cdef long long queued, running    # gauges: tasks PENDING / RUNNING now


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
    cdef object fn
    cdef tuple args
    cdef dict kwargs
    cdef object value          # the result, or the exception if failed
    cdef int state
    cdef bint failed
    cdef list callbacks
    cdef int generation        # _fork_generation when the task was created
    cdef PyObject *tracker     # borrowed: the _Unyielded list holding us, or NULL
    cdef PyObject *u_prev      # that list's links (see _Unyielded)
    cdef PyObject *u_next
    cdef _TaskCounters counters   # set once the task is queued; None before
    cdef pq_event c_done

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
            if self.counters is not None:
                self.counters.queued -= 1
                self.counters.cancelled += 1
            self.fn = self.args = self.kwargs = None
            _complete(self)
            return True
        return self.state == CANCELLED

    cdef int _wait(self, object timeout) except -1:
        if self.generation != _fork_generation:
            if self.state < FINISHED:
                raise QueueClosed("this task belongs to a TaskQueue created before "
                                  "os.fork(); it cannot complete in the child process")
            return 0
        if self.state == PENDING and timeout is None:
            _run_task(self, True)   # caller-runs
        if self.state >= FINISHED:
            return 0
        if not _wait_event(&self.c_done, _timeout_ns(timeout)):
            raise TimeoutError(f"task not done after {timeout} s")
        return 0

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
            self._wait(timeout)
        if self.tracker != NULL:
            _collected(self)
        if self.state == CANCELLED:
            raise CancelledError()
        if self.failed:
            raise self.value
        return self.value

    def exception(self, timeout=None):
        """Return the exception the task raised, or None if it succeeded."""
        if self.state < FINISHED:
            self._wait(timeout)
        if self.tracker != NULL:
            _collected(self)
        if self.state == CANCELLED:
            raise CancelledError()
        return self.value if self.failed else None

    def _mark_yielded(self):
        """``results()`` yielded this task: its queue stops holding it."""
        if self.tracker != NULL:
            _collected(self)

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


@cython.final
cdef class _Unyielded:
    """The tasks submitted through one queue that ``results()`` has not yet
    yielded and whose ``result()``/``exception()`` nobody has read: what
    ``TaskQueue.results()`` with no argument yields.

    An intrusive doubly linked list through the tasks (``u_prev``/``u_next``),
    holding one reference to each: linking and unlinking cost a few pointer
    writes, no hashing (a dict keyed by tasks cost about 250 ns a submit).
    The references are invisible to the cyclic GC, so a task whose value
    refers back to its queue is only freed once read or yielded.
    """
    cdef PyObject *head
    cdef PyObject *tail
    cdef readonly Py_ssize_t count

    def __dealloc__(self):
        cdef PyObject *p = self.head
        cdef Task t
        self.head = self.tail = NULL
        while p != NULL:
            t = <Task>p
            p = t.u_next
            t.u_prev = t.u_next = t.tracker = NULL
            Py_DECREF(t)

    cdef inline int add(self, Task t) except -1:
        Py_INCREF(t)
        t.tracker = <PyObject *>self
        t.u_prev = self.tail
        t.u_next = NULL
        if self.tail != NULL:
            (<Task>self.tail).u_next = <PyObject *>t
        else:
            self.head = <PyObject *>t
        self.tail = <PyObject *>t
        self.count += 1
        return 0

    cdef inline void remove(self, Task t) noexcept:
        if t.u_prev != NULL:
            (<Task>t.u_prev).u_next = t.u_next
        else:
            self.head = t.u_next
        if t.u_next != NULL:
            (<Task>t.u_next).u_prev = t.u_prev
        else:
            self.tail = t.u_prev
        t.u_prev = t.u_next = t.tracker = NULL
        self.count -= 1
        Py_DECREF(t)   # the caller holds its own reference

    def take(self):
        """Every task held, in submission order; holds none afterwards."""
        cdef list out = []
        cdef PyObject *p = self.head
        cdef Task t
        self.head = self.tail = NULL
        self.count = 0
        while p != NULL:
            t = <Task>p
            p = t.u_next
            t.u_prev = t.u_next = t.tracker = NULL
            out.append(t)
            Py_DECREF(t)   # the list holds it now
        return out

    def __len__(self):
        return self.count


cdef inline void _collected(Task t) noexcept:
    (<_Unyielded>t.tracker).remove(t)


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


cdef inline void _count_submitted(Task t, _TaskCounters c) noexcept:
    """Count a task that is now in the ring, in the state it has reached.
    Usually PENDING; a push that waited for room ran with the GIL released, so
    a worker may have taken the task (uncounted) and run it before we got the
    GIL back: it is counted where it is, and _run_task, which reads
    t.counters again at the end, finishes the count."""
    t.counters = c
    c.submitted += 1
    if t.state == PENDING:
        c.queued += 1
    elif t.state == RUNNING:
        c.running += 1
    elif t.state == CANCELLED:
        c.cancelled += 1
    elif t.failed:
        c.failed += 1
    else:
        c.completed += 1


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


cdef int _run_task(Task t, bint inline) except -1:
    """Run a PENDING task (GIL held); skip one that was cancelled or already
    taken.  A KeyboardInterrupt or SystemExit raised by a task run inline is
    stored and also propagated, so Ctrl-C reaches the waiting caller."""
    if t.state != PENDING:
        return 0
    t.state = RUNNING
    cdef _TaskCounters c = t.counters
    if c is not None:
        c.queued -= 1
        c.running += 1
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
    c = t.counters   # read again: set meanwhile if submit raced (_count_submitted)
    if c is not None:
        c.running -= 1
        if t.failed:
            c.failed += 1
        else:
            c.completed += 1
    _complete(t)
    if escaping is not None:
        raise escaping
    return 0
