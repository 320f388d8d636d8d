"""The handle protocol (``pyqueue.Handle``), one test per rule, run against
every kind of handle.

A *kind* is a small adapter that makes handles in each state the tests need.
Today there is one, ``TaskKind`` (``pyqueue.Task``).  To check another handle
type against the same rules, write its kind (same four methods) and add it to
``KINDS``: the cluster's ``ClusterTask`` gets a ``ClusterTaskKind`` whose
``start`` builds a ``LocalCluster(nodes=1, workers=1)`` and whose ``submit``
is ``client.submit``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pyqueue
from pyqueue.errors import AsyncCancelledError


class TaskKind:
    """Handles from a one-worker TaskQueue (``pyqueue.Task``)."""

    name = "Task"

    def start(self) -> None:
        self.q = pyqueue.TaskQueue(workers=1)

    def stop(self) -> None:
        self.q.shutdown(wait=True, cancel_pending=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A handle of ``fn(*args)``."""
        return self.q.submit(fn, *args)

    def running(self) -> tuple[Any, threading.Event]:
        """A handle that has started and ends (returning True) once the event
        is set; while it runs, the next ``submit`` stays pending."""
        started, gate = threading.Event(), threading.Event()

        def block() -> bool:
            started.set()
            return gate.wait(30)

        handle = self.q.submit(block)
        assert started.wait(10)
        return handle, gate


KINDS: dict[str, Callable[[], Any]] = {"Task": TaskKind}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Iterator[Any]:
    k = KINDS[request.param]()
    k.start()
    gates: list[threading.Event] = []
    original = k.running

    def running() -> tuple[Any, threading.Event]:
        handle, gate = original()
        gates.append(gate)
        return handle, gate

    k.running = running
    yield k
    for gate in gates:
        gate.set()
    k.stop()


def test_handle_has_every_protocol_method(kind):
    h = kind.submit(abs, -1)
    assert isinstance(h, pyqueue.Handle)
    h.result(timeout=10)


def test_result_returns_the_value_and_exception_is_none(kind):
    h = kind.submit(pow, 2, 5)
    assert h.result(timeout=10) == 32
    assert h.exception(timeout=10) is None
    assert h.done() and not h.cancelled()


def test_result_reraises_the_task_exception_and_exception_returns_it(kind):
    h = kind.submit(divmod, 1, 0)
    with pytest.raises(ZeroDivisionError):
        h.result(timeout=10)
    assert isinstance(h.exception(timeout=10), ZeroDivisionError)
    assert h.done() and not h.cancelled()


def test_result_timeout_raises_timeout_error_and_leaves_the_task(kind):
    h, gate = kind.running()
    with pytest.raises(TimeoutError):
        h.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        h.exception(timeout=0)
    assert not h.done()
    gate.set()
    assert h.result(timeout=10) is True


def test_cancel_before_start_cancels_and_result_raises_cancelled_error(kind):
    blocker, gate = kind.running()
    h = kind.submit(abs, -1)
    assert h.cancel() is True
    assert h.cancelled() and h.done()
    with pytest.raises(concurrent.futures.CancelledError):
        h.result(timeout=10)
    with pytest.raises(concurrent.futures.CancelledError):
        h.exception(timeout=10)
    gate.set()
    assert blocker.result(timeout=10) is True
    assert blocker.cancel() is False and not blocker.cancelled()


def test_done_callback_runs_once_after_done_and_at_once_when_done(kind):
    h, gate = kind.running()
    calls: list[tuple[Any, bool]] = []
    fired = threading.Event()

    def on_done(handle: Any) -> None:
        calls.append((handle, handle.done()))
        fired.set()

    h.add_done_callback(on_done)
    assert calls == []
    gate.set()
    assert fired.wait(10)
    late: list[Any] = []
    h.add_done_callback(late.append)  # already done: called before returning
    assert calls == [(h, True)] and late == [h]


def test_await_returns_the_value_or_raises(kind):
    async def main() -> None:
        assert await kind.submit(pow, 3, 2) == 9
        with pytest.raises(ZeroDivisionError):
            await kind.submit(divmod, 1, 0)

    asyncio.run(main())


def test_await_of_a_cancelled_task_raises_asyncio_cancelled_error(kind):
    blocker, gate = kind.running()
    h = kind.submit(abs, -1)
    assert h.cancel()

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError) as info:
            await h
        assert isinstance(info.value, AsyncCancelledError)
        assert isinstance(info.value, concurrent.futures.CancelledError)

    asyncio.run(main())
    gate.set()


def test_cancelling_the_awaiter_does_not_cancel_the_task(kind):
    h, gate = kind.running()

    async def waiter() -> Any:
        return await h

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiter(), 0.05)
        assert not h.cancelled() and not h.done()
        gate.set()
        assert await h is True

    asyncio.run(main())
