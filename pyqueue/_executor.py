"""pyqueue.Executor: the concurrent.futures contract on the pyqueue engine."""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pyqueue._queue import Abandonable, TaskQueue

__all__ = ["Executor"]

T = TypeVar("T")
if TYPE_CHECKING:  # typing.ParamSpec is 3.10+; annotations only, never evaluated
    from typing import ParamSpec

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
        self._queue = TaskQueue(
            workers=max_workers,
            thread_name_prefix=thread_name_prefix or "pyqueue-executor",
            initializer=initializer,
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

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """The stdlib ``Executor.map``; with ``chunksize > 1`` the items are
        sent in chunks of that size, one task each, as ProcessPoolExecutor
        does (an exception is then raised when its chunk's turn comes)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunked(zip(*iterables), chunksize)
        results = super().map(_apply_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._queue.shutdown(wait=wait, cancel_pending=cancel_futures)


def _chunked(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _apply_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in chunk]
