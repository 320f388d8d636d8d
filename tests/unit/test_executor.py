"""pyqueue.Executor follows the concurrent.futures contract."""

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
import types

import pytest

import pyqueue


@pytest.fixture
def ex():
    executor = pyqueue.Executor(max_workers=2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def test_returns_real_futures(ex):
    f = ex.submit(pow, 2, 8)
    assert isinstance(f, cf.Future)
    assert f.result() == 256
    assert isinstance(ex, cf.Executor)


def test_wait_and_as_completed(ex):
    fs = [ex.submit(pow, i, 2) for i in range(50)]
    done, not_done = cf.wait(fs, timeout=10)
    assert len(done) == 50 and not not_done
    assert sorted(f.result() for f in cf.as_completed(fs)) == [i * i for i in range(50)]


def test_exceptions_propagate(ex):
    f = ex.submit(int, "x")
    with pytest.raises(ValueError):
        f.result()
    assert isinstance(f.exception(), ValueError)


def test_map_follows_stdlib(ex):
    assert list(ex.map(pow, [1, 2, 3], [2, 2, 2], chunksize=2)) == [1, 4, 9]
    # cf.TimeoutError: the builtin TimeoutError only from 3.11 on.
    with pytest.raises(cf.TimeoutError):
        list(ex.map(time.sleep, [0.5, 0.5], timeout=0.05))


def test_run_in_executor(ex):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, pow, i, 3) for i in range(5)))

    assert asyncio.run(main()) == [i**3 for i in range(5)]


def test_shutdown_cancel_futures_and_submit_after_shutdown(occupy):
    ex = pyqueue.Executor(max_workers=1)
    running, gate = occupy(ex)
    queued = [ex.submit(abs, -i) for i in range(20)]
    # The blocker is released once shutdown has cancelled the queue, by the
    # first cancelled future's callback: no timer races the cancellation.
    queued[0].add_done_callback(lambda f: gate.set())
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result() is True
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_submit_task_gives_the_engines_task_with_what_a_node_uses(occupy):
    """_submit_task (a cluster node's submit): a pyqueue.Task, not a Future,
    that cancels, calls back and answers as a Future would."""
    ex = pyqueue.Executor(max_workers=1)
    try:
        running, gate = occupy(ex)
        done: list[object] = []
        queued = ex._submit_task(pow, 2, 8)
        dropped = ex._submit_task(pow, 2, 9)
        assert isinstance(queued, pyqueue.Task) and not isinstance(queued, cf.Future)
        queued.add_done_callback(done.append)
        dropped.add_done_callback(done.append)
        assert dropped.cancel() and dropped.cancelled() and done == [dropped]
        called = threading.Event()
        queued.add_done_callback(lambda t: called.set())  # after done.append
        gate.set()
        assert queued.result(5) == 256 and not queued.cancelled() and not queued.cancel()
        assert called.wait(5) and done == [dropped, queued]
        failed = ex._submit_task(int, "x")
        with pytest.raises(ValueError):
            failed.result(5)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    assert running.result() is True


def test_initializer_failure_breaks_executor():
    def bad_init():
        raise OSError("no database")

    ex = pyqueue.Executor(max_workers=2, initializer=bad_init)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            f = ex.submit(abs, 1)
        except pyqueue.BrokenQueue:
            break
        with pytest.raises(cf.BrokenExecutor):
            f.result(timeout=5)
        break
    with pytest.raises(cf.BrokenExecutor):
        ex.submit(abs, 1)
    ex.shutdown()


def test_initializer_runs_in_every_worker():
    names = set()
    lock = threading.Lock()

    def init(tag):
        with lock:
            names.add((tag, threading.current_thread().name))

    with pyqueue.Executor(
        max_workers=3, thread_name_prefix="ex", initializer=init, initargs=("t",)
    ) as ex:
        ex.submit(abs, 1).result()
    assert len(names) == 3 and all(n.startswith("ex-") for _, n in names)


def test_bad_arguments():
    with pytest.raises(ValueError):
        pyqueue.Executor(max_workers=0)
    with pytest.raises(TypeError):
        pyqueue.Executor(initializer="x")
    with pyqueue.Executor(max_workers=1) as ex, pytest.raises(TypeError):
        ex.submit(None)


def test_map_with_chunks_keeps_order_and_raises_in_place(ex):
    assert list(ex.map(pow, range(100), [2] * 100, chunksize=7)) == [i * i for i in range(100)]
    it = ex.map(lambda x: 1 // x, [1, 1, 0, 1], chunksize=2)
    assert next(it) == 1 and next(it) == 1
    with pytest.raises(ZeroDivisionError):
        next(it)
    with pytest.raises(ValueError):
        ex.map(abs, [1], chunksize=0)


def test_map_with_chunks_returns_a_closable_generator(ex):
    it = ex.map(abs, range(-100, 0), chunksize=7)
    assert isinstance(it, types.GeneratorType)  # as the stdlib's map
    assert next(it) == 100
    it.close()  # cancels what has not started, as the stdlib's does
    with pytest.raises(StopIteration):
        next(it)
    assert list(ex.map(pow, [1, 2, 3], [2, 2, 2], chunksize=2)) == [1, 4, 9]


def test_initializer_failure_is_logged_critical_like_the_stdlib(caplog):
    def bad_init():
        raise OSError("no database")

    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        ex = pyqueue.Executor(max_workers=1, initializer=bad_init)
        ex.queue._threads[0].join(5)
        ex.shutdown()
    records = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert len(records) == 1 and records[0].levelno == logging.CRITICAL
    assert records[0].getMessage() == "Exception in initializer:"
    assert records[0].exc_info is not None and records[0].exc_info[0] is OSError


def test_thread_pool_executor_is_asyncio_default_executor():
    async def main():
        loop = asyncio.get_running_loop()
        ex = pyqueue.ThreadPoolExecutor(max_workers=2, thread_name_prefix="aio")
        loop.set_default_executor(ex)  # asyncio accepts only ThreadPoolExecutor instances
        name = await asyncio.to_thread(lambda: threading.current_thread().name)
        assert name.startswith("aio")
        infos = await loop.getaddrinfo("127.0.0.1", 80)
        assert infos and infos[0][4][0] == "127.0.0.1"
        assert await loop.run_in_executor(None, pow, 2, 8) == 256
        return ex

    ex = asyncio.run(main())  # asyncio.run shuts the default executor down
    assert isinstance(ex, cf.ThreadPoolExecutor) and isinstance(ex, pyqueue.Executor)
    assert ex.queue.closed
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)
