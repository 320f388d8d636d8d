"""map (ordered, lazy, exceptions in place) and results (completion order)."""

import itertools
import random
import threading
import time

import pytest

import pyqueue


def fail_on_3(x):
    if x == 3:
        raise ValueError("three")
    return x * 10


def test_map_preserves_order_with_adaptive_and_fixed_chunks(q):
    data = list(range(5000))
    assert list(q.map(lambda x: x * 2, data)) == [x * 2 for x in data]
    for chunksize in (1, 7, 10000):
        assert list(q.map(abs, range(-50, 50), chunksize=chunksize)) == [
            abs(x) for x in range(-50, 50)
        ]


def test_map_long_runs_switch_between_inline_and_look_ahead_without_losing_items(q):
    # Thousands of chunks: the adaptive look-ahead drops to inline runs for
    # pure-Python work and probes overlap again every so often; every item
    # must come out once, in order, across those switches.
    n = 300_000
    assert list(q.map(lambda x: x * 3, range(n), chunksize=16)) == [x * 3 for x in range(n)]
    assert list(q.map(lambda x: x - 1, iter(range(n)))) == [x - 1 for x in range(n)]


def test_map_several_iterables_stops_at_shortest(q):
    assert list(q.map(pow, [2, 3, 4], [2, 2])) == [4, 9]


# A list's chunks take the engine's list fast path (one vectorcall per item into
# a list of the final size); a range's or a tuple's take the general loop.  Both
# must keep the results before a failure and raise at its position.
INPUTS = pytest.mark.parametrize(
    "source", [range(10), list(range(10)), tuple(range(10))], ids=["range", "list", "tuple"]
)


@INPUTS
def test_map_reraises_at_position(q, source):
    it = q.map(fail_on_3, source, chunksize=2)
    assert [next(it) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(ValueError, match="three"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_map_is_lazy_over_infinite_iterator(q):
    consumed = itertools.count()

    def source():
        for i in itertools.count():
            next(consumed)
            yield i

    it = q.map(lambda x: x + 1, source(), chunksize=10, ahead=3)
    assert [next(it) for _ in range(25)] == list(range(1, 26))
    # Only the consuming thread pulls from the source, so the count is exact
    # here: at most the chunks in flight were pulled (bounded look-ahead).
    assert next(consumed) <= 25 + 10 * 4 + 1
    it.close()


def test_map_timeout(q):
    it = q.map(time.sleep, [0.5, 0.5], timeout=0.05, chunksize=1)
    with pytest.raises(TimeoutError):
        next(it)


def test_map_bad_arguments(q):
    with pytest.raises(TypeError):
        q.map(abs)
    with pytest.raises(ValueError):
        q.map(abs, [1], chunksize=0)
    with pytest.raises(ValueError):
        q.map(abs, [1], ahead=0)


def test_results_yields_in_completion_order(q, occupy):
    slow, gate = occupy(q)
    fast = q.submit(abs, -1)
    it = q.results([slow, fast])
    assert next(it) is fast
    gate.set()
    assert next(it) is slow
    assert list(it) == []


def test_results_yields_each_task_once_including_duplicates_and_failures(q):
    tasks = [q.submit(fail_on_3, i) for i in range(20)]
    seen = list(q.results(tasks + tasks[:5]))
    assert len(seen) == 20 and set(seen) == set(tasks)
    failures = [t for t in seen if t.exception() is not None]
    assert len(failures) == 1


def test_results_timeout_and_bad_input(q):
    gate = threading.Event()
    t = q.submit(gate.wait, 5)
    with pytest.raises(TimeoutError):
        list(q.results([t], timeout=0.05))
    gate.set()
    with pytest.raises(TypeError):
        list(q.results([1, 2]))


def test_results_fan_in_many_tasks(q):
    tasks = q.submit_many(lambda x: x * x, range(10000))
    assert sorted(t.result() for t in q.results(tasks)) == [x * x for x in range(10000)]


def test_map_runs_blocking_tasks_on_every_worker_at_once():
    # 32 tasks that each wait for all 32 to arrive: only a 32-way overlap
    # lets the barrier open (a serial or 2-way run breaks it with an error).
    barrier = threading.Barrier(32, timeout=20)
    with pyqueue.TaskQueue(workers=32) as q:
        it = q.map(lambda _: barrier.wait(), range(32), chunksize=1, ahead=32)
        assert sorted(it) == list(range(32))


def test_map_length_hint_tracks_what_is_left_for_sized_inputs(q):
    import operator

    it = q.map(abs, list(range(-10, 0)), chunksize=4)
    assert operator.length_hint(it) == 10
    for _ in range(3):
        next(it)
    assert operator.length_hint(it) == 7
    assert len(list(it)) == 7 and operator.length_hint(it) == 0
    assert operator.length_hint(q.map(abs, iter([1, 2]))) == 0  # unknown for iterators


def test_map_keeps_every_item_when_a_look_ahead_push_fails(occupy):
    # Found in review: a QueueFull from refilling the look-ahead dropped the
    # chunk being waited for and the chunk taken from the source.
    q = pyqueue.TaskQueue(workers=1, maxsize=4, put_timeout=0.05)
    try:
        _, gate = occupy(q)
        it = q.map(lambda x: x, list(range(20)), chunksize=1, ahead=2)
        for _ in range(2):
            q.submit(abs, 1)  # the lane is now full
        with pytest.raises(pyqueue.QueueFull):
            next(it)
        gate.set()
        assert list(it) == list(range(20))
    finally:
        gate.set()
        q.shutdown()


@INPUTS
def test_map_function_raising_stop_iteration_is_an_error_not_the_end(q, source):
    def stop_at_3(x):
        if x == 3:
            raise StopIteration
        return x

    it = q.map(stop_at_3, source, chunksize=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="StopIteration"):
        next(it)


def test_results_without_argument_yields_every_unread_task_once(q):
    tasks = [q.submit(pow, i, 2) for i in range(20)]
    tasks += q.submit_many(abs, [-1, -2])
    read = tasks.pop()  # its result is read: it is not yielded
    assert read.result() == 2
    nowait = q.submit_nowait(abs, -5)
    del tasks[5]  # a handle the caller dropped is still held and yielded
    got = list(q.results(timeout=10))
    assert len(got) == 22 and len(set(got)) == 22
    assert nowait in got and read not in got
    assert sorted(t.result() for t in got) == sorted([i * i for i in range(20)] + [1, 5])
    assert list(q.results()) == []  # each is yielded once


def test_results_without_argument_after_reads_in_any_order(q):
    # Enough tasks, read in a random order between submits, that the queue's
    # store of unread tasks grows and compacts several times.
    rng = random.Random()
    unread: dict[int, pyqueue.Task[int]] = {}
    n = 0
    for _ in range(4):
        for _ in range(rng.randint(500, 1500)):
            unread[n] = q.submit(abs, -n)
            n += 1
        for i in rng.sample(sorted(unread), k=len(unread) * 3 // 4):
            assert unread.pop(i).result() == i
    got = list(q.results(timeout=30))
    assert sorted(t.result() for t in got) == sorted(unread)
    assert list(q.results()) == []


def test_results_without_argument_skips_map_executor_and_yielded_tasks(q):
    assert list(q.map(abs, range(-50, 0))) == list(range(50, 0, -1))
    with pyqueue.Executor(2) as ex:
        assert ex.submit(pow, 2, 2).result() == 4
    t = q.submit(abs, -3)
    assert list(q.results([t])) == [t]  # yielded with an explicit list
    assert list(q.results()) == []


def test_tunables_are_validated_and_passed_to_the_engine():
    import numpy as np

    from pyqueue import kernels

    with pytest.raises(ValueError):
        pyqueue.Tunables(map_max_chunk=0)
    with pytest.raises(ValueError):
        pyqueue.Tunables(native_ring_capacity=1000)  # not a power of two
    with pytest.raises(ValueError):
        pyqueue.Tunables(native_chunk_min=10, native_chunk_max=5)
    with pytest.raises(TypeError):
        pyqueue.TaskQueue(1, tunables={"map_max_chunk": 2})
    tiny = pyqueue.Tunables(map_max_chunk=2, map_probe_every=1, native_chunk_max=256)
    with pyqueue.TaskQueue(2, native_workers=2, tunables=tiny) as q:
        assert list(q.map(abs, range(-500, 0))) == list(range(500, 0, -1))
        a = np.arange(10_000.0)
        out = np.zeros_like(a)
        assert not q.map_native(kernels.add_one_f64, a, out).any()
        assert (out == a + 1).all()
