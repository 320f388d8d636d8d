"""Per-task time limits on real processes: the soft limit (TaskTimeout raised
in the task), retries, validation, and the hard limit (a stuck task gets its
supervised worker replaced, and still ends FAILED with TaskTimeout)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import Harness, children, wait_until

from pyqueue.cluster import TaskTimeout
from pyqueue.cluster.states import TaskState

pytestmark = pytest.mark.slow

# A wedged worker sends no heartbeat: keep the coordinator from declaring it
# dead (which would charge its tasks a loss) before limit + grace + the
# supervisor's margin have passed.
_PATIENT = ["--lease", "30", "--heartbeat", "0.5", "--missed-heartbeats", "30"]


def _worker(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    return wait_until(lambda: (children(proc.pid) or [None])[0], timeout, "the worker child")


def _cluster(harness: Harness, workers: int, *node_args: str) -> subprocess.Popen[bytes]:
    harness.coordinator(None, True, *_PATIENT)
    return harness.node(workers, None, "limits", True, *_PATIENT, *node_args)


def test_a_python_loop_past_its_limit_gets_task_timeout_and_its_finally_runs(harness, tmp_path):
    node = _cluster(harness, 1)
    c = harness.client()
    harness.wait_nodes(c, 1)
    worker = _worker(node)
    mark = tmp_path / "finally"
    h = c.submit_call(T.spin_with_finally, (str(mark), 60.0), time_limit=0.5)
    with pytest.raises(TaskTimeout, match=r"ran past its time limit of 0\.5 s"):
        h.result(30)
    assert mark.read_text() == "x"
    # an ordinary failure, run once (a loss would have rerun it), and the same worker carries on
    assert h.state is TaskState.FAILED and harness.executions()[h.id] == 1
    assert c.submit(T.square_plus, 3, 1).result(20) == 10
    assert _worker(node) == worker and "replac" not in harness.log(node)


def test_a_task_under_its_limit_is_unaffected(harness):
    _cluster(harness, 2)
    c = harness.client()
    harness.wait_nodes(c, 1)
    hs = [c.submit_call(T.slow, (i, 0.05), time_limit=30) for i in range(20)]
    hs.append(c.submit_call(T.slow, (99, 0.05)))  # a payload without a limit still runs
    assert [h.result(30) for h in hs] == [*range(20), 99]
    assert c.status()["tasks"]["succeeded"] == 21


def test_retries_apply_to_a_timeout(harness, tmp_path):
    _cluster(harness, 1)
    c = harness.client()
    harness.wait_nodes(c, 1)
    mark = tmp_path / "finally"
    h = c.submit_call(
        T.spin_with_finally, (str(mark), 60.0), time_limit=0.3, retries=1, backoff=0.05
    )
    with pytest.raises(TaskTimeout):
        h.result(30)
    assert harness.executions()[h.id] == 2
    assert mark.read_text() == "xx"
    assert h.state is TaskState.FAILED and c.status()["tasks"]["failed"] == 1


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True])
def test_a_bad_time_limit_is_a_value_error_before_anything_is_sent(harness, bad):
    harness.coordinator()
    c = harness.client()
    with pytest.raises(ValueError, match="time_limit"):
        c.submit_call(T.square_plus, (1, 1), time_limit=bad)
    assert len(c.outbox) == 0
    assert c.status()["tasks"].get("pending", 0) == 0
    assert sum(v for k, v in c.status()["tasks"].items() if isinstance(v, int)) == 0


def _stuck_beside_others(
    harness: Harness, tmp_path: Path, stuck: object, *node_args: str
) -> tuple[subprocess.Popen[bytes], int, str]:
    """A two-slot node with --max-restarts 0: a replacement counted as a crash
    would make its supervisor give up, and the other tasks would never end."""
    node = _cluster(harness, 2, "--time-limit-grace", "1", "--max-restarts", "0", *node_args)
    c = harness.client()
    harness.wait_nodes(c, 1)
    worker = _worker(node)
    h = c.submit_call(stuck, (60,), time_limit=1.0)
    wait_until(lambda: harness.executions()[h.id] == 1, 20, "the stuck task to start")
    done_dir = tmp_path / "done"
    done_dir.mkdir()
    others = [c.submit(T.done_once, i, str(done_dir)) for i in range(10)]
    with pytest.raises(TaskTimeout) as info:
        h.result(40)
    assert [o.result(40) for o in others] == [i * 10 for i in range(10)]
    assert sorted(p.read_text() for p in done_dir.iterdir()) == sorted(f"{i}\n" for i in range(10))
    # FAILED after one run: not requeued as lost (which would run it again)
    assert h.state is TaskState.FAILED and harness.executions()[h.id] == 1
    assert c.status()["tasks"]["failed"] == 1
    wait_until(lambda: children(node.pid) not in ([], [worker]), 20, "a new worker")
    harness.wait_nodes(c, 1)
    assert c.submit(T.square_plus, 2, 1).result(20) == 5  # the replacement serves
    assert node.poll() is None
    return node, worker, str(info.value)


def test_a_task_stuck_in_c_holding_the_gil_gets_its_worker_replaced(harness, tmp_path):
    node, worker, message = _stuck_beside_others(harness, tmp_path, T.sleep_in_c_holding_the_gil)
    assert "still running 1 s past its time limit of 1 s" in message
    assert f"pid {worker}) was wedged and has been replaced" in message
    log = harness.log(node)
    assert "does not respond" in log and "replacing the worker" in log
    assert "FAILED with TaskTimeout: accepted" in log
    assert "crashed" not in log


def test_a_task_stuck_with_the_gil_released_reports_itself_and_is_replaced(harness, tmp_path):
    node, _, message = _stuck_beside_others(harness, tmp_path, T.sleep_releasing_the_gil)
    assert "still running 1 s past its time limit of 1 s" in message
    assert "its worker process is replaced" in message
    log = harness.log(node)
    assert "stuck past its time limit; replacing this worker" in log
    assert "replacing it now (not counted as a crash)" in log
    assert "does not respond" not in log and "crashed" not in log


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "5"])
def test_a_bad_time_limit_grace_is_a_value_error(bad):
    from pyqueue.cluster.node import Node

    with pytest.raises(ValueError, match="time_limit_grace"):
        Node("127.0.0.1:1", key=b"k" * 32, time_limit_grace=bad)


def test_the_deadline_board_shows_only_complete_overdue_records():
    from pyqueue.cluster.supervisor import _SLOT, DeadlineBoard, Overdue

    board = DeadlineBoard.create(3)
    try:
        board.post(0, "a" * 512, 7, 100.0, 1.5, 2.0)
        board.post(2, "späť", 1, 300.0, 1.0, 5.0)
        assert board.overdue(99.0) == []
        assert board.overdue(100.0) == [Overdue("a" * 512, 7, 1.5, 2.0)]
        assert board.overdue(1e9) == [Overdue("a" * 512, 7, 1.5, 2.0), Overdue("späť", 1, 1.0, 5.0)]
        board.clear(0)
        assert board.overdue(1e9) == [Overdue("späť", 1, 1.0, 5.0)]
        # a record caught half-written (odd sequence number) is skipped, not misread
        board._mem[2 * _SLOT] |= 1
        assert board.overdue(1e9) == []
    finally:
        board.close()
