"""Bounded, seeded stress: many submitting threads, exact count and sum."""

import random
import threading

import numpy as np
import pytest

import pyqueue
from pyqueue import kernels

pytestmark = pytest.mark.slow


def test_eight_submitters_100k_tasks_each_exact_count_and_sum():
    threads, per_thread = 8, 100_000
    totals = [0] * threads
    errors = []
    with pyqueue.TaskQueue(workers=2, maxsize=4096) as q:

        def submitter(k):
            try:
                tasks = [q.submit(int.__add__, i, k) for i in range(per_thread)]
                totals[k] = sum(t.result() for t in tasks)
            except BaseException as exc:  # reported below, never swallowed
                errors.append(exc)

        ts = [threading.Thread(target=submitter, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in ts), "a submitter hung"
    assert not errors
    base = per_thread * (per_thread - 1) // 2
    assert totals == [base + k * per_thread for k in range(threads)]


def test_mixed_python_map_fan_in_and_native_batches_concurrently():
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    sizes = [rng.randrange(1, 50_000) for _ in range(20)]
    errors = []
    with pyqueue.TaskQueue(workers=3) as q:

        def native_worker():
            try:
                for n in sizes:
                    a = np.arange(n, dtype=np.float64)
                    out = np.zeros_like(a)
                    q.map_native(kernels.add_one_f64, a, out, chunksize=rng.randrange(1, 5000))
                    assert np.array_equal(out, a + 1)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=native_worker)
        t.start()
        assert sum(q.map(lambda x: x * 3, range(200_000))) == 3 * sum(range(200_000))
        tasks = q.submit_many(lambda x: -x, range(50_000))
        assert sum(task.result() for task in q.results(tasks)) == -sum(range(50_000))
        t.join(timeout=120)
        assert not t.is_alive()
    assert not errors, f"seed {seed}: {errors}"
