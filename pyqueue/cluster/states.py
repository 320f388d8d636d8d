"""Plain values shared by the client, the coordinator, the messages and the stores.

No I/O here, so that importing the client does not import a store (or sqlite3).

Task life cycle::

    SCHEDULED -> PENDING -> LEASED -> SUCCEEDED | FAILED | DEAD | CANCELLED
        ^           ^          |
        |           +----------+  node lost / released (old queue position)
        +----------------------+  task raised and retries are left (backoff)

``FAILED`` (the task raised and had no retries left; its exception is the
result) is kept apart from ``SUCCEEDED`` so status counts stay honest.
Counters: ``attempts`` (every lease; also the lease token, so it only grows),
``failures`` (the task raised), ``lost`` (its node died under it).
"""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "DEFAULT_QUEUE",
    "Demand",
    "QueueInfo",
    "TaskState",
    "TERMINAL",
    "Verdict",
    "SubmitSpec",
    "Lease",
    "Grant",
    "Completion",
    "Release",
    "TaskInfo",
    "Outcome",
    "Stats",
]

#: the queue a task goes to, and a node serves, unless told otherwise
DEFAULT_QUEUE = "default"

#: what a node serves unless told otherwise
DEFAULT_SERVED: Mapping[str, int] = types.MappingProxyType({DEFAULT_QUEUE: 1})

# dataclass(slots=True) needs Python 3.10; the package supports 3.9
SLOTS: dict[str, bool] = {"slots": True} if sys.version_info >= (3, 10) else {}


class TaskState(enum.IntEnum):
    """Where a task is in its life.  Values are stored on disk: never renumber."""

    SCHEDULED = 0
    PENDING = 1
    LEASED = 2
    SUCCEEDED = 3
    FAILED = 4
    DEAD = 5
    CANCELLED = 6


# The members under plain module names, for the hot paths: on CPython 3.11 a
# read of TaskState.PENDING goes through the enum's class machinery (about
# 0.5 us, ten times a global), and a task passes a dozen such reads.
SCHEDULED, PENDING, LEASED, SUCCEEDED, FAILED, DEAD, CANCELLED = TaskState

TERMINAL = frozenset({SUCCEEDED, FAILED, DEAD, CANCELLED})


class Verdict(str, enum.Enum):
    """What the store made of a node's completion.  Values travel in DONE_ACK."""

    ACCEPTED = "accepted"  # the first completion of the current lease: it is the result
    DUPLICATE = "duplicate"  # the task had ended already (first completion wins)
    STALE = "stale"  # a newer lease superseded this one's token (fenced)
    UNKNOWN = "unknown"  # no such task (never submitted, or purged)


ACCEPTED, DUPLICATE, STALE, UNKNOWN = Verdict  # plain names, as for TaskState


class SubmitSpec(NamedTuple):
    """One task as a client submits it."""

    id: str
    payload: bytes
    retries: int = 0  # application-error retries wanted
    backoff: float = 1.0  # base delay of the first retry, seconds
    not_before: float = 0.0  # wall-clock time before which it must not run (SCHEDULED)
    result_ttl: float | None = None  # keep its result this long after it ends (None: policy)
    queue: str = DEFAULT_QUEUE  # the named queue it waits in
    priority: int = 0  # higher runs first within its queue; FIFO among equals


class Demand(NamedTuple):
    """What one node asks of :meth:`Backend.lease`."""

    capacity: int  # tasks it may hold at once (free slots + prefetch)
    queues: Mapping[str, int] = DEFAULT_SERVED  # the queues it serves, with weights (> 0)
    strict: bool = False  # drain higher-weight queues first instead of weighted random


class QueueInfo(NamedTuple):
    """One named queue: its settings and what waits in it."""

    name: str
    rate_limit: float | None  # leases granted per second at most, over all nodes
    paused: bool  # nothing is leased from it while paused
    counts: dict[TaskState, int]  # its tasks per state
    oldest_ready: float | None  # wall-clock time the longest-waiting PENDING task became ready


class Lease(NamedTuple):
    """A task handed to a node; ``token`` fences its completion."""

    id: str
    token: int
    payload: bytes


class Grant(NamedTuple):
    """What one node was given in one :meth:`Backend.lease` call."""

    leases: list[Lease]
    held: int  # tasks leased to the node after the call (outstanding)


class Completion(NamedTuple):
    """A node's report that one leased task ended."""

    id: str
    token: int
    ok: bool
    value: bytes | None  # the pickled result (or exception when not ok)
    error: str | None  # traceback text when not ok
    cancelled: bool = False  # it was terminated on request (TaskCancelled raised in it)
    run_s: float | None = None  # how long it ran on the node, seconds (None: not reported)


class Release(NamedTuple):
    """A node gives a leased task back (it stops, or it shed prefetched work)."""

    id: str
    token: int
    started: bool = False  # it ran and did not finish: counts as one loss


class TaskInfo(NamedTuple):
    """What the coordinator and operators may know of a task (no payload, no result)."""

    id: str
    state: TaskState
    attempts: int
    failures: int
    lost: int
    node: str | None  # the holder of its lease when LEASED
    error: str | None  # the last error text (failed, dead, cancelled)
    expires: float  # wall-clock time its record may be purged (0: not finished)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    # wall-clock times, 0.0 when not yet: submitted; last became ready to run;
    # last leased; ended (kept until the record is purged)
    created: float = 0.0
    ready: float = 0.0
    started: float = 0.0
    ended: float = 0.0

    @property
    def token(self) -> int:
        """The token of its current (or last) lease."""
        return self.attempts

    def summary(self) -> dict[str, object]:
        """A msgpack-able description (status, the dead-letter list)."""
        return {
            "id": self.id,
            "state": self.state.name,
            "attempts": self.attempts,
            "failures": self.failures,
            "lost": self.lost,
            "error": self.error,
        }


class Outcome(NamedTuple):
    """The end of a task, as pushed to the clients waiting on it."""

    id: str
    state: TaskState
    value: bytes | None
    error: str | None


@dataclass(**SLOTS)
class Stats:
    """Counts a store keeps as it goes (never by scanning)."""

    tasks: dict[TaskState, int]  # tasks per state now
    completions: dict[Verdict, int]  # completions per verdict since the store opened
    purged: int = 0  # records purged since the store opened
    held: dict[str, int] = field(default_factory=dict)  # node -> tasks leased to it

    def as_dict(self) -> dict[str, object]:
        """The msgpack-able shape ``status`` reports."""
        return {
            "tasks": {st.name.lower(): n for st, n in self.tasks.items()},
            "completions": {v.value: n for v, n in self.completions.items()},
            "purged": self.purged,
        }
