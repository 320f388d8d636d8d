"""The backend contract suite: every store behind the coordinator, held to
:mod:`pyqueue.cluster.backend` through its public contract only.

Each test runs once per entry of :data:`BACKENDS`; adding a store is one entry
there.  Tests that restart a store run only for the ``durable`` ones.  The
clock is fake: every call gets ``now`` from the test, starting at :data:`T0`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis_server import shared_cluster_url, shared_url

from pyqueue.cluster.backend import Backend
from pyqueue.cluster.backends import MemoryBackend, SQLiteBackend
from pyqueue.cluster.backends.redis import RedisBackend
from pyqueue.cluster.dispatch import Policy
from pyqueue.cluster.schedules import ScheduleSpec, fire_id
from pyqueue.cluster.states import (
    Completion,
    Demand,
    Lease,
    Outcome,
    Release,
    SubmitSpec,
    TaskInfo,
    TaskState,
    Verdict,
)

T0 = 1_000_000.0  # the fake clock's start (wall-clock seconds)
SEED = 7

Opener = Callable[[Path, "Policy | None", "int | None", float], Backend]


@dataclass(frozen=True)
class Kind:
    """One store under test: how to open it on a location, and whether it survives a close."""

    name: str
    durable: bool
    open: Opener


BACKENDS = [
    Kind("memory", False, lambda where, policy, seed, now: MemoryBackend(policy, seed=seed)),
    Kind(
        "sqlite",
        True,
        lambda where, policy, seed, now: SQLiteBackend(
            where / "store.db", policy, seed=seed, now=now
        ),
    ),
    # one private redis-server per test process; a location is a key prefix on it
    Kind(
        "redis",
        True,
        lambda where, policy, seed, now: RedisBackend(
            shared_url(), policy, prefix=f"pqt{abs(hash(str(where)))}", seed=seed, now=now
        ),
    ),
    # the same on one Redis Cluster (3 primaries) per test process: each prefix is
    # one hash tag, so each test's store lives on one of its shards
    Kind(
        "redis-cluster",
        True,
        lambda where, policy, seed, now: RedisBackend(
            shared_cluster_url(), policy, prefix=f"pqt{abs(hash(str(where)))}", seed=seed, now=now
        ),
    ),
]


class Stores:
    """Opens stores of one kind, fresh or reopened on the same location, and closes them."""

    def __init__(self, kind: Kind, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.opened: list[Backend] = []

    @property
    def durable(self) -> bool:
        return self.kind.durable

    def open(
        self,
        policy: Policy | None = None,
        *,
        seed: int | None = SEED,
        now: float = T0,
        slot: str = "main",
    ) -> Backend:
        """A store on location ``slot``: fresh the first time, reopened after a close."""
        where = self.root / slot
        where.mkdir(exist_ok=True)
        store = self.kind.open(where, policy, seed, now)
        self.opened.append(store)
        return store

    def reopen(self, store: Backend, *, now: float, policy: Policy | None = None) -> Backend:
        """Close ``store`` and open its location again (durable kinds only)."""
        assert self.durable, "only a durable store can be reopened"
        store.close()
        return self.open(policy or store.policy, now=now)

    def close_all(self) -> None:
        for store in reversed(self.opened):
            store.close()


def _stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    stores = Stores(request.param, tmp_path)
    try:
        yield stores
    finally:
        stores.close_all()


@pytest.fixture(params=BACKENDS, ids=lambda k: k.name)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """A factory of stores of every kind in :data:`BACKENDS`."""
    yield from _stores(request, tmp_path)


@pytest.fixture(params=[k for k in BACKENDS if k.durable], ids=lambda k: k.name)
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """The same, for the durable kinds only (restart tests)."""
    yield from _stores(request, tmp_path)


@pytest.fixture
def store(stores: Stores) -> Backend:
    """A fresh store with the default policy."""
    return stores.open()


# -- helpers ------------------------------------------------------------------------


def payload(tid: str) -> bytes:
    return f"p-{tid}".encode()


def submit(b: Backend, *ids: str, now: float = T0, **kw: object) -> list[TaskState]:
    return b.submit([SubmitSpec(i, payload(i), **kw) for i in ids], now)  # type: ignore[arg-type]


def lease(b: Backend, node: str, capacity: int, now: float = T0) -> list[Lease]:
    """What ``node`` was granted by one lease call with ``capacity``."""
    grant = b.lease({node: Demand(capacity)}, now).get(node)
    return [] if grant is None else grant.leases


def leased_ids(b: Backend, node: str, capacity: int, now: float = T0) -> list[str]:
    return [le.id for le in lease(b, node, capacity, now)]


def ok(le: Lease, value: bytes = b"r") -> Completion:
    return Completion(le.id, le.token, True, value, None)


def done(tid: str, token: int, value: bytes = b"r") -> Completion:
    return Completion(tid, token, True, value, None)


def raised(
    tid: str, token: int, value: bytes = b"exc", error: str = "Traceback: boom"
) -> Completion:
    return Completion(tid, token, False, value, error)


def info(b: Backend, tid: str) -> TaskInfo:
    (got,) = b.info([tid])
    assert got is not None, f"{tid} is unknown"
    return got


def state(b: Backend, tid: str) -> TaskState | None:
    (got,) = b.info([tid])
    return None if got is None else got.state


def outcome(b: Backend, tid: str) -> Outcome | None:
    (got,) = b.outcomes([tid])
    return got


def held(b: Backend, node: str) -> int:
    return b.stats().held.get(node, 0)


def count(b: Backend, st: TaskState) -> int:
    return b.stats().tasks[st]


def finish_all(b: Backend, node: str = "n", now: float = T0) -> list[str]:
    """Lease everything ready to ``node``, complete it, and drain as the coordinator does."""
    ids = []
    for le in lease(b, node, 1000, now):
        assert b.complete(node, [ok(le, b"r-" + le.id.encode())], now) == [Verdict.ACCEPTED]
        ids.append(le.id)
    b.drain_finished()
    return ids


def kill(b: Backend, tid: str, *, now: float = T0, node: str = "killer") -> None:
    """Lose the node under ``tid`` until it is dead-lettered (``tid`` must be next in line)."""
    while state(b, tid) is not TaskState.DEAD:
        assert leased_ids(b, node, 1, now) == [tid]
        assert b.node_lost(node, now) == [tid]


def verdicts(b: Backend) -> dict[Verdict, int]:
    return b.stats().completions


# -- submit ---------------------------------------------------------------------------


def test_a_new_task_is_pending_with_every_counter_zero(store: Backend) -> None:
    assert submit(store, "a", "b") == [TaskState.PENDING, TaskState.PENDING]
    a = info(store, "a")
    assert (a.id, a.state, a.attempts, a.failures, a.lost) == ("a", TaskState.PENDING, 0, 0, 0)
    assert (a.node, a.error, a.expires) == (None, None, 0)
    assert count(store, TaskState.PENDING) == 2


def test_submit_is_idempotent_within_one_batch(store: Backend) -> None:
    specs = [SubmitSpec("a", b"first"), SubmitSpec("a", b"second"), SubmitSpec("b", b"pb")]
    assert store.submit(specs, T0) == [TaskState.PENDING] * 3
    assert count(store, TaskState.PENDING) == 2
    got = lease(store, "n", 10)
    assert [(le.id, le.payload) for le in got] == [("a", b"first"), ("b", b"pb")]


def test_submit_is_idempotent_across_batches_and_returns_the_current_state(store: Backend) -> None:
    submit(store, "a", "b", "c", "d")
    assert store.submit([SubmitSpec("b", b"other", retries=5)], T0) == [TaskState.PENDING]
    (la, lb) = lease(store, "n", 2)
    assert lb.payload == payload("b")  # the second submit changed nothing
    store.complete("n", [ok(la)], T0)
    store.cancel(["c"], T0)
    again = submit(store, "a", "b", "c", "d", "e")
    assert again == [
        TaskState.SUCCEEDED,
        TaskState.LEASED,
        TaskState.CANCELLED,
        TaskState.PENDING,
        TaskState.PENDING,
    ]
    assert count(store, TaskState.PENDING) == 2  # d and the new e
    assert info(store, "b").attempts == 1  # a resubmit does not touch counters
    # b's retries are still 0: it fails for good on its first error
    assert store.complete("n", [raised("b", lb.token)], T0) == [Verdict.ACCEPTED]
    assert state(store, "b") is TaskState.FAILED


def test_submit_is_idempotent_for_scheduled_and_dead_tasks(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "later", now=T0, not_before=T0 + 60)
    submit(b, "x")
    kill(b, "x")
    assert submit(b, "later", "x", now=T0 + 100) == [TaskState.SCHEDULED, TaskState.DEAD]
    assert b.next_due() == T0 + 60  # not moved by the resubmit


def test_not_before_after_now_makes_a_task_scheduled(store: Backend) -> None:
    got = store.submit(
        [
            SubmitSpec("future", b"f", not_before=T0 + 0.001),
            SubmitSpec("now", b"n", not_before=T0),
            SubmitSpec("past", b"p", not_before=T0 - 5),
        ],
        T0,
    )
    assert got == [TaskState.SCHEDULED, TaskState.PENDING, TaskState.PENDING]
    assert count(store, TaskState.SCHEDULED) == 1
    assert leased_ids(store, "n", 5) == ["now", "past"]


# -- scheduled tasks -------------------------------------------------------------------


def test_a_scheduled_task_is_promoted_at_its_time_and_not_before(store: Backend) -> None:
    assert store.next_due() is None
    submit(store, "later", not_before=T0 + 60)
    assert store.next_due() == T0 + 60
    assert lease(store, "n", 1) == []
    assert store.promote_due(T0 + 59.999) == 0
    assert lease(store, "n", 1, T0 + 59.999) == []
    assert state(store, "later") is TaskState.SCHEDULED
    assert store.promote_due(T0 + 60) == 1
    assert state(store, "later") is TaskState.PENDING
    assert store.next_due() is None
    assert store.promote_due(T0 + 61) == 0  # promoted once
    assert leased_ids(store, "n", 1, T0 + 60) == ["later"]


def test_next_due_is_the_earliest_scheduled_task(store: Backend) -> None:
    submit(store, "b", not_before=T0 + 20)
    submit(store, "a", not_before=T0 + 10)
    submit(store, "c", not_before=T0 + 30)
    assert store.next_due() == T0 + 10
    assert store.cancel(["a"], T0) == [True]
    assert store.next_due() == T0 + 20  # a cancelled task is not due any more
    assert store.promote_due(T0 + 25) == 1
    assert store.next_due() == T0 + 30


def test_a_promoted_task_takes_its_place_by_submit_order(store: Backend) -> None:
    submit(store, "p0")
    submit(store, "s1", not_before=T0 + 20)
    submit(store, "s2", not_before=T0 + 10)
    submit(store, "p3")
    assert store.promote_due(T0 + 30) == 2
    assert leased_ids(store, "n", 10, T0 + 30) == ["p0", "s1", "s2", "p3"]


# -- lease -------------------------------------------------------------------------------


def test_lease_is_fifo_and_the_token_is_the_attempt_count(store: Backend) -> None:
    submit(store, "a", "b", "c")
    grants = store.lease({"n1": Demand(2)}, T0)
    assert grants["n1"].held == 2
    assert [(le.id, le.token, le.payload) for le in grants["n1"].leases] == [
        ("a", 1, b"p-a"),
        ("b", 1, b"p-b"),
    ]
    a = info(store, "a")
    assert (a.state, a.attempts, a.node, a.token) == (TaskState.LEASED, 1, "n1", 1)
    assert info(store, "c").node is None
    assert store.stats().held["n1"] == 2


def test_a_node_gets_up_to_its_capacity_minus_what_it_holds(store: Backend) -> None:
    submit(store, *"abcdef")
    assert leased_ids(store, "n", 2) == ["a", "b"]
    assert lease(store, "n", 2) == []  # full
    assert lease(store, "n", 1) == []  # less than it holds: nothing, nothing taken back
    assert held(store, "n") == 2
    grant = store.lease({"n": Demand(3)}, T0)["n"]
    assert ([le.id for le in grant.leases], grant.held) == (["c"], 3)
    (la,) = [le for le in lease(store, "m", 1)]  # d goes to another node
    assert store.complete("m", [ok(la)], T0) == [Verdict.ACCEPTED]
    store.complete("n", [done("a", 1)], T0)  # n frees one slot
    grant = store.lease({"n": Demand(3)}, T0)["n"]
    assert ([le.id for le in grant.leases], grant.held) == (["e"], 3)


def test_one_lease_call_serves_several_nodes(store: Backend) -> None:
    submit(store, *"abcdefg")
    store.lease({"n2": Demand(1)}, T0)  # n2 holds a already
    grants = store.lease({"n1": Demand(2), "n2": Demand(3), "n3": Demand(0), "n4": Demand(1)}, T0)
    got = {node: [le.id for le in g.leases] for node, g in grants.items() if g.leases}
    assert sorted(got) == ["n1", "n2", "n4"]
    assert (len(got["n1"]), len(got["n2"]), len(got["n4"])) == (2, 2, 1)
    assert sorted(sum(got.values(), [])) == list("bcdef")  # the oldest ones, each once
    assert (grants["n1"].held, grants["n2"].held, grants["n4"].held) == (2, 3, 1)
    stats = store.stats()
    assert (stats.held["n1"], stats.held["n2"], stats.held["n4"]) == (2, 3, 1)
    assert stats.held.get("n3", 0) == 0
    assert stats.tasks[TaskState.LEASED] == 6 and stats.tasks[TaskState.PENDING] == 1
    for node, ids in got.items():
        for tid in ids:
            assert info(store, tid).node == node


def test_lease_with_nothing_ready_grants_nothing(store: Backend) -> None:
    assert all(not g.leases for g in store.lease({"n": Demand(5)}, T0).values())
    submit(store, "later", not_before=T0 + 1)
    assert all(not g.leases for g in store.lease({"n": Demand(5), "m": Demand(5)}, T0).values())


# -- complete and fencing -------------------------------------------------------------------


def test_an_accepted_completion_is_the_result_and_frees_the_slot(store: Backend) -> None:
    submit(store, "a", "b", "c")
    (la, lb) = lease(store, "n", 2)
    assert store.complete("n", [ok(la, b"ra")], T0 + 1) == [Verdict.ACCEPTED]
    a = info(store, "a")
    assert (a.state, a.node, a.attempts, a.failures) == (TaskState.SUCCEEDED, None, 1, 0)
    assert outcome(store, "a") == Outcome("a", TaskState.SUCCEEDED, b"ra", None)
    assert held(store, "n") == 1
    grant = store.lease({"n": Demand(2)}, T0)["n"]
    assert ([le.id for le in grant.leases], grant.held) == (["c"], 2)


def test_one_complete_call_judges_every_row_in_order(store: Backend) -> None:
    submit(store, "a", "b")
    (la, lb) = lease(store, "n", 2)
    rows = [ok(la), ok(la), done("b", lb.token + 1), done("nope", 1), ok(lb)]
    assert store.complete("n", rows, T0) == [
        Verdict.ACCEPTED,
        Verdict.DUPLICATE,
        Verdict.STALE,
        Verdict.UNKNOWN,
        Verdict.ACCEPTED,
    ]
    assert held(store, "n") == 0


def test_the_first_completion_wins_and_a_superseded_token_is_stale(store: Backend) -> None:
    submit(store, "a")
    (old,) = lease(store, "n1", 1)
    assert store.node_lost("n1", T0) == ["a"]
    (new,) = lease(store, "n2", 1)
    assert new.token == 2 > old.token
    assert store.complete("n1", [ok(old, b"old")], T0) == [Verdict.STALE]
    assert state(store, "a") is TaskState.LEASED
    assert store.complete("n2", [ok(new, b"new")], T0) == [Verdict.ACCEPTED]
    assert store.complete("n1", [ok(old, b"old")], T0) == [Verdict.DUPLICATE]
    assert store.complete("n2", [ok(new, b"again")], T0) == [Verdict.DUPLICATE]
    assert outcome(store, "a").value == b"new"  # type: ignore[union-attr]
    assert store.complete("n1", [done("nope", 1)], T0) == [Verdict.UNKNOWN]
    assert verdicts(store) == {
        Verdict.ACCEPTED: 1,
        Verdict.DUPLICATE: 2,
        Verdict.STALE: 1,
        Verdict.UNKNOWN: 1,
    }


def test_a_completion_after_node_loss_but_before_re_lease_is_accepted(store: Backend) -> None:
    submit(store, "a")
    (le,) = lease(store, "n1", 1)
    store.node_lost("n1", T0)
    assert store.complete("n1", [ok(le, b"late")], T0) == [Verdict.ACCEPTED]
    assert outcome(store, "a") == Outcome("a", TaskState.SUCCEEDED, b"late", None)
    assert lease(store, "n2", 1) == []  # not dispatched again
    assert count(store, TaskState.PENDING) == 0 and count(store, TaskState.SUCCEEDED) == 1


def test_a_stale_completion_leaves_the_lease_that_replaced_it_alone(store: Backend) -> None:
    submit(store, "x", "y")
    (old,) = lease(store, "n1", 1)
    store.node_lost("n1", T0)  # the node reconnects under a new id and gets x again
    (new,) = lease(store, "n2", 1)
    assert store.complete("n2", [ok(old, b"late")], T0) == [Verdict.STALE]
    assert held(store, "n2") == 1  # still held by n2: its slot is not freed
    assert lease(store, "n2", 1) == []  # so y does not fit beside it
    assert info(store, "x").node == "n2"
    assert store.node_lost("n2", T0) == ["x"]  # losing n2 requeues it
    assert state(store, "x") is TaskState.PENDING


def test_a_terminated_completion_ends_cancelled_not_failed_nor_retried(store: Backend) -> None:
    submit(store, "a", retries=3)
    (le,) = lease(store, "n", 1)
    row = Completion("a", le.token, False, b"exc", "TaskCancelled", cancelled=True)
    assert store.complete("n", [row], T0) == [Verdict.ACCEPTED]
    a = info(store, "a")
    assert (a.state, a.failures) == (TaskState.CANCELLED, 0)
    assert outcome(store, "a").value is None  # type: ignore[union-attr]
    assert store.next_due() is None and held(store, "n") == 0


def test_an_error_without_retries_is_final_with_its_exception_and_traceback(store: Backend) -> None:
    submit(store, "a")
    (le,) = lease(store, "n", 1)
    assert store.complete("n", [raised("a", le.token, b"exc", "Traceback...")], T0) == [
        Verdict.ACCEPTED
    ]
    a = info(store, "a")
    assert (a.state, a.failures, a.lost, a.error) == (TaskState.FAILED, 1, 0, "Traceback...")
    assert outcome(store, "a") == Outcome("a", TaskState.FAILED, b"exc", "Traceback...")
    assert store.next_due() is None
    assert store.complete("n", [raised("a", le.token)], T0) == [Verdict.DUPLICATE]
    assert info(store, "a").failures == 1


def test_stats_count_every_state_and_follow_every_transition(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "a", "b", "c", "d", "e", "f")
    submit(b, "s", not_before=T0 + 5)
    (la, lb, lc) = lease(b, "n", 3)
    b.complete("n", [ok(la), raised("b", lb.token)], T0)
    b.cancel(["d"], T0)
    counts = b.stats().tasks
    assert set(counts) == set(TaskState)
    assert counts == {
        TaskState.SCHEDULED: 1,
        TaskState.PENDING: 2,
        TaskState.LEASED: 1,
        TaskState.SUCCEEDED: 1,
        TaskState.FAILED: 1,
        TaskState.DEAD: 0,
        TaskState.CANCELLED: 1,
    }
    b.node_lost("n", T0)  # c dies (max_lost=1)
    b.promote_due(T0 + 5)
    counts = b.stats().tasks
    assert (counts[TaskState.LEASED], counts[TaskState.DEAD]) == (0, 1)
    assert (counts[TaskState.PENDING], counts[TaskState.SCHEDULED]) == (3, 0)
    assert sum(counts.values()) == 7
    assert b.stats().purged == 0


# -- release ------------------------------------------------------------------------------


def test_a_released_task_is_pending_again_at_its_old_position(store: Backend) -> None:
    submit(store, "a", "b", "c")
    (la, lb) = lease(store, "n", 2)
    assert store.release("n", [Release("a", la.token), Release("b", lb.token)], T0) == [True, True]
    a = info(store, "a")
    assert (a.state, a.lost, a.attempts, a.node) == (TaskState.PENDING, 0, 1, None)
    assert held(store, "n") == 0
    assert [(le.id, le.token) for le in lease(store, "m", 3)] == [("a", 2), ("b", 2), ("c", 1)]


def test_release_refuses_a_wrong_token_node_or_state(store: Backend) -> None:
    submit(store, "a", "b")
    (la,) = lease(store, "n", 1)
    rows = [
        Release("a", la.token + 1),  # not its token
        Release("b", 1),  # not leased
        Release("zz", 1),  # unknown
    ]
    assert store.release("n", rows, T0) == [False, False, False]
    assert store.release("other", [Release("a", la.token)], T0) == [False]  # not its holder
    assert (state(store, "a"), info(store, "a").node, held(store, "n")) == (
        TaskState.LEASED,
        "n",
        1,
    )
    assert store.release("n", [Release("a", la.token)] * 2, T0) == [True, False]


def test_releasing_a_started_task_counts_a_loss_and_dead_letters_at_the_limit(
    store: Backend,
) -> None:
    submit(store, "a")
    for n in range(1, store.policy.max_lost + 1):
        (le,) = lease(store, "n", 1)
        assert store.release("n", [Release("a", le.token, started=True)], T0) == [True]
        assert info(store, "a").lost == n
    assert state(store, "a") is TaskState.DEAD
    assert store.drain_finished() == ["a"]
    submit(store, "b")
    (le,) = lease(store, "n", 1)
    assert store.release("n", [Release("b", le.token)], T0) == [True]  # not started: no loss
    assert (info(store, "b").lost, state(store, "b")) == (0, TaskState.PENDING)


# -- node loss, poison isolation, dead letters -------------------------------------------


def test_node_loss_requeues_at_the_old_position_and_counts_lost(store: Backend) -> None:
    submit(store, "a", "b", "c")
    lease(store, "n1", 1)  # a
    assert store.node_lost("nobody", T0) == []
    assert store.node_lost("n1", T0) == ["a"]
    a = info(store, "a")
    assert (a.state, a.lost, a.attempts, a.failures, a.node) == (TaskState.PENDING, 1, 1, 0, None)
    assert held(store, "n1") == 0
    assert store.node_lost("n1", T0) == []  # once
    assert leased_ids(store, "n2", 3) == ["a", "b", "c"]


def test_node_loss_returns_every_task_the_node_held(store: Backend) -> None:
    submit(store, "a", "b", "c", "d")
    lease(store, "n1", 3)  # a, b, c
    store.complete("n1", [done("b", 1)], T0)
    assert sorted(store.node_lost("n1", T0)) == ["a", "c"]
    assert [info(store, i).lost for i in "abcd"] == [1, 0, 1, 0]
    assert count(store, TaskState.PENDING) == 3 and count(store, TaskState.LEASED) == 0


def test_a_task_is_dead_lettered_after_max_lost_losses(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=2))
    submit(b, "a")
    for n in ("x", "y"):
        assert leased_ids(b, n, 1) == ["a"]
        assert b.node_lost(n, T0) == ["a"]
    a = info(b, "a")
    assert (a.state, a.lost, a.node) == (TaskState.DEAD, 2, None)
    assert a.error  # says why
    assert lease(b, "z", 1) == []


def test_suspect_tasks_are_never_leased_together(store: Backend) -> None:
    submit(store, "p", "x", "y", "z")
    lease(store, "n1", 2)  # p, x
    store.node_lost("n1", T0)  # both suspects now
    assert leased_ids(store, "n2", 4) == ["p", "y", "z"]  # x waits: n2 holds a suspect
    assert leased_ids(store, "n3", 4) == ["x"]


def test_a_node_holds_at_most_one_suspect_and_the_skipped_keep_their_place(
    store: Backend,
) -> None:
    submit(store, "s1", "s2", "s3")
    assert len(lease(store, "n", 3)) == 3
    store.node_lost("n", T0)  # all three lost once: suspects
    submit(store, "fresh")
    assert leased_ids(store, "m", 10) == ["s1", "fresh"]  # one suspect, and the innocent work
    assert leased_ids(store, "other", 1) == ["s2"]  # another node may take the next suspect
    assert store.complete("m", [done("s1", 2)], T0) == [Verdict.ACCEPTED]
    submit(store, "late")
    assert leased_ids(store, "m", 10) == ["s3", "late"]  # s3 kept its place before late


def test_poison_isolation_holds_per_node_within_one_lease_call(store: Backend) -> None:
    submit(store, "s1", "s2", "s3", "ok1", "ok2")
    lease(store, "n", 3)
    store.node_lost("n", T0)
    grants = store.lease({"a": Demand(10), "b": Demand(10)}, T0)
    suspects = {"s1", "s2", "s3"}
    for g in grants.values():
        assert len(suspects & {le.id for le in g.leases}) <= 1
    given = sorted(le.id for g in grants.values() for le in g.leases)
    assert given == ["ok1", "ok2", "s1", "s2"]  # s3 waits for a node without a suspect
    assert state(store, "s3") is TaskState.PENDING


def test_dead_letter_then_requeue_keeps_tokens_growing(store: Backend) -> None:
    submit(store, "poison", "p2")
    kill(store, "poison")
    d = info(store, "poison")
    assert (d.state, d.lost, d.attempts) == (TaskState.DEAD, 4, 4)
    assert d.expires > 0 and d.error
    assert store.drain_finished() == ["poison"]
    assert [x.id for x in store.dead()] == ["poison"]
    assert outcome(store, "poison") == Outcome("poison", TaskState.DEAD, None, d.error)
    assert store.requeue_dead(["poison", "nope", "p2"], T0) == [True, False, False]
    r = info(store, "poison")
    assert (r.state, r.lost, r.failures, r.attempts, r.error, r.expires) == (
        TaskState.PENDING,
        0,
        0,
        4,
        None,
        0,
    )
    assert store.dead() == []
    (le,) = lease(store, "n9", 1)
    assert (le.id, le.payload, le.token) == ("poison", b"p-poison", 5)  # tokens never go back
    assert store.requeue_dead(["poison"], T0) == [False]  # leased, not dead


def test_a_requeued_dead_task_goes_back_to_its_old_position(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "a", "b", "c")
    kill(b, "a")
    assert b.requeue_dead(["a"], T0) == [True]
    assert leased_ids(b, "n", 3) == ["a", "b", "c"]


def test_requeue_dead_resets_failures_and_losses(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "a", retries=5, backoff=0.0)
    (le,) = lease(b, "n", 1)
    b.complete("n", [raised("a", le.token)], T0)
    assert b.promote_due(T0) == 1
    kill(b, "a")
    a = info(b, "a")
    assert (a.state, a.failures, a.lost, a.attempts) == (TaskState.DEAD, 1, 1, 2)
    b.requeue_dead(["a"], T0)
    a = info(b, "a")
    assert (a.failures, a.lost, a.attempts) == (0, 0, 2)


def test_the_hard_cap_dead_letters_instead_of_leasing(store: Backend) -> None:
    submit(store, "a")
    cap = store.policy.max_attempts
    for token in range(1, cap + 1):
        (le,) = lease(store, "n", 1)
        assert le.token == token
        assert store.release("n", [Release("a", le.token)], T0) == [True]
    assert lease(store, "n", 1) == []
    a = info(store, "a")
    assert (a.state, a.attempts, a.lost) == (TaskState.DEAD, cap, 0)
    assert f"{cap} attempts" in (a.error or "")
    assert store.drain_finished() == ["a"]


def test_the_hard_cap_counts_from_the_last_requeue_of_the_dead(stores: Stores) -> None:
    b = stores.open(Policy(max_attempts=3))
    submit(b, "a", "next")
    for _ in range(2):
        tokens = []
        while (got := lease(b, "n", 1)) and got[0].id == "a":
            tokens.append(got[0].token)
            b.release("n", [Release("a", got[0].token)], T0)
        b.release("n", [Release(le.id, le.token) for le in got], T0)
        assert state(b, "a") is TaskState.DEAD
        assert len(tokens) == 3
        assert b.requeue_dead(["a"], T0) == [True]
    assert tokens == [4, 5, 6]  # the second round: tokens grow, the cap counts afresh


def test_dead_lists_the_oldest_death_first_up_to_limit(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "a", "b", "c")
    lease(b, "n", 3)
    b.release("n", [Release("c", 1, started=True)], T0 + 1)
    b.release("n", [Release("a", 1, started=True)], T0 + 2)
    b.release("n", [Release("b", 1, started=True)], T0 + 3)
    assert [d.id for d in b.dead()] == ["c", "a", "b"]
    assert [d.id for d in b.dead(limit=2)] == ["c", "a"]
    assert all(d.state is TaskState.DEAD for d in b.dead())


def test_a_task_that_dies_again_is_ordered_by_its_last_death(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1, max_dead=2))
    submit(b, "a", "b")
    kill(b, "a", now=T0 + 1)
    kill(b, "b", now=T0 + 2)
    assert b.requeue_dead(["a"], T0 + 3) == [True]
    kill(b, "a", now=T0 + 4)  # a dies again, after b
    assert [d.id for d in b.dead()] == ["b", "a"]
    submit(b, "c", now=T0 + 5)
    kill(b, "c", now=T0 + 5)
    b.drain_finished()
    assert b.expire(T0 + 5, 100) == 1  # 3 dead, max_dead 2: the oldest death goes
    assert state(b, "b") is None and state(b, "a") is TaskState.DEAD


def test_a_task_that_dies_twice_in_one_instant_is_listed_once(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "a", "b")
    kill(b, "a")
    kill(b, "b")
    b.requeue_dead(["a"], T0)
    kill(b, "a")
    assert [d.id for d in b.dead()] == ["b", "a"]


# -- retries with backoff ------------------------------------------------------------------


def fail_next(b: Backend, tid: str, now: float) -> float:
    """Lease ``tid``, make it raise at ``now``, and return when its retry is due."""
    (le,) = lease(b, "n", 1, now)
    assert le.id == tid
    assert b.complete("n", [raised(tid, le.token)], now) == [Verdict.ACCEPTED]
    assert state(b, tid) is TaskState.SCHEDULED
    due = b.next_due()
    assert due is not None
    return due


def test_an_error_with_retries_left_is_scheduled_after_a_growing_backoff(store: Backend) -> None:
    submit(store, "a", retries=2, backoff=10.0)
    now = T0
    for failures in (1, 2):
        due = fail_next(store, "a", now)
        delay = 10.0 * 2 ** (failures - 1)
        assert now + 0.5 * delay <= due < now + 1.5 * delay
        a = info(store, "a")
        assert (a.failures, a.node, a.lost) == (failures, None, 0)
        assert outcome(store, "a").value is None  # type: ignore[union-attr]
        assert lease(store, "n", 1, due) == []  # not before promote_due
        assert store.promote_due(due - 0.001) == 0
        assert store.promote_due(due) == 1
        now = due
    (le,) = lease(store, "n", 1, now)
    assert le.token == 3
    store.complete("n", [raised("a", 3, b"exc3", "boom 3")], now)
    a = info(store, "a")
    assert (a.state, a.failures, a.attempts) == (TaskState.FAILED, 3, 3)
    assert outcome(store, "a") == Outcome("a", TaskState.FAILED, b"exc3", "boom 3")
    assert store.next_due() is None
    assert store.drain_finished() == ["a"]  # ended once, not at each retry


def test_the_backoff_is_capped(stores: Stores) -> None:
    b = stores.open(Policy(backoff_cap=15.0))
    submit(b, "a", retries=5, backoff=10.0)
    now = T0
    for _ in range(2):
        now = fail_next(b, "a", now)
        b.promote_due(now)
    due = fail_next(b, "a", now)  # third failure: 10 * 4 = 40, capped at 15
    assert now + 7.5 <= due < now + 22.5


def test_the_backoff_jitter_is_seeded(stores: Stores) -> None:
    def delays(slot: str, seed: int) -> list[float]:
        b = stores.open(seed=seed, slot=slot)
        submit(b, "a", retries=3, backoff=10.0)
        out, now = [], T0
        for _ in range(3):
            due = fail_next(b, "a", now)
            out.append(due - now)
            b.promote_due(due)
            now = due
        return out

    first = delays("one", 42)
    assert delays("two", 42) == first
    assert first != [10.0, 20.0, 40.0]  # jittered, not the bare ladder
    assert delays("three", 43) != first


def test_completions_of_a_rescheduled_attempt_are_duplicate_or_stale(store: Backend) -> None:
    submit(store, "a", retries=3, backoff=1.0)
    (l1,) = lease(store, "n", 1)
    store.complete("n", [raised("a", 1)], T0)
    assert store.complete("n", [raised("a", 1)], T0) == [Verdict.DUPLICATE]  # its twin
    assert info(store, "a").failures == 1
    store.promote_due(T0 + 10)
    (l2,) = lease(store, "n", 1, T0 + 10)
    store.complete("n", [raised("a", 2)], T0 + 10)
    assert store.complete("n", [ok(l1)], T0 + 10) == [Verdict.STALE]  # superseded
    assert info(store, "a").failures == 2


# -- cancel and revoke -------------------------------------------------------------------------


def test_cancel_in_every_state(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "dead", "leased", "succeeded", "failed", "pending")
    submit(b, "scheduled", not_before=T0 + 10)
    kill(b, "dead")
    (ll, ls, lf) = lease(b, "n", 3)
    b.complete("n", [ok(ls), raised("failed", lf.token)], T0)
    ids = ["scheduled", "pending", "leased", "succeeded", "failed", "dead", "unknown"]
    assert b.cancel(ids, T0) == [True, True, False, False, False, False, False]
    assert b.cancel(["pending"], T0) == [False]  # cancelled already
    assert [state(b, i) for i in ids] == [
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.LEASED,  # left to its node: revoked or terminated
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.DEAD,
        None,
    ]
    cancelled = outcome(b, "pending")
    assert (cancelled.state, cancelled.value) == (TaskState.CANCELLED, None)  # type: ignore[union-attr]
    assert b.next_due() is None and b.promote_due(T0 + 20) == 0
    assert lease(b, "m", 10, T0 + 20) == []
    assert b.drain_finished()[-2:] == ["scheduled", "pending"]
    assert count(b, TaskState.CANCELLED) == 2


def test_a_revoked_lease_ends_cancelled_and_frees_the_slot(store: Backend) -> None:
    submit(store, "a", "b")
    (le,) = lease(store, "n", 1)
    assert not store.revoked("n", "a", le.token + 1, T0)  # a wrong token is refused
    assert not store.revoked("other", "a", le.token, T0)  # so is another node
    assert not store.revoked("n", "b", 1, T0)  # and a task not leased
    assert not store.revoked("n", "zz", 1, T0)
    assert (state(store, "a"), state(store, "b")) == (TaskState.LEASED, TaskState.PENDING)
    assert store.revoked("n", "a", le.token, T0)
    assert state(store, "a") is TaskState.CANCELLED
    assert held(store, "n") == 0
    assert not store.revoked("n", "a", le.token, T0)  # once
    assert store.complete("n", [ok(le)], T0) == [Verdict.DUPLICATE]
    assert store.drain_finished() == ["a"]


# -- info, outcomes, drain --------------------------------------------------------------------


def test_info_and_outcomes_of_known_and_unknown_ids(store: Backend) -> None:
    submit(store, "a", "b")
    (la,) = lease(store, "n", 1)
    got = store.info(["zz", "a", "b"])
    assert got[0] is None
    assert (got[1].state, got[1].node, got[1].token) == (TaskState.LEASED, "n", 1)  # type: ignore[union-attr]
    assert (got[2].state, got[2].node) == (TaskState.PENDING, None)  # type: ignore[union-attr]
    assert store.outcomes(["a", "zz", "b"]) == [
        Outcome("a", TaskState.LEASED, None, None),
        None,
        Outcome("b", TaskState.PENDING, None, None),
    ]
    assert store.info([]) == [] and store.outcomes([]) == []


def test_an_outcome_carries_a_value_only_when_succeeded_or_failed(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "s", "f", "c", "d")
    (ls, lf, lc) = lease(b, "n", 3)
    b.complete(
        "n",
        [
            ok(ls, b"value"),
            raised("f", lf.token, b"exception", "tb"),
            Completion("c", lc.token, False, b"exc", "TaskCancelled", cancelled=True),
        ],
        T0,
    )
    kill(b, "d")
    s, f, c, d = b.outcomes(["s", "f", "c", "d"])
    assert s == Outcome("s", TaskState.SUCCEEDED, b"value", None)
    assert f == Outcome("f", TaskState.FAILED, b"exception", "tb")
    assert (c.state, c.value) == (TaskState.CANCELLED, None)  # type: ignore[union-attr]
    assert (d.state, d.value) == (TaskState.DEAD, None)  # type: ignore[union-attr]


def test_reading_an_outcome_does_not_change_it(stores: Stores) -> None:
    b = stores.open()
    submit(b, "s", "f")
    (ls, lf) = lease(b, "n", 2)
    b.complete("n", [ok(ls, b"v" * 1000), raised("f", lf.token, b"e", "tb")], T0)
    first = b.outcomes(["s", "f"])
    assert b.outcomes(["s", "f"]) == first
    b.commit()
    for _ in range(3):  # a durable store may drop its cached copy: still the same
        assert b.outcomes(["s", "f"]) == first
    b.drain_finished()
    b.commit()
    assert b.outcomes(["s", "f"]) == first
    assert first[0] == Outcome("s", TaskState.SUCCEEDED, b"v" * 1000, None)


def test_info_reports_when_a_finished_record_expires(stores: Stores) -> None:
    b = stores.open(Policy(result_ttl=10.0, dead_ttl=100.0, max_lost=1))
    b.submit([SubmitSpec("own", b"p", result_ttl=3.0)], T0)
    submit(b, "a", "d")
    (lo, la) = lease(b, "n", 2)
    assert info(b, "a").expires == 0
    b.complete("n", [ok(lo), ok(la)], T0 + 1)
    kill(b, "d", now=T0 + 2)
    assert info(b, "own").expires == T0 + 4
    assert info(b, "a").expires == T0 + 11
    assert info(b, "d").expires == T0 + 102


def test_drain_finished_lists_ended_tasks_in_the_order_they_ended(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "a", "b", "c", "d", "e")
    assert b.drain_finished() == []
    (la, lb) = lease(b, "n", 2)
    b.complete("n", [ok(lb)], T0)
    b.cancel(["c"], T0)
    b.complete("n", [raised("a", la.token)], T0)
    assert b.drain_finished() == ["b", "c", "a"]
    assert b.drain_finished() == []
    kill(b, "d")
    (le,) = lease(b, "n", 1)
    b.revoked("n", "e", le.token, T0)
    assert b.drain_finished() == ["d", "e"]


# -- retention ---------------------------------------------------------------------------------


SHORT = Policy(result_ttl=10.0, dead_ttl=100.0, max_dead=2, max_lost=1)


def test_a_result_is_never_purged_before_it_was_drained(stores: Stores) -> None:
    b = stores.open(SHORT)
    submit(b, "a")
    (le,) = lease(b, "n", 1)
    b.complete("n", [ok(le)], T0)
    assert b.expire(T0 + 1000, 100) == 0  # ended, TTL over, but not drained
    assert b.purge(T0 + 1000, finished_before=T0 + 1000, dead=True, limit=100) == 0
    assert b.drain_finished() == ["a"]
    assert outcome(b, "a").value == b"r"  # type: ignore[union-attr]
    assert b.expire(T0 + 1000, 100) == 1


def test_finished_tasks_are_purged_after_their_ttl_and_their_ids_start_anew(
    stores: Stores,
) -> None:
    b = stores.open(SHORT)
    submit(b, "a", "b")
    b.submit([SubmitSpec("keep", b"p", result_ttl=50.0)], T0)
    submit(b, "f", "c")
    (la, lb, lk, lf) = lease(b, "n", 4)
    b.complete("n", [ok(la), ok(lb), ok(lk), raised("f", lf.token)], T0)
    b.cancel(["c"], T0)
    b.drain_finished()
    b.commit()
    assert b.expire(T0 + 9.999, 100) == 0  # within the TTL: kept, result readable
    assert outcome(b, "a").value == b"r"  # type: ignore[union-attr]
    assert b.expire(T0 + 10, 100) == 4  # a, b, f, c: succeeded, failed and cancelled alike
    b.commit()
    assert b.info(["a", "b", "f", "c"]) == [None] * 4
    assert b.outcomes(["a"]) == [None]
    assert state(b, "keep") is TaskState.SUCCEEDED
    stats = b.stats()
    assert stats.tasks[TaskState.SUCCEEDED] == 1 and stats.purged == 4
    assert (stats.tasks[TaskState.FAILED], stats.tasks[TaskState.CANCELLED]) == (0, 0)
    assert b.complete("n", [ok(la)], T0 + 10) == [Verdict.UNKNOWN]  # a late twin
    assert b.expire(T0 + 49.999, 100) == 0
    assert b.expire(T0 + 50, 100) == 1  # the per-task TTL is honoured
    assert state(b, "keep") is None and b.stats().purged == 5


def test_a_purged_id_is_a_new_task_with_fresh_counters(stores: Stores) -> None:
    b = stores.open(SHORT)
    submit(b, "a", retries=1, backoff=0.0)
    (le,) = lease(b, "n", 1)
    b.complete("n", [raised("a", le.token)], T0)
    b.promote_due(T0)
    (le,) = lease(b, "n", 1)
    b.complete("n", [ok(le)], T0)
    assert (info(b, "a").attempts, info(b, "a").failures) == (2, 1)
    b.drain_finished()
    assert b.expire(T0 + 10, 100) == 1
    assert b.submit([SubmitSpec("a", b"again")], T0 + 10) == [TaskState.PENDING]
    a = info(b, "a")
    assert (a.attempts, a.failures, a.lost, a.error, a.expires) == (0, 0, 0, None, 0)
    (le,) = lease(b, "n", 1, T0 + 10)
    assert (le.token, le.payload) == (1, b"again")


def test_the_ttl_counts_from_the_end_not_from_the_drain(stores: Stores) -> None:
    b = stores.open(SHORT)
    submit(b, "a")
    b.submit([SubmitSpec("zero", b"z", result_ttl=0.0)], T0)
    for le in lease(b, "n", 2):
        b.complete("n", [ok(le)], T0)
    assert b.expire(T0 + 5, 100) == 0
    b.drain_finished()  # later than the end
    assert b.expire(T0 + 5, 100) == 1  # a TTL of 0 is a TTL, not "the policy's"
    assert state(b, "zero") is None
    assert b.expire(T0 + 9.999, 100) == 0
    assert b.expire(T0 + 10, 100) == 1


def test_expire_works_in_bounded_batches(stores: Stores) -> None:
    b = stores.open(SHORT)
    submit(b, *[f"t{i}" for i in range(25)])
    finish_all(b)
    assert [b.expire(T0 + 11, 10) for _ in range(4)] == [10, 10, 5, 0]
    assert b.stats().purged == 25
    assert sum(b.stats().tasks.values()) == 0


def test_dead_tasks_expire_after_dead_ttl(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1, dead_ttl=100.0, result_ttl=1.0))
    submit(b, "d", "e")
    kill(b, "d", now=T0)
    kill(b, "e", now=T0 + 50)
    b.drain_finished()
    assert b.expire(T0 + 99.999, 100) == 0  # the result TTL does not apply to the dead
    assert b.expire(T0 + 100, 100) == 1
    assert (state(b, "d"), state(b, "e")) == (None, TaskState.DEAD)
    assert [x.id for x in b.dead()] == ["e"]
    assert b.requeue_dead(["d"], T0 + 100) == [False]  # purged: nothing to requeue
    assert b.expire(T0 + 150, 100) == 1
    assert b.dead() == [] and count(b, TaskState.DEAD) == 0


def test_dead_tasks_beyond_max_dead_go_oldest_first(stores: Stores) -> None:
    b = stores.open(SHORT)
    for i, tid in enumerate(("d1", "d2", "d3")):
        submit(b, tid)
        kill(b, tid, now=T0 + i)  # max_lost=1: dead at once
    b.drain_finished()
    assert count(b, TaskState.DEAD) == 3
    assert b.expire(T0 + 3, 100) == 1  # over max_dead=2: the oldest goes
    assert state(b, "d1") is None and state(b, "d2") is TaskState.DEAD
    assert b.expire(T0 + 3, 100) == 0  # at the cap now
    assert b.requeue_dead(["d2"], T0 + 3) == [True]  # requeued: no longer dead, not purged
    assert b.expire(T0 + 102, 100) == 1  # d3 expired; d2 is pending again
    assert state(b, "d2") is TaskState.PENDING and state(b, "d3") is None
    assert b.dead() == [] and count(b, TaskState.DEAD) == 0
    assert b.stats().purged == 2


def test_the_max_dead_purge_is_bounded_by_limit(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1, max_dead=1))
    ids = [f"d{i}" for i in range(5)]
    submit(b, *ids)
    for i, tid in enumerate(ids):
        kill(b, tid, now=T0 + i)
    b.drain_finished()
    assert [b.expire(T0 + 5, 3) for _ in range(3)] == [3, 1, 0]
    assert [x.id for x in b.dead()] == ["d4"]


def test_an_undrained_dead_task_is_not_purged_for_max_dead(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1, max_dead=0))
    submit(b, "d")
    kill(b, "d")
    assert b.expire(T0, 100) == 0
    assert b.drain_finished() == ["d"]
    assert outcome(b, "d").state is TaskState.DEAD  # type: ignore[union-attr]
    assert b.expire(T0, 100) == 1


def test_operator_purge_of_finished_tasks_ended_before_a_time(stores: Stores) -> None:
    b = stores.open(Policy(result_ttl=1e6))
    submit(b, "early", "edge", "late", "failed", "cancelled", "pending")
    submit(b, "sched", not_before=T0 + 100)
    (l1, l2, l3, l4) = lease(b, "n", 4)
    b.complete("n", [ok(l1)], T0)
    b.complete("n", [ok(l2)], T0 + 5)
    b.complete("n", [ok(l3)], T0 + 10)
    b.complete("n", [raised("failed", l4.token)], T0 + 1)
    b.cancel(["cancelled"], T0 + 2)
    lease(b, "n", 1)  # pending is leased now
    b.drain_finished()
    assert b.purge(T0 + 20, finished_before=None, dead=False, limit=100) == 0
    assert b.purge(T0 + 20, finished_before=T0 + 5, dead=True, limit=2) == 2  # the limit
    assert b.purge(T0 + 20, finished_before=T0 + 5, dead=True, limit=100) == 1
    assert b.info(["early", "failed", "cancelled"]) == [None] * 3  # ended strictly before
    assert [state(b, i) for i in ("edge", "late", "pending", "sched")] == [
        TaskState.SUCCEEDED,
        TaskState.SUCCEEDED,
        TaskState.LEASED,
        TaskState.SCHEDULED,
    ]
    assert b.purge(T0 + 20, finished_before=T0 + 1e9, dead=True, limit=100) == 2
    assert [state(b, i) for i in ("pending", "sched")] == [TaskState.LEASED, TaskState.SCHEDULED]
    assert b.stats().purged == 5
    assert submit(b, "early") == [TaskState.PENDING]  # a new task


def test_operator_purge_of_every_dead_task(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "d1", "d2", "s", "p")
    kill(b, "d1")
    kill(b, "d2")
    finish_all(b)  # s and p succeed
    assert b.purge(T0, finished_before=None, dead=True, limit=100) == 2  # within dead_ttl
    assert b.dead() == [] and count(b, TaskState.DEAD) == 0
    assert count(b, TaskState.SUCCEEDED) == 2
    assert b.requeue_dead(["d1"], T0) == [False]


# -- restart (durable stores) -------------------------------------------------------------------


def test_restart_keeps_the_queue_order_and_requeues_leases_without_a_loss(
    durable: Stores,
) -> None:
    b = durable.open()
    submit(b, "a", "b", "c", "d")
    issued = [le.token for le in lease(b, "n", 2)]  # a, b leased at close
    b.commit()
    b = durable.reopen(b, now=T0 + 1)
    for tid in ("a", "b"):
        t = info(b, tid)
        assert (t.state, t.lost, t.node) == (TaskState.PENDING, 0, None)
    assert b.stats().tasks[TaskState.LEASED] == 0 and b.stats().tasks[TaskState.PENDING] == 4
    got = lease(b, "m", 10, T0 + 1)
    assert [le.id for le in got] == ["a", "b", "c", "d"]  # old positions
    assert [le.payload for le in got] == [payload(i) for i in "abcd"]
    assert min(le.token for le in got[:2]) > max(issued)  # a token never repeats
    assert submit(b, "a", now=T0 + 1) == [TaskState.LEASED]  # idempotent across restarts


def test_restart_keeps_tokens_growing_after_several_leases(durable: Stores) -> None:
    b = durable.open()
    submit(b, "a")
    tokens = []
    for node in ("n1", "n2", "n3"):
        (le,) = lease(b, node, 1)
        tokens.append(le.token)
        b.commit()
        b.release(node, [Release("a", le.token)], T0)
    (le,) = lease(b, "n4", 1)
    tokens.append(le.token)
    b = durable.reopen(b, now=T0)
    (le,) = lease(b, "m", 1)
    assert le.token > max(tokens)
    assert b.complete("n4", [done("a", tokens[-1])], T0) == [Verdict.STALE]
    assert b.complete("m", [ok(le)], T0) == [Verdict.ACCEPTED]


def test_restart_keeps_counters_scheduled_and_dead_tasks(durable: Stores) -> None:
    b = durable.open(Policy(max_lost=2))
    submit(b, "dead", "sus", "ok")
    submit(b, "later", not_before=T0 + 60)
    submit(b, "retry", retries=2, backoff=100.0)
    kill(b, "dead")
    lease(b, "n", 1)
    b.node_lost("n", T0)  # sus: lost 1
    got = {x.id: x for x in lease(b, "n", 10)}
    assert sorted(got) == ["ok", "retry", "sus"]
    assert b.release("n", [Release(x, got[x].token) for x in ("sus", "ok")], T0) == [True] * 2
    b.complete("n", [raised("retry", got["retry"].token)], T0)
    due = b.next_due()
    b = durable.reopen(b, now=T0 + 1)
    assert (info(b, "sus").lost, info(b, "dead").lost) == (1, 2)
    assert (state(b, "later"), state(b, "retry")) == (TaskState.SCHEDULED, TaskState.SCHEDULED)
    assert info(b, "retry").failures == 1
    assert b.next_due() == min(T0 + 60, due)  # type: ignore[type-var]
    assert [x.id for x in b.dead()] == ["dead"]
    assert b.requeue_dead(["dead"], T0 + 1) == [True]
    assert b.promote_due(T0 + 1000) == 2
    again = lease(b, "m", 10, T0 + 1000)
    assert [x.id for x in again] == ["dead", "sus", "ok", "later", "retry"]
    assert [x.payload for x in again] == [payload(x.id) for x in again]


def test_restart_keeps_finished_outcomes_readable(durable: Stores) -> None:
    b = durable.open()
    submit(b, "s", "f", "c")
    (ls, lf, lc) = lease(b, "n", 3)
    b.complete(
        "n",
        [
            ok(ls, b"value"),
            raised("f", lf.token, b"exc", "tb"),
            Completion("c", lc.token, False, None, "x", cancelled=True),
        ],
        T0,
    )
    before = b.outcomes(["s", "f", "c"])
    b.drain_finished()
    b = durable.reopen(b, now=T0 + 1)
    assert b.outcomes(["s", "f", "c"]) == before
    assert before[0] == Outcome("s", TaskState.SUCCEEDED, b"value", None)
    assert before[1] == Outcome("f", TaskState.FAILED, b"exc", "tb")
    assert b.outcomes(["s"]) == before[:1]  # read twice after the restart
    assert submit(b, "s", now=T0 + 1) == [TaskState.SUCCEEDED]
    assert b.stats().tasks[TaskState.SUCCEEDED] == 1
    assert b.stats().completions == dict.fromkeys(Verdict, 0)  # since the store opened
    assert b.complete("n", [ok(ls)], T0 + 1) == [Verdict.DUPLICATE]


def test_restart_purges_what_expired_while_stopped_and_keeps_the_rest(durable: Stores) -> None:
    policy = Policy(result_ttl=10.0, dead_ttl=100.0, max_lost=1)
    b = durable.open(policy)
    submit(b, "old", "d", "fresh", "todo")
    (lo,) = lease(b, "n", 1)
    b.complete("n", [ok(lo)], T0)
    kill(b, "d", now=T0)
    (lf,) = lease(b, "n", 1)
    b.complete("n", [ok(lf)], T0 + 5)
    b.drain_finished()
    b = durable.reopen(b, now=T0 + 9.999)  # nothing expired yet
    assert [state(b, i) for i in ("old", "fresh", "d")] == [
        TaskState.SUCCEEDED,
        TaskState.SUCCEEDED,
        TaskState.DEAD,
    ]
    b = durable.reopen(b, now=T0 + 10)
    assert state(b, "old") is None
    assert state(b, "fresh") is TaskState.SUCCEEDED
    assert state(b, "todo") is TaskState.PENDING
    assert b.stats().tasks[TaskState.SUCCEEDED] == 1
    assert b.expire(T0 + 15, 100) == 1  # retention goes on after the restart
    b = durable.reopen(b, now=T0 + 100)
    assert state(b, "d") is None and b.dead() == []
    assert sum(b.stats().tasks.values()) == 1  # todo


def test_restarts_alone_never_reach_the_hard_cap(durable: Stores) -> None:
    policy = Policy(max_attempts=3)
    b = durable.open(policy)
    submit(b, "t")
    for i in range(6):
        b = durable.reopen(b, now=T0 + i)
        assert submit(b, "t", now=T0 + i) == [TaskState.PENDING]
    assert leased_ids(b, "n", 1, T0 + 6) == ["t"]  # 6 restarts, not dead-lettered


def test_restart_keeps_the_dead_in_the_order_they_died(durable: Stores) -> None:
    b = durable.open(Policy(max_lost=1, max_dead=1))
    submit(b, "a", "b")
    lease(b, "n", 2)
    b.release("n", [Release("b", 1, started=True)], T0 + 1)
    b.release("n", [Release("a", 1, started=True)], T0 + 2)
    b.drain_finished()
    assert [x.id for x in b.dead()] == ["b", "a"]
    b = durable.reopen(b, now=T0 + 3)
    assert [x.id for x in b.dead()] == ["b", "a"]
    assert b.expire(T0 + 3, 100) == 1
    assert (state(b, "b"), state(b, "a")) == (None, TaskState.DEAD)


# -- queues, priorities, weights, rate limits, pause ------------------------------------


def lease_from(
    b: Backend, node: str, capacity: int, queues: dict[str, int], *, strict: bool = False,
    now: float = T0,
) -> list[str]:  # fmt: skip
    grant = b.lease({node: Demand(capacity, queues, strict)}, now).get(node)
    return [] if grant is None else [le.id for le in grant.leases]


def test_higher_priority_first_then_submit_order(store: Backend) -> None:
    submit(store, "low1", "low2")
    submit(store, "high1", priority=5)
    submit(store, "mid", priority=1)
    submit(store, "high2", priority=5)
    assert leased_ids(store, "n", 10) == ["high1", "high2", "mid", "low1", "low2"]


def test_a_requeued_task_keeps_its_priority_and_place(store: Backend) -> None:
    submit(store, "a", "b")
    submit(store, "h", priority=3)
    assert leased_ids(store, "n1", 1) == ["h"]
    store.node_lost("n1", T0)
    submit(store, "h2", priority=3)
    assert leased_ids(store, "n2", 10) == ["h", "h2", "a", "b"]


def test_a_node_gets_only_the_queues_it_serves(store: Backend) -> None:
    submit(store, "d1")
    submit(store, "l1", "l2", queue="low")
    submit(store, "h1", queue="high")
    assert lease_from(store, "hi", 10, {"high": 1}) == ["h1"]
    assert lease_from(store, "nobody", 10, {"other": 1}) == []
    assert leased_ids(store, "plain", 10) == ["d1"]  # Demand's default: the default queue
    assert sorted(lease_from(store, "lo", 10, {"low": 1, "high": 1})) == ["l1", "l2"]
    (q,) = [q for q in store.queues() if q.name == "low"]
    assert q.counts[TaskState.LEASED] == 2 and q.counts[TaskState.PENDING] == 0


def test_nodes_after_a_queue_ran_dry_in_one_lease_still_get_the_other_queues(
    store: Backend,
) -> None:
    # the Redis store skips nodes whose queues all ran dry earlier in the call
    submit(store, "a1", "a2", queue="a")
    submit(store, "b1", "b2", queue="b")
    submit(store, "c1", queue="c")
    store.configure_queue("c", rate_limit=None, paused=True, now=T0)
    demands = {f"only-a{i}": Demand(1, {"a": 1}) for i in range(4)}
    demands |= {"only-c": Demand(5, {"c": 1}), "a-and-b": Demand(5, {"a": 1, "b": 1})}
    grants = store.lease(demands, T0)
    got = {node: [le.id for le in g.leases] for node, g in grants.items() if g.leases}
    assert got == {"only-a0": ["a1"], "only-a1": ["a2"], "a-and-b": ["b1", "b2"]}
    assert grants["a-and-b"].held == 2


def test_strict_drains_the_heavier_queue_first(store: Backend) -> None:
    submit(store, "l1", "l2", queue="low")
    submit(store, "h1", "h2", queue="high")
    got = lease_from(store, "n", 3, {"low": 1, "high": 6}, strict=True)
    assert got == ["h1", "h2", "l1"]


def test_weighted_random_follows_the_weights(stores: Stores) -> None:
    b = stores.open(seed=7)
    for name in ("high", "default", "low"):
        b.submit([SubmitSpec(f"{name}{i}", b"p", queue=name) for i in range(2000)], T0)
    got = lease_from(b, "n", 2000, {"high": 6, "default": 3, "low": 1})
    shares = {
        name: sum(t.startswith(name) for t in got) / len(got) for name in ("high", "default", "low")
    }  # noqa: E501
    assert abs(shares["high"] - 0.6) < 0.05
    assert abs(shares["default"] - 0.3) < 0.05
    assert abs(shares["low"] - 0.1) < 0.05


def test_an_empty_or_paused_queue_gives_its_turn_away(store: Backend) -> None:
    submit(store, "a1", "a2", queue="a")
    submit(store, "b1", queue="b")
    store.configure_queue("a", rate_limit=None, paused=True, now=T0)
    assert lease_from(store, "n", 5, {"a": 9, "b": 1}) == ["b1"]  # a paused, b empty now
    assert lease_from(store, "n", 5, {"a": 9, "b": 1}) == []
    info_a = store.configure_queue("a", rate_limit=None, paused=False, now=T0)
    assert not info_a.paused and info_a.counts[TaskState.PENDING] == 2
    assert lease_from(store, "n", 5, {"a": 9, "b": 1}) == ["a1", "a2"]


def test_a_rate_limit_holds_across_nodes_and_refills_with_the_clock(store: Backend) -> None:
    store.submit([SubmitSpec(f"t{i}", b"p", queue="r") for i in range(100)], T0)
    store.configure_queue("r", rate_limit=20.0, paused=False, now=T0)
    first = lease_from(store, "n1", 50, {"r": 1}) + lease_from(store, "n2", 50, {"r": 1})
    assert len(first) == 1  # a twentieth of a second's burst: 1 token at 20/s
    at = store.next_ready(T0)
    assert at is not None and T0 < at <= T0 + 0.05 + 1e-9
    assert lease_from(store, "n2", 50, {"r": 1}, now=at) == ["t1"]
    # over any second, no more than rate + burst
    granted = 0
    for step in range(1, 101):
        granted += len(lease_from(store, f"n{step % 3}", 50, {"r": 1}, now=T0 + 1 + step / 100))
    assert 18 <= granted <= 22


def test_a_rate_limit_can_be_lifted_and_bad_rates_are_refused(store: Backend) -> None:
    submit(store, "a", "b", "c", queue="r")
    store.configure_queue("r", rate_limit=1.0, paused=False, now=T0)
    assert len(lease_from(store, "n", 5, {"r": 1})) == 1
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            store.configure_queue("r", rate_limit=bad, paused=False, now=T0)
    (q,) = [q for q in store.queues() if q.name == "r"]
    assert q.rate_limit == 1.0  # a refused change changes nothing
    store.configure_queue("r", rate_limit=None, paused=False, now=T0)
    assert len(lease_from(store, "n", 5, {"r": 1})) == 2


def test_next_ready_names_the_next_due_task(store: Backend) -> None:
    assert store.next_ready(T0) is None
    submit(store, "later", not_before=T0 + 5)
    submit(store, "sooner", not_before=T0 + 2)
    assert store.next_ready(T0) == T0 + 2
    assert store.promote_due(T0 + 2) == 1
    assert store.next_ready(T0 + 2) == T0 + 5


def test_queue_info_reports_the_oldest_waiting_task(store: Backend) -> None:
    submit(store, "a", now=T0, queue="q")
    submit(store, "b", now=T0 + 3, queue="q", priority=9)
    (q,) = [q for q in store.queues() if q.name == "q"]
    assert q.oldest_ready == T0
    assert lease_from(store, "n", 1, {"q": 1}) == ["b"]  # priority first...
    (q,) = [q for q in store.queues() if q.name == "q"]
    assert q.oldest_ready == T0  # ...but a is still the oldest waiting
    assert lease_from(store, "n", 2, {"q": 1}) == ["a"]
    (q,) = [q for q in store.queues() if q.name == "q"]
    assert q.oldest_ready is None


def test_a_task_keeps_its_queue_and_priority(store: Backend) -> None:
    submit(store, "t", queue="q", priority=4)
    got = info(store, "t")
    assert (got.queue, got.priority) == ("q", 4)


def test_queues_and_their_settings_survive_a_restart(durable: Stores) -> None:
    b = durable.open()
    submit(b, "l1", queue="low")
    submit(b, "h1", "h2", queue="high", priority=2)
    submit(b, "h0", queue="high")
    b.configure_queue("high", rate_limit=5.0, paused=True, now=T0)
    b.commit()
    b = durable.reopen(b, now=T0 + 10)
    (hq,) = [q for q in b.queues() if q.name == "high"]
    assert (hq.rate_limit, hq.paused, hq.counts[TaskState.PENDING]) == (5.0, True, 3)
    assert lease_from(b, "n", 5, {"high": 1, "low": 1}, now=T0 + 10) == ["l1"]
    b.configure_queue("high", rate_limit=None, paused=False, now=T0 + 10)
    assert lease_from(b, "n", 5, {"high": 1}, now=T0 + 10) == ["h1", "h2", "h0"]
    assert info(b, "h1").priority == 2


# -- recurring schedules ----------------------------------------------------------------


def every(sid: str, seconds: float, **kw: Any) -> ScheduleSpec:
    return ScheduleSpec(sid, b"call-" + sid.encode(), every=seconds, **kw)


def test_a_schedule_fires_once_per_period_as_an_idempotent_task(store: Backend) -> None:
    sch = store.put_schedule(every("tick", 10, queue="cron", priority=2), T0)
    assert (sch.next_fire, sch.last_fire, sch.paused) == (T0 + 10, None, False)
    assert store.fire_schedules(T0 + 9.9) == []
    (fired,) = store.fire_schedules(T0 + 10)
    assert fired == fire_id("tick", T0 + 10)
    assert store.fire_schedules(T0 + 10) == []  # never twice
    got = info(store, fired)
    assert (got.state, got.queue, got.priority) == (TaskState.PENDING, "cron", 2)
    assert lease_from(store, "n", 5, {"cron": 1}, now=T0 + 10) == [fired]
    (sch,) = store.schedules()
    assert (sch.next_fire, sch.last_fire) == (T0 + 20, T0 + 10)
    assert store.next_ready(T0 + 10) == T0 + 20


@pytest.mark.parametrize(
    ("misfire", "fires"),
    [("all", [20, 30, 40, 50]), ("coalesce", [50]), ("skip", [])],
)
def test_missed_fires_follow_the_misfire_policy(
    store: Backend, misfire: str, fires: list[int]
) -> None:
    store.put_schedule(every("m", 10, misfire=misfire), T0)
    assert store.fire_schedules(T0 + 10) == [fire_id("m", T0 + 10)]
    # nothing ran between T0+10 and T0+55 (the coordinator was down)
    assert store.fire_schedules(T0 + 55) == [fire_id("m", T0 + f) for f in fires]
    (sch,) = store.schedules()
    assert sch.next_fire == T0 + 60


def test_a_fire_just_late_is_no_misfire(store: Backend) -> None:
    store.put_schedule(every("s", 10, misfire="skip"), T0)
    assert store.fire_schedules(T0 + 10.5) == [fire_id("s", T0 + 10)]


def test_redeclaring_updates_the_schedule_without_a_second_one(store: Backend) -> None:
    store.put_schedule(every("s", 10), T0)
    store.fire_schedules(T0 + 10)
    sch = store.put_schedule(every("s", 10, queue="other"), T0 + 12)
    assert (sch.queue, sch.next_fire, sch.last_fire) == ("other", T0 + 20, T0 + 10)
    sch = store.put_schedule(every("s", 3), T0 + 12)  # a new timing counts from now
    assert sch.next_fire == T0 + 15
    assert [s.id for s in store.schedules()] == ["s"]


def test_pause_resume_and_delete_a_schedule(store: Backend) -> None:
    store.put_schedule(every("s", 10), T0)
    paused = store.pause_schedule("s", True, T0 + 1)
    assert paused is not None and paused.paused and paused.next_fire is None
    assert store.fire_schedules(T0 + 100) == []
    resumed = store.pause_schedule("s", False, T0 + 100)
    assert resumed is not None and resumed.next_fire == T0 + 110  # the paused fires are gone
    assert store.pause_schedule("nope", True, T0) is None
    assert store.delete_schedule("s") and not store.delete_schedule("s")
    assert store.schedules() == [] and store.fire_schedules(T0 + 500) == []


def test_bad_schedules_are_refused(store: Backend) -> None:
    for bad in (
        ScheduleSpec("x", b"p"),  # neither cron nor every
        ScheduleSpec("x", b"p", cron="* * * * *", every=5),
        ScheduleSpec("x", b"p", every=0),
        ScheduleSpec("x", b"p", cron="61 * * * *"),
        ScheduleSpec("x", b"p", cron="* * * * *", timezone="Mars/Olympus"),
        ScheduleSpec("x", b"p", every=1, misfire="sometimes"),
        ScheduleSpec("", b"p", every=1),
        ScheduleSpec("a@b", b"p", every=1),
    ):
        with pytest.raises(ValueError):
            store.put_schedule(bad, T0)
    assert store.schedules() == []


def test_schedules_and_their_fires_survive_a_restart(durable: Stores) -> None:
    b = durable.open()
    b.put_schedule(every("s", 10, misfire="all"), T0)
    b.put_schedule(every("p", 10), T0)
    b.pause_schedule("p", True, T0)
    b.fire_schedules(T0 + 10)
    b.commit()
    b = durable.reopen(b, now=T0 + 31)
    assert b.fire_schedules(T0 + 31) == [fire_id("s", T0 + 20), fire_id("s", T0 + 30)]
    assert state(b, fire_id("s", T0 + 10)) is TaskState.PENDING  # the fire before is kept
    assert {s.id: s.paused for s in b.schedules()} == {"p": True, "s": False}


# -- timestamps, delete_dead, telemetry ------------------------------------------------


def test_task_info_carries_its_times_as_the_clock_passed_them(stores: Stores) -> None:
    b = stores.open()
    submit(b, "a", now=T0)
    submit(b, "later", now=T0, not_before=T0 + 50)
    fresh = info(b, "a")
    assert (fresh.created, fresh.ready, fresh.started, fresh.ended) == (T0, T0, 0.0, 0.0)
    assert info(b, "later").ready == T0 + 50  # ready when it falls due, not when submitted
    (le,) = lease(b, "n", 1, now=T0 + 2)
    assert info(b, "a").started == T0 + 2
    b.complete("n", [ok(le)], T0 + 5)
    b.drain_finished()
    b.commit()
    got = info(b, "a")
    assert (got.created, got.started, got.ended) == (T0, T0 + 2, T0 + 5)
    if stores.durable:  # the times of an ended task survive a restart
        b = stores.reopen(b, now=T0 + 6)
        got = info(b, "a")
        assert (got.created, got.started, got.ended) == (T0, T0 + 2, T0 + 5)


def test_delete_dead_purges_only_drained_dead_tasks_by_id(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "d1", "d2", "alive")
    kill(b, "d1")
    kill(b, "d2")
    # not drained yet: its clients have not been told it died
    assert b.delete_dead(["d1"], T0) == [False]
    b.drain_finished()
    purged = b.stats().purged
    assert b.delete_dead(["d1", "alive", "nope", "d1"], T0) == [True, False, False, False]
    assert state(b, "d1") is None and state(b, "alive") is TaskState.PENDING
    assert [t.id for t in b.dead()] == ["d2"]
    assert count(b, TaskState.DEAD) == 1
    assert b.stats().purged == purged + 1
    assert b.requeue_dead(["d1"], T0) == [False]  # gone for good
    b.commit()
    if stores.durable:
        b = stores.reopen(b, now=T0 + 1)
        assert state(b, "d1") is None and [t.id for t in b.dead()] == ["d2"]


def test_telemetry_counts_what_happened_per_queue(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    tel = b.telemetry
    submit(b, "a", "b", "c", now=T0)
    submit(b, "x", queue="other", now=T0)
    submit(b, "a", now=T0)  # idempotent: not a new task
    assert tel.submitted == {"default": 3, "other": 1}
    la, lb, lc = lease(b, "n", 3, now=T0 + 0.5)
    wait = tel.wait["default"]
    assert wait.count == 3 and wait.sum == pytest.approx(1.5)
    b.complete(
        "n",
        [
            Completion(la.id, la.token, True, b"r", None, False, 0.2),
            Completion(lb.id, lb.token, False, b"e", "boom", False, 3.0),
            Completion(lc.id, 99, True, b"r", None, False, 9.0),  # stale: not observed
        ],
        T0 + 1,
    )
    assert tel.run["default"].count == 2 and tel.run["default"].sum == pytest.approx(3.2)
    assert tel.finished == {("default", TaskState.SUCCEEDED): 1, ("default", TaskState.FAILED): 1}
    assert b.node_lost("n", T0 + 2) == ["c"]  # max_lost=1: dead at once
    assert tel.leases_expired == 1
    assert tel.dead_lettered == {"default": 1}
    assert b.cancel(["x"], T0 + 2) == [True]
    assert tel.finished[("other", TaskState.CANCELLED)] == 1
    assert tel.totals() == {"submitted": 4, "finished": 4, "failed": 1, "dead": 1}


def test_telemetry_counts_ends_whatever_the_operation(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1, max_attempts=1))
    tel = b.telemetry
    submit(b, "cap", "rel", "rev", "ok", now=T0)
    (le,) = lease(b, "n", 1, now=T0 + 1)
    assert b.release("n", [Release(le.id, le.token)], T0 + 1) == [True]  # not started: no loss
    got = lease(b, "n", 3, now=T0 + 2)  # "cap" is over the hard cap: dead, not leased
    assert [x.id for x in got] == ["rel", "rev", "ok"] and state(b, "cap") is TaskState.DEAD
    rel, rev, done = got
    assert b.release("n", [Release(rel.id, rel.token, started=True)], T0 + 3) == [True]
    assert b.revoked("n", rev.id, rev.token, T0 + 3)
    assert b.complete("n", [ok(done)], T0 + 3) == [Verdict.ACCEPTED]  # no run_s reported
    b.put_schedule(every("s", 10, queue="cron"), T0)
    assert len(b.fire_schedules(T0 + 10)) == 1
    assert tel.submitted == {"default": 4, "cron": 1}
    assert tel.finished == {
        ("default", TaskState.DEAD): 2,
        ("default", TaskState.CANCELLED): 1,
        ("default", TaskState.SUCCEEDED): 1,
    }
    assert tel.dead_lettered == {"default": 2} and tel.leases_expired == 0
    wait = tel.wait["default"]  # the dead-lettering pass over "cap" is no lease
    assert wait.count == 4 and wait.sum == pytest.approx(1 + 3 * 2)
    assert "default" not in tel.run


def test_a_second_death_is_deleted_only_once_drained(stores: Stores) -> None:
    b = stores.open(Policy(max_lost=1))
    submit(b, "d")
    kill(b, "d", now=T0 + 1)
    assert b.drain_finished() == ["d"]
    assert b.requeue_dead(["d"], T0 + 2) == [True]
    got = info(b, "d")
    assert (got.created, got.ready, got.ended) == (T0, T0 + 2, 0.0)
    kill(b, "d", now=T0 + 3)
    assert info(b, "d").ended == T0 + 3
    assert b.delete_dead(["d"], T0 + 3) == [False]  # this death is not told yet
    assert b.drain_finished() == ["d"]
    assert b.delete_dead(["d"], T0 + 3) == [True]
    assert state(b, "d") is None and b.dead() == []
