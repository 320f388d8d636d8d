"""Several RedisBackends (coordinators) on one prefix of one real redis-server:
leases owned per coordinator, recovery of a dead one's leases, finished ids
seen by every one, and caches that stop answering once another one writes.

The contract's fake clock drives the stores (``now``); only the liveness keys
run on Redis's own clock, so a coordinator's death is waited for by polling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from backend_contract import T0, done, info, lease, leased_ids, submit
from pyq_cluster_harness import wait_until
from redis_server import RedisServer, beside

from pyqueue.cluster.backends.redis import CoordinatorFenced, RedisBackend
from pyqueue.cluster.schedules import ScheduleSpec
from pyqueue.cluster.states import Demand, SubmitSpec, TaskState, Verdict

WAIT = 20.0  # the bound on every poll below; each normally ends within a liveness
SHORT = 0.4  # the liveness of a coordinator a test lets die


@pytest.fixture
def opened(redis_server: RedisServer) -> Iterator[list[RedisBackend]]:
    """Every store a test opens (closed at its end)."""
    made: list[RedisBackend] = []
    yield made
    for b in reversed(made):
        b.close()


def _open(
    made: list[RedisBackend], url: str, running: list[RedisBackend], **kw: float
) -> RedisBackend:
    b = beside(running, lambda: RedisBackend(url, prefix="pqmc", seed=1, now=T0, **kw), T0)
    made.append(b)
    return b


@pytest.fixture
def pair(
    opened: list[RedisBackend], redis_server: RedisServer
) -> tuple[RedisBackend, RedisBackend]:
    """Coordinators a and b on the same prefix."""
    a = _open(opened, redis_server.url, [])
    b = _open(opened, redis_server.url, [a])
    assert a.keepalive(T0) and b.keepalive(T0)  # each knows of the other: flush while shared
    return a, b


def _keep(a: RedisBackend, b: RedisBackend) -> None:
    """a's liveness, refreshed (its tick), and b's."""
    a.keepalive(T0)
    b.keepalive(T0)


def test_a_dead_coordinators_leases_come_back_at_their_old_place_without_a_loss(
    opened, redis_server
):
    a = _open(opened, redis_server.url, [], liveness=SHORT)  # dies unless kept alive
    b = _open(opened, redis_server.url, [a])
    submit(a, "t0", "t1", "t2", "t3")
    assert leased_ids(a, "n#1", 2) == ["t0", "t1"]
    assert leased_ids(b, "m#1", 1) == ["t2"]  # b's own lease stays b's
    # a stops without a word (no keepalive, no close): b recovers its leases
    wait_until(lambda: b.keepalive(T0) and info(b, "t0").state is TaskState.PENDING, WAIT, "b")
    for tid in ("t0", "t1"):
        i = info(b, tid)
        assert (i.state, i.lost, i.node) == (TaskState.PENDING, 0, None)
    assert info(b, "t2").state is TaskState.LEASED
    assert leased_ids(b, "m#2", 4) == ["t0", "t1", "t3"]  # their old positions
    # a, back, finds out at its next write, which is not applied
    with pytest.raises(CoordinatorFenced):  # it joins again meanwhile, once b acknowledged
        beside([b], lambda: a.submit([SubmitSpec("late", b"p")], T0), T0)
    assert info(b, "t0").state is TaskState.LEASED and b.info(["late"]) == [None]
    submit(a, "late")  # joined again under a new owner id: it works
    assert info(b, "late").state is TaskState.PENDING


def test_node_lost_through_one_coordinator_never_touches_the_others_leases(pair):
    a, b = pair
    submit(a, "t0", "t1")
    (la,) = lease(a, "n#1", 1)
    (lb,) = lease(b, "n#1", 1)  # the same node id, given by each coordinator
    assert a.node_lost("n#1", T0) == ["t0"]
    assert info(a, "t0").lost == 1 and info(b, "t1").state is TaskState.LEASED
    assert b.complete("n#1", [done(lb.id, lb.token)], T0) == [Verdict.ACCEPTED]
    assert b.node_lost("n#1", T0) == []
    assert la.id == "t0" and a.stats().held == b.stats().held == {}


def test_a_task_finished_through_one_coordinator_is_drained_by_every_one(pair):
    a, b = pair
    submit(a, "t0")
    (le,) = lease(b, "n#1", 1)
    assert b.complete("n#1", [done(le.id, le.token, b"v")], T0) == [Verdict.ACCEPTED]
    assert a.drain_finished() == ["t0"]  # a's client waits for it
    (out,) = a.outcomes(["t0"])
    assert out is not None and (out.state, out.value) == (TaskState.SUCCEEDED, b"v")
    assert b.drain_finished() == ["t0"]
    assert a.drain_finished() == b.drain_finished() == []  # each reads it once


def test_a_completion_reaches_the_coordinator_that_did_not_lease(pair):
    # a node that moved from a to b resends its DONE to b: accepted, a's slot freed
    a, b = pair
    submit(a, "t0")
    (le,) = lease(a, "n#1", 1)
    assert b.complete("n#2", [done(le.id, le.token)], T0) == [Verdict.ACCEPTED]
    assert a.stats().held == {"n#1": 0}


def test_a_node_that_joins_another_coordinator_takes_its_leases_along(pair):
    a, b = pair
    submit(a, "t0", "t1", "t2", "t3")
    assert a.node_joined("n#1", "n", T0) == 0  # as the coordinator says at its READY
    first = lease(a, "n#1", 2)
    assert b.node_joined("n#1", "n", T0) == 2  # b's own id for it may be the same
    assert a.node_lost("n#1", T0) == []  # a's late notice of the lost connection
    assert info(b, "t0").node == "n#1" and info(a, "t0").node != "n#1"  # b's, qualified
    # the adopted leases do not count against the capacity the node announces
    assert leased_ids(b, "n#1", 2) == ["t2", "t3"]
    assert b.complete("n#1", [done(first[0].id, first[0].token)], T0) == [Verdict.ACCEPTED]
    assert b.stats().held == {"n#1": 3}
    assert sorted(b.node_lost("n#1", T0)) == ["t1", "t2", "t3"]  # lost under b: charged
    assert [info(b, t).lost for t in ("t1", "t2", "t3")] == [1, 1, 1]
    assert b.node_joined("x#1", "", T0) == 0  # an unnamed node adopts nothing


def test_a_node_of_another_name_adopts_nothing(pair):
    a, b = pair
    submit(a, "t0")
    a.node_joined("n#1", "n", T0)
    lease(a, "n#1", 1)
    assert b.node_joined("m#1", "m", T0) == 0
    assert a.node_lost("n#1", T0) == ["t0"]


def test_a_task_submitted_through_one_is_leased_through_the_other_that_found_the_queue_empty(
    opened, redis_server
):
    a = _open(opened, redis_server.url, [])
    assert a.lease({"n#1": Demand(2)}, T0) == {}  # a, alone, knows the queue is empty
    assert a.next_ready(T0) is None  # and that nothing waits on the clock
    b = _open(opened, redis_server.url, [a])  # opens once a acknowledged it
    submit(b, "t0")
    submit(b, "later", not_before=T0 + 5)
    assert leased_ids(a, "n#1", 2) == ["t0"]
    assert a.next_ready(T0) == T0 + a.poll  # shared: a flushes every poll
    assert a.promote_due(T0 + 5) == 1 and b.promote_due(T0 + 5) == 0
    assert leased_ids(b, "m#1", 2) == ["later"]
    assert a.lease({"n#1": Demand(2)}, T0) == {}  # empty again, as a finds out
    submit(b, "t1")
    assert leased_ids(a, "n#1", 2) == ["t1"]  # and does not take it for known


def test_schedules_and_delayed_tasks_fire_once_across_coordinators(pair):
    a, b = pair
    a.put_schedule(ScheduleSpec("tick", b"p", every=10.0), T0)
    submit(b, *(f"d{i}" for i in range(5)), not_before=T0 + 15)
    fired: list[str] = []
    promoted = 0
    for step in range(1, 8):  # 35 s of fake time, each coordinator flushing in turn
        now = T0 + 5 * step
        for x, y in ((a, b), (b, a)):
            fired += x.fire_schedules(now)
            promoted += x.promote_due(now)
            _keep(x, y)
    assert len(fired) == len(set(fired)) == 3  # T0+10, +20, +30, each once
    assert promoted == 5
    got = leased_ids(a, "n#1", 20) + leased_ids(b, "m#1", 20)
    assert sorted(got) == sorted(fired + [f"d{i}" for i in range(5)])


def test_a_closed_coordinator_is_recovered_at_once_and_the_store_is_alone_again(pair):
    a, b = pair
    submit(a, "t0")
    lease(a, "n#1", 1)
    a.close()
    assert b.keepalive(T0)  # its leases came back: flush
    assert info(b, "t0").state is TaskState.PENDING and info(b, "t0").lost == 0
    assert not b.keepalive(T0)  # alone: no flush asked for
    assert b.next_ready(T0) is None  # caching again


def test_an_adopted_lease_still_open_after_adopt_for_is_requeued_without_a_loss(pair):
    # a lease the dead coordinator granted but never sent: its node will never end it
    a, b = pair
    submit(a, "t0", "t1")
    a.node_joined("n#1", "n", T0)
    sent, unsent = lease(a, "n#1", 2)
    assert b.node_joined("n#2", "n", T0 + 1) == 2
    assert b.complete("n#2", [done(sent.id, sent.token)], T0 + 2) == [Verdict.ACCEPTED]
    b.keepalive(T0 + 1 + b.adopt_for - 0.5)
    assert info(b, unsent.id).state is TaskState.LEASED  # not yet
    assert b.keepalive(T0 + 1 + b.adopt_for)
    i = info(b, unsent.id)
    assert (i.state, i.lost) == (TaskState.PENDING, 0)
    assert leased_ids(b, "m#1", 2) == [unsent.id]


def test_the_store_url_carries_the_owner_settings(opened, redis_server):
    a = _open(opened, redis_server.url + "?liveness=2&adopt_for=3", [])
    assert (a.liveness, a.poll, a.adopt_for) == (2.0, 0.05, 3.0)
    with pytest.raises(ValueError, match="liveness must be a number of seconds > 0, not '0'"):
        RedisBackend(redis_server.url + "?liveness=0", prefix="pqbad")
    with pytest.raises(ValueError, match="poll must be"):
        RedisBackend(redis_server.url, prefix="pqbad", poll=float("nan"))


def test_a_closed_store_leaves_the_leases_of_its_lost_connections_to_the_next_owner(pair):
    # a stopping coordinator closes its store, then its connections close
    a, b = pair
    submit(a, "t0")
    lease(a, "n#1", 1)
    a.close()
    assert a.node_lost("n#1", T0) == [] and a.keepalive(T0) is False
    assert b.keepalive(T0) and info(b, "t0").lost == 0
