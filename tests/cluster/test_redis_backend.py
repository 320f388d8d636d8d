"""The Redis store against bad input: a Redis that is not there, refuses our
password, or holds keys that are not ours (a real redis-server each time)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_server import RedisServer, beside, free_port

from pyqueue.cluster.backends.redis import RedisBackend, RedisUnavailable
from pyqueue.cluster.states import Completion, Demand, Release, SubmitSpec, TaskState

T0 = 1_000_000.0


@pytest.fixture
def locked() -> Iterator[RedisServer]:
    server = RedisServer(password="s3cret")
    try:
        yield server
    finally:
        server.stop()


def test_an_unreachable_redis_is_a_clear_error_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    with pytest.raises(RedisUnavailable, match="cannot reach Redis at " + url):
        RedisBackend(url, now=T0)


def test_a_wrong_password_is_a_clear_error(locked: RedisServer) -> None:
    bad = locked.url.replace("s3cret", "wrong")
    with pytest.raises(RedisUnavailable, match="refused authentication"):
        RedisBackend(bad, now=T0)
    no_auth = f"redis://127.0.0.1:{locked.port}/0"
    with pytest.raises(RedisUnavailable, match="refused authentication"):
        RedisBackend(no_auth, now=T0)
    b = RedisBackend(locked.url, prefix="ok", now=T0)  # the right one works
    assert b.submit([SubmitSpec("a", b"p")], T0) == [TaskState.PENDING]
    b.close()


def test_foreign_keys_in_the_same_database_are_untouched(redis_server: RedisServer) -> None:
    import redis

    url = redis_server.url  # a private one: the db holds only these keys and ours
    r = redis.Redis.from_url(url)
    foreign = {
        "user:1": b"alice",
        "pyqueue": b"not ours",  # our prefix without the separator
        "pqforeign": b"not ours",  # the prefix, without its hash tag
        "pqforeign:t:t1": b"not ours",  # the layout before hash tags
        "celery": b"x",
        "{other:default}:ready": b"y",
        "{pqforeignx}:cnt": b"z",  # another prefix starting with ours
    }
    for k, v in foreign.items():
        r.set(k, v)
    r.zadd("jobs", {"j1": 1.0})
    b = RedisBackend(url, prefix="pqforeign", now=T0)
    b.submit([SubmitSpec(f"t{i}", b"p") for i in range(5)], T0)
    grant = b.lease({"n": Demand(5)}, T0)["n"]
    b.complete("n", [Completion(le.id, le.token, True, b"r", None) for le in grant.leases], T0)
    b.drain_finished()
    assert b.expire(T0 + 10**6, 100) == 5
    assert b.stats().tasks[TaskState.SUCCEEDED] == 0
    for k, v in foreign.items():
        assert r.get(k) == v
    assert r.zrange("jobs", 0, -1, withscores=True) == [(b"j1", 1.0)]
    ours = [k for k in r.scan_iter() if k.startswith(b"{pqforeign}:")]  # all in one slot
    theirs = [k for k in r.scan_iter() if k not in ours]
    assert sorted(theirs) == sorted([k.encode() for k in foreign] + [b"jobs"])
    b.close()
    r.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill9"])
def test_a_redis_restart_keeps_every_applied_change(sig: int) -> None:
    # appendfsync always: what a script applied is on disk before its reply
    server = RedisServer("--appendfsync", "always")
    try:
        b = RedisBackend(server.url, prefix="pqr", now=T0)
        b.submit([SubmitSpec(f"t{i}", b"p") for i in range(4)], T0)
        (le,) = b.lease({"n": Demand(1)}, T0)["n"].leases
        b.complete("n", [Completion(le.id, le.token, True, b"r", None)], T0)
        b.close()
        server.restart(sig)
        b = RedisBackend(server.url, prefix="pqr", now=T0 + 1)
        got_states = [i.state for i in b.info(["t0", "t1", "t2", "t3"]) if i]
        assert got_states == [TaskState.SUCCEEDED] + [TaskState.PENDING] * 3
        assert b.outcomes(["t0"])[0] == (le.id, TaskState.SUCCEEDED, b"r", None)
        got = b.lease({"m": Demand(5)}, T0 + 1)["m"].leases
        assert [x.id for x in got] == ["t1", "t2", "t3"]
        b.close()
    finally:
        server.stop()


def test_a_redis_without_persistence_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer("--appendonly", "no")  # the later flag wins; --save '' stays
    try:
        with caplog.at_level("WARNING", logger="pyqueue.cluster.store"):
            RedisBackend(server.url, now=T0).close()
        assert "a restart loses every task" in caplog.text
    finally:
        server.stop()


def _flush(b: RedisBackend, demands: dict[str, Demand], now: float) -> tuple[Any, list[str], Any]:
    """What the coordinator's flush asks of its store, in its order."""
    b.fire_schedules(now)
    b.promote_due(now)
    grants = b.lease(demands, now)
    b.next_ready(now)
    b.commit()
    ids = b.drain_finished()
    return grants, ids, b.outcomes(ids)


def test_a_steady_flush_costs_one_round_trip_and_what_it_skips_reads_the_same(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the store answers from what it knows (queues it found empty, the
    # finished list, the outcomes complete() made) must equal what it reads.
    import redis.connection

    sent = [0]
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        sent[0] += 1  # one per command or pipeline: a round trip
        send(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    def round_trips(f: Callable[[], Any]) -> tuple[int, Any]:
        before = sent[0]
        got = f()
        return sent[0] - before, got

    b = RedisBackend(redis_server.url, prefix="pqrt", now=T0)
    b.submit([SubmitSpec(f"t{i}", b"p") for i in range(4)], T0)
    grants, _, _ = _flush(b, {"n": Demand(2)}, T0)  # the first one reads what it must
    first = grants["n"].leases
    rows = [
        Completion(first[0].id, first[0].token, True, b"v0", None),
        Completion(first[1].id, first[1].token, False, b"exc", "Traceback: boom"),
    ]
    n, _ = round_trips(lambda: b.complete("n", rows, T0))
    assert n == 1
    n, (grants, ids, outs) = round_trips(lambda: _flush(b, {"n": Demand(4)}, T0))
    assert n == 1  # LEASE alone
    assert ids == [first[0].id, first[1].id]
    second = grants["n"].leases
    assert [le.id for le in second] == ["t2", "t3"]
    rows = [
        Completion(second[0].id, second[0].token, False, None, None, cancelled=True),
        Completion(second[1].id, second[1].token, True, None, None),
    ]
    b.complete("n", rows, T0)
    n, (grants, ids, outs2) = round_trips(lambda: _flush(b, {"n": Demand(4)}, T0))
    assert n == 0  # the queue is known empty, the finished ids and outcomes known
    assert grants == {} and ids == ["t2", "t3"]
    every = ["t0", "t1", "t2", "t3"]
    # nothing cached: a second coordinator on the same prefix, so b is not alone from here on
    fresh = beside([b], lambda: RedisBackend(redis_server.url, prefix="pqrt", now=T0), T0)
    assert outs + outs2 == fresh.outcomes(every)
    assert [o.state for o in outs + outs2 if o] == [
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.SUCCEEDED,
    ]
    fresh.close()
    assert b.keepalive(T0) is False  # fresh is gone: b is alone again, and caches
    n, _ = round_trips(lambda: _flush(b, {"n": Demand(4)}, T0))
    # reads again: the schedules, PROMOTE, LEASE, the queues' names then rates, DRAIN
    assert n == 6
    n, _ = round_trips(lambda: _flush(b, {"n": Demand(4)}, T0))
    assert n == 0  # and knows them from then on

    # a new task in the queue found empty is leased; the drain handed out from
    # what was known counts for retention from the next script on
    b.submit([SubmitSpec("t4", b"p")], T0)
    grants, ids, _ = _flush(b, {"n": Demand(4)}, T0)
    assert [le.id for le in grants["n"].leases] == ["t4"] and ids == []
    assert b.expire(T0 + 10**7, 100) == 4  # t0..t3, drained; t4 is leased
    assert b.outcomes(every) == [None] * 4
    (le,) = grants["n"].leases
    assert b.release("n", [Release(le.id, le.token)], T0) == [True]
    grants, _, _ = _flush(b, {"m": Demand(1)}, T0)  # released: in the queue again
    assert [x.id for x in grants["m"].leases] == ["t4"]
    b.close()


def test_a_task_costs_six_commands_inside_the_scripts(redis_server: RedisServer) -> None:
    # What bounds the Redis store's throughput is Redis's CPU per task; the
    # commands a task costs inside the scripts are its countable part (timing
    # is the benchmarks' business).  Per task: HSET at submit (one EXISTS for
    # the batch finds none known), HMGET + HSET at lease, HMGET + HSET at
    # completion, HGET when its end is drained.
    import redis

    r = redis.Redis.from_url(redis_server.url)
    b = RedisBackend(redis_server.url, prefix="pqcost", now=T0)
    n = 500
    r.config_resetstat()
    b.submit([SubmitSpec(f"t{i}", b"p") for i in range(n)], T0)
    leased: set[str] = set()
    while len(leased) < n:
        grants = b.lease({"n1": Demand(100), "n2": Demand(100)}, T0)
        assert grants, "the lease granted nothing before every task was leased"
        for node, grant in grants.items():
            leased.update(le.id for le in grant.leases)
            rows = [Completion(le.id, le.token, True, b"v", None) for le in grant.leases]
            b.complete(node, rows, T0)
    finished: list[str] = []
    for _ in range(3):
        finished += _flush(b, {"n1": Demand(1)}, T0)[1]
    assert sorted(finished) == sorted(f"t{i}" for i in range(n))
    b.keepalive(T0)  # a script: it marks what the drain handed out drained
    stats = r.info("commandstats")
    hash_commands = ("hget", "hset", "hmget", "hdel")
    per_task = sum(stats.get(f"cmdstat_{c}", {"calls": 0})["calls"] for c in hash_commands) / n
    # a few more per script (queue settings, lease sets); fewer a task: lower the bound
    assert 6.0 <= per_task < 6.2, stats
    b.close()
