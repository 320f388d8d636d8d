"""Fault injection with real processes: nothing acknowledged is lost or doubled.

Every test is seeded, bounded in time and checks lost / unexpected /
duplicate results with ``check`` (all must be zero).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until

from pyqueue.cluster import TaskDead, TaskLost
from pyqueue.cluster import protocol as P
from pyqueue.cluster.channel import Channel
from pyqueue.cluster.protocol import MsgType

pytestmark = pytest.mark.slow


def _node_holding_work(client, procs_by_name):
    """A node process that has tasks outstanding right now, if any."""
    for n in client.status()["nodes"]:
        if n["outstanding"] > 0:
            name = n["id"].split("#")[0]
            proc = procs_by_name.get(name)
            if proc is not None and proc.poll() is None:
                return name, proc, n["outstanding"]
    return None


def _store(kind, request, tmp_path):
    """The ``--store`` for a store kind: None (memory), a SQLite file, or the
    URL of a private redis-server started for the test."""
    if kind == "redis":
        return request.getfixturevalue("redis_server").url
    return str(tmp_path / "coord.db") if kind == "sqlite" else None


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_kill9_busy_node_mid_task_several_times(harness, tmp_path, request, store_kind):
    rng = random.Random(1234)
    # Default timings: a silent node would only be declared dead after 15 s,
    # so a quick requeue proves the closed connection requeued at once.
    harness.coordinator(_store(store_kind, request, tmp_path), False)
    procs = {
        f"n{i}": harness.node(workers=2, prefetch=2, name=f"n{i}", fast=False) for i in range(3)
    }
    c = harness.client()
    harness.wait_nodes(c, 3)
    # about 2.5 s of work on 6 workers: enough to still be busy at the third kill
    hs = [c.submit(T.slow, i, rng.uniform(0.01, 0.04)) for i in range(600)]
    expected = {h.id: i for i, h in enumerate(hs)}
    kills = 0
    held_at_kill = 0
    for k in range(3):
        name, proc, _ = wait_until(lambda: _node_holding_work(c, procs), 20, "a busy node")
        harness.kill(proc)  # SIGKILL mid-task
        kills += 1
        t0 = time.monotonic()
        wait_until(
            lambda name=name: all(not n["id"].startswith(name + "#") for n in c.status()["nodes"]),
            5,
            "the killed node to be dropped",
        )
        assert time.monotonic() - t0 < 3.0  # far below the 15 s heartbeat deadline
        held_at_kill += 4  # capacity = workers + prefetch
        new = f"r{k}"
        procs[new] = harness.node(workers=2, prefetch=2, name=new, fast=False)
    delivered = [(t.id, t.result()) for t in c.results(timeout=60)]
    rep = check(expected, delivered)
    assert rep.clean, rep
    execs = harness.executions()
    assert set(execs) == set(expected)
    repeated = sum(n - 1 for n in execs.values())
    assert repeated <= held_at_kill, f"{repeated} repeated executions for {kills} kills"
    st = c.status()
    assert st["tasks"]["succeeded"] == 600 and st["dead"] == 0


def test_sigstop_past_lease_then_sigcont_late_results_are_duplicates(harness):
    harness.coordinator()  # fast: dead after 0.6 s of silence, lease 1.5 s
    a = harness.node(workers=2, prefetch=0, name="a")
    c = harness.client()
    harness.wait_nodes(c, 1)
    hs = [c.submit(T.slow, i, 1.0) for i in range(2)]  # only a is up: it takes both
    expected = {h.id: i for i, h in enumerate(hs)}
    wait_until(lambda: c.status()["nodes"][0]["outstanding"] == 2, 10, "a to hold both tasks")
    harness.kill(a, signal.SIGSTOP)  # mid-task: each sleeps 1 s
    stopped_at = time.monotonic()
    assert not any(h.done() for h in hs)
    b = harness.node(workers=2, prefetch=0, name="b")  # runs them once a is declared dead
    wait_until(lambda: all(h.done() for h in hs), 20, "b to finish a's tasks")
    # stay stopped past the lease too, not only past the heartbeat deadline
    time.sleep(max(0.0, 1.6 - (time.monotonic() - stopped_at)))
    harness.kill(a, signal.SIGCONT)
    wait_until(
        lambda: c.status()["completions"]["duplicate"] >= 2, 20, "a's late results to be answered"
    )
    rep = check(expected, [(h.id, h.result()) for h in hs])
    assert rep.clean, rep
    assert a.poll() is None and b.poll() is None
    wait_until(
        lambda: harness.log(a).count("answered duplicate") == 2,
        5,
        "a to log both duplicate verdicts",
    )
    assert harness.executions() == {h.id: 2 for h in hs}  # ran on a and on b, one result each
    wait_until(lambda: len(c.status()["nodes"]) == 2, 10, "a to rejoin")


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_kill9_coordinator_during_submits_then_restart(harness, tmp_path, request, store_kind):
    store = _store(store_kind, request, tmp_path)
    harness.coordinator(store)
    harness.node(workers=2, name="n0")
    harness.node(workers=2, name="n1")
    c = harness.client()
    harness.wait_nodes(c, 2)
    n = 3000
    handles = []
    halfway = threading.Event()
    killed = threading.Event()

    def submitter():
        for i in range(n):
            handles.append(c.submit(T.square_plus, i, 7, task_id=f"job-{i}"))
            if i == n // 3:
                halfway.set()
            if i >= n // 3 and not killed.is_set():
                time.sleep(0.001)  # trickle until the kill lands, then submit into the outage
            if i == 2 * n // 3:
                killed.wait(30)

    th = threading.Thread(target=submitter)
    th.start()
    assert halfway.wait(20)
    wait_until(
        lambda: sum(h.acknowledged(0) for h in list(handles)) > 100, 20, "some acknowledged submits"
    )
    harness.kill(harness.coord)
    killed.set()
    acked_before = {h.id for h in list(handles) if h.acknowledged(0)}
    assert len(acked_before) < n  # the kill really lands during the submits
    time.sleep(0.2)  # nodes and client see the coordinator gone
    harness.coordinator(store)  # same port, same store
    th.join(30)
    delivered = [(t.id, t.result()) for t in c.results(timeout=60)]
    rep = check({f"job-{i}": i * i + 7 for i in range(n)}, delivered)
    assert rep.clean, rep
    assert acked_before <= {tid for tid, _ in delivered}
    if store_kind == "sqlite":
        db = sqlite3.connect(store)
        rows = db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
        assert rows == [(3, n)], rows  # one row per task, every one SUCCEEDED
    else:  # one record per task, every one SUCCEEDED
        assert {k: v for k, v in c.status()["tasks"].items() if v} == {"succeeded": n}
    assert c.channel.connections >= 2  # the client reconnected
    # and so did both nodes (one may still be in its reconnect backoff)
    harness.wait_nodes(c, 2)


def test_resubmitting_same_ids_after_timeout_keeps_one_task_each(harness):
    harness.coordinator(None, False)  # exact-once below: no false deaths
    harness.node(workers=2, name="n0", fast=False)
    c1 = harness.client()
    harness.wait_nodes(c1, 1)
    ids = [f"same-{i}" for i in range(40)]
    first = [c1.submit(T.slow, i, 0.02, task_id=tid) for i, tid in enumerate(ids)]
    with pytest.raises(TimeoutError):
        first[-1].result(timeout=0.01)
    again = [c1.submit(T.slow, i, 0.02, task_id=tid) for i, tid in enumerate(ids)]
    assert all(a is b for a, b in zip(first, again))  # same handle inside one client
    c2 = harness.client()
    other = [
        c2.submit(T.slow, 1000 + i, 0.02, task_id=tid) for i, tid in enumerate(ids)
    ]  # another client
    expected = {tid: i for i, tid in enumerate(ids)}
    assert check(expected, [(h.id, h.result(30)) for h in first]).clean
    rep = check(expected, [(h.id, h.result(30)) for h in other])  # the first payload won
    assert rep.clean, rep
    assert c1.status()["tasks"]["succeeded"] == 40
    execs = harness.executions()
    assert execs == {tid: 1 for tid in ids}


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_poison_task_is_dead_lettered_after_four_losses(harness, tmp_path, request, store_kind):
    # deaths are seen as closed connections
    harness.coordinator(_store(store_kind, request, tmp_path), False)
    c = harness.client()
    live: list = []
    respawns = [0]
    stop = threading.Event()

    def supervisor():
        # keep two nodes up: the poison kills whichever runs it
        while not stop.is_set():
            for p in list(live):
                if p.poll() is not None:
                    live.remove(p)
            while len(live) < 2 and respawns[0] < 12:
                respawns[0] += 1
                live.append(harness.node(workers=2, prefetch=4, name=f"s{respawns[0]}", fast=False))
            stop.wait(0.05)

    sup = threading.Thread(target=supervisor)
    sup.start()
    try:
        poison = c.submit(T.poison, task_id="poison")
        hs = [c.submit(T.square_plus, i, 1) for i in range(1000)]
        with pytest.raises(TaskDead, match="died under it 4 times"):
            poison.result(60)
        delivered = [(h.id, h.result(60)) for h in hs]
    finally:
        stop.set()
        sup.join()
    rep = check({h.id: i * i + 1 for i, h in enumerate(hs)}, delivered)
    assert rep.clean, rep
    dead = c.dead_tasks()
    assert [(d["id"], d["lost"]) for d in dead] == [("poison", 4)]
    assert harness.executions()["poison"] == 4
    # the dead task can be inspected and requeued
    assert c.requeue(["poison"]) == [True]
    assert c.status()["dead"] == 0


def test_node_with_two_credits_never_has_more_than_two_outstanding(harness):
    harness.coordinator()
    c = harness.client()
    node = harness.node(workers=1, prefetch=1, name="slow")
    harness.wait_nodes(c, 1)
    hs = [c.submit(T.slow, i, 0.03) for i in range(30)]
    seen = 0
    while not all(h.done() for h in hs):
        for n in c.status()["nodes"]:
            seen = max(seen, n["outstanding"])
            assert n["capacity"] == 2 and n["outstanding"] <= 2 and n["max_outstanding"] <= 2
    assert seen == 2  # the credits were used, not just respected
    assert check({h.id: i for i, h in enumerate(hs)}, [(h.id, h.result()) for h in hs]).clean
    assert node.poll() is None


def test_coordinator_respects_credits_of_a_raw_node(harness):
    """A hand-written node that never completes early counts what it holds itself."""
    harness.coordinator()
    c = harness.client()
    hs = [c.submit(T.square_plus, i, 0) for i in range(25)]
    held: dict[tuple[str, int], float] = {}
    lock = threading.Lock()
    max_held = [0]
    done_n = [0]
    chan: Channel

    def on_message(msg: P.Message) -> None:
        if msg.type == MsgType.TASKS:
            with lock:
                for tid, token, _payload in msg.body["tasks"]:
                    held[(tid, token)] = time.monotonic()
                max_held[0] = max(max_held[0], len(held))

    chan = Channel(
        harness.address,
        harness.key.encode(),
        role="node",
        name="raw",
        on_message=on_message,
        on_connect=lambda: chan.send(MsgType.READY, {"capacity": 2}),
    )
    chan.start()
    try:
        deadline = time.monotonic() + 30
        import pickle

        while done_n[0] < 25 and time.monotonic() < deadline:
            with lock:
                ready = [k for k, t in held.items() if time.monotonic() - t > 0.01]
                for k in ready:
                    del held[k]
            for tid, token in ready:
                chan.send(MsgType.DONE, {"results": [[tid, token, True, pickle.dumps(tid), None]]})
                done_n[0] += 1
            time.sleep(0.005)
    finally:
        chan.close()
    assert done_n[0] == 25
    assert max_held[0] == 2
    assert check({h.id: h.id for h in hs}, [(h.id, h.result(10)) for h in hs]).clean


def test_gil_bound_tasks_do_not_make_a_node_look_dead(harness):
    harness.coordinator(None, True, "--missed-heartbeats", "5")  # silent 1 s = dead
    harness.node(workers=2, prefetch=0, name="busy")
    c = harness.client()
    harness.wait_nodes(c, 1)
    hs = [c.submit(T.spin, 1.5) for _ in range(2)]  # both workers hold the GIL in turn for 1.5 s
    assert all(h.result(20) > 0 for h in hs)
    st = c.status()
    assert len(st["nodes"]) == 1 and st["nodes"][0]["id"].startswith(
        "busy#1"
    )  # never dropped, never rejoined
    assert harness.executions() == {h.id: 1 for h in hs}
    assert st["completions"] == {"accepted": 2, "duplicate": 0, "stale": 0, "unknown": 0}


def test_restart_without_store_fails_acknowledged_tasks_loudly(harness):
    harness.coordinator()  # memory only
    c = harness.client()
    hs = [c.submit(T.square_plus, i, 0) for i in range(3)]  # no node: they stay pending
    assert all(h.acknowledged(10) for h in hs)
    harness.kill(harness.coord)
    harness.coordinator()
    for h in hs:
        with pytest.raises(TaskLost, match="restarted without"):
            h.result(20)
