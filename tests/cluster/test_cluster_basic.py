"""End-to-end behaviour through real coordinator and node processes."""

from __future__ import annotations

import json
import operator
import subprocess

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until

from pyqueue.cluster import LocalCluster, TaskCancelled, TaskState
from pyqueue.cluster.local import cli_command


def test_checker_counts_each_kind_of_fault():
    rep = check({"a": 1, "b": 2, "c": 3}, [("a", 1), ("b", 99), ("a", 1), ("z", 0)])
    assert rep.lost == ["c"]
    assert sorted(rep.unexpected) == ["b", "z"]
    assert rep.duplicate == ["a"]
    assert not rep.clean
    assert check({"a": 1}, [("a", 1)]).clean


def test_submit_map_results_errors_and_context(harness):
    harness.coordinator()
    harness.node(workers=2)
    c = harness.client()
    harness.wait_nodes(c, 1)
    assert c.submit(T.square_plus, 7, 1).result(10) == 50
    assert list(c.map(T.square_plus, range(20), [3] * 20, timeout=20)) == [
        x * x + 3 for x in range(20)
    ]
    # by value: a lambda defined here cannot be imported by the node
    assert c.submit(lambda x: x + 0.5, 1).result(10) == 1.5
    with pytest.raises(ValueError, match="kaboom"):
        c.submit(T.boom, "kaboom").result(10)
    tid, attempt = c.submit(T.context, task_id="ctx-1").result(10)
    assert (tid, attempt) == ("ctx-1", 1)
    # the long task ends only when the test says so, after the three short ones
    gate = harness.tmp / "gate"
    hs = [c.submit(T.wait_file, str(gate))] + [c.submit(T.slow, i, 0.01) for i in range(3)]
    order = []
    for t in c.results(hs, timeout=20):
        order.append(t.id)
        if len(order) == 3:
            gate.touch()
    assert sorted(order[:3]) == sorted(h.id for h in hs[1:])
    assert order[3] == hs[0].id


def test_app_error_retry_only_when_asked(harness):
    harness.coordinator()
    harness.node(workers=1)
    c = harness.client()
    harness.wait_nodes(c, 1)
    with pytest.raises(RuntimeError, match="attempt 1 fails"):
        c.submit(T.fail_until, 3).result(10)
    t = c.submit_call(T.fail_until, (3,), retries=3, backoff=0.02)
    assert t.result(10) == 3
    st = c.status()
    assert st["tasks"]["failed"] == 1 and st["tasks"]["succeeded"] == 1


def test_cancel_a_delayed_task(harness):
    harness.coordinator()
    harness.node()
    c = harness.client()
    t = c.submit_call(operator.add, (1, 2), delay=30)
    assert t.acknowledged(10)
    assert t.cancel()
    with pytest.raises(TaskCancelled):
        t.result(5)
    assert t.state is TaskState.CANCELLED and t.cancelled()
    assert t.cancel()  # already cancelled: True, as concurrent.futures answers
    done = c.submit(operator.add, 1, 1)
    assert done.result(10) == 2 and not done.cancel()  # ended otherwise: False


def test_status_cli_reports_nodes_and_depth(harness):
    harness.coordinator()
    harness.node(name="alpha")
    c = harness.client()
    harness.wait_nodes(c, 1)
    out = subprocess.run(
        cli_command("status", "--connect", harness.address, "--json"),
        env=harness.env,
        capture_output=True,
        timeout=30,
        check=True,
    )
    st = json.loads(out.stdout)
    assert [n["id"].split("#")[0] for n in st["nodes"]] == ["alpha"]
    assert {"queue_depth", "in_flight", "dead"} <= set(st)
    human = subprocess.run(
        cli_command("status", "--connect", harness.address),
        env=harness.env,
        capture_output=True,
        timeout=30,
        check=True,
        text=True,
    )
    assert "queue depth: 0" in human.stdout and "alpha" in human.stdout


def test_status_cli_without_coordinator_fails_clearly(harness):
    out = subprocess.run(
        cli_command("status", "--connect", "127.0.0.1:9", "--timeout", "0.5"),
        env=harness.env,
        capture_output=True,
        timeout=30,
        text=True,
    )
    assert out.returncode == 2 and "could not connect" in out.stderr


def test_local_cluster_runs_tasks_on_several_processes(key_env):
    with LocalCluster(nodes=2, workers=1, fast=True) as cluster:
        pids = set(cluster.client.map(T.pid_after, [0.05] * 16, timeout=30))
        assert len(pids) == 2
        assert sum(cluster.client.map(operator.mul, range(100), range(100), timeout=30)) == sum(
            i * i for i in range(100)
        )
    for p in cluster.nodes + [cluster.coordinator]:
        assert p.poll() is not None  # everything stopped


@pytest.mark.parametrize("store", [None, "coord.db", "redis-like.db"])
def test_local_cluster_refuses_several_coordinators_without_a_shared_store(store):
    with pytest.raises(ValueError, match="several coordinators need a shared store"):
        LocalCluster(nodes=2, coordinators=2, store=store)
    with pytest.raises(ValueError, match="coordinators must be at least 1"):
        LocalCluster(nodes=2, coordinators=0)


def test_graceful_node_stop_releases_unstarted_tasks(harness):
    import signal

    harness.coordinator(None, False)
    n1 = harness.node(workers=1, prefetch=8, name="n1", fast=False)
    c = harness.client()
    harness.wait_nodes(c, 1)
    hs = [c.submit(T.slow, i, 0.2) for i in range(9)]
    wait_until(lambda: c.status()["in_flight"] == 9, 10, "n1 to hold 9 tasks")
    harness.kill(n1, signal.SIGTERM)
    n1.wait(20)
    assert n1.returncode == 0
    st = c.status()
    assert (
        st["in_flight"] == 0 and st["queue_depth"] >= 7
    )  # 8 unstarted went back (one may have started)
    assert st["tasks"]["pending"] + st["tasks"]["succeeded"] == 9
    harness.node(workers=2, name="n2", fast=False)
    rep = check({h.id: i for i, h in enumerate(hs)}, [(h.id, h.result(20)) for h in hs])
    assert rep.clean, rep
    assert max(harness.executions().values()) == 1  # released tasks had never started
