"""Honest cancel: True only once it is certain the task will not run (or,
with terminate=True, that it ended cancelled); False for running and finished
tasks, as concurrent.futures answers."""

from __future__ import annotations

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import wait_until

from pyqueue.cluster import TaskState
from pyqueue.errors import TaskCancelled

pytestmark = pytest.mark.slow


def one_node_cluster(harness):
    harness.coordinator()
    harness.node(workers=1, prefetch=4, name="solo")
    c = harness.client()
    harness.wait_nodes(c, 1)
    return c


def test_cancel_of_a_prefetched_task_revokes_it_and_it_never_runs(harness, tmp_path):
    c = one_node_cluster(harness)
    gate = str(tmp_path / "gate")
    blocker = c.submit(T.wait_file, gate)  # holds the only slot
    queued = c.submit(T.square_plus, 3, 0)  # prefetched behind it
    wait_until(lambda: c.status()["in_flight"] == 2, 10, "both tasks leased to the node")
    assert queued.cancel() is True
    with pytest.raises(TaskCancelled):
        queued.result(timeout=10)
    assert queued.state is TaskState.CANCELLED
    open(gate, "w").close()
    assert blocker.result(timeout=10) == gate
    # the node's slot was freed and the revoked task never started anywhere
    assert c.submit(T.square_plus, 4, 0).result(timeout=10) == 16
    assert queued.id not in harness.executions()
    assert c.status()["tasks"]["cancelled"] == 1


def test_cancel_of_a_running_task_returns_false_and_it_completes(harness, tmp_path):
    c = one_node_cluster(harness)
    gate = str(tmp_path / "gate")
    running = c.submit(T.wait_file, gate)
    wait_until(lambda: running.id in harness.executions(), 10, "the task to start")
    assert running.cancel() is False
    open(gate, "w").close()
    assert running.result(timeout=10) == gate
    assert running.cancel() is False  # finished: False too


def test_terminate_raises_task_cancelled_inside_a_running_task(harness, tmp_path):
    c = one_node_cluster(harness)
    started, saw = tmp_path / "started", tmp_path / "saw"
    t = c.submit(T.spin_until_cancelled, str(started), str(saw))
    wait_until(started.exists, 10, "the task to start")
    assert t.cancel(terminate=True) is True
    assert saw.exists()  # the task itself saw TaskCancelled
    with pytest.raises(TaskCancelled):
        t.result(timeout=10)
    assert t.state is TaskState.CANCELLED
    st = c.status()
    assert st["tasks"]["cancelled"] == 1 and st["in_flight"] == 0
    # the worker thread is free again
    assert c.submit(T.square_plus, 2, 0).result(timeout=10) == 4


def test_cancel_of_a_pending_task_and_of_an_unknown_id(harness, tmp_path):
    harness.coordinator()  # no node: tasks stay pending
    c = harness.client()
    t = c.submit(T.square_plus, 1, 0)
    assert t.acknowledged(10)
    assert t.cancel() is True
    with pytest.raises(TaskCancelled):
        t.result(timeout=10)
    assert c._cancel(["never-submitted"], 10, False) == [False]
