"""asyncio for pyqueue's handles: ``await task``, ``as_completed``, ``gather``.

Everything here works on any object that follows the handle protocol
(:class:`pyqueue.Handle`: ``done``, ``add_done_callback``, ``result``...), so
``Task``, ``NativeTask`` and the cluster's handles share one implementation.

How a wait costs no thread and no polling: the awaiting coroutine parks on an
asyncio future of its own loop, and the handle's done callback, which runs in
whichever thread completes the task, wakes that loop once with
``loop.call_soon_threadsafe``.

Cancellation follows ``asyncio.shield``: cancelling the awaiting coroutine
(``asyncio.wait_for`` timing out, a task group failing...) stops the wait, not
the task, which keeps running and can still be awaited or ``result()``-ed.
Call ``handle.cancel()`` to cancel the task itself.  Awaiting a task that was
cancelled raises :class:`pyqueue.errors.AsyncCancelledError`, which is both an
``asyncio.CancelledError`` and a ``concurrent.futures.CancelledError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterable
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pyqueue.errors import AsyncCancelledError

__all__ = ["Handle", "as_completed", "await_handle", "gather"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
H = TypeVar("H", bound="Handle[Any]")


@runtime_checkable
class Handle(Protocol[T_co]):
    """The contract every pyqueue task handle follows.

    ``Task`` (local) and the cluster's ``ClusterTask`` both satisfy it, and
    ``tests/unit/test_handle_protocol.py`` checks each against the same
    behaviour.  ``isinstance(h, pyqueue.Handle)`` checks that the methods
    exist (not their behaviour).  The first six methods mean what they mean on
    :class:`concurrent.futures.Future`:

    ``result(timeout=None)``
        The value, or the task's exception re-raised; ``TimeoutError`` if not
        done in time; ``concurrent.futures.CancelledError`` if cancelled.
    ``exception(timeout=None)``
        The exception, or None; same waiting and cancellation rules.
    ``done()``
        True once finished, failed or cancelled; never blocks.
    ``cancel()``
        Cancel if not started; returns whether the task is now cancelled.
    ``cancelled()``
        True if ``cancel()`` stopped it.
    ``add_done_callback(fn)``
        ``fn(handle)`` once done, in the completing thread (at once, in the
        caller's, if already done); an exception it raises is logged.
    ``__await__()``
        ``await handle`` on any running event loop, with the cancellation
        rules in this module's docstring.
    """

    def result(self, timeout: float | None = None) -> T_co: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def add_done_callback(self, fn: Any, /) -> None: ...
    def __await__(self) -> Generator[Any, None, T_co]: ...


def _wake(waiter: asyncio.Future[None]) -> None:
    # Runs on the loop: the waiter may have been cancelled meanwhile.
    if not waiter.done():
        waiter.set_result(None)


class _LoopWaker:
    """A done callback that wakes one loop future from any thread."""

    __slots__ = ("loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
        self.loop = loop
        self.waiter = waiter

    def __call__(self, _handle: object) -> None:
        if self.waiter.done():  # the awaiter gave up (cancelled): nothing to wake
            return
        try:
            self.loop.call_soon_threadsafe(_wake, self.waiter)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _outcome(handle: Handle[T]) -> T:
    try:
        return handle.result(0)
    except concurrent.futures.CancelledError as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise AsyncCancelledError(*exc.args) from exc


def await_handle(handle: Handle[T]) -> Generator[Any, None, T]:
    """The body of ``__await__`` for a handle (see the module docstring).

    Parameters
    ----------
    handle : Handle
        Anything with ``done()``, ``add_done_callback(fn)`` and
        ``result(timeout)``.  ``add_done_callback`` must call ``fn`` exactly
        once, from any thread, after ``done()`` became true.

    Returns
    -------
    generator
        What ``__await__`` returns: ``def __await__(self): return
        await_handle(self)``.

    Raises
    ------
    RuntimeError
        If no event loop is running in this thread.
    """
    if not handle.done():
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handle.add_done_callback(_LoopWaker(loop, waiter))
        # Cancelling the awaiting coroutine cancels `waiter`, never the task.
        yield from waiter
    return _outcome(handle)


class _Completions(Generic[H]):
    """``async for`` over handles in completion order (see :func:`as_completed`)."""

    def __init__(self, handles: Iterable[H], timeout: float | None) -> None:
        self._pending = list(dict.fromkeys(handles))
        self._timeout = timeout
        self._ready: deque[H] = deque()
        self._left = len(self._pending)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: float | None = None

    def __aiter__(self) -> _Completions[H]:
        return self

    def _arrived(self, handle: H) -> None:  # on the loop
        self._ready.append(handle)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        if self._timeout is not None:
            self._deadline = loop.time() + self._timeout

        def on_done(handle: H) -> None:  # any thread: one wake-up per completion
            try:
                loop.call_soon_threadsafe(self._arrived, handle)
            except RuntimeError:  # loop closed
                pass

        for handle in self._pending:
            handle.add_done_callback(on_done)
        self._pending = []
        return loop

    async def __anext__(self) -> H:
        loop = self._loop if self._loop is not None else self._start()
        if self._left == 0:
            raise StopAsyncIteration
        while not self._ready:
            self._waiter = loop.create_future()
            if self._deadline is None:
                await self._waiter
                continue
            left = self._deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self._left} task(s) still pending after {self._timeout} s")
            timer = loop.call_later(left, _wake, self._waiter)
            try:
                await self._waiter
            finally:
                timer.cancel()
        self._left -= 1
        return self._ready.popleft()


def as_completed(handles: Iterable[H], timeout: float | None = None) -> AsyncIterator[H]:
    """Yield ``handles`` as they complete, each once: ``async for h in ...``.

    Each completion wakes the loop once (no thread, no polling).  Leaving the
    loop early cancels nothing.

    Parameters
    ----------
    handles : iterable of Handle
        Duplicates are yielded once.
    timeout : float, optional
        Seconds from the first ``__anext__``; then :class:`TimeoutError` if
        handles remain.
    """
    return _Completions(handles, timeout)


async def gather(handles: Iterable[Handle[Any]], *, return_exceptions: bool = False) -> list[Any]:
    """Wait for every handle; return their results in input order.

    The loop is woken once, when the last handle completes, or earlier when
    one fails and ``return_exceptions`` is false: then the first failed
    handle's exception (in input order) is raised and the others keep
    running (shield semantics, as for ``await``).  With ``return_exceptions``
    the exceptions take their places in the list.
    """
    items = list(handles)
    pending = [h for h in items if not h.done()]
    if pending:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waker = _LoopWaker(loop, waiter)
        finished = itertools.count(1)  # next() is atomic under the GIL
        total = len(pending)

        def on_done(handle: Handle[Any]) -> None:  # any thread
            count = next(finished)
            if count == total or (not return_exceptions and _failed(handle)):
                waker(handle)

        for h in pending:
            h.add_done_callback(on_done)
        await waiter
    results: list[Any] = []
    for h in items:
        if not h.done():  # woken early by a failure
            continue
        try:
            results.append(_outcome(h))
        except BaseException as exc:
            if not return_exceptions:
                raise
            results.append(exc)
    return results


def _failed(handle: Handle[Any]) -> bool:
    if handle.cancelled():
        return True
    return handle.exception(0) is not None
