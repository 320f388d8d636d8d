"""Coordinator state: tasks, leases, counters, and their durable store.

:class:`Backend` is the interface the coordinator drives; it knows nothing
about sockets or the wire.  :class:`SQLiteBackend` keeps everything in memory
and writes each change through to an embedded SQLite database (WAL) in
:meth:`Backend.commit`, which the coordinator calls once per batch of events
*before* it acknowledges any of them (group commit).

Task life cycle::

    SCHEDULED -> PENDING -> LEASED -> SUCCEEDED | FAILED | DEAD | CANCELLED
        ^           ^          |
        |           +----------+  node lost / released (old queue position)
        +----------------------+  task raised and retries are left (backoff)

``FAILED`` (the task raised and had no retries left; its exception is the
result) is kept apart from ``SUCCEEDED`` so status counts stay honest.
Counters: ``attempts`` (every lease; also the lease token, so it only grows),
``failures`` (the task raised), ``lost`` (its node died under it).

Poison isolation: a node never holds more than one *suspect* task (one with
``lost > 0``) at a time.  Without it, the tasks prefetched next to a task that
kills its node would die with it again and again and be dead-lettered too.

Writing another backend
-----------------------
The interface is shaped so that a Redis Streams implementation can fill it:
``submit`` is ``SET NX`` on the id plus ``XADD`` to a pending stream;
``lease`` is ``XREADGROUP COUNT n`` with the node as consumer (the entry id and
a per-task attempt counter make the token); ``complete`` is a Lua script that
checks the token, ``XACK``s and stores the result; ``node_lost`` is
``XCLAIM``/``XAUTOCLAIM`` of the node's pending entries back to the stream
(with the delivery count giving ``attempts``); the dead-letter list is a second
stream; ``commit`` would pipeline the batch and wait for the replies.  Results
must be stored before ``commit`` returns, as here.

Thread safety
-------------
Not thread-safe; the coordinator calls it from its event loop only.
"""

from __future__ import annotations

import abc
import collections
import fcntl
import heapq
import json
import logging
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pyqueue.errors import StoreLocked

from .states import TERMINAL, TaskState

# dataclass(slots=True) needs Python 3.10; the package supports 3.9
_SLOTS: dict[str, bool] = {"slots": True} if sys.version_info >= (3, 10) else {}

__all__ = [
    "TaskState",
    "TERMINAL",
    "TaskRecord",
    "SubmitSpec",
    "Lease",
    "Policy",
    "Backend",
    "SQLiteBackend",
]

log = logging.getLogger("pyqueue.cluster.store")


@dataclass(**_SLOTS)
class TaskRecord:
    """Everything the coordinator knows about one task."""

    id: str
    seq: int
    state: TaskState
    payload: bytes | None
    attempts: int = 0
    failures: int = 0
    lost: int = 0
    retries: int = 0
    backoff: float = 0.0
    not_before: float = 0.0
    base: int = 0  # attempts at the last requeue from the dead letters (hard cap counts from here)
    node: str | None = None
    result: bytes | None = None
    error: str | None = None
    result_ttl: float | None = None  # this task's own retention, seconds (None: the policy's)
    expires: float = 0.0  # wall-clock time its finished record may be purged (0: not finished)

    def summary(self) -> dict[str, Any]:
        """A msgpack-able description (for status and the dead-letter list)."""
        return {
            "id": self.id,
            "state": self.state.name,
            "attempts": self.attempts,
            "failures": self.failures,
            "lost": self.lost,
            "error": self.error,
        }


class SubmitSpec(NamedTuple):
    """One task as a client submits it."""

    id: str
    payload: bytes
    retries: int = 0  # application-error retries wanted
    backoff: float = 1.0  # base delay of the first retry, seconds
    not_before: float = 0.0  # wall-clock time before which it must not run (SCHEDULED)
    result_ttl: float | None = None  # keep its result this long after it ends (None: policy)


class Lease(NamedTuple):
    """A task handed to a node; ``token`` fences its completion."""

    id: str
    token: int
    payload: bytes


@dataclass(frozen=True)
class Policy:
    """Retry and dead-letter policy.

    Attributes
    ----------
    max_lost : int
        A task whose node died under it this many times is dead-lettered.
    max_attempts : int
        Hard cap on leases of one task (counted since its last requeue).
    backoff_cap : float
        Longest delay between application-error retries, seconds.
    result_ttl : float
        A finished task (succeeded, failed, cancelled) is kept, with its
        result, this long after it ended; then its record is purged.
    dead_ttl : float
        A dead-lettered task is kept this long (it can be requeued meanwhile).
    max_dead : int
        At most this many dead tasks are kept; the oldest are purged first.
    """

    max_lost: int = 4
    max_attempts: int = 20
    backoff_cap: float = 300.0
    result_ttl: float = 3600.0
    dead_ttl: float = 7 * 86400.0
    max_dead: int = 100_000


class Backend(abc.ABC):
    """Store, dispatch and lease logic behind the coordinator.

    All methods are called from one thread.  Mutations become durable only in
    :meth:`commit`; the coordinator acknowledges nothing before that.  Tasks
    that reach a terminal state are queued for :meth:`drain_finished` so the
    coordinator can push their results to waiting clients.
    """

    @abc.abstractmethod
    def submit(self, specs: Iterable[SubmitSpec]) -> list[TaskState]:
        """Add tasks; an id that exists already is left as it is (idempotent).

        Returns the state of each task after the call, in order.
        """

    @abc.abstractmethod
    def lease(self, node: str, n: int) -> list[Lease]:
        """Lease up to ``n`` ready tasks to ``node``, oldest first."""

    @abc.abstractmethod
    def complete(
        self,
        node: str,
        task_id: str,
        token: int,
        ok: bool,
        value: bytes | None,
        error: str | None,
        cancelled: bool = False,
    ) -> str:
        """Record a node's completion (``cancelled``: it was terminated on request).

        Returns ``"accepted"`` for the first completion of the current attempt,
        ``"duplicate"`` when the task had already ended, ``"stale"`` when the
        token was superseded by a newer lease (fenced), ``"unknown"`` for an
        id never submitted.
        """

    @abc.abstractmethod
    def release(self, node: str, task_id: str, token: int, started: bool = False) -> bool:
        """Give back a leased task at its old queue position.

        ``started``: it ran but its node stopped before it finished (lost by
        shutdown), which counts as one loss toward dead-lettering.
        """

    @abc.abstractmethod
    def revoked(self, node: str, task_id: str, token: int) -> bool:
        """The node confirmed it dropped a leased task before starting it: CANCELLED."""

    @abc.abstractmethod
    def node_lost(self, node: str) -> list[str]:
        """The node died or disconnected: requeue its leases (``lost`` + 1)."""

    @abc.abstractmethod
    def leased_count(self, node: str) -> int:
        """Tasks leased to ``node`` whose completion has not arrived."""

    @abc.abstractmethod
    def cancel(self, ids: Iterable[str]) -> list[bool]:
        """Cancel tasks that are neither leased nor ended; True for each one cancelled.

        A leased task is cancelled only once its node confirms it had not
        started (:meth:`revoked`) or that it was terminated (:meth:`complete`).
        """

    @abc.abstractmethod
    def requeue_dead(self, ids: Iterable[str]) -> list[bool]:
        """Move dead-lettered tasks back to PENDING with fresh counters."""

    @abc.abstractmethod
    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """Summaries of dead-lettered tasks."""

    @abc.abstractmethod
    def promote_due(self, now: float) -> int:
        """Move SCHEDULED tasks whose time has come to PENDING; return how many."""

    @abc.abstractmethod
    def purge(self, now: float, limit: int) -> int:
        """Forget at most ``limit`` finished tasks whose retention has run out
        (and the oldest dead ones past ``max_dead``); return how many.

        A purged id is unknown from then on: submitting it again starts a
        new task.
        """

    @abc.abstractmethod
    def next_due(self) -> float | None:
        """Wall-clock time of the earliest SCHEDULED task, if any."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The record of one task."""

    @abc.abstractmethod
    def outcome(self, task_id: str) -> tuple[TaskState, bytes | None, str | None] | None:
        """State, result bytes and error text of a task (results may be read from disk)."""

    @abc.abstractmethod
    def forget_result(self, task_id: str) -> None:
        """Drop the in-memory copy of a delivered result (it stays on disk)."""

    @abc.abstractmethod
    def drain_finished(self) -> list[str]:
        """Ids of tasks that ended since the last call."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts by state plus completion counters."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make every change so far durable (one transaction)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Commit and release resources."""

    def describe_owner(self, address: str) -> None:  # noqa: B027 - optional hook
        """Record where the coordinator that owns this store listens (optional)."""


_COLS = (
    "id, seq, state, payload, attempts, failures, lost, retries, backoff, not_before, base,"
    " result, error, result_ttl, expires"
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
    expires REAL NOT NULL DEFAULT 0
)"""
# finished tasks by expiry: purging (and the purge at restart) never scans
_EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires) WHERE expires > 0"
_META_TABLE = "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v)"


class SQLiteBackend(Backend):
    """In-memory dispatch with write-through to SQLite (WAL), group-committed.

    Parameters
    ----------
    path : str or None
        Database file.  ``None`` keeps state in memory only (nothing survives
        a restart; used by LocalCluster when no store is given).
    policy : Policy
        Retry and dead-letter limits.
    synchronous : str
        SQLite ``synchronous`` pragma.  ``"NORMAL"`` (default) survives a
        crash of the coordinator process, which is what kill -9 tests; use
        ``"FULL"`` to also survive power loss, at a cost per commit.
    seed : int or None
        Seeds the backoff jitter.

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
        path: str | None,
        policy: Policy | None = None,
        *,
        synchronous: str = "NORMAL",
        seed: int | None = None,
    ) -> None:
        self.path = path
        self.policy = policy or Policy()
        self._rng = random.Random(seed)
        self._tasks: dict[str, TaskRecord] = {}
        self._pending: list[tuple[int, str]] = []  # heap of (seq, id); stale entries skipped
        self._scheduled: list[tuple[float, int, str]] = []  # heap of (not_before, seq, id)
        self._by_node: dict[str, dict[str, bool]] = {}  # node -> {task id: suspect?}
        self._suspects: dict[str, int] = {}  # node -> suspects it holds (at most 1)
        self._new: dict[str, None] = {}
        self._dirty: dict[str, None] = {}
        self._finished: list[str] = []
        self._counts = [0] * len(TaskState)  # tasks per state, kept as they change
        self._expiry: list[tuple[float, int, str]] = []  # heap of (expires, seq, id)
        # dead tasks in the order they died: (seq, id, expires) to tell stale entries
        self._dead_order: collections.deque[tuple[int, str, float]] = collections.deque()
        self._deleted: list[int] = []  # seqs purged since the last commit
        self._seq = 0
        self.counters = {"accepted": 0, "duplicate": 0, "stale": 0, "unknown": 0}
        self.purged = 0
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        if path is not None:
            if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
                raise ValueError(f"bad synchronous mode {synchronous!r}")
            self._lock_fd = _lock_store(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            _migrate_v1(self._db, self.policy)
            self._db.execute(_TASKS_TABLE)
            self._db.execute(_EXPIRY_INDEX)
            self._db.execute(_META_TABLE)
            self._load()

    def describe_owner(self, address: str) -> None:
        """Write who holds the store (pid, address) into its lock file, for
        the error a second coordinator prints."""
        if self._lock_fd is not None:
            info = json.dumps({"pid": os.getpid(), "address": address}).encode()
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, info, 0)

    # -- restart ----------------------------------------------------------
    def _load(self) -> None:
        assert self._db is not None
        terminal = ",".join(str(int(s)) for s in TERMINAL)
        # Results and payloads of ended tasks stay on disk; dead ones may be requeued.
        purged = self._db.execute(
            "DELETE FROM tasks WHERE expires > 0 AND expires <= ?", (time.time(),)
        ).rowcount
        rows = self._db.execute(
            f"SELECT id, seq, state, CASE WHEN state IN ({terminal})"
            f" AND state != {int(TaskState.DEAD)} THEN NULL ELSE payload END,"
            " attempts, failures, lost, retries, backoff, not_before,"
            " base, error, result_ttl, expires FROM tasks ORDER BY seq"
        )
        requeued = 0
        for (
            tid,
            seq,
            state,
            payload,
            att,
            fail,
            lost,
            retries,
            backoff,
            nb,
            base,
            error,
            ttl,
            expires,
        ) in rows:
            st = TaskState(state)
            rec = TaskRecord(
                tid,
                seq,
                st,
                payload,
                att,
                fail,
                lost,
                retries,
                backoff,
                nb,
                base,
                None,
                None,
                error,
                ttl,
                expires,
            )
            if expires:
                self._expiry.append((expires, seq, tid))
                if st is TaskState.DEAD:
                    self._dead_order.append((seq, tid, expires))
            if st is TaskState.LEASED:
                # The coordinator died, not the node: back to its old position, no counter charged.
                rec.state = TaskState.PENDING
                self._dirty[tid] = None
                requeued += 1
            elif st is TaskState.PENDING:
                # Leases are not written through, so the coordinator that
                # stopped may have leased it once more than the disk says:
                # count that attempt, so that (id, attempt) never repeats.
                rec.attempts += 1
                rec.base += 1  # ... which the hard cap does not count
                self._dirty[tid] = None
            self._tasks[tid] = rec
            self._counts[rec.state] += 1
            if rec.state is TaskState.PENDING:
                self._pending.append((seq, tid))
            elif rec.state is TaskState.SCHEDULED:
                self._scheduled.append((nb, seq, tid))
            self._seq = max(self._seq, seq + 1)
        heapq.heapify(self._pending)
        heapq.heapify(self._scheduled)
        heapq.heapify(self._expiry)
        if purged:
            log.info(
                "purged %d finished task(s) whose retention ran out while stopped",
                purged,
                extra={"event": "purged", "count": purged},
            )
        if self._tasks:
            log.info(
                "store reloaded",
                extra={
                    "event": "store_reloaded",
                    "tasks": len(self._tasks),
                    "pending": len(self._pending),
                    "requeued_leases": requeued,
                    "path": self.path,
                },
            )
        self.commit()

    # -- helpers ----------------------------------------------------------
    def _touch(self, rec: TaskRecord) -> None:
        if rec.id not in self._new:
            self._dirty[rec.id] = None

    def _set_state(self, rec: TaskRecord, state: TaskState) -> None:
        counts = self._counts
        counts[rec.state] -= 1
        counts[state] += 1
        rec.state = state

    def _finish(
        self, rec: TaskRecord, state: TaskState, result: bytes | None, error: str | None
    ) -> None:
        self._set_state(rec, state)
        rec.result = result
        rec.error = error
        rec.node = None
        if state is TaskState.DEAD:
            ttl = self.policy.dead_ttl
        else:
            rec.payload = None  # only dead tasks may run again (it is on disk anyway)
            ttl = rec.result_ttl if rec.result_ttl is not None else self.policy.result_ttl
        rec.expires = time.time() + ttl  # enters the expiry heap once drained (pushed)
        if state is TaskState.DEAD:
            self._dead_order.append((rec.seq, rec.id, rec.expires))
        self._touch(rec)
        self._finished.append(rec.id)

    def _requeue(self, rec: TaskRecord) -> None:
        self._set_state(rec, TaskState.PENDING)
        rec.node = None
        heapq.heappush(self._pending, (rec.seq, rec.id))
        self._touch(rec)

    def _unlease(self, node: str, task_id: str) -> None:
        held = self._by_node.get(node)
        if held is not None and held.pop(task_id, False):
            self._suspects[node] -= 1

    # -- Backend ----------------------------------------------------------
    def submit(self, specs: Iterable[SubmitSpec]) -> list[TaskState]:
        out = []
        now = time.time()
        tasks = self._tasks
        for spec in specs:
            rec = tasks.get(spec.id)
            if rec is None:
                seq = self._seq
                self._seq += 1
                scheduled = spec.not_before > now
                rec = TaskRecord(
                    spec.id,
                    seq,
                    TaskState.SCHEDULED if scheduled else TaskState.PENDING,
                    spec.payload,
                    retries=max(0, int(spec.retries)),
                    backoff=max(0.0, float(spec.backoff)),
                    not_before=float(spec.not_before),
                    result_ttl=None if spec.result_ttl is None else max(0.0, spec.result_ttl),
                )
                tasks[spec.id] = rec
                self._counts[rec.state] += 1
                self._new[spec.id] = None
                if scheduled:
                    heapq.heappush(self._scheduled, (rec.not_before, seq, spec.id))
                else:
                    self._pending.append((seq, spec.id))  # seq only grows: the heap order holds
            out.append(rec.state)
        return out

    def lease(self, node: str, n: int) -> list[Lease]:
        if n <= 0 or not self._pending:
            return []
        held = self._by_node.setdefault(node, {})
        tasks = self._tasks
        suspects = self._suspects.get(node, 0)
        out: list[Lease] = []
        deferred: list[tuple[int, str]] = []
        pending = self._pending
        cap = self.policy.max_attempts
        while pending and len(out) < n:
            seq, tid = heapq.heappop(pending)
            rec = tasks.get(tid)
            if rec is None or rec.state is not TaskState.PENDING or rec.seq != seq:
                continue  # stale heap entry (cancelled, already leased, ...)
            suspect = rec.lost > 0
            if suspect and suspects:
                deferred.append((seq, tid))
                continue
            if rec.attempts - rec.base >= cap:
                self._finish(rec, TaskState.DEAD, None, f"hard cap of {cap} attempts reached")
                continue
            suspects += suspect
            # Not written through: a restart requeues leases anyway, and the
            # attempt count reaches disk with the completion (one write per task).
            rec.attempts += 1
            self._set_state(rec, TaskState.LEASED)
            rec.node = node
            held[tid] = suspect
            out.append(Lease(tid, rec.attempts, rec.payload))  # type: ignore[arg-type]
        self._suspects[node] = suspects
        for item in deferred:
            heapq.heappush(pending, item)
        return out

    def complete(
        self,
        node: str,
        task_id: str,
        token: int,
        ok: bool,
        value: bytes | None,
        error: str | None,
        cancelled: bool = False,
    ) -> str:
        rec = self._tasks.get(task_id)
        if rec is not None and rec.state is TaskState.LEASED and rec.attempts == token:
            # only the current lease is unleased: a stale completion (from before
            # a reconnect, say) must not free the slot of the lease that replaced it
            self._unlease(rec.node or node, task_id)
        if rec is None:
            verdict = "unknown"
        elif rec.state in TERMINAL or (rec.state is TaskState.SCHEDULED and rec.attempts == token):
            verdict = "duplicate"
        elif rec.attempts != token or rec.state is TaskState.SCHEDULED:
            verdict = "stale"
        else:
            # LEASED with this token, or PENDING after its node was declared
            # lost but before anyone leased it again: first completion wins.
            verdict = "accepted"
            if cancelled:  # terminated on request: TaskCancelled was raised in it
                self._finish(rec, TaskState.CANCELLED, None, "cancelled while running")
            elif ok:
                self._finish(rec, TaskState.SUCCEEDED, value, None)
            else:
                rec.failures += 1
                if rec.failures <= rec.retries:
                    delay = min(self.policy.backoff_cap, rec.backoff * 2 ** (rec.failures - 1))
                    delay *= self._rng.uniform(0.5, 1.5)  # jitter spreads retry storms
                    self._set_state(rec, TaskState.SCHEDULED)
                    rec.node = None
                    rec.not_before = time.time() + delay
                    heapq.heappush(self._scheduled, (rec.not_before, rec.seq, rec.id))
                    self._touch(rec)
                else:
                    self._finish(rec, TaskState.FAILED, value, error)
        self.counters[verdict] += 1
        return verdict

    def _leased_to(self, node: str, task_id: str, token: int) -> TaskRecord | None:
        rec = self._tasks.get(task_id)
        if (
            rec is None
            or rec.state is not TaskState.LEASED
            or rec.attempts != token
            or rec.node != node
        ):
            return None
        return rec

    def release(self, node: str, task_id: str, token: int, started: bool = False) -> bool:
        rec = self._leased_to(node, task_id, token)
        if rec is None:
            return False
        self._unlease(node, task_id)
        if started:  # it ran and did not finish before its node stopped
            self._charge_loss(rec, node, "its node stopped under it")
        else:
            self._requeue(rec)
        return True

    def revoked(self, node: str, task_id: str, token: int) -> bool:
        rec = self._leased_to(node, task_id, token)
        if rec is None:
            return False
        self._unlease(node, task_id)
        self._finish(rec, TaskState.CANCELLED, None, "cancelled before it started")
        return True

    def _charge_loss(self, rec: TaskRecord, node: str, why: str) -> None:
        rec.lost += 1
        if rec.lost >= self.policy.max_lost:
            self._finish(rec, TaskState.DEAD, None, f"{why} {rec.lost} times")
            log.warning(
                "task %s dead-lettered: %s %d times (last on node %s)",
                rec.id,
                why,
                rec.lost,
                node,
                extra={"event": "dead_letter", "task": rec.id, "lost": rec.lost, "node": node},
            )
        else:
            self._requeue(rec)

    def node_lost(self, node: str) -> list[str]:
        held = self._by_node.pop(node, None)
        self._suspects.pop(node, None)
        if not held:
            return []
        out = []
        for tid in held:
            rec = self._tasks[tid]
            if rec.state is not TaskState.LEASED or rec.node != node:
                continue  # cancelled meanwhile
            out.append(tid)
            self._charge_loss(rec, node, "its node died under it")
        return out

    def leased_count(self, node: str) -> int:
        held = self._by_node.get(node)
        return len(held) if held else 0

    def cancel(self, ids: Iterable[str]) -> list[bool]:
        out = []
        for tid in ids:
            rec = self._tasks.get(tid)
            if rec is None or rec.state in TERMINAL or rec.state is TaskState.LEASED:
                out.append(False)  # a leased task is revoked through its node
                continue
            self._finish(rec, TaskState.CANCELLED, None, "cancelled")
            out.append(True)
        return out

    def requeue_dead(self, ids: Iterable[str]) -> list[bool]:
        out = []
        for tid in ids:
            rec = self._tasks.get(tid)
            if rec is None or rec.state is not TaskState.DEAD:
                out.append(False)
                continue
            if rec.payload is None and self._db is not None:
                row = self._db.execute(
                    "SELECT payload FROM tasks WHERE seq=?", (rec.seq,)
                ).fetchone()
                rec.payload = row[0] if row else None
            if rec.payload is None:
                out.append(False)
                continue
            rec.lost = 0
            rec.failures = 0
            rec.base = rec.attempts
            rec.error = None
            rec.result = None
            rec.expires = 0.0  # its entries in the expiry heap and dead order go stale
            self._requeue(rec)
            out.append(True)
        return out

    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        out = []
        for rec in self._tasks.values():
            if rec.state is TaskState.DEAD:
                out.append(rec.summary())
                if len(out) >= limit:
                    break
        return out

    def promote_due(self, now: float) -> int:
        n = 0
        sched = self._scheduled
        while sched and sched[0][0] <= now:
            _, seq, tid = heapq.heappop(sched)
            rec = self._tasks.get(tid)
            if rec is None or rec.state is not TaskState.SCHEDULED:
                continue
            self._requeue(rec)
            n += 1
        return n

    def purge(self, now: float, limit: int) -> int:
        tasks = self._tasks
        gone: list[TaskRecord] = []
        expiry = self._expiry
        while expiry and expiry[0][0] <= now and len(gone) < limit:
            expires, seq, tid = heapq.heappop(expiry)
            rec = tasks.get(tid)
            if rec is not None and rec.seq == seq and rec.expires == expires:
                gone.append(rec)
                del tasks[tid]
        dead_over = (
            self._counts[TaskState.DEAD]
            - sum(r.state is TaskState.DEAD for r in gone)
            - self.policy.max_dead
        )
        order = self._dead_order
        while order and len(gone) < limit:
            seq, tid, expires = order[0]
            rec = tasks.get(tid)
            if rec is not None and rec.seq == seq and rec.expires == expires:
                live_dead = rec.state is TaskState.DEAD
            else:
                live_dead = False
            if rec is not None and live_dead:
                if dead_over <= 0:
                    break
                gone.append(rec)
                del tasks[tid]
                dead_over -= 1
            order.popleft()  # purged, requeued, or died again later (a newer entry)
        for rec in gone:
            self._counts[rec.state] -= 1
            self._new.pop(rec.id, None)
            self._dirty.pop(rec.id, None)
            self._deleted.append(rec.seq)
        if gone:
            self.purged += len(gone)
            log.info(
                "purged %d finished task(s)",
                len(gone),
                extra={"event": "purged", "count": len(gone)},
            )
        return len(gone)

    def next_due(self) -> float | None:
        while self._scheduled:
            nb, _, tid = self._scheduled[0]
            rec = self._tasks.get(tid)
            if rec is not None and rec.state is TaskState.SCHEDULED:
                return nb
            heapq.heappop(self._scheduled)
        return None

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def outcome(self, task_id: str) -> tuple[TaskState, bytes | None, str | None] | None:
        rec = self._tasks.get(task_id)
        if rec is None:
            return None
        result = rec.result
        if (
            result is None
            and rec.state in (TaskState.SUCCEEDED, TaskState.FAILED)
            and self._db is not None
        ):
            row = self._db.execute("SELECT result FROM tasks WHERE seq=?", (rec.seq,)).fetchone()
            result = row[0] if row else None
        return rec.state, result, rec.error

    def forget_result(self, task_id: str) -> None:
        rec = self._tasks.get(task_id)
        if (
            rec is not None
            and self._db is not None
            and task_id not in self._new
            and task_id not in self._dirty
        ):
            rec.result = None  # committed, so the disk copy exists

    def drain_finished(self) -> list[str]:
        out, self._finished = self._finished, []
        # Purgeable only from now on: a result is never purged before it was pushed.
        tasks, expiry = self._tasks, self._expiry
        for tid in out:
            rec = tasks.get(tid)
            if rec is not None and rec.expires:
                heapq.heappush(expiry, (rec.expires, rec.seq, tid))
        return out

    def stats(self) -> dict[str, Any]:
        counts = {st.name.lower(): self._counts[st] for st in TaskState}
        return {"tasks": counts, "completions": dict(self.counters), "purged": self.purged}

    def commit(self) -> None:
        if self._db is None:
            self._new.clear()
            self._dirty.clear()
            self._deleted.clear()
            return
        if not self._new and not self._dirty and not self._deleted:
            return
        tasks = self._tasks
        db = self._db
        db.execute("BEGIN")
        try:
            if self._new:
                db.executemany(
                    f"INSERT INTO tasks ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            r.id,
                            r.seq,
                            int(r.state),
                            r.payload,
                            r.attempts,
                            r.failures,
                            r.lost,
                            r.retries,
                            r.backoff,
                            r.not_before,
                            r.base,
                            r.result,
                            r.error,
                            r.result_ttl,
                            r.expires,
                        )
                        for r in map(tasks.__getitem__, self._new)
                    ],
                )
            if self._dirty:
                db.executemany(
                    "UPDATE tasks SET state=?, attempts=?, failures=?, lost=?, not_before=?,"
                    " base=?, result=?, error=?, expires=? WHERE seq=?",
                    [
                        (
                            int(r.state),
                            r.attempts,
                            r.failures,
                            r.lost,
                            r.not_before,
                            r.base,
                            r.result,
                            r.error,
                            r.expires,
                            r.seq,
                        )
                        for r in map(tasks.__getitem__, self._dirty)
                    ],
                )
            if self._deleted:
                db.executemany("DELETE FROM tasks WHERE seq=?", [(q,) for q in self._deleted])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._new.clear()
        self._dirty.clear()
        self._deleted.clear()

    def close(self) -> None:
        if self._db is not None:
            self.commit()
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _migrate_v1(db: sqlite3.Connection, policy: Policy) -> None:
    """Move a round-1 store (``id`` as the primary key) to the current schema."""
    cols = db.execute("PRAGMA table_info(tasks)").fetchall()
    names = {name for _, name, _, _, _, _ in cols}
    if cols and "id" in names and not any(name == "id" and pk for _, name, _, _, _, pk in cols):
        # keyed by seq already, from before retention: add its columns
        if "result_ttl" not in names:
            db.execute("ALTER TABLE tasks ADD COLUMN result_ttl REAL")
        if "expires" not in names:
            db.execute("ALTER TABLE tasks ADD COLUMN expires REAL NOT NULL DEFAULT 0")
        return
    if not any(name == "id" and pk for _, name, _, _, _, pk in cols):
        return
    db.execute("BEGIN")
    db.execute("ALTER TABLE tasks RENAME TO tasks_v1")
    db.execute(_TASKS_TABLE)
    db.execute(f"INSERT INTO tasks ({_V1_COLS}) SELECT {_V1_COLS} FROM tasks_v1")
    # round 1 kept everything forever: retention starts counting now
    now = time.time()
    dead = int(TaskState.DEAD)
    ended = ",".join(str(int(st)) for st in TERMINAL if st is not TaskState.DEAD)
    db.execute(f"UPDATE tasks SET expires=? WHERE state IN ({ended})", (now + policy.result_ttl,))
    db.execute(f"UPDATE tasks SET expires=? WHERE state={dead}", (now + policy.dead_ttl,))
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
