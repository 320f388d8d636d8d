"""The Redis store on a real Redis Cluster (3 primaries, see redis_server.py):
one store is one hash tag, so one slot on one shard; other prefixes live on
other shards.  The backend contract suite runs on it too (``redis-cluster``)."""

from __future__ import annotations

from typing import Any

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check
from redis_server import RedisClusterServers

from pyqueue.cluster.backends.redis import CoordinatorFenced, RedisBackend
from pyqueue.cluster.states import Completion, Demand, SubmitSpec, TaskState, Verdict

T0 = 1_000_000.0


def _client(cluster: RedisClusterServers) -> Any:
    import redis.cluster

    return redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)


def _all_keys(r: Any) -> list[bytes]:
    return sorted(r.keys(target_nodes=r.ALL_NODES))


def test_one_store_lives_in_one_slot_and_two_prefixes_on_two_shards(
    redis_cluster: RedisClusterServers,
) -> None:
    r = _client(redis_cluster)
    # two prefixes whose tags hash to slots on different primaries
    a = "pqa"
    b = next(
        p
        for p in (f"pqb{i}" for i in range(1000))
        if r.get_node_from_key("{" + p + "}").name != r.get_node_from_key("{pqa}").name
    )
    stores = [RedisBackend(redis_cluster.url, prefix=p, seed=1, now=T0) for p in (a, b)]
    for s in stores:
        s.submit([SubmitSpec(f"t{i}", b"p", queue=f"q{i % 3}") for i in range(30)], T0)
        s.submit([SubmitSpec("later", b"p", not_before=T0 + 60)], T0)
        grant = s.lease({"n": Demand(30, {"q0": 1, "q1": 1, "q2": 1})}, T0)["n"]
        assert len(grant.leases) == 30
        done = [Completion(le.id, le.token, True, b"r", None) for le in grant.leases]
        assert s.complete("n", done, T0) == [Verdict.ACCEPTED] * 30
        assert sorted(s.drain_finished()) == sorted(f"t{i}" for i in range(30))
    keys = _all_keys(r)
    for p in (a, b):
        mine = [k for k in keys if k.startswith(f"{{{p}}}:".encode())]
        assert len(mine) > 10 and {r.keyslot(k) for k in mine} == {r.keyslot("{" + p + "}")}
    assert len(keys) == sum(
        len([k for k in keys if k.startswith(f"{{{p}}}:".encode())]) for p in (a, b)
    )  # nothing outside the two tags
    for s in stores:
        s.close()
    r.close()


def test_the_store_on_a_cluster_leases_fences_loses_nodes_and_expires(
    redis_cluster: RedisClusterServers,
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster.nodes[1].port}/0"  # any node will do
    s = RedisBackend(url, prefix="pqc", seed=1, now=T0)
    assert s.cluster
    s.submit([SubmitSpec(f"a{i}", b"p", queue="a") for i in range(4)], T0)
    s.submit([SubmitSpec(f"b{i}", b"p", queue="b") for i in range(4)], T0)
    grants = s.lease({"n1": Demand(4, {"a": 1, "b": 1}), "n2": Demand(4, {"a": 1, "b": 1})}, T0)
    leased = {n: [le.id for le in g.leases] for n, g in grants.items()}
    assert sorted(leased["n1"] + leased["n2"]) == sorted(
        [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
    )
    # node n2 lost: its leases go back to their queues
    assert sorted(s.node_lost("n2", T0)) == sorted(leased["n2"])
    g1 = grants["n1"]
    done = [Completion(le.id, le.token, True, b"ok", None) for le in g1.leases]
    assert s.complete("n1", done, T0 + 1) == [Verdict.ACCEPTED] * len(done)
    again: list[str] = []
    for _ in range(10):  # lost tasks come back one at a time per node (suspects)
        got = s.lease({"n1": Demand(8, {"a": 1, "b": 1})}, T0 + 1).get("n1")
        if got is None:
            break
        again += [le.id for le in got.leases]
        done = [Completion(le.id, le.token, False, None, "boom") for le in got.leases]
        s.complete("n1", done, T0 + 2)
    assert sorted(again) == sorted(leased["n2"])
    assert len(s.drain_finished()) == 8
    outs = s.outcomes([*leased["n1"], *leased["n2"]])
    assert [o.state if o else None for o in outs] == [TaskState.SUCCEEDED] * 4 + [
        TaskState.FAILED
    ] * 4
    assert s.expire(T0 + 10**7, 100) == 8
    assert s.stats().tasks[TaskState.SUCCEEDED] == 0 and s.info(["a0"]) == [None]
    # fencing: this owner's liveness key gone (taken for dead), the next call
    # changes nothing and joins again under a new owner id
    r = _client(redis_cluster)
    old = s.owner
    r.delete(f"{{pqc}}:co:{old}")
    with pytest.raises(CoordinatorFenced):
        s.submit([SubmitSpec("x", b"p")], T0 + 3)
    assert s.owner != old and s.info(["x"]) == [None]
    assert s.submit([SubmitSpec("x", b"p")], T0 + 3) == [TaskState.PENDING]
    s.close()
    r.close()


def test_cluster_urls_and_bad_prefixes(redis_cluster: RedisClusterServers) -> None:
    port = redis_cluster.nodes[0].port
    for url in (redis_cluster.url, f"redis+cluster://127.0.0.1:{port}/0?liveness=5"):
        s = RedisBackend(url, prefix="pqu", now=T0)
        assert s.cluster
        s.close()
    with pytest.raises(ValueError, match="cluster"):
        RedisBackend(f"redis://127.0.0.1:{port}/0?cluster=maybe", prefix="pqu")
    for bad in ("", "a{b", "x}"):
        with pytest.raises(ValueError, match="prefix"):
            RedisBackend(redis_cluster.url, prefix=bad)


@pytest.mark.slow
@pytest.mark.parametrize("coordinators", [1, 2])
def test_local_cluster_on_a_redis_cluster_store(
    key_env: bytes, redis_cluster: RedisClusterServers, coordinators: int
) -> None:
    from pyqueue.cluster import LocalCluster

    with LocalCluster(
        nodes=2, workers=1, coordinators=coordinators, store=redis_cluster.url, fast=True
    ) as cluster:
        hs = [cluster.client.submit(T.square_plus, i, 1) for i in range(400)]
        rep = check({h.id: i * i + 1 for i, h in enumerate(hs)}, [(h.id, h.result(60)) for h in hs])
        assert rep.clean, rep
        assert cluster.client.status()["tasks"]["succeeded"] == 400
    for p in cluster.nodes + cluster.coordinators:
        assert p.poll() is not None
