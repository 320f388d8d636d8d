"""What only the SQLite store does: its file, its lock, crashes, migration, memory.

The behaviour every store shares is in ``backend_contract.py``.  Here the file
is inspected with the sqlite3 module, never through the store's internals, and
a crash is a real one: a child process that exits without closing the store.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

import pyqueue
from pyqueue.cluster.backends import SQLiteBackend
from pyqueue.cluster.dispatch import Policy
from pyqueue.cluster.states import Completion, Demand, Outcome, SubmitSpec, TaskState
from pyqueue.errors import StoreLocked

T0 = 1_000_000.0
ROOT = str(Path(pyqueue.__file__).resolve().parent.parent)


def sub(b: SQLiteBackend, *ids: str, now: float = T0) -> list[TaskState]:
    return b.submit([SubmitSpec(i, f"p-{i}".encode()) for i in ids], now)


def tokens(b: SQLiteBackend, node: str, n: int, now: float = T0) -> list[tuple[str, int]]:
    grant = b.lease({node: Demand(n)}, now).get(node)
    return [] if grant is None else [(le.id, le.token) for le in grant.leases]


def state(b: SQLiteBackend, tid: str) -> TaskState | None:
    (got,) = b.info([tid])
    return None if got is None else got.state


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def crash(path: Path, body: str) -> object:
    """Run ``body`` on a store opened at ``path`` in a child that then dies
    without closing it (no final commit; the OS drops the lock).  ``body``
    sets ``out``, returned as JSON."""
    script = (
        textwrap.dedent(
            """
        import json, os, sys
        from pyqueue.cluster.backends import SQLiteBackend
        from pyqueue.cluster.states import Completion, Demand, Release, SubmitSpec
        T0 = {t0!r}
        store = SQLiteBackend(sys.argv[1], now=T0)
        def lease(node, n):
            return [(le.id, le.token) for le in store.lease({{node: Demand(n)}}, T0)[node].leases]
        out = None
        """
        ).format(t0=T0)
        + textwrap.dedent(body)
        + "\nprint(json.dumps(out), flush=True)\nos._exit(0)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# -- opening ----------------------------------------------------------------------------------


def test_a_file_path_is_required() -> None:
    with pytest.raises(TypeError, match="MemoryBackend"):
        SQLiteBackend(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["bogus", "", "FULLER"])
def test_a_bad_synchronous_mode_is_refused(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteBackend(tmp_path / "s.db", synchronous=mode, now=T0)
    SQLiteBackend(tmp_path / "s.db", now=T0).close()  # nothing was left locked


@pytest.mark.parametrize("mode", ["off", "NORMAL", "full", "Extra"])
def test_every_synchronous_mode_is_accepted_in_any_case(tmp_path: Path, mode: str) -> None:
    b = SQLiteBackend(tmp_path / "s.db", synchronous=mode, now=T0)
    sub(b, "a")
    b.close()
    assert query(tmp_path / "s.db", "SELECT id FROM tasks") == [("a",)]


def test_the_store_is_one_wal_file_written_only_on_commit(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    b = SQLiteBackend(path, now=T0)
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    sub(b, *[str(i) for i in range(100)])
    tokens(b, "n", 50)
    assert query(path, "SELECT count(*) FROM tasks") == [(0,)]  # group commit: nothing yet
    b.commit()
    assert query(path, "SELECT count(*), sum(state = 2) FROM tasks") == [(100, 50)]
    b.close()


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_backend_on_one_store_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = SQLiteBackend(path, now=T0)
    first.describe_owner("127.0.0.1:7878")
    with pytest.raises(StoreLocked, match=rf"pid {os.getpid()}, listening on 127\.0\.0\.1:7878"):
        SQLiteBackend(path, now=T0)
    sub(first, "a")  # the holder is unaffected
    first.commit()
    first.close()
    again = SQLiteBackend(path, now=T0)  # free once the holder closed it
    assert state(again, "a") is TaskState.PENDING
    again.close()


# -- crashes -----------------------------------------------------------------------------------


def test_a_crash_keeps_what_was_committed_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    issued = crash(
        path,
        """
        store.submit([SubmitSpec(i, b"p-" + i.encode()) for i in "abcd"], T0)
        store.commit()
        out = lease("n", 2)  # a, b
        store.complete("n", [Completion("a", 1, True, b"ra", None)], T0)
        store.commit()
        store.submit([SubmitSpec("uncommitted", b"x")], T0)  # never committed
        """,
    )
    assert issued == [["a", 1], ["b", 1]]
    b = SQLiteBackend(path, now=T0)  # the dead child's lock is gone
    assert state(b, "uncommitted") is None
    assert b.outcomes(["a"]) == [Outcome("a", TaskState.SUCCEEDED, b"ra", None)]
    (rec,) = b.info(["b"])
    assert rec is not None and (rec.state, rec.attempts, rec.lost) == (TaskState.PENDING, 1, 0)
    # leases are not written through: every waiting task counts one attempt
    # more after a restart, so a token (and a task's attempt) never repeats
    assert tokens(b, "m", 5) == [("b", 2), ("c", 2), ("d", 2)]
    assert sub(b, "a") == [TaskState.SUCCEEDED]  # idempotent across restarts
    b.close()


@pytest.mark.parametrize(
    "committed_lease", [False, True], ids=["pending-on-disk", "leased-on-disk"]
)
def test_no_token_sent_to_a_node_is_issued_twice_across_a_crash(
    tmp_path: Path, committed_lease: bool
) -> None:
    path = tmp_path / "s.db"
    issued = crash(
        path,
        f"""
        store.submit([SubmitSpec("a", b"p")], T0)
        store.commit()
        out = lease("n1", 1)
        store.release("n1", [Release("a", 1)], T0)
        if {committed_lease!r}:
            out += lease("n2", 1)
            store.commit()  # written while leased
            store.release("n2", [Release("a", 2)], T0)
        out += lease("n3", 1)
        store.commit()  # the coordinator sends a lease only after the commit that follows it
        """,
    )
    b = SQLiteBackend(path, now=T0)
    ((_, token),) = tokens(b, "m", 1)
    assert token > max(t for _, t in issued)  # type: ignore[attr-defined]
    b.close()


def test_restarts_never_reach_the_hard_cap_nor_charge_a_loss(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for _ in range(25):
        b = SQLiteBackend(path, now=T0)
        sub(b, "t")
        b.close()
    b = SQLiteBackend(path, now=T0)
    assert tokens(b, "n", 1) == [("t", 26)]  # 25 restarts, not dead-lettered
    (rec,) = b.info(["t"])
    assert rec is not None and rec.lost == 0
    b.close()


# -- migration ---------------------------------------------------------------------------------


def make_round_one_store(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state INTEGER NOT NULL,"
        " payload BLOB, attempts INTEGER NOT NULL, failures INTEGER NOT NULL, lost INTEGER"
        " NOT NULL, retries INTEGER NOT NULL, backoff REAL NOT NULL, not_before REAL NOT NULL,"
        " base INTEGER NOT NULL, result BLOB, error TEXT)"
    )
    db.execute("INSERT INTO tasks VALUES ('done', 0, 3, NULL, 1, 0, 0, 0, 1.0, 0, 0, x'01', NULL)")
    db.execute("INSERT INTO tasks VALUES ('todo', 1, 1, x'02', 0, 0, 0, 0, 1.0, 0, 0, NULL, NULL)")
    db.execute("INSERT INTO tasks VALUES ('dead', 2, 5, x'03', 4, 0, 4, 0, 1.0, 0, 0, NULL, 'x')")
    db.commit()
    db.close()


def test_a_round_one_store_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_round_one_store(path)
    b = SQLiteBackend(path, now=T0)
    assert b.outcomes(["done"]) == [Outcome("done", TaskState.SUCCEEDED, b"\x01", None)]
    assert [le.payload for le in b.lease({"n": Demand(5)}, T0)["n"].leases] == [b"\x02"]
    assert [d.id for d in b.dead()] == ["dead"]
    assert b.requeue_dead(["dead"], T0) == [True]
    b.close()


def test_a_migrated_store_starts_retention_at_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_round_one_store(path)
    policy = Policy(result_ttl=10.0, dead_ttl=100.0)
    SQLiteBackend(path, policy, now=T0).close()
    b = SQLiteBackend(path, policy, now=T0 + 9.999)
    assert state(b, "done") is TaskState.SUCCEEDED  # round 1 kept it forever: not purged at once
    b.close()
    b = SQLiteBackend(path, policy, now=T0 + 10)
    assert (state(b, "done"), state(b, "dead")) == (None, TaskState.DEAD)
    b.close()
    b = SQLiteBackend(path, policy, now=T0 + 100)
    assert (state(b, "dead"), state(b, "todo")) == (None, TaskState.PENDING)
    b.close()


def test_a_store_from_before_retention_gains_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "r2.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, state INTEGER NOT NULL,"
        " payload BLOB, attempts INTEGER NOT NULL, failures INTEGER NOT NULL, lost INTEGER"
        " NOT NULL, retries INTEGER NOT NULL, backoff REAL NOT NULL, not_before REAL NOT NULL,"
        " base INTEGER NOT NULL, result BLOB, error TEXT)"
    )
    db.execute("INSERT INTO tasks VALUES (0, 'todo', 1, x'02', 0, 0, 0, 0, 1.0, 0, 0, NULL, NULL)")
    db.commit()
    db.close()
    b = SQLiteBackend(path, now=T0)
    (le,) = b.lease({"n": Demand(5)}, T0)["n"].leases
    assert le.id == "todo"
    b.complete("n", [Completion("todo", le.token, True, b"r", None)], T0)
    b.close()
    names = {row[1] for row in query(path, "PRAGMA table_info(tasks)")}
    assert {"result_ttl", "expires", "ended"} <= names
    b = SQLiteBackend(path, now=T0 + 1)
    assert b.outcomes(["todo"]) == [Outcome("todo", TaskState.SUCCEEDED, b"r", None)]
    b.close()


# -- retention on disk --------------------------------------------------------------------------


def test_expired_records_leave_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    policy = Policy(result_ttl=10.0)
    b = SQLiteBackend(path, policy, now=T0)
    b.submit([SubmitSpec("old", b"o"), SubmitSpec("kept", b"k", result_ttl=50.0)], T0)
    sub(b, "todo")
    grant = b.lease({"n": Demand(2)}, T0)["n"]
    b.complete("n", [Completion(le.id, le.token, True, b"x", None) for le in grant.leases], T0)
    b.drain_finished()
    b.close()
    assert len(query(path, "SELECT id FROM tasks")) == 3
    b = SQLiteBackend(path, policy, now=T0 + 10)  # old's retention ran out while stopped
    assert query(path, "SELECT id FROM tasks ORDER BY seq") == [("kept",), ("todo",)]
    assert (state(b, "old"), state(b, "kept")) == (None, TaskState.SUCCEEDED)
    assert b.expire(T0 + 50, 100) == 1
    b.commit()
    assert query(path, "SELECT id FROM tasks") == [("todo",)]
    b.close()


# -- memory -------------------------------------------------------------------------------------


def test_results_are_not_kept_in_memory_once_committed_and_read(tmp_path: Path) -> None:
    n, size = 100, 100_000
    b = SQLiteBackend(tmp_path / "m.db", Policy(result_ttl=1e6), now=T0)
    ids = [f"t{i}" for i in range(n)]
    sub(b, *ids)
    b.commit()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        grant = b.lease({"n": Demand(n)}, T0)["n"]
        rows = [
            Completion(le.id, le.token, True, bytes([i % 256]) * size, None)
            for i, le in enumerate(grant.leases)
        ]
        b.complete("n", rows, T0)
        del rows, grant
        gc.collect()
        held_uncommitted = tracemalloc.get_traced_memory()[0] - start
        b.commit()
        for tid in ids:  # delivered: read once, and the copy is dropped
            (got,) = b.outcomes([tid])
            assert got is not None and len(got.value or b"") == size
        del got
        b.drain_finished()
        gc.collect()
        held_after = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert held_uncommitted > n * size  # control: before the commit the store holds them
    assert held_after < n * size / 20
    (got,) = b.outcomes(["t7"])  # still readable, from the disk
    assert got == Outcome("t7", TaskState.SUCCEEDED, bytes([7]) * size, None)
    b.close()
