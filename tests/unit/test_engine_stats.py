"""TaskQueue.stats() and its Prometheus export (pyqueue.metrics)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import threading
import time

import pytest

import pyqueue
from pyqueue import EngineStats, TaskQueue


def _boom(i: int) -> int:
    raise ValueError(i)


def _wait_for(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


def _balanced(s: EngineStats) -> bool:
    return s.submitted == s.completed + s.failed + s.cancelled + s.in_flight + s.queued_by_lane[0]


def test_counts_after_a_known_workload() -> None:
    rng = random.Random()
    n, k = rng.randint(50, 300), rng.randint(1, 40)
    with TaskQueue(2) as q:
        before = q.stats()
        assert before == EngineStats(0, 0, 0, 0, 0, 0, (0, 0), 0, 0)
        tasks = [q.submit(abs, -i) for i in range(n)]
        tasks += q.submit_many(_boom, range(k))
        for t in tasks:
            t.exception()
        s = q.stats()
    assert (s.submitted, s.completed, s.failed, s.cancelled) == (n + k, n, k, 0)
    assert (s.in_flight, s.queued, s.queued_by_lane) == (0, 0, (0, 0))
    assert _balanced(s)


def test_stats_is_frozen() -> None:
    with TaskQueue(1) as q:
        s = q.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.submitted = 5  # type: ignore[misc]


def test_in_flight_and_queued_while_tasks_block() -> None:
    workers, extra = 2, 5
    gate = threading.Event()
    with TaskQueue(workers) as q:
        try:
            tasks = [q.submit(gate.wait, 30) for _ in range(workers + extra)]
            _wait_for(lambda: q.stats().in_flight == workers)
            s = q.stats()
            assert s.queued_by_lane[0] == extra
            assert s.queued == sum(s.queued_by_lane)
            assert _balanced(s)
            # Cancelling a queued task moves it from queued to cancelled.
            assert tasks[-1].cancel()
            s2 = q.stats()
            assert (s2.queued_by_lane[0], s2.cancelled) == (extra - 1, 1)
        finally:
            gate.set()
        for t in tasks[:-1]:
            assert t.result() is True
        s = q.stats()
    assert (s.completed, s.cancelled, s.in_flight, s.queued) == (workers + extra - 1, 1, 0, 0)


def test_map_counts_chunks_as_tasks() -> None:
    with TaskQueue(2) as q:
        out = list(q.map(abs, range(-500, 0), chunksize=50, ahead=4))
        s = q.stats()
    assert out == list(range(500, 0, -1))
    # Each chunk handed to the queue is a task; the map may run some inline.
    assert 0 < s.submitted <= 10
    assert s.completed + s.cancelled == s.submitted
    assert _balanced(s)


def test_native_lane() -> None:
    np = pytest.importorskip("numpy")
    args = np.arange(10_000, dtype=np.float64)
    out = np.empty_like(args)
    with TaskQueue(1, native_workers=2) as q:
        q.map_native(pyqueue.kernels.add_one_f64, args, out, chunksize=100)
        s = q.stats()
    assert (out == args + 1).all()
    assert (s.native_batches, s.native_chunks_run, s.queued_by_lane[1]) == (1, 100, 0)


def test_stats_after_shutdown_keeps_the_final_counts() -> None:
    gate = threading.Event()
    q = TaskQueue(1)
    running = q.submit(gate.wait, 30)
    _wait_for(lambda: q.stats().in_flight == 1)
    queued = [q.submit(abs, -1) for _ in range(3)]
    q.shutdown(wait=False, cancel_pending=True)
    gate.set()
    q.shutdown(wait=True)
    assert running.result() is True
    assert all(t.cancelled() for t in queued)
    s = q.stats()
    assert (s.submitted, s.completed, s.cancelled, s.in_flight, s.queued) == (4, 1, 3, 0, 0)
    assert q.stats() == s  # stable once shut down


def test_importing_pyqueue_does_not_import_prometheus() -> None:
    code = "import sys, pyqueue; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metrics_without_prometheus_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import pyqueue.metrics\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'pyqueue[metrics]'" in out.stdout


def test_collector_output_parses_back_to_the_same_numbers() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pyqueue.metrics import register_task_queue

    n, k = random.randint(5, 50), random.randint(1, 10)
    gate = threading.Event()
    registry = CollectorRegistry()
    with TaskQueue(1) as q:
        register_task_queue(q, registry, name="jobs")
        try:
            tasks = [q.submit(abs, -i) for i in range(n)] + q.submit_many(_boom, range(k))
            for t in tasks:
                t.exception()
            blocker = q.submit(gate.wait, 30)
            waiting = [q.submit(abs, 1) for _ in range(3)]
            _wait_for(lambda: q.stats().in_flight == 1)
            text = generate_latest(registry).decode()
            s = q.stats()
        finally:
            gate.set()
        blocker.result()
        for t in waiting:
            t.result()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= {"queue", "lane"}
            assert sample.labels["queue"] == "jobs"
            samples[(sample.name, sample.labels.get("lane"))] = sample.value
    assert samples[("pyqueue_engine_tasks_submitted_total", None)] == s.submitted == n + k + 4
    assert samples[("pyqueue_engine_tasks_completed_total", None)] == s.completed == n
    assert samples[("pyqueue_engine_tasks_failed_total", None)] == s.failed == k
    assert samples[("pyqueue_engine_tasks_in_flight", None)] == s.in_flight == 1
    assert len(s.queued_by_lane) == len(EngineStats.LANES)
    for lane, depth in zip(EngineStats.LANES, s.queued_by_lane):
        assert samples[("pyqueue_engine_tasks_queued", lane)] == depth
    assert samples[("pyqueue_engine_tasks_queued", "python")] == 3


def test_counts_when_submit_waits_for_room() -> None:
    # A tiny ring: most submits push with the GIL released, and a worker may
    # run the task before the submitter counts it (see _count_submitted).
    n = random.randint(300, 600)
    with TaskQueue(2, maxsize=2) as q:
        tasks = [q.submit(abs, -i) for i in range(n)]
        assert [t.result() for t in tasks] == list(range(n))
        s = q.stats()
    assert (s.submitted, s.completed, s.in_flight, s.queued) == (n, n, 0, 0)
