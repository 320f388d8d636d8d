"""The store contract: what the coordinator may ask of any backend.

A backend holds the tasks, their leases and their counters.  The coordinator
drives it from one thread (its event loop) and knows nothing of how it stores;
the store knows nothing of sockets or the wire.  Every backend passes the same
suite, ``tests/cluster/backend_contract.py``, which uses only what is written
here.  The policy every store applies the same way (poison isolation, backoff,
the attempt cap, fencing, retention) is in :mod:`pyqueue.cluster.dispatch`.

Rules for every operation
-------------------------
* The clock is passed in (``now``, wall-clock seconds): a store never reads it.
* Each call is atomic: after it returns, either all of its effect is visible
  to the next call or (it raised) none of it is.  An exception from a store is
  an internal error, never the fault of the peer that caused the call.
* Durability is separate: changes become durable only in :meth:`commit`, and
  the coordinator acknowledges nothing before that (group commit).  A store
  with no durability (memory) makes ``commit`` a no-op.
* Batch-shaped: what the coordinator needs for one flush is one call
  (:meth:`lease` for every node at once, :meth:`complete` for a whole DONE).

Counters
--------
``attempts`` counts leases (it is also the lease token, so it only grows; a
durable store may count one more per restart, see Tokens);
``failures`` counts times the task raised; ``lost`` counts times its node
died (or stopped) under it; ``base`` is ``attempts`` at the last requeue from
the dead letters, and the hard cap counts ``attempts - base``.
:class:`~pyqueue.cluster.states.Stats` holds the per-state counts, the
per-verdict completion counts and the number purged.

Tokens
------
A lease token that reached a node is never issued again, even across a
crash.  The coordinator sends leases only after the commit that follows them,
so a store need only make sure that a token issued before a commit is never
issued after a restart (the SQLite store counts one more attempt for each
task that was waiting when it stopped, since its leases are not written).

Telemetry
---------
Every store has a ``telemetry``
(:class:`~pyqueue.cluster.telemetry.Telemetry`) that it feeds from its own
transitions, since it alone knows each task's queue and times: a new task in
:meth:`submit`; each task that reaches a terminal state, whatever the
operation; each lease's wait (``now - ready``); the ``run_s`` of each accepted
completion; the leases :meth:`node_lost` ends.  Counts since the store was
opened in this process; not durable.

Timestamps
----------
:class:`~pyqueue.cluster.states.TaskInfo` carries ``created`` (submitted),
``ready`` (last became ready to run), ``started`` (last leased) and ``ended``,
wall-clock as passed in (0.0: not yet).  ``started`` may be lost with a
lease that was never committed with a completion.

Finished, not drained
---------------------
Whether a finished task was drained is not durable: after a restart, the
clients waiting on it ask again (WAIT) and get its outcome, unless its
retention ran out meanwhile.

Thread safety
-------------
None required: one thread calls a backend.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence

from .dispatch import Policy
from .schedules import Schedule, ScheduleSpec
from .states import (
    Completion,
    Demand,
    Grant,
    Outcome,
    QueueInfo,
    Release,
    Stats,
    SubmitSpec,
    TaskInfo,
    TaskState,
    Verdict,
)
from .telemetry import Telemetry

__all__ = ["Backend"]


class Backend(abc.ABC):
    """Store, dispatch and lease state behind the coordinator (see the module doc)."""

    policy: Policy
    telemetry: Telemetry
    #: Exceptions that mean the store is out of reach for now (a networked
    #: store restarting), not a bug: the coordinator logs them in one line,
    #: reports not ready, and retries the operation with backoff.
    unavailable: tuple[type[BaseException], ...] = ()

    @abc.abstractmethod
    def submit(self, specs: Iterable[SubmitSpec], now: float) -> list[TaskState]:
        """Add tasks, in order; an id that exists already is left as it is.

        A new task is SCHEDULED when ``not_before > now``, else PENDING, with
        every counter 0, in its ``queue`` with its ``priority``.  An existing
        id (any state, until it is purged) is untouched: submit is idempotent.
        Returns each task's state after the call.  A task's queue position is
        its submit order.
        """

    @abc.abstractmethod
    def lease(self, demands: Mapping[str, Demand], now: float) -> dict[str, Grant]:
        """Lease ready tasks to nodes: each node up to ``capacity - held``.

        Only from the queues a node serves.  Each grant picks one of them
        that can grant now (it has a PENDING task, is not paused, and has a
        token under its rate limit) by :func:`~pyqueue.cluster.dispatch.choose_queue`
        (weighted random, or strict by weight); within the queue, the highest
        priority first, then the lowest queue position (submit order).  A
        rate-limited queue spends one token per lease (the bucket:
        :func:`~pyqueue.cluster.dispatch.refill`).  Each lease adds 1 to
        ``attempts``, whose new value is the lease's token.  Poison isolation:
        a node holds at most one task with ``lost > 0`` at a time; others are
        skipped for it, keeping their positions.  A task whose
        ``attempts - base`` reached the hard cap is dead-lettered instead of
        leased.  Nodes with nothing granted may be left out of the result.
        """

    @abc.abstractmethod
    def complete(self, node: str, rows: Sequence[Completion], now: float) -> list[Verdict]:
        """Record a node's completions; one verdict per row, in order.

        ACCEPTED when the task is LEASED with that token, or PENDING with it
        (its node was declared lost, or released it, and nobody leased it
        again: the work was done, so it counts): then ``ok`` makes
        it SUCCEEDED with ``value``; ``cancelled`` makes it CANCELLED; else
        ``failures`` + 1 and, with retries left, it is SCHEDULED after a
        backoff (:func:`~pyqueue.cluster.dispatch.retry_delay`), or FAILED with
        ``value`` (the exception) and ``error``.  DUPLICATE when it had ended;
        STALE when a newer lease superseded the token; UNKNOWN for an id the
        store does not hold.  A task dead-lettered meanwhile has ended: its late
        completion is DUPLICATE (its clients may have been told it is dead).
        Only the current lease's completion frees the node's slot.
        """

    @abc.abstractmethod
    def release(self, node: str, rows: Sequence[Release], now: float) -> list[bool]:
        """Give leased tasks back; True for each one still leased to ``node`` with that token.

        A released task is PENDING again at its old queue position; with
        ``started`` it also counts one loss (and may be dead-lettered, as in
        :meth:`node_lost`).
        """

    @abc.abstractmethod
    def revoked(self, node: str, task_id: str, token: int, now: float) -> bool:
        """The node confirmed it dropped a leased task before it started: CANCELLED.

        False (and no change) unless the task is leased to ``node`` with ``token``.
        """

    @abc.abstractmethod
    def node_lost(self, node: str, now: float) -> list[str]:
        """The node died or disconnected: each task leased to it gets ``lost`` + 1.

        It is PENDING again at its old position, or DEAD once ``lost`` reaches
        ``policy.max_lost``.  Returns the ids that were leased to it.
        """

    @abc.abstractmethod
    def cancel(self, ids: Iterable[str], now: float) -> list[bool]:
        """Cancel tasks that are SCHEDULED or PENDING; True for each one cancelled.

        A LEASED task is not touched (False): it is cancelled only once its node
        confirms it had not started (:meth:`revoked`) or was terminated
        (:meth:`complete` with ``cancelled``).  An ended or unknown one: False.
        """

    @abc.abstractmethod
    def requeue_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        """Move DEAD tasks back to PENDING (at their old position); True for each moved.

        ``lost`` and ``failures`` restart at 0 and ``base`` becomes
        ``attempts``, so tokens keep growing while the hard cap counts afresh.
        """

    @abc.abstractmethod
    def delete_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        """Purge DEAD tasks by id (an operator's choice); True for each one purged.

        False for an id that is not DEAD, unknown, or dead but not drained yet
        (its clients have not been told).  Counted in ``Stats.purged``.
        """

    @abc.abstractmethod
    def dead(self, limit: int = 100) -> list[TaskInfo]:
        """Dead-lettered tasks, oldest death first, at most ``limit``."""

    @abc.abstractmethod
    def info(self, ids: Sequence[str]) -> list[TaskInfo | None]:
        """What is known of each task (None: unknown or purged)."""

    @abc.abstractmethod
    def outcomes(self, ids: Sequence[str]) -> list[Outcome | None]:
        """State, result and error of each task, for delivery (None: unknown).

        ``value`` is None unless it SUCCEEDED or FAILED.  Reading an outcome
        does not change it; a durable store may drop a cached copy of the
        result once it has been read (it stays readable from the store).
        """

    @abc.abstractmethod
    def drain_finished(self) -> list[str]:
        """Ids of tasks that ended since the last call, in the order they ended.

        A finished task's retention starts counting for purge only once it
        has been drained, so no result is purged before it could be pushed.
        """

    @abc.abstractmethod
    def promote_due(self, now: float) -> int:
        """SCHEDULED tasks with ``not_before <= now`` become PENDING; returns how many.

        A promoted task takes its place by submit order, not by due time.
        """

    @abc.abstractmethod
    def next_due(self) -> float | None:
        """``not_before`` of the earliest SCHEDULED task, if any."""

    @abc.abstractmethod
    def expire(self, now: float, limit: int) -> int:
        """Retention: purge at most ``limit`` records whose time ran out; returns how many.

        A drained finished task expires ``result_ttl`` after it ended (its own
        or the policy's), a dead one ``policy.dead_ttl`` after it died; beyond
        ``policy.max_dead`` dead tasks the oldest deaths go first.  A purged
        id is unknown from then on, and submitting it again starts a new task.
        """

    @abc.abstractmethod
    def purge(self, now: float, *, finished_before: float | None, dead: bool, limit: int) -> int:
        """Operator purge: SUCCEEDED/FAILED/CANCELLED tasks that ended before
        ``finished_before`` (None: none of them), and with ``dead`` every DEAD
        task; at most ``limit``; tasks not yet drained are never purged.
        Returns how many were purged."""

    @abc.abstractmethod
    def next_ready(self, now: float) -> float | None:
        """The earliest time after which a lease may be granted that cannot be
        now for a reason of time: a SCHEDULED task falls due, a schedule fires,
        or a rate-limited queue with waiting tasks earns its next token.  None: nothing waits on
        the clock."""

    @abc.abstractmethod
    def configure_queue(
        self, name: str, *, rate_limit: float | None, paused: bool, now: float
    ) -> QueueInfo:
        """Set a queue's rate limit (leases per second over all nodes; None: no
        limit) and pause; durable like any change.  A queue need not exist
        yet: its settings wait for its tasks.  ValueError for a rate <= 0."""

    @abc.abstractmethod
    def queues(self) -> list[QueueInfo]:
        """Every queue that has tasks or settings, by name."""

    @abc.abstractmethod
    def put_schedule(self, spec: ScheduleSpec, now: float) -> Schedule:
        """Declare a recurring task, or update the one with the same id.

        ValueError (see :func:`~pyqueue.cluster.schedules.check`) for a bad one.
        Updating keeps its pause, its last fire, and its next fire when the
        timing (cron or every, and time zone) is unchanged; a new timing
        counts from ``now``.
        """

    @abc.abstractmethod
    def schedules(self) -> list[Schedule]:
        """Every schedule, by id."""

    @abc.abstractmethod
    def pause_schedule(self, schedule_id: str, paused: bool, now: float) -> Schedule | None:
        """Pause (no fires) or resume a schedule; None for an unknown id.  A resumed
        schedule fires next at its first fire time after ``now``: fires that fell
        while it was paused are not run."""

    @abc.abstractmethod
    def delete_schedule(self, schedule_id: str) -> bool:
        """Forget a schedule (its fired tasks stay); False for an unknown id."""

    @abc.abstractmethod
    def fire_schedules(self, now: float) -> list[str]:
        """Submit the fires due by ``now``; return their task ids.

        Each fire is a task with the id :func:`~pyqueue.cluster.schedules.fire_id`
        gives, submitted as :meth:`submit` does (so a fire submitted before is
        not submitted again), in the schedule's queue with its priority; which
        of several missed fires run is :func:`~pyqueue.cluster.schedules.due_fires`.
        The fires and the schedule's new next fire are one change.
        """

    @abc.abstractmethod
    def stats(self) -> Stats:
        """Counts by state, completions by verdict, purged (also what expired while
        a durable store was closed), and leases per node."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make every change so far durable, all or nothing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Commit and release resources (files, locks, connections)."""

    def describe_owner(self, address: str) -> None:  # noqa: B027 - optional hook
        """Record where the coordinator that owns this store listens (optional)."""

    def keepalive(self, now: float) -> bool:
        """The coordinator's periodic tick (every ``timings.sweep`` seconds).

        A store shared by several coordinators (Redis) refreshes this one's
        liveness there, notices the others and recovers the leases of dead
        ones.  True asks for a flush (leases came back, or others may have
        changed what there is to dispatch or deliver).  Default: nothing to do.
        """
        return False

    def node_joined(self, node: str, name: str, now: float) -> int:
        """A node authenticated as ``name`` joined this coordinator as ``node``.

        A store shared by several coordinators gives this node the leases that
        a node of that name holds through other coordinators (it still runs
        them and resends their results on its new connection); returns how
        many.  Default: none (the old connection's leases are lost with it).
        """
        return 0
