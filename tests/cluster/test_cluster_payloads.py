"""Large and many payloads: every task completes exactly once or fails with
PayloadTooLarge; nothing hangs, no background thread dies."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections.abc import Iterator

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until
from pyq_cluster_proxy import CuttingProxy

from pyqueue.cluster import Client, Coordinator, Node
from pyqueue.cluster import protocol as P
from pyqueue.cluster.config import FAST_TIMINGS
from pyqueue.errors import PayloadTooLarge

KEY = os.urandom(32)
MiB = 1024 * 1024


@contextlib.contextmanager
def in_process(
    coord_max: int = P.DEFAULT_MAX_PAYLOAD, node_max: int = P.DEFAULT_MAX_PAYLOAD
) -> Iterator[tuple[Coordinator, Node, Client]]:
    """A coordinator, a node and a client in this process, on 127.0.0.1."""
    coord = Coordinator(KEY, timings=FAST_TIMINGS, max_payload=coord_max)
    host, port = coord.start_in_thread()
    node = Node(
        f"{host}:{port}",
        key=KEY,
        workers=2,
        executor="threads",
        timings=FAST_TIMINGS,
        max_payload=node_max,
    ).start()
    client = Client(f"{host}:{port}", key=KEY)
    try:
        yield coord, node, client
    finally:
        client.close()
        node.stop(5)
        coord.stop()


def blob(n: int, seed: int) -> bytes:
    """``n`` bytes that differ from one seed to the next (cheap to make and compare)."""
    return random.Random(seed).randbytes(min(n, 4096)) * (n // 4096) + bytes(n % 4096)


def test_submit_over_max_payload_raises_at_once_and_client_carries_on():
    with in_process(coord_max=1 * MiB) as (_, _, client):
        # the coordinator's smaller limit, announced in WELCOME, wins over the client's
        assert client.channel.max_payload == 1 * MiB
        t0 = time.monotonic()
        with pytest.raises(PayloadTooLarge, match="max_payload is 1048576") as ei:
            client.submit(T.echo, bytes(1 * MiB + 1))
        assert isinstance(ei.value, ValueError)
        assert time.monotonic() - t0 < 5  # refused where it was made, not after a timeout
        small = client.submit(T.echo, b"fine")
        assert small.result(timeout=20) == b"fine"


def test_submit_just_over_the_default_max_payload_is_refused():
    with in_process() as (_, _, client):
        with pytest.raises(PayloadTooLarge):
            client.submit(T.echo, bytes(P.DEFAULT_MAX_PAYLOAD + 1))
        assert client.submit(T.echo, b"x").result(timeout=20) == b"x"


def test_result_over_max_payload_fails_that_task_and_the_node_carries_on():
    with in_process(node_max=2 * MiB) as (_, node, client):
        big = client.submit(T.make_bytes, 2 * MiB)  # pickles to a few bytes more
        with pytest.raises(PayloadTooLarge, match=r"returned 20971\d\d bytes"):
            big.result(timeout=20)
        # a failure, not a loss: the task ended once, and the node still serves
        assert client.submit(T.make_bytes, 1 * MiB).result(timeout=20) == bytes(1 * MiB)
        assert node.stats["failed"] == 1


def test_results_over_a_frame_each_and_batched_arrive_whole():
    # two 9 MB results in one flush would have made one 18 MB frame
    with in_process() as (_, _, client):
        hs = [client.submit(T.make_bytes, 9_000_000 + i) for i in range(4)]
        for i, h in enumerate(hs):
            assert h.result(timeout=60) == bytes(9_000_000 + i)


@pytest.mark.slow
def test_large_arguments_and_results_through_processes_complete_exactly_once(harness, tmp_path):
    harness.coordinator(store=str(tmp_path / "q.db"))
    harness.node(workers=2, name="big0")
    harness.node(workers=2, name="big1")
    c = harness.client()
    harness.wait_nodes(c, 2)
    sizes = [1024] + [9 * MiB] * 10 + [50 * MiB]
    digests = {}
    hs = []
    for i, n in enumerate(sizes):
        data = blob(n, i)
        h = c.submit(T.echo, data)
        digests[h.id] = hashlib.sha256(data).hexdigest()
        hs.append(h)
    delivered = [(h.id, hashlib.sha256(h.result(timeout=120)).hexdigest()) for h in hs]
    rep = check(digests, delivered)
    assert rep.clean, rep
    assert sorted(harness.executions().values()) == [1] * len(sizes)


@pytest.mark.slow
@pytest.mark.parametrize("size", [30_000, 100_000])
def test_thousands_of_mid_size_tasks_batch_by_size(harness, size):
    # 3,000 x 30 KB arguments were one 90 MB SUBMIT frame before batches were cut by size
    harness.coordinator()
    harness.node(workers=2, prefetch=64, name="mid0")
    harness.node(workers=2, prefetch=64, name="mid1")
    c = harness.client()
    harness.wait_nodes(c, 2)
    expected = {}
    for i in range(3000):
        data = i.to_bytes(4, "big") * (size // 4)
        expected[c.submit(T.echo, data).id] = hashlib.sha256(data).hexdigest()
    delivered = [(t.id, hashlib.sha256(t.result()).hexdigest()) for t in c.results(timeout=240)]
    rep = check(expected, delivered)
    assert rep.clean, rep


@pytest.mark.slow
def test_mid_size_tasks_survive_cut_connections(harness):
    rng = random.Random(7)
    harness.coordinator()
    host, port = harness.address.rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)))
    try:
        direct = harness.client()
        harness.address = f"127.0.0.1:{proxy.port}"
        harness.node(workers=2, prefetch=16, name="cut0")
        harness.node(workers=2, prefetch=16, name="cut1")
        c = harness.client()
        harness.wait_nodes(direct, 2)
        expected = {}
        hs = []
        for i in range(3000):
            data = i.to_bytes(4, "big") * 7500  # 30 KB
            h = c.submit(T.echo, data)
            hs.append(h)
            expected[h.id] = hashlib.sha256(data).hexdigest()
        cuts = 0
        while not all(h.done() for h in hs) and cuts < 4:
            time.sleep(rng.uniform(0.2, 0.5))
            cuts += proxy.cut() > 0
        delivered = [(t.id, hashlib.sha256(t.result()).hexdigest()) for t in c.results(timeout=240)]
        rep = check(expected, delivered)
        assert rep.clean, rep
        assert cuts >= 1 and proxy.accepted > 3
        st = wait_until(lambda: direct.status()["tasks"]["succeeded"] == 3000, 30, "all done")
        assert st
    finally:
        proxy.close()


@pytest.mark.slow
def test_local_cluster_max_payload_reaches_the_client_and_nodes():
    from pyqueue.cluster import LocalCluster

    with LocalCluster(nodes=1, workers=1, max_payload=2 * MiB) as cluster:
        c = cluster.client
        assert c.channel.max_payload == 2 * MiB
        with pytest.raises(PayloadTooLarge):
            c.submit(T.echo, bytes(2 * MiB + 1))
        with pytest.raises(PayloadTooLarge):  # the node adopted the limit for results
            c.submit(T.make_bytes, 2 * MiB).result(timeout=30)
        assert c.submit(T.make_bytes, 10).result(timeout=30) == bytes(10)


def test_a_small_max_payload_cuts_batches_to_fit():
    # batches were cut at a fixed 1 MiB: with a limit below that, nothing went through
    with in_process(coord_max=100_000) as (_, _, client):
        hs = [client.submit(T.echo, bytes([i % 256]) * 500) for i in range(1000)]
        assert [h.result(timeout=60) for h in hs] == [bytes([i % 256]) * 500 for i in range(1000)]


def test_an_exception_over_max_payload_fails_the_task_without_a_reconnect_loop():
    with in_process(coord_max=1 * MiB) as (_, node, client):
        big = client.submit(T.boom_big, 2 * MiB)
        with pytest.raises(PayloadTooLarge, match="raised an exception of"):
            big.result(timeout=20)
        assert node.channel.connections == 1  # the node never had to reconnect
        assert client.submit(T.echo, b"ok").result(timeout=20) == b"ok"
