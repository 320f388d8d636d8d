"""pyqueue.Executor: the concurrent.futures contract on the pyqueue engine."""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pyqueue._queue import Abandonable, TaskQueue

__all__ = ["Executor", "ThreadPoolExecutor"]

# Where concurrent.futures logs an initializer failure (at CRITICAL).
_CF_LOGGER = logging.getLogger("concurrent.futures")

T = TypeVar("T")
if TYPE_CHECKING:  # typing.ParamSpec is 3.10+; annotations only, never evaluated
    from typing import ParamSpec

    from pyqueue._native import Task

    P = ParamSpec("P")


class _WorkItem(Abandonable):
    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(
        self,
        future: concurrent.futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def abandon(self, exc: BaseException | None) -> None:
        if exc is None:
            self.future.cancel()
        elif self.future.set_running_or_notify_cancel():
            self.future.set_exception(exc)


class _LoggedInitializer:
    """Runs the user's initializer; a failure is logged as ThreadPoolExecutor
    logs it (CRITICAL, "Exception in initializer:") and then breaks the queue."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        try:
            self.fn(*args)
        except BaseException:
            _CF_LOGGER.critical("Exception in initializer:", exc_info=True)
            raise


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` backed by a :class:`TaskQueue`.

    Returns real :class:`concurrent.futures.Future` objects, so ``wait()``,
    ``as_completed()`` and ``loop.run_in_executor`` work as with
    ThreadPoolExecutor.  ``map`` and ``shutdown`` follow the stdlib contract;
    an initializer that raises breaks the executor
    (:class:`pyqueue.BrokenQueue`, a ``BrokenExecutor``).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._queue = TaskQueue(
            workers=max_workers,
            thread_name_prefix=thread_name_prefix or "pyqueue-executor",
            initializer=None if initializer is None else _LoggedInitializer(initializer),
            initargs=initargs,
        )

    @property
    def queue(self) -> TaskQueue:
        """The TaskQueue underneath (for map_native and friends)."""
        return self._queue

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        # Detached: the Future is the handle; the queue must not hold the Task.
        self._queue._submit_detached(_WorkItem(future, fn, args, kwargs))
        return future

    def _submit_task(self, fn: Callable[..., T], /, *args: Any) -> Task[T]:
        """``submit(fn, *args)`` that hands back the engine's own
        :class:`~pyqueue.Task` instead of a Future: the same ``cancel``,
        ``cancelled``, ``result`` and ``add_done_callback``, without the
        Future and the Condition that each ``submit`` makes (several times
        a short task's own cost: what a cluster node runs).  Not held for
        ``TaskQueue.results()``."""
        return self._queue._submit_detached(functools.partial(fn, *args))

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """The stdlib ``Executor.map``; with ``chunksize > 1`` the items are
        sent in chunks of that size, one task each, as ProcessPoolExecutor
        does (an exception is then raised when its chunk's turn comes).
        Either way the result is a generator whose ``close()`` cancels the
        calls that have not started."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunked(zip(*iterables), chunksize)
        results = super().map(_apply_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return _flatten(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._queue.shutdown(wait=wait, cancel_pending=cancel_futures)


class ThreadPoolExecutor(Executor, concurrent.futures.ThreadPoolExecutor):
    """A :class:`pyqueue.Executor` that is also a
    :class:`concurrent.futures.ThreadPoolExecutor` instance.

    For the places that insist on that class: asyncio's
    ``loop.set_default_executor`` (and through it ``asyncio.to_thread``,
    ``loop.getaddrinfo`` and ``run_in_executor(None, ...)``)::

        loop.set_default_executor(pyqueue.ThreadPoolExecutor(max_workers=8))

    All work runs on pyqueue's engine, exactly as on :class:`Executor`; the
    stdlib class contributes only its type and attributes (``_max_workers``,
    ``_thread_name_prefix``), and starts no thread of its own.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        Executor.__init__(self, max_workers, thread_name_prefix, initializer, initargs)
        # Attributes only: no thread starts until the stdlib's own submit,
        # which this class replaces.
        concurrent.futures.ThreadPoolExecutor.__init__(
            self, self._queue.workers, thread_name_prefix or "pyqueue-executor"
        )


def _flatten(results: Iterator[list[T]]) -> Generator[T, None, None]:
    # A generator, as the stdlib's map returns: close() reaches `results`
    # (the stdlib's own generator), which cancels the chunks not started.
    try:
        for chunk in results:
            yield from chunk
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _chunked(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _apply_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in chunk]
