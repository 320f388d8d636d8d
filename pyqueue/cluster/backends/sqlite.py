"""The SQLite store: in-memory dispatch written through to an embedded database.

Dispatch runs on :class:`~pyqueue.cluster.backends.memory.MemoryBackend`'s
structures; every change it announces through its hooks is collected and
written in :meth:`SQLiteBackend.commit`, one WAL transaction per coordinator
flush (group commit).  Leases are not written: a restart requeues every task
that was leased, at its old position, and counts one more attempt for each
pending one (the coordinator that stopped may have leased it once more than
the disk says), so a lease token that reached a node never repeats (the
coordinator sends leases only after the commit that follows them).

What stays in memory per task: its record without payload or result once it
ended (results are read back from disk for delivery and dropped from memory
once committed and read), until retention purges it.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import logging
import os
import sqlite3
import time
from typing import Any

from pyqueue.errors import StoreLocked

from .. import dispatch
from ..dispatch import Policy
from ..schedules import Schedule
from ..states import DEAD, LEASED, PENDING, SCHEDULED, TERMINAL, TaskState
from .memory import MemoryBackend, _Queue, _Task

__all__ = ["SQLiteBackend"]

log = logging.getLogger("pyqueue.cluster.store")

_COLS = (
    "id, seq, state, payload, attempts, failures, lost, retries, backoff, not_before, base,"
    " result, error, result_ttl, expires, ended, queue, priority, ready, created, started"
)
_V1_COLS = (
    "id, seq, state, payload, attempts, failures, lost, retries, backoff, not_before, base,"
    " result, error"
)
# seq is the rowid: updates and reads find a row by integer key, and no text
# index is kept (ids are unique in memory, where submits are checked).
_TASKS_TABLE = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    state INTEGER NOT NULL,
    payload BLOB,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    backoff REAL NOT NULL,
    not_before REAL NOT NULL,
    base INTEGER NOT NULL,
    result BLOB,
    error TEXT,
    result_ttl REAL,
    expires REAL NOT NULL DEFAULT 0,
    ended REAL NOT NULL DEFAULT 0,
    queue TEXT NOT NULL DEFAULT 'default',
    priority INTEGER NOT NULL DEFAULT 0,
    ready REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL DEFAULT 0,
    started REAL NOT NULL DEFAULT 0
)"""
#: columns added since round 1, with what an older row gets
_ADDED_COLUMNS = (
    ("result_ttl", "REAL"),
    ("expires", "REAL NOT NULL DEFAULT 0"),
    ("ended", "REAL NOT NULL DEFAULT 0"),
    ("queue", "TEXT NOT NULL DEFAULT 'default'"),
    ("priority", "INTEGER NOT NULL DEFAULT 0"),
    ("ready", "REAL NOT NULL DEFAULT 0"),
    ("created", "REAL NOT NULL DEFAULT 0"),
    ("started", "REAL NOT NULL DEFAULT 0"),
)
_QUEUES_TABLE = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    rate_limit REAL,
    paused INTEGER NOT NULL
)"""
# finished tasks by expiry: purging (and the purge at restart) never scans
_EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires) WHERE expires > 0"
_NCOLS = len(_COLS.split(","))


# The values of one record for INSERT (in _COLS order) and UPDATE.  The state
# goes in as a plain int: sqlite3 binds an IntEnum through its slow adaptation
# path, about 1.8 us a value, twice per task.
def _insert_row(r: _Task) -> tuple[Any, ...]:
    return (
        r.id, r.seq, int(r.state), r.payload, r.attempts, r.failures, r.lost, r.retries,
        r.backoff, r.not_before, r.base, r.result, r.error, r.result_ttl, r.expires, r.ended,
        r.queue, r.priority, r.ready, r.created, r.started,
    )  # fmt: skip


def _update_row(r: _Task) -> tuple[Any, ...]:
    return (
        int(r.state), r.attempts, r.failures, r.lost, r.not_before, r.base, r.result, r.error,
        r.expires, r.ended, r.ready, r.started, r.seq,
    )  # fmt: skip


_META_TABLE = "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v)"
_SCHEDULES_TABLE = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    cron TEXT,
    every REAL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    misfire TEXT NOT NULL,
    timezone TEXT NOT NULL,
    paused INTEGER NOT NULL,
    anchor REAL NOT NULL,
    next_fire REAL,
    last_fire REAL
)"""
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class SQLiteBackend(MemoryBackend):
    """A durable store in one SQLite file (WAL), group-committed.

    Parameters
    ----------
    path : str or os.PathLike
        Database file; created when missing.
    policy : Policy
        Retry, dead-letter and retention limits.
    synchronous : str
        SQLite ``synchronous`` pragma.  ``"NORMAL"`` (default) survives a
        crash of the coordinator process, which is what kill -9 tests; use
        ``"FULL"`` to also survive power loss, at a cost per commit.
    seed : int or None
        Seeds the backoff jitter.
    now : float, optional
        The wall clock at opening (default: ``time.time()``): records whose
        retention ran out while the store was closed are purged at once.

    Raises
    ------
    StoreLocked
        If another coordinator has the same store open.  The lock is an
        exclusive ``flock`` on ``PATH.lock`` (the database itself stays
        readable); the operating system drops it when its holder exits, even
        by kill -9, so a stale lock file never needs removing by hand.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: Policy | None = None,
        *,
        synchronous: str = "NORMAL",
        seed: int | None = None,
        now: float | None = None,
    ) -> None:
        if path is None:
            raise TypeError("SQLiteBackend needs a file path; MemoryBackend() keeps nothing")
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"bad synchronous mode {synchronous!r}; one of {_SYNC_MODES}")
        super().__init__(policy, seed=seed)
        self.path = os.fspath(path)
        self._new: dict[str, None] = {}
        self._dirty: dict[str, None] = {}
        self._deleted: list[int] = []  # seqs purged since the last commit
        self._queues_dirty: set[str] = set()  # queues whose settings changed
        self._schedules_dirty: set[str] = set()  # schedules declared, changed or deleted
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = _lock_store(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            now = time.time() if now is None else now
            _migrate(self._db, self.policy, now)
            self._db.execute(_TASKS_TABLE)
            self._db.execute(_EXPIRY_INDEX)
            self._db.execute(_META_TABLE)
            self._db.execute(_QUEUES_TABLE)
            self._db.execute(_SCHEDULES_TABLE)
            self._load(now)
        except BaseException:
            self.close()
            raise

    def describe_owner(self, address: str) -> None:
        """Write who holds the store (pid, address) into its lock file, for
        the error a second coordinator prints."""
        if self._lock_fd is not None:
            info = json.dumps({"pid": os.getpid(), "address": address}).encode()
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, info, 0)

    # -- hooks ----------------------------------------------------------------
    def _on_new(self, rec: _Task) -> None:
        self._new[rec.id] = None

    def _on_change(self, rec: _Task) -> None:
        if rec.id not in self._new:
            self._dirty[rec.id] = None

    def _on_purge(self, rec: _Task) -> None:
        if rec.id in self._new:
            del self._new[rec.id]  # it never reached the disk
        else:
            self._deleted.append(rec.seq)
        self._dirty.pop(rec.id, None)

    def _on_queue(self, q: _Queue) -> None:
        self._queues_dirty.add(q.name)

    def _on_schedule(self, schedule_id: str) -> None:
        self._schedules_dirty.add(schedule_id)

    def _payload_of(self, rec: _Task) -> bytes | None:
        if rec.payload is None and self._db is not None:
            row = self._db.execute("SELECT payload FROM tasks WHERE seq=?", (rec.seq,)).fetchone()
            return row[0] if row else None
        return rec.payload

    def _result_of(self, rec: _Task) -> bytes | None:
        result = rec.result
        if result is None and self._db is not None:
            row = self._db.execute("SELECT result FROM tasks WHERE seq=?", (rec.seq,)).fetchone()
            return row[0] if row else None
        if rec.id not in self._new and rec.id not in self._dirty:
            rec.result = None  # committed: the disk copy is the one kept
        return result

    # -- restart --------------------------------------------------------------
    def _load(self, now: float) -> None:
        assert self._db is not None
        ended = ",".join(str(int(s)) for s in TERMINAL if s is not TaskState.DEAD)
        # Results and payloads of ended tasks stay on disk; dead ones may be requeued.
        purged = self._db.execute(
            "DELETE FROM tasks WHERE expires > 0 AND expires <= ?", (now,)
        ).rowcount
        # columns in _Task's field order: node and result are not loaded
        rows = self._db.execute(
            f"SELECT id, seq, state, CASE WHEN state IN ({ended}) THEN NULL ELSE payload END,"
            " attempts, failures, lost, retries, backoff, not_before, base, NULL, NULL,"
            " error, result_ttl, expires, ended, queue, priority, ready, created, started"
            " FROM tasks ORDER BY seq"
        )
        for name, rate, paused in self._db.execute("SELECT name, rate_limit, paused FROM queues"):
            q = self._queue(name)
            q.rate, q.paused, q.stamp = rate, bool(paused), now
            q.tokens = 0.0 if rate is None else dispatch.bucket_capacity(rate)
        for (
            sid,
            payload,
            cron,
            every,
            queue,
            prio,
            misfire,
            tz,
            paused,
            anchor,
            nxt,
            last,
        ) in self._db.execute("SELECT * FROM schedules"):
            sch = Schedule(
                sid, cron, every, queue, prio, misfire, tz, bool(paused), anchor, nxt, last
            )
            self._schedules[sid] = (sch, payload)
        self._recount_fires()
        requeued = 0
        deaths: list[tuple[float, int, str, int]] = []  # (ended, seq, id, attempts)
        tasks, counts = self._tasks, self._counts
        for row in rows:
            rec = _Task(*row)
            tid, seq, exp, nb = rec.id, rec.seq, rec.expires, rec.not_before
            st = rec.state = TaskState(rec.state)
            if exp:
                self._expiry.append((exp, seq, tid))
                if st is DEAD:
                    deaths.append((rec.ended, seq, tid, rec.attempts))
            if st is LEASED:
                # The coordinator died, not the node: back to its old position, no counter charged.
                rec.state = PENDING
                self._dirty[tid] = None
                requeued += 1
            elif st is PENDING:
                # Leases are not written through, so the coordinator that
                # stopped may have leased it once more than the disk says:
                # count that attempt, so that (id, attempt) never repeats.
                rec.attempts += 1
                rec.base += 1  # ... which the hard cap does not count
                self._dirty[tid] = None
            tasks[tid] = rec
            counts[rec.state] += 1
            self._queue(rec.queue).counts[rec.state] += 1
            if rec.state is PENDING:
                self._wait(rec, fresh=True)  # rows come in seq order
            elif rec.state is SCHEDULED:
                self._scheduled.append((nb, seq, tid))
            self._seq = max(self._seq, seq + 1)
        deaths.sort()
        self._dead_order.extend((seq, tid, att) for _, seq, tid, att in deaths)
        heapq.heapify(self._scheduled)
        heapq.heapify(self._expiry)
        self._purged += purged
        if purged:
            log.info(
                "purged %d finished task(s) whose retention ran out while stopped",
                purged,
                extra={"event": "purged", "count": purged},
            )
        if tasks:
            log.info(
                "store reloaded",
                extra={
                    "event": "store_reloaded",
                    "tasks": len(tasks),
                    "pending": counts[TaskState.PENDING],
                    "requeued_leases": requeued,
                    "path": self.path,
                },
            )
        self.commit()

    # -- durability -----------------------------------------------------------
    def commit(self) -> None:
        if self._db is None or not (
            self._new or self._dirty or self._deleted or self._queues_dirty or self._schedules_dirty
        ):
            return
        tasks = self._tasks
        db = self._db
        db.execute("BEGIN")
        try:
            if self._new:
                db.executemany(
                    f"INSERT INTO tasks ({_COLS}) VALUES ({','.join('?' * _NCOLS)})",
                    map(_insert_row, map(tasks.__getitem__, self._new)),
                )
            if self._dirty:
                db.executemany(
                    "UPDATE tasks SET state=?, attempts=?, failures=?, lost=?, not_before=?,"
                    " base=?, result=?, error=?, expires=?, ended=?, ready=?, started=?"
                    " WHERE seq=?",
                    map(_update_row, map(tasks.__getitem__, self._dirty)),
                )
            if self._deleted:
                db.executemany("DELETE FROM tasks WHERE seq=?", [(q,) for q in self._deleted])
            if self._queues_dirty:
                queues = self._queues
                db.executemany(
                    "INSERT OR REPLACE INTO queues (name, rate_limit, paused) VALUES (?,?,?)",
                    [(n, queues[n].rate, int(queues[n].paused)) for n in self._queues_dirty],
                )
            if self._schedules_dirty:
                self._write_schedules(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._new.clear()
        self._dirty.clear()
        self._deleted.clear()
        self._queues_dirty.clear()
        self._schedules_dirty.clear()

    def _write_schedules(self, db: sqlite3.Connection) -> None:
        rows, gone = [], []
        for sid in self._schedules_dirty:
            got = self._schedules.get(sid)
            if got is None:
                gone.append((sid,))
                continue
            s, payload = got
            rows.append(
                (s.id, payload, s.cron, s.every, s.queue, s.priority, s.misfire, s.timezone,
                 int(s.paused), s.anchor, s.next_fire, s.last_fire)
            )  # fmt: skip
        if gone:
            db.executemany("DELETE FROM schedules WHERE id=?", gone)
        if rows:
            db.executemany(
                "INSERT OR REPLACE INTO schedules (id, payload, cron, every, queue, priority,"
                " misfire, timezone, paused, anchor, next_fire, last_fire)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def close(self) -> None:
        if self._db is not None:
            try:
                self.commit()
            finally:
                self._db.close()
                self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _migrate(db: sqlite3.Connection, policy: Policy, now: float) -> None:
    """Bring an older store to the current schema (round 1 keyed rows by ``id``)."""
    cols = db.execute("PRAGMA table_info(tasks)").fetchall()
    if not cols:
        return  # a new store
    names = {name for _, name, _, _, _, _ in cols}
    if not any(name == "id" and pk for _, name, _, _, _, pk in cols):
        # keyed by seq already: add the columns that came later
        for col, decl in _ADDED_COLUMNS:
            if col not in names:
                db.execute(f"ALTER TABLE tasks ADD COLUMN {col} {decl}")
        return
    db.execute("BEGIN")
    db.execute("ALTER TABLE tasks RENAME TO tasks_v1")
    db.execute(_TASKS_TABLE)
    db.execute(f"INSERT INTO tasks ({_V1_COLS}) SELECT {_V1_COLS} FROM tasks_v1")
    # round 1 kept everything forever: retention starts counting now
    dead = int(TaskState.DEAD)
    ended = ",".join(str(int(st)) for st in TERMINAL if st is not TaskState.DEAD)
    db.execute(
        f"UPDATE tasks SET expires=?, ended=? WHERE state IN ({ended})",
        (now + policy.result_ttl, now),
    )
    db.execute(
        f"UPDATE tasks SET expires=?, ended=? WHERE state={dead}", (now + policy.dead_ttl, now)
    )
    db.execute("DROP TABLE tasks_v1")
    db.execute("COMMIT")
    log.info("store migrated to the current schema", extra={"event": "store_migrated"})


def _lock_store(path: str) -> int:
    """Take the store's exclusive lock, or raise StoreLocked naming the holder."""
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        who = f"pid {holder.get('pid', '?')}"
        if holder.get("address"):
            who += f", listening on {holder['address']}"
        raise StoreLocked(
            f"store {path} is in use by another coordinator ({who}); one store serves one"
            " coordinator"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    info = json.dumps({"pid": os.getpid(), "address": None}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    return fd
