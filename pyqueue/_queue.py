"""TaskQueue: the policy half of the engine (threads, shutdown, exit and fork).

The hot paths (submit, the lane loop, map, native batches) are methods of
``pyqueue._native.Engine``, which this class extends.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from pyqueue import _aio, _native
from pyqueue._tunables import DEFAULT as _DEFAULT_TUNABLES
from pyqueue._tunables import Tunables
from pyqueue.errors import BrokenQueue

if TYPE_CHECKING:  # numpy is imported only when native arrays are used
    import numpy as np
    import numpy.typing as npt

__all__ = ["TaskQueue", "Abandonable"]

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")

# Queues not shut down yet, for the exit hook; every queue, for the fork hook.
_live_queues: weakref.WeakSet[TaskQueue] = weakref.WeakSet()
_all_queues: weakref.WeakSet[TaskQueue] = weakref.WeakSet()


class Abandonable:
    """A task callable that must be told when its task is dropped unrun
    (cancelled at shutdown, or failed because the queue broke)."""

    def abandon(self, exc: BaseException | None) -> None:
        raise NotImplementedError


class TaskQueue(_native.Engine):
    """A pool of workers fed through lock-free rings.

    Parameters
    ----------
    workers : int, optional
        Python-lane threads.  Default: the CPUs this process may use.  Use
        more (e.g. 64) for I/O-bound or GIL-releasing tasks that wait.
    maxsize : int
        Bound of the Python-lane queue (rounded up to a power of two).  A full
        queue makes ``submit`` wait with the GIL released.
    put_timeout : float, optional
        How long ``submit`` waits for room before raising
        :class:`pyqueue.QueueFull`.  Default: no limit.
    native_workers : int, optional
        Threads of the native lane (started on first native call).  Default:
        the CPUs this process may use.
    thread_name_prefix : str
        Prefix of the lane threads' names.
    initializer, initargs
        ``initializer(*initargs)`` runs at the start of every lane thread.  If
        it raises, the queue breaks: queued tasks fail and later submits raise
        :class:`pyqueue.BrokenQueue`.
    budget : float
        Seconds a lane thread may keep the GIL running queued tasks before it
        parks again and lets other threads in.
    tunables : pyqueue.Tunables, optional
        The constants of the adaptive map and of native chunking (see
        ``pyqueue/_tunables.py``); the defaults suit most work.

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        maxsize: int = 65536,
        put_timeout: float | None = None,
        native_workers: int | None = None,
        thread_name_prefix: str = "pyqueue",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        budget: float = 0.002,
        tunables: Tunables | None = None,
    ) -> None:
        cpus = _native.cpu_count()
        workers = cpus if workers is None else workers
        native_workers = cpus if native_workers is None else native_workers
        for name, value in (
            ("workers", workers),
            ("native_workers", native_workers),
            ("maxsize", maxsize),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if workers > 4096 or native_workers > 4096:
            raise ValueError("at most 4096 workers per lane")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if budget <= 0:
            raise ValueError("budget must be > 0")
        self._workers = workers
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._shutdown_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        if tunables is None:
            tunables = _DEFAULT_TUNABLES
        elif not isinstance(tunables, Tunables):
            raise TypeError(f"tunables must be a pyqueue.Tunables, not {type(tunables).__name__}")
        self._engine_start(maxsize, native_workers, budget, put_timeout, tunables)
        _live_queues.add(self)
        _all_queues.add(self)
        # The threads get the lane and a weak reference to the queue, never the
        # queue itself: a queue nobody refers to is freed, which closes the
        # lane, and its threads exit (as concurrent.futures workers do).
        args = (weakref.ref(self), self.lane, initializer, self._initargs)
        try:
            for i in range(workers):
                thread = threading.Thread(
                    target=_lane_main, args=args, name=f"{thread_name_prefix}-{i}", daemon=False
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.shutdown(wait=True)
            raise

    @property
    def workers(self) -> int:
        """Number of Python-lane threads."""
        return self._workers

    def _break(self, cause: BaseException) -> None:
        err = BrokenQueue("a worker initializer failed; the queue is not usable anymore")
        err.__cause__ = cause
        self._set_broken(err)
        self._settle(self._cancel_queued(err), err)

    @staticmethod
    def _settle(dropped: list[object], exc: BaseException | None) -> None:
        for fn in dropped:
            if isinstance(fn, Abandonable):
                fn.abandon(exc)

    # -- fan-out / fan-in ----------------------------------------------------------

    @overload
    def map(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        /,
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        ahead: int | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A, B], T],
        iterable: Iterable[A],
        iterable2: Iterable[B],
        /,
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        ahead: int | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A, B, C], T],
        iterable: Iterable[A],
        iterable2: Iterable[B],
        iterable3: Iterable[C],
        /,
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        ahead: int | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        iterable4: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | None = None,
        ahead: int | None = None,
    ) -> Iterator[T]: ...
    def map(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | None = None,
        ahead: int | None = None,
    ) -> Iterator[T]:
        """Yield ``fn(*items)`` for the items of ``iterables``, in input order.

        Lazy: at most ``ahead`` chunks are in flight, so a huge or infinite
        iterable never loads into memory.  By default the look-ahead adapts,
        up to ``2 * workers + 2``: it grows while chunks run side by side
        (work that waits or releases the GIL) and stays at one chunk beside
        the caller's for pure-Python work, which cannot overlap.  Pass
        ``ahead`` to fix it (e.g. for tasks that must all run at once).
        ``chunksize`` None adapts the chunk size to the measured cost of ``fn``
        (from 1 item for slow calls to thousands for trivial ones).  An
        exception raised by ``fn`` is re-raised at its position, after the
        results before it.  ``timeout`` (seconds, from this call) bounds the
        wait for each result with :class:`TimeoutError`.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if len(iterables) == 1:
            source: Iterable[Any] = iterables[0]
            star = False
        else:
            source = zip(*iterables)
            star = True
        look_ahead = 2 * self._workers + 2 if ahead is None else ahead
        if look_ahead < 1:
            raise ValueError("ahead must be >= 1")
        return self._map_iter(fn, source, star, chunksize, look_ahead, timeout, ahead is None)

    @overload
    def results(
        self, tasks: None = None, timeout: float | None = None
    ) -> Iterator[_native.Task[Any]]: ...
    @overload
    def results(
        self, tasks: Iterable[_native.Task[T]], timeout: float | None = None
    ) -> Iterator[_native.Task[T]]: ...
    def results(
        self, tasks: Iterable[_native.Task[T]] | None = None, timeout: float | None = None
    ) -> Iterator[_native.Task[Any]]:
        """Yield tasks as they complete (fan-in), each exactly once.

        Parameters
        ----------
        tasks : iterable of Task, optional
            The tasks to wait for.  None (the default): every task submitted
            through this queue (``submit``, ``submit_nowait``,
            ``submit_many``) that no earlier ``results()`` has yielded and
            whose ``result()``/``exception()`` nobody has read (awaiting a
            task reads it), the same rule as ``Client.results()``.  The queue
            holds those tasks until then: a program that submits without ever
            reading results should call ``results()`` now and then (or read
            each task), or it keeps every finished task.
        timeout : float, optional
            Seconds from this call; then :class:`TimeoutError` if tasks remain.

        Notes
        -----
        While nothing has completed, the caller runs a task that no worker has
        started yet (only when ``timeout`` is None).  A yielded task is no
        longer held for a later ``results()``.
        """
        pending: list[_native.Task[Any]]
        if tasks is None:
            pending = self._home.take()
        else:
            pending = list(dict.fromkeys(tasks))
            for t in pending:
                if not isinstance(t, _native.Task):
                    raise TypeError(f"results() takes pyqueue.Task objects, not {type(t).__name__}")
        return self._fan_in(pending, timeout)

    @staticmethod
    def _fan_in(pending: list[_native.Task[T]], timeout: float | None) -> Iterator[_native.Task[T]]:
        completed: queue.SimpleQueue[_native.Task[T]] = queue.SimpleQueue()
        for t in pending:
            t.add_done_callback(completed.put)
        deadline = None if timeout is None else time.monotonic() + timeout
        scan = 0
        for _ in range(len(pending)):
            while True:
                try:
                    task = completed.get_nowait()
                    break
                except queue.Empty:
                    pass
                if deadline is None:
                    while scan < len(pending) and not pending[scan]._run_if_pending():
                        scan += 1
                    if scan < len(pending):
                        continue  # ran one inline; look for completions again
                    task = completed.get()
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"tasks still pending after {timeout} s")
                try:
                    task = completed.get(timeout=left)
                    break
                except queue.Empty:
                    continue
            task._mark_yielded()
            yield task

    # -- asyncio -------------------------------------------------------------------

    def as_completed(
        self, tasks: Iterable[_native.Task[T]], timeout: float | None = None
    ) -> AsyncIterator[_native.Task[T]]:
        """``async for task in q.as_completed(tasks)``: tasks in completion order.

        Each task is yielded once; each completion wakes the event loop once
        (no thread, no polling).  Unlike :meth:`results`, nothing runs on the
        loop's thread.  ``timeout`` (seconds, from the first iteration) raises
        :class:`TimeoutError` if tasks remain.  Leaving the loop early, or
        cancelling the coroutine, cancels no task.
        """
        return _aio.as_completed(tasks, timeout)

    @overload
    async def gather(
        self, tasks: Iterable[_native.Task[T]], *, return_exceptions: Literal[False] = False
    ) -> list[T]: ...
    @overload
    async def gather(
        self, tasks: Iterable[_native.Task[T]], *, return_exceptions: bool
    ) -> list[T | BaseException]: ...
    async def gather(
        self, tasks: Iterable[_native.Task[T]], *, return_exceptions: bool = False
    ) -> list[Any]:
        """``await q.gather(tasks)``: the results in input order.

        The loop is woken once, when the last task completes (or when one
        fails: its exception is raised, and the other tasks keep running).
        With ``return_exceptions`` exceptions take their places in the list.
        Cancelling the awaiting coroutine cancels no task (shield semantics).
        """
        return await _aio.gather(tasks, return_exceptions=return_exceptions)

    # -- native --------------------------------------------------------------------

    def map_native(
        self,
        fn: Any,
        args: npt.NDArray[Any],
        out: npt.NDArray[Any],
        *,
        abi: str | None = None,
        chunksize: int | None = None,
        status: npt.NDArray[np.int32] | None = None,
        timeout: float | None = None,
        raise_on_error: bool = True,
    ) -> npt.NDArray[np.int32]:
        """Run the C function ``fn`` over every row of ``args`` into ``out``,
        on the native lane with no GIL, and wait for it.

        Parameters
        ----------
        fn : pyqueue.Kernel, cffi function, ctypes function pointer, PyCapsule, int
            See :func:`pyqueue.kernel` for the two ABIs.
        args, out : numpy.ndarray
            Same length along axis 0.  Item ABI: the kernel gets pointers to
            row i of each.  Range ABI: both must be C-contiguous and the kernel
            gets the base pointers and [begin, end).
        abi : {"item", "range"}, optional
            For a raw pointer; a Kernel knows its own.
        chunksize : int, optional
            Items per ring cell; default between 256 and 4096.
        status : numpy.ndarray, optional
            An int32 array to receive per-item status codes.

        Returns
        -------
        numpy.ndarray
            The int32 status of every item (all 0 on success).

        Raises
        ------
        pyqueue.NativeTaskError
            If any item returned non-zero; ``.index`` is the first.
        TypeError, ValueError
            For bad arguments, before anything runs.
        """
        task = self.submit_native(fn, args, out, abi=abi, chunksize=chunksize, status=status)
        try:
            return task.result(timeout, raise_on_error=raise_on_error)
        except (KeyboardInterrupt, TimeoutError):
            task.cancel()  # nobody will read the rest: stop it promptly
            raise

    # -- lifecycle -------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting work.

        Queued tasks still run unless ``cancel_pending`` is true, in which case
        they are cancelled (their ``result()`` raises CancelledError).  With
        ``wait``, return once every worker thread has exited.  Idempotent.
        """
        with self._shutdown_lock:
            self._close_lane()
            if cancel_pending:
                self._settle(self._cancel_queued(), None)
            self._shutdown_native(cancel_pending, wait)
        if wait:
            current = threading.current_thread()
            for thread in self._threads:
                if thread is not current:
                    thread.join()
            # A submit that raced with close may have pushed after the last
            # worker left: such tasks can no longer run, so they are cancelled.
            self._quiesce_lane()
            self._settle(self._cancel_queued(), None)
        _live_queues.discard(self)

    def __enter__(self) -> TaskQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pyqueue.TaskQueue {state} workers={self._workers} queued={self.qsize()}>"


def _lane_main(
    queue_ref: weakref.ReferenceType[TaskQueue],
    lane: _native.Lane,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    # Body of a lane thread.  It must not keep the queue alive: the queue is
    # looked up through its weak reference only to report a failed initializer.
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            q = queue_ref()
            if q is not None:
                q._break(exc)
            del q
            return
    lane.run()


def _shutdown_all_at_exit() -> None:
    # Runs before the interpreter joins non-daemon threads, the way
    # concurrent.futures does it: queued work drains, then the threads exit.
    for q in list(_live_queues):
        q.shutdown(wait=True)


def _after_fork_in_child() -> None:
    # The parent's worker threads do not exist in the child: every queue and
    # every task or batch made before the fork is marked as the parent's.
    _native._bump_fork_generation()
    for q in list(_all_queues):
        q._after_fork_in_child()
        q._threads = []
    _live_queues.clear()


threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_after_fork_in_child)
