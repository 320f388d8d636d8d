"""Task semantics: results, exceptions, cancellation, callbacks, bad input."""

import threading
import time
import traceback

import pytest

import pyqueue


def boom(msg):
    raise KeyError(msg)


def test_submit_returns_result_with_args_and_kwargs(q):
    t = q.submit(divmod, 17, 5)
    assert t.result() == (3, 2)
    assert q.submit(lambda a, *, b: a - b, 10, b=3).result() == 7
    assert t.done() and not t.cancelled() and not t.running()
    assert t.exception() is None


def test_exception_is_reraised_with_original_type_and_traceback(q):
    t = q.submit(boom, "missing")
    with pytest.raises(KeyError, match="missing") as info:
        t.result()
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "boom" in frames
    assert isinstance(t.exception(), KeyError)
    assert "raised KeyError" in repr(t)


def test_non_callable_is_rejected_at_submit(q):
    with pytest.raises(TypeError, match="not callable"):
        q.submit(42)
    with pytest.raises(TypeError, match="not callable"):
        q.submit_many("nope", [1, 2])
    with pytest.raises(TypeError):
        q.map(None, [1])
    assert q.submit(abs, -1).result() == 1  # the queue still works


def test_submit_after_shutdown_raises_queue_closed():
    q = pyqueue.TaskQueue(workers=1)
    q.shutdown()
    with pytest.raises(pyqueue.QueueClosed):
        q.submit(abs, 1)
    with pytest.raises(RuntimeError):  # QueueClosed is a RuntimeError
        q.submit_many(abs, [1])
    q.shutdown()  # idempotent


def test_cancel_pending_task_raises_cancelled_error(occupy):
    with pyqueue.TaskQueue(workers=1) as q:
        blocker, gate = occupy(q)
        victim = q.submit(abs, -5)
        assert victim.cancel() is True
        assert victim.cancel() is True
        assert victim.cancelled() and victim.done()
        with pytest.raises(pyqueue.CancelledError):
            victim.result()
        with pytest.raises(pyqueue.CancelledError):
            victim.exception()
        gate.set()
        assert blocker.result() is True
        assert blocker.cancel() is False


def test_result_timeout_on_running_task(occupy):
    with pyqueue.TaskQueue(workers=1) as q:
        t, gate = occupy(q)
        assert t.running()
        with pytest.raises(TimeoutError):
            t.result(timeout=0.05)
        with pytest.raises(TimeoutError):
            t.exception(timeout=0)
        gate.set()
        assert t.result(timeout=5) is True


def test_done_callbacks_run_once_and_immediately_when_done(q, caplog):
    seen = []
    first_ran = threading.Event()
    t = q.submit(pow, 3, 2)
    t.add_done_callback(lambda task: (seen.append(("first", task.result())), first_ran.set()))
    t.result()
    t.add_done_callback(lambda task: seen.append(("late", task.result())))
    # result() may return before a worker has run the first callback.
    assert first_ran.wait(5)
    assert sorted(seen) == [("first", 9), ("late", 9)]
    # A failing callback is logged, not propagated, and does not stop others.
    t2 = q.submit(abs, -1)
    t2.result()
    t2.add_done_callback(lambda task: 1 / 0)
    assert "exception calling callback" in caplog.text


def test_result_runs_unstarted_task_in_caller_thread(occupy):
    with pyqueue.TaskQueue(workers=1) as q:
        _, gate = occupy(q)  # the only worker is busy
        t = q.submit(threading.get_ident)
        assert t.result() == threading.get_ident()
        gate.set()


def test_submit_many_plain_and_star(q):
    tasks = q.submit_many(str.upper, ["a", "b"])
    assert [t.result() for t in tasks] == ["A", "B"]
    tasks = q.submit_many(pow, [(2, 3), (3, 2)], star=True)
    assert [t.result() for t in tasks] == [8, 9]


def test_full_queue_nowait_and_timeout_raise_queue_full(occupy):
    q = pyqueue.TaskQueue(workers=1, maxsize=2, put_timeout=0.05)
    try:
        _, gate = occupy(q)
        q.submit(abs, 1)
        q.submit(abs, 2)
        with pytest.raises(pyqueue.QueueFull):
            q.submit_nowait(abs, 3)
        t0 = time.monotonic()
        with pytest.raises(pyqueue.QueueFull):
            q.submit(abs, 4)
        assert time.monotonic() - t0 >= 0.04
        with pytest.raises(pyqueue.QueueFull):
            q.submit_many(abs, [5], timeout=0.01)
    finally:
        gate.set()
        q.shutdown()


def test_full_queue_blocks_until_room():
    # maxsize 2, one slow worker: submitting 50 tasks must wait, not fail.
    with pyqueue.TaskQueue(workers=1, maxsize=2) as q:
        tasks = [q.submit(time.sleep, 0.001) for _ in range(50)]
        assert all(t.result() is None for t in tasks)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"workers": 0}, ValueError),
        ({"workers": -1}, ValueError),
        ({"workers": 1.5}, TypeError),
        ({"workers": True}, TypeError),
        ({"maxsize": 0}, ValueError),
        ({"native_workers": 0}, ValueError),
        ({"initializer": 3}, TypeError),
        ({"budget": 0}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        pyqueue.TaskQueue(**kwargs)


def test_shutdown_cancel_pending_cancels_queued_tasks(occupy):
    q = pyqueue.TaskQueue(workers=1)
    running, gate = occupy(q)
    queued = [q.submit(abs, -i) for i in range(100)]
    # Released by the first cancelled task's callback, i.e. once shutdown has
    # cancelled the queue: no timer races the cancellation.
    queued[0].add_done_callback(lambda t: gate.set())
    q.shutdown(wait=True, cancel_pending=True)
    assert running.result() is True
    assert all(t.cancelled() for t in queued)


def test_shutdown_without_cancel_runs_every_queued_task():
    q = pyqueue.TaskQueue(workers=2)
    tasks = [q.submit(pow, i, 2) for i in range(1000)]
    q.shutdown(wait=True)
    assert [t.result(timeout=0) for t in tasks] == [i * i for i in range(1000)]


def test_queue_repr_and_qsize(q):
    assert "open" in repr(q)
    assert q.qsize() >= 0
    assert q.workers == 2
    q.shutdown()
    assert "closed" in repr(q) and q.closed


def test_done_callback_not_lost_when_gc_switches_threads_mid_registration():
    # Regression: registering a callback allocates; the allocation can run the
    # garbage collector, and a collector hook (like any finalizer) can release
    # the GIL, letting a worker complete the task in the middle of the
    # registration.  Every callback must still run exactly once.
    import gc

    calls = []
    lock = threading.Lock()

    def on_done(task):
        with lock:
            calls.append(task)

    def let_others_run(phase, info):
        time.sleep(0.0001)

    old = gc.get_threshold()
    gc.callbacks.append(let_others_run)
    gc.set_threshold(1)
    try:
        with pyqueue.TaskQueue(workers=2) as q:
            tasks = []
            for _ in range(2000):
                t = q.submit(sum, range(200))
                t.add_done_callback(on_done)
                tasks.append(t)
            for t in tasks:
                t.result()
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(let_others_run)
    assert len(calls) == len(tasks) and set(calls) == set(tasks)


class _Holder:
    """Something a task returns that can point back at the task."""

    def __call__(self):
        return self


def test_cycles_through_finished_tasks_are_collected():
    # Pending tasks are kept out of the cyclic GC for speed; a finished task
    # whose value can close a cycle back to it must be collectable again.
    import gc
    import weakref

    class Boom(Exception):
        pass  # a Python subclass: weak references work on it

    def fail():
        raise Boom("x")

    with pyqueue.TaskQueue(workers=1) as q:
        holder = _Holder()
        t = q.submit(_Holder.__call__, holder)
        holder.task = t  # holder -> task -> holder
        t.result()
        probe = weakref.ref(holder)
        del holder, t

        failed = q.submit(fail)
        try:
            failed.result()
        except Boom as exc:
            exc.task = failed  # exception -> task -> exception
        err_probe = weakref.ref(failed.exception())
        del failed
    # After shutdown the lane holds no reference to either task.
    gc.collect()
    assert probe() is None, "a result that refers to its task leaked"
    assert err_probe() is None, "an exception that refers to its task leaked"


def test_task_is_generic_at_runtime(q):
    alias = pyqueue.Task[int]  # what annotations like Task[int] evaluate to
    assert alias.__origin__ is pyqueue.Task and alias.__args__ == (int,)
    assert isinstance(q.submit(abs, -1), pyqueue.Task)
