"""Supervised nodes with real processes: restarts after crashes, giving up,
no orphan after kill -9, and SIGTERM with a task that never returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import alive, check, children, wait_until

import pyqueue
from pyqueue.cluster import LocalCluster, TaskDead

pytestmark = pytest.mark.slow

_CRASH = "crashed (exit code 3); restarting in"


def _worker(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """The pid of the node's worker child (the supervisor is ``proc``)."""
    return wait_until(lambda: (children(proc.pid) or [None])[0], timeout, "the worker child")


def _run_supervisor(tmp_path: Path, child: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a Supervisor over ``python -c child`` in a process of its own."""
    package_parent = str(Path(pyqueue.__file__).resolve().parent.parent)
    script = textwrap.dedent(
        f"""
        import logging, sys
        sys.path.insert(0, {package_parent!r})
        from pyqueue.cluster.supervisor import Supervisor
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        cmd = [sys.executable, "-c", {child!r}]
        sys.exit(Supervisor(cmd, name="unit", **{kw!r}).run())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_supervisor_gives_up_after_n_crashes_in_the_window(tmp_path):
    out = _run_supervisor(tmp_path, "import os; os._exit(3)", max_restarts=3, backoff=0.01)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert sum("worker pid" in line and "started" in line for line in lines) == 4
    assert sum(line.startswith("WARNING") and _CRASH in line for line in lines) == 3
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 1 and "crashed 4 times in 60 s" in errors[0], out.stderr
    assert "giving up" in errors[0]


def test_supervisor_counts_only_crashes_inside_the_window(tmp_path):
    # Crashes 0.1 s apart never number two inside a 0.05 s window: the
    # supervisor keeps restarting until the child exits 0 on its 6th run.
    child = textwrap.dedent(
        """
        import os
        with open("runs", "a") as fh:
            fh.write("x")
        os._exit(0 if os.path.getsize("runs") >= 6 else 3)
        """
    )
    out = _run_supervisor(
        tmp_path, child, max_restarts=1, restart_window=0.05, backoff=0.1, backoff_max=0.1
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs").read_text() == "x" * 6
    assert out.stderr.count(_CRASH) == 5 and "ERROR" not in out.stderr
    assert "exited normally; not restarting" in out.stderr


def test_supervisor_does_not_restart_a_child_that_signals_a_startup_error(tmp_path):
    out = _run_supervisor(tmp_path, "import os; os._exit(2)", backoff=0.01)
    assert out.returncode == 2, out.stderr
    assert "failed to start" in out.stderr and "restarting in" not in out.stderr
    assert out.stderr.count("started") == 1


def test_supervisor_reports_the_signal_that_killed_the_child(tmp_path):
    out = _run_supervisor(
        tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", max_restarts=0
    )
    assert out.returncode == 1, out.stderr
    assert "(last: signal SIGKILL); giving up" in out.stderr


def test_supervisor_kills_a_child_still_running_grace_plus_5_s_after_sigterm(tmp_path):
    # The child never unblocks SIGTERM (inherited blocked): it ignores it.
    child = "import time; open('ready', 'w').close(); time.sleep(120)"
    package_parent = str(Path(pyqueue.__file__).resolve().parent.parent)
    script = (
        f"import logging, sys; sys.path.insert(0, {package_parent!r}); "
        "from pyqueue.cluster.supervisor import Supervisor; "
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s'); "
        f"sys.exit(Supervisor([sys.executable, '-c', {child!r}], name='unit', grace=0.5).run())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), 20, "the child to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert 5.5 <= time.monotonic() - t0 < 9
    assert "still running 5.5 s after SIGTERM; killing it" in err


def test_a_sigterm_taken_by_another_thread_still_stops_the_child_gracefully(tmp_path):
    # A thread started before run() (numpy's OpenBLAS threads were one) keeps
    # SIGTERM unblocked; the kernel hands it a process-directed SIGTERM while
    # the loop is busy, and its default action used to kill the supervisor
    # (exit -15, the child SIGKILLed by its death signal, no grace).  Sent to
    # that thread itself here, so the test does not depend on timing.
    child = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}); "
        "open('ready', 'w').close(); time.sleep(30)"
    )
    package_parent = str(Path(pyqueue.__file__).resolve().parent.parent)
    script = textwrap.dedent(
        f"""
        import logging, os, signal, sys, threading, time
        sys.path.insert(0, {package_parent!r})
        from pyqueue.cluster.supervisor import Supervisor
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

        def stray():
            while not os.path.exists("ready"):
                time.sleep(0.01)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=stray, daemon=True).start()
        cmd = [sys.executable, "-c", {child!r}]
        sys.exit(Supervisor(cmd, name="unit", grace=5).run())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "unit: SIGTERM; worker pid" in out.stderr and "killing" not in out.stderr


def test_poison_task_under_supervised_nodes(harness):
    harness.coordinator(None, False)  # deaths are seen as closed connections
    nodes = [
        harness.node(2, 4, f"sup{i}", False, "--max-restarts", "20", "--restart-window", "600")
        for i in range(2)
    ]
    c = harness.client()
    harness.wait_nodes(c, 2)
    poison = c.submit(T.exit_now, 3, task_id="poison")
    hs = [c.submit(T.square_plus, i, 1) for i in range(1000)]
    with pytest.raises(TaskDead, match="died under it 4 times"):
        poison.result(90)
    delivered = [(h.id, h.result(60)) for h in hs]
    rep = check({h.id: i * i + 1 for i, h in enumerate(hs)}, delivered)
    assert rep.clean, rep
    assert [(d["id"], d["lost"]) for d in c.dead_tasks()] == [("poison", 4)]
    execs = harness.executions()
    assert execs["poison"] == 4
    # (a task that ran next to the poison, or whose result was not sent yet,
    # runs again: at least once; but each of them has exactly one result)
    # every crash was logged and followed by a restart; both nodes are back
    wait_until(
        lambda: sum(harness.log(p).count(_CRASH) for p in nodes) == 4, 20, "4 logged crashes"
    )
    wait_until(
        lambda: sum(harness.log(p).count("started") for p in nodes) == 2 + 4,
        20,
        "a restart after each crash",
    )
    harness.wait_nodes(c, 2)
    assert all(p.poll() is None for p in nodes)
    assert c.status()["tasks"]["succeeded"] == 1000


def test_cli_node_gives_up_after_max_restarts(harness):
    harness.coordinator(None, False, "--max-lost", "10")
    node = harness.node(1, 0, "quitter", False, "--max-restarts", "2")
    c = harness.client()
    harness.wait_nodes(c, 1)
    c.submit(T.exit_now, 3, task_id="poison")
    assert node.wait(60) == 1
    log = harness.log(node)
    assert log.count(_CRASH) == 2, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "crashed 3 times in 60 s" in errors[0], log
    assert "node quitter" in errors[0] and "giving up" in errors[0]
    assert harness.executions()["poison"] == 3


def test_kill9_of_the_supervisor_leaves_no_worker(harness, tmp_path):
    harness.coordinator(None, False)
    node = harness.node(1, 0, "victim", False)
    c = harness.client()
    harness.wait_nodes(c, 1)
    gate = tmp_path / "gate"
    h = c.submit(T.wait_file, str(gate), task_id="held")
    wait_until(lambda: harness.executions()["held"] == 1, 20, "the task to start")
    worker = _worker(node)
    assert alive(worker)
    harness.kill(node)  # SIGKILL of the supervisor, the process the user started
    wait_until(lambda: not alive(worker), 10, "the worker to die with its supervisor")
    wait_until(lambda: not c.status()["nodes"], 10, "the coordinator to drop the node")
    gate.touch()
    harness.node(1, 0, "heir", False)
    assert h.result(30) == str(gate)  # requeued and run by the next node
    assert harness.executions()["held"] == 2


def test_kill9_of_a_worker_is_restarted_by_local_cluster(key_env):
    with LocalCluster(nodes=1, workers=1, fast=True) as cluster:
        sup = cluster.nodes[0]
        first = _worker(sup)
        assert cluster.client.submit(T.pid_after, 0).result(30) == first
        subprocess.run(["kill", "-9", str(first)], check=True)
        second = wait_until(
            lambda: next((p for p in children(sup.pid) if p != first), None), 20, "a new worker"
        )
        assert cluster.client.submit(T.pid_after, 0).result(30) == second
        assert sup.poll() is None


@pytest.mark.parametrize("target", ["supervisor", "group"])
def test_sigterm_with_a_stuck_task_exits_within_grace_and_requeues_it(harness, target):
    """``group``: SIGTERM to the supervisor and the worker at once, as a service
    manager does; the forwarded copy must not count as a second SIGTERM."""
    harness.coordinator(None, False)
    a = harness.node(1, 0, "a", False, "--grace", "1")
    c = harness.client()
    harness.wait_nodes(c, 1)
    c.submit(T.loop_forever, task_id="stuck")
    wait_until(lambda: harness.executions()["stuck"] == 1, 20, "the task to start")
    worker = _worker(a)
    t0 = time.monotonic()
    if target == "group":
        os.killpg(a.pid, signal.SIGTERM)
    else:
        harness.kill(a, signal.SIGTERM)
    rc = a.wait(1 + 2)
    took = time.monotonic() - t0
    assert rc == 0, harness.log(a)
    assert took < 1 + 2 and not alive(worker)
    harness.node(1, 0, "b", False)
    wait_until(lambda: harness.executions()["stuck"] == 2, 20, "b to run the task again")
    pids = {
        line.split()[2]
        for f in harness.exec_dir.glob("*.log")
        for line in f.read_text().splitlines()
        if line.startswith("stuck ")
    }
    assert len(pids) == 2  # once on a, once on b
    st = c.status()
    assert st["in_flight"] == 1 and st["dead"] == 0


def test_sigterm_lets_short_tasks_finish_and_hands_long_ones_to_another_node(harness):
    """What a Kubernetes node pod gets on a rollout: tasks that end within
    ``--grace`` finish where they run; the one that cannot is handed back and
    completes on another node.  Each result arrives once, none is lost."""
    harness.coordinator(None, False)
    a = harness.node(3, 0, "a", False, "--grace", "2")
    c = harness.client()
    harness.wait_nodes(c, 1)
    short = [c.submit(T.pid_after, 0.5, task_id=f"short-{i}") for i in range(2)]
    long = c.submit(T.pid_after, 5, task_id="long")
    wait_until(lambda: len(harness.executions()) == 3, 20, "all three tasks to start on a")
    on_a = _worker(a)
    t0 = time.monotonic()
    harness.kill(a, signal.SIGTERM)
    assert a.wait(2 + 3) == 0, harness.log(a)
    assert time.monotonic() - t0 < 2 + 3
    assert [h.result(1) for h in short] == [on_a, on_a]  # finished on a, before it left
    assert not long.done()  # handed back unfinished
    b = harness.node(1, 0, "b", False)
    on_b = long.result(30)
    assert on_b != on_a and on_b in children(b.pid)
    runs = harness.executions()
    assert runs == {"short-0": 1, "short-1": 1, "long": 2}  # long: cut short on a, whole on b
    st = c.status()
    assert st["tasks"]["succeeded"] == 3 and st["dead"] == 0 and st["in_flight"] == 0


@pytest.mark.parametrize("second", ["sigterm-to-supervisor", "sigint-to-worker"])
def test_second_signal_during_the_grace_exits_at_once(harness, second):
    harness.coordinator(None, False)
    a = harness.node(1, 0, "a", False, "--grace", "60")
    c = harness.client()
    harness.wait_nodes(c, 1)
    c.submit(T.loop_forever, task_id="stuck")
    wait_until(lambda: harness.executions()["stuck"] == 1, 20, "the task to start")
    worker = _worker(a)
    harness.kill(a, signal.SIGTERM)
    wait_until(lambda: "SIGTERM; stopping" in harness.log(a), 10, "the worker to start stopping")
    t0 = time.monotonic()
    if second == "sigterm-to-supervisor":
        harness.kill(a, signal.SIGTERM)
    else:
        subprocess.run(["kill", "-INT", str(worker)], check=True)
    assert a.wait(10) == 1, harness.log(a)
    assert time.monotonic() - t0 < 5 and not alive(worker)
