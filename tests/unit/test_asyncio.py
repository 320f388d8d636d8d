"""asyncio: ``await task`` (Task and NativeTask), ``as_completed``, ``gather``.

No test sleeps to synchronise: blockers set an event when a worker starts them.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import pyqueue
from pyqueue import kernels
from pyqueue.errors import AsyncCancelledError


def run(coro):
    return asyncio.run(coro)


def count_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Count the loop's call_soon_threadsafe calls (how other threads wake it)."""
    calls = [0]
    original = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    return calls


def test_await_task_returns_its_value_or_raises_its_exception(q):
    async def main():
        assert await q.submit(pow, 2, 10) == 1024
        with pytest.raises(ZeroDivisionError):
            await q.submit(divmod, 1, 0)
        done = q.submit(abs, -3)
        done.result()
        assert await done == 3  # already done: no wait at all

    run(main())


def test_await_wakes_the_loop_once_without_a_thread_or_polling(q, occupy):
    blocker, gate = occupy(q)

    async def main():
        loop = asyncio.get_running_loop()
        wakeups = count_wakeups(loop)
        threads = threading.active_count()
        waiting = asyncio.ensure_future(asyncio.gather(*(_await(blocker) for _ in range(20))))
        await asyncio.sleep(0)  # let the awaits park
        assert not waiting.done()
        assert threading.active_count() == threads  # no thread per await
        assert wakeups[0] == 0 and not loop._scheduled  # nothing polls meanwhile
        gate.set()
        assert await waiting == [True] * 20
        assert wakeups[0] == 20  # one wake-up per awaiting coroutine, none else

    run(main())


async def _await(handle):
    return await handle


def test_await_works_on_a_loop_in_another_thread(q):
    got = []

    def other_thread():
        got.append(asyncio.run(_await(q.submit(pow, 3, 3))))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    assert got == [27]


def test_cancelling_the_awaiting_coroutine_does_not_cancel_the_task(q, occupy):
    first, gate1 = occupy(q)
    second, gate2 = occupy(q)  # both workers busy
    queued = q.submit(abs, -7)  # pending behind them

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_await(first), 0.05)
        waiters = [asyncio.ensure_future(_await(t)) for t in (second, queued)]
        await asyncio.sleep(0)
        for w in waiters:
            w.cancel()
        for w in waiters:
            with pytest.raises(asyncio.CancelledError):
                await w
        for t in (first, second, queued):
            assert not t.cancelled() and not t.done()
        gate1.set()
        gate2.set()
        assert await first is True  # still awaitable afterwards
        assert await queued == 7
        assert await second is True

    run(main())


def test_awaiting_a_cancelled_task_raises_an_asyncio_cancelled_error():
    q = pyqueue.TaskQueue(workers=1)
    try:
        started, gate = threading.Event(), threading.Event()
        q.submit(lambda: (started.set(), gate.wait(10)))
        assert started.wait(5)
        victim = q.submit(abs, -1)

        seen = []

        async def awaiter():
            try:
                await victim
            except AsyncCancelledError as exc:  # what the coroutine itself sees
                seen.append(exc)
                raise

        async def main():
            waiter = asyncio.ensure_future(awaiter())
            await asyncio.sleep(0)
            assert victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert isinstance(seen[0], asyncio.CancelledError)
            assert isinstance(seen[0], pyqueue.CancelledError)
            assert waiter.cancelled()  # the asyncio task ends as cancelled
            with pytest.raises(asyncio.CancelledError):
                await victim  # already cancelled: at once

        run(main())
        gate.set()
    finally:
        q.shutdown()


def test_as_completed_yields_in_completion_order_each_once(q, occupy):
    slow, gate = occupy(q)
    fast = q.submit(abs, -1)

    async def main():
        seen = []
        async for t in q.as_completed([slow, fast, fast]):
            seen.append(t)
            if t is fast:
                gate.set()
        assert seen == [fast, slow]

    run(main())


def test_as_completed_timeout_and_early_exit_cancel_nothing(q, occupy):
    slow, gate = occupy(q)

    async def main():
        it = q.as_completed([slow], timeout=0.05)
        with pytest.raises(TimeoutError):
            await it.__anext__()
        assert not slow.done() and not slow.cancelled()
        gate.set()

    run(main())
    assert slow.result(timeout=5) is True


def test_gather_returns_results_in_input_order(q):
    async def main():
        tasks = [q.submit(pow, i, 2) for i in range(50)]
        loop = asyncio.get_running_loop()
        wakeups = count_wakeups(loop)
        assert await q.gather(tasks) == [i * i for i in range(50)]
        assert wakeups[0] <= 1  # one wake-up for all of them
        assert await q.gather([]) == []

    run(main())


def test_gather_raises_the_first_failure_without_waiting_for_the_rest(q, occupy):
    slow, gate = occupy(q)

    async def main():
        failing = q.submit(divmod, 1, 0)
        with pytest.raises(ZeroDivisionError):
            await q.gather([slow, failing])
        assert not slow.done()  # it was not waited for, and not cancelled
        gate.set()
        got = await q.gather([slow, failing], return_exceptions=True)
        assert got[0] is True and isinstance(got[1], ZeroDivisionError)

    run(main())


def test_await_native_task(q):
    a = np.arange(20_000.0)
    out = np.zeros_like(a)

    async def main():
        status = await q.submit_native(kernels.add_one_f64, a, out)
        assert not status.any() and (out == a + 1).all()
        bad = np.array([1.0, -1.0, 4.0])
        with pytest.raises(pyqueue.NativeTaskError) as info:
            await q.submit_native(kernels.sqrt_or_fail_f64, bad, np.zeros(3))
        assert info.value.index == 1
        spins = np.full(2000, 2e4)
        handles = [q.submit_native(kernels.spin_f64, spins, np.zeros(2000)) for _ in range(4)]
        statuses = await asyncio.gather(*(_await(h) for h in handles))
        assert all(not s.any() for s in statuses)

    run(main())


def test_native_done_callbacks_run_once_each(q):
    spins = np.full(4000, 2e4)
    out = np.zeros_like(spins)
    calls = []
    fired = threading.Event()
    handle = q.submit_native(kernels.spin_f64, spins, out)
    handle.add_done_callback(calls.append)
    handle.add_done_callback(lambda h: fired.set())
    assert fired.wait(10)
    handle.add_done_callback(calls.append)  # already done: at once
    assert calls == [handle, handle]
