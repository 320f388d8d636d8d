"""Several coordinators serving one Redis store at once (active-active), as
operators run them: ``pyqueue coordinator --store redis://...`` twice, nodes
and a client given both addresses, real processes and a private redis-server.
"""

from __future__ import annotations

from pathlib import Path

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until
from redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

#: short liveness and adoption bounds, so that a killed coordinator's leases
#: come back within seconds (the defaults are 5 s and 30 s)
OPTS = "?liveness=2&adopt_for=5"


def test_two_coordinators_over_one_redis_lose_nothing_when_either_is_killed(
    harness, redis_server: RedisServer
):
    store = redis_server.url + OPTS
    procs = {}
    for port in (0, free_port()):
        proc = harness.coordinator(store, port=port)
        procs[harness.address] = proc
    a, b = procs
    workers, prefetch = 2, 2
    harness.node(workers, prefetch, "n0", connect=f"{a},{b}")  # on a until it dies
    harness.node(workers, prefetch, "n1", connect=f"{b},{a}")  # on b
    c = harness.client([a, b])
    assert c.address == a
    harness.wait_nodes(c, 1)  # n0 on a; n1 serves b, whose finished ids a must see too
    n = 4000  # about 10 s of work for the 4 workers
    hs = [c.submit(T.slow, i, 0.01, task_id=f"job-{i}") for i in range(n)]
    expected = {h.id: i for i, h in enumerate(hs)}
    for victim in (a, b, a):
        goal = sum(h.done() for h in hs) + 300  # some work on the coordinators as they are
        wait_until(lambda g=goal: sum(h.done() for h in hs) >= g, 120, f"{goal} results")
        harness.kill(procs[victim])  # kill -9, mid-run
        assert not all(h.done() for h in hs), "the kill landed after the run"
        procs[victim] = harness.coordinator(store, port=int(victim.rsplit(":", 1)[1]))
    delivered = [(t.id, t.result()) for t in c.results(timeout=180)]
    rep = check(expected, delivered)
    assert rep.clean, rep  # 0 lost, 0 unexpected, 0 duplicate results
    assert c.channel.connections >= 3  # it moved with each kill of the one it was on
    execs = harness.executions()
    assert set(execs) == set(expected)
    # Only a lease a killed coordinator granted can run twice: recovered (after
    # its liveness) or requeued (after adopt_for) while its node still held it.
    # Each kill finds at most capacity = workers + prefetch leases on each node.
    repeated = sum(k - 1 for k in execs.values())
    assert repeated <= 3 * 2 * (workers + prefetch), f"{repeated} repeated executions"
    ran = [f for f in Path(harness.exec_dir).glob("*.log") if f.read_text().strip()]
    assert len(ran) >= 2, "both nodes ran tasks"
    wait_until(
        lambda: {k: v for k, v in c.status()["tasks"].items() if v} == {"succeeded": n},
        20,
        "every task SUCCEEDED once in the shared store",
    )
    for proc in procs.values():
        assert proc.poll() is None, harness.log(proc)
    logs = [
        Path(p.logfile).read_text(errors="replace")  # type: ignore[attr-defined]
        for p in harness.procs
        if p.label == "coordinator"  # type: ignore[attr-defined]
    ]
    assert len(logs) == 5 and not any("Traceback" in log for log in logs)
    # the nodes moved with their work: taken over at once, not rerun
    assert sum("lease(s) granted through another coordinator: taken over" in x for x in logs) >= 3


def test_local_cluster_with_two_coordinators_spreads_work_over_both(
    key_env, redis_server: RedisServer
):
    from pyqueue.cluster import LocalCluster

    with LocalCluster(
        nodes=2, workers=1, coordinators=2, store=redis_server.url, fast=True
    ) as cluster:
        assert len(cluster.addresses) == 2 and cluster.client.address == cluster.addresses[0]
        # the first coordinator sees only its own node, local-0
        assert [n["id"].split("#")[0] for n in cluster.client.status()["nodes"]] == ["local-0"]
        # node 1 is on the second coordinator: its results reach the client
        # through the first one only by the shared store
        pids = set(cluster.client.map(T.pid_after, [0.05] * 16, timeout=30))
        assert len(pids) == 2
        hs = [cluster.client.submit(T.square_plus, i, 1) for i in range(500)]
        rep = check({h.id: i * i + 1 for i, h in enumerate(hs)}, [(h.id, h.result(30)) for h in hs])
        assert rep.clean, rep
    for p in cluster.nodes + cluster.coordinators:
        assert p.poll() is not None
