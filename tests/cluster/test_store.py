"""Backend semantics: states, counters, fencing, dead letters, durability."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from pyqueue.cluster.store import Policy, SQLiteBackend, SubmitSpec, TaskState
from pyqueue.errors import StoreLocked


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    b = SQLiteBackend(None if request.param == "memory" else str(tmp_path / "s.db"), seed=1)
    yield b
    b.close()


def sub(b, *ids, **kw):
    return b.submit([SubmitSpec(i, f"p-{i}".encode(), **kw) for i in ids])


def test_submit_is_idempotent_on_task_id(store):
    assert sub(store, "a", "b") == [TaskState.PENDING, TaskState.PENDING]
    assert sub(store, "a") == [TaskState.PENDING]
    assert store.stats()["tasks"]["pending"] == 2
    assert store.get("a").payload == b"p-a"


def test_lease_is_fifo_and_tokens_count_attempts(store):
    sub(store, "a", "b", "c")
    leases = store.lease("n1", 2)
    assert [(le.id, le.token) for le in leases] == [("a", 1), ("b", 1)]
    assert store.leased_count("n1") == 2
    assert store.complete("n1", "a", 1, True, b"r", None) == "accepted"
    assert store.get("a").state is TaskState.SUCCEEDED
    assert store.leased_count("n1") == 1


def test_second_completion_is_duplicate_and_superseded_token_is_stale(store):
    sub(store, "a")
    store.lease("n1", 1)
    store.node_lost("n1")
    (le,) = store.lease("n2", 1)
    assert le.token == 2
    assert store.complete("n1", "a", 1, True, b"old", None) == "stale"  # fenced
    assert store.complete("n2", "a", 2, True, b"new", None) == "accepted"
    assert store.complete("n1", "a", 1, True, b"old", None) == "duplicate"
    assert store.outcome("a")[1] == b"new"
    assert store.counters == {"accepted": 1, "duplicate": 1, "stale": 1, "unknown": 0}


def test_completion_after_loss_but_before_re_lease_is_accepted(store):
    sub(store, "a")
    store.lease("n1", 1)
    store.node_lost("n1")
    assert store.complete("n1", "a", 1, True, b"r", None) == "accepted"
    assert store.lease("n2", 1) == []  # not dispatched again


def test_node_lost_requeues_at_old_position_and_counts_lost(store):
    sub(store, "a", "b", "c")
    store.lease("n1", 1)  # a
    assert store.node_lost("n1") == ["a"]
    rec = store.get("a")
    assert (rec.state, rec.lost, rec.attempts) == (TaskState.PENDING, 1, 1)
    assert [le.id for le in store.lease("n2", 3)] == ["a", "b", "c"]


def test_dead_letter_after_four_losses_and_requeue(store):
    sub(store, "poison")
    for i in range(4):
        (le,) = store.lease(f"n{i}", 1)
        store.node_lost(f"n{i}")
    rec = store.get("poison")
    assert rec.state is TaskState.DEAD and rec.lost == 4
    assert store.drain_finished() == ["poison"]
    assert [d["id"] for d in store.dead()] == ["poison"]
    assert store.requeue_dead(["poison", "nope"]) == [True, False]
    (le,) = store.lease("n9", 1)
    assert le.payload == b"p-poison" and le.token == 5  # tokens never go back
    assert store.get("poison").lost == 0


def test_max_lost_is_configurable(tmp_path):
    b = SQLiteBackend(None, Policy(max_lost=2))
    sub(b, "a")
    for n in ("x", "y"):
        b.lease(n, 1)
        b.node_lost(n)
    assert b.get("a").state is TaskState.DEAD


def test_hard_cap_of_attempts(store):
    sub(store, "a")
    for _ in range(20):
        (le,) = store.lease("n", 1)
        assert store.release("n", "a", le.token)
    assert store.lease("n", 1) == []
    assert store.get("a").state is TaskState.DEAD
    assert "20 attempts" in store.get("a").error


def test_suspect_tasks_are_never_leased_together(store):
    sub(store, "p", "x", "y", "z")
    store.lease("n1", 2)  # p, x
    store.node_lost("n1")  # both suspects now
    got = [le.id for le in store.lease("n2", 4)]
    assert got == ["p", "y", "z"]  # x waits: n2 already holds a suspect
    assert [le.id for le in store.lease("n3", 4)] == ["x"]


def test_app_error_is_final_without_retries(store):
    sub(store, "a")
    store.lease("n", 1)
    assert store.complete("n", "a", 1, False, b"exc", "Traceback...") == "accepted"
    rec = store.get("a")
    assert rec.state is TaskState.FAILED and rec.failures == 1


def test_app_error_retry_uses_backoff_then_runs_again(store):
    sub(store, "a", retries=2, backoff=0.05)
    store.lease("n", 1)
    t0 = time.time()
    store.complete("n", "a", 1, False, b"exc", "boom")
    rec = store.get("a")
    assert rec.state is TaskState.SCHEDULED
    assert t0 + 0.05 * 0.5 - 0.01 <= rec.not_before <= time.time() + 0.05 * 1.5
    assert store.lease("n", 1) == []
    assert store.promote_due(rec.not_before + 0.001) == 1
    (le,) = store.lease("n", 1)
    assert le.token == 2
    store.complete("n", "a", 2, False, b"exc", "boom")
    # second retry waits about twice as long (exponential)
    assert store.get("a").not_before - time.time() > 0.05 * 0.5
    store.promote_due(time.time() + 10)
    (le,) = store.lease("n", 1)
    store.complete("n", "a", 3, False, b"exc", "boom")
    assert store.get("a").state is TaskState.FAILED and store.get("a").failures == 3


def test_cancel_ends_unleased_tasks_and_leaves_leased_ones_to_their_node(store):
    sub(store, "a", "b")
    store.lease("n", 1)  # a leased
    # a leased task is not cancelled by the store alone: its node may have started it
    assert store.cancel(["a", "b", "zz"]) == [False, True, False]
    assert store.get("a").state is TaskState.LEASED
    assert store.get("b").state is TaskState.CANCELLED
    assert store.lease("n", 5) == []


def test_revoked_lease_ends_cancelled_and_frees_the_slot(store):
    sub(store, "a")
    (le,) = store.lease("n", 1)
    assert not store.revoked("n", "a", le.token + 1)  # a stale token is refused
    assert not store.revoked("other", "a", le.token)  # so is another node
    assert store.revoked("n", "a", le.token)
    assert store.get("a").state is TaskState.CANCELLED
    assert store.leased_count("n") == 0
    assert store.complete("n", "a", le.token, True, b"r", None) == "duplicate"


def test_terminated_completion_ends_cancelled_not_failed_nor_retried(store):
    sub(store, "a", retries=3)
    (le,) = store.lease("n", 1)
    verdict = store.complete("n", "a", le.token, False, b"exc", "TaskCancelled", cancelled=True)
    assert verdict == "accepted"
    assert store.get("a").state is TaskState.CANCELLED


def test_release_of_a_started_task_counts_a_loss_and_dead_letters_at_the_limit(store):
    sub(store, "a")
    for n in range(1, 5):
        (le,) = store.lease("n", 1)
        assert store.release("n", "a", le.token, started=True)
        assert store.get("a").lost == n
    assert store.get("a").state is TaskState.DEAD
    sub(store, "b")
    (le,) = store.lease("n", 1)
    assert store.release("n", "b", le.token)  # not started: no loss
    assert store.get("b").lost == 0 and store.get("b").state is TaskState.PENDING


def test_stats_counts_follow_every_transition(store):
    sub(store, "a", "b", "c", "d")
    (la, lb) = store.lease("n", 2)
    store.complete("n", "a", la.token, True, b"r", None)
    store.cancel(["c"])
    counts = store.stats()["tasks"]
    assert counts["succeeded"] == 1 and counts["leased"] == 1
    assert counts["cancelled"] == 1 and counts["pending"] == 1
    store.node_lost("n")
    counts = store.stats()["tasks"]
    assert counts["leased"] == 0 and counts["pending"] == 2
    assert sum(counts.values()) == 4


def test_scheduled_submit_waits_for_its_time(store):
    sub(store, "later", not_before=time.time() + 60)
    assert store.get("later").state is TaskState.SCHEDULED
    assert store.lease("n", 1) == []
    assert store.promote_due(time.time() + 61) == 1
    assert [le.id for le in store.lease("n", 1)] == ["later"]


def test_restart_reloads_pending_and_leased(tmp_path):
    path = str(tmp_path / "s.db")
    b = SQLiteBackend(path)
    sub(b, "a", "b", "c", "d")
    b.commit()
    b.lease("n", 2)  # a, b leased
    b.complete("n", "a", 1, True, b"ra", None)
    b.commit()
    sub(b, "uncommitted")  # never committed: must not survive
    b._db.close()  # simulate a crash: no final commit, and the OS drops the lock
    os.close(b._lock_fd)
    b2 = SQLiteBackend(path)
    assert b2.get("uncommitted") is None
    assert b2.get("a").state is TaskState.SUCCEEDED
    assert b2.outcome("a")[1] == b"ra"
    rec = b2.get("b")
    assert (rec.state, rec.attempts, rec.lost) == (TaskState.PENDING, 1, 0)
    # leases are not written through: every waiting task counts one attempt
    # more after a restart, so a token (and a task's attempt) never repeats
    assert [(le.id, le.token) for le in b2.lease("m", 5)] == [("b", 2), ("c", 2), ("d", 2)]
    assert sub(b2, "a") == [TaskState.SUCCEEDED]  # idempotent across restarts
    b2.close()


def test_round_one_store_is_migrated_and_keeps_its_tasks(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state INTEGER NOT NULL,"
        " payload BLOB, attempts INTEGER NOT NULL, failures INTEGER NOT NULL, lost INTEGER"
        " NOT NULL, retries INTEGER NOT NULL, backoff REAL NOT NULL, not_before REAL NOT NULL,"
        " base INTEGER NOT NULL, result BLOB, error TEXT)"
    )
    db.execute("INSERT INTO tasks VALUES ('done', 0, 3, NULL, 1, 0, 0, 0, 1.0, 0, 0, x'01', NULL)")
    db.execute("INSERT INTO tasks VALUES ('todo', 1, 1, x'02', 0, 0, 0, 0, 1.0, 0, 0, NULL, NULL)")
    db.commit()
    db.close()
    b = SQLiteBackend(path)
    assert b.outcome("done") == (TaskState.SUCCEEDED, b"\x01", None)
    assert [le.id for le in b.lease("n", 5)] == ["todo"]
    b.close()


def test_second_backend_on_one_store_is_refused_naming_the_holder(tmp_path):
    path = str(tmp_path / "s.db")
    first = SQLiteBackend(path)
    first.describe_owner("127.0.0.1:7878")
    with pytest.raises(StoreLocked, match=rf"pid {os.getpid()}, listening on 127.0.0.1:7878"):
        SQLiteBackend(path)
    sub(first, "a")  # the holder is unaffected
    first.commit()
    first.close()
    again = SQLiteBackend(path)  # free once the holder closed it
    assert again.get("a").state is TaskState.PENDING
    again.close()


def test_store_uses_wal_and_one_transaction_per_commit(tmp_path):
    path = str(tmp_path / "s.db")
    b = SQLiteBackend(path)
    assert b._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    statements: list[str] = []
    b._db.set_trace_callback(statements.append)
    sub(b, *[str(i) for i in range(100)])
    b.lease("n", 50)
    b.commit()
    assert sum(1 for s in statements if s.strip().upper() == "BEGIN") == 1
    assert sum(1 for s in statements if s.strip().upper() == "COMMIT") == 1
    rows = sqlite3.connect(path).execute("SELECT count(*), sum(state = 2) FROM tasks").fetchone()
    assert rows == (100, 50)
    b.close()


def test_forgotten_results_are_read_back_from_disk(tmp_path):
    b = SQLiteBackend(str(tmp_path / "s.db"))
    sub(b, "a")
    b.lease("n", 1)
    b.complete("n", "a", 1, True, b"value", None)
    b.commit()
    b.forget_result("a")
    assert b.get("a").result is None
    assert b.outcome("a") == (TaskState.SUCCEEDED, b"value", None)
    b.close()


def test_a_stale_completion_leaves_the_lease_that_replaced_it_alone(store):
    sub(store, "x")
    (old,) = store.lease("n1", 1)
    store.node_lost("n1")  # the node reconnects under a new id and gets x again
    (new,) = store.lease("n2", 1)
    assert store.complete("n2", "x", old.token, True, b"late", None) == "stale"
    assert store.leased_count("n2") == 1  # still held by n2
    assert store.node_lost("n2") == ["x"]  # so losing n2 requeues it
    assert store.get("x").state is TaskState.PENDING


def test_restarts_alone_never_reach_the_hard_cap(tmp_path):
    path = str(tmp_path / "s.db")
    for _ in range(25):
        b = SQLiteBackend(path)
        sub(b, "t")
        b.close()
    b = SQLiteBackend(path)
    assert [le.id for le in b.lease("n", 1)] == ["t"]  # 25 restarts, not dead-lettered
    b.close()


def test_a_node_holds_at_most_one_suspect_task_at_a_time(store):
    sub(store, "s1", "s2", "ok")
    assert len(store.lease("n", 3)) == 3
    store.node_lost("n")  # all three lost once: s1, s2 and ok become suspects
    sub(store, "fresh")
    first = [le.id for le in store.lease("m", 10)]
    assert first == ["s1", "fresh"]  # one suspect, and the innocent work beside it
    (le,) = [x for x in store.lease("other", 1)]
    assert le.id == "s2"  # another node may take the next suspect
    store.complete("m", "s1", 2, True, b"r", None)
    assert [x.id for x in store.lease("m", 10)] == ["ok"]  # m's suspect slot is free again


# -- retention -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def short(request, tmp_path):
    policy = Policy(result_ttl=10.0, dead_ttl=100.0, max_dead=2, max_lost=1)
    b = SQLiteBackend(None if request.param == "memory" else str(tmp_path / "r.db"), policy, seed=1)
    yield b
    b.close()


def finish_all(b, node="n"):
    for le in b.lease(node, 100):
        b.complete(node, le.id, le.token, True, b"r-" + le.id.encode(), None)
    b.drain_finished()  # as the coordinator does when it pushes the results


def test_a_result_is_never_purged_before_it_was_pushed(short):
    sub(short, "a")
    (le,) = short.lease("n", 1)
    short.complete("n", "a", le.token, True, b"r", None)
    assert short.purge(time.time() + 11, 100) == 0  # ended, TTL over, but not drained
    assert short.drain_finished() == ["a"] and short.outcome("a")[1] == b"r"
    assert short.purge(time.time() + 11, 100) == 1


def test_finished_tasks_are_purged_after_their_ttl_and_their_ids_start_anew(short):
    sub(short, "a", "b")
    short.submit([SubmitSpec("keep", b"p", result_ttl=50.0)])
    finish_all(short)
    short.commit()
    now = time.time()
    assert short.purge(now + 5, 100) == 0  # within the TTL: kept, result readable
    assert short.outcome("a")[1] == b"r-a"
    assert short.purge(now + 11, 100) == 2
    short.commit()
    assert short.get("a") is None and short.get("keep") is not None
    assert short.stats()["tasks"]["succeeded"] == 1 and short.stats()["purged"] == 2
    assert sub(short, "a") == [TaskState.PENDING]  # a purged id is a new task
    assert short.purge(now + 51, 100) == 1  # the per-task TTL is honoured
    assert short.get("keep") is None


def test_purge_works_in_bounded_batches(short):
    sub(short, *[f"t{i}" for i in range(25)])
    finish_all(short)
    later = time.time() + 11
    assert [short.purge(later, 10) for _ in range(4)] == [10, 10, 5, 0]


def test_dead_tasks_are_capped_oldest_first_and_expire(short):
    for tid in ("d1", "d2", "d3"):
        sub(short, tid)
        short.lease("n", 1)
        short.node_lost("n")  # max_lost=1: dead at once
    short.drain_finished()
    assert short.stats()["tasks"]["dead"] == 3
    assert short.purge(time.time(), 100) == 1  # over max_dead=2: the oldest goes
    assert short.get("d1") is None and short.get("d2") is not None
    assert short.requeue_dead(["d2"]) == [True]  # requeued: no longer dead, not purged
    assert short.purge(time.time() + 101, 100) == 1  # d3 expired; d2 is pending again
    assert short.get("d2").state is TaskState.PENDING and short.get("d3") is None
    assert not short._dead_order  # no entry left behind for purged or requeued tasks


def test_a_task_that_dies_again_is_ordered_by_its_last_death(short):
    for tid in ("a", "b"):
        sub(short, tid)
        short.lease("n", 1)
        short.node_lost("n")
    assert short.requeue_dead(["a"]) == [True]
    short.lease("n", 1)
    short.node_lost("n")  # a dies again, after b
    sub(short, "c")
    short.lease("n", 1)
    short.node_lost("n")
    short.drain_finished()
    assert short.purge(time.time(), 100) == 1  # 3 dead, max_dead 2: the oldest death goes
    assert short.get("b") is None and short.get("a") is not None


def test_restart_drops_expired_tasks_and_keeps_the_rest(tmp_path):
    path = str(tmp_path / "r.db")
    b = SQLiteBackend(path, Policy(result_ttl=0.2))
    sub(b, "old", "todo")
    (le,) = b.lease("n", 1)
    b.complete("n", "old", le.token, True, b"x", None)
    b.drain_finished()
    b.close()
    time.sleep(0.3)  # let the retention run out while no coordinator is up
    b2 = SQLiteBackend(path, Policy(result_ttl=0.2))
    assert b2.get("old") is None and b2.get("todo").state is TaskState.PENDING
    assert b2._db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
    b2.close()
