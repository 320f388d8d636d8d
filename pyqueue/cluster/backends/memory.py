"""The in-memory store: every task in a dict, queues as heaps.

Nothing survives the process.  It is the default of a coordinator started
without a store, and the dispatch engine the SQLite store writes through
from: :class:`~pyqueue.cluster.backends.sqlite.SQLiteBackend` subclasses it and
overrides the ``_on_*`` hooks, which are the only places a change of a record
is announced.
"""

from __future__ import annotations

import collections
import heapq
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .. import dispatch
from ..backend import Backend
from ..dispatch import Policy
from ..states import (
    SLOTS,
    TERMINAL,
    Completion,
    Grant,
    Lease,
    Outcome,
    Release,
    Stats,
    SubmitSpec,
    TaskInfo,
    TaskState,
    Verdict,
)

__all__ = ["MemoryBackend"]

log = logging.getLogger("pyqueue.cluster.store")

_ENDED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


@dataclass(**SLOTS)
class _Task:
    """Everything a store keeps of one task (private: the contract speaks TaskInfo)."""

    id: str
    seq: int  # queue position (submit order); the SQLite rowid
    state: TaskState
    payload: bytes | None
    attempts: int = 0
    failures: int = 0
    lost: int = 0
    retries: int = 0
    backoff: float = 0.0
    not_before: float = 0.0
    base: int = 0  # attempts at the last requeue from the dead letters
    node: str | None = None
    result: bytes | None = None
    error: str | None = None
    result_ttl: float | None = None  # its own retention, seconds (None: the policy's)
    expires: float = 0.0  # when its finished record may be purged (0: not finished)
    ended: float = 0.0  # when it finished (0: not finished)

    def info(self) -> TaskInfo:
        return TaskInfo(
            self.id,
            self.state,
            self.attempts,
            self.failures,
            self.lost,
            self.node,
            self.error,
            self.expires,
        )


class MemoryBackend(Backend):
    """Dispatch state in memory (see the :class:`~pyqueue.cluster.backend.Backend` contract).

    Parameters
    ----------
    policy : Policy, optional
        Retry, dead-letter and retention limits.
    seed : int, optional
        Seeds the backoff jitter.
    """

    def __init__(self, policy: Policy | None = None, *, seed: int | None = None) -> None:
        self.policy = policy or Policy()
        self._rng = random.Random(seed)
        self._tasks: dict[str, _Task] = {}
        self._pending: list[tuple[int, str]] = []  # heap of (seq, id); stale entries skipped
        self._scheduled: list[tuple[float, int, str]] = []  # heap of (not_before, seq, id)
        self._by_node: dict[str, dict[str, bool]] = {}  # node -> {task id: suspect?}
        self._suspects: dict[str, int] = {}  # node -> suspects it holds (at most 1)
        self._finished: list[str] = []  # ended since the last drain
        self._counts = [0] * len(TaskState)  # tasks per state, kept as they change
        self._expiry: list[tuple[float, int, str]] = []  # heap of (expires, seq, id), drained only
        # dead tasks in the order they died: (seq, id, attempts) tells a death from a
        # later one of the same task (dying again takes at least one more lease)
        self._dead_order: collections.deque[tuple[int, str, int]] = collections.deque()
        self._seq = 0
        self._verdicts = dict.fromkeys(Verdict, 0)
        self._purged = 0

    # -- hooks a durable store overrides ----------------------------------
    def _on_new(self, rec: _Task) -> None:
        """A record was created."""

    def _on_change(self, rec: _Task) -> None:
        """A record changed in a way that must survive a restart."""

    def _on_purge(self, rec: _Task) -> None:
        """A record was purged."""

    def _payload_of(self, rec: _Task) -> bytes | None:
        """The payload of a dead task about to be requeued."""
        return rec.payload

    def _result_of(self, rec: _Task) -> bytes | None:
        """The result bytes of an ended task, for delivery."""
        return rec.result

    # -- transitions --------------------------------------------------------
    def _set_state(self, rec: _Task, state: TaskState) -> None:
        counts = self._counts
        counts[rec.state] -= 1
        counts[state] += 1
        rec.state = state

    def _finish(
        self,
        rec: _Task,
        state: TaskState,
        result: bytes | None,
        error: str | None,
        now: float,
    ) -> None:
        self._set_state(rec, state)
        rec.result = result
        rec.error = error
        rec.node = None
        rec.ended = now
        rec.expires = dispatch.expires_at(self.policy, state, rec.result_ttl, now)
        if state is TaskState.DEAD:
            self._dead_order.append((rec.seq, rec.id, rec.attempts))
        else:
            rec.payload = None  # only a dead task may run again
        self._on_change(rec)
        self._finished.append(rec.id)  # enters the expiry heap once drained

    def _requeue(self, rec: _Task) -> None:
        self._set_state(rec, TaskState.PENDING)
        rec.node = None
        heapq.heappush(self._pending, (rec.seq, rec.id))
        self._on_change(rec)

    def _unlease(self, node: str, task_id: str) -> None:
        held = self._by_node.get(node)
        if held is not None and held.pop(task_id, False):
            self._suspects[node] -= 1

    def _charge_loss(self, rec: _Task, node: str, why: str, now: float) -> None:
        rec.lost += 1
        if dispatch.dead_after_loss(self.policy, rec.lost):
            self._finish(rec, TaskState.DEAD, None, f"{why} {rec.lost} times", now)
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

    def _leased_to(self, node: str, task_id: str, token: int) -> _Task | None:
        rec = self._tasks.get(task_id)
        if (
            rec is None
            or rec.state is not TaskState.LEASED
            or rec.attempts != token
            or rec.node != node
        ):
            return None
        return rec

    def _forget(self, gone: list[_Task]) -> None:
        for rec in gone:
            self._counts[rec.state] -= 1
            self._on_purge(rec)
        if gone:
            self._purged += len(gone)
            log.info(
                "purged %d finished task(s)",
                len(gone),
                extra={"event": "purged", "count": len(gone)},
            )

    # -- Backend --------------------------------------------------------------
    def submit(self, specs: Iterable[SubmitSpec], now: float) -> list[TaskState]:
        out = []
        tasks = self._tasks
        for spec in specs:
            rec = tasks.get(spec.id)
            if rec is None:
                seq = self._seq
                self._seq += 1
                scheduled = spec.not_before > now
                rec = _Task(
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
                self._on_new(rec)
                if scheduled:
                    heapq.heappush(self._scheduled, (rec.not_before, seq, spec.id))
                else:
                    self._pending.append((seq, spec.id))  # seq only grows: the heap order holds
            out.append(rec.state)
        return out

    def lease(self, capacities: Mapping[str, int], now: float) -> dict[str, Grant]:
        out: dict[str, Grant] = {}
        for node, capacity in capacities.items():
            held = self._by_node.setdefault(node, {})
            leases = self._lease_one(node, held, capacity - len(held), now)
            if leases:
                out[node] = Grant(leases, len(held))
        return out

    def _lease_one(self, node: str, held: dict[str, bool], n: int, now: float) -> list[Lease]:
        pending = self._pending
        if n <= 0 or not pending:
            return []
        tasks = self._tasks
        policy = self.policy
        suspects = self._suspects.get(node, 0)
        out: list[Lease] = []
        deferred: list[tuple[int, str]] = []
        while pending and len(out) < n:
            seq, tid = heapq.heappop(pending)
            rec = tasks.get(tid)
            if rec is None or rec.state is not TaskState.PENDING or rec.seq != seq:
                continue  # stale heap entry (cancelled, already leased, ...)
            suspect = rec.lost > 0
            if not dispatch.may_lease(suspect, suspects):
                deferred.append((seq, tid))
                continue
            if dispatch.over_cap(policy, rec.attempts, rec.base):
                cap = policy.max_attempts
                self._finish(rec, TaskState.DEAD, None, f"hard cap of {cap} attempts reached", now)
                continue
            suspects += suspect
            # Not announced to _on_change: a restart requeues leases anyway, and
            # the attempt count is stored with the completion (one write per task).
            rec.attempts += 1
            self._set_state(rec, TaskState.LEASED)
            rec.node = node
            held[tid] = suspect
            out.append(Lease(tid, rec.attempts, rec.payload))  # type: ignore[arg-type]
        self._suspects[node] = suspects
        for item in deferred:
            heapq.heappush(pending, item)
        return out

    def complete(self, node: str, rows: Sequence[Completion], now: float) -> list[Verdict]:
        out = []
        tasks = self._tasks
        verdicts = self._verdicts
        for row in rows:
            rec = tasks.get(row.id)
            if rec is None:
                verdict = Verdict.UNKNOWN
            else:
                if rec.state is TaskState.LEASED and rec.attempts == row.token:
                    # only the current lease is unleased: a stale completion (from
                    # before a reconnect) must not free the slot of its successor
                    self._unlease(rec.node or node, row.id)
                verdict = dispatch.fence(rec.state, rec.attempts, row.token)
                if verdict is Verdict.ACCEPTED:
                    self._accept(rec, row, now)
            verdicts[verdict] += 1
            out.append(verdict)
        return out

    def _accept(self, rec: _Task, row: Completion, now: float) -> None:
        if row.cancelled:  # terminated on request: TaskCancelled was raised in it
            self._finish(rec, TaskState.CANCELLED, None, "cancelled while running", now)
        elif row.ok:
            self._finish(rec, TaskState.SUCCEEDED, row.value, None, now)
        else:
            rec.failures += 1
            delay = dispatch.retry_delay(
                self.policy, rec.retries, rec.backoff, rec.failures, self._rng
            )
            if delay is None:
                self._finish(rec, TaskState.FAILED, row.value, row.error, now)
            else:
                self._set_state(rec, TaskState.SCHEDULED)
                rec.node = None
                rec.not_before = now + delay
                heapq.heappush(self._scheduled, (rec.not_before, rec.seq, rec.id))
                self._on_change(rec)

    def release(self, node: str, rows: Sequence[Release], now: float) -> list[bool]:
        out = []
        for row in rows:
            rec = self._leased_to(node, row.id, row.token)
            out.append(rec is not None)
            if rec is None:
                continue
            self._unlease(node, row.id)
            if row.started:  # it ran and did not finish before its node stopped
                self._charge_loss(rec, node, "its node stopped under it", now)
            else:
                self._requeue(rec)
        return out

    def revoked(self, node: str, task_id: str, token: int, now: float) -> bool:
        rec = self._leased_to(node, task_id, token)
        if rec is None:
            return False
        self._unlease(node, task_id)
        self._finish(rec, TaskState.CANCELLED, None, "cancelled before it started", now)
        return True

    def node_lost(self, node: str, now: float) -> list[str]:
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
            self._charge_loss(rec, node, "its node died under it", now)
        return out

    def cancel(self, ids: Iterable[str], now: float) -> list[bool]:
        out = []
        for tid in ids:
            rec = self._tasks.get(tid)
            if rec is None or rec.state in TERMINAL or rec.state is TaskState.LEASED:
                out.append(False)  # a leased task is revoked through its node
                continue
            self._finish(rec, TaskState.CANCELLED, None, "cancelled", now)
            out.append(True)
        return out

    def requeue_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        out = []
        for tid in ids:
            rec = self._tasks.get(tid)
            payload = None
            if rec is not None and rec.state is TaskState.DEAD:
                payload = self._payload_of(rec)
            if rec is None or payload is None:
                out.append(False)
                continue
            rec.payload = payload
            rec.lost = 0
            rec.failures = 0
            rec.base = rec.attempts
            rec.error = None
            rec.result = None
            rec.ended = 0.0
            rec.expires = 0.0  # its entries in the expiry heap and dead order go stale
            self._requeue(rec)
            out.append(True)
        return out

    def _live_dead(self, entry: tuple[int, str, int]) -> _Task | None:
        seq, tid, attempts = entry
        rec = self._tasks.get(tid)
        if (
            rec is not None
            and rec.seq == seq
            and rec.attempts == attempts
            and rec.state is TaskState.DEAD
        ):
            return rec
        return None

    def dead(self, limit: int = 100) -> list[TaskInfo]:
        out: list[TaskInfo] = []
        for entry in self._dead_order:
            if len(out) >= limit:
                break
            rec = self._live_dead(entry)
            if rec is not None:
                out.append(rec.info())
        return out

    def info(self, ids: Sequence[str]) -> list[TaskInfo | None]:
        tasks = self._tasks
        return [None if (rec := tasks.get(tid)) is None else rec.info() for tid in ids]

    def outcomes(self, ids: Sequence[str]) -> list[Outcome | None]:
        out: list[Outcome | None] = []
        tasks = self._tasks
        for tid in ids:
            rec = tasks.get(tid)
            if rec is None:
                out.append(None)
                continue
            value = None
            if rec.state is TaskState.SUCCEEDED or rec.state is TaskState.FAILED:
                value = self._result_of(rec)
            out.append(Outcome(tid, rec.state, value, rec.error))
        return out

    def drain_finished(self) -> list[str]:
        out, self._finished = self._finished, []
        # Purgeable only from now on: a result is never purged before it was pushed.
        tasks, expiry = self._tasks, self._expiry
        for tid in out:
            rec = tasks.get(tid)
            if rec is not None and rec.expires:
                heapq.heappush(expiry, (rec.expires, rec.seq, tid))
        return out

    def promote_due(self, now: float) -> int:
        n = 0
        sched = self._scheduled
        while sched and sched[0][0] <= now:
            _, seq, tid = heapq.heappop(sched)
            rec = self._tasks.get(tid)
            if rec is None or rec.state is not TaskState.SCHEDULED or rec.seq != seq:
                continue
            self._requeue(rec)
            n += 1
        return n

    def next_due(self) -> float | None:
        sched = self._scheduled
        while sched:
            nb, seq, tid = sched[0]
            rec = self._tasks.get(tid)
            if rec is not None and rec.state is TaskState.SCHEDULED and rec.not_before == nb:
                return nb
            heapq.heappop(sched)
        return None

    def expire(self, now: float, limit: int) -> int:
        tasks = self._tasks
        gone: list[_Task] = []
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
        undrained = set(self._finished) if dead_over > 0 else set()
        while order and len(gone) < limit:
            rec = self._live_dead(order[0])
            if rec is not None:
                if dead_over <= 0 or rec.id in undrained:
                    break  # within max_dead, or not pushed to its clients yet
                gone.append(rec)
                del tasks[rec.id]
                dead_over -= 1
            order.popleft()  # purged, requeued, or died again later (a newer entry)
        self._forget(gone)
        return len(gone)

    def purge(self, now: float, *, finished_before: float | None, dead: bool, limit: int) -> int:
        # An operator's request, rare: one pass over the records is fine here
        # (retention, which runs all the time, uses the expiry heap instead).
        waiting = set(self._finished)  # not drained yet: its result may not be pushed
        gone: list[_Task] = []
        for rec in self._tasks.values():
            if len(gone) >= limit:
                break
            if rec.id in waiting:
                continue
            if (dead and rec.state is TaskState.DEAD) or (
                finished_before is not None and rec.state in _ENDED and rec.ended < finished_before
            ):
                gone.append(rec)
        for rec in gone:
            del self._tasks[rec.id]
        self._forget(gone)
        return len(gone)

    def stats(self) -> Stats:
        return Stats(
            tasks={st: self._counts[st] for st in TaskState},
            completions=dict(self._verdicts),
            purged=self._purged,
            held={node: len(held) for node, held in self._by_node.items()},
        )

    def commit(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""
