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
from dataclasses import dataclass, field

from .. import dispatch, schedules
from ..backend import Backend
from ..dispatch import Policy
from ..schedules import Schedule, ScheduleSpec
from ..states import (
    ACCEPTED,
    CANCELLED,
    DEAD,
    DEFAULT_QUEUE,
    FAILED,
    LEASED,
    PENDING,
    SCHEDULED,
    SLOTS,
    SUCCEEDED,
    TERMINAL,
    UNKNOWN,
    Completion,
    Demand,
    Grant,
    Lease,
    Outcome,
    QueueInfo,
    Release,
    Stats,
    SubmitSpec,
    TaskInfo,
    TaskState,
    Verdict,
)
from ..telemetry import Telemetry

__all__ = ["MemoryBackend"]

log = logging.getLogger("pyqueue.cluster.store")

_new = tuple.__new__
# the dispatch policy, called (never restated) on the hot paths below
may_lease, over_cap, expires_at = dispatch.may_lease, dispatch.over_cap, dispatch.expires_at
_ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})


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
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    ready: float = 0.0  # when it last became ready to run (submitted, due, requeued from dead)
    created: float = 0.0  # when it was submitted
    started: float = 0.0  # when it was last leased

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
            self.queue,
            self.priority,
            self.created,
            self.ready,
            self.started,
            self.ended,
        )


_Entry = tuple[int, str]  # (seq, task id): a place in a queue


@dataclass(**SLOTS)
class _Queue:
    """One named queue: its waiting tasks in dispatch order, its settings.

    Per priority, fresh submits wait in a FIFO (seq only grows, so appending
    keeps the order: O(1) per submit), and tasks that come back (requeued,
    promoted when due, deferred by poison isolation) in a heap by seq, so that
    each takes its old place.  The head of a level is the smaller of the two
    heads; the head of the queue is that of its highest level.  Entries of
    tasks that left (leased, cancelled) are skipped when they reach a head.
    """

    name: str
    fresh: dict[int, collections.deque[_Entry]] = field(default_factory=dict)
    back: dict[int, list[_Entry]] = field(default_factory=dict)
    levels: list[int] = field(default_factory=list)  # heap of -priority with entries
    counts: list[int] = field(default_factory=lambda: [0] * len(TaskState))
    rate: float | None = None  # leases per second, over all nodes
    paused: bool = False
    tokens: float = 0.0
    stamp: float = 0.0  # when tokens were last counted

    def _level(self, priority: int) -> None:
        if priority not in self.fresh:
            self.fresh[priority] = collections.deque()
            self.back[priority] = []
            heapq.heappush(self.levels, -priority)

    def push_fresh(self, priority: int, entry: _Entry) -> None:
        fifo = self.fresh.get(priority)
        if fifo is None:
            self._level(priority)
            fifo = self.fresh[priority]
        fifo.append(entry)

    def push_back(self, priority: int, entry: _Entry) -> None:
        self._level(priority)
        heapq.heappush(self.back[priority], entry)

    def head(self, tasks: Mapping[str, _Task]) -> tuple[int, bool] | None:
        """(priority, from the FIFO?) of the first live entry, dropping dead ones."""
        levels = self.levels
        while levels:
            p = -levels[0]
            fresh, back = self.fresh[p], self.back[p]
            while fresh and not _live(tasks, fresh[0]):
                fresh.popleft()
            while back and not _live(tasks, back[0]):
                heapq.heappop(back)
            if fresh or back:
                return p, not back or (bool(fresh) and fresh[0][0] < back[0][0])
            heapq.heappop(levels)  # an empty level goes until a task comes again
            del self.fresh[p], self.back[p]
        return None

    def pop(self, where: tuple[int, bool]) -> _Entry:
        p, from_fifo = where
        return self.fresh[p].popleft() if from_fifo else heapq.heappop(self.back[p])

    def take(self, tasks: Mapping[str, _Task], k: int) -> list[_Entry]:
        """Pop up to ``k`` live entries in dispatch order."""
        out: list[_Entry] = []
        while len(out) < k:
            where = self.head(tasks)
            if where is None:
                break
            p, from_fifo = where
            if not from_fifo or self.back[p]:
                out.append(self.pop(where))
                continue
            # the common case, nothing came back: the FIFO in one sweep
            fresh = self.fresh[p]
            while fresh and len(out) < k:
                entry = fresh.popleft()
                if _live(tasks, entry):
                    out.append(entry)
        return out


def _live(tasks: Mapping[str, _Task], entry: _Entry) -> bool:
    """Whether ``entry`` still stands for a PENDING task (not one that left)."""
    rec = tasks.get(entry[1])
    return rec is not None and rec.state is PENDING and rec.seq == entry[0]


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
        self._queues: dict[str, _Queue] = {}
        self._schedules: dict[str, tuple[Schedule, bytes]] = {}  # id -> (schedule, payload)
        self._next_fire: float | None = None  # earliest next_fire of a running schedule
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
        self.telemetry = Telemetry()

    # -- hooks a durable store overrides ----------------------------------
    def _on_new(self, rec: _Task) -> None:
        """A record was created."""

    def _on_change(self, rec: _Task) -> None:
        """A record changed in a way that must survive a restart."""

    def _on_purge(self, rec: _Task) -> None:
        """A record was purged."""

    def _on_queue(self, q: _Queue) -> None:
        """A queue's settings changed."""

    def _on_schedule(self, schedule_id: str) -> None:
        """A schedule was declared, changed, fired or deleted."""

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
        counts = self._queues[rec.queue].counts
        counts[rec.state] -= 1
        counts[state] += 1
        rec.state = state

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue(name)
        return q

    def _wait(self, rec: _Task, fresh: bool = False) -> None:
        """Put a PENDING task in its queue, at its place (priority, then submit
        order); ``fresh``: just submitted, so it goes last among its equals."""
        q = self._queues[rec.queue]
        if fresh:
            q.push_fresh(rec.priority, (rec.seq, rec.id))
        else:
            q.push_back(rec.priority, (rec.seq, rec.id))

    def _oldest_ready(self, q: _Queue) -> float | None:
        """When the longest-waiting task became ready: the first live entry of
        each FIFO (submitted in time order), and every live returned entry."""
        oldest: float | None = None
        tasks = self._tasks
        for fifo in q.fresh.values():
            for entry in fifo:
                if _live(tasks, entry):
                    ready = tasks[entry[1]].ready
                    oldest = ready if oldest is None else min(oldest, ready)
                    break
        for back in q.back.values():
            for entry in back:
                if _live(tasks, entry):
                    ready = tasks[entry[1]].ready
                    oldest = ready if oldest is None else min(oldest, ready)
        return oldest

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
        self.telemetry.on_finished(rec.queue, state)
        if state is DEAD:
            self._dead_order.append((rec.seq, rec.id, rec.attempts))
        else:
            rec.payload = None  # only a dead task may run again
        self._on_change(rec)
        self._finished.append(rec.id)  # enters the expiry heap once drained

    def _requeue(self, rec: _Task) -> None:
        self._set_state(rec, PENDING)
        rec.node = None
        self._wait(rec)
        self._on_change(rec)

    def _unlease(self, node: str, task_id: str) -> None:
        held = self._by_node.get(node)
        if held is not None and held.pop(task_id, False):
            self._suspects[node] -= 1

    def _charge_loss(self, rec: _Task, node: str, why: str, now: float) -> None:
        rec.lost += 1
        if dispatch.dead_after_loss(self.policy, rec.lost):
            self._finish(rec, DEAD, None, f"{why} {rec.lost} times", now)
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
        if rec is None or rec.state is not LEASED or rec.attempts != token or rec.node != node:
            return None
        return rec

    def _forget(self, gone: list[_Task]) -> None:
        for rec in gone:
            self._counts[rec.state] -= 1
            self._queues[rec.queue].counts[rec.state] -= 1
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
        submitted = self.telemetry.submitted
        counts = self._counts
        on_new = self._on_new
        q: _Queue | None = None
        fifo: collections.deque[_Entry] | None = None  # q's FIFO at fifo_priority
        fifo_priority = 0
        for spec in specs:
            tid, payload, retries, backoff, not_before, ttl, queue, priority = spec
            rec = tasks.get(tid)
            if rec is None:
                seq = self._seq
                self._seq = seq + 1
                not_before = float(not_before)
                scheduled = not_before > now
                state = SCHEDULED if scheduled else PENDING
                # positional, in field order: a third of the keywords' cost per task
                # (conditionals, not max(): the same values, without a call each)
                retries = int(retries)
                backoff = float(backoff)
                priority = int(priority)
                rec = _Task(
                    tid, seq, state, payload, 0, 0, 0, retries if retries > 0 else 0,
                    backoff if backoff > 0.0 else 0.0, not_before, 0, None, None, None,
                    None if ttl is None else ttl if ttl > 0.0 else 0.0, 0.0, 0.0, queue,
                    priority, not_before if not_before > now else now, now, 0.0,
                )  # fmt: skip
                tasks[tid] = rec
                submitted[queue] = submitted.get(queue, 0) + 1
                counts[state] += 1
                if q is None or q.name != queue:  # a batch is mostly of one queue
                    q = self._queue(queue)
                    fifo = None
                q.counts[state] += 1
                on_new(rec)
                if scheduled:
                    heapq.heappush(self._scheduled, (not_before, seq, tid))
                else:
                    # q.push_fresh, its FIFO kept while the batch stays at one level
                    # (nothing drops a level during a submit)
                    if fifo is None or fifo_priority != priority:
                        fifo = q.fresh.get(priority)
                        if fifo is None:
                            q._level(priority)
                            fifo = q.fresh[priority]
                        fifo_priority = priority
                    fifo.append((seq, tid))
            out.append(rec.state)
        return out

    def lease(self, demands: Mapping[str, Demand], now: float) -> dict[str, Grant]:
        out: dict[str, Grant] = {}
        for node, demand in demands.items():
            held = self._by_node.setdefault(node, {})
            leases = self._lease_one(node, held, demand, now)
            if leases:
                out[node] = Grant(leases, len(held))
        return out

    def _can_grant(self, q: _Queue, now: float) -> tuple[int, bool] | None:
        """Where ``q``'s next task is, if it can grant a lease now."""
        if q.paused:
            return None
        where = q.head(self._tasks)
        if where is not None and q.rate is not None:
            q.tokens = dispatch.refill(q.tokens, q.stamp, q.rate, now)
            q.stamp = now
            if q.tokens < 1.0:
                return None
        return where

    def _lease_one(
        self, node: str, held: dict[str, bool], demand: Demand, now: float
    ) -> list[Lease]:
        n = demand.capacity - len(held)
        if n <= 0:
            return []
        queues = self._queues
        served = [(queues[name], w) for name, w in demand.queues.items() if name in queues]
        if not served:
            return []
        tasks = self._tasks
        policy = self.policy
        telemetry = self.telemetry
        suspects = self._suspects.get(node, 0)
        out: list[Lease] = []
        deferred: list[tuple[_Queue, int, _Entry]] = []
        single = served[0][0] if len(served) == 1 else None
        while len(out) < n:
            if single is not None:  # the common case: no choice to make
                q = single
                if self._can_grant(q, now) is None:
                    break
                # a rate-limited queue spends a token per lease: one at a time
                entries = q.take(tasks, 1 if q.rate is not None else n - len(out))
            else:
                heads = [(q, w, self._can_grant(q, now)) for q, w in served]
                eligible = [(q.name, w) for q, w, at in heads if at is not None]
                name = dispatch.choose_queue(eligible, demand.strict, self._rng)
                if name is None:
                    break
                q, where = next((hq, at) for hq, _, at in heads if hq.name == name)
                entries = [q.pop(where)]  # type: ignore[arg-type]
            if not entries:
                break
            waited = telemetry.histogram(telemetry.wait, q.name)
            counts, q_counts = self._counts, q.counts
            for entry in entries:
                tid = entry[1]
                rec = tasks[tid]
                suspect = rec.lost > 0
                if not may_lease(suspect, suspects):
                    deferred.append((q, rec.priority, entry))  # keeps its place for another node
                    continue
                attempts = rec.attempts
                if over_cap(policy, attempts, rec.base):
                    why = f"hard cap of {policy.max_attempts} attempts reached"
                    self._finish(rec, DEAD, None, why, now)
                    continue
                if q.rate is not None:
                    q.tokens -= 1.0
                suspects += suspect
                # Not announced to _on_change: a restart requeues leases anyway, and
                # the attempt count is stored with the completion (one write per task).
                rec.attempts = attempts = attempts + 1
                # _set_state(rec, LEASED) inline: the entry is live, so rec is PENDING
                counts[PENDING] -= 1
                counts[LEASED] += 1
                q_counts[PENDING] -= 1
                q_counts[LEASED] += 1
                rec.state = LEASED
                rec.node = node
                rec.started = now
                waited_s = now - rec.ready
                waited.observe(waited_s if waited_s > 0.0 else 0.0)
                held[tid] = suspect
                out.append(_new(Lease, (tid, attempts, rec.payload)))
        self._suspects[node] = suspects
        for q, priority, entry in deferred:
            q.push_back(priority, entry)
        return out

    def complete(self, node: str, rows: Sequence[Completion], now: float) -> list[Verdict]:
        out: list[Verdict] = []
        append = out.append
        tasks = self._tasks
        by_node = self._by_node
        counts = self._counts
        finished = self._finished
        on_change = self._on_change
        policy = self.policy
        telemetry = self.telemetry
        on_finished = telemetry.on_finished
        run_h = telemetry.run
        accepted = 0
        for row in rows:
            tid, token, ok, value, _, cancelled, run_s = row
            rec = tasks.get(tid)
            if rec is None:
                verdict = UNKNOWN
            elif rec.state is LEASED and rec.attempts == token:
                # Only the current lease is unleased: a stale completion (from
                # before a reconnect) must not free the slot of its successor.
                # The lease's own completion is what fence() would accept.
                lessee = rec.node or node
                held = by_node.get(lessee)
                if held is not None and held.pop(tid, False):
                    self._suspects[lessee] -= 1
                verdict = ACCEPTED
                if not ok or cancelled:
                    self._accept(rec, row, now)
                else:  # the common case, _accept and _finish(SUCCEEDED) inline
                    queue = rec.queue
                    if run_s is not None:
                        telemetry.histogram(run_h, queue).observe(run_s)
                    counts[LEASED] -= 1
                    counts[SUCCEEDED] += 1
                    qcounts = self._queues[queue].counts
                    qcounts[LEASED] -= 1
                    qcounts[SUCCEEDED] += 1
                    rec.state = SUCCEEDED
                    rec.result = value
                    rec.error = None
                    rec.node = None
                    rec.ended = now
                    rec.expires = expires_at(policy, SUCCEEDED, rec.result_ttl, now)
                    on_finished(queue, SUCCEEDED)
                    rec.payload = None  # only a dead task may run again
                    on_change(rec)
                    finished.append(tid)  # enters the expiry heap once drained
                accepted += 1
                append(ACCEPTED)
                continue
            else:
                verdict = dispatch.fence(rec.state, rec.attempts, token)
                if verdict is ACCEPTED:
                    self._accept(rec, row, now)
            self._verdicts[verdict] += 1
            append(verdict)
        if accepted:
            self._verdicts[ACCEPTED] += accepted
        return out

    def _accept(self, rec: _Task, row: Completion, now: float) -> None:
        if row.run_s is not None:
            telemetry = self.telemetry
            telemetry.histogram(telemetry.run, rec.queue).observe(row.run_s)
        if row.cancelled:  # terminated on request: TaskCancelled was raised in it
            self._finish(rec, CANCELLED, None, "cancelled while running", now)
        elif row.ok:
            self._finish(rec, SUCCEEDED, row.value, None, now)
        else:
            rec.failures += 1
            delay = dispatch.retry_delay(
                self.policy, rec.retries, rec.backoff, rec.failures, self._rng
            )
            if delay is None:
                self._finish(rec, FAILED, row.value, row.error, now)
            else:
                self._set_state(rec, SCHEDULED)
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
        self._finish(rec, CANCELLED, None, "cancelled before it started", now)
        return True

    def node_lost(self, node: str, now: float) -> list[str]:
        held = self._by_node.pop(node, None)
        self._suspects.pop(node, None)
        if not held:
            return []
        out = []
        for tid in held:
            rec = self._tasks[tid]
            if rec.state is not LEASED or rec.node != node:
                continue  # cancelled meanwhile
            out.append(tid)
            self._charge_loss(rec, node, "its node died under it", now)
        self.telemetry.leases_expired += len(out)
        return out

    def cancel(self, ids: Iterable[str], now: float) -> list[bool]:
        out = []
        for tid in ids:
            rec = self._tasks.get(tid)
            if rec is None or rec.state in TERMINAL or rec.state is LEASED:
                out.append(False)  # a leased task is revoked through its node
                continue
            self._finish(rec, CANCELLED, None, "cancelled", now)
            out.append(True)
        return out

    def requeue_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        out = []
        for tid in ids:
            rec = self._tasks.get(tid)
            payload = None
            if rec is not None and rec.state is DEAD:
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
            rec.ready = now
            self._requeue(rec)
            out.append(True)
        return out

    def delete_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        out = []
        gone: list[_Task] = []
        tasks = self._tasks
        waiting = set(self._finished)  # not drained: its clients are not told yet
        for tid in ids:  # a repeated id finds nothing the second time
            rec = tasks.get(tid)
            if rec is None or rec.state is not DEAD or tid in waiting:
                out.append(False)
                continue
            del tasks[tid]  # its dead-order and expiry entries go stale
            gone.append(rec)
            out.append(True)
        self._forget(gone)
        return out

    def _live_dead(self, entry: tuple[int, str, int]) -> _Task | None:
        seq, tid, attempts = entry
        rec = self._tasks.get(tid)
        if rec is not None and rec.seq == seq and rec.attempts == attempts and rec.state is DEAD:
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
            if rec.state is SUCCEEDED or rec.state is FAILED:
                value = self._result_of(rec)
            out.append(_new(Outcome, (tid, rec.state, value, rec.error)))
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
            if rec is None or rec.state is not SCHEDULED or rec.seq != seq:
                continue
            rec.ready = rec.not_before
            self._requeue(rec)
            n += 1
        return n

    def next_due(self) -> float | None:
        sched = self._scheduled
        while sched:
            nb, seq, tid = sched[0]
            rec = self._tasks.get(tid)
            if rec is not None and rec.state is SCHEDULED and rec.not_before == nb:
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
        dead_over = self._counts[DEAD] - sum(r.state is DEAD for r in gone) - self.policy.max_dead
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
            if (dead and rec.state is DEAD) or (
                finished_before is not None and rec.state in _ENDED and rec.ended < finished_before
            ):
                gone.append(rec)
        for rec in gone:
            del self._tasks[rec.id]
        self._forget(gone)
        return len(gone)

    def configure_queue(
        self, name: str, *, rate_limit: float | None, paused: bool, now: float
    ) -> QueueInfo:
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0 per second or None, not {rate_limit!r}")
        q = self._queue(name)
        if rate_limit != q.rate:
            q.rate = rate_limit
            q.tokens = 0.0 if rate_limit is None else dispatch.bucket_capacity(rate_limit)
            q.stamp = now
        q.paused = bool(paused)
        self._on_queue(q)
        return self._queue_info(q)

    def _queue_info(self, q: _Queue) -> QueueInfo:
        return QueueInfo(
            q.name,
            q.rate,
            q.paused,
            {st: q.counts[st] for st in TaskState},
            self._oldest_ready(q),
        )

    def queues(self) -> list[QueueInfo]:
        return [self._queue_info(q) for _, q in sorted(self._queues.items())]

    # -- schedules --------------------------------------------------------------
    def put_schedule(self, spec: ScheduleSpec, now: float) -> Schedule:
        schedules.check(spec)
        old = self._schedules.get(spec.id)
        sch = schedules.declared(None if old is None else old[0], spec, now)
        self._set_schedule(sch, spec.payload)
        return sch

    def _set_schedule(self, sch: Schedule, payload: bytes) -> None:
        self._schedules[sch.id] = (sch, payload)
        self._on_schedule(sch.id)
        self._recount_fires()

    def _recount_fires(self) -> None:
        fires = [s.next_fire for s, _ in self._schedules.values() if s.next_fire is not None]
        self._next_fire = min(fires) if fires else None

    def schedules(self) -> list[Schedule]:
        return [s for _, (s, _) in sorted(self._schedules.items())]

    def pause_schedule(self, schedule_id: str, paused: bool, now: float) -> Schedule | None:
        got = self._schedules.get(schedule_id)
        if got is None:
            return None
        sch, payload = got
        sch = schedules.paused_as(sch, paused, now)
        self._set_schedule(sch, payload)
        return sch

    def delete_schedule(self, schedule_id: str) -> bool:
        if self._schedules.pop(schedule_id, None) is None:
            return False
        self._on_schedule(schedule_id)
        self._recount_fires()
        return True

    def fire_schedules(self, now: float) -> list[str]:
        if self._next_fire is None or now < self._next_fire:
            return []
        fired: list[str] = []
        for sch, payload in list(self._schedules.values()):
            if sch.next_fire is None or sch.next_fire > now:
                continue
            times, nxt = schedules.due_fires(sch, now)
            ids = [schedules.fire_id(sch.id, t) for t in times]
            self.submit(
                [SubmitSpec(i, payload, queue=sch.queue, priority=sch.priority) for i in ids],
                now,
            )
            fired += ids
            last = times[-1] if times else sch.last_fire
            self._set_schedule(sch._replace(next_fire=nxt, last_fire=last), payload)
        return fired

    def next_ready(self, now: float) -> float | None:
        due = self.next_due()
        if self._next_fire is not None:
            due = self._next_fire if due is None else min(due, self._next_fire)
        for q in self._queues.values():
            if q.rate is None or q.paused or q.head(self._tasks) is None:
                continue
            q.tokens = dispatch.refill(q.tokens, q.stamp, q.rate, now)
            q.stamp = now
            if q.tokens >= 1.0:
                continue  # nothing waits on the clock: it waits for a node
            at = dispatch.token_at(q.tokens, q.stamp, q.rate)
            due = at if due is None else min(due, at)
        return due

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
