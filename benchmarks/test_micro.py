"""Microbenchmarks of pyqueue's hot paths (pytest-benchmark).

Run with ``pytest benchmarks/ --benchmark-only``; compare two runs with
``--benchmark-save=NAME`` and ``--benchmark-compare``.  ThreadPoolExecutor rows
are the reference measured in the same session.  Nothing here asserts speed:
the asserts only check that the work was done.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmarks.conftest import WORKERS

ITEMS = range(1000)
NATIVE_ITEMS = 1_000_000


def noop(x=None):
    return x


def inc(x):
    return x + 1


@pytest.fixture(scope="module")
def native_arrays():
    a = np.arange(NATIVE_ITEMS, dtype=np.float64)
    return a, np.zeros_like(a)


# -- TaskQueue: submit, result, map, results ----------------------------------------


@pytest.mark.benchmark(group="submit")
def test_submit(benchmark, queue):
    """One ``submit`` call; tasks run (and are dropped) behind the benchmark."""
    benchmark(queue.submit, noop, 1)


@pytest.mark.benchmark(group="submit")
def test_submit_many_1k_and_collect(benchmark, queue):
    def run():
        return [t.result() for t in queue.submit_many(noop, ITEMS)]

    assert benchmark(run)[-1] == 999


@pytest.mark.benchmark(group="result")
def test_round_trip(benchmark, queue):
    """``submit(f, x).result()`` on an idle queue (W5's unit)."""
    assert benchmark(lambda: queue.submit(noop, 1).result()) == 1


@pytest.mark.benchmark(group="result")
def test_result_of_done_task(benchmark, queue):
    task = queue.submit(noop, 1)
    task.result()
    assert benchmark(task.result) == 1


@pytest.mark.benchmark(group="map")
def test_map_1k(benchmark, queue):
    assert benchmark(lambda: list(queue.map(inc, ITEMS)))[-1] == 1000


@pytest.mark.benchmark(group="map")
def test_map_100k(benchmark, queue):
    items = range(100_000)
    assert benchmark(lambda: list(queue.map(inc, items)))[-1] == 100_000


@pytest.mark.benchmark(group="results")
def test_results_1k(benchmark, queue):
    """Submit 1000 tasks and drain them in completion order."""

    def run():
        return sum(1 for _ in queue.results(queue.submit_many(noop, ITEMS)))

    assert benchmark(run) == 1000


# -- native lane ----------------------------------------------------------------------


@pytest.mark.benchmark(group="native-1M")
def test_map_native_add_one(benchmark, queue, pq, native_arrays):
    a, out = native_arrays
    status = benchmark(queue.map_native, pq.kernels.add_one_f64, a, out)
    assert not np.asarray(status).any() and out[-1] == NATIVE_ITEMS


@pytest.mark.benchmark(group="native-1M")
def test_run_serial_add_one(benchmark, pq, native_arrays):
    """The plain C loop map_native is measured against."""
    a, out = native_arrays
    benchmark(pq.kernels.run_serial, pq.kernels.add_one_f64, a, out)
    assert out[-1] == NATIVE_ITEMS


@pytest.mark.benchmark(group="native-1M")
def test_numpy_add_one(benchmark, native_arrays):
    a, out = native_arrays
    benchmark(np.add, a, 1.0, out)
    assert out[-1] == NATIVE_ITEMS


# -- Executor, with ThreadPoolExecutor as the reference --------------------------------


@pytest.mark.benchmark(group="executor-submit")
def test_executor_submit(benchmark, executor):
    benchmark(executor.submit, noop, 1)


@pytest.mark.benchmark(group="executor-submit")
def test_threadpool_submit(benchmark):
    with ThreadPoolExecutor(WORKERS) as ex:
        benchmark(ex.submit, noop, 1)


@pytest.mark.benchmark(group="executor-round-trip")
def test_executor_round_trip(benchmark, executor):
    assert benchmark(lambda: executor.submit(noop, 1).result()) == 1


@pytest.mark.benchmark(group="executor-round-trip")
def test_threadpool_round_trip(benchmark):
    with ThreadPoolExecutor(WORKERS) as ex:
        assert benchmark(lambda: ex.submit(noop, 1).result()) == 1
