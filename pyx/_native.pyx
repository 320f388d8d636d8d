# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: cdivision=True
"""pyqueue._native: the adapter between the C core (csrc/) and Python.

It owns the C objects (the Python lane, the native pool, native batches),
converts buffers and function pointers, releases the GIL around every blocking
C call, maps status codes to exceptions (``_raise_status``), and runs the
Python-lane loop.  Policy (worker counts, shutdown rules, exit and fork hooks)
lives in pyqueue/_queue.py, which subclasses ``Engine``.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM
from cpython.pycapsule cimport (PyCapsule_CheckExact, PyCapsule_GetName,
                                PyCapsule_GetPointer, PyCapsule_New)
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, int64_t, uintptr_t

from pq_core cimport *

import collections
import ctypes
import itertools
import logging
import types

from pyqueue._aio import await_handle as _await_handle
from pyqueue.errors import CancelledError, NativeTaskError, QueueClosed, QueueFull

_log = logging.getLogger("pyqueue")

# Task states.  Every transition happens with the GIL held.
cdef enum:
    PENDING = 0
    RUNNING = 1
    FINISHED = 2
    CANCELLED = 3

_STATE_NAMES = ("pending", "running", "finished", "cancelled")

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


cdef int _complete(Task t) except -1:
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
    _complete(t)
    if escaping is not None:
        raise escaping
    return 0


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
    cdef readonly _Unyielded _unyielded   # for results() with no argument
    cdef pq_pool *c_pool
    cdef int c_native_workers
    cdef bint c_closed
    cdef bint c_forked
    cdef object c_broken         # exception raised at submit once broken
    cdef int64_t c_put_timeout_ns
    cdef readonly size_t capacity

    def __cinit__(self, *args, **kwargs):
        self.c_pool = NULL
        self.c_lane = NULL
        self.c_closed = True
        self._unyielded = _Unyielded.__new__(_Unyielded)

    def _engine_start(self, size_t capacity, int native_workers, double budget_s,
                      object put_timeout):
        """Allocate the Python lane; the native pool starts on first use."""
        cdef size_t cap = 2
        if capacity < 1:
            raise ValueError("maxsize must be >= 1")
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
                Py_DECREF(t)
                raise
        if rc != PQ_OK:
            Py_DECREF(t)
            _raise_status(rc, "submit")
        return 0

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on a worker; return its :class:`Task`.

        Waits (with the GIL released) while the queue is full, up to the
        queue's ``put_timeout``; then raises :class:`pyqueue.QueueFull`.
        """
        self._check_open()
        cdef Task t = self._new_task(fn, args, kwargs)
        self._push(t, self.c_put_timeout_ns)
        self._unyielded.add(t)
        return t

    def submit_nowait(self, fn, /, *args, **kwargs):
        """Like ``submit`` but raise :class:`pyqueue.QueueFull` at once if full."""
        self._check_open()
        cdef Task t = self._new_task(fn, args, kwargs)
        self._push(t, 0)
        self._unyielded.add(t)
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
            _untrack(t)
            t.fn = fn
            t.args = tuple(item) if star else (item,)
            self._push(t, timeout_ns)
            self._unyielded.add(t)
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
            if t.state != PENDING:
                continue
            dropped.append(t.fn)
            if exc is None:
                t.cancel()
            else:
                t.state = FINISHED
                t.failed = True
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
            _raise_status(pq_pool_create(&self.c_pool, self.c_native_workers, 1024),
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
        cdef int64_t chunk = _chunk_for(task.n, self.c_native_workers, chunksize)
        cdef int rc
        task.submitted = True
        with nogil:
            rc = pq_pool_submit(pool, &task.c_batch, task.n, chunk, -1)
        _raise_status(rc, "submit_native")
        return task


cdef int64_t _chunk_for(int64_t n, int workers, object chunksize) except -1:
    if chunksize is not None:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        return chunksize
    # A few hundred to a few thousand items per ring cell; enough chunks that
    # every worker gets several, so an uneven kernel still balances.
    cdef int64_t c = n // (workers * 8 if workers > 0 else 8)
    if c < 256:
        c = 256
    if c > 4096:
        c = 4096
    return c


# -- map ------------------------------------------------------------------------

# Adaptive chunking aims each chunk at about this much work: long enough to
# amortise a task hand-off, short enough to keep every worker busy.
cdef double MAP_TARGET_S = 0.002
cdef Py_ssize_t MAP_MAX_CHUNK = 8192
# How many chunks an adaptive map runs inline before it tries overlap again
# (doubling, up to the maximum, while none is found).
cdef int MAP_PROBE_EVERY = 64
# A window in which no worker took a chunk says nothing about overlap; it is
# extended up to this long before the map concludes there is none.
cdef double MAP_WINDOW_MAX_S = 0.02
cdef int MAP_PROBE_MAX = 4096


def _run_chunk(fn, items, bint star):
    """Run fn over one chunk; returns (results, exception or None, seconds).
    An exception stops the chunk: the results before it are kept so that map
    yields them and then raises at the right position."""
    cdef list out = []
    cdef int64_t t0 = pq_now_ns()
    try:
        if star:
            for x in items:
                out.append(fn(*x))
        else:
            for x in items:
                out.append(fn(x))
    except StopIteration as exc:
        # Raised from __next__ it would end the caller's loop silently, with
        # the rest of the items and the error lost (as PEP 479 says).
        err = RuntimeError("map function raised StopIteration")
        err.__cause__ = exc
        return out, err, (pq_now_ns() - t0) / 1e9
    except Exception as exc:
        return out, exc, (pq_now_ns() - t0) / 1e9
    return out, None, (pq_now_ns() - t0) / 1e9


@cython.final
cdef class _MapIterator:
    """Ordered results of a map, computed a bounded number of chunks ahead.

    A list, tuple or range is cut by slicing (no copy through an iterator);
    anything else is pulled lazily, one chunk at a time."""
    cdef Engine engine
    cdef object fn, source, inflight, error
    cdef object unpushed       # a chunk taken from the source whose push failed
    cdef object seq            # the input when it is a list, tuple or range
    cdef Py_ssize_t seq_next   # first index of seq not yet submitted
    cdef Py_ssize_t total      # len(seq) at the start, or -1 for an iterator
    cdef Py_ssize_t before_current  # results yielded before the current chunk
    cdef bint star, exhausted, adaptive
    cdef Py_ssize_t chunksize, pos, n_current
    cdef int ahead, ahead_max    # ahead 0: chunks run inline, nothing is queued
    cdef int inline_chunks       # chunks to run inline before overlap is tried again
    cdef int probe_every         # the current spacing of those tries
    cdef bint adaptive_ahead
    cdef double window_busy      # seconds of chunk work consumed in this window
    cdef int window_chunks
    cdef int window_helped       # chunks of this window that a worker ran
    cdef int64_t window_start
    cdef list current
    cdef int64_t deadline

    def __cinit__(self, Engine engine, fn, source, bint star, chunksize, int ahead,
                  timeout, bint adaptive_ahead=False):
        self.engine = engine
        self.fn = fn
        self.total = -1
        if type(source) is list or type(source) is tuple or type(source) is range:
            self.seq = source
            self.total = len(source)
        else:
            self.source = iter(source)
        self.star = star
        self.adaptive = chunksize is None
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        self.chunksize = 1 if chunksize is None else chunksize
        self.ahead_max = ahead if ahead > 0 else 1
        self.adaptive_ahead = adaptive_ahead
        # Adaptive look-ahead starts with one chunk beside the caller's and
        # grows only while the chunks really run side by side (see _adapt_ahead).
        self.ahead = 1 if adaptive_ahead else self.ahead_max
        self.window_start = pq_now_ns()
        self.inflight = collections.deque()
        self.current = []
        cdef int64_t t = _timeout_ns(timeout)
        self.deadline = pq_now_ns() + t if t >= 0 else -1
        self._fill()

    cdef object _next_chunk(self):
        if self.seq is not None:
            chunk = self.seq[self.seq_next:self.seq_next + self.chunksize]
            self.seq_next += len(chunk)
            return chunk
        return list(itertools.islice(self.source, self.chunksize))

    cdef object _take_chunk(self):
        if self.unpushed is not None:
            chunk, self.unpushed = self.unpushed, None
            return chunk
        return self._next_chunk()

    cdef int _fill(self, int slack=0) except -1:
        """Queue chunks until ``ahead`` (plus ``slack``: the one about to be
        waited for) are in flight."""
        cdef Task t
        while not self.exhausted and len(self.inflight) < self.ahead + slack:
            chunk = self._take_chunk()
            if not chunk:
                self.exhausted = True
                self.source = self.seq = None
                break
            t = self.engine._new_task(_run_chunk, (self.fn, chunk, self.star), None)
            try:
                self.engine._push(t, self.engine.c_put_timeout_ns)
            except BaseException:
                self.unpushed = chunk   # taken from the source: keep it for next time
                raise
            self.inflight.append(t)
        return 0

    cdef _adapt(self, double seconds, Py_ssize_t size):
        if not self.adaptive or size < self.chunksize:
            return
        cdef double per_item = seconds / size if size > 0 else 0.0
        cdef Py_ssize_t want
        if per_item <= 0:
            want = self.chunksize * 4
        else:
            want = <Py_ssize_t>(MAP_TARGET_S / per_item)
        if want > self.chunksize * 4:
            want = self.chunksize * 4
        if want < 1:
            want = 1
        if want > MAP_MAX_CHUNK:
            want = MAP_MAX_CHUNK
        self.chunksize = want

    cdef _adapt_ahead(self, double seconds):
        """Grow the look-ahead while chunks overlap, drop it to one when they
        do not.  Work that holds the GIL (pure Python) cannot overlap: chunks
        that other threads take only move the results across cores, which
        costs more than it gives.  Work that releases the GIL or waits (I/O,
        hashing, numpy) overlaps, and then more chunks in flight pay off."""
        cdef int64_t now = pq_now_ns()
        self.window_busy += seconds
        self.window_chunks += 1
        cdef double elapsed = (now - self.window_start) / 1e9
        if self.window_chunks < 2 or elapsed < 0.002:
            return
        cdef double overlap = self.window_busy / elapsed
        if overlap < 1.2 and self.window_helped == 0 and elapsed < MAP_WINDOW_MAX_S:
            return   # no worker has taken a chunk yet (still waking): wait and see
        if overlap > 0.6 * (self.ahead + 1):
            self.ahead = min(self.ahead * 4, self.ahead_max)
        elif overlap < 1.2:
            if self.ahead == 1 and self.deadline < 0:
                self._go_inline()
            else:
                self.ahead = 1
        self._new_window(now)

    cdef _new_window(self, int64_t now):
        self.window_busy = 0
        self.window_chunks = 0
        self.window_helped = 0
        self.window_start = now

    cdef _go_inline(self):
        """Nothing overlaps: run the next chunks right here, with no task and
        no hand-off, then look for overlap again, less often each time it
        is still absent (probing costs a cross-core hand-off or two)."""
        self.ahead = 0
        self.probe_every = MAP_PROBE_EVERY if self.probe_every == 0 else min(
            self.probe_every * 2, MAP_PROBE_MAX)
        self.inline_chunks = self.probe_every

    def __iter__(self):
        return self

    def __length_hint__(self):
        # Lets list(q.map(...)) size its result once for a sized input.
        if self.total < 0:
            return 0
        cdef Py_ssize_t left = self.total - self.before_current - self.pos
        return left if left > 0 else 0

    def __next__(self):
        # Fast path, once per item: the next value of the current chunk.
        if self.pos < self.n_current:
            value = <object>PyList_GET_ITEM(self.current, self.pos)
            self.pos += 1
            return value
        return self._advance()

    cdef object _advance(self):
        """Wait for the next chunk (running it here if no worker has started
        it), or compute it here when running inline; return its first value."""
        while True:
            if self.error is not None:
                err, self.error = self.error, None
                self._abandon()
                raise err
            if not self.inflight and self.ahead > 0:
                self._fill()
            if self.inflight:
                results, err, seconds = self._wait_next()
            else:
                chunk = None if self.exhausted else self._take_chunk()
                if not chunk:
                    self.exhausted = True
                    self.source = self.seq = None
                    raise StopIteration
                results, err, seconds = _run_chunk(self.fn, chunk, self.star)
                self.inline_chunks -= 1
                if self.inline_chunks <= 0:      # try overlap again
                    self.ahead = 1
                    self._new_window(pq_now_ns())
            if err is None:
                self._adapt(seconds, len(results))
            if self.adaptive_ahead and self.ahead > 0:
                self._adapt_ahead(seconds)
            self.before_current += self.n_current
            self.current = results
            self.n_current = len(results)
            self.pos = 0
            self.error = err
            if self.n_current > 0:
                self.pos = 1
                return self.current[0]

    cdef tuple _wait_next(self):
        """The oldest chunk's outcome; the look-ahead is refilled first so that
        workers have work while we wait (or run it here)."""
        cdef int64_t left
        # Refill before taking t, so that a failed push leaves the chunk being
        # waited for in place; slack 1 counts that chunk.
        self._fill(1)
        cdef Task t = self.inflight.popleft()
        if t.state != PENDING:
            self.window_helped += 1   # a worker took it: overlap is measurable
        try:
            if self.deadline < 0:
                return t.result()
            left = self.deadline - pq_now_ns()
            return t.result((left if left > 0 else 0) / 1e9)
        except TimeoutError:
            self.inflight.appendleft(t)   # the caller may try again
            raise
        except BaseException:
            # Ctrl-C or a failure of the machinery: the look-ahead must not
            # keep running for a consumer that is gone (as Executor.map).
            self._abandon()
            raise

    cdef _abandon(self):
        if self.inflight is None:   # construction failed before it was set
            return
        for t in self.inflight:
            t.cancel()
        self.inflight.clear()
        self.exhausted = True
        self.source = self.seq = None

    def __del__(self):
        self._abandon()

    def close(self):
        """Stop early: cancel the chunks that have not started."""
        self._abandon()
        self.current = []
        self.n_current = 0
        self.pos = 0


# -- native tasks -----------------------------------------------------------------

cdef class Kernel:
    """A C function pointer with its ABI and, optionally, the dtypes it expects.

    Build one with :func:`pyqueue.kernel`.  ``map_native`` checks ``args`` and
    ``out`` against ``arg_dtype`` and ``out_dtype`` when they are set.
    """
    cdef readonly uintptr_t address
    cdef readonly str abi
    cdef readonly object arg_dtype, out_dtype, name
    cdef object keepalive   # the source object, so the code cannot be unloaded

    def __repr__(self):
        return f"<pyqueue.Kernel {self.name or hex(self.address)} abi={self.abi}>"


cdef uintptr_t _address_of(object fn) except 0:
    if isinstance(fn, bool):
        raise TypeError("a bool is not a function pointer")
    if isinstance(fn, int):
        if fn <= 0 or fn >= (1 << 64):
            raise ValueError(f"invalid function address {fn!r}")
        return <uintptr_t>fn
    if PyCapsule_CheckExact(fn):
        return <uintptr_t>PyCapsule_GetPointer(fn, PyCapsule_GetName(fn))
    if isinstance(fn, ctypes._CFuncPtr):
        addr = ctypes.cast(fn, ctypes.c_void_p).value
        if not addr:
            raise ValueError("NULL ctypes function pointer")
        return <uintptr_t>addr
    if type(fn).__module__ == "_cffi_backend":
        import cffi
        ffi = cffi.FFI()
        kind = ffi.typeof(fn).kind
        if kind == "pointer" and ffi.typeof(fn).item.kind == "function":
            kind = "function"
        if kind != "function":
            raise TypeError(f"cffi object of kind {kind!r} is not a function")
        addr = int(ffi.cast("uintptr_t", fn))
        if not addr:
            raise ValueError("NULL cffi function pointer")
        return <uintptr_t>addr
    address = getattr(fn, "address", None)   # numba cfunc
    if isinstance(address, int) and not isinstance(address, bool):
        return _address_of(address)
    raise TypeError(
        f"cannot use {type(fn).__name__!r} as a native function: expected a cffi "
        "function, a ctypes function pointer, a PyCapsule, a numba cfunc or an int address")


def kernel(fn, abi="item", arg_dtype=None, out_dtype=None, name=None):
    """Describe a native kernel for ``map_native``.

    Parameters
    ----------
    fn : cffi function, ctypes function pointer, PyCapsule, numba cfunc or int
        The C function.  Item ABI: ``int fn(const void *arg, void *out)``;
        range ABI: ``int fn(const void *args, int64_t begin, int64_t end, void *out)``.
        Both return 0 for success.  A cffi ``def_extern`` callback takes the
        GIL on every call: submit it as a Python task instead.
    abi : {"item", "range"}
    arg_dtype, out_dtype : numpy dtype, optional
        When given, ``map_native`` rejects arrays of any other dtype.
    """
    if isinstance(fn, Kernel):
        return fn
    if abi not in ("item", "range"):
        raise ValueError(f"abi must be 'item' or 'range', not {abi!r}")
    cdef Kernel k = Kernel.__new__(Kernel)
    k.address = _address_of(fn)
    k.abi = abi
    if arg_dtype is not None or out_dtype is not None:
        import numpy
        k.arg_dtype = None if arg_dtype is None else numpy.dtype(arg_dtype)
        k.out_dtype = None if out_dtype is None else numpy.dtype(out_dtype)
    k.name = name
    k.keepalive = fn
    return k


cdef Kernel as_kernel(object fn, object abi):
    if isinstance(fn, Kernel):
        if abi is not None and abi != (<Kernel>fn).abi:
            raise ValueError(f"kernel has abi {(<Kernel>fn).abi!r}, not {abi!r}")
        return <Kernel>fn
    return kernel(fn, "item" if abi is None else abi)


cdef uintptr_t _data_ptr(object arr):
    return <uintptr_t>arr.__array_interface__["data"][0]


@cython.final
cdef class NativeTask:
    """The handle of a native batch started by ``submit_native``.

    The arrays stay referenced until the batch completes; dropping the handle
    early waits for the batch (the workers are writing into ``out``).
    """
    cdef pq_batch c_batch
    cdef pq_batch_hook c_hook    # registered by the first add_done_callback
    cdef readonly int64_t n
    cdef bint submitted
    cdef bint hooked
    cdef int generation        # _fork_generation when the batch was made
    cdef object args, out, status_array, kernel_obj
    cdef list callbacks        # while hooked and not yet fired

    def __dealloc__(self):
        # Nobody can read the results any more: skip the chunks not started,
        # then wait for the running ones, which still write into our arrays.
        # In a forked child the workers stayed in the parent: leak instead.
        if self.submitted and self.generation == _fork_generation:
            with nogil:
                pq_batch_cancel(&self.c_batch)
                pq_batch_wait(&self.c_batch, -1)

    @staticmethod
    cdef NativeTask _prepare(Kernel k, object args, object out, object status):
        import numpy
        if not isinstance(args, numpy.ndarray):
            raise TypeError(f"args must be a numpy.ndarray, not {type(args).__name__}")
        if not isinstance(out, numpy.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
        if args.ndim < 1 or out.ndim < 1:
            raise ValueError("args and out must have at least one dimension")
        cdef int64_t n = args.shape[0]
        if out.shape[0] != n:
            raise ValueError(f"out has {out.shape[0]} rows but args has {n}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        if k.arg_dtype is not None and args.dtype != k.arg_dtype:
            raise TypeError(f"kernel expects args of dtype {k.arg_dtype}, got {args.dtype}")
        if k.out_dtype is not None and out.dtype != k.out_dtype:
            raise TypeError(f"kernel expects out of dtype {k.out_dtype}, got {out.dtype}")
        if k.abi == "range":
            if not (args.flags.c_contiguous and out.flags.c_contiguous):
                raise ValueError("the range ABI needs C-contiguous args and out")
        elif n > 0:
            if args.ndim > 1 and not args[0].flags.c_contiguous:
                raise ValueError("each row of args must be C-contiguous")
            if out.ndim > 1 and not out[0].flags.c_contiguous:
                raise ValueError("each row of out must be C-contiguous")
        if status is None:
            status = numpy.empty(n, dtype=numpy.int32)
        elif (not isinstance(status, numpy.ndarray) or status.dtype != numpy.int32
              or status.shape != (n,) or not status.flags.c_contiguous
              or not status.flags.writeable):
            raise ValueError(f"status must be a writeable C-contiguous int32 array of shape ({n},)")
        cdef NativeTask task = NativeTask.__new__(NativeTask)
        task.generation = _fork_generation
        task.n = n
        task.args = args
        task.out = out
        task.status_array = status
        task.kernel_obj = k
        pq_batch_init(&task.c_batch, <void *>k.address,
                      PQ_ABI_RANGE if k.abi == "range" else PQ_ABI_ITEM,
                      <const void *>_data_ptr(args), args.strides[0] if n > 0 else 0,
                      <void *>_data_ptr(out), out.strides[0] if n > 0 else 0,
                      <int32_t *>_data_ptr(status))
        return task

    def done(self):
        """True once every chunk ran or was cancelled."""
        return pq_batch_is_done(&self.c_batch) != 0

    def cancel(self):
        """Skip the chunks that have not started (their status becomes
        ``NativeTaskError.NOT_RUN``); running chunks finish.  ``result()``
        still waits for those."""
        pq_batch_cancel(&self.c_batch)

    def add_done_callback(self, fn):
        """Call ``fn(handle)`` once the batch is done (at once if it already is).

        Callbacks run in the native worker that completes the batch, which
        takes the GIL for them; an exception they raise is logged to the
        ``pyqueue`` logger.  Registering costs nothing on the batch's path:
        the C core calls one hook when its last chunk completes.
        """
        cdef int rc
        if self.generation != _fork_generation and not pq_batch_is_done(&self.c_batch):
            raise QueueClosed("this native batch was started before os.fork(); "
                              "it cannot complete in the child process")
        if self.callbacks is not None:   # hooked, not fired yet (we hold the GIL)
            self.callbacks.append(fn)
            return
        if self.hooked or not self.submitted or pq_batch_is_done(&self.c_batch):
            _call_callback(fn, self)
            return
        self.callbacks = [fn]
        self.hooked = True
        self.c_hook.fn = _native_done_hook
        self.c_hook.ctx = <void *>self
        Py_INCREF(self)   # the hook's reference, dropped once it has run
        rc = pq_batch_set_hook(&self.c_batch, &self.c_hook)
        if rc != PQ_OK:   # completed meanwhile: the hook will never run
            Py_DECREF(self)
            _fire_native_callbacks(self)

    def __await__(self):
        """``await handle``: the status array, or :class:`NativeTaskError`
        raised; completion wakes the loop once, and cancelling the awaiting
        coroutine does not cancel the batch (see ``Task.__await__``)."""
        return _await_handle(self)

    def result(self, timeout=None, *, bint raise_on_error=True):
        """Wait for the batch; return the int32 status array (0 = ok).

        Raises
        ------
        pyqueue.NativeTaskError
            If an item returned non-zero (unless ``raise_on_error=False``).
        TimeoutError
            If ``timeout`` seconds pass first.
        """
        if self.generation != _fork_generation and not pq_batch_is_done(&self.c_batch):
            raise QueueClosed("this native batch was started before os.fork(); "
                              "it cannot complete in the child process")
        if not _wait_event(&self.c_batch.done, _timeout_ns(timeout)):
            raise TimeoutError(f"native batch not done after {timeout} s")
        cdef int64_t failed = pq_batch_failed(&self.c_batch)
        if failed and raise_on_error:
            import numpy
            status = self.status_array
            index = int(numpy.flatnonzero(status)[0])
            raise NativeTaskError(index, int(status[index]), int(failed), status)
        return self.status_array


cdef void _native_done_hook(void *ctx) noexcept nogil:
    # Called once by the C core, in the thread that completed the batch
    # (a native worker, or the submitter), after done is set.
    with gil:
        _fire_native_callbacks(<NativeTask>ctx)
        Py_DECREF(<NativeTask>ctx)   # the reference taken when the hook was set


cdef void _fire_native_callbacks(NativeTask t) noexcept:
    cdef list callbacks = t.callbacks
    t.callbacks = None
    if callbacks is not None:
        for fn in callbacks:
            _call_callback(fn, t)


def run_serial(fn, args, out, *, abi=None, status=None):
    """Run a kernel over every row in the calling thread (a plain C loop with
    the GIL released, no pool): the baseline native maps are measured against.
    Returns the status array; raises NativeTaskError like ``map_native``."""
    cdef Kernel k = as_kernel(fn, abi)
    cdef NativeTask task = NativeTask._prepare(k, args, out, status)
    cdef int64_t failed
    with nogil:
        failed = pq_batch_run_range(&task.c_batch, 0, task.n)
    if failed:
        import numpy
        st = task.status_array
        index = int(numpy.flatnonzero(st)[0])
        raise NativeTaskError(index, int(st[index]), int(failed), st)
    return task.status_array


def _bump_fork_generation():
    """Called once in a forked child: every task and native batch created
    before the fork belongs to threads that stayed in the parent."""
    global _fork_generation
    _fork_generation += 1


def cpu_count():
    """Cores this process may run on (its affinity mask), at least 1."""
    return pq_cpu_count()


# -- built-in kernels ---------------------------------------------------------------

cdef int _k_add_one_f64(const void *arg, void *out) noexcept nogil:
    (<double *>out)[0] = (<const double *>arg)[0] + 1.0
    return 0


cdef int _k_spin_f64(const void *arg, void *out) noexcept nogil:
    # A busy loop of int(arg) dependent steps, about 1 ns each: a stand-in for
    # a kernel of known cost.
    cdef long n = <long>(<const double *>arg)[0]
    cdef double acc = 0.0
    cdef long i
    for i in range(n):
        acc = acc * 0.999999 + 1.0
    (<double *>out)[0] = acc
    return 0


cdef int _k_sqrt_or_fail_f64(const void *arg, void *out) noexcept nogil:
    # Square root; a negative input is an error (status 1) and leaves out as is.
    cdef double x = (<const double *>arg)[0]
    if x < 0:
        return 1
    cdef double r = x
    cdef int i
    if x > 0:
        for i in range(60):   # Newton, no libm needed
            r = 0.5 * (r + x / r)
    (<double *>out)[0] = r
    return 0


cdef int _k_scale2_f64_range(const void *args, int64_t begin, int64_t end,
                             void *out) noexcept nogil:
    cdef const double *a = <const double *>args
    cdef double *o = <double *>out
    cdef int64_t i
    for i in range(begin, end):
        o[i] = 2.0 * a[i]
    return 0


def _builtin_kernels():
    """name -> (capsule, abi, dtype) for the kernels pyqueue ships."""
    cdef const char *cap_name = b"pyqueue.kernel"
    return {
        "add_one_f64": (PyCapsule_New(<void *>_k_add_one_f64, cap_name, NULL), "item", "f8"),
        "spin_f64": (PyCapsule_New(<void *>_k_spin_f64, cap_name, NULL), "item", "f8"),
        "sqrt_or_fail_f64": (PyCapsule_New(<void *>_k_sqrt_or_fail_f64, cap_name, NULL), "item", "f8"),
        "scale2_f64_range": (PyCapsule_New(<void *>_k_scale2_f64_range, cap_name, NULL), "range", "f8"),
    }
